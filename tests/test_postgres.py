"""PostgreSQL on a real server (issue 19 foundations): sample world, snapshot, diff, holders.

The server is ``RECOVERY_TEST_PG_URL`` (``.ci/run`` starts one) or a throwaway cluster the
``pg_server`` fixture starts itself; without PostgreSQL installed these tests skip, saying how to
run them. The PostgreSQL world is conftest's session-wide ``pg_world`` (``recovery sample --url``,
--parts 60), never rebuilt here.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from recovery.engine.postgres import (
    PostgresEngine,
    backup_database,
    connect,
    create_database_sql,
    drop_database_sql,
    run,
    sha256_file,
    user_tables,
)
from tests.clirun import invoke
from tests.pgcluster import PgWorld, PgWorldCopy

PARTS, SEED = 60, 42


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (:mod:`tests.clirun`)."""
    return invoke(*args)


@pytest.fixture(scope="module")
def lite_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recovery.sample import generate

    return generate(tmp_path_factory.mktemp("liteworld") / "world", parts=PARTS, seed=SEED)


def _dump(out: Path) -> str:
    name = json.loads((out / "world.json").read_text())["backup"]
    assert name.endswith(".dump.bak.20261120_140000")
    return str(name)


def _normal(v: Any) -> Any:
    """SQLite stores booleans as 0/1: compare PostgreSQL's booleans the same way."""
    return int(v) if isinstance(v, bool) else v


def _rows_pg(
    conn: psycopg.Connection[Any], table: str, columns: list[str]
) -> list[tuple[Any, ...]]:
    from sqlglot import exp

    q = (
        exp.select(*[exp.column(c, quoted=True) for c in columns])
        .from_(exp.to_table(exp.to_identifier(table, quoted=True).sql("postgres")))
        .order_by(*[exp.column(c, quoted=True) for c in columns])
    )
    return [tuple(_normal(v) for v in r) for r in conn.execute(q.sql("postgres")).fetchall()]


def _rows_lite(path: Path, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    import sqlite3

    from sqlglot import exp

    q = (
        exp.select(*[exp.column(c, quoted=True) for c in columns])
        .from_(exp.to_table(exp.to_identifier(table, quoted=True).sql("sqlite")))
        .order_by(*[exp.column(c, quoted=True) for c in columns])
    )
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(q.sql("sqlite")).fetchall())
    finally:
        conn.close()


def _same_world(db: PostgresEngine, lite: Path) -> None:
    from recovery.engine.schema import reflect
    from recovery.engine.sqlite_io import readonly

    with readonly(lite, "sqlite world") as conn:
        schema = reflect(conn)
    with db.readonly() as pg:
        assert {t for s, t in user_tables(pg) if s == "public"} == set(schema.tables)  # type: ignore[arg-type]
        for name, t in schema.tables.items():
            cols = list(t.column_names)
            assert _rows_pg(pg, name, cols) == _rows_lite(lite, name, cols), name  # type: ignore[arg-type]


def test_sample_on_postgres_is_the_sqlite_world_row_for_row(
    pg_world: PgWorld, lite_world: Path
) -> None:
    out, url = pg_world.folder, pg_world.live_url
    DUMP = _dump(out)
    live = PostgresEngine(url)
    _same_world(live, lite_world / "gestima.db")
    with backup_database(out / DUMP, live) as backup:
        _same_world(backup, lite_world / "gestima.db.bak.20261120_140000")
    world = json.loads((out / "world.json").read_text())
    lite = json.loads((lite_world / "world.json").read_text())
    assert world["engine"] == "postgresql" and world["backup"] == DUMP
    assert world["tables"] == lite["tables"] and world["counts"] == lite["counts"]
    assert sorted(p.relative_to(out / "uploads") for p in (out / "uploads").rglob("*")) == sorted(
        p.relative_to(lite_world / "uploads") for p in (lite_world / "uploads").rglob("*")
    )
    manifest = json.loads((out / f"{DUMP}.manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(out / DUMP)
    assert manifest["tables"] == lite["counts"]["backup"]
    assert manifest["alembic_revision"] == "aa001_add_drawing_number_drop_drawings"
    assert manifest["server_version"].split(".")[0].isdigit()


def test_diff_json_is_the_same_on_both_engines(pg_world: PgWorld, lite_world: Path) -> None:
    out, url = pg_world.folder, pg_world.live_url
    pg = cli("diff", str(out / _dump(out)), url, "--json")
    lite = cli(
        "diff",
        str(lite_world / "gestima.db.bak.20261120_140000"),
        str(lite_world / "gestima.db"),
        "--json",
    )
    assert (pg.returncode, lite.returncode) == (1, 1), pg.stderr + lite.stderr
    a, b = json.loads(pg.stdout), json.loads(lite.stdout)
    assert a["totals"] == b["totals"] and a["totals"]["inserted"] > 0
    for key in ("tables", "schema", "mapping", "at_risk", "filled_by_upgrade", "since"):
        assert a[key] == b[key], key
    with PostgresEngine(url).readonly() as conn:  # the scratch databases are gone
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'recovery_scratch_%'"
        ).fetchone()
        assert left[0] == 0  # type: ignore[index]


def test_snapshot_counts_what_the_dump_holds_while_another_session_writes(
    pg_world_copy: PgWorldCopy, tmp_path: Path
) -> None:
    url = pg_world_copy.url
    writer = psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    writer.execute(
        "INSERT INTO materials (id, code, name, density, price_per_kg) VALUES (999, 'X', 'x', 1, 1)"
    )
    try:  # uncommitted: neither in the dump nor in the counts
        r = cli("snapshot", url, "--out", str(tmp_path), "--json")
    finally:
        writer.rollback()
        writer.close()
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    dump = tmp_path / data["backup"]
    assert (
        data["sha256"] == sha256_file(dump) and data["alembic_revision"] == "bb006_drop_parts_notes"
    )
    live = PostgresEngine(url)
    with backup_database(dump, live) as copy, copy.readonly() as conn:
        for table, n in data["tables"].items():
            assert conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] == n  # type: ignore[index]


def test_sample_refuses_a_database_that_has_tables(pg_world: PgWorld, tmp_path: Path) -> None:
    url = pg_world.live_url
    before = PostgresEngine(url).fingerprint()
    r = cli("sample", str(tmp_path / "w"), "--url", url, "--parts", "10")
    assert r.returncode == 2 and "already has" in r.stderr and "Traceback" not in r.stderr
    assert PostgresEngine(url).fingerprint() == before
    assert not (tmp_path / "w").exists()


def test_holders_name_the_other_sessions(pg_url: str) -> None:
    engine = PostgresEngine(pg_url)
    assert engine.holders() == []
    other = psycopg.connect(
        make_url(pg_url).set(drivername="postgresql").render_as_string(False),
        application_name="gestima-web",
    )
    try:
        (h,) = engine.holders()
        assert (
            h.pid == other.info.backend_pid
            and "gestima-web" in h.describe()
            and "user postgres" in h.command
        )
    finally:
        other.close()


HOSTILE_TABLE = 'Odd "T" x'
HOSTILE_COLS = ("Mixed Case", 'we"ird', "select")


def _hostile_db(server: str, name: str, rows: list[tuple[int, str, str, int]]) -> str:
    url = make_url(server).set(database=name)
    with connect(make_url(server), "server") as admin:
        run(admin, create_database_sql(name))
    with connect(url, "database") as conn:
        cols = ", ".join(f'"{c.replace(chr(34), chr(34) * 2)}"' for c in HOSTILE_COLS)
        table = '"' + HOSTILE_TABLE.replace('"', '""') + '"'
        conn.execute(
            f'CREATE TABLE {table} (id integer PRIMARY KEY, "Mixed Case" text, "we""ird" text, "select" int)'
        )
        with conn.cursor().copy(f"COPY {table} (id, {cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return url.render_as_string(False)


def test_diff_with_hostile_names(pg_server: str) -> None:
    """Quotes, spaces, mixed case and keywords in database, table and column names; the backup given
    as another database's URL."""
    tag = uuid.uuid4().hex[:6]
    old = _hostile_db(
        pg_server, f'Backup "{tag}" DB', [(1, "a", "x", 1), (2, "b", "y", 2), (3, "c", "z", 3)]
    )
    new = _hostile_db(
        pg_server, f"Live Ω {tag}", [(1, "a", "x", 1), (2, "B", "y", 2), (4, "d", "w", 4)]
    )
    try:
        r = cli("diff", old, new, "--json", "--rows")
        assert r.returncode == 1, r.stderr
        t = json.loads(r.stdout)["tables"][HOSTILE_TABLE]
        assert (t["inserted"], t["updated"], t["deleted"]) == (1, 1, 1)
        (upd,) = [row for row in t["rows"] if row["kind"] == "updated"]
        assert upd["key"] == [2] and upd["changes"] == {"Mixed Case": {"old": "b", "new": "B"}}
    finally:
        with connect(make_url(pg_server), "server") as admin:
            for url in (old, new):
                run(admin, drop_database_sql(str(make_url(url).database)))


def test_unreachable_server_is_one_line_exit_2(tmp_path: Path) -> None:
    r = cli("diff", str(tmp_path / "x.dump"), "postgresql://nobody@127.0.0.1:1/gestima", "--json")
    assert r.returncode == 2 and "cannot be opened" in r.stderr and "Traceback" not in r.stderr
