"""A scratch PostgreSQL database for the application's migration code, reachable only by a role
made for the run.

The application's ``env.py`` and migrations run only in the sandbox child
(:mod:`recovery.migrate.sandbox`). On PostgreSQL the child is given, for one run:

* a new database ``recovery_scratch_<purpose>_<random>``, a copy (``CREATE DATABASE … TEMPLATE``)
  of a database the tool itself made (the restored backup, or the replayed upgrade), whose every
  object is then owned by
* a new role ``recovery_sandbox_<random>`` (LOGIN with a random password; not superuser, no
  CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS, no membership in any role), which holds no
  privilege on anything else, and which the server lets connect to that database only: the role's
  ``session_preload_libraries`` names a library that does not exist, so every connection it
  opens fails at start-up, except in the scratch database where a per-database setting loads
  ``plpgsql`` instead. ``CONNECT`` on the scratch database is revoked from PUBLIC.

The server-side lock needs a superuser (``session_preload_libraries`` is a superuser setting);
without one the role still holds no privilege outside the scratch database, the child still
refuses every other connection (:class:`recovery.migrate.sandbox_child.Guard`), and one line says
the lock is not there. The database and the role are dropped when the block ends, whatever
happens. The connection URL (with the role's password) goes only to the child.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from recovery.engine.postgres import (
    SCRATCH_PREFIX,
    PostgresEngine,
    command,
    connect,
    create_database_sql,
    drop_database_sql,
    ident,
    literal,
    run,
)
from recovery.errors import RecoveryError

ROLE_PREFIX = "recovery_sandbox_"
NO_LIBRARY = "recovery-sandbox-role-may-connect-to-its-scratch-database-only"
"""The library the role's connections try to preload everywhere but in its scratch database: it
does not exist, so the connection fails at start-up."""

log = logging.getLogger(__name__)

_OWNED_OBJECTS = (
    "SELECT CASE WHEN c.relkind IN ('v', 'm') THEN 'VIEW' WHEN c.relkind = 'S' THEN 'SEQUENCE' "
    "WHEN c.relkind = 'c' THEN 'TYPE' WHEN c.relkind = 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, "
    "n.nspname, c.relname FROM pg_catalog.pg_class AS c "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%' "
    "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'c', 'f') "
    "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d WHERE d.classid = "
    "'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i', 'e')) "
    "UNION ALL SELECT 'TYPE', n.nspname, t.typname FROM pg_catalog.pg_type AS t "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = t.typnamespace "
    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%' "
    "AND t.typtype IN ('e', 'd', 'r') AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d "
    "WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')"
)
_FUNCTIONS = (
    "SELECT CAST(p.oid AS regprocedure) FROM pg_catalog.pg_proc AS p "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace "
    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%' "
    "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d WHERE d.classid = "
    "'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')"
)
_SCHEMAS = (
    "SELECT n.nspname FROM pg_catalog.pg_namespace AS n "
    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%'"
)


@dataclass(frozen=True)
class SandboxDatabase:
    """The scratch database as the tool reaches it (``admin``: the tool's own user), and the URL
    the sandbox child gets (``url``: the run role, its password)."""

    admin: PostgresEngine
    url: str
    role: str
    locked: bool
    """The server lets the role connect to the scratch database only (see the module doc)."""


def _first_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[0] if lines else "no message"


def _give_to(conn: psycopg.Connection[Any], role: str) -> None:
    """Every schema, relation, type and function of the connected database owned by ``role``
    (objects of extensions stay as they are; a sequence follows its table)."""
    for (schema,) in run(conn, _SCHEMAS).fetchall():
        run(conn, command(f"ALTER SCHEMA {ident(schema)} OWNER TO {ident(role)}"))
    for kind, schema, name in run(conn, _OWNED_OBJECTS).fetchall():
        run(
            conn,
            command(f"ALTER {kind} {ident(schema)}.{ident(name)} OWNER TO {ident(role)}"),
        )
    for (signature,) in run(conn, _FUNCTIONS).fetchall():
        run(conn, command(f"ALTER FUNCTION {signature} OWNER TO {ident(role)}"))


def _lock_role(admin: psycopg.Connection[Any], role: str, database: str) -> bool:
    """Let ``role`` connect to ``database`` only (the module doc says how); False when this user
    may not set it (not a superuser)."""
    try:
        run(
            admin,
            command(
                f"ALTER ROLE {ident(role)} SET session_preload_libraries = {literal(NO_LIBRARY)}"
            ),
        )
        run(
            admin,
            command(
                f"ALTER ROLE {ident(role)} IN DATABASE {ident(database)} "
                "SET session_preload_libraries = 'plpgsql'"
            ),
        )
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


@contextmanager
def sandbox_database(
    template: PostgresEngine, purpose: str = "sandbox"
) -> Iterator[SandboxDatabase]:
    """A copy of ``template`` (a database the tool made: nobody else may be connected to it) on
    its server, owned by a new role that can connect to it and to nothing else; both dropped after
    the block."""
    tag = uuid.uuid4().hex[:10]
    role, name = f"{ROLE_PREFIX}{tag}", f"{SCRATCH_PREFIX}{purpose}_{tag}"
    password = secrets.token_urlsafe(24)
    made_role = made_db = False
    try:
        with connect(template.admin_url(), "server") as admin:
            try:
                run(
                    admin,
                    command(
                        f"CREATE ROLE {ident(role)} LOGIN PASSWORD {literal(password)} NOSUPERUSER "
                        "NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
                    ),
                )
                made_role = True
                run(admin, create_database_sql(name, template.database))
                made_db = True
                run(admin, command(f"REVOKE ALL ON DATABASE {ident(name)} FROM PUBLIC"))
                run(admin, command(f"ALTER DATABASE {ident(name)} OWNER TO {ident(role)}"))
                locked = _lock_role(admin, role, name)
            except psycopg.Error as exc:
                raise RecoveryError(
                    f"cannot make the sandbox's scratch database on {template.spec}: "
                    f"{_first_line(str(exc))}",
                    "the user needs CREATEDB and CREATEROLE (a superuser also locks the role to "
                    "its database); nothing was changed",
                ) from None
        admin_engine = template.with_database(name)
        with connect(admin_engine.url, "scratch database") as conn:
            _give_to(conn, role)
        if not locked:
            log.warning(
                "recovery: this user may not lock the sandbox role to its scratch database "
                "(a superuser setting): the role holds no privilege outside it and the sandbox "
                "refuses every other connection"
            )
        url = admin_engine.url.set(
            drivername="postgresql+psycopg", username=role, password=password
        ).render_as_string(hide_password=False)
        yield SandboxDatabase(admin_engine, url, role, locked)
    finally:
        with connect(template.admin_url(), "server") as admin:
            if made_db:
                run(admin, drop_database_sql(name))
            if made_role:
                run(admin, command(f"DROP ROLE IF EXISTS {ident(role)}"))
