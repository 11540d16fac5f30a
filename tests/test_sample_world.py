"""The Gestima sample app (real alembic project) and the world generator.

Everything runs on real SQLite files; world.json is cross-checked with plain SQL.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from recovery.sample import (
    BACKUP_NAME,
    NEW_HEAD,
    OLD_HEAD,
    REVISIONS,
    alembic_config,
    generate,
    load_models,
    migrate,
)

OLD_TABLES = ("file_records", "materials", "parts", "quote_items", "quotes", "users")
# v2.0.0 columns of each table, and the expression producing them from a v2.0.1 row
PROJECTION = {
    "parts": (
        "part_number, name, material_id, price, created_at, updated_at, created_by, drawing_number",
        (
            "part_number, name, material_id, price_cents / 100.0, created_at, updated_at, created_by,"
            " drawing_number"
        ),
    ),
    "quotes": (
        "quote_number, customer, status, created_at, updated_at, created_by",
        "quote_number, customer_name, status, created_at, updated_at, created_by",
    ),
    "quote_items": ("quote_id, part_id, qty, unit_price",) * 2,
    "file_records": (
        "filename, path, sha256, size, mime_type, entity_type, entity_id, created_at, uploaded_by",
    )
    * 2,
    "users": ("username, full_name, email, role, created_at, is_active",) * 2,
    "materials": ("code, name, density, price_per_kg",) * 2,
}
OLD_NAME = {("quotes", "customer"): "customer_name", ("parts", "price"): "price_cents / 100.0"}


def ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def both(world: Path) -> sqlite3.Connection:
    """The live DB as ``main`` and the backup as ``bak``, both read-only."""
    conn = ro(world / "gestima.db")
    conn.execute("ATTACH ? AS bak", (f"file:{world / BACKUP_NAME}?mode=ro",))
    return conn


def tables(conn: sqlite3.Connection, schema: str = "main") -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]


def dump(path: Path) -> dict[str, list[tuple]]:
    conn = ro(path)
    try:
        return {
            t: conn.execute(f'SELECT * FROM "{t}" ORDER BY id').fetchall()
            if t != "alembic_version"
            else conn.execute(f'SELECT * FROM "{t}"').fetchall()
            for t in tables(conn)
        }
    finally:
        conn.close()


def ids(conn: sqlite3.Connection, sql: str, *args) -> set[int]:
    return {r[0] for r in conn.execute(sql, args)}


# ---------------------------------------------------------------- the alembic app
def test_history_is_the_linear_chain():
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [NEW_HEAD]
    chain = [rev.revision for rev in script.walk_revisions("base", "heads")]
    assert list(reversed(chain)) == list(REVISIONS)
    assert script.get_revision(OLD_HEAD).down_revision == "0002_users_is_active"


def test_upgrade_head_then_downgrade_to_v200(tmp_path: Path):
    db = tmp_path / "empty.db"
    migrate(db, "head")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(NEW_HEAD,)]
    assert "production_records" in tables(conn)
    conn.close()

    migrate(db, OLD_HEAD, downgrade=True)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(OLD_HEAD,)]
    assert "production_records" not in tables(conn)
    parts = {r[1] for r in conn.execute("PRAGMA table_info(parts)")}
    quotes = {r[1] for r in conn.execute("PRAGMA table_info(quotes)")}
    assert {"price", "notes", "drawing_number"} <= parts and not {"price_cents", "file_id"} & parts
    # bb003's downgrade is a stub: discount_pct stays behind
    assert {"customer", "discount_pct"} <= quotes and "customer_name" not in quotes
    assert conn.execute("SELECT COUNT(*) FROM v_quote_totals").fetchone() == (0,)
    conn.close()
    migrate(db, "head")  # and up again


def test_downgrade_of_the_generated_live_db_keeps_data(world_copy: Path):
    live = world_copy / "gestima.db"
    before = ro(live)
    prices = dict(before.execute("SELECT id, price_cents FROM parts"))
    customers = dict(before.execute("SELECT id, customer_name FROM quotes"))
    before.close()
    migrate(live, OLD_HEAD, downgrade=True)
    conn = sqlite3.connect(live)
    assert dict(conn.execute("SELECT id, price FROM parts")) == {
        k: v / 100.0 for k, v in prices.items()
    }
    assert dict(conn.execute("SELECT id, customer FROM quotes")) == customers
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_live_db_matches_the_v201_models(world_copy: Path):
    engine = sa.create_engine(f"sqlite:///{world_copy / 'gestima.db'}")
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(ctx, load_models().Base.metadata)
    engine.dispose()
    assert diffs == []


# ---------------------------------------------------------------- the generator
def test_same_seed_same_world_other_seed_other_world(tmp_path: Path):
    a = generate(tmp_path / "a", parts=40, seed=7)
    b = generate(tmp_path / "b", parts=40, seed=7)
    c = generate(tmp_path / "c", parts=40, seed=8)
    assert (a / "world.json").read_text() == (b / "world.json").read_text()
    for name in ("gestima.db", BACKUP_NAME):
        assert dump(a / name) == dump(b / name)
        assert dump(a / name) != dump(c / name)

    def files(w: Path) -> dict[Path, bytes]:
        return {
            p.relative_to(w): p.read_bytes()
            for p in sorted((w / "uploads").rglob("*"))
            if p.is_file()
        }

    assert files(a) == files(b)
    assert (a / "world.json").read_text() != (c / "world.json").read_text()


def test_revisions_wal_and_integrity(world: Path):
    wal = world / "gestima.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    conn = both(world)
    assert conn.execute("SELECT version_num FROM main.alembic_version").fetchall() == [(NEW_HEAD,)]
    assert conn.execute("SELECT version_num FROM bak.alembic_version").fetchall() == [(OLD_HEAD,)]
    assert conn.execute("PRAGMA main.journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA bak.journal_mode").fetchone() != ("wal",)
    for schema in ("main", "bak"):
        assert conn.execute(f"PRAGMA {schema}.integrity_check").fetchone() == ("ok",)
        assert conn.execute(f"PRAGMA {schema}.foreign_key_check").fetchall() == []
        assert conn.execute(f"SELECT COUNT(*) FROM {schema}.v_quote_totals").fetchone()[0] > 0
    conn.close()


def test_last_transactions_live_only_in_the_wal(world: Path, tmp_path: Path):
    truth = json.loads((world / "world.json").read_text())
    since = truth["wal"]["wal_only_since"]
    assert truth["wal"]["wal_only_actions"] > 0 and since > truth["deploy_time_sql"]
    newest = (
        "SELECT MAX(t) FROM (SELECT MAX(updated_at) AS t FROM parts UNION ALL"
        " SELECT MAX(updated_at) FROM quotes UNION ALL SELECT MAX(started_at) FROM production_records"
        " UNION ALL SELECT MAX(created_at) FROM file_records)"
    )
    shutil.copy(world / "gestima.db", tmp_path / "main-file-only.db")  # the classic mistake
    assert ro(tmp_path / "main-file-only.db").execute(newest).fetchone()[0] < since
    assert ro(world / "gestima.db").execute(newest).fetchone()[0] >= since


def test_world_json_agrees_with_the_databases(world: Path):
    truth = json.loads((world / "world.json").read_text())
    assert truth["revisions"] == {"old": OLD_HEAD, "new": NEW_HEAD}
    assert truth["backup"] == BACKUP_NAME and truth["deploy_time"] == "2026-11-20T14:00:00"
    deploy = truth["deploy_time_sql"]
    conn = both(world)

    # counts, and the table sets of both schemas
    assert sorted(truth["counts"]["backup"]) == [
        t for t in tables(conn, "bak") if t != "alembic_version"
    ]
    assert sorted(truth["counts"]["live"]) == [t for t in tables(conn) if t != "alembic_version"]
    for schema, key in (("bak", "backup"), ("main", "live")):
        for table, n in truth["counts"][key].items():
            assert conn.execute(f"SELECT COUNT(*) FROM {schema}.{table}").fetchone()[0] == n, table

    changes = truth["tables"]
    assert {"parts", "quotes", "quote_items", "file_records", "production_records"} <= set(changes)
    assert any(changes[t]["deleted"] for t in changes), "at least one deletion"
    for table in OLD_TABLES:
        ch = changes.get(table, {"inserted": [], "updated": [], "deleted": []})
        inserted = {k for (k,) in ch["inserted"]}
        updated = {k for (k,) in ch["updated"]}
        deleted = {k for (k,) in ch["deleted"]}
        in_bak = ids(conn, f"SELECT id FROM bak.{table}")
        in_live = ids(conn, f"SELECT id FROM main.{table}")
        assert inserted == in_live - in_bak, table
        assert deleted == in_bak - in_live, table
        assert updated <= in_bak & in_live, table
        old_cols, new_cols = PROJECTION[table]
        differing = ids(
            conn,
            f"SELECT id FROM (SELECT id, {old_cols} FROM bak.{table}"
            f" EXCEPT SELECT id, {new_cols} FROM main.{table}) WHERE id IN (SELECT id FROM main.{table})",
        )
        columns = truth["updated_columns"].get(table, {})
        assert differing == {k for k in updated if columns[str(k)]}, table
        for key in updated:
            for col in old_cols.replace(" ", "").split(","):
                expr = OLD_NAME.get((table, col), col)
                old = conn.execute(
                    f"SELECT {col} FROM bak.{table} WHERE id = ?", (key,)
                ).fetchone()[0]
                new = conn.execute(
                    f"SELECT {expr} FROM main.{table} WHERE id = ?", (key,)
                ).fetchone()[0]
                assert (old != new) == (col in columns[str(key)]), (table, key, col)
        if "created_at" in old_cols and inserted:
            marks = ",".join("?" * len(inserted))
            first = conn.execute(
                f"SELECT MIN(created_at) FROM main.{table} WHERE id IN ({marks})", sorted(inserted)
            ).fetchone()[0]
            assert first > deploy, table

    # production_records exists only in v2.0.1: every row is new, every value is lost
    assert {k for (k,) in changes["production_records"]["inserted"]} == ids(
        conn, "SELECT id FROM production_records"
    )
    for value in truth["lost"]:
        got = conn.execute(
            f"SELECT {value['column']} FROM main.{value['table']} WHERE id = ?",
            (value["key"]["id"],),
        ).fetchone()[0]
        assert got == value["value"], value
    assert any(v["table"] == "quotes" and v["column"] == "discount_pct" for v in truth["lost"])
    lost_quotes = {v["key"]["id"] for v in truth["lost"] if v["table"] == "quotes"}
    assert lost_quotes == ids(conn, "SELECT id FROM quotes WHERE discount_pct != 0")
    n_prod_values = conn.execute(
        "SELECT COUNT(part_id) + COUNT(quantity) + COUNT(machine) + COUNT(started_at)"
        " + COUNT(finished_at) + COUNT(created_by) FROM production_records"
    ).fetchone()[0]
    assert sum(v["table"] == "production_records" for v in truth["lost"]) == n_prod_values

    # parts.file_id: user-written values are derivable, migration-written ones backfilled
    latest = (
        "SELECT fr.id FROM file_records fr WHERE fr.entity_type = 'part' AND fr.entity_id = ?"
        " ORDER BY fr.created_at DESC, fr.id DESC LIMIT 1"
    )
    latest_before_deploy = latest.replace("ORDER BY", "AND fr.created_at < ? ORDER BY")
    for value in truth["derivable"]:
        assert conn.execute(latest, (value["key"]["id"],)).fetchone()[0] == value["value"]
    for value in truth["backfilled"]:  # a user may have uploaded a newer drawing since
        pid = value["key"]["id"]
        assert conn.execute(latest_before_deploy, (pid, deploy)).fetchone()[0] == value["value"]
    expected = {v["key"]["id"]: v["value"] for v in truth["backfilled"]}
    expected.update({v["key"]["id"]: v["value"] for v in truth["derivable"]})
    assert dict(conn.execute("SELECT id, file_id FROM parts WHERE file_id IS NOT NULL")) == expected

    # files: every post-deploy record listed, each file present with its hash
    new_records = ids(conn, "SELECT id FROM main.file_records WHERE created_at > ?", deploy)
    assert {f["record_id"] for f in truth["files"]} == new_records
    for f in truth["files"]:
        data = (world / "uploads" / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"]
        assert data.startswith(b"%PDF-1.4") and data.rstrip().endswith(b"%%EOF")
    for path, sha, size in conn.execute("SELECT path, sha256, size FROM main.file_records"):
        data = (world / "uploads" / path).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (sha, size)
    conn.close()


def test_generator_rejects_a_tiny_world(tmp_path: Path):
    from recovery.errors import RecoveryError

    with pytest.raises(RecoveryError):
        generate(tmp_path, parts=3)


def test_committed_world_is_what_the_generator_makes(tmp_path: Path):
    committed = Path(__file__).resolve().parents[1] / "sample_dbs" / "world"
    truth = json.loads((committed / "world.json").read_text())
    assert truth["generator"] == {"seed": 42, "parts": 300, "version": 1}
    fresh = generate(tmp_path / "fresh", parts=300, seed=42)
    assert (committed / "world.json").read_text() == (fresh / "world.json").read_text()
    for name in ("gestima.db", BACKUP_NAME):
        assert dump(committed / name) == dump(fresh / name), name
    wal = committed / "gestima.db-wal"
    assert wal.exists() and wal.stat().st_size > 0, (
        "sample_dbs/world/gestima.db-wal was checkpointed away (opened read-write?); regenerate"
        " with: python -c 'from pathlib import Path; from recovery.sample import generate;"
        ' generate(Path("sample_dbs/world"))\''
    )
