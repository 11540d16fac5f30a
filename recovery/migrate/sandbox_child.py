"""The child process that runs the application's Alembic code for :mod:`recovery.migrate.sandbox`.

Started as ``python -m recovery.migrate.sandbox_child INIT.json REQ_FD RESP_FD`` and never imported for
its side effects: :func:`main` installs the guard before SQLAlchemy, Alembic or any application
module is imported, then answers one JSON request per line on ``REQ_FD`` with one JSON line on
``RESP_FD`` (no pickle). The application's own prints and logging go to the child's stdout and
stderr, which the parent sends to a log file.

The guard (:class:`Guard`) is a :func:`sys.addaudithook` hook, which cannot be removed once
installed, plus a wrapper around SQLAlchemy's ``create_engine``:

* ``sqlite3.connect`` (and so SQLAlchemy's pysqlite and aiosqlite) is refused for any database
  but the scratch file and ``:memory:``; every connection made through ``sqlite3.connect`` gets
  an authorizer that refuses ``ATTACH`` of any other file; loading SQLite extensions is refused;
* ``create_engine`` refuses any URL but the scratch one (so server databases are refused before
  a driver is loaded), and importing a database driver other than sqlite3 is refused;
* opening, renaming, removing, linking, truncating or re-timing a protected file (the live DB,
  the backup, their ``-wal``/``-journal``/``-shm``) is refused, whatever the path's spelling
  (resolved path and inode are compared);
* starting a program and opening a network socket are refused (neither is guarded).

On a PostgreSQL scratch database (``init["server"]``: its database and role) the driver psycopg
may be imported, and ``create_engine`` and ``psycopg.connect`` are refused for any database or
user but the scratch database and the run's role (which the server itself lets connect nowhere
else: :mod:`recovery.migrate.pgsandbox`).

Every refusal is recorded and reported with the command's answer, even when the application's
code catches the exception.

After a job the parent may park the child (``{"op": "park"}``: it ends by itself when no request
comes within the linger time) and hand it the next job (``{"op": "rebind"}``, :func:`_rebind`:
that job's scratch file, protected files, ini copy, environment, ``sys.path`` and working folder),
which it refuses while the previous job left a thread running or a descriptor on its scratch.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import Any

DRIVER_MODULES = frozenset(
    {
        "psycopg",
        "psycopg2",
        "psycopg2cffi",
        "psycopg_binary",
        "asyncpg",
        "pg8000",
        "pymysql",
        "MySQLdb",
        "mysql",
        "mysqlx",
        "aiomysql",
        "asyncmy",
        "mariadb",
        "cx_Oracle",
        "oracledb",
        "pyodbc",
        "pymssql",
        "aioodbc",
        "apsw",
        "sqlcipher3",
        "pysqlcipher3",
        "duckdb",
        "ibm_db",
        "fdb",
        "firebird",
        "sqlanydb",
        "snowflake",
        "clickhouse_driver",
        "clickhouse_connect",
        "teradatasql",
        "trino",
        "pyhive",
        "databricks",
    }
)
"""Top-level modules of database drivers other than the standard library's sqlite3."""
PG_DRIVER_MODULES = frozenset({"psycopg", "psycopg_binary", "psycopg_c", "psycopg_pool"})
"""The driver a PostgreSQL scratch database is reached with (only then importable)."""
_PSYCOPG_ARGS = frozenset(
    {"autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"}
)
"""Keywords of ``psycopg.connect`` that are not libpq connection parameters."""

PATH_EVENTS = frozenset(
    {
        "os.remove",
        "os.rename",
        "os.link",
        "os.symlink",
        "os.truncate",
        "os.chmod",
        "os.chown",
        "os.utime",
        "os.rmdir",
        "os.mkdir",
        "shutil.copyfile",
        "shutil.copymode",
        "shutil.copystat",
        "shutil.move",
        "shutil.rmtree",
        "shutil.copytree",
        "os.listxattr",
        "os.setxattr",
        "os.removexattr",
    }
)
"""Audit events whose path arguments must not name a protected file."""

PROCESS_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.startfile",
        "pty.spawn",
    }
)


class SandboxRefused(PermissionError):
    """The application's code tried something the sandbox does not allow."""


class SandboxImportRefused(ImportError):
    """Importing a database driver: an ImportError, so ``try: import psycopg`` falls back cleanly."""


def is_bookkeeping_sql(statement: str) -> bool:
    """Statements that read (PRAGMA, SELECT) or only move ``alembic_version``: not schema or data."""
    head = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
    return head in {"PRAGMA", "SELECT", "WITH"} or "alembic_version" in statement


class Guard:
    """Decides what the application's code may open; records every refusal."""

    def __init__(
        self, scratch: str, protected: list[str], server: dict[str, str] | None = None
    ) -> None:
        self.server = server
        """{"database", "user"} of a PostgreSQL scratch database, None for a SQLite scratch."""
        self.traced: list[str] = []
        """While ``tracing``: every statement SQLite ran on a connection of this process."""
        self.tracing = False
        self.scratch = os.path.realpath(scratch)
        self.protected = {os.path.realpath(p) for p in protected}
        self.protected_ids: set[tuple[int, int]] = set()
        for p in self.protected:
            try:
                st = os.stat(p)
            except OSError:
                continue
            self.protected_ids.add((st.st_dev, st.st_ino))
        self.refused: list[str] = []
        self._busy = False

    def rebind(self, scratch: str, protected: list[str]) -> None:
        """Guard another job's scratch file and protected files (a reused child,
        :func:`_rebind`): the previous scratch is from now on refused like any other file."""
        fresh = Guard(scratch, protected, self.server)
        self._busy = True
        try:
            self.scratch, self.protected = fresh.scratch, fresh.protected
            self.protected_ids = fresh.protected_ids
        finally:
            self._busy = False

    # -- decisions ---------------------------------------------------------------------------

    def _is_protected(self, path: Any) -> bool:
        if isinstance(path, int) or path is None:
            return False
        try:
            p = os.fsdecode(os.fspath(path))
        except TypeError:
            return False
        real = os.path.realpath(p)
        if real in self.protected:
            return True
        try:
            st = os.stat(real)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self.protected_ids

    def allowed_database(self, database: Any) -> bool:
        """The scratch file, an in-memory or a temporary database; nothing else."""
        if database is None:
            return True
        try:
            name = os.fsdecode(os.fspath(database))
        except TypeError:
            return False
        if name in ("", ":memory:"):
            return True
        if name.startswith("file:"):
            from urllib.parse import parse_qs, unquote, urlsplit

            parts = urlsplit(name)
            if "memory" in parse_qs(parts.query).get("mode", []):
                return True
            name = unquote(parts.path)
            if name in ("", ":memory:"):
                return True
        real = os.path.realpath(name)
        if real != self.scratch or self._is_protected(real):
            return False
        return True

    def allowed_server(self, database: Any, user: Any) -> bool:
        """A PostgreSQL connection: only to the scratch database, only as the run's role."""
        return (
            self.server is not None
            and database == self.server["database"]
            and user == self.server["user"]
        )

    def refuse(self, what: str, exc: type[Exception] = SandboxRefused) -> None:
        self.refused.append(what)
        raise exc(f"refused by the recovery sandbox: {what}")

    # -- the audit hook ----------------------------------------------------------------------

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self._busy:
            return  # the guard's own os.stat / realpath calls
        if event == "sqlite3.connect":
            if not self.allowed_database(args[0] if args else None):
                self.refuse(
                    f"sqlite3.connect({os.fsdecode(os.fspath(args[0]))!r}): only the scratch copy "
                    f"{self.scratch} may be opened"
                )
        elif event in ("sqlite3.enable_load_extension", "sqlite3.load_extension"):
            if event == "sqlite3.load_extension" or (len(args) > 1 and args[1]):
                self.refuse("loading a SQLite extension")
        elif event == "open":
            self._busy = True
            try:
                hit = self._is_protected(args[0])
            finally:
                self._busy = False
            if hit:
                self.refuse(f"opening {args[0]!r}, a protected database file")
        elif event in PATH_EVENTS:
            self._busy = True
            try:
                path = next(
                    (
                        a
                        for a in args
                        if isinstance(a, (str, bytes, os.PathLike)) and self._is_protected(a)
                    ),
                    None,
                )
            finally:
                self._busy = False
            if path is not None:
                self.refuse(f"{event}({path!r}) on a protected database file")
        elif event in PROCESS_EVENTS:
            self.refuse(
                f"starting a program ({event} {args[0] if args else ''!r}): it would run unguarded"
            )
        elif event == "socket.connect":
            self.refuse(f"opening a network connection to {args[1] if len(args) > 1 else '?'!r}")
        elif event == "import":
            top = str(args[0]).split(".", 1)[0]
            if top in DRIVER_MODULES and not (self.server and top in PG_DRIVER_MODULES):
                self.refuse(
                    f"importing the database driver {args[0]!r}: only the scratch SQLite copy may be used",
                    SandboxImportRefused,
                )

    def patch_sqlite3(self) -> None:
        """Every connection made through ``sqlite3.connect`` (SQLAlchemy's pysqlite included) gets
        :meth:`_authorizer`, which refuses ``ATTACH`` of any file but the scratch copy."""
        import sqlite3
        import sqlite3.dbapi2

        original = sqlite3.connect
        authorizer = self._authorizer
        trace = self._trace

        def connect(*args: Any, **kwargs: Any) -> Any:
            conn = original(*args, **kwargs)
            conn.set_authorizer(authorizer)
            conn.set_trace_callback(trace)  # every statement, raw cursors' included
            return conn

        connect.__doc__ = original.__doc__
        sqlite3.connect = sqlite3.dbapi2.connect = connect

    def _trace(self, statement: str) -> None:
        if self.tracing:
            self.traced.append(statement)

    def _authorizer(self, action: int, arg1: Any, arg2: Any, dbname: Any, source: Any) -> int:
        import sqlite3

        if action == sqlite3.SQLITE_ATTACH and (arg1 is None or not self.allowed_database(arg1)):
            self.refused.append(
                f"ATTACH DATABASE {arg1 if arg1 is not None else '(a bound file name)'!r}: "
                "only the scratch copy may be opened"
            )
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    # -- SQLAlchemy ----------------------------------------------------------------------------

    def patch_sqlalchemy(self, engines: list[Any]) -> None:
        """Replace ``create_engine`` wherever SQLAlchemy (and anything already imported) exposes
        it, before env.py can import it: any URL but the scratch one is refused."""
        import sqlalchemy
        import sqlalchemy.engine
        import sqlalchemy.engine.create as create_mod
        from sqlalchemy.engine import make_url

        original = create_mod.create_engine
        guard = self

        def create_engine(url: Any, *args: Any, **kwargs: Any) -> Any:
            u = make_url(url)
            if guard.server is not None and u.drivername.startswith("postgresql"):
                if not guard.allowed_server(u.database, u.username):
                    guard.refuse(
                        f"create_engine({u.render_as_string(hide_password=True)!r}): only the "
                        f"scratch database {guard.server['database']!r} may be used"
                    )
                engine = original(url, *args, **kwargs)
                engines.append(engine)
                return engine
            if not u.drivername.startswith("sqlite"):
                guard.refuse(
                    f"create_engine({u.render_as_string(hide_password=True)!r}): only the scratch "
                    "SQLite copy may be used"
                )
            if not guard.allowed_database(u.database):
                guard.refuse(
                    f"create_engine({u.render_as_string(hide_password=True)!r}): only the scratch copy "
                    f"{guard.scratch} may be opened"
                )
            engine = original(url, *args, **kwargs)
            engines.append(engine)
            return engine

        create_engine.__doc__ = original.__doc__
        for mod in list(sys.modules.values()):
            if getattr(mod, "create_engine", None) is original:
                setattr(mod, "create_engine", create_engine)  # noqa: B010 - mypy types mod as a bare ModuleType
        assert (
            sqlalchemy.create_engine is create_engine
            and sqlalchemy.engine.create_engine is create_engine
        )

    def check_conninfo(self, conninfo: str, kwargs: dict[str, Any]) -> None:
        """Refuse a psycopg connection to any database or as any user but the scratch database
        and the run's role, whatever the connection string, keywords or ``PG*`` environment say;
        a service name (whose file could name any database) is refused too."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        libpq = {k: v for k, v in kwargs.items() if k not in _PSYCOPG_ARGS and v is not None}
        params = conninfo_to_dict(make_conninfo(conninfo, **libpq))
        database = params.get("dbname") or os.environ.get("PGDATABASE")
        user = params.get("user") or os.environ.get("PGUSER")
        database = database or user
        if params.get("service") or params.get("passfile"):
            self.refuse(
                "psycopg.connect with a service or password file: only the scratch database may be used"
            )
        if not self.allowed_server(database, user):
            self.refuse(
                f"psycopg.connect(dbname={database!r}, user={user!r}): only the scratch "
                f"database {self.server['database'] if self.server else '?'!r} may be used"
            )

    def patch_psycopg(self) -> None:
        """Wrap ``psycopg.connect`` and ``psycopg.AsyncConnection.connect`` (SQLAlchemy's psycopg
        dialects connect through them) with :meth:`check_conninfo`."""
        import psycopg

        sync_connect = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]
        async_connect = psycopg.AsyncConnection.connect.__func__  # type: ignore[attr-defined]
        guard = self

        def connect(cls: Any, conninfo: str = "", **kwargs: Any) -> Any:
            guard.check_conninfo(conninfo, kwargs)
            return sync_connect(cls, conninfo, **kwargs)

        async def aconnect(cls: Any, conninfo: str = "", **kwargs: Any) -> Any:
            guard.check_conninfo(conninfo, kwargs)
            return await async_connect(cls, conninfo, **kwargs)

        psycopg.Connection.connect = classmethod(connect)  # type: ignore[assignment,method-assign]
        psycopg.AsyncConnection.connect = classmethod(aconnect)  # type: ignore[assignment,method-assign]
        psycopg.connect = psycopg.Connection.connect


# ---------------------------------------------------------------------------------------------
# the command loop


def _run_migrate(
    req: dict[str, Any],
    init: dict[str, Any],
    captured: list[str],
    engines: list[Any],
    traced: list[str] | None = None,
) -> list[str]:
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    direction = req["direction"]
    if direction not in ("upgrade", "downgrade"):
        raise ValueError(direction)
    cfg = Config(init["ini"])
    cfg.set_main_option("sqlalchemy.url", init["url"].replace("%", "%%"))
    captured.clear()
    if traced is not None:
        traced.clear()
    engine = sa.create_engine(init["url"], poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if not init.get("server"):  # (a PostgreSQL scratch database has no PRAGMAs)
                conn.exec_driver_sql(
                    "PRAGMA foreign_keys=OFF"
                )  # a rebuild must never fire ON DELETE CASCADE
            if req.get("fast") and not init.get("server"):
                conn.exec_driver_sql(
                    "PRAGMA synchronous=OFF"
                )  # a scratch file: durability buys nothing
                # the rollback journal stays on disk: in memory it would hold every page a batch
                # rebuild frees and a later one reuses (about a table's size: GBs at 10M rows)
                conn.exec_driver_sql("PRAGMA journal_mode=TRUNCATE")
            conn.commit()
            cfg.attributes["connection"] = conn
            _allow_branching(conn)
            getattr(command, direction)(cfg, req["target"])
            conn.commit()
    finally:
        for e in [engine, *engines]:
            e.dispose()  # every connection closed: the parent may move the scratch file
        engines.clear()
    if req.get("reads") and traced is not None:
        return [*captured, *traced]  # SQLAlchemy's too: the app may replace the trace callback
    return [s for s in captured if not is_bookkeeping_sql(s)]


def _find_library_without_programs() -> None:
    """``ctypes.util.find_library`` starts ``ldconfig``, ``gcc`` and ``ld`` to find a shared library
    (JupyterHub's PAM module does it on import). The guard refuses every program, so look in the
    usual library folders instead: same answer for an installed library, no program started."""
    import ctypes.util
    import glob

    folders = (
        "/lib",
        "/usr/lib",
        "/lib64",
        "/usr/lib64",
        "/usr/local/lib",
        *glob.glob("/lib/*-linux-gnu"),
        *glob.glob("/usr/lib/*-linux-gnu"),
    )

    def find_library(name: str) -> str | None:
        for folder in folders:
            hits = sorted(
                glob.glob(os.path.join(glob.escape(folder), f"lib{glob.escape(name)}.so*"))
            )
            if hits:
                return os.path.basename(hits[0])
        return None

    ctypes.util.find_library = find_library


def _allow_branching(conn: Any) -> None:
    """Many env.py files written for SQLAlchemy 1.x (JupyterHub's among them) take the passed
    connection as a "connectable" and call ``connectable.connect()`` — a branch of the same
    connection in 1.x, an AttributeError in 2.x. Give the passed connection that 1.x behaviour:
    ``connect()`` hands back the same connection, and leaving its ``with`` block closes nothing."""
    import contextlib

    if not hasattr(conn, "connect"):
        try:
            conn.connect = lambda: contextlib.nullcontext(conn)
        except (
            AttributeError
        ):  # a connection class with slots: such an env.py fails as it would unguarded
            pass


def _answer(fd: int, payload: dict[str, Any]) -> None:
    data = (json.dumps(payload, default=str) + "\n").encode("utf-8")
    while data:
        data = data[os.write(fd, data) :]


_LINGER: list[float] = []
"""While parked (:func:`_park`): how long to wait for the next request before ending."""


def _requests(fd: int):  # a generator of dicts
    buf = b""
    while True:
        if _LINGER and b"\n" not in buf:
            import select

            ready, _, _ = select.select([fd], [], [], _LINGER[0])
            if not ready:
                return  # parked and never adopted: end as after an exit request
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line)


def _die_with_parent() -> None:
    """Linux: the kernel kills this child when the tool dies (a SIGKILLed rollback must not leave
    the app's migration running on a staged copy the resumed run re-creates)."""
    parent = int(os.environ.get("RECOVERY_SANDBOX_PARENT", "0"))
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


_SCRATCH: list[str] = []
"""The SQLite scratch file this child migrates (empty for a PostgreSQL scratch database)."""


def _holding(paths: set[str]) -> list[str]:
    """Which of ``paths`` a descriptor of this process still has open (Linux: ``/proc/self/fd``);
    raises OSError where that cannot be read."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        target = target.removesuffix(" (deleted)")
        if target in paths:
            held.append(target)
    return held


def _idle(init: dict[str, Any]) -> str | None:
    """None when nothing of the previous job can still act: one thread, no timer (cancelled
    here), no descriptor on its scratch file or journal; else what is left."""
    import signal

    for timer in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
        signal.setitimer(timer, 0)
    try:
        threads = len(os.listdir("/proc/self/task"))
        old = os.path.realpath(init["scratch"])
        held = _holding({old, *(old + s for s in ("-journal", "-wal", "-shm"))})
    except OSError as exc:
        return f"cannot see this process's threads and files: {exc}"
    if threads != 1:
        return f"the previous job left {threads - 1} thread(s) running"
    if held:
        return f"the previous job left {held[0]} open"
    return None


def _rebind(req: dict[str, Any], init: dict[str, Any], guard: Guard) -> str | None:
    """Take another job (:meth:`recovery.migrate.sandbox.Sandbox` reuses a parked child): its
    scratch file, protected files, ini copy, environment, ``sys.path`` and working folder, as a
    new child would start with them. Refused (the reason returned, nothing changed) unless the
    previous job left nothing running or open: a second thread, or a descriptor on the previous
    scratch file or its journal (a connection the app's code kept) could act on the previous
    job's file in this one. The app's modules stay imported: an engine one of them made stays
    bound to the previous scratch URL, which the guard now refuses (the parent then replays the
    job in a new child)."""
    if init.get("server") or req.get("server"):
        return "a PostgreSQL scratch database is never handed on"
    why = _idle(init)
    if why is not None:
        return why
    guard.rebind(req["scratch"], req["protected"])
    for key in ("scratch", "url", "ini", "protected"):
        init[key] = req[key]
    _SCRATCH[:] = [req["scratch"]]
    os.environ.clear()
    os.environ.update(req["env"])
    sys.path[:] = [p for p in req["sys_path"] if p]
    os.chdir(req["cwd"])
    _LINGER.clear()
    return None


def main(argv: list[str]) -> int:
    gc.disable()  # importing SQLAlchemy and Alembic makes no garbage worth the collections
    _die_with_parent()
    with open(argv[0], encoding="utf-8") as fh:
        init = json.load(fh)
    req_fd, resp_fd = int(argv[1]), int(argv[2])
    if not init.get("server"):
        _SCRATCH[:] = [init["scratch"]]  # (for :func:`_leave`)
    guard = Guard(init["scratch"], init["protected"], init.get("server"))
    sys.addaudithook(guard.hook)  # first: nothing of the application has been imported yet
    guard.patch_sqlite3()
    _find_library_without_programs()
    sys.path[:] = [p for p in init["sys_path"] if p]
    engines: list[Any] = []
    guard.patch_sqlalchemy(engines)
    if guard.server is not None:
        guard.patch_psycopg()
    import sqlalchemy as sa

    captured: list[str] = []

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def _capture(conn, cursor, statement, parameters, context, executemany):
        captured.append(statement)  # every engine, the application's own included

    import alembic.command  # noqa: F401 - loaded once, before the first request

    gc.freeze()  # our modules' objects, never garbage: no collection walks them again
    gc.enable()  # before any of the application's code runs

    for req in _requests(req_fd):
        if req.get("op") == "exit":
            break
        if req.get("op") == "park":  # idle until adopted, at most this long
            why = "a PostgreSQL scratch database is never handed on" if init.get("server") else None
            why = why or _idle(init)
            if why is None:
                _LINGER[:] = [float(req.get("linger") or 60.0)]
            _answer(resp_fd, {"ok": why is None, "error": why})
            if why is not None:
                break  # not reusable: end now (nothing of the app runs on unwatched)
            continue
        if req.get("op") == "rebind":
            why = _rebind(req, init, guard)
            _answer(resp_fd, {"ok": why is None, "error": why})
            if why is not None:
                break  # not reusable: end (the parent starts a new child)
            continue
        guard.refused.clear()
        try:
            if req.get("op") != "migrate":
                raise ValueError(f"unknown request {req.get('op')!r}")
            guard.tracing = bool(req.get("reads"))
            statements = _run_migrate(req, init, captured, engines, guard.traced)
            guard.tracing = False
            _answer(resp_fd, {"ok": True, "statements": statements, "refused": list(guard.refused)})
        except BaseException as exc:  # the application's failure is the answer
            if isinstance(exc, KeyboardInterrupt):
                raise
            _answer(
                resp_fd,
                {
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}".strip(),
                    "error_type": type(exc).__name__,
                    "refused": list(guard.refused),
                },
            )
    return 0


def _leave(code: int, scratch: str | None) -> None:
    """End the child. Every connection of ours is closed after each request, so the
    interpreter's teardown (a tenth of a second with SQLAlchemy, Alembic and the app's modules
    loaded) only delays the parent, which waits for this exit before it reads the copy: skip it
    (``os._exit`` after flushing the output and the logging handlers) — unless a SQLite scratch
    file still has a non-empty rollback journal or a WAL, i.e. the app's code may have left a
    connection open on it: then the teardown closes that connection as it always did."""
    if scratch is not None and any(
        os.path.exists(scratch + s) and (s == "-wal" or os.path.getsize(scratch + s) > 0)
        for s in ("-journal", "-wal")
    ):
        sys.exit(code)
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    _code = main(sys.argv[1:])
    _leave(_code, _SCRATCH[0] if _SCRATCH else None)
