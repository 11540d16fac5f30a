"""The re-import's merge cases as one table (like Dolt's merge case tables), black-box.

Rows: each conflict kind (``recovery.model.kinds.ConflictKind``) × ``--on-conflict`` remap|skip|abort
× ``--prefer`` db|bundle → the conflicts ``conflicts.csv`` must list (kind, resolution), the rows the
affected tables must hold afterwards, and the exit code. A ``none`` row (changes that meet no
conflict) shows what each policy does to work that conflicts with nothing.

Everything goes through the command line (``recovery extract``, ``recovery reimport``, in process):
one tiny backup, the live DB after the deploy (the new release lets ``ck_item.c`` be NULL), one
bundle, and a target restored from the backup that the old release wrote to since. Each conflict
kind lives in its own tables, so one re-import per (policy, prefer) judges every kind at once
(six runs in all), each on a fresh copy of the target. ``--on-conflict abort`` stops the whole
re-import when any unit conflicts; every kind here conflicts, so an abort row is what the kind
alone would give.
"""

from __future__ import annotations

import csv
import itertools
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recovery.cli import main

BACKUP = "app.db.bak.20261120_140000"
OLD = """
CREATE TABLE pk_item (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE uq_item (id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE);
CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent (id), qty INTEGER);
CREATE TABLE ck_item (id INTEGER PRIMARY KEY, c INTEGER NOT NULL);
CREATE TABLE uu_item (id INTEGER PRIMARY KEY, a TEXT, b TEXT);
CREATE TABLE ud_item (id INTEGER PRIMARY KEY, a TEXT);
CREATE TABLE clean (id INTEGER PRIMARY KEY, a TEXT);
INSERT INTO pk_item VALUES (1, 'p1');
INSERT INTO uq_item VALUES (1, 'u1');
INSERT INTO parent VALUES (1, 'P1'), (2, 'P2');
INSERT INTO child VALUES (1, 1, 1);
INSERT INTO ck_item VALUES (1, 1);
INSERT INTO uu_item VALUES (1, 'a1', 'b1');
INSERT INTO ud_item VALUES (1, 'a1');
INSERT INTO clean VALUES (1, 'c1');
"""
NEW_RELEASE = """
CREATE TABLE ck_new (id INTEGER PRIMARY KEY, c INTEGER);
INSERT INTO ck_new SELECT * FROM ck_item; DROP TABLE ck_item; ALTER TABLE ck_new RENAME TO ck_item;
"""
USERS = """
INSERT INTO pk_item VALUES (2, 'bundle-2');
INSERT INTO uq_item VALUES (2, 'dup');
INSERT INTO child VALUES (10, 2, 7);
INSERT INTO ck_item VALUES (2, NULL);
UPDATE uu_item SET a = 'bundle' WHERE id = 1;
UPDATE ud_item SET a = 'bundle' WHERE id = 1;
INSERT INTO clean VALUES (2, 'c2');
UPDATE clean SET a = 'c1-bundle' WHERE id = 1;
"""
"""What users did after the deploy (the bundle)."""
OLD_APP = """
INSERT INTO pk_item VALUES (2, 'target-2');
INSERT INTO uq_item VALUES (3, 'dup');
DELETE FROM parent WHERE id = 2;
UPDATE uu_item SET a = 'target' WHERE id = 1;
DELETE FROM ud_item WHERE id = 1;
"""
"""What the old release wrote to the restored database since (the target)."""

Row = tuple[Any, ...]
# kind → the tables it owns (their rows are compared whole)
TABLES = {
    "primary_key": ("pk_item",),
    "unique": ("uq_item",),
    "missing_parent": ("parent", "child"),
    "constraint": ("ck_item",),
    "update_update": ("uu_item",),
    "update_deleted": ("ud_item",),
    "none": ("clean",),
}
POLICIES, PREFERS = ("remap", "skip", "abort"), ("db", "bundle")

# As restored and edited by the old release: what an abort (nothing re-imported) leaves.
TARGET_ROWS: dict[str, list[Row]] = {
    "pk_item": [(1, "p1"), (2, "target-2")],
    "uq_item": [(1, "u1"), (3, "dup")],
    "parent": [(1, "P1")],
    "child": [(1, 1, 1)],
    "ck_item": [(1, 1)],
    "uu_item": [(1, "target", "b1")],
    "ud_item": [],
    "clean": [(1, "c1")],
}
T = TARGET_ROWS
CARRIED_CLEAN = {"clean": [(1, "c1-bundle"), (2, "c2")]}

# (kind, --on-conflict, --prefer) → ([(conflict kind, resolution)], {table: rows after the run})
CASES: dict[tuple[str, str, str], tuple[list[tuple[str, str]], dict[str, list[Row]]]] = {
    # a bundle row whose key the target gave to another row: a fresh key, or left out
    ("primary_key", "remap", "db"): (
        [("primary_key", "remapped")],
        {"pk_item": [(1, "p1"), (2, "target-2"), (3, "bundle-2")]},
    ),
    ("primary_key", "remap", "bundle"): (
        [("primary_key", "remapped")],
        {"pk_item": [(1, "p1"), (2, "target-2"), (3, "bundle-2")]},
    ),
    ("primary_key", "skip", "db"): ([("primary_key", "skipped")], {"pk_item": T["pk_item"]}),
    ("primary_key", "skip", "bundle"): ([("primary_key", "skipped")], {"pk_item": T["pk_item"]}),
    ("primary_key", "abort", "db"): ([("primary_key", "skipped")], {"pk_item": T["pk_item"]}),
    ("primary_key", "abort", "bundle"): ([("primary_key", "skipped")], {"pk_item": T["pk_item"]}),
    # a UNIQUE value the target took since: a fresh key would not help, so it is skipped
    ("unique", "remap", "db"): ([("unique", "skipped")], {"uq_item": T["uq_item"]}),
    ("unique", "remap", "bundle"): ([("unique", "skipped")], {"uq_item": T["uq_item"]}),
    ("unique", "skip", "db"): ([("unique", "skipped")], {"uq_item": T["uq_item"]}),
    ("unique", "skip", "bundle"): ([("unique", "skipped")], {"uq_item": T["uq_item"]}),
    ("unique", "abort", "db"): ([("unique", "skipped")], {"uq_item": T["uq_item"]}),
    ("unique", "abort", "bundle"): ([("unique", "skipped")], {"uq_item": T["uq_item"]}),
    # a new child of a parent the target deleted since
    ("missing_parent", "remap", "db"): (
        [("missing_parent", "skipped")],
        {"parent": T["parent"], "child": T["child"]},
    ),
    ("missing_parent", "remap", "bundle"): (
        [("missing_parent", "skipped")],
        {"parent": T["parent"], "child": T["child"]},
    ),
    ("missing_parent", "skip", "db"): (
        [("missing_parent", "skipped")],
        {"parent": T["parent"], "child": T["child"]},
    ),
    ("missing_parent", "skip", "bundle"): (
        [("missing_parent", "skipped")],
        {"parent": T["parent"], "child": T["child"]},
    ),
    ("missing_parent", "abort", "db"): (
        [("missing_parent", "skipped")],
        {"parent": T["parent"], "child": T["child"]},
    ),
    ("missing_parent", "abort", "bundle"): (
        [("missing_parent", "skipped")],
        {"parent": T["parent"], "child": T["child"]},
    ),
    # a NULL the new release allowed and the old schema's NOT NULL refuses
    ("constraint", "remap", "db"): ([("constraint", "skipped")], {"ck_item": T["ck_item"]}),
    ("constraint", "remap", "bundle"): ([("constraint", "skipped")], {"ck_item": T["ck_item"]}),
    ("constraint", "skip", "db"): ([("constraint", "skipped")], {"ck_item": T["ck_item"]}),
    ("constraint", "skip", "bundle"): ([("constraint", "skipped")], {"ck_item": T["ck_item"]}),
    ("constraint", "abort", "db"): ([("constraint", "skipped")], {"ck_item": T["ck_item"]}),
    ("constraint", "abort", "bundle"): ([("constraint", "skipped")], {"ck_item": T["ck_item"]}),
    # the same cell changed on both sides: --prefer decides (an abort applies nothing, and names
    # the resolution --prefer would have taken)
    ("update_update", "remap", "db"): (
        [("update_update", "kept_target")],
        {"uu_item": [(1, "target", "b1")]},
    ),
    ("update_update", "remap", "bundle"): (
        [("update_update", "applied")],
        {"uu_item": [(1, "bundle", "b1")]},
    ),
    ("update_update", "skip", "db"): (
        [("update_update", "kept_target")],
        {"uu_item": [(1, "target", "b1")]},
    ),
    ("update_update", "skip", "bundle"): (
        [("update_update", "applied")],
        {"uu_item": [(1, "bundle", "b1")]},
    ),
    ("update_update", "abort", "db"): (
        [("update_update", "kept_target")],
        {"uu_item": T["uu_item"]},
    ),
    ("update_update", "abort", "bundle"): (
        [("update_update", "applied")],
        {"uu_item": T["uu_item"]},
    ),
    # an update of a row the target deleted since: the deletion stands
    ("update_deleted", "remap", "db"): ([("update_deleted", "skipped")], {"ud_item": []}),
    ("update_deleted", "remap", "bundle"): ([("update_deleted", "skipped")], {"ud_item": []}),
    ("update_deleted", "skip", "db"): ([("update_deleted", "skipped")], {"ud_item": []}),
    ("update_deleted", "skip", "bundle"): ([("update_deleted", "skipped")], {"ud_item": []}),
    ("update_deleted", "abort", "db"): ([("update_deleted", "skipped")], {"ud_item": []}),
    ("update_deleted", "abort", "bundle"): ([("update_deleted", "skipped")], {"ud_item": []}),
    # no conflict: carried, unless the run aborts
    ("none", "remap", "db"): ([], CARRIED_CLEAN),
    ("none", "remap", "bundle"): ([], CARRIED_CLEAN),
    ("none", "skip", "db"): ([], CARRIED_CLEAN),
    ("none", "skip", "bundle"): ([], CARRIED_CLEAN),
    ("none", "abort", "db"): ([], {"clean": T["clean"]}),
    ("none", "abort", "bundle"): ([], {"clean": T["clean"]}),
}
EXIT_CODES = {"remap": 1, "skip": 1, "abort": 3}
"""Conflicts to review: 1; an aborted re-import: 3 (README's exit-code table)."""


def _make(db: Path, script: str, foreign_keys: bool = True) -> None:
    with closing(sqlite3.connect(db, isolation_level=None)) as c:
        c.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        c.executescript(script)


def _cli(*args: Any) -> Any:
    return CliRunner().invoke(main, ["--quiet", *map(str, args)], catch_exceptions=False)


def _rows(db: Path) -> dict[str, list[Row]]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return {
            t: c.execute(f'SELECT * FROM "{t}" ORDER BY id').fetchall()
            for ts in TABLES.values()
            for t in ts
        }


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], tuple[int, list[dict[str, str]], dict[str, list[Row]]]]:
    """(policy, prefer) → (exit code, conflicts.csv rows, the target's rows afterwards)."""
    d = tmp_path_factory.mktemp("merge-cases")
    backup, live, target = d / BACKUP, d / "app.db", d / "target.db"
    _make(backup, OLD)
    shutil.copyfile(backup, live)
    _make(live, NEW_RELEASE, foreign_keys=False)
    _make(live, USERS)
    res = _cli(
        "extract", backup, live, "--out", d / "bundle", "--trust-mapping"
    )  # too few rows to judge rules by
    assert res.exit_code in (0, 1), res.output
    shutil.copyfile(backup, target)
    _make(target, OLD_APP)
    assert _rows(target) == TARGET_ROWS
    out = {}
    for policy, prefer in itertools.product(POLICIES, PREFERS):
        db, run = d / f"{policy}-{prefer}.db", d / f"run-{policy}-{prefer}"
        shutil.copyfile(target, db)
        res = _cli(
            "reimport",
            d / "bundle",
            db,
            "--out",
            run,
            "--on-conflict",
            policy,
            "--prefer",
            prefer,
            "--yes",
        )
        with open(run / "conflicts.csv", newline="", encoding="utf-8") as f:
            conflicts = list(csv.DictReader(f))
        out[(policy, prefer)] = (res.exit_code, conflicts, _rows(db))
    return out


@pytest.mark.parametrize(
    ("kind", "policy", "prefer"), list(CASES), ids=["-".join(k) for k in CASES]
)
def test_merge_case(
    runs: dict[tuple[str, str], tuple[int, list[dict[str, str]], dict[str, list[Row]]]],
    kind: str,
    policy: str,
    prefer: str,
) -> None:
    code, conflicts, rows = runs[(policy, prefer)]
    want_conflicts, want_rows = CASES[(kind, policy, prefer)]
    got = sorted((c["kind"], c["resolution"]) for c in conflicts if c["table"] in TABLES[kind])
    assert got == sorted(want_conflicts)
    assert {t: rows[t] for t in TABLES[kind]} == want_rows
    assert code == EXIT_CODES[policy]


def test_the_case_table_is_complete() -> None:
    """Every conflict kind of the vocabulary × every policy × every preference has its row."""
    from recovery.model.kinds import ConflictKind

    kinds = [k.value for k in ConflictKind] + ["none"]
    assert set(CASES) == set(itertools.product(kinds, POLICIES, PREFERS))
    assert set(TABLES) == set(kinds)


def test_no_conflict_outside_the_case_tables(
    runs: dict[tuple[str, str], tuple[int, list[dict[str, str]], dict[str, list[Row]]]],
) -> None:
    """Each kind's conflicts come from its own tables only (so the rows above judge it alone)."""
    owners = {t: k for k, ts in TABLES.items() for t in ts}
    for (policy, prefer), (_, conflicts, _) in runs.items():
        for c in conflicts:
            assert c["table"] in owners and owners[c["table"]] == c["kind"], (policy, prefer, c)
