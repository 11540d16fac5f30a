"""The PostgreSQL comparison workspace: a scratch database on the live server in which the backup,
the live database and (with ``--alembic-ini``) the replayed upgrade are foreign schemas
(``postgres_fdw``), so a diff or an extract is a join inside the server.

Beyond :func:`recovery.engine.postgres.pair_workspace`, this workspace

* stands in for the sources' user-defined types (enums, domains, extension types) with domains
  of the same qualified name over ``text`` (or over a domain's built-in base type), so tables
  using them import and each value arrives as the source's text output;
* declares every foreign server ``updatable 'false'``: nothing can be written to a source
  through it;
* plans without nested loops (:data:`PLANNER_SETTINGS`);
* pins the session's output settings (:data:`SESSION_SETTINGS`) on which the text form of a
  carried value depends;
* optionally holds writable local schemas (the extract's ``bnew`` and ``bbase``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from recovery.engine.postgres import (
    PostgresEngine,
    attach_foreign,
    command,
    connect,
    ident,
    install_sqlite_compat,
    run,
    scratch_database,
)
from recovery.errors import RecoveryError

REPLAY_SCHEMA = "replayed"
"""The foreign schema of the replayed upgrade (:data:`recovery.migrate.replay.SCHEMA`)."""

SESSION_SETTINGS = (
    "SET TIME ZONE 'UTC'",
    "SET datestyle = 'ISO, YMD'",
    "SET intervalstyle = 'postgres'",
    "SET bytea_output = 'hex'",
    "SET extra_float_digits = 1",
)
"""The workspace session's output settings: the text form of every carried value depends on them
(and each of these text forms reads back as the identical value)."""

PLANNER_SETTINGS = ("SET enable_nestloop = off",)
"""The workspace session's planner settings. Every join here pairs whole tables (a source with a
source, or a source with a workspace list) on keys, and the planner has no column statistics for
a foreign table (none is ever analysed: postgres_fdw would read each one whole to do it), so its
default guess of 0.5 % of the cross product for an equality join makes a nested loop look cheap
that drives one foreign scan, i.e. one round trip to the source, per row of the other side.
Without nested loops the joins are hashed or merged: each source table is read once. (A join
that can only be a nested loop, on a NULL-safe key, is still planned as one.) The servers do not
ask the sources for estimates (``use_remote_estimate``): a remote estimate of one row per key
makes a parameterized foreign scan per row of the other side look cheaper than the disabled
nested loop's penalty when the join's size is guessed in billions."""

_COLUMN_TYPES = (
    "SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) "
    "FROM pg_catalog.pg_attribute AS a "
    "JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0 "
    "AND NOT a.attisdropped ORDER BY c.relname, a.attnum"
)
_USER_TYPES = (
    "SELECT DISTINCT tn.nspname, t.typname, t.typtype, "
    "CASE WHEN t.typtype = 'd' AND bn.nspname = 'pg_catalog' "
    "THEN pg_catalog.format_type(t.typbasetype, t.typtypmod) END "
    "FROM pg_catalog.pg_attribute AS a "
    "JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
    "JOIN pg_catalog.pg_type AS t0 ON t0.oid = a.atttypid "
    "JOIN pg_catalog.pg_type AS t ON t.oid = CASE WHEN t0.typelem <> 0 AND t0.typlen = -1 "
    "THEN t0.typelem ELSE t0.oid END "
    "JOIN pg_catalog.pg_namespace AS tn ON tn.oid = t.typnamespace "
    "LEFT JOIN pg_catalog.pg_type AS b ON b.oid = t.typbasetype "
    "LEFT JOIN pg_catalog.pg_namespace AS bn ON bn.oid = b.typnamespace "
    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0 "
    "AND NOT a.attisdropped AND tn.nspname NOT IN ('pg_catalog', 'information_schema')"
)


# ---- the sources' catalogs ----------------------------------------------------------------------


def column_types(db: PostgresEngine) -> dict[str, dict[str, str]]:
    """{table: {column: ``format_type`` text}} of the tables in ``public``, in column order."""
    out: dict[str, dict[str, str]] = {}
    with db.readonly("database") as conn:
        for tname, cname, typ in run(conn, _COLUMN_TYPES).fetchall():
            out.setdefault(str(tname), {})[str(cname)] = str(typ)
    return out


def user_types(db: PostgresEngine) -> set[tuple[str, str, str | None]]:
    """(schema, name, built-in base type or None) of every user-defined type a ``public`` table's
    column uses (itself or as an array's element): enums, domains, composites, extension types."""
    with db.readonly("database") as conn:
        return {
            (str(s), str(n), None if base is None else str(base))
            for s, n, _kind, base in run(conn, _USER_TYPES).fetchall()
        }


def stand_in_types(conn: psycopg.Connection[Any], types: set[tuple[str, str, str | None]]) -> None:
    """In the workspace, a domain of the same qualified name for each user-defined type the sources
    use (over its built-in base type for a domain, else over ``text``): the foreign tables then
    import, and postgres_fdw hands each value over as the source's text output."""
    made: set[tuple[str, str]] = set()
    for schema, name, base in sorted(types, key=lambda t: (t[0], t[1], t[2] or "")):
        if (schema, name) in made:
            continue
        made.add((schema, name))
        run(conn, command(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}"))
        run(
            conn,
            command(f"CREATE DOMAIN {ident(schema)}.{ident(name)} AS {base or 'text'}"),
        )


# ---- the workspace ------------------------------------------------------------------------------


@contextmanager
def workspace(
    backup: PostgresEngine,
    live: PostgresEngine,
    replayed: PostgresEngine | None = None,
    local_schemas: tuple[str, ...] = (),
    purpose: str = "pair",
) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a scratch database on the live server with ``backup`` as the foreign schema
    ``old``, ``live`` as ``new`` and ``replayed`` (the upgrade replayed on a copy of the backup, if
    given) as ``replayed`` — every foreign server ``updatable 'false'`` —, the empty writable
    ``local_schemas`` (none: the transaction is READ ONLY), inside one REPEATABLE READ
    transaction (postgres_fdw reads each source in one snapshot for the whole transaction). The
    scratch database is dropped afterwards."""
    sources = [(backup, "old"), (live, "new")]
    if replayed is not None:
        sources.append((replayed, REPLAY_SCHEMA))
    types = set().union(*(user_types(engine) for engine, _ in sources))
    with scratch_database(live, purpose) as ws:
        conn = connect(ws.url, "scratch database")
        try:
            try:
                stand_in_types(conn, types)
                for engine, schema in sources:
                    attach_foreign(conn, engine, schema)
                    run(
                        conn,
                        command(
                            f"ALTER SERVER {ident('recovery_' + schema)} "
                            "OPTIONS (ADD updatable 'false')"
                        ),
                    )
                install_sqlite_compat(conn)
                for setting in (*SESSION_SETTINGS, *PLANNER_SETTINGS):
                    run(conn, command(setting))
                for schema in local_schemas:
                    run(conn, command(f"CREATE SCHEMA {ident(schema)}"))
            except psycopg.Error as exc:
                raise RecoveryError(
                    f"cannot reach the databases through postgres_fdw: {_first_line(str(exc))}",
                    "the user needs to create the postgres_fdw extension (PostgreSQL contrib) "
                    "in a new database",
                ) from None
            mode = "" if local_schemas else " READ ONLY"
            run(conn, command(f"BEGIN ISOLATION LEVEL REPEATABLE READ{mode}"))
            yield conn
        finally:
            conn.close()


def _first_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[0] if lines else "no message"
