"""The upgrade replayed on a bounded copy of the backup (:mod:`recovery.migrate.bounded`) answers
exactly as on the full copy: same bundle, same lost values, same "filled by the upgrade" list.
Where a migration reads rows the bounded copy left out, the judge refuses the copy and the full
one is used; with the judge switched off, the same migrations give a different (wrong) answer,
which is what the judge is there for."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from alembic_apps import write_app
from recovery.migrate import bounded
from recovery.migrate.bounded import FULL_ENV, BoundedCopy, judge

from tests.clirun import invoke


def cli(*args: str | Path, full: bool = False) -> subprocess.CompletedProcess[str]:
    """The real command, in this process (:mod:`tests.clirun`), with ``RECOVERY_REPLAY_FULL=1``
    when ``full`` and unset otherwise (it is read at each replay)."""
    return invoke(*args, env={FULL_ENV: "1" if full else None})


def dump(bundle: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the bundle's rows.db and base.db, rows in file order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for f in ("rows.db", "base.db"):
        with closing(sqlite3.connect(f"file:{bundle / f}?mode=ro", uri=True)) as conn:
            names = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for n in names:
                out[f"{f}:{n}"] = conn.execute(f'SELECT * FROM "{n}" ORDER BY rowid').fetchall()
    return out


def extract_both(
    backup: Path, live: Path, ini: Path, out: Path, *extra: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(bounded, full): the extract's JSON summary and the bundle's tables, once each way."""
    results = []
    for name, full in (("bounded", False), ("full", True)):
        res = cli(
            "extract",
            backup,
            live,
            "--alembic-ini",
            ini,
            "--out",
            out / name,
            "--json",
            *extra,
            full=full,
        )
        assert res.returncode in (0, 1), res.stderr
        summary = json.loads(res.stdout)
        summary.pop("bundle")
        summary.pop("bundle_id")
        results.append({"summary": summary, "tables": dump(out / name)})
    return results[0], results[1]


def test_sample_world_same_bundle_bounded_and_full(tmp_path: Path) -> None:
    """The sample world's upgrade (bb001 fills parts.file_id from file_records, bb003 adds
    quotes.discount_pct, batch rebuilds of parts and quotes): the bundle (every row of rows.db
    and base.db, the lost and filled lists) and the summary are the same either way — and the
    bounded copy really is smaller than the backup, and the judge accepts it."""
    from recovery.compare.diff import analyse, replayed_upgrade
    from recovery.sample import app_dir

    assert cli("sample", tmp_path / "w", "--parts", "60").returncode == 0
    w = tmp_path / "w"
    backup = next(w.glob("gestima.db.bak.*"))
    ini = app_dir() / "alembic.ini"
    b, f = extract_both(backup, w / "gestima.db", ini, tmp_path)
    assert b == f
    assert b["summary"]["counts"]["quotes"]["lost"] >= 1  # something was asked of the replay
    assert b["tables"]["rows.db:_recovery_lost"]
    diffs = [
        json.loads(
            cli("diff", backup, w / "gestima.db", "--alembic-ini", ini, "--json", full=x).stdout
        )
        for x in (False, True)
    ]
    assert diffs[0] == diffs[1]
    with analyse(backup, w / "gestima.db", None, None, None, False) as a:
        rp = replayed_upgrade(ini, backup, w / "gestima.db", tmp_path, a)
    assert rp is not None
    with closing(sqlite3.connect(rp.path)) as c, closing(sqlite3.connect(backup)) as o:
        n = c.execute("SELECT count(*) FROM parts").fetchone()[0]
        assert 0 < n < o.execute("SELECT count(*) FROM parts").fetchone()[0]
        assert (
            c.execute("SELECT version_num FROM alembic_version").fetchone()[0]
            == "bb006_drop_parts_notes"
        )


R1 = """op.create_table("parts", sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50)), sa.Column("price", sa.Integer))
op.create_table("items", sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("part_id", sa.Integer, sa.ForeignKey("parts.id")), sa.Column("qty", sa.Integer))"""

# pos: a part's rank among all parts, filled only where price >= 50 (so most rows keep NULL and
# the bounded copy holds only some parts): an aggregate over rows the bounded copy leaves out
POS_UP = """with op.batch_alter_table("parts") as b:
    b.add_column(sa.Column("pos", sa.Integer, nullable=True))
op.execute("UPDATE parts SET pos = (SELECT count(*) FROM parts AS p2 WHERE p2.id <= parts.id) "
           "WHERE parts.price >= 50")"""
# n_items: an aggregate over FK children (which the bounded copy does hold, but the judge refuses
# any read of a bounded table other than the row itself)
ITEMS_UP = """with op.batch_alter_table("parts") as b:
    b.add_column(sa.Column("n_items", sa.Integer, nullable=True))
op.execute("UPDATE parts SET n_items = (SELECT count(*) FROM items WHERE items.part_id = parts.id) "
           "WHERE parts.price >= 50")"""
# a Python loop that reads every part and writes an aggregate: refused too
LOOP_UP = """with op.batch_alter_table("parts") as b:
    b.add_column(sa.Column("share", sa.Integer, nullable=True))
conn = op.get_bind()
rows = conn.exec_driver_sql("SELECT id, price FROM parts").fetchall()
total = sum(r[1] for r in rows)
for i, p in rows:
    if p >= 50:
        conn.exec_driver_sql("UPDATE parts SET share = ? WHERE id = ?", (1000 * p // total, i))"""
# the count of all parts reaches the new column through a statement-level CTE of an INSERT into
# a scratch table the upgrade creates (whole, so reading it is row-local unless the CTE is seen)
CTE_UP = """with op.batch_alter_table("parts") as b:
    b.add_column(sa.Column("tally", sa.Integer, nullable=True))
op.execute("CREATE TABLE counts (id INTEGER PRIMARY KEY, n INTEGER)")
op.execute("WITH c AS (SELECT count(*) AS n FROM parts) INSERT INTO counts (id, n) SELECT 1, n FROM c")
op.execute("UPDATE parts SET tally = (SELECT n FROM counts WHERE id = 1) WHERE parts.price >= 50")
op.execute("DROP TABLE counts")"""


def aggregate_world(tmp_path: Path, up: str, column: str) -> tuple[Path, Path, Path]:
    """(ini, backup at r1 with 40 parts and their items, live upgraded to r2 where a user then set
    ``column`` of part 3 — a row the upgrade left NULL — and changed it on part 45)."""
    from recovery.migrate.sandbox import migrate_once

    ini = write_app(
        tmp_path / "app",
        [
            ("r1", None, R1, 'op.drop_table("items")\nop.drop_table("parts")'),
            (
                "r2",
                "r1",
                up,
                f'with op.batch_alter_table("parts") as b:\n    b.drop_column("{column}")',
            ),
        ],
    )
    backup = tmp_path / "app.db.bak"
    migrate_once(ini, backup, "upgrade", "r1")
    with closing(sqlite3.connect(backup)) as conn, conn:
        conn.executemany(
            "INSERT INTO parts (id, name, price) VALUES (?, ?, ?)",
            [(i, f"p{i}", (i * 37) % 100) for i in range(1, 51)],
        )
        conn.executemany(
            "INSERT INTO items (id, part_id, qty) VALUES (?, ?, ?)",
            [(i, 1 + i % 50, i) for i in range(1, 121)],
        )
    live = tmp_path / "app.db"
    live.write_bytes(backup.read_bytes())
    migrate_once(ini, live, "upgrade", "r2")
    with closing(sqlite3.connect(live)) as conn, conn:
        assert conn.execute(f"SELECT {column} FROM parts WHERE id = 3").fetchone() == (None,)
        conn.execute(f"UPDATE parts SET {column} = 7 WHERE id = 3")
        conn.execute(f"UPDATE parts SET {column} = {column} + 1000 WHERE id = 45")
    return ini, backup, live


def lost(summary_tables: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(r[1:5] for r in summary_tables["rows.db:_recovery_lost"])


@pytest.mark.parametrize(
    ("up", "column"),
    [(POS_UP, "pos"), (ITEMS_UP, "n_items"), (LOOP_UP, "share"), (CTE_UP, "tally")],
)
def test_migration_reading_other_rows_falls_back_to_the_full_copy(
    tmp_path: Path, up: str, column: str
) -> None:
    """Each migration computes the new column from rows other than the row itself: the judge
    refuses the bounded copy, the upgrade is replayed on the full copy, and the bundle is the
    full copy's: exactly the two values the user set are lost."""
    ini, backup, live = aggregate_world(tmp_path, up, column)
    b, f = extract_both(backup, live, ini, tmp_path)
    assert b == f
    assert [(r[0], r[2]) for r in lost(b["tables"])] == [("[3]", column), ("[45]", column)]


def test_without_the_judge_the_bounded_copy_would_be_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The judge is what keeps the aggregate right: accept the bounded copy regardless and the
    ranks the upgrade computed over all 50 parts come out different over the parts kept, so
    values the migration wrote are reported as a user's (this test fails if the bounded copy
    ever stops being bounded, or if the fallback is ever skipped)."""
    from recovery.bundle.extract import extract

    ini, backup, live = aggregate_world(tmp_path, POS_UP, "pos")
    caplog.set_level(logging.INFO, logger="recovery.migrate.replay")
    monkeypatch.delenv(FULL_ENV, raising=False)
    right = extract(backup, live, tmp_path / "judged", alembic_ini=ini).summary()
    assert "replayed on a full copy" in caplog.text and "bounded table parts" in caplog.text
    monkeypatch.setattr(bounded, "judge", lambda *a, **k: None)
    wrong = extract(backup, live, tmp_path / "unjudged", alembic_ini=ini).summary()
    assert right["lost"] == 2
    assert wrong["lost"] > right["lost"]


# row-local statements only, but the Python code branches on how many rows one UPDATE touched:
# the count of the rows the bounded copy left out reaches the needed rows through Python
ROWCOUNT_UP = """with op.batch_alter_table("parts") as b:
    b.add_column(sa.Column("cheap", sa.Integer, nullable=True))
conn = op.get_bind()
n = conn.exec_driver_sql("UPDATE parts SET cheap = NULL WHERE price < 50").rowcount
conn.exec_driver_sql("UPDATE parts SET cheap = ? WHERE price >= 50", (n,))"""


@pytest.mark.xfail(
    strict=True,
    reason="known limit of the judge: statements are judged, not what Python does with a "
    "cursor's rowcount (or RETURNING rows) of a statement on a bounded table",
)
def test_a_rowcount_of_a_bounded_table_reaching_python_is_not_seen(tmp_path: Path) -> None:
    ini, backup, live = aggregate_world(tmp_path, ROWCOUNT_UP, "cheap")
    b, f = extract_both(backup, live, ini, tmp_path)
    assert b == f


def test_full_copy_env_skips_the_bounded_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECOVERY_REPLAY_FULL=1: the documented fallback, the bounded copy is never built."""
    from recovery.bundle.extract import extract

    ini, backup, live = aggregate_world(tmp_path, POS_UP, "pos")
    monkeypatch.setenv(FULL_ENV, "1")

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("bounded copy built")

    monkeypatch.setattr(bounded, "build", refuse)
    assert extract(backup, live, tmp_path / "b", alembic_ini=ini).summary()["lost"] == 2


def _copy(
    filtered: set[str], views: set[str] = frozenset(), triggers: tuple[str, ...] = ()
) -> BoundedCopy:  # type: ignore[assignment]
    return BoundedCopy(
        Path("unused"),
        frozenset(filtered),
        {"parts": ("id",), "items": ("id",), "files": ("id",)},
        frozenset(views),
        triggers,
        0,
    )


ACCEPTED = [
    "UPDATE parts SET price_cents = CAST(ROUND(price * 100) AS INTEGER)",
    "UPDATE parts SET file_id = (SELECT f.id FROM files AS f WHERE f.entity_id = parts.id)",
    "DELETE FROM parts WHERE price < 0",
    "CREATE TABLE _alembic_tmp_parts (id INTEGER NOT NULL, name TEXT, PRIMARY KEY (id))",
    "INSERT INTO _alembic_tmp_parts (id, name) SELECT parts.id, parts.name FROM parts",
    "SELECT sql FROM (SELECT * FROM sqlite_master UNION ALL SELECT * FROM sqlite_temp_master)",
    'PRAGMA main.table_info("parts")',
    "SELECT id FROM files",
    "INSERT INTO files (id) VALUES (1)",
    "CREATE VIEW v AS SELECT count(*) FROM parts",
    "ALTER TABLE parts ADD COLUMN x INTEGER",
]

REFUSED = [
    ("UPDATE parts SET n = changes() WHERE id = 3", "changes()"),
    ("SELECT total_changes()", "total_changes()"),
    ("UPDATE parts SET n = (SELECT count(*) FROM items WHERE items.part_id = parts.id)", "items"),
    ("UPDATE parts SET n = (SELECT count(*) FROM parts AS p2 WHERE p2.id < parts.id)", "parts"),
    ("UPDATE files SET n = (SELECT max(price) FROM parts)", "parts"),
    ("SELECT id, price FROM parts", "parts"),
    ("SELECT count(*) FROM parts", "parts"),
    ("INSERT INTO parts (name) VALUES ('x')", "new rows"),
    ("INSERT INTO _t (name) SELECT name FROM parts", "key column"),
    ("INSERT INTO _t (id, name) SELECT id + 1, name FROM parts", "key column"),
    ("INSERT INTO _t (id, n) SELECT id, count(*) FROM parts GROUP BY id", "parts"),
    ("INSERT INTO _t (id) SELECT id FROM parts WHERE price > 5", "parts"),
    ("UPDATE parts SET id = id + 1000", "key column"),
    ("UPDATE parts SET rowid = rowid + 1", "key column"),
    ("PRAGMA foreign_key_check", "foreign_key_check"),
    ("SELECT * FROM pragma_foreign_key_check()", "foreign_key_check"),
    ("INSERT OR REPLACE INTO _t (id, name) SELECT id, name FROM parts", "conflict"),
    ("INSERT INTO parts (id) SELECT id FROM files ON CONFLICT DO NOTHING", "conflict"),
    ("UPDATE OR IGNORE parts SET name = lower(name)", ""),
    ("REPLACE INTO parts (id, name) VALUES (1, 'x')", ""),
    ("CREATE TRIGGER t AFTER UPDATE ON files BEGIN UPDATE parts SET n = 1; END", "trigger"),
    ("SELECT * FROM v_totals", "v_totals"),
    ("THIS IS NOT SQL ((", ""),
    (
        "WITH c AS (SELECT count(*) AS n FROM parts) INSERT INTO files (id, n) SELECT 1, n FROM c",
        "parts",
    ),
    (
        "INSERT INTO files (id) WITH c AS (SELECT max(id) AS id FROM parts) SELECT id FROM c",
        "parts",
    ),
    ("INSERT INTO parts (id) WITH c AS (SELECT max(id) + 1 AS id FROM parts) SELECT id FROM c", ""),
    (
        (
            "UPDATE files SET n = 1 WHERE id IN (WITH parts AS (SELECT 1 AS id) SELECT id FROM parts)"
            " OR n = (SELECT count(*) FROM parts)"
        ),
        "parts",
    ),
]


@pytest.mark.parametrize("statement", ACCEPTED)
def test_judge_accepts_row_local_statements(statement: str) -> None:
    assert judge([statement], _copy({"parts", "items"}), {}) is None


@pytest.mark.parametrize(("statement", "why"), REFUSED)
def test_judge_refuses_what_may_read_rows_left_out(statement: str, why: str) -> None:
    reason = judge([statement], _copy({"parts", "items"}, {"v_totals"}), {})
    assert reason is not None and why in reason


def test_judge_follows_a_batch_rebuild() -> None:
    """The rebuilt table is bounded again after the rename: reading it in aggregate is refused."""
    steps = [
        "CREATE TABLE _alembic_tmp_parts (id INTEGER NOT NULL, name TEXT, PRIMARY KEY (id))",
        "INSERT INTO _alembic_tmp_parts (id, name) SELECT parts.id, parts.name FROM parts",
        "DROP TABLE parts",
        "ALTER TABLE _alembic_tmp_parts RENAME TO parts",
    ]
    assert judge(steps, _copy({"parts"}), {}) is None
    assert judge([*steps, "SELECT max(id) FROM parts"], _copy({"parts"}), {}) is not None
    # a whole table stays whole through the same moves
    assert judge([*steps, "SELECT max(id) FROM parts"], _copy({"items"}), {}) is None


def test_judge_follows_a_copy_into_a_temp_table() -> None:
    """A bounded table copied into a TEMP table leaves that table bounded too."""
    steps = [
        "CREATE TEMP TABLE x (id INTEGER)",
        "INSERT INTO temp.x (id) SELECT id FROM parts",
        "UPDATE files SET n = (SELECT count(*) FROM temp.x)",
    ]
    reason = judge(steps, _copy({"parts"}), {})
    assert reason is not None and "bounded table x" in reason


def test_judge_rejudges_triggers_when_a_table_becomes_bounded() -> None:
    """A trigger on a whole table is harmless until a copy from a bounded table fills that table:
    then it fires once per row kept, and what it writes depends on the rows left out."""
    trig = "CREATE TRIGGER t AFTER INSERT ON logs BEGIN UPDATE files SET n = n + 1; END"
    copy_in = "INSERT INTO logs (id) SELECT id FROM parts"
    read = "UPDATE parts SET n = (SELECT n FROM files WHERE id = 1)"
    assert judge([trig, copy_in, read], _copy({"parts"}), {}) is not None
    assert judge([copy_in, read], _copy({"parts"}, triggers=(trig,)), {}) is not None
    assert judge([trig, copy_in, read], _copy({"items"}), {}) is None


def test_judge_rejudges_triggers_when_a_rename_makes_their_table_bounded() -> None:
    """A trigger naming ``lines`` is harmless while ``lines`` is no table of the copy; a rename
    that gives a bounded table that name makes the trigger read the rows left out."""
    trig = (
        "CREATE TRIGGER t AFTER INSERT ON probe BEGIN UPDATE probe SET n = "
        "(SELECT count(*) FROM lines WHERE lines.part_id = NEW.id) WHERE id = NEW.id; END"
    )
    rename = "ALTER TABLE items RENAME TO lines"
    reason = judge([trig, rename], _copy({"parts", "items"}), {})
    assert reason is not None and "renames items to lines" in reason
    assert judge([trig, rename], _copy({"parts"}), {}) is None  # items whole: lines is whole


# Migrations that count a needed part's own items through channels the judge cannot read as a
# read of ``items`` (a cursor's rowcount, a foreign-key failure; SQL's changes() and a trigger on a
# scratch table naming the items table under a name a rename gives it do the same), and two that
# count all items through the last two. The bounded copy holds every item of a needed part (its FK descendants), and
# whole-table counts are refused: the bundle is the full copy's. Found by an adversarial pass on a
# copy without the descendants (round 12), which gave 26 lost values instead of the user's 2.
_PER_PART_ROWCOUNT = """op.add_column("parts", sa.Column("n_items", sa.Integer, nullable=True))
conn = op.get_bind()
for i in range(1, 51):
    n = conn.exec_driver_sql("UPDATE items SET qty = qty WHERE part_id = ?", (i,)).rowcount
    conn.exec_driver_sql("UPDATE parts SET n_items = ? WHERE id = ? AND price >= 50", (n, i))"""
_FK_DELETE = """conn = op.get_bind()
conn.exec_driver_sql("PRAGMA foreign_keys = 2")
op.add_column("parts", sa.Column("kept", sa.Integer, nullable=True))
for i in range(1, 51):
    try:
        conn.exec_driver_sql("DELETE FROM parts WHERE id = ? AND price >= 50", (i,))
    except sa.exc.IntegrityError:
        conn.exec_driver_sql("UPDATE parts SET kept = 1 WHERE id = ?", (i,))"""
_TRIGGER_RENAME = """op.add_column("parts", sa.Column("n_items", sa.Integer, nullable=True))
op.execute("PRAGMA legacy_alter_table = ON")
op.execute("CREATE TABLE probe (id INTEGER PRIMARY KEY, n INTEGER)")
op.execute("CREATE TRIGGER probe_n AFTER INSERT ON probe BEGIN UPDATE probe SET n = "
           "(SELECT count(*) FROM lines WHERE lines.part_id = NEW.id) WHERE id = NEW.id; END")
op.execute("ALTER TABLE items RENAME TO lines")
op.execute("INSERT INTO probe (id) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
           "FROM s WHERE i < 50) SELECT i FROM s")
op.execute("ALTER TABLE lines RENAME TO items")
op.execute("UPDATE parts SET n_items = (SELECT n FROM probe WHERE probe.id = parts.id) "
           "WHERE price >= 50")
op.execute("DROP TRIGGER probe_n")
op.execute("DROP TABLE probe")
op.execute("PRAGMA legacy_alter_table = OFF")"""
_TOTAL_CHANGES = """op.add_column("parts", sa.Column("n_items", sa.Integer, nullable=True))
conn = op.get_bind()
conn.exec_driver_sql("UPDATE items SET qty = qty")
conn.exec_driver_sql("UPDATE parts SET n_items = changes() WHERE price >= 50")"""


@pytest.mark.parametrize(
    ("up", "column"),
    [
        pytest.param(_PER_PART_ROWCOUNT, "n_items", id="per-part-rowcount"),
        pytest.param(_FK_DELETE, "kept", id="fk-enforcement-delete"),
        pytest.param(
            _TRIGGER_RENAME.replace(" WHERE lines.part_id = NEW.id)", ")"),
            "n_items",
            id="all-items-trigger-rename",
        ),
        pytest.param(_TOTAL_CHANGES, "n_items", id="all-items-changes"),
    ],
)
def test_counts_of_rows_the_judge_cannot_see_answer_as_on_the_full_copy(
    tmp_path: Path, up: str, column: str
) -> None:
    ini, backup, live = aggregate_world(tmp_path, up, column)
    b, f = extract_both(backup, live, ini, tmp_path)
    assert b == f
    assert [(r[0], r[2]) for r in lost(b["tables"])] == [("[3]", column), ("[45]", column)]


def test_judge_refuses_a_backup_trigger_on_a_bounded_table() -> None:
    trig = "CREATE TRIGGER t AFTER UPDATE ON parts BEGIN UPDATE files SET n = n + 1; END"
    assert judge([], _copy({"parts"}, triggers=(trig,)), {}) is not None
    assert judge([], _copy({"items"}, triggers=(trig,)), {}) is None


def test_bounded_copy_holds_the_rows_their_closure_and_the_whole_schema(tmp_path: Path) -> None:
    """Built from a backup with AUTOINCREMENT, a foreign key naming no column (and another case),
    grandchildren, an unrelated table with a trigger that counts inserts, a view, user_version:
    the needed parents, all their descendants and the ancestors of every row kept are there, no
    other row of those tables; the unrelated table is whole; sqlite_sequence, user_version, the
    view and the trigger are the backup's; the trigger did not fire while the rows were copied."""
    from sqlglot import exp as e

    db = tmp_path / "b.db"
    with closing(sqlite3.connect(db)) as c, c:
        c.executescript(
            """
            PRAGMA user_version = 7;
            CREATE TABLE P (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);
            CREATE TABLE c (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p);
            CREATE TABLE g (id INTEGER PRIMARY KEY, c_id INTEGER REFERENCES C(id),
                            other INTEGER REFERENCES P(id));
            CREATE TABLE u (id INTEGER PRIMARY KEY, x TEXT);
            CREATE TABLE counter (n INTEGER);
            INSERT INTO counter VALUES (0);
            CREATE TRIGGER count_u AFTER INSERT ON u BEGIN UPDATE counter SET n = n + 1; END;
            CREATE VIEW pv AS SELECT count(*) AS n FROM P;
            """
        )
        c.executemany("INSERT INTO P (v) VALUES (?)", [(f"v{i}",) for i in range(1, 11)])
        c.execute("DELETE FROM P WHERE id = 10")  # sqlite_sequence stays at 10
        c.executemany("INSERT INTO c (id, p) VALUES (?, ?)", [(i, 1 + i % 9) for i in range(1, 31)])
        c.executemany(
            "INSERT INTO g (id, c_id, other) VALUES (?, ?, ?)",
            [(i, 1 + i % 30, 1 + (i * 7) % 9) for i in range(1, 61)],
        )
        c.executemany("INSERT INTO u (id, x) VALUES (?, ?)", [(i, str(i)) for i in range(5)])
    need = e.In(this=bounded.col("id", "o"), expressions=[e.Literal.number(2)])
    copy = bounded.build(db, db, tmp_path / "bounded.db", {"P": need})
    assert copy is not None and copy.filtered == {"P", "c", "g"}
    with closing(sqlite3.connect(tmp_path / "bounded.db")) as b, closing(sqlite3.connect(db)) as o:

        def q(conn: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
            return conn.execute(sql).fetchall()

        # descendants of P 2: its children c, and g rows under those c or under P 2 itself
        c_down = {r[0] for r in q(o, "SELECT id FROM c WHERE p = 2")}
        g_down = q(o, "SELECT * FROM g ORDER BY id")
        g_down = [r for r in g_down if r[1] in c_down or r[2] == 2]
        assert q(b, "SELECT * FROM g ORDER BY id") == g_down
        # ancestors of every row kept: the c rows those g rows name, and the P rows of both
        c_all = c_down | {r[1] for r in g_down}
        assert {r[0] for r in q(b, "SELECT id FROM c")} == c_all
        p_all = {2} | {r[2] for r in g_down}
        p_all |= {r[1] for r in q(o, "SELECT * FROM c") if r[0] in c_all}
        assert {r[0] for r in q(b, "SELECT id FROM P")} == p_all
        assert len(c_all) < 30 and len(p_all) < 9 and len(g_down) < 60  # bounded
        whole_c = q(o, "SELECT * FROM c ORDER BY id")
        assert q(b, "SELECT * FROM c ORDER BY id") == [r for r in whole_c if r[0] in c_all]
        assert q(b, "SELECT * FROM u ORDER BY id") == q(o, "SELECT * FROM u ORDER BY id")
        assert q(b, "SELECT n FROM counter") == q(o, "SELECT n FROM counter") == [(5,)]
        assert q(b, "SELECT * FROM sqlite_sequence") == q(o, "SELECT * FROM sqlite_sequence")
        assert q(b, "PRAGMA user_version") == [(7,)]
        schema = "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
        assert q(b, schema) == q(o, schema)


def test_a_bounded_copy_sqlite_cannot_build_falls_back_to_the_full_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite refusing the bounded copy (a collation only the app registers, say) is not an
    error: the upgrade is replayed on the full copy and the answer is the full copy's."""
    from recovery.bundle.extract import extract

    ini, backup, live = aggregate_world(tmp_path, POS_UP, "pos")
    monkeypatch.delenv(FULL_ENV, raising=False)

    def fail(*a: object, **k: object) -> None:
        raise sqlite3.OperationalError("no such collation sequence: app_nocase")

    monkeypatch.setattr(bounded, "build", fail)
    assert extract(backup, live, tmp_path / "b", alembic_ini=ini).summary()["lost"] == 2
