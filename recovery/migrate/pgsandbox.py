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

None of this holds when the server does not check passwords (``trust`` in ``pg_hba.conf``): the
child could connect as any role by naming it. :func:`password_checked` tries the role with a wrong
password on the child's route; when the server lets it in, one warning line says so (naming the
``trust`` lines when this user may read ``pg_hba_file_rules``).
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlglot import exp

from recovery.engine import pgclaims
from recovery.engine.postgres import (
    SCRATCH_PREFIX,
    PostgresEngine,
    command,
    conninfo,
    connect,
    create_database_sql,
    drop_database_sql,
    ident,
    literal,
    run,
    user_tables,
)
from recovery.engine.pgworkspace import column_types
from recovery.engine.schema import Schema
from recovery.migrate.replay import Replayed
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
    password_checked: bool = True
    """False: ``trust`` authentication lets the child in as any role (:func:`password_checked`)."""


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


_TRUST_WARNED: set[str] = set()


def password_checked(server: PostgresEngine, role: str, database: str) -> bool:
    """Whether the server checks the password of a connection made as ``role`` to ``database``
    the way the sandbox child connects (the same host and port): one attempt with a wrong
    password must be refused. False means ``trust`` in ``pg_hba.conf`` on that route: the child
    could then connect as any role, a superuser too, by naming it."""
    url = server.url.set(database=database, username=role, password=secrets.token_urlsafe(24))
    try:
        psycopg.connect(conninfo(url), connect_timeout=5).close()
    except psycopg.Error:
        return True
    return False


def _trust_lines(admin: psycopg.Connection[Any]) -> list[int]:
    """The ``pg_hba.conf`` lines with ``trust`` (empty when this user may not read the rules)."""
    try:
        rows = run(
            admin,
            "SELECT line_number FROM pg_catalog.pg_hba_file_rules "
            "WHERE auth_method = 'trust' ORDER BY line_number",
        ).fetchall()
    except psycopg.Error:
        return []
    return [int(r[0]) for r in rows if r[0] is not None]


def _warn_if_trusted(server: PostgresEngine, role: str, database: str) -> bool:
    """One warning line per server when the sandbox's isolation is void (:func:`password_checked`);
    whether the password is checked."""
    if password_checked(server, role, database):
        return True
    key = f"{server.url.host}:{server.url.port}"
    if key not in _TRUST_WARNED:
        _TRUST_WARNED.add(key)
        with connect(server.admin_url(), "server") as admin:
            lines = _trust_lines(admin)
        where = f" (pg_hba.conf line(s) {', '.join(map(str, lines))})" if lines else ""
        log.warning(
            "recovery: the server lets the sandbox's role in without checking its password "
            f"(trust authentication{where}): the application's migration code could connect as "
            "any role, a superuser too, by naming it; use scram-sha-256 or peer authentication"
        )
    return False


@contextmanager
def sandbox_database(
    template: PostgresEngine, purpose: str = "sandbox", rows: bool = True
) -> Iterator[SandboxDatabase]:
    """A copy of ``template`` (a database the tool made: nobody else may be connected to it) on
    its server, owned by a new role that can connect to it and to nothing else; both dropped after
    the block. ``rows=False``: the copy's tables are emptied (but ``alembic_version``) before the
    role gets it — the schema without the data, as SQLite's lineage scratch is built."""
    tag = pgclaims.tag()
    role, name = f"{ROLE_PREFIX}{tag}", f"{SCRATCH_PREFIX}{purpose}_{tag}"
    password = secrets.token_urlsafe(24)
    made_role = made_db = False
    try:
        with (
            connect(template.admin_url(), "server") as admin,
            pgclaims.creating(admin, lambda: connect(template.admin_url(), "server")),
        ):
            try:
                run(
                    admin,
                    command(
                        f"CREATE ROLE {ident(role)} LOGIN PASSWORD {literal(password)} NOSUPERUSER "
                        "NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
                    ),
                )
                made_role = True
                pgclaims.claim(admin, "role", role, f"sandbox of {template.database}")
                run(admin, create_database_sql(name, template.database))
                made_db = True
                pgclaims.claim(admin, "database", name, f"sandbox of {template.database}")
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
        pgclaims.kill_point("sandbox:made")
        admin_engine = template.with_database(name)
        with connect(admin_engine.url, "scratch database") as conn:
            if not rows:
                _empty_tables(conn)
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
        checked = _warn_if_trusted(template, role, name)
        yield SandboxDatabase(admin_engine, url, role, locked, checked)
    finally:
        with connect(template.admin_url(), "server") as admin:
            if made_db:
                run(admin, drop_database_sql(name))
            if made_role:
                run(admin, command(f"DROP ROLE IF EXISTS {ident(role)}"))


def _empty_tables(conn: psycopg.Connection[Any]) -> None:
    """``TRUNCATE`` every user table but ``alembic_version``, in one statement (so foreign keys
    between them do not refuse it); sequences keep their values. A user the server does not let
    truncate them keeps the rows (the lineage is the same, only slower), saying so."""
    tables = [
        exp.Table(this=exp.to_identifier(t, quoted=True), db=exp.to_identifier(s, quoted=True))
        for s, t in user_tables(conn)
        if t != "alembic_version"
    ]
    if not tables:
        return
    try:
        run(conn, exp.TruncateTable(expressions=tables))
    except psycopg.Error as exc:
        log.warning(
            "recovery: the lineage's scratch copy keeps its rows (%s); the downgrade runs over them",
            _first_line(str(exc)),
        )


def _downgrade_steps(revs: list[Any], target: str) -> list[tuple[str, str]]:
    """(revision, the target that undoes just it), newest first; a history with branches or
    merges in the range is one step ``NEWEST..TARGET`` (as for SQLite)."""
    if not revs:
        return []
    chain = [r.revision for r in revs[1:]] + [target]
    if all(r.down_revision == nxt for r, nxt in zip(revs, chain, strict=True)):
        return list(zip((r.revision for r in revs), chain, strict=True))
    return [(f"{revs[0].revision}..{target}", target)]


def derive_lineage_pg(
    alembic_ini: str | os.PathLike[str],
    old: Schema,
    new: Schema,
    at_new: PostgresEngine,
) -> tuple[dict[str, dict[str, exp.Expression]], dict[str, Any]]:
    """Mapping rules read from the application's own downgrade, run by the sandbox child one
    revision at a time on a copy of ``at_new`` (a database the tool made at the live revision:
    the replayed upgrade) emptied of its rows, as SQLite's lineage runs on a scratch with the
    live schema and no rows (the lineage is read from the statements, not the data: a downgrade
    over every row of a large database would only cost time), as a role that reaches that copy
    only; the statements are followed as on SQLite
    (:func:`recovery.migrate.migrations.lineage_from_capture`). A revision whose downgrade fails
    is recorded and ends the capture (the columns it would have told stay without lineage)."""
    from recovery.migrate.migrations import (
        DowngradeCapture,
        lineage_from_capture,
        revisions_between,
    )
    from recovery.migrate.sandbox import MigrationFailed, Sandbox

    old_rev, new_rev = old.alembic_revision, new.alembic_revision
    if old_rev is None or new_rev is None:
        raise RecoveryError(
            "--alembic-ini needs both databases to have an alembic_version",
            "pass a mapping file instead",
        )
    env = {
        t.name: {c: exp.column(c, quoted=True) for c in t.column_names} for t in new.tables.values()
    }
    old_tables = {t.name: list(t.column_names) for t in old.tables.values()}
    revs = revisions_between(alembic_ini, new_rev, old_rev) if old_rev != new_rev else []
    steps: list[tuple[str, list[str] | None]] = []
    failed: list[dict[str, Any]] = []
    if revs:
        with (
            sandbox_database(at_new, "lineage", rows=False) as sdb,
            tempfile.TemporaryDirectory(prefix="recovery-lineage-") as tmp,
            Sandbox(Path(alembic_ini), Path(tmp) / "no-file.db", [], server_url=sdb.url) as sb,
        ):
            for label, target in _downgrade_steps(revs, old_rev):
                try:
                    steps.append((label, sb.migrate("downgrade", target)))
                except MigrationFailed as exc:
                    steps.append((label, None))
                    failed.append(
                        {
                            "revision": label,
                            "error": exc.error,
                            "refused": exc.refused,
                            "rebuilt": False,
                            "rebuild_error": "a failed revision ends the capture on PostgreSQL",
                            "columns": [],
                        }
                    )
                    break
    return lineage_from_capture(
        DowngradeCapture(steps, failed), env, old_tables, revs, old_rev, new_rev
    )


# ---- the application's upgrade, replayed in the sandbox ------------------------------------------


class PgReplayed(Replayed):
    """The upgrade replayed on a copy of the backup, in a scratch database the extract workspace
    reaches as the foreign schema :data:`recovery.migrate.replay.SCHEMA`."""

    def __init__(self, db: PostgresEngine) -> None:
        self.path = Path(db.spec)
        self.db = db
        self.columns = {t: frozenset(cols) for t, cols in column_types(db).items()}

    def attach(self, conn: Any) -> Any:
        raise NotImplementedError("attached by extract_workspace")


def replay_upgrade_pg(
    alembic_ini: str | os.PathLike[str],
    old_db: PostgresEngine,
    old_rev: str | None,
    new_rev: str | None,
    stack: ExitStack,
) -> PgReplayed | None:
    """The application's upgrade from ``old_rev`` to ``new_rev`` run by the sandbox child on a
    copy of the backup (:func:`recovery.migrate.pgsandbox.sandbox_database`: a role that can reach
    that copy only), kept until ``stack`` closes; None (one line on stderr) when the revisions are
    unknown or the upgrade fails: the values it may have filled are then "not verified"."""
    from recovery.migrate.sandbox import MigrationFailed, Sandbox

    if old_rev is None or new_rev is None:
        return None
    sdb = stack.enter_context(sandbox_database(old_db, "replay"))
    if old_rev != new_rev:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recovery-replay-")))
        try:
            with Sandbox(Path(alembic_ini), folder / "no-file.db", [], server_url=sdb.url) as sb:
                sb.migrate("upgrade", new_rev)
        except MigrationFailed as err:
            log.warning(
                f"recovery: replaying the upgrade on a copy of the backup failed ({err.one_line()}); "
                "values the upgrade may have filled are listed as not verified"
            )
            return None
    return PgReplayed(sdb.admin)
