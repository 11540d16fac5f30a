"""``recovery diff`` on PostgreSQL: the same schema diff, column rules and row diff as on SQLite,
run inside the server.

The backup (a ``pg_dump`` file restored into a scratch database, or another database's URL) and
the live database are reached from a second scratch database as the foreign schemas ``old`` and
``new`` (``postgres_fdw``, :func:`recovery.engine.postgres.pair_workspace`), inside one REPEATABLE
READ transaction. The comparison statements are the very sqlglot trees the SQLite diff builds
(:mod:`recovery.compare.changes`, :mod:`recovery.compare.evidence`, rename detection), rendered for
``postgres`` (:func:`recovery.engine.sqlbuild.rendering_for`): only counts, and with ``--rows`` the
changed keys and cells, come back to Python. Neither database is written; both scratch
databases are dropped at the end.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.pool import NullPool

from recovery.capture.snapshot import deploy_time_of
from recovery.compare.changes import diff_rows
from recovery.compare.diff import DiffResult, check_user_expressions
from recovery.compare.evidence import verify
from recovery.compare.schemadiff import compare
from recovery.compare.timestamps import parse_since
from recovery.engine.postgres import (
    PgPair,
    PostgresEngine,
    backup_database,
    is_postgres_url,
)
from recovery.engine.pgworkspace import workspace
from recovery.engine.schema import BOOKKEEPING_TABLES, Column, ForeignKey, Schema, Table
from recovery.engine.sqlbuild import rendering_for
from recovery.errors import RecoveryError
from recovery.transpile.mapping import load_mapping, resolve


def _sa_engine(db: PostgresEngine) -> sa.Engine:
    return sa.create_engine(db.sqlalchemy_url(readonly=True), poolclass=NullPool)


def reflect_pg(db: PostgresEngine, schema: str = "public") -> Schema:
    """The :class:`Schema` of ``schema`` (tables, keys, foreign keys, unique sets, views,
    triggers, and the indexes that back no constraint), reflected with SQLAlchemy."""
    engine = _sa_engine(db)
    try:
        with engine.connect() as conn:
            insp = sa.inspect(conn)
            tables: dict[str, Table] = {}
            for name in sorted(insp.get_table_names(schema=schema)):
                cols = tuple(
                    Column(
                        c["name"],
                        str(c["type"]) if c["type"] is not None else "",
                        bool(c["nullable"]),
                        None if c.get("default") is None else str(c["default"]),
                    )
                    for c in insp.get_columns(name, schema=schema)
                )
                pk = tuple(
                    insp.get_pk_constraint(name, schema=schema).get("constrained_columns") or ()
                )
                fks = tuple(
                    ForeignKey(
                        tuple(f["constrained_columns"]),
                        f["referred_table"],
                        tuple(f["referred_columns"] or pk),
                        (f.get("options") or {}).get("ondelete"),
                    )
                    for f in insp.get_foreign_keys(name, schema=schema)
                )
                uniques = [
                    tuple(u["column_names"])
                    for u in insp.get_unique_constraints(name, schema=schema)
                ]
                uniques += [
                    tuple(c for c in i["column_names"] if c is not None)
                    for i in insp.get_indexes(name, schema=schema)
                    if i.get("unique")
                ]
                tables[name] = Table(name, cols, pk, fks, tuple(sorted(set(uniques))))
            views = {
                v: str(insp.get_view_definition(v, schema=schema) or "")
                for v in insp.get_view_names(schema=schema)
            }
            triggers = {
                str(n): str(d)
                for n, d in conn.execute(
                    sa.text(
                        "SELECT t.tgname, pg_catalog.pg_get_triggerdef(t.oid) FROM pg_catalog.pg_trigger AS t "
                        "JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid JOIN pg_catalog.pg_namespace AS n "
                        "ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND n.nspname = :s"
                    ),
                    {"s": schema},
                )
            }
            indexes = {
                str(n): str(d)
                for n, d in conn.execute(
                    sa.text(
                        "SELECT i.indexname, i.indexdef FROM pg_catalog.pg_indexes AS i WHERE i.schemaname = :s "
                        "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint AS k "
                        "WHERE k.conindid = (quote_ident(i.schemaname) || '.' || quote_ident(i.indexname))::regclass)"
                    ),
                    {"s": schema},
                )
            }
            revision = None
            if "alembic_version" in tables:
                rows: list[Any] = list(
                    conn.execute(
                        sa.select(sa.column("version_num")).select_from(
                            sa.table("alembic_version", schema=schema)
                        )
                    )
                    .scalars()
                    .all()
                )
                revision = ",".join(sorted(str(r) for r in rows)) or None
    finally:
        engine.dispose()
    return Schema(tables, views, triggers, indexes, revision)


def structural_pg(old: PostgresEngine, new: PostgresEngine) -> list[Any]:
    """alembic's upgrade operations from the backup database to the live schema."""
    new_engine, old_engine = _sa_engine(new), _sa_engine(old)
    try:
        target = sa.MetaData()
        with new_engine.connect() as conn:
            target.reflect(bind=conn)
        for name in list(target.tables):
            if name in BOOKKEEPING_TABLES:
                target.remove(target.tables[name])
        with old_engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_name": lambda name, type_, parent: (
                        not (type_ == "table" and name in BOOKKEEPING_TABLES)
                    ),
                },
            )
            return list(compare_metadata(ctx, target))
    finally:
        new_engine.dispose()
        old_engine.dispose()


def diff_postgres(
    backup: str | os.PathLike[str],
    live: str,
    since: str | None = None,
    tables: list[str] | None = None,
    rows: bool = False,
    trust_mapping: bool = False,
    *,
    mapping: str | os.PathLike[str] | None = None,
    alembic_ini: str | os.PathLike[str] | None = None,
) -> DiffResult:
    """Compare ``backup`` (a pg_dump file or a database URL) with the live database ``live``;
    ``mapping``: the mapping file's rules first (each expression tried once on the live table)."""
    if alembic_ini is not None and not Path(alembic_ini).is_file():
        raise RecoveryError(
            f"--alembic-ini {alembic_ini} does not exist",
            "point it at the application's alembic.ini",
        )
    live_db = PostgresEngine(live)
    live_db.check("live database")
    backup_text = os.fspath(backup)
    if since is None and not is_postgres_url(backup_text):
        since = deploy_time_of(Path(backup_text))
    since_jd, since_norm = parse_since(since) if since is not None else (None, None)
    user = load_mapping(mapping)
    with ExitStack() as stack:
        old_db = stack.enter_context(backup_database(backup_text, live_db))
        old_db.check("backup")
        old, new = reflect_pg(old_db), reflect_pg(live_db)
        shared = set(old.data_tables) & set(new.data_tables)
        unknown = [t for t in tables or [] if t not in old.tables and t not in new.tables]
        if unknown:
            raise RecoveryError(
                f"--table {unknown[0]} is in neither database", "check the table name"
            )
        ops = structural_pg(old_db, live_db)
        replay, lineage = None, None
        if alembic_ini is not None:  # the app's code runs in the sandbox, on scratch copies only
            from recovery.migrate.pgsandbox import derive_lineage_pg, replay_upgrade_pg

            replay = replay_upgrade_pg(
                alembic_ini, old_db, old.alembic_revision, new.alembic_revision, stack
            )
            if replay is not None:
                lineage, _report = derive_lineage_pg(alembic_ini, old, new, replay.db)
        replayed = replay.db if replay is not None else None
        with workspace(old_db, live_db, replayed) as conn, rendering_for("postgres"):
            pair: Any = PgPair(conn)
            sdiff = compare(pair, None, None, old, new, user, since_jd, ops=ops)  # type: ignore[arg-type]
            if not shared and not sdiff.table_renames:
                raise RecoveryError(
                    f"{backup_text} and {live_db.spec} have no table in common",
                    "is the backup of the same application?",
                )
            cmap = resolve(
                old, new, user, lineage, sdiff.renames_by_table(), sdiff.table_renames_by_old()
            )
            check_user_expressions(pair, user, new, cmap)
            cmap = verify(pair, old, new, cmap, since_jd, trust_mapping)
            changes = diff_rows(
                pair, old, new, cmap, tables, since_jd, rows, since_norm, replay=replay
            )
    label = backup_text if not is_postgres_url(backup_text) else PostgresEngine(backup_text).spec
    return DiffResult(label, live_db.spec, sdiff, changes, cmap, since_norm)  # type: ignore[arg-type]
