"""The re-import's own foreign-key check (``merge_and_check``) and the concurrent ``verify_file``, on
real SQLite files, always compared with what SQLite's ``PRAGMA foreign_key_check`` says.

The check reads only what the re-import wrote: inserted and updated rows, and the rows referencing a
row it deleted (``--apply-deletes``) or whose referenced columns it changed. Detection normally keeps
a bundle from dangling anything; to prove the check catches what slips past it, some tests hand the
merge a bundle whose old schema lost its foreign keys (the target still declares them), which turns
missing-parent detection, unit skipping and the delete guard off.
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recovery.options import MergeOptions
from recovery.bundle.store import Bundle, open_bundle
from recovery.errors import RecoveryError
from recovery.bundle.extract import extract
from recovery.files.uploads import FilesConfig
from recovery.model.outcome import ConflictPolicy, Outcome, Prefer
from recovery.pipeline import reimport
from recovery.reimport import context
from recovery.reimport.merge import attach_bundle, merge_and_check, open_target
from recovery.engine.schema import Schema, reflect
from recovery.engine.sqlite_io import readonly, wait_for_write_lock
from recovery.verify.checks import verify, verify_file

Problem = tuple[str, Any, str, int]


def without_fks(bundle: Bundle) -> Bundle:
    """The same bundle, its old schema stripped of foreign keys: the merge's detection is bypassed."""
    old = Schema(
        {n: dataclasses.replace(t, foreign_keys=()) for n, t in bundle.old.tables.items()},
        bundle.old.views,
        bundle.old.triggers,
        bundle.old.indexes,
        bundle.old.alembic_revision,
    )
    return dataclasses.replace(bundle, old=old)


def merged(
    bundle: Bundle,
    target: Path,
    apply_deletes: bool = False,
    policy: ConflictPolicy = ConflictPolicy.REMAP,
    fk_clean: bool = False,
) -> tuple[Outcome, set[Problem], set[Problem]]:
    """Merge ``bundle`` into ``target`` the way the pipeline does (one write transaction, bundle
    attached) and return (outcome, the merge's own problems, PRAGMA foreign_key_check's rows), both
    read inside the transaction, which is then rolled back. ``fk_clean``: as the rollback passes
    it when the staged file's ``foreign_key_check`` was proven clean."""
    with readonly(target) as r:
        schema = reflect(r)
    conn = open_target(target, 5.0)
    try:
        attach_bundle(conn, bundle)
        wait_for_write_lock(conn, 5.0)
        try:
            outcome, problems = merge_and_check(
                conn,
                bundle,
                MergeOptions(on_conflict=policy, prefer=Prefer.DB, apply_deletes=apply_deletes),
                FilesConfig(),
                str(target),
                False,
                schema,
                limit=10**6,
                fk_clean=fk_clean,
            )
            full = {tuple(r) for r in conn.execute("PRAGMA main.foreign_key_check")}
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()
    mine = {(p["table"], p["rowid"], p["parent"], p["fk"]) for p in problems}
    assert len(mine) == len(problems), "a problem reported twice"
    return outcome, mine, full  # type: ignore[return-value]


def run_sql(db: Path, script: str, foreign_keys: bool = True) -> None:
    c = sqlite3.connect(db, isolation_level=None)
    c.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    c.executescript(script)
    c.close()


def fk_id(db: Path, child: str, column: str) -> int:
    """The id ``PRAGMA foreign_key_check`` reports for the key on ``child.column``."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return next(
            r[0] for r in c.execute(f'PRAGMA foreign_key_list("{child}")') if r[3] == column
        )


# ---- the sample world -----------------------------------------------------------------------

# fixtures `bundle` and `restored`: tests/conftest.py


def test_a_clean_merge_has_no_problems(bundle: Path, restored: Path) -> None:
    outcome, mine, full = merged(open_bundle(bundle), restored, apply_deletes=True)
    assert mine == full == set()
    assert (
        sum(t.inserted for t in outcome.tables.values()) > 20
        and outcome.tables["quote_items"].deleted == 4
    )


@pytest.fixture(params=["rows' order", "key order"])
def probes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Parents probed in the rows' order, or (every parent counted large) in key order by the
    pre-checks of detection and of the check (``context.in_key_order``)."""
    if request.param == "key order":
        monkeypatch.setattr(context, "LARGE_PARENT", 0)
    return str(request.param)


def test_missing_parent_slipping_past_detection_is_caught(
    bundle: Path, restored: Path, probes: str
) -> None:
    # part 112 is used only by new item 194: detection would skip the item; without it, it lands dangling
    run_sql(restored, "DELETE FROM parts WHERE id = 112;")
    _, mine, full = merged(without_fks(open_bundle(bundle)), restored)
    assert (
        mine == full == {("quote_items", 194, "parts", fk_id(restored, "quote_items", "part_id"))}
    )
    # with detection on, the item is skipped and nothing dangles
    outcome, mine, full = merged(open_bundle(bundle), restored)
    assert mine == full == set() and [c.kind for c in outcome.conflicts] == ["missing_parent"]


def test_apply_deletes_keeps_a_parent_the_target_still_references(
    bundle: Path, restored: Path, tmp_path: Path
) -> None:
    # quote 49 was deleted after the deploy and is unchanged since; the old app gave it a new item
    run_sql(
        restored,
        "INSERT INTO quote_items (id, quote_id, part_id, qty, unit_price) VALUES (9001, 49, 1, 1, 2.0);",
    )
    outcome, mine, full = merged(open_bundle(bundle), restored, apply_deletes=True)
    assert mine == full == set() and outcome.tables["quotes"].deleted == 0
    res = reimport(bundle, restored, tmp_path / "run", apply_deletes=True)
    assert res.outcome is not None and res.outcome.verification["ok"]
    with sqlite3.connect(f"file:{restored}?mode=ro", uri=True) as c:
        assert c.execute("SELECT 1 FROM quotes WHERE id = 49").fetchone() == (1,)


@pytest.mark.parametrize("fk_clean", [False, True])
def test_a_child_dangled_by_apply_deletes_is_caught(
    bundle: Path, restored: Path, fk_clean: bool
) -> None:
    # the same, with the delete guard bypassed: quote 49 goes and the old app's item 9001 dangles
    run_sql(
        restored,
        "INSERT INTO quote_items (id, quote_id, part_id, qty, unit_price) VALUES (9001, 49, 1, 1, 2.0);",
    )
    outcome, mine, full = merged(
        without_fks(open_bundle(bundle)), restored, apply_deletes=True, fk_clean=fk_clean
    )
    assert outcome.tables["quotes"].deleted == 1
    assert (
        mine
        == full
        == {("quote_items", 9001, "quotes", fk_id(restored, "quote_items", "quote_id"))}
    )
    _, mine, _ = merged(without_fks(open_bundle(bundle)), restored, apply_deletes=False)
    assert mine == set()


def test_an_app_trigger_does_not_fire_during_the_merge(bundle: Path, restored: Path) -> None:
    """A trigger of the target on a table the merge writes is suspended while it writes (issue 14
    §4): the dangling rows it would write never exist, so neither check finds any."""
    run_sql(
        restored,
        "CREATE TRIGGER audit_new_part AFTER INSERT ON parts BEGIN "
        "INSERT INTO quote_items (id, quote_id, part_id, qty, unit_price) "
        "VALUES (NEW.id + 1000000, 999999, NEW.id, 1, 0.0); END;",
    )
    outcome, mine, full = merged(open_bundle(bundle), restored)
    assert outcome.triggers_suspended == ["audit_new_part"]
    assert mine == full == set()


def test_problems_the_merge_did_not_write_are_left_to_verify(bundle: Path, restored: Path) -> None:
    # an orphan the old app left behind (foreign keys off), on a row the bundle does not touch
    run_sql(
        restored,
        "INSERT INTO quote_items (id, quote_id, part_id, qty, unit_price) "
        "VALUES (9002, 1, 999999, 1, 2.0);",
        foreign_keys=False,
    )
    _, mine, full = merged(open_bundle(bundle), restored)
    orphan = ("quote_items", 9002, "parts", fk_id(restored, "quote_items", "part_id"))
    assert mine == set() and full == {orphan}
    outcome = Outcome("b", "t", "remap", False)
    result = verify_file(restored, outcome, None)
    assert not result["ok"] and result["foreign_key_check"] == [
        dict(zip(("table", "rowid", "parent", "fk"), orphan, strict=True))
    ]


def test_an_untouched_dangling_key_of_an_updated_row_is_caught_unless_proven_clean(
    bundle: Path, restored: Path
) -> None:
    """The check of an updated row's keys on columns the UPDATE did not set is skipped only when
    the caller proved the target's foreign keys all resolved before (``fk_clean``, the rollback's
    sound staged proof): ``recovery reimport`` into any other target reads them all, so a row the
    bundle updates whose untouched key already dangled there is still refused."""
    with closing(sqlite3.connect(f"file:{Path(bundle) / 'rows.db'}?mode=ro", uri=True)) as c:
        (pid,) = c.execute(
            "SELECT id FROM quotes WHERE _recovery_kind = 'updated' ORDER BY id LIMIT 1"
        ).fetchone()
    run_sql(restored, f"UPDATE quotes SET created_by = 999999 WHERE id = {pid};", False)
    orphan = ("quotes", pid, "users", fk_id(restored, "quotes", "created_by"))
    outcome, mine, full = merged(open_bundle(bundle), restored)
    assert outcome.tables["quotes"].updated > 0
    assert mine == full == {orphan}
    before = restored.read_bytes()
    with pytest.raises(RecoveryError, match="foreign key check failed"):
        reimport(bundle, restored, restored.parent / "run")
    assert restored.read_bytes() == before
    # the skip, where the precondition holds by the caller's word (here it does not: the row
    # dangled before the merge, and only verify's whole-file check would see it)
    _, mine, full = merged(open_bundle(bundle), restored, fk_clean=True)
    assert mine == set() and full == {orphan}


# ---- a parent referenced by a unique non-key column ----------------------------------------

CODES = """
CREATE TABLE parent (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, note TEXT);
CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id),
                    parent_code TEXT REFERENCES parent(code), v INTEGER);
"""


LAYOUTS = {
    "rowid tables": CODES,
    "child WITHOUT ROWID": CODES.replace("v INTEGER);", "v INTEGER) WITHOUT ROWID;"),
    "parent WITHOUT ROWID": CODES.replace("note TEXT);", "note TEXT) WITHOUT ROWID;"),
}
"""The check remembers rowids; a WITHOUT ROWID table has none, so its keys are read in full."""


def two_dbs(folder: Path, backup_sql: str, live_sql: str, schema: str = CODES) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    backup, live = folder / "app.db.bak.20261120_140000", folder / "app.db"
    run_sql(backup, schema + backup_sql)
    shutil.copyfile(backup, live)
    run_sql(live, live_sql, foreign_keys=False)
    return backup, live


def test_a_child_of_a_rekeyed_parent_is_caught(tmp_path: Path) -> None:
    backup, live = two_dbs(
        tmp_path / "w",
        "INSERT INTO parent VALUES (1, 'a', NULL), (2, 'b', NULL);"
        "INSERT INTO child VALUES (1, 1, 'a', 0);",
        "UPDATE parent SET code = 'a2' WHERE id = 1;"
        "UPDATE child SET parent_code = 'a2' WHERE id = 1;",
    )
    extract(backup, live, tmp_path / "b")
    target = tmp_path / "t" / "app.db"
    target.parent.mkdir()
    shutil.copyfile(backup, target)
    run_sql(target, "INSERT INTO child VALUES (2, 2, 'a', 5);")  # the old app, since the rollback
    outcome, mine, full = merged(open_bundle(tmp_path / "b"), target)
    assert outcome.tables["parent"].updated == 1
    assert mine == full == {("child", 2, "parent", fk_id(target, "child", "parent_code"))}
    before = target.read_bytes()
    with pytest.raises(RecoveryError, match="foreign key"):
        reimport(tmp_path / "b", target, tmp_path / "run")
    assert target.read_bytes() == before


# ---- property: after any merge, the merge's problems are exactly SQLite's -------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["ins_parent", "ins_child", "upd_child", "recode", "del_child", "del_parent", "note"]
        ),
        st.integers(1, 6),
        st.integers(0, 6),
    ),
    min_size=2,
    max_size=12,
)


def play(db: Path, steps: list[tuple[str, int, int]], foreign_keys: bool, first_id: int) -> None:
    """Apply random app activity; with foreign keys on, statements SQLite refuses are dropped."""
    c = sqlite3.connect(db, isolation_level=None)
    c.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    n = first_id
    for kind, a, b in steps:
        n += 1
        ref = b or None
        stmt = {
            "ins_parent": ("INSERT INTO parent VALUES (?, ?, NULL)", (n, f"p{n}")),
            "ins_child": (
                "INSERT INTO child VALUES (?, ?, (SELECT code FROM parent WHERE id = ?), 0)",
                (n, ref, a),
            ),
            "upd_child": ("UPDATE child SET parent_id = ?, v = v + 1 WHERE id = ?", (ref, a)),
            "recode": ("UPDATE parent SET code = code || 'x' WHERE id = ?", (a,)),
            "del_child": ("DELETE FROM child WHERE id = ?", (a,)),
            "del_parent": ("DELETE FROM parent WHERE id = ?", (a,)),
            "note": ("UPDATE parent SET note = ? WHERE id = ?", (f"n{n}", a)),
        }[kind]
        try:
            c.execute(*stmt)
        except sqlite3.IntegrityError:
            pass
    c.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    live=ops,
    since=ops,
    bypass=st.booleans(),
    apply_deletes=st.booleans(),
    policy=st.sampled_from([ConflictPolicy.REMAP, ConflictPolicy.SKIP]),
    layout=st.sampled_from(sorted(LAYOUTS)),
    fk_clean=st.booleans(),
    key_order=st.booleans(),
)
def test_merge_problems_equal_foreign_key_check(
    live: list,
    since: list,
    bypass: bool,
    apply_deletes: bool,
    policy: ConflictPolicy,
    layout: str,
    fk_clean: bool,
    key_order: bool,
) -> None:
    """Also with ``fk_clean`` (the target below is consistent: its check is asserted empty), where
    the check reads, of an updated row, only the keys on columns the UPDATE set; and with every
    parent probed in key order first (``key_order``: its pre-checks, ``context.in_key_order``)."""
    threshold = context.LARGE_PARENT
    context.LARGE_PARENT = 0 if key_order else threshold
    try:
        _merge_problems_equal_foreign_key_check(
            live, since, bypass, apply_deletes, policy, layout, fk_clean
        )
    finally:
        context.LARGE_PARENT = threshold


def _merge_problems_equal_foreign_key_check(
    live: list,
    since: list,
    bypass: bool,
    apply_deletes: bool,
    policy: ConflictPolicy,
    layout: str,
    fk_clean: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        backup, live_db = two_dbs(
            folder / "w",
            "INSERT INTO parent VALUES (1, 'a', NULL), (2, 'b', NULL), (3, 'c', NULL);"
            "INSERT INTO child VALUES (1, 1, 'a', 0), (2, 2, 'c', 0), (3, NULL, NULL, 0);",
            "",
            LAYOUTS[layout],
        )
        play(live_db, live, foreign_keys=False, first_id=10)  # post-deploy: anything, even orphans
        try:
            extract(backup, live_db, folder / "b")
        except RecoveryError:
            return  # nothing changed: no bundle to merge
        target = folder / "t.db"
        shutil.copyfile(backup, target)
        play(
            target, since, foreign_keys=True, first_id=10
        )  # the old app since the rollback: consistent
        with closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True)) as c:
            assert c.execute("PRAGMA foreign_key_check").fetchall() == []
        b = open_bundle(folder / "b")
        outcome, mine, full = merged(
            without_fks(b) if bypass else b, target, apply_deletes, policy, fk_clean
        )
        event(
            f"problems: {min(len(full), 3)}{'+' if len(full) >= 3 else ''}; "
            f"re-deleted rows: {any(t.deleted for t in outcome.tables.values())}"
        )
        event(layout)
        assert mine == full


# ---- verify_file ----------------------------------------------------------------------------


def test_verify_file_matches_verify(bundle: Path, restored: Path) -> None:
    outcome = reimport(bundle, restored, restored.parent / "run").outcome
    assert outcome is not None
    with readonly(restored) as conn:
        one = verify(conn, outcome, outcome.verification["alembic_revision"]["expected"])
    both = verify_file(restored, outcome, one["alembic_revision"]["expected"])
    assert both == one and both["ok"]
    assert verify_file(restored, outcome, "not-this-revision")["alembic_revision"]["ok"] is False


def test_verify_file_reports_a_broken_index_like_verify(tmp_path: Path) -> None:
    db = tmp_path / "broken.db"
    run_sql(
        db,
        "CREATE TABLE t (a INTEGER, b INTEGER); CREATE INDEX ix ON t (a);"
        "INSERT INTO t VALUES (1, 10), (2, 20), (3, 30);"
        "PRAGMA writable_schema = ON;"
        "UPDATE sqlite_master SET sql = 'CREATE INDEX ix ON t (b)' WHERE name = 'ix';",
    )
    outcome = Outcome("b", "t", "remap", False)
    with readonly(db) as conn:
        one = verify(conn, outcome, None)
    assert one["integrity_check"] != "ok" and not one["ok"]
    assert verify_file(db, outcome, None) == one


def test_verify_file_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "gestima.db"
    bad.write_text("not a database\n" * 20)
    with pytest.raises(RecoveryError, match="live database"):
        verify_file(bad, Outcome("b", "t", "remap", False), None, role="live database")


# ---- probing in key order decides as probing row by row --------------------------------------

sql_values = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.sampled_from([1.0, 2.5, -0.0]),
    st.sampled_from(["1", "2", "a", "A", "a ", "1.0", " 1", ""]),
    st.sampled_from([b"1", b"a", b""]),
)
column_types = st.sampled_from(["", "INTEGER", "TEXT", "NUMERIC", "REAL", "BLOB"])
collations = st.sampled_from(["", " COLLATE NOCASE", " COLLATE RTRIM"])


@settings(max_examples=150, deadline=None)
@given(
    child=st.lists(sql_values, max_size=6),
    parent=st.lists(sql_values, max_size=5),
    child_type=column_types,
    parent_type=column_types,
    child_coll=collations,
    parent_coll=collations,
    op=st.sampled_from(["=", "IS"]),
)
def test_a_condition_on_values_in_key_order_decides_as_on_the_rows(
    child: list[object],
    parent: list[object],
    child_type: str,
    parent_type: str,
    child_coll: str,
    parent_coll: str,
    op: str,
) -> None:
    """``context.in_key_order`` materializes a column's values sorted and reads them back: a
    parent probe on them (``p.ref = c.v`` as the check writes it, ``p.ref IS c.v`` as detection
    does) finds exactly the rows' orphans, whatever the columns' affinities and collations."""
    from sqlglot import exp

    from recovery.engine.sqlbuild import col, sql, table

    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE c (v {child_type}{child_coll})")
    conn.execute(f"CREATE TABLE p (ref {parent_type}{parent_coll})")
    conn.executemany("INSERT INTO c VALUES (?)", [(v,) for v in child])
    conn.executemany("INSERT INTO p VALUES (?)", [(v,) for v in parent])
    match = exp.EQ if op == "=" else exp.Is
    orphan = exp.Not(
        this=exp.Exists(
            this=exp.select("1")
            .from_(table("p", "main", "p"))
            .where(match(this=col("ref", "p"), expression=col("v", "c")))
        )
    )
    rows = exp.select(exp.column("rowid", "c")).from_(table("c", "main", "c"))
    by_row = conn.execute(sql(rows.select(col("v", "c"), append=False).where(orphan))).fetchall()
    in_order = context.in_key_order(rows, ["v"], "c").select(col("v", "c"), append=False)
    by_key = conn.execute(sql(in_order.where(orphan.copy()))).fetchall()
    assert sorted(map(repr, by_row)) == sorted(map(repr, by_key))
