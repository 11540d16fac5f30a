"""``recovery rollback`` end to end on the sample world: content, schema, report, dry run, refusals,
the lock probe, stub downgrades, and resuming after a SIGKILL at many points of the runbook."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from recovery.cli import main
from recovery.pipeline import rollback
from recovery.sample import app_dir
from tests.forkrun import forked

ROOT = Path(__file__).resolve().parents[1]
INI = app_dir() / "alembic.ini"
OLD_REV = "aa001_add_drawing_number_drop_drawings"
PROJECTED = {
    ("parts", "price"): lambda r: r["price_cents"] / 100.0,
    ("quotes", "customer"): lambda r: r["customer_name"],
}
"""Old-schema columns whose v2.0.1 source has another name or unit."""


def ro(path: Path, rows: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    if rows:
        conn.row_factory = sqlite3.Row
    return conn


def backup_of(w: Path) -> Path:
    return next(w.glob("gestima.db.bak.*"))


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def schema_of(path: Path) -> dict[str, list[tuple]]:
    with ro(path) as c:
        names = [
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                "AND name != '_recovery_applied' ORDER BY name"
            )
        ]
        out = {n: [tuple(r) for r in c.execute(f'PRAGMA table_info("{n}")')] for n in names}
        out["views/indexes"] = sorted(
            (r[0], r[1])
            for r in c.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('view','index','trigger')"
            )
        )
    return out


def content(path: Path) -> dict[str, list[tuple]]:
    """Every table's rows in key order; ``_recovery_applied`` keeps only its policy (``applied_at`` is a
    wall-clock time, ``bundle_id`` differs between two worlds' runs)."""
    with ro(path) as c:
        names = [
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        out = {}
        for n in sorted(names):
            cols = [
                r[1]
                for r in c.execute(f'PRAGMA table_info("{n}")')
                if not (n == "_recovery_applied" and r[1] in ("applied_at", "bundle_id", "outcome"))
            ]
            sel = ", ".join(f'"{x}"' for x in cols)
            out[n] = [tuple(r) for r in c.execute(f'SELECT {sel} FROM "{n}" ORDER BY {sel}')]
    return out


def cli(*args: str) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def live_rows(w: Path, table: str) -> dict[int, sqlite3.Row]:
    with ro(w / "gestima.db", rows=True) as c:
        return {r["id"]: r for r in c.execute(f'SELECT * FROM "{table}"')}


def assert_rolled_back(
    db: Path, backup: Path, truth: dict, live: dict[str, dict[int, sqlite3.Row]]
) -> None:
    """``db`` is at the backup's revision, sound, holds every backup row (rows deleted after the deploy
    come back) and every post-deploy insert and update of ``truth`` with its live values."""
    with ro(backup) as b:
        old_tables = [
            r[0]
            for r in b.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name != 'alembic_version'"
            )
        ]
    with ro(db, rows=True) as c:
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == OLD_REV
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
        for t in old_tables:  # every backup row is there (rows deleted after the deploy come back)
            have = {r[0] for r in c.execute(f'SELECT id FROM "{t}"')}
            with ro(backup) as b:
                assert {r[0] for r in b.execute(f'SELECT id FROM "{t}"')} <= have, t
        for t, ch in truth["tables"].items():
            if t not in old_tables:
                continue
            cols = [r[1] for r in c.execute(f'PRAGMA table_info("{t}")')]
            for (key,) in ch["inserted"] + ch["updated"]:
                row = c.execute(f'SELECT * FROM "{t}" WHERE id=?', (key,)).fetchone()
                assert row is not None, (t, key)
                src = live[t][key]
                for col in cols:
                    if (t, col) in PROJECTED:
                        want = PROJECTED[(t, col)](src)
                    elif col in src.keys():
                        want = src[col]
                    else:
                        continue  # no source in v2.0.1 (e.g. parts.notes)
                    assert row[col] == want, (t, key, col)


# ---------------------------------------------------------------------------------------------
# end to end


def test_rollback_end_to_end_carries_every_change(world_copy: Path, tmp_path: Path) -> None:
    w, run = world_copy, tmp_path / "run"
    truth = json.loads((w / "world.json").read_text())
    backup = backup_of(w)
    with ro(backup) as b:
        old_tables = [
            r[0]
            for r in b.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name != 'alembic_version'"
            )
        ]
    live = {t: live_rows(w, t) for t in truth["tables"]}

    res = cli(
        "rollback",
        w / "gestima.db",
        "--backup",
        backup,
        "--alembic-ini",
        INI,
        "--out",
        run,
        "--yes",
    )
    assert res.exit_code == 1, (
        res.output
    )  # lost values to review (production_records, discount_pct)

    db = w / "gestima.db"
    assert schema_of(db) == schema_of(backup)
    assert_rolled_back(db, backup, truth, live)

    report = json.loads((run / "report.json").read_text())
    counts = report["bundle"]["counts"]
    for t, ch in truth["tables"].items():
        for kind in ("inserted", "updated", "deleted"):
            assert counts[t][kind] == len(ch[kind]), (t, kind)
    summary = report["summary"]
    assert summary["verified"] is True and summary["conflicts"] == 0
    assert summary["rows_inserted"] == sum(
        len(ch["inserted"]) for t, ch in truth["tables"].items() if t in old_tables
    )
    verification = report["outcome"]["verification"]
    assert verification["ok"] and verification["alembic_revision"]["actual"] == OLD_REV
    for t, n in verification["row_counts"].items():  # backup + re-imported − re-deleted
        assert n["actual"] == truth["counts"]["backup"][t] + n["inserted"] - n["deleted"]

    with open(run / "lost_values.csv", newline="", encoding="utf-8") as fh:
        lost = {
            (r["table"], r["key"].strip("[]"), r["label"], r["column"], r["value"])
            for r in csv.DictReader(fh)
        }
    want = {
        (x["table"], str(x["key"]["id"]), x["label"], x["column"], str(x["value"]))
        for x in truth["lost"]
    }
    assert len(lost) == len(truth["lost"])
    assert lost == want
    for name in ("conflicts.csv", "reimport.sql", "report.md", "safety/gestima.db"):
        assert (run / name).is_file(), name

    # re-running the finished run changes nothing and says so
    before = folder_hashes(w)
    again = cli(
        "rollback",
        w / "gestima.db",
        "--backup",
        backup_of(w),
        "--alembic-ini",
        INI,
        "--out",
        run,
        "--yes",
    )
    assert again.exit_code == res.exit_code == 1, (
        again.output
    )  # it finished needing review: says so again
    assert "already finished" in again.output
    assert folder_hashes(w) == before
    assert rollback(w / "gestima.db", backup_of(w), run, alembic_ini=INI).finished_before


# ---------------------------------------------------------------------------------------------
# changes nothing


def test_dry_run_changes_no_file(world_copy: Path, tmp_path: Path) -> None:
    w, run = world_copy, tmp_path / "run"
    before = folder_hashes(w)
    assert (w / "gestima.db-wal").stat().st_size > 0
    res = cli(
        "rollback",
        w / "gestima.db",
        "--backup",
        backup_of(w),
        "--alembic-ini",
        INI,
        "--out",
        run,
        "--dry-run",
    )
    assert res.exit_code == 1, res.output
    assert folder_hashes(w) == before
    report = json.loads((run / "report.json").read_text())
    assert report["summary"]["dry_run"] is True and report["summary"]["rows_inserted"] > 0
    assert (run / "lost_values.csv").is_file() and (run / "conflicts.csv").is_file()


def test_no_terminal_without_yes_refuses(world_copy: Path, tmp_path: Path) -> None:
    w = world_copy
    before = folder_hashes(w)
    res = cli(
        "rollback",
        w / "gestima.db",
        "--backup",
        backup_of(w),
        "--alembic-ini",
        INI,
        "--out",
        tmp_path / "run",
    )
    assert res.exit_code == 2, res.output
    assert "--yes" in res.output
    assert folder_hashes(w) == before


def test_refuses_while_the_app_holds_the_write_lock(world_copy: Path, tmp_path: Path) -> None:
    w = world_copy
    app = sqlite3.connect(w / "gestima.db", isolation_level=None)
    try:
        app.execute("BEGIN IMMEDIATE")
        before = folder_hashes(w)
        res = cli(
            "rollback",
            w / "gestima.db",
            "--backup",
            backup_of(w),
            "--alembic-ini",
            INI,
            "--out",
            tmp_path / "run",
            "--yes",
        )
        assert res.exit_code == 2, res.output
        assert "locked" in res.output and "--force" in res.output
        assert folder_hashes(w) == before
    finally:
        app.execute("ROLLBACK")
        app.close()


def _without_shm(hashes: dict[str, str]) -> dict[str, str]:
    """``folder_hashes`` but SQLite's ``-shm`` files: the probe builds an idle WAL's index (shared
    memory, no data) before anything can be refused, and whether the session's world already had
    one depends on which tests ran before."""
    return {name: h for name, h in hashes.items() if not name.endswith("-shm")}


def test_stub_downgrade_is_refused_before_anything(world_copy: Path, tmp_path: Path) -> None:
    w = world_copy
    before = _without_shm(folder_hashes(w))
    res = cli(
        "rollback",
        w / "gestima.db",
        "--backup",
        backup_of(w),
        "--alembic-ini",
        INI,
        "--out",
        tmp_path / "run",
        "--downgrade-to",
        OLD_REV,
        "--yes",
    )
    assert res.exit_code == 2, res.output
    assert "bb003_quote_discount_pct" in res.output and "stub downgrade" in res.output
    assert _without_shm(folder_hashes(w)) == before
    assert not (tmp_path / "run" / "safety").exists()


# ---------------------------------------------------------------------------------------------
# --downgrade-to on an app whose downgrades are all real

BB003_REAL_DOWNGRADE = '''def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS v_quote_totals")
    with op.batch_alter_table("quotes") as batch:
        batch.drop_column("discount_pct")
    op.execute(V_QUOTE_TOTALS_V2_0_0)


V_QUOTE_TOTALS_V2_0_0 = """
CREATE VIEW v_quote_totals AS
SELECT q.id AS quote_id,
       q.quote_number AS quote_number,
       ROUND(COALESCE(SUM(qi.qty * qi.unit_price), 0), 2) AS total
FROM quotes AS q
LEFT JOIN quote_items AS qi ON qi.quote_id = q.id
GROUP BY q.id, q.quote_number
"""
'''


@pytest.fixture(scope="module")
def real_ini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alembic.ini of a copy of the sample app whose bb003 downgrade is real (drops ``discount_pct``,
    puts v2.0.0's view back), so ``--downgrade-to`` is not refused. The ini finds its scripts through
    ``%(here)s``, so the copy runs its own versions."""
    import shutil

    app = tmp_path_factory.mktemp("real-app") / "app"
    shutil.copytree(app_dir(), app, ignore=shutil.ignore_patterns("__pycache__"))
    bb003 = app / "versions" / "bb003_quote_discount_pct.py"
    stub = "def downgrade() -> None:\n    pass\n"
    assert stub in bb003.read_text()
    bb003.write_text(bb003.read_text().replace(stub, BB003_REAL_DOWNGRADE))
    assert "%(here)s" in (app / "alembic.ini").read_text()
    return app / "alembic.ini"


def columns_by_name(path: Path) -> dict[str, object]:
    """The schema, each table's columns keyed by name (type, NOT NULL, default, PK), foreign keys,
    and the SQL of every view, index and trigger."""
    with ro(path) as c:
        names = [
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                "AND name != '_recovery_applied' ORDER BY name"
            )
        ]
        out: dict[str, object] = {
            n: (
                {r[1]: r[2:] for r in c.execute(f'PRAGMA table_info("{n}")')},
                sorted(tuple(r[2:]) for r in c.execute(f'PRAGMA foreign_key_list("{n}")')),
            )
            for n in names
        }
        out["sqlite_master"] = sorted(
            c.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master "
                "WHERE type IN ('view','index','trigger')"
            )
        )
    return out


def content_by_name(path: Path) -> dict[str, list[tuple]]:
    """:func:`content` with the columns in name order: the downgrade's batch rebuilds append the
    columns they re-add, so the same schema can list its columns in another order."""
    with ro(path) as c:
        names = [
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        out = {}
        for n in sorted(names):
            cols = sorted(
                r[1]
                for r in c.execute(f'PRAGMA table_info("{n}")')
                if not (n == "_recovery_applied" and r[1] in ("applied_at", "bundle_id", "outcome"))
            )
            sel = ", ".join(f'"{x}"' for x in cols)
            out[n] = [tuple(r) for r in c.execute(f'SELECT {sel} FROM "{n}" ORDER BY {sel}')]
    return out


@pytest.mark.parametrize("apply_deletes", [False, True], ids=["review-deletes", "apply-deletes"])
def test_downgrade_to_gives_what_a_restore_gives(
    world: Path, tmp_path: Path, real_ini: Path, apply_deletes: bool
) -> None:
    """``--downgrade-to`` and a plain restore, on two copies of one world, end with the same rows: the
    downgrade re-adds bb006's ``parts.notes`` empty and never sees rows deleted after the deploy, so
    both come back from the backup on the scratch copy before it is swapped in."""
    import shutil

    truth = json.loads((world / "world.json").read_text())
    live = {t: live_rows(world, t) for t in truth["tables"]}
    runs = {}
    for name, extra in (("down", ["--downgrade-to", OLD_REV]), ("plain", [])):
        w = tmp_path / name
        shutil.copytree(world, w)
        res = cli(
            "rollback",
            w / "gestima.db",
            "--backup",
            backup_of(w),
            "--alembic-ini",
            real_ini,
            "--uploads",
            w / "uploads",
            "--out",
            tmp_path / f"run-{name}",
            "--yes",
            *extra,
            *(["--apply-deletes"] if apply_deletes else []),
        )
        assert res.exit_code == 1, (
            res.output
        )  # lost values to review (production_records, discount_pct)
        runs[name] = (w, json.loads((tmp_path / f"run-{name}" / "report.json").read_text()))
    (down, rep), (plain, plain_rep) = runs["down"], runs["plain"]
    db, backup = down / "gestima.db", backup_of(down)

    # the backup's schema (column order aside: batch mode appends a re-added column), revision, soundness
    assert columns_by_name(db) == columns_by_name(backup)
    if not apply_deletes:
        assert_rolled_back(db, backup, truth, live)
    with ro(db) as c:
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == OLD_REV
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []

    # the same rows as the restore, table by table and cell by cell
    assert content_by_name(db) == content_by_name(plain / "gestima.db")
    assert folder_hashes(down / "uploads") == folder_hashes(plain / "uploads")

    # every backup value is there unless a post-deploy change overrides it: notes above all
    with ro(backup, rows=True) as b, ro(db, rows=True) as c:
        for t in ("parts", "quotes", "quote_items", "file_records", "users", "materials"):
            changed = {int(k): set(v) for k, v in truth["updated_columns"].get(t, {}).items()}
            deleted = {k for (k,) in truth["tables"].get(t, {}).get("deleted", [])}
            now = {r["id"]: r for r in c.execute(f'SELECT * FROM "{t}"')}
            for row in b.execute(f'SELECT * FROM "{t}"'):
                if apply_deletes and row["id"] in deleted:
                    continue
                assert row["id"] in now, (t, row["id"])
                for col in row.keys():
                    if col not in changed.get(row["id"], ()):
                        assert now[row["id"]][col] == row[col], (t, row["id"], col)
        with_notes = b.execute("SELECT count(*) FROM parts WHERE notes IS NOT NULL").fetchone()[0]
    assert with_notes > 0

    # what the restore step put back is journaled, and the report counts make sense
    restore = rep["journal"]["restore"]
    assert restore["method"] == "downgrade" and restore["state"] == "done"
    repair = restore["repair"]
    assert repair["refilled"]["parts"] == {
        "notes": with_notes,
        "price": 0,
    }  # bb004's price is computed, kept
    assert repair["refilled"]["quotes"] == {"customer": 0}  # bb002's rename keeps the values
    assert {t: n for t, n in repair["restored_rows"].items() if n} == {
        t: len(ch["deleted"]) for t, ch in truth["tables"].items() if ch["deleted"]
    }
    assert repair["not_restored"] == {} and any("parts.notes" in n for n in repair["notes"])
    s, ps = rep["summary"], plain_rep["summary"]
    assert s["verified"] is True and s["conflicts"] == 0 and s["rows_skipped"] == 0
    assert (
        s["rows_inserted"] == 0 and s["rows_updated"] == 0
    )  # already there: the downgrade carried them
    assert (
        s["rows_deleted"]
        == ps["rows_deleted"]
        == (sum(len(ch["deleted"]) for ch in truth["tables"].values()) if apply_deletes else 0)
    )
    for k in (
        "records_created_after_deploy",
        "records_changed_after_deploy",
        "records_deleted_after_deploy",
        "records_carried",
        "records_not_carried",
        "lost_values",
    ):
        assert s[k] == ps[k], k
    present = sum(t["already_present"] for t in rep["outcome"]["tables"].values())
    assert (
        present
        == ps["rows_inserted"]
        == sum(
            len(ch["inserted"]) for t, ch in truth["tables"].items() if t != "production_records"
        )
    )
    assert rep["outcome"]["deletes_for_review"] == plain_rep["outcome"]["deletes_for_review"]
    assert len(rep["outcome"]["deletes_for_review"]) == sum(
        len(ch["deleted"]) for ch in truth["tables"].values()
    )
    assert rep["outcome"]["verification"]["ok"]


def _db(path: Path, script: str) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.close()
    return path


def test_repair_from_backup_puts_back_only_what_the_downgrade_could_not(tmp_path: Path) -> None:
    """A hand-made backup / live / downgraded triple: NULL cells of a dropped column refilled (a
    computed value and a NULL backup value left alone), deleted rows back unless their unique value
    is taken or their parent stayed out, an emptied table copied, a computed one kept; no trigger
    fires and every trigger is still there."""
    from recovery.restore.downgrade import repair_from_backup
    from recovery.engine.schema import reflect

    old_ddl = """
        CREATE TABLE parent (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, memo TEXT, price REAL NOT NULL);
        CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent(id), qty INTEGER);
        CREATE TABLE legacy (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE computed (id INTEGER PRIMARY KEY, v TEXT);
        CREATE TABLE loose (v TEXT);
    """
    backup = _db(
        tmp_path / "backup.db",
        old_ddl
        + """
        INSERT INTO parent VALUES (1,'A','m1',1.5), (2,'B','m2',2.0), (3,'C',NULL,3.0), (4,'D','m4',4.0), (5,'E','m5',5.0);
        INSERT INTO child VALUES (10,1,1), (11,4,2), (12,5,3);
        INSERT INTO legacy VALUES (1,'x'), (2,'y');
        INSERT INTO computed VALUES (7,'old');
        INSERT INTO loose VALUES ('gone');
    """,
    )
    live = _db(
        tmp_path / "live.db",
        """
        CREATE TABLE parent (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, price_cents INTEGER NOT NULL);
        CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent(id), qty INTEGER);
        CREATE TABLE loose (v TEXT);
    """,
    )
    down = _db(
        tmp_path / "down.db",
        old_ddl
        + """
        INSERT INTO parent VALUES (1,'A',NULL,1.5), (2,'B','computed',2.0), (3,'C',NULL,3.0), (6,'E',NULL,6.0);
        INSERT INTO child VALUES (10,1,1);
        INSERT INTO computed VALUES (1,'from the downgrade');
        CREATE TRIGGER parent_touched AFTER UPDATE ON parent BEGIN UPDATE parent SET price = -1 WHERE id = NEW.id; END;
        CREATE TRIGGER child_added AFTER INSERT ON child BEGIN UPDATE child SET qty = -1 WHERE id = NEW.id; END;
    """,
    )
    with ro(live) as c:
        live_schema = reflect(c)

    repair = repair_from_backup(down, backup, live_schema)

    assert repair.refilled == {"parent": {"memo": 1, "price": 0}}
    assert repair.restored_rows == {"parent": 1, "child": 1}
    assert repair.not_restored == {
        "parent": 1,
        "child": 1,
    }  # 5: 'E' is taken by row 6; 12: its parent is 5
    assert repair.copied_tables == {"legacy": 2}
    assert repair.computed_tables == ["computed"] and repair.unkeyed_tables == ["loose"]
    with ro(down) as c:
        assert c.execute("SELECT * FROM parent ORDER BY id").fetchall() == [
            (1, "A", "m1", 1.5),
            (2, "B", "computed", 2.0),
            (3, "C", None, 3.0),
            (4, "D", "m4", 4.0),
            (6, "E", None, 6.0),
        ]
        assert c.execute("SELECT * FROM child ORDER BY id").fetchall() == [(10, 1, 1), (11, 4, 2)]
        assert c.execute("SELECT * FROM legacy ORDER BY id").fetchall() == [(1, "x"), (2, "y")]
        assert c.execute("SELECT * FROM computed").fetchall() == [(1, "from the downgrade")]
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
        assert sorted(
            r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        ) == ["child_added", "parent_touched"]
    with ro(backup) as c:  # the backup is only read
        assert c.execute("SELECT count(*) FROM parent").fetchone()[0] == 5


def test_repair_never_points_a_refilled_or_copied_row_at_a_missing_parent(tmp_path: Path) -> None:
    """The upgrade dropped parts.supplier_id and the audit table; after the deploy supplier 7
    'globex' was deleted and 8 'globex' created, so 7 cannot come back (its unique name is taken).
    Part 1's supplier_id and audit row 2 would name it: they stay out, counted, and nothing dangles."""
    from recovery.restore.downgrade import repair_from_backup
    from recovery.engine.schema import reflect

    old_ddl = """
        CREATE TABLE suppliers (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        CREATE TABLE parts (id INTEGER PRIMARY KEY, name TEXT, supplier_id INTEGER REFERENCES suppliers(id));
        CREATE TABLE audit (id INTEGER PRIMARY KEY, supplier_id INTEGER NOT NULL REFERENCES suppliers(id));
    """
    backup = _db(
        tmp_path / "backup.db",
        old_ddl
        + """
        INSERT INTO suppliers VALUES (1, 'acme'), (7, 'globex');
        INSERT INTO parts VALUES (1, 'bolt', 7), (2, 'nut', 1);
        INSERT INTO audit VALUES (1, 1), (2, 7);
    """,
    )
    live = _db(
        tmp_path / "live.db",
        """
        CREATE TABLE suppliers (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        CREATE TABLE parts (id INTEGER PRIMARY KEY, name TEXT);
    """,
    )
    down = _db(
        tmp_path / "down.db",
        old_ddl
        + """
        INSERT INTO suppliers VALUES (1, 'acme'), (8, 'globex');
        INSERT INTO parts VALUES (1, 'bolt', NULL), (2, 'nut', NULL);
    """,
    )
    with ro(live) as c:
        live_schema = reflect(c)

    repair = repair_from_backup(down, backup, live_schema)

    assert repair.refilled == {"parts": {"supplier_id": 1}}
    assert repair.not_refilled == {"parts": {"supplier_id": 1}}
    assert repair.not_restored == {"suppliers": 1, "audit": 1} and repair.copied_tables == {
        "audit": 1
    }
    assert any("supplier_id: 1 backup value(s) left empty" in n for n in repair.notes())
    with ro(down) as c:
        assert c.execute("SELECT * FROM parts ORDER BY id").fetchall() == [
            (1, "bolt", None),
            (2, "nut", 1),
        ]
        assert c.execute("SELECT * FROM audit").fetchall() == [(1, 1)]
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []


# ---------------------------------------------------------------------------------------------
# resume after a kill (the backup-restore rollback's kill points: tests/test_reliability.py)


@pytest.fixture(scope="module")
def downgrade_reference(
    world: Path, real_ini: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[tuple]]:
    """The DB content after an uninterrupted ``--downgrade-to`` rollback."""
    import shutil

    w = tmp_path_factory.mktemp("downgrade-reference") / "world"
    shutil.copytree(world, w)
    rollback(
        w / "gestima.db", backup_of(w), w.parent / "run", alembic_ini=real_ini, downgrade_to=OLD_REV
    )
    return content_by_name(w / "gestima.db")


@pytest.mark.parametrize("point", ["restore:start", "reimport:start"])
def test_killed_downgrade_run_resumes_to_the_same_result(
    world_copy: Path, tmp_path: Path, real_ini: Path, downgrade_reference: dict, point: str
) -> None:
    """Killed while the downgrade and its repair run on the scratch copy, or after the swap: the
    same command finishes the run with the same rows, the repair journaled once."""
    w, run = world_copy, tmp_path / "run"
    args = [
        "rollback",
        str(w / "gestima.db"),
        "--backup",
        str(backup_of(w)),
        "--alembic-ini",
        str(real_ini),
        "--out",
        str(run),
        "--downgrade-to",
        OLD_REV,
        "--yes",
    ]
    env = {"RECOVERY_TEST_KILL_AT_STEP": point, "PYTHONPATH": str(ROOT)}
    killed = forked(*args, env=env, timeout=120, cwd=ROOT)  # a process of its own: tests/forkrun.py
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    resumed = rollback(
        w / "gestima.db", backup_of(w), run, alembic_ini=real_ini, downgrade_to=OLD_REV
    )
    assert resumed.resumed and resumed.exit_code == 1
    assert content_by_name(w / "gestima.db") == downgrade_reference
    restore = json.loads((run / "journal.json").read_text())["steps"]["restore"]
    assert restore["method"] == "downgrade" and restore["repair"]["refilled"]["parts"]["notes"] > 0
    assert not list(w.glob(".gestima.db.restore-tmp*"))


def test_a_second_rollback_of_the_same_db_waits_its_turn(world_copy: Path, tmp_path: Path) -> None:
    """While one run holds the DB's folder (``flock``), another refuses with exit 2 and changes
    nothing; the lock creates no file and is gone when the first run ends."""
    import fcntl

    w = world_copy
    before = folder_hashes(w)
    fd = os.open(w, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running rollback holds
        res = cli(
            "rollback",
            w / "gestima.db",
            "--backup",
            backup_of(w),
            "--alembic-ini",
            INI,
            "--out",
            tmp_path / "run",
            "--yes",
        )
        assert res.exit_code == 2, res.output
        assert "another `recovery rollback` is running" in res.output
        assert folder_hashes(w) == before and not (tmp_path / "run").exists()
    finally:
        os.close(fd)
    res = cli(
        "rollback",
        w / "gestima.db",
        "--backup",
        backup_of(w),
        "--alembic-ini",
        INI,
        "--out",
        tmp_path / "run",
        "--yes",
    )
    assert res.exit_code == 1, res.output
