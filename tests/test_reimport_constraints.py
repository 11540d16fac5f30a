"""Issue 14 §3/§4 in the re-import: a row the old schema refuses (CHECK, NOT NULL, STRICT, unique
index on an expression, partial unique index) is a ``constraint`` conflict that skips its unit
while every other row lands; generated columns are never written; the target's triggers do not
fire for carried rows and come back byte-identical; AUTOINCREMENT counters never go backwards.

Each test builds a small backup (old schema) / live (new release, relaxed schema) pair on disk,
extracts a real bundle and re-imports it into a copy of the backup with the CLI."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery.cli import main
from recovery.bundle.extract import extract
from tests.forkrun import forked


def ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def cli(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def run_sql(db: Path, script: str) -> None:
    c = sqlite3.connect(db, isolation_level=None)
    c.executescript(script)
    c.close()


def make_pair(
    tmp: Path, old_ddl: str, new_ddl: str, base_rows: str, post_deploy: str
) -> tuple[Path, Path]:
    """backup = old schema + base rows; live = the new release's schema + the same rows + what
    users did after the deploy; returns (bundle folder, target = the restored backup)."""
    backup, live = tmp / "app.db.bak.20261120_140000", tmp / "app.db"
    run_sql(backup, old_ddl + base_rows)
    run_sql(live, new_ddl + base_rows + post_deploy)
    extract(backup, live, tmp / "bundle")
    target = tmp / "t" / "app.db"
    target.parent.mkdir()
    shutil.copyfile(backup, target)
    return tmp / "bundle", target


def reimport(bundle: Path, target: Path, run: Path, *extra: str) -> tuple[int, dict]:
    res = cli("reimport", bundle, target, "--out", run, "--yes", *extra)
    report = (
        json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
    )
    return res.exit_code, report


def constraint_keys(report: dict, table: str) -> list[int]:
    return sorted(
        c["key"][0]
        for c in report["outcome"]["conflicts"]
        if c["kind"] == "constraint" and c["table"] == table
    )


def ids(db: Path, table: str) -> list[int]:
    with ro(db) as c:
        return [r[0] for r in c.execute(f'SELECT id FROM "{table}" ORDER BY id')]


# ---- CHECK ------------------------------------------------------------------------------------
ITEMS_OLD = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL CHECK (price >= 0));"
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, item_id INTEGER REFERENCES items(id), body TEXT);"
)
ITEMS_NEW = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL);"
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, item_id INTEGER REFERENCES items(id), body TEXT);"
)
ITEMS_BASE = (
    "INSERT INTO items VALUES (1, 'a', 1.0), (2, 'b', 2.0); INSERT INTO notes VALUES (1, 1, 'n1');"
)


def test_check_violation_skips_its_unit_and_the_rest_lands(tmp_path: Path) -> None:
    bundle, target = make_pair(
        tmp_path,
        ITEMS_OLD,
        ITEMS_NEW,
        ITEMS_BASE,
        "INSERT INTO items VALUES (3, 'refund', -5), (4, 'd', 4), (5, 'e', 0);"
        "INSERT INTO notes VALUES (2, 3, 'on the refund'), (3, 4, 'n3'), (4, 1, 'n4');",
    )
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 1  # needs review, not a failed run
    assert constraint_keys(report, "items") == [3]
    c = next(c for c in report["outcome"]["conflicts"] if c["kind"] == "constraint")
    assert c["resolution"] == "skipped" and "price >= 0" in c["detail"]
    assert ids(target, "items") == [1, 2, 4, 5]
    assert ids(target, "notes") == [1, 3, 4]  # the refund's note went with its unit
    assert {(r["table"], r["key"][0]) for r in report["outcome"]["skipped_rows"]} == {("notes", 2)}
    with ro(target) as c:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_check_violation_with_abort_changes_nothing(tmp_path: Path) -> None:
    bundle, target = make_pair(
        tmp_path,
        ITEMS_OLD,
        ITEMS_NEW,
        ITEMS_BASE,
        "INSERT INTO items VALUES (3, 'x', -1), (4, 'd', 4);",
    )
    before = target.read_bytes()
    code, report = reimport(bundle, target, tmp_path / "run", "--on-conflict", "abort")
    assert code == 3
    assert constraint_keys(report, "items") == [3]
    assert target.read_bytes() == before


# ---- NOT NULL, STRICT ---------------------------------------------------------------------------
def test_not_null_of_the_old_schema(tmp_path: Path) -> None:
    bundle, target = make_pair(
        tmp_path,
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, nick TEXT);",
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, nick TEXT);",
        "INSERT INTO people VALUES (1, 'a', NULL);",
        "INSERT INTO people VALUES (2, NULL, 'anon'), (3, 'c', NULL);",
    )
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 1
    assert constraint_keys(report, "people") == [2]
    assert ids(target, "people") == [1, 3]


def test_strict_table_types(tmp_path: Path) -> None:
    bundle, target = make_pair(
        tmp_path,
        "CREATE TABLE stock (id INTEGER PRIMARY KEY, qty INTEGER) STRICT;",
        "CREATE TABLE stock (id INTEGER PRIMARY KEY, qty INTEGER);",
        "INSERT INTO stock VALUES (1, 1);",
        "INSERT INTO stock VALUES (2, 'many'), (3, '12'), (4, 2.5), (5, 7);",
    )
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 1
    assert constraint_keys(report, "stock") == [2, 4]
    with ro(target) as c:
        assert c.execute("SELECT id, qty, typeof(qty) FROM stock ORDER BY id").fetchall() == [
            (1, 1, "integer"),
            (3, 12, "integer"),
            (5, 7, "integer"),
        ]


# ---- unique indexes the column sets cannot express --------------------------------------------
def test_unique_index_on_an_expression(tmp_path: Path) -> None:
    bundle, target = make_pair(
        tmp_path,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT); CREATE UNIQUE INDEX ux_email ON users (lower(email));",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);",
        "INSERT INTO users VALUES (1, 'alice@x.org');",
        "INSERT INTO users VALUES (2, 'ALICE@x.org'), (3, 'carol@x.org'), (4, 'dave@x.org'), (5, 'Dave@X.org'), (6, NULL), (7, NULL);",
    )
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 1
    assert constraint_keys(report, "users") == [
        2,
        5,
    ]  # taken in the target; taken by an earlier new row
    assert ids(target, "users") == [1, 3, 4, 6, 7]  # NULLs never clash


def test_a_twin_that_does_not_land_does_not_block_the_other(tmp_path: Path) -> None:
    """Two new users with the same lower(email): the first has lost its organisation in the target
    (missing_parent), so the second is not its twin any more and lands."""
    schema = (
        "CREATE TABLE orgs (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE users (id INTEGER PRIMARY KEY, org_id INTEGER REFERENCES orgs(id), email TEXT);"
    )
    bundle, target = make_pair(
        tmp_path,
        schema + "CREATE UNIQUE INDEX ux_email ON users (lower(email));",
        schema,
        "INSERT INTO orgs VALUES (1, 'a'), (2, 'b');",
        "INSERT INTO users VALUES (3, 1, 'x@y.org'), (4, 2, 'X@y.org');",
    )
    run_sql(target, "DELETE FROM orgs WHERE id = 1;")
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 1
    assert [(c["kind"], c["key"]) for c in report["outcome"]["conflicts"]] == [
        ("missing_parent", [3])
    ]
    assert ids(target, "users") == [4]


def test_partial_unique_index(tmp_path: Path) -> None:
    bundle, target = make_pair(
        tmp_path,
        "CREATE TABLE subs (id INTEGER PRIMARY KEY, user_id INT, active INT);"
        "CREATE UNIQUE INDEX ux_active ON subs (user_id) WHERE active = 1;",
        "CREATE TABLE subs (id INTEGER PRIMARY KEY, user_id INT, active INT);",
        "INSERT INTO subs VALUES (1, 1, 1);",
        "INSERT INTO subs VALUES (2, 1, 1), (3, 1, 0), (4, 2, 1), (5, 2, 0);",
    )
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 1
    assert [c["kind"] for c in report["outcome"]["conflicts"]] == [
        "constraint"
    ]  # not a `unique` for 3 and 5
    assert constraint_keys(report, "subs") == [2]
    assert ids(target, "subs") == [1, 3, 4, 5]


# ---- generated columns ------------------------------------------------------------------------
def test_generated_columns_are_never_written(tmp_path: Path) -> None:
    bundle, target = make_pair(
        tmp_path,
        "CREATE TABLE lines (id INTEGER PRIMARY KEY, price REAL, qty INT,"
        " total REAL GENERATED ALWAYS AS (price * qty) VIRTUAL, tag TEXT AS ('L' || id) STORED,"
        " CHECK (total < 1000));",
        "CREATE TABLE lines (id INTEGER PRIMARY KEY, price REAL, qty INT, total REAL, tag TEXT);",
        "INSERT INTO lines (id, price, qty) VALUES (1, 2.0, 3);",
        "INSERT INTO lines VALUES (2, 5.0, 2, 999, 'x'), (3, 600, 2, 1, 'y');"
        "UPDATE lines SET qty = 4, total = 0 WHERE id = 1;",
    )
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 1  # line 3: its total (computed, 1200) fails the CHECK
    assert constraint_keys(report, "lines") == [3]
    with ro(target) as c:
        assert c.execute("SELECT id, price, qty, total, tag FROM lines ORDER BY id").fetchall() == [
            (1, 2.0, 4, 8.0, "L1"),
            (2, 5.0, 2, 10.0, "L2"),
        ]


# ---- the last guard ---------------------------------------------------------------------------
def test_a_rule_the_detection_cannot_read_is_caught_row_by_row(tmp_path: Path) -> None:
    """sqlglot cannot parse ``NOT NULL ON CONFLICT ABORT CHECK (…)``: the CHECK is not predicted,
    the INSERT raises, and the per-row SAVEPOINT guard still turns it into one conflict."""
    bundle, target = make_pair(
        tmp_path,
        "CREATE TABLE q (id INTEGER PRIMARY KEY, n INTEGER NOT NULL ON CONFLICT ABORT CHECK (n > 0));"
        "CREATE TABLE qi (id INTEGER PRIMARY KEY, q_id INTEGER REFERENCES q(id) ON DELETE CASCADE);",
        "CREATE TABLE q (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);"
        "CREATE TABLE qi (id INTEGER PRIMARY KEY, q_id INTEGER REFERENCES q(id) ON DELETE CASCADE);",
        "INSERT INTO q VALUES (1, 1);",
        "INSERT INTO q VALUES (2, 5), (3, -1), (4, 6); INSERT INTO qi VALUES (1, 3), (2, 4), (3, 2);",
    )
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 1
    assert constraint_keys(report, "q") == [3]
    assert "CHECK constraint failed" in next(c["detail"] for c in report["outcome"]["conflicts"])
    assert ids(target, "q") == [1, 2, 4]
    assert ids(target, "qi") == [2, 3]  # the refused quote's item stayed out with it


# ---- triggers -----------------------------------------------------------------------------------
AUDITED = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);"
    "CREATE TABLE audit (id INTEGER PRIMARY KEY, item_id INT, what TEXT);"
    "CREATE TRIGGER  trg_audit_ins AFTER INSERT ON items\n  BEGIN INSERT INTO audit (item_id, what)"
    " VALUES (new.id, 'insert'); END;"
    "CREATE TRIGGER trg_audit_upd AFTER UPDATE ON items BEGIN INSERT INTO audit (item_id, what)"
    " VALUES (new.id, 'update'); END;"
)


def test_triggers_do_not_fire_and_come_back_byte_identical(tmp_path: Path) -> None:
    bundle, target = make_pair(
        tmp_path,
        AUDITED,
        AUDITED,
        "INSERT INTO items VALUES (1, 'a'), (2, 'b');",
        "INSERT INTO items VALUES (3, 'c'), (4, 'd'); UPDATE items SET name = 'B' WHERE id = 2;",
    )
    with ro(target) as c:
        before = c.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
        ).fetchall()
    with ro(tmp_path / "app.db") as c:
        live_audit = c.execute("SELECT * FROM audit ORDER BY id").fetchall()
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 0, report["outcome"]["conflicts"]
    with ro(target) as c:
        assert (
            c.execute("SELECT * FROM audit ORDER BY id").fetchall() == live_audit
        )  # no duplicate audit row
        assert (
            c.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name <> '_recovery_applied'"
                " ORDER BY name"
            ).fetchall()
            == before
        )
    assert sorted(report["outcome"]["triggers_suspended"]) == ["trg_audit_ins", "trg_audit_upd"]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "trg_audit_ins" in md and "trg_audit_upd" in md
    # the app's triggers work again after the run
    run_sql(target, "INSERT INTO items VALUES (10, 'after');")
    with ro(target) as c:
        assert c.execute("SELECT count(*) FROM audit WHERE item_id = 10").fetchone() == (1,)


# ---- AUTOINCREMENT ------------------------------------------------------------------------------
INVOICES = "CREATE TABLE invoices (id INTEGER PRIMARY KEY AUTOINCREMENT, total REAL);"


def test_autoincrement_counter_is_carried_forward(tmp_path: Path) -> None:
    """Backup counter 4; after the deploy ids 5-7 were handed out and 6, 7 deleted again (live
    counter 7): after the re-import the next invoice gets 8, never an id handed out before."""
    bundle, target = make_pair(
        tmp_path,
        INVOICES,
        INVOICES,
        "INSERT INTO invoices (total) VALUES (1), (2), (3), (4);",
        "INSERT INTO invoices (total) VALUES (5), (6), (7); DELETE FROM invoices WHERE id > 5;",
    )
    with ro(target) as c:
        assert c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'invoices'").fetchone() == (
            4,
        )
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["sources"]["live"]["sqlite_sequence"] == {"invoices": 7}
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 0
    assert report["outcome"]["sequences"] == [
        {"table": "invoices", "backup": 4, "live": 7, "max_id": 5, "seq": 7}
    ]
    # the application (another process) inserts the next invoice
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
                "print(c.execute('INSERT INTO invoices (total) VALUES (9) RETURNING id').fetchone()[0]);"
                "c.commit()"
            ),
            str(target),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "8"


@pytest.mark.parametrize(
    "counters",
    [None, {"invoices": 2**63 - 1}, {"invoices": "9"}],
    ids=["absent", "forged-near-max", "not-an-int"],
)
def test_bundle_without_usable_live_counters_still_reimports(
    tmp_path: Path, counters: dict | None
) -> None:
    """A bundle made before the live counters were recorded, or one whose counter is forged (a
    counter near 2**63 would make the app's next insert fail): the counter still covers every id."""
    bundle, target = make_pair(
        tmp_path,
        INVOICES,
        INVOICES,
        "INSERT INTO invoices (total) VALUES (1);",
        "INSERT INTO invoices (total) VALUES (2), (3);",
    )
    m = json.loads((bundle / "manifest.json").read_text())
    if counters is None:
        del m["sources"]["live"]["sqlite_sequence"]
    else:
        m["sources"]["live"]["sqlite_sequence"] = counters
    from recovery.bundle.store import seal

    (bundle / "manifest.json").unlink()
    (bundle / "manifest.sha256").unlink()
    seal(bundle, m)
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 0
    assert report["outcome"]["sequences"][0]["seq"] == 3


# ---- property: exactly the rows SQLite refuses are skipped --------------------------------------
VALUES = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.0, 1.0, 2.5, 1e300]),
    st.sampled_from(["5", "-1", "1", "abc", "", " 2", "0.0", "-0", "1.0", "x" * 4]),
)
OLD_ITEMS = [  # the old schema's items table (notes reference it); the new release has none of these rules
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL CHECK (price >= 0));",
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price NUMERIC CHECK (price <> 1));",
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price TEXT CHECK (length(price) < 3));",
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price INTEGER NOT NULL) STRICT;",
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL) STRICT;",
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price); CREATE UNIQUE INDEX ux ON items (abs(price));",
    (
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price INT);"
        "CREATE UNIQUE INDEX ux ON items (price) WHERE price > 0;"
    ),
]
NOTES = (
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, item_id INTEGER REFERENCES items(id), body TEXT);"
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(old=st.sampled_from(OLD_ITEMS), prices=st.lists(VALUES, min_size=1, max_size=8))
def test_exactly_the_rows_sqlite_refuses_are_skipped(
    tmp_path_factory: pytest.TempPathFactory, old: str, prices: list
) -> None:
    """For random values against each kind of rule, the re-import skips exactly the rows (and
    their notes) that the old schema itself refuses, inserted one by one in the same order."""
    tmp = tmp_path_factory.mktemp("prop")
    backup, live = tmp / "app.db.bak.20261120_140000", tmp / "app.db"
    base = "INSERT INTO items VALUES (1, 'a', 2);"
    run_sql(backup, old + NOTES + base)
    run_sql(live, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price);" + NOTES + base)
    with sqlite3.connect(live) as c:
        c.executemany(
            "INSERT INTO items VALUES (?, 'p', ?)", [(i + 10, p) for i, p in enumerate(prices)]
        )
        c.executemany(
            "INSERT INTO notes (item_id, body) VALUES (?, 'n')",
            [(i + 10,) for i in range(len(prices))],
        )
    c.close()
    oracle = sqlite3.connect(":memory:")  # what the old schema itself accepts, row by row
    oracle.executescript(old + base)
    refused = set()
    for i, p in enumerate(prices):
        try:
            oracle.execute("INSERT INTO items VALUES (?, 'p', ?)", (i + 10, p))
        except sqlite3.IntegrityError:
            refused.add(i + 10)
    extract(backup, live, tmp / "bundle")
    target = tmp / "t.db"
    shutil.copyfile(backup, target)
    code, report = reimport(tmp / "bundle", target, tmp / "run")
    assert code == (1 if refused else 0)
    assert set(constraint_keys(report, "items")) == refused
    assert set(ids(target, "items")) == {1} | {i + 10 for i in range(len(prices))} - refused
    with ro(target) as c:
        assert c.execute(
            "SELECT count(*) FROM notes WHERE item_id NOT IN (SELECT id FROM items)"
        ).fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM notes").fetchone()[0] == len(prices) - len(refused)
        expected = oracle.execute(
            "SELECT id, price, typeof(price) FROM items ORDER BY id"
        ).fetchall()
        assert (
            c.execute("SELECT id, price, typeof(price) FROM items ORDER BY id").fetchall()
            == expected
        )


def test_remapped_keys_stay_above_the_live_counter(tmp_path: Path) -> None:
    """The old app took ids 5 and 6 after the restore; the bundle's 5 and 6 are remapped above
    every id the live DB handed out (7, deleted since), so 7 is never handed out twice."""
    bundle, target = make_pair(
        tmp_path,
        INVOICES,
        INVOICES,
        "INSERT INTO invoices (total) VALUES (1), (2), (3), (4);",
        "INSERT INTO invoices (total) VALUES (5), (6), (7); DELETE FROM invoices WHERE id = 7;",
    )
    run_sql(target, "INSERT INTO invoices (total) VALUES (50), (60);")
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 1
    assert sorted((r["old_key"], r["new_key"]) for r in report["outcome"]["remapped"]) == [
        (5, 8),
        (6, 9),
    ]
    run_sql(target, "INSERT INTO invoices (total) VALUES (99);")
    assert ids(target, "invoices") == [1, 2, 3, 4, 5, 6, 8, 9, 10]


def test_an_update_the_old_schema_refuses_is_skipped_alone(tmp_path: Path) -> None:
    """An update (not an insert) that breaks the CHECK: the per-row guard skips that update only;
    the target keeps its value and every other change lands."""
    bundle, target = make_pair(
        tmp_path,
        ITEMS_OLD,
        ITEMS_NEW,
        ITEMS_BASE,
        "UPDATE items SET price = -3 WHERE id = 1; UPDATE items SET price = 7, name = 'B' WHERE id = 2;"
        "INSERT INTO items VALUES (3, 'c', 3);",
    )
    code, report = reimport(bundle, target, tmp_path / "run")
    assert code == 1
    assert [(c["kind"], c["key"], c["resolution"]) for c in report["outcome"]["conflicts"]] == [
        ("constraint", [1], "skipped")
    ]
    with ro(target) as c:
        assert c.execute("SELECT * FROM items ORDER BY id").fetchall() == [
            (1, "a", 1.0),
            (2, "B", 7.0),
            (3, "c", 3.0),
        ]


def test_after_a_rollback_the_next_invoice_gets_a_fresh_id(tmp_path: Path) -> None:
    """The issue's scenario end to end, in real processes: live counter 7, backup 4; `recovery
    rollback`; the application's next invoice gets 8 (it got 5 before)."""
    backup, live = tmp_path / "app.db.bak.20261120_140000", tmp_path / "app.db"
    run_sql(backup, INVOICES + "INSERT INTO invoices (total) VALUES (1), (2), (3), (4);")
    run_sql(
        live,
        INVOICES + "INSERT INTO invoices (total) VALUES (1), (2), (3), (4), (5), (6), (7);"
        "DELETE FROM invoices WHERE id > 5;",
    )
    res = forked(  # a process of its own (tests/forkrun.py), as the application's is
        "rollback", live, "--backup", backup, "--out", tmp_path / "run", "--yes"
    )
    assert res.returncode == 0, res.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
                "print(c.execute('INSERT INTO invoices (total) VALUES (9) RETURNING id').fetchone()[0]);"
                "c.commit()"
            ),
            str(live),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "8"
    assert ids(live, "invoices") == [1, 2, 3, 4, 5, 8]
