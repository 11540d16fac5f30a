"""Who owns each database and role the tool makes on a PostgreSQL server, and the removal of the
ones whose owner is gone.

A run killed with SIGKILL (or a machine lost) cannot drop the scratch, staged and rehearsal
databases and the sandbox role it made. So every such object carries a *claim*: a ``COMMENT``
(JSON: ``{"recovery": 1, "lock": KEY, "host", "pid", "purpose", "created"}``) naming a session
advisory lock that the creating process holds on the server (on its ``postgres`` database, one
"guard" connection per server per process) for as long as it lives. The server releases a
session's locks when the session ends, and the session ends when the process dies (its socket
closes), so "no session holds KEY" proves the owner is gone, on any host, whatever became of
its pid. ``host`` and ``pid`` are there for the operator only.

:func:`remove_stale` drops an object only when (a) its name has one of the tool's prefixes,
(b) it carries a claim (its comment, or the key :func:`tag` put in its name) and (c) no session
holds the claim's lock. It looks and drops under the
exclusive advisory lock :data:`MUTEX`, which every creator holds shared from its ``CREATE`` to
its ``COMMENT`` (:func:`creating`), so an object is never judged between being made and being
claimed. A database the operator made with a tool-like name carries no claim: it is listed,
never dropped. Every command that makes such an object runs :func:`remove_stale` first;
``recovery clean-stale URL`` runs it on demand.

A claim never reaches the application's database: the swap gives the database it puts under the
live name the live database's own comment (:meth:`PostgresEngine.swap_in`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlglot import exp

log = logging.getLogger(__name__)

PREFIXES = ("recovery_scratch_", "recovery_staged_", "recovery_rehearsal_")
"""Names of the databases the tool makes for its own work (never the application's)."""
ROLE_PREFIXES = ("recovery_sandbox_",)
"""Names of the roles the tool makes (the sandbox's)."""
MUTEX = 0x7265636F76657279  # "recovery"
"""The advisory lock creators hold shared while they create and claim, and removal exclusively."""

KEY = secrets.randbits(62) + 1
"""This process's lock: held by its guard connection on every server it makes objects on."""

_NAME_KEY = re.compile(r"_([0-9a-f]{16})[0-9a-f]{4}(?=_|$)")


def tag() -> str:
    """The unique part of a new object's name: this process's lock key and 4 random hex digits.
    The name claims the object from its ``CREATE`` on, before its ``COMMENT`` can (a kill in
    between leaves an object still known to be this process's)."""
    return f"{KEY:016x}{secrets.token_hex(2)}"


_guards: dict[tuple[str, int], psycopg.Connection[Any]] = {}
_guard_lock = threading.Lock()
_signals_set = False


@dataclass(frozen=True)
class Leftover:
    """A database or role with one of the tool's prefixes; ``state`` is ``stale`` (claimed by a
    run that is gone: dropped), ``in use`` (its run is alive), or ``unclaimed`` (no claim: left
    alone, it may be the operator's)."""

    kind: str
    name: str
    state: str
    claim: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        who = (
            f" (made by pid {self.claim.get('pid')} on {self.claim.get('host')} for "
            f"{self.claim.get('purpose')} at {self.claim.get('created')})"
            if self.claim
            else ""
        )
        return f"{self.kind} {self.name}: {self.state}{who}"


@dataclass(frozen=True)
class CleanResult:
    dropped: list[Leftover]
    kept: list[Leftover]
    failed: list[tuple[Leftover, str]]
    dry_run: bool = False
    skipped_busy: bool = False

    @property
    def exit_code(self) -> int:
        """1 when an object that should have been dropped could not be (listed), else 0."""
        return 1 if self.failed else 0


def _ident(name: str) -> str:
    return exp.Identifier(this=name, quoted=True).sql("postgres")


def _literal(text: str) -> str:
    return exp.Literal.string(text).sql("postgres")


def run(conn: psycopg.Connection[Any], text: str, params: tuple[Any, ...] | None = None) -> Any:
    """Constant SQL (identifiers and literals rendered by sqlglot) with bound ``params``."""
    return conn.execute(text, params)


Opener = Callable[[], "psycopg.Connection[Any]"]


def _guard(admin: psycopg.Connection[Any], open_server: Opener) -> None:
    """Hold :data:`KEY` on ``admin``'s server for the rest of this process, on a connection of its
    own made by ``open_server`` (reconnecting a guard the server dropped)."""
    with _guard_lock:
        key = (str(admin.info.host), int(admin.info.port))
        conn = _guards.get(key)
        if conn is not None and not (conn.closed or conn.broken):
            try:
                run(conn, "SELECT 1")
                return
            except psycopg.Error:
                conn.close()
        conn = open_server()
        try:  # an idle guard must not be ended by the server (PostgreSQL 14+)
            run(conn, "SET idle_session_timeout = 0")
        except psycopg.Error:
            pass
        run(conn, "SELECT pg_advisory_lock(%s)", (KEY,))
        _guards[key] = conn
    _terminate_as_interrupt()


def _terminate_as_interrupt() -> None:
    """SIGTERM and SIGHUP raise ``KeyboardInterrupt`` in the main thread (when nothing else handles
    them), so a terminated command runs its ``finally`` blocks and drops what it made."""
    global _signals_set
    if _signals_set or threading.current_thread() is not threading.main_thread():
        return
    _signals_set = True

    def interrupt(signum: int, _frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, interrupt)
        except (ValueError, OSError):  # not the main interpreter
            pass


@contextmanager
def creating(admin: psycopg.Connection[Any], open_server: Opener) -> Iterator[None]:
    """Around a ``CREATE DATABASE``/``CREATE ROLE`` and its :func:`claim` on ``admin`` (an
    autocommit connection to the server's ``postgres`` database; ``open_server`` opens another):
    this process's guard held, stale objects removed, :data:`MUTEX` held shared so no removal
    judges the new object before it is claimed."""
    _guard(admin, open_server)
    try:
        remove_stale(admin)
    except psycopg.Error as exc:  # best effort: never stops the command
        log.debug("recovery: could not look for stale objects: %s", exc)
    _wait_for(admin, "pg_try_advisory_lock_shared")
    try:
        yield
    finally:
        try:
            run(admin, "SELECT pg_advisory_unlock_shared(%s)", (MUTEX,))
        except psycopg.Error:  # a closed or broken session released it already
            pass


WAIT_SECONDS = 600.0
"""How long a creator (or ``clean-stale``) waits for :data:`MUTEX` (a removal dropping a large
stale database, or a creator copying a large one, holds it that long)."""


def _wait_for(admin: psycopg.Connection[Any], function: str) -> None:
    """Take :data:`MUTEX` with ``function`` (a ``pg_try_advisory_lock*``), polling: a plain
    lock wait would be cut by the connection's ``lock_timeout``."""
    deadline = time.monotonic() + WAIT_SECONDS
    query = f"SELECT {function}(%s)"
    while not run(admin, query, (MUTEX,)).fetchone()[0]:
        if time.monotonic() > deadline:
            from recovery.errors import RecoveryError

            raise RecoveryError(
                f"another recovery command kept the server's bookkeeping lock for {WAIT_SECONDS:g} s",
                "run the command again when the other one has finished",
            )
        time.sleep(0.1)


def claim_text(purpose: str) -> str:
    return json.dumps(
        {
            "recovery": 1,
            "lock": KEY,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "purpose": purpose,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        sort_keys=True,
    )


def claim(admin: psycopg.Connection[Any], kind: str, name: str, purpose: str) -> bool:
    """Mark the database or role ``name`` as this process's (``kind`` ``"database"``/``"role"``);
    False (and a warning) when this user may not comment on it: it is then never removed
    automatically."""

    what = "DATABASE" if kind == "database" else "ROLE"
    try:
        run(admin, f"COMMENT ON {what} {_ident(name)} IS {_literal(claim_text(purpose))}")
        return True
    except psycopg.Error as exc:
        log.warning(
            "recovery: cannot mark %s %s as this run's (%s): if the run is killed, drop it by hand",
            kind,
            name,
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
        )
        return False


_SURVEY_SQL = """
SELECT 'database', d.datname, pg_catalog.shobj_description(d.oid, 'pg_database')
FROM pg_catalog.pg_database AS d
WHERE d.datname LIKE 'recovery\\_scratch\\_%' OR d.datname LIKE 'recovery\\_staged\\_%'
   OR d.datname LIKE 'recovery\\_rehearsal\\_%'
UNION ALL
SELECT 'role', r.rolname, pg_catalog.shobj_description(r.oid, 'pg_authid')
FROM pg_catalog.pg_roles AS r WHERE r.rolname LIKE 'recovery\\_sandbox\\_%'
"""
_HELD_SQL = """
SELECT DISTINCT (l.classid::bigint << 32) | l.objid::bigint
FROM pg_catalog.pg_locks AS l WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
"""


def _parse_claim(comment: str | None, name: str = "") -> dict[str, Any]:
    """The claim in ``comment``, else the key in ``name`` (:func:`tag`), else ``{}``."""
    try:
        data = json.loads(comment or "")
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("recovery") != 1:
        m = _NAME_KEY.search(name)
        return {"recovery": 1, "lock": int(m.group(1), 16), "from": "name"} if m else {}
    if not isinstance(data.get("lock"), int) or isinstance(data.get("lock"), bool):
        return {}
    return data


def survey(admin: psycopg.Connection[Any]) -> list[Leftover]:
    """Every database and role with one of the tool's prefixes, and whether its owner lives."""

    held = {int(r[0]) for r in run(admin, _HELD_SQL).fetchall()}
    out = []
    for kind, name, comment in run(admin, _SURVEY_SQL).fetchall():
        got = _parse_claim(comment, str(name))
        state = "unclaimed" if not got else ("in use" if got["lock"] in held else "stale")
        out.append(Leftover(str(kind), str(name), state, got))
    return out


def remove_stale(
    admin: psycopg.Connection[Any], dry_run: bool = False, wait: bool = False
) -> CleanResult:
    """Drop every database, then every role, that :func:`survey` finds ``stale`` (never one in
    use or unclaimed), holding :data:`MUTEX` exclusively while it looks and drops. When another
    process holds it and ``wait`` is False, nothing is done (``skipped_busy``)."""

    if wait:
        _wait_for(admin, "pg_try_advisory_lock")
    elif not run(admin, "SELECT pg_try_advisory_lock(%s)", (MUTEX,)).fetchone()[0]:
        return CleanResult([], [], [], dry_run, skipped_busy=True)
    try:
        found = survey(admin)
        stale = [x for x in found if x.state == "stale"]
        kept = [x for x in found if x.state != "stale"]
        dropped: list[Leftover] = []
        failed: list[tuple[Leftover, str]] = []
        for item in sorted(stale, key=lambda x: x.kind != "database"):
            if dry_run:
                dropped.append(item)
                continue
            try:
                if item.kind == "database":
                    run(admin, f"DROP DATABASE IF EXISTS {_ident(item.name)} WITH (FORCE)")
                else:
                    run(admin, f"DROP ROLE IF EXISTS {_ident(item.name)}")
                dropped.append(item)
                log.info("recovery: dropped %s", item.describe())
            except psycopg.Error as exc:
                failed.append((item, str(exc).strip().splitlines()[0] if str(exc).strip() else ""))
        return CleanResult(dropped, kept, failed, dry_run)
    finally:
        run(admin, "SELECT pg_advisory_unlock(%s)", (MUTEX,))


def kill_point(point: str) -> None:
    """Test-only: signal this process when ``RECOVERY_TEST_KILL_AT_STEP`` names ``point`` (the
    rollback journal's variable), e.g. ``scratch:backup`` right after that scratch database is
    made and claimed; SIGKILL, or the signal ``RECOVERY_TEST_KILL_SIGNAL`` names (``TERM``)."""
    if os.environ.get("RECOVERY_TEST_KILL_AT_STEP") == point:
        name = os.environ.get("RECOVERY_TEST_KILL_SIGNAL", "KILL")
        os.kill(os.getpid(), getattr(signal, f"SIG{name}", signal.SIGKILL))
        time.sleep(5)  # the signal arrives; a handled one raises here
