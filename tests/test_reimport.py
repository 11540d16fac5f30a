"""``recovery reimport`` into a restored DB the old release has been writing to since: every kind of
collision is named once and resolved by policy, references follow remapped keys, units stay whole,
a second run is a no-op, abort/dry-run/refusals change no byte."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from recovery.cli import main
from recovery.bundle.extract import extract
from recovery.model.outcome import ConflictPolicy
from recovery.pipeline import reimport, restore_atomically

OLD_APP_TIME = "2026-11-21 09:00:00"


def ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def conflicts(run: Path) -> list[tuple[str, str, int, str, str]]:
    with open(run / "conflicts.csv", newline="", encoding="utf-8") as fh:
        return sorted(
            (r["kind"], r["table"], int(r["key"].strip("[]")), r["column"], r["resolution"])
            for r in csv.DictReader(fh)
        )


def counts(db: Path) -> dict[str, int]:
    with ro(db) as c:
        names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: c.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


# fixtures `bundle` and `restored`: tests/conftest.py


def old_app(db: Path, script: str) -> None:
    """The old release writing to the restored DB (foreign keys on, as the app runs)."""
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA foreign_keys=ON")
    c.executescript(script)
    c.close()


def new_part(pid: int | None, number: str) -> str:
    cols = "part_number, name, material_id, price, created_at, updated_at, created_by"
    vals = f"'{number}', 'old app part', 1, 9.5, '{OLD_APP_TIME}', '{OLD_APP_TIME}', 1"
    if pid is not None:
        cols, vals = "id, " + cols, f"{pid}, " + vals
    return f"INSERT INTO parts ({cols}) VALUES ({vals});\n"


COLLISIONS = (
    # the next three ids the old app hands out are bundle parts 121-123 (121, 123 carry files; 123 an item)
    new_part(None, "OLD-0")
    + new_part(None, "OLD-1")
    + new_part(None, "OLD-2")
    + new_part(1000, "GS-10125")  # unique: a post-deploy part_number
    + "UPDATE parts SET price = 1.23 WHERE id = 79;\n"  # update_update: bundle changed price too
    + "DELETE FROM quotes WHERE id = 40;\n"  # update_deleted: bundle changed its status
    + "DELETE FROM parts WHERE id = 112;\n"  # missing_parent: only new item 194 (on old quote 1) uses it
)
EXPECTED = [
    ("missing_parent", "quote_items", 194, "part_id", "skipped"),
    ("primary_key", "parts", 121, "", "remapped"),
    ("primary_key", "parts", 122, "", "remapped"),
    ("primary_key", "parts", 123, "", "remapped"),
    ("unique", "parts", 125, "part_number", "skipped"),
    ("update_deleted", "quotes", 40, "", "skipped"),
    ("update_update", "parts", 79, "price", "kept_target"),
]


@pytest.fixture
def collided(restored: Path) -> Path:
    old_app(restored, COLLISIONS)
    return restored


def test_remap_names_every_collision_once_and_keeps_references(
    bundle: Path, collided: Path, world: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    res = cli("reimport", bundle, collided, "--out", run, "--yes")
    assert res.exit_code == 1, res.output
    assert str(run) in res.output.replace("\n", "")
    assert conflicts(run) == EXPECTED
    report = json.loads((run / "report.json").read_text())
    remap = {r["old_key"]: r["new_key"] for r in report["outcome"]["remapped"]}
    assert sorted(remap) == [121, 122, 123] and min(remap.values()) > 1000
    with ro(world / "gestima.db") as live, ro(collided) as c:
        assert c.execute(
            "SELECT part_number FROM parts WHERE id IN (121,122,123) ORDER BY id"
        ).fetchall() == [("OLD-0",), ("OLD-1",), ("OLD-2",)]
        for old, new in remap.items():  # the bundle part landed under its fresh key
            assert c.execute("SELECT part_number FROM parts WHERE id=?", (new,)).fetchone() == (
                f"GS-10{old}",
            )
        # bundle rows that referenced a remapped part follow it
        assert c.execute("SELECT part_id FROM quote_items WHERE id=190").fetchone() == (remap[123],)
        assert c.execute("SELECT entity_id FROM file_records WHERE id=23").fetchone() == (
            remap[121],
        )
        assert c.execute("SELECT entity_id FROM file_records WHERE id=24").fetchone() == (
            remap[123],
        )
        # every other bundle row landed with its references intact
        for qid, quote, part in live.execute(
            "SELECT id, quote_id, part_id FROM quote_items WHERE id > 180 AND id NOT IN (190, 194)"
        ):
            assert c.execute(
                "SELECT quote_id, part_id FROM quote_items WHERE id=?", (qid,)
            ).fetchone() == (quote, part)
        for fid, etype, eid in live.execute(
            "SELECT id, entity_type, entity_id FROM file_records WHERE id IN (25,26,27)"
        ):
            assert c.execute(
                "SELECT entity_type, entity_id FROM file_records WHERE id=?", (fid,)
            ).fetchone() == (etype, eid)
        # skipped: the unique clash, the orphan item, the deleted quote; the kept target value
        assert c.execute("SELECT id FROM parts WHERE part_number='GS-10125'").fetchall() == [
            (1000,)
        ]
        assert c.execute("SELECT 1 FROM quote_items WHERE id=194").fetchone() is None
        assert c.execute("SELECT 1 FROM quotes WHERE id=40").fetchone() is None
        assert c.execute("SELECT price FROM parts WHERE id=79").fetchone() == (1.23,)
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert report["outcome"]["verification"]["ok"]

    # a second run is a no-op
    before_counts, db_sha = counts(collided), sha(collided)
    again = cli("reimport", bundle, collided, "--out", tmp_path / "run2", "--yes")
    assert again.exit_code in (0, 1), again.output
    assert (
        json.loads((tmp_path / "run2" / "report.json").read_text())["summary"]["already_applied"]
        is True
    )
    assert counts(collided) == before_counts and sha(collided) == db_sha


def test_unit_is_skipped_whole_when_an_item_loses_its_part(
    bundle: Path, restored: Path, tmp_path: Path
) -> None:
    # part 27 is used only by new item 182 of new quote 61 (items 181-184): the quote and all its items stay out
    old_app(restored, "DELETE FROM parts WHERE id = 27;")
    res = reimport(bundle, restored, tmp_path / "run")
    assert res.outcome is not None and res.exit_code == 1
    assert conflicts(tmp_path / "run") == [
        ("missing_parent", "quote_items", 182, "part_id", "skipped")
    ]
    with ro(restored) as c:
        assert c.execute("SELECT 1 FROM quotes WHERE id=61").fetchone() is None
        assert c.execute("SELECT count(*) FROM quote_items WHERE quote_id=61").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM quotes WHERE id IN (62, 63)").fetchone() == (2,)
    assert (
        res.outcome.tables["quotes"].skipped == 1 and res.outcome.tables["quote_items"].skipped == 4
    )


def test_a_new_row_already_in_the_target_keeps_its_unit(
    bundle: Path, restored: Path, tmp_path: Path
) -> None:
    # new quote 61 (items 181-184) is already in the target, the very same record (written by
    # the old app, or carried by an earlier run): it is not inserted again, and its items are
    # carried — an already-present parent is not a skipped one
    with ro(bundle / "rows.db") as b, ro(restored) as t:
        cols = [r[1] for r in t.execute("PRAGMA table_info(quotes)")]
        renamed = {"customer": "customer_name"}  # the release renamed it
        picks = ", ".join(renamed.get(c, c) for c in cols)
        row = b.execute(f"SELECT {picks} FROM quotes WHERE id = 61").fetchone()
        items = b.execute("SELECT count(*) FROM quote_items WHERE quote_id = 61").fetchone()[0]
    assert row is not None and items == 4
    marks = ", ".join("?" * len(cols))
    c = sqlite3.connect(restored, isolation_level=None)
    c.execute(f"INSERT INTO quotes ({', '.join(cols)}) VALUES ({marks})", row)
    c.close()
    res = reimport(bundle, restored, tmp_path / "run")
    assert res.outcome is not None
    assert res.outcome.tables["quotes"].already_present == 1
    assert res.outcome.tables["quote_items"].skipped == 0
    assert not res.outcome.skipped_rows
    with ro(restored) as c:
        assert c.execute("SELECT count(*) FROM quotes WHERE id = 61").fetchone() == (1,)
        assert c.execute("SELECT count(*) FROM quote_items WHERE quote_id = 61").fetchone() == (4,)
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []


def test_key_and_unique_both_taken_skips_the_part_and_its_file(
    bundle: Path, restored: Path, tmp_path: Path
) -> None:
    # the old app numbers parts like the new one did: its part 121 is GS-10123, part 122 is GS-10122
    old_app(restored, new_part(None, "GS-10123") + new_part(None, "GS-10122"))
    res = reimport(bundle, restored, tmp_path / "run")
    assert res.outcome is not None
    assert conflicts(tmp_path / "run") == [
        ("primary_key", "parts", 121, "", "remapped"),
        ("primary_key", "parts", 122, "", "skipped"),
        ("unique", "parts", 122, "part_number", "skipped"),
        ("unique", "parts", 123, "part_number", "skipped"),
    ]
    assert [(r.old_key) for r in res.outcome.remaps] == [121]
    with ro(restored) as c:
        # file 24 belonged to the skipped bundle part 123: it must not land pointing at nothing (or another part)
        assert c.execute("SELECT 1 FROM file_records WHERE id=24").fetchone() is None
        dangling = c.execute(
            "SELECT id FROM file_records f WHERE entity_type='part' "
            "AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.id=f.entity_id)"
        ).fetchall()
        assert dangling == []
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []


def test_skip_policy_skips_taken_keys(bundle: Path, collided: Path, tmp_path: Path) -> None:
    res = cli(
        "reimport", bundle, collided, "--out", tmp_path / "run", "--on-conflict", "skip", "--yes"
    )
    assert res.exit_code == 1, res.output
    got = conflicts(tmp_path / "run")
    assert [c for c in got if c[0] == "primary_key"] == [
        ("primary_key", "parts", k, "", "skipped") for k in (121, 122, 123)
    ]
    assert {c[0] for c in got} == {c[0] for c in EXPECTED}
    with ro(collided) as c:
        assert c.execute(
            "SELECT part_number FROM parts WHERE id IN (121,122,123) ORDER BY id"
        ).fetchall() == [("OLD-0",), ("OLD-1",), ("OLD-2",)]
        assert c.execute(
            "SELECT count(*) FROM parts WHERE part_number IN ('GS-10121','GS-10122','GS-10123')"
        ).fetchone() == (0,)
        # item 190 needed bundle part 123: it and its quote 62 (a unit) stay out; no file points at a skipped part
        assert c.execute("SELECT 1 FROM quotes WHERE id=62").fetchone() is None
        assert c.execute("SELECT count(*) FROM file_records WHERE id IN (23, 24)").fetchone() == (
            0,
        )
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []


def test_abort_changes_no_byte(bundle: Path, collided: Path, tmp_path: Path) -> None:
    before = folder_hashes(collided.parent)
    res = cli(
        "reimport", bundle, collided, "--out", tmp_path / "run", "--on-conflict", "abort", "--yes"
    )
    after = folder_hashes(collided.parent)
    assert res.exit_code == 3, res.output
    assert {k: v for k, v in after.items() if not k.startswith("run/")} == before
    assert len(conflicts(tmp_path / "run")) == len(EXPECTED)
    assert json.loads((tmp_path / "run" / "report.json").read_text())["summary"]["aborted"] is True


def test_aborted_run_exits_the_same_through_the_api_and_the_cli(
    bundle: Path, collided: Path, tmp_path: Path
) -> None:
    """An aborted re-import has one exit code, the verdict's (``recovery.model.outcome.judge``):
    the Python API's ``RunResult.exit_code`` and ``Outcome.exit_code`` and the CLI's exit status
    all say 3 (failed), and report.json's verdict maps to it."""
    from recovery.errors import ExitCode
    from recovery.model.outcome import FAILED, verdict_exit_code

    twin = tmp_path / "twin" / collided.name
    twin.parent.mkdir()
    shutil.copyfile(collided, twin)
    api_run = reimport(bundle, twin, tmp_path / "api-run", on_conflict=ConflictPolicy.ABORT)
    assert api_run.outcome is not None and api_run.outcome.aborted
    assert api_run.outcome.verdict().verdict == FAILED
    res = cli(
        "reimport",
        bundle,
        collided,
        "--out",
        tmp_path / "cli-run",
        "--on-conflict",
        "abort",
        "--yes",
    )
    assert res.exit_code == api_run.exit_code == api_run.outcome.exit_code == ExitCode.FAILED, (
        res.output
    )
    report = json.loads((tmp_path / "cli-run" / "report.json").read_text())
    assert verdict_exit_code(report["summary"]["verdict"]) == res.exit_code


def test_prefer_bundle_takes_the_bundle_value(
    bundle: Path, collided: Path, world: Path, tmp_path: Path
) -> None:
    res = cli(
        "reimport", bundle, collided, "--out", tmp_path / "run", "--prefer", "bundle", "--yes"
    )
    assert res.exit_code == 1, res.output
    assert ("update_update", "parts", 79, "price", "applied") in conflicts(tmp_path / "run")
    with ro(world / "gestima.db") as live, ro(collided) as c:
        cents = live.execute("SELECT price_cents FROM parts WHERE id=79").fetchone()[0]
        assert c.execute("SELECT price FROM parts WHERE id=79").fetchone() == (cents / 100.0,)


def test_dry_run_changes_no_byte_and_writes_the_report(
    bundle: Path, collided: Path, tmp_path: Path
) -> None:
    before = folder_hashes(collided.parent)
    res = cli("reimport", bundle, collided, "--out", tmp_path / "run", "--dry-run")
    assert res.exit_code == 1, res.output
    assert {
        k: v for k, v in folder_hashes(collided.parent).items() if not k.startswith("run/")
    } == before
    assert conflicts(tmp_path / "run") == EXPECTED
    assert json.loads((tmp_path / "run" / "report.json").read_text())["summary"]["dry_run"] is True


def test_default_run_folder_is_inside_the_bundle(
    bundle: Path, restored: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    res = cli("reimport", copy, restored, "--dry-run")
    runs = list(copy.glob("reimport-*"))
    assert len(runs) == 1 and (runs[0] / "report.json").is_file()
    assert runs[0].name in res.output.replace("\n", "")


def test_no_terminal_without_yes_refuses(bundle: Path, collided: Path, tmp_path: Path) -> None:
    before = folder_hashes(collided.parent)
    res = cli("reimport", bundle, collided, "--out", tmp_path / "run")
    assert res.exit_code == 2, res.output
    assert folder_hashes(collided.parent) == before


def test_schema_mismatch_refuses_naming_the_differences(bundle: Path, world_copy: Path) -> None:
    db = world_copy / "gestima.db"
    before = folder_hashes(world_copy)
    res = cli("reimport", bundle, db, "--out", world_copy.parent / "run", "--yes")
    assert res.exit_code == 2, res.output
    out = res.output.replace("\n", " ")
    assert "quotes.customer is missing" in out and "quotes.customer_name is unexpected" in out
    assert folder_hashes(world_copy) == before


def test_apply_deletes_redeletes_only_rows_unchanged_since(
    bundle: Path, restored: Path, world: Path, tmp_path: Path
) -> None:
    truth = json.loads((world / "world.json").read_text())
    deleted = {
        t: [k for (k,) in ch["deleted"]] for t, ch in truth["tables"].items() if ch["deleted"]
    }
    assert deleted == {"quote_items": [21, 142, 143, 145], "quotes": [49]}
    old_app(
        restored, "UPDATE quote_items SET qty = qty + 1 WHERE id = 145;"
    )  # edited since: must stay
    res = reimport(bundle, restored, tmp_path / "run", apply_deletes=True)
    assert res.outcome is not None and res.outcome.verification["ok"]
    with ro(restored) as c:
        assert c.execute(
            "SELECT id FROM quote_items WHERE id IN (21, 142, 143, 145)"
        ).fetchall() == [(145,)]
        assert c.execute("SELECT 1 FROM quotes WHERE id=49").fetchone() is None
    review = {
        (d["table"], d["key"][0]): d["unchanged_since_backup"]
        for d in res.outcome.deletes_for_review
    }
    assert review[("quote_items", 145)] is False and review[("quotes", 49)] is True
    for name, t in res.outcome.tables.items():  # backup + re-imported − re-deleted
        assert t.rows_after == truth["counts"]["backup"][name] + t.inserted - t.deleted, name
    assert (
        res.outcome.tables["quote_items"].deleted == 3 and res.outcome.tables["quotes"].deleted == 1
    )


def test_without_apply_deletes_deleted_rows_stay_listed(
    bundle: Path, restored: Path, tmp_path: Path
) -> None:
    res = reimport(bundle, restored, tmp_path / "run")
    assert res.outcome is not None and res.outcome.verification["ok"] and not res.outcome.conflicts
    with ro(restored) as c:
        assert c.execute(
            "SELECT count(*) FROM quote_items WHERE id IN (21, 142, 143, 145)"
        ).fetchone() == (4,)
    assert len(res.outcome.deletes_for_review) == 5
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert len(report["outcome"]["deletes_for_review"]) == 5


def test_restore_atomically_then_reimport_in_the_library(
    bundle: Path, world_copy: Path, tmp_path: Path
) -> None:
    db = world_copy / "gestima.db"
    restore_atomically(world_copy / "gestima.db.bak.20261120_140000", db)
    assert (
        not (world_copy / "gestima.db-wal").exists()
        or (world_copy / "gestima.db-wal").stat().st_size == 0
    )
    res = reimport(bundle, db, tmp_path / "run", on_conflict=ConflictPolicy.ABORT)
    assert res.outcome is not None and not res.outcome.aborted and res.outcome.verification["ok"]


ITEMS_OLD = (
    "CREATE TABLE item (id INTEGER PRIMARY KEY, a TEXT NOT NULL, b TEXT, c INTEGER NOT NULL);"
    "INSERT INTO item VALUES (1, 'a1', 'b1', 1), (2, 'a2', 'b2', 2), (3, 'a3', 'b3', 3), (4, 'a4', 'b4', 4);"
)
ITEMS_NEW = (
    "CREATE TABLE item2 (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c INTEGER NOT NULL);"  # a became nullable
    "INSERT INTO item2 SELECT * FROM item; DROP TABLE item; ALTER TABLE item2 RENAME TO item;"
)


def test_update_conflicts_are_listed_column_by_column(tmp_path: Path) -> None:
    backup, live = tmp_path / "app.db.bak.20261120_140000", tmp_path / "app.db"
    for db, script in (
        (backup, ITEMS_OLD),
        (
            live,
            ITEMS_OLD
            + ITEMS_NEW
            + "UPDATE item SET a = NULL, b = 'B1' WHERE id = 1;"
            + "UPDATE item SET b = 'B2', c = 20 WHERE id = 2;"
            + "UPDATE item SET a = 'A3', b = 'B3' WHERE id = 3;"
            + "UPDATE item SET c = 40 WHERE id = 4;",
        ),
    ):
        with sqlite3.connect(db) as c:
            c.executescript(script)
        c.close()
    extract(backup, live, tmp_path / "b")
    target = tmp_path / "t" / "app.db"
    target.parent.mkdir()
    shutil.copyfile(backup, target)
    old_app(
        target,
        "UPDATE item SET b = 'x1' WHERE id = 1; UPDATE item SET c = 200 WHERE id = 2;"
        "UPDATE item SET a = 'x3', b = 'y3' WHERE id = 3;",
    )
    res = reimport(tmp_path / "b", target, tmp_path / "run")
    assert res.outcome is not None
    got = [
        (c.kind, c.key[0], c.column, c.resolution, c.bundle_value, c.target_value, c.base_value)
        for c in res.outcome.conflicts
    ]
    assert got == [
        ("constraint", 1, "a", "kept_target", None, "a1", "a1"),
        ("update_update", 3, "a", "kept_target", "A3", "x3", "a3"),
        ("update_update", 1, "b", "kept_target", "B1", "x1", "b1"),
        ("update_update", 3, "b", "kept_target", "B3", "y3", "b3"),
        ("update_update", 2, "c", "kept_target", 20, 200, 2),
    ]
    with ro(target) as c:  # kept the target's values; took the uncontested ones (b of 2, c of 4)
        assert c.execute("SELECT * FROM item ORDER BY id").fetchall() == [
            (1, "a1", "x1", 1),
            (2, "a2", "B2", 200),
            (3, "x3", "y3", 3),
            (4, "a4", "b4", 40),
        ]
    assert res.outcome.tables["item"].updated == 2
