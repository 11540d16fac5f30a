"""The sample Gestima world on PostgreSQL: the same rows, ids and values as the SQLite world of the
same ``seed`` and ``parts``.

The SQLite world is generated first (in a temporary folder), then carried over:

1. the database gets the sample app's schema at the old release by its own Alembic migrations
   (run on PostgreSQL), the SQLite backup's rows are copied in with ``COPY`` and the sequences
   set past the largest ids; ``pg_dump`` of that state is the backup, with its manifest;
2. the same migrations upgrade it to the new release; the tables are emptied and refilled from
   the SQLite live database (after its hour of users), sequences again set past every id;
3. ``uploads/`` and ``world.json`` are copied (world.json names the dump and the database).

So both engines hold the same world and can be compared row by row.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from alembic import command as alembic_command
from sqlalchemy.pool import NullPool
from sqlglot import exp

from recovery.capture.pgsnapshot import snapshot_postgres
from recovery.engine.postgres import (
    PostgresEngine,
    command,
    connect,
    create_database_sql,
    database_exists,
    drop_database_sql,
    ident,
    render,
    run,
    user_tables,
)
from recovery.engine.schema import reflect
from recovery.errors import RecoveryError
from recovery.sample.app import NEW_HEAD, OLD_HEAD, alembic_config
from recovery.engine.sqlite_io import file_uri
from recovery.sample.generator import (
    BACKUP_NAME,
    DEPLOY_TIME,
    LIVE_NAME,
    UPLOADS_NAME,
    WORLD_JSON,
    fresh_folder,
    generate,
)

BATCH = 5000


def prepare_database(engine: PostgresEngine) -> bool:
    """Create the database when missing (True); refuse one that already has tables (nothing is
    changed); an existing empty one is used as it is (False)."""
    with connect(engine.admin_url(), "server") as admin:
        if not database_exists(admin, engine.database):
            run(admin, create_database_sql(engine.database))
            return True
    with engine.readonly("database") as conn:
        tables = user_tables(conn)
    if tables:
        raise RecoveryError(
            f"database {engine.spec} already has {len(tables)} table(s) ({tables[0][0]}.{tables[0][1]}, …)",
            "pass the URL of a new or empty database; nothing was changed",
        )
    return False


def migrate_pg(engine: PostgresEngine, revision: str) -> None:
    """The sample app's real Alembic upgrade to ``revision``, on PostgreSQL."""
    cfg = alembic_config()
    sa_engine = sa.create_engine(engine.sqlalchemy_url(readonly=False), poolclass=NullPool)
    try:
        with sa_engine.connect() as conn:
            # Alembic's own table has VARCHAR(32); the sample app's revision ids are longer
            # (SQLite never enforced the length)
            conn.exec_driver_sql(
                render(
                    "CREATE TABLE IF NOT EXISTS alembic_version (version_num VARCHAR(255) NOT NULL, "
                    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
                )
            )
            cfg.attributes["connection"] = conn
            alembic_command.upgrade(cfg, revision)
            conn.commit()
    finally:
        sa_engine.dispose()


def copy_rows(src: Path, engine: PostgresEngine, replace: bool = False) -> dict[str, int]:
    """Every data table's rows of the SQLite file ``src`` into the same tables of ``engine``, in one
    transaction (``COPY``, streamed in batches); ``replace`` empties the tables first. Sequences
    are then set past the largest value of the column that owns them. Returns the rows per table."""
    lite = sqlite3.connect(file_uri(Path(src), mode="ro"), uri=True)
    counts: dict[str, int] = {}
    try:
        schema = reflect(lite)
        names = schema.fk_order()
        with connect(engine.url, "database", autocommit=False) as conn:
            if replace and names:
                run(conn, command("TRUNCATE " + ", ".join(ident(n) for n in names)))
            for name in names:
                cols = list(schema.tables[name].column_names)
                counts[name] = _copy_table(lite, conn, name, cols)
            _reset_sequences(conn, names)
            conn.commit()
    finally:
        lite.close()
    return counts


def _copy_table(
    lite: sqlite3.Connection, conn: psycopg.Connection[Any], name: str, cols: list[str]
) -> int:
    q = exp.select(*[exp.column(c, quoted=True) for c in cols]).from_(exp.to_table(ident(name)))
    cur = lite.execute(q.sql("sqlite"))
    n = 0
    statement = command(f"COPY {ident(name)} ({', '.join(ident(c) for c in cols)}) FROM STDIN")
    with conn.cursor().copy(render(statement)) as copy:
        while batch := cur.fetchmany(BATCH):
            for row in batch:
                copy.write_row(row)
            n += len(batch)
    return n


def _reset_sequences(conn: psycopg.Connection[Any], tables: list[str]) -> None:
    """``setval`` every sequence owned by a column of ``tables`` to that column's max (or 1, unused)."""
    q = (
        "SELECT c.relname, a.attname FROM pg_catalog.pg_class AS c "
        "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = 'public' "
        "JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE c.relkind = 'r' AND pg_catalog.pg_get_serial_sequence(quote_ident(c.relname), a.attname) IS NOT NULL"
    )
    for table_name, column in run(conn, q).fetchall():
        if table_name not in tables:
            continue
        seq = exp.func("pg_get_serial_sequence", exp.Placeholder(), exp.Placeholder())
        top = exp.select(exp.func("max", exp.column(column, quoted=True))).from_(
            exp.to_table(ident(table_name))
        )
        value = exp.func("coalesce", top.subquery(), exp.Literal.number(0))
        is_called = exp.GT(this=value.copy(), expression=exp.Literal.number(0))
        greatest = exp.func("greatest", value, exp.Literal.number(1))
        run(
            conn,
            exp.select(exp.func("setval", seq, greatest, is_called)),
            (ident(table_name), column),
        )


def generate_postgres(out_dir: Path, url: str, parts: int = 300, seed: int = 42) -> Path:
    """Build the sample world of ``seed``/``parts`` in the database ``url`` (created when missing,
    refused when it has tables) with the backup dump, its manifest, ``uploads/`` and
    ``world.json`` in ``out_dir`` (new or empty). Returns ``out_dir``."""
    engine = PostgresEngine(url)
    with (
        fresh_folder(Path(out_dir)) as out,
        tempfile.TemporaryDirectory(prefix="recovery-sample-") as tmp,
    ):
        created = prepare_database(engine)
        try:
            _build(engine, out, Path(tmp), parts, seed)
        except BaseException:
            if created:  # a half-built world is removed with the database this call made
                with connect(engine.admin_url(), "server") as admin:
                    run(admin, drop_database_sql(engine.database))
            raise
        return out


def load_world_postgres(world: Path, out_dir: Path, url: str) -> Path:
    """Carry a SQLite sample world already built by ``recovery sample`` (``world``: its folder,
    read only) into the database ``url`` (created when missing, refused when it has tables), with
    the backup dump, its manifest, ``uploads/`` and ``world.json`` in ``out_dir`` (new or empty):
    steps 1-3 of the module docstring without generating the world again, so a benchmark can put
    the very world it measured on SQLite on PostgreSQL. Returns ``out_dir``."""
    world = Path(world)
    for name in (BACKUP_NAME, LIVE_NAME, WORLD_JSON):
        if not (world / name).is_file():
            raise RecoveryError(
                f"{world} is not a sample world: {name} is missing",
                "pass a folder written by `recovery sample`",
            )
    engine = PostgresEngine(url)
    with fresh_folder(Path(out_dir)) as out:
        created = prepare_database(engine)
        try:
            _carry(engine, world, out)
        except BaseException:
            if created:
                with connect(engine.admin_url(), "server") as admin:
                    run(admin, drop_database_sql(engine.database))
            raise
        return out


def _build(engine: PostgresEngine, out: Path, tmp: Path, parts: int, seed: int) -> None:
    """The steps of :func:`generate_postgres` (see the module docstring)."""
    _carry(engine, generate(tmp / "world", parts=parts, seed=seed), out)


def _carry(engine: PostgresEngine, world: Path, out: Path) -> None:
    """Steps 1-3 of the module docstring for the SQLite world in folder ``world``."""
    url = engine.url.render_as_string(hide_password=False)
    migrate_pg(engine, OLD_HEAD)
    copy_rows(world / BACKUP_NAME, engine)
    snap = snapshot_postgres(url, out, now=DEPLOY_TIME)
    migrate_pg(engine, NEW_HEAD)
    copy_rows(world / LIVE_NAME, engine, replace=True)
    shutil.copytree(world / UPLOADS_NAME, out / UPLOADS_NAME, symlinks=True)
    data = json.loads((world / WORLD_JSON).read_text(encoding="utf-8"))
    data["engine"] = "postgresql"
    data["backup"] = snap.backup.name
    data["live"] = engine.spec
    (out / WORLD_JSON).write_text(
        json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
