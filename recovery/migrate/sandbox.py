"""Run the application's Alembic migration code in a child process that cannot reach the real
databases.

Real ``env.py`` files ignore the connection a program passes in ``config.attributes`` and open
``sqlalchemy.url`` from the ini, ``DATABASE_URL`` or the app's settings. So the tool never runs
them in its own process; a :class:`Sandbox` session starts ``python -m recovery.migrate.sandbox_child``
(see there for the guard installed before any application code) with

* a temporary copy of the app's ``alembic.ini`` whose ``sqlalchemy.url`` (in every section) is
  the scratch file, with ``%(here)s`` and relative script paths pinned to the original folder;
* ``DATABASE_URL``, ``SQLALCHEMY_DATABASE_URI``, ``SQLALCHEMY_DATABASE_URL``, ``DB_URL`` and every
  other environment variable whose value is a database URL or a path to a protected file set to
  the scratch file;
* a private temporary folder as its working directory (a relative ``sqlite:///app.db`` names a
  file there, which the guard refuses);
* a time bound per command (:data:`TIMEOUT_ENV`, default :data:`DEFAULT_TIMEOUT` seconds).

The live DB, the backup and every SQLite file a URL in the ini or the environment names are
fingerprinted (size, mtime, inode, sha256 of the first pages, the same for ``-wal`` and
``-journal``) before the session and after every command; any change stops the run with
:class:`ProtectedChanged` (exit 3), which says what changed and that the migration code did it.

One child may serve two jobs: the lineage's downgrades (``Sandbox(keep=True)`` parks it) and then
the upgrade replay (``Sandbox(adopt=True)`` hands it the new job's files and environment): one
interpreter importing SQLAlchemy, Alembic and the app's modules once. A job that fails or is
refused something in a reused child raises :class:`ReusedChildFailed` and is run again in a new
child by the caller.
"""

from __future__ import annotations

import atexit
import configparser
import hashlib
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recovery.errors import ExitCode, RecoveryError

DEFAULT_TIMEOUT = 600.0
"""Seconds one sandboxed Alembic command may run before the child is killed."""
TIMEOUT_ENV = "RECOVERY_SANDBOX_TIMEOUT"
URL_VARS = ("DATABASE_URL", "SQLALCHEMY_DATABASE_URI", "SQLALCHEMY_DATABASE_URL", "DB_URL")
"""Always set to the scratch URL in the child, present in the tool's environment or not."""
HEADER_BYTES = 64 * 1024
"""How much of each protected file is hashed (the header and first pages): the rest of a change
shows in size, mtime or the ``-wal``."""
_DB_SCHEMES = re.compile(
    r"^(sqlite|postgres|postgresql|pgsql|mysql|mariadb|oracle|mssql|sqlserver|cockroachdb|"
    r"redshift|snowflake|duckdb|firebird|sybase|db2|ibm_db_sa|trino|clickhouse)"
    r"([+][A-Za-z0-9_]+)?://",
    re.IGNORECASE,
)
_SIDECARS = ("-wal", "-journal")
_PATH_KEYS = ("script_location", "version_locations", "prepend_sys_path")

log = logging.getLogger(__name__)


class ProtectedChanged(RecoveryError):
    """A protected database file changed while the application's migration code ran."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message, hint, ExitCode.FAILED)


class MigrationFailed(RecoveryError):
    """The application's own migration code raised (or was refused by the guard) in the child."""

    def __init__(self, direction: str, target: str, error: str, refused: list[str]) -> None:
        self.direction, self.target, self.error, self.refused = direction, target, error, refused
        why = error + refusal_note(error, refused)
        super().__init__(
            f"{direction} to {target} failed: {why}", "fix the migration", ExitCode.FAILED
        )


class ReusedChildFailed(MigrationFailed):
    """A job failed, or was refused something, in a child that had run another job first: it may
    be the previous job's state (an engine the app's module made for the previous scratch URL),
    so the caller runs it again on a fresh copy; the :class:`Sandbox` starts a new child for
    that."""


def refusal_note(error: str, refused: list[str]) -> str:
    """`` (the sandbox refused: …)`` for the refusals the error text does not already say."""
    extra = [r for r in refused if r not in error]
    return f" (the sandbox refused: {'; '.join(extra)})" if extra else ""


# ---------------------------------------------------------------------------------------------
# fingerprints


def _file_print(path: Path) -> dict[str, Any] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(HEADER_BYTES))
    # not ctime: SQLite running as root fchown()s a -wal it merely opens to read
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "inode": st.st_ino,
        "sha256_head": h.hexdigest(),
    }


def fingerprint(path: Path) -> dict[str, Any]:
    """The file's and its ``-wal``/``-journal``'s size, mtime, inode and sha256 of the first
    :data:`HEADER_BYTES` (``None`` for a file that does not exist)."""
    return {
        "db": _file_print(path),
        **{s.lstrip("-"): _file_print(path.with_name(path.name + s)) for s in _SIDECARS},
    }


def _describe_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    out = []
    for part in ("db", *(s.lstrip("-") for s in _SIDECARS)):
        b, a = before.get(part), after.get(part)
        label = "the file" if part == "db" else f"its -{part}"
        if b == a:
            continue
        if b is None:
            out.append(f"{label} was created")
        elif a is None:
            out.append(f"{label} was removed")
        else:
            out.append(f"{label}'s " + ", ".join(k for k in b if b[k] != a.get(k)) + " changed")
    return "; ".join(out)


# ---------------------------------------------------------------------------------------------
# where the real databases are


def sqlite_path_of(url: str, base: Path) -> Path | None:
    """The file a ``sqlite://`` URL names (relative to ``base``), None for anything else."""
    m = re.match(r"^sqlite(\+[A-Za-z0-9_]+)?:///(.*)$", url.strip())
    if m is None:
        return None
    rest = m.group(2).split("?", 1)[0]
    if rest in ("", ":memory:"):
        return None
    p = Path(rest)
    return (p if p.is_absolute() else base / p).resolve()


def _raw_ini(ini: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read(ini, encoding="utf-8")
    return parser


def _here(value: str, ini: Path) -> str:
    return value.replace("%(here)s", str(ini.resolve().parent)).replace("%%", "%")


def named_databases(alembic_ini: Path | None, environ: dict[str, str] | None = None) -> list[Path]:
    """SQLite files the application's migration code would open by itself: every section's
    ``sqlalchemy.url`` in the ini, and every environment variable holding a ``sqlite://`` URL.
    Relative paths are taken from the tool's working directory, as the app's own Alembic would."""
    environ = dict(os.environ) if environ is None else environ
    out: list[Path] = []
    cwd = Path.cwd()
    if alembic_ini is not None and Path(alembic_ini).is_file():
        parser = _raw_ini(Path(alembic_ini))
        for section in parser.sections():
            if parser.has_option(section, "sqlalchemy.url"):
                p = sqlite_path_of(
                    _here(parser.get(section, "sqlalchemy.url"), Path(alembic_ini)), cwd
                )
                if p is not None:
                    out.append(p)
    for value in environ.values():
        p = sqlite_path_of(value, cwd) if _DB_SCHEMES.match(value.strip()) else None
        if p is not None:
            out.append(p)
    return out


PG_ENV_VARS = (
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGAPPNAME",
    "PGSYSCONFDIR",
)
"""libpq's environment: the child gets none of the tool's (no password of a real database
reaches it); on a PostgreSQL scratch, the run role's connection to it."""


def child_environment(
    scratch: Path,
    protected: list[Path],
    environ: dict[str, str] | None = None,
    server_url: str | None = None,
) -> dict[str, str]:
    """The tool's environment with every usual carrier of a database URL pointing at ``scratch``
    (``server_url``: a PostgreSQL scratch database, whose role's password only it carries)."""
    env = dict(os.environ) if environ is None else dict(environ)
    url = server_url or f"sqlite:///{scratch}"
    for key in PG_ENV_VARS:
        env.pop(key, None)
    env["PGPASSFILE"] = os.devnull
    env["PGSERVICEFILE"] = os.devnull
    env["PGSYSCONFDIR"] = os.devnull  # (no pg_service.conf of the system's either)
    if server_url is not None:
        from sqlalchemy.engine import make_url

        u = make_url(server_url)
        for key, value in (
            ("PGHOST", u.host),
            ("PGPORT", u.port),
            ("PGDATABASE", u.database),
            ("PGUSER", u.username),
            ("PGPASSWORD", u.password),
        ):
            if value is not None:
                env[key] = str(value)
    real = {os.path.realpath(p) for p in protected}
    real |= {r + s for r in list(real) for s in (*_SIDECARS, "-shm")}
    for key, value in list(env.items()):
        v = value.strip()
        if _DB_SCHEMES.match(v):
            env[key] = url
        elif (
            v
            and len(v) < 4096
            and "\n" not in v
            and os.path.realpath(os.path.expanduser(v)) in real
        ):
            env[key] = str(scratch)
    for key in URL_VARS:
        env[key] = url
    env["RECOVERY_SANDBOX"] = "1"
    env["RECOVERY_SANDBOX_PARENT"] = str(os.getpid())
    env.pop("PYTHONSTARTUP", None)
    return env


def _pin_paths(value: str, base: Path) -> str:
    """Relative entries of a path list made absolute against ``base`` (package specs
    ``pkg:path`` are left alone); separators kept as written."""
    parts = re.split(r"([\s,;" + re.escape(os.pathsep) + r"]+)", value)
    out = []
    for p in parts:
        if (
            not p
            or re.fullmatch(r"[\s,;" + re.escape(os.pathsep) + r"]+", p)
            or ":" in p
            or os.path.isabs(p)
        ):
            out.append(p)
        else:
            out.append(str((base / p).resolve()))
    return "".join(out)


def write_ini_copy(alembic_ini: Path, dst: Path, url: str) -> Path:
    """A copy of the app's ini that runs the same scripts against ``url``: every section's
    ``sqlalchemy.url`` replaced, ``%(here)s`` and relative script paths pinned to the original
    folder / the tool's working directory (Alembic reads them relative to the current directory)."""
    parser = _raw_ini(alembic_ini)
    here = str(alembic_ini.resolve().parent).replace("%", "%%")
    cwd = Path.cwd()
    for section in parser.sections():
        for key, value in parser.items(section):
            pinned = value.replace("%(here)s", here)
            if key in _PATH_KEYS and "%(" not in pinned:
                pinned = _pin_paths(pinned, cwd)
            parser.set(section, key, pinned)
        if parser.has_option(section, "sqlalchemy.url"):
            parser.set(section, "sqlalchemy.url", url.replace("%", "%%"))
    if not parser.has_section("alembic"):
        parser.add_section("alembic")
    parser.set("alembic", "sqlalchemy.url", url.replace("%", "%%"))
    with open(dst, "w", encoding="utf-8") as fh:
        parser.write(fh)
    return dst


# ---------------------------------------------------------------------------------------------
# the session

_ALSO_PROTECTED: ContextVar[tuple[Path, ...]] = ContextVar(
    "recovery_sandbox_also_protected", default=()
)


@contextmanager
def protecting(*paths: str | os.PathLike[str]) -> Iterator[None]:
    """Every :class:`Sandbox` started inside this block also fingerprints ``paths`` (e.g. the real
    live DB and backup while a rehearsal rolls back copies of them)."""
    token = _ALSO_PROTECTED.set(_ALSO_PROTECTED.get() + tuple(Path(p) for p in paths))
    try:
        yield
    finally:
        _ALSO_PROTECTED.reset(token)


LINGER = 300.0
"""Seconds a parked child (:attr:`Sandbox.keep`) waits to be adopted before it ends by itself."""


@dataclass
class _Parked:
    """A child parked by a :attr:`Sandbox.keep` sandbox: its process, pipes and private folder."""

    key: str
    proc: subprocess.Popen[bytes]
    fds: tuple[int, int]
    folder: Path
    protected: frozenset[Path]
    """What its job protected: it is handed on only to a job that protects all of it too."""
    ran: bool = True
    """It ran a command (False: started by :func:`prestart`, no application code ran in it yet,
    so the job that adopts it is its first)."""

    def close(self) -> None:
        try:
            os.write(self.fds[0], b'{"op": "exit"}\n')
        except OSError:
            pass
        for fd in self.fds:
            os.close(fd)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class _Spares:
    """The one parked child of this process, and how many keeping sandboxes of each ini still
    run (an adopting sandbox started meanwhile waits for their child rather than start one)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.parked: _Parked | None = None
        self.keeping: dict[str, int] = {}
        self.prestarting: dict[str, threading.Event] = {}
        """A :func:`prestart` child of each ini still starting; set when it is parked or gone."""
        self._spawner: Any = None

    def keep(self, key: str, delta: int) -> None:
        with self.lock:
            self.keeping[key] = self.keeping.get(key, 0) + delta

    def park(self, parked: _Parked, key: str) -> None:
        """Park ``parked`` (ending the one parked before) and count its keeper as ended."""
        with self.lock:
            older, self.parked = self.parked, parked
            self.keeping[key] = self.keeping.get(key, 0) - 1
        if older is not None:
            older.close()

    def take(self, key: str, keeper: bool = False) -> tuple[_Parked | None, bool]:
        """The parked child for ``key`` (None if there is none), and whether a keeper of ``key``
        still runs. A child that ran nothing yet (:func:`prestart`) goes only to a ``keeper``
        (the lineage, first on the critical path): the replay waits for the lineage's child."""
        with self.lock:
            parked = self.parked
            if parked is not None and parked.key == key and (parked.ran or keeper):
                self.parked = None
                return parked, False
            return None, self.keeping.get(key, 0) > 0

    def close(self) -> None:
        """End the parked child, if any (at exit; a run that failed before adopting it)."""
        with self.lock:
            parked, self.parked = self.parked, None
        if parked is not None:
            parked.close()

    def spawn(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen`` from a thread that lives as long as this process: the child's
        parent-death signal (``PR_SET_PDEATHSIG``) is sent when the THREAD that started it ends,
        and a parked child outlives the job's thread."""
        from concurrent.futures import ThreadPoolExecutor

        with self.lock:
            if self._spawner is None:
                self._spawner = ThreadPoolExecutor(1, thread_name_prefix="recovery-sandbox-start")
            spawner = self._spawner
        proc: subprocess.Popen[bytes] = spawner.submit(subprocess.Popen, *args, **kwargs).result()
        return proc


_SPARES = _Spares()
atexit.register(_SPARES.close)


@contextmanager
def keeping(alembic_ini: str | os.PathLike[str]) -> Iterator[None]:
    """A :attr:`Sandbox.keep` sandbox of ``alembic_ini`` is to come in this block (the lineage
    reads the schemas first): an :attr:`Sandbox.adopt` sandbox started meanwhile waits for its
    child instead of starting one."""
    key = _key(Path(alembic_ini))
    _SPARES.keep(key, +1)
    try:
        yield
    finally:
        _SPARES.keep(key, -1)


PRESTART_WAIT = 10.0
"""Seconds a sandbox that needs a child waits for a :func:`prestart` child still starting (it
started earlier than a new one would, so waiting is never slower) before it starts its own."""


def prestart(alembic_ini: str | os.PathLike[str]) -> int | None:
    """Start a sandbox child for ``alembic_ini`` now, on the caller's thread, and park it unused
    on another once it answers (its imports done): the next
    :attr:`Sandbox.adopt` sandbox of that ini (the rollback's lineage) takes it with its
    interpreter, SQLAlchemy and Alembic already loaded, as its FIRST job (``_Parked.ran`` False:
    none of the application's code has run in it, so it can be parked again for the replay).

    Its own job protects only the databases the ini names; the fingerprints a job's commands are
    checked against are the adopting job's, taken by that job (under the rollback's write lock).
    Anything that goes wrong (no ini, a protected file that changed while the child started)
    only ends it: the adopting sandbox then starts its own child. Returns the child's process
    id (None: none was started)."""
    key = _key(Path(alembic_ini))
    with _SPARES.lock:
        if key in _SPARES.prestarting:
            return None
        done = _SPARES.prestarting[key] = threading.Event()

    folder = Path(tempfile.mkdtemp(prefix="recovery-prestart-"))
    sb = Sandbox(Path(alembic_ini), folder / "unused.db", keep=True)

    def ended() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        with _SPARES.lock:
            _SPARES.prestarting.pop(key, None)
        done.set()

    try:  # the child is started HERE, before the caller opens the live DB: a child between its
        # fork and its exec holds the parent's descriptors, and a holder check would see it
        sb.__enter__()
    except Exception as exc:  # noqa: BLE001 - only a head start is lost
        log.debug("recovery: no sandbox child started ahead: %s", exc)
        ended()
        return None
    pid = sb.pid

    def park() -> None:
        try:
            sb.__exit__(None, None, None)  # parked once the child answers (its imports done)
        except Exception as exc:  # noqa: BLE001 - only a head start is lost
            log.debug("recovery: the sandbox child started ahead is not kept: %s", exc)
        finally:
            ended()

    threading.Thread(target=park, name="recovery-sandbox-prestart", daemon=True).start()
    return pid


def _prestarted(key: str) -> None:
    """Wait (at most :data:`PRESTART_WAIT` seconds) for a :func:`prestart` child of ``key``
    still starting."""
    with _SPARES.lock:
        starting = _SPARES.prestarting.get(key)
    if starting is not None:
        starting.wait(PRESTART_WAIT)


def release_spare(prestarted: str | os.PathLike[str] | None = None) -> None:
    """End the child a :attr:`Sandbox.keep` sandbox parked, if nobody adopted it; with
    ``prestarted`` (an ini given to :func:`prestart`) after that child, if still starting, is
    parked or gone."""
    if prestarted is not None:
        _prestarted(_key(Path(prestarted)))
    _SPARES.close()


def parked_child() -> subprocess.Popen[bytes] | None:
    """The child a :attr:`Sandbox.keep` sandbox parked and nobody adopted yet (None: none)."""
    parked = _SPARES.parked
    return parked.proc if parked is not None else None


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


@dataclass
class Sandbox:
    """One child process running the app's Alembic commands on the one file ``scratch``.

    ``protect``: files that must not change (the live DB, the backup…); the SQLite files named by
    the ini and the environment are added. Use as a context manager; each :meth:`migrate` runs one
    Alembic command in the child and checks the fingerprints after it."""

    alembic_ini: Path
    scratch: Path
    protect: list[Path] = field(default_factory=list)
    timeout: float = field(default_factory=_timeout)
    server_url: str | None = None
    """A PostgreSQL scratch database (a URL with the run role's password) instead of the file
    ``scratch``: the child may reach it, as that role, and nothing else
    (:mod:`recovery.migrate.pgsandbox` makes both)."""
    keep: bool = False
    """After a job whose every command succeeded with nothing refused, park the child for the
    next :attr:`adopt` sandbox of the same ini (ended after :data:`LINGER` seconds unadopted)
    instead of ending it: the lineage's downgrades and then the replay's upgrade run in one
    interpreter that imports SQLAlchemy, Alembic and the app's modules once. SQLite only."""
    adopt: bool = False
    """Take over the parked child (:attr:`keep`) instead of starting one — or, while a keeping
    sandbox of the same ini still runs, at the first command. The child is handed this job's
    scratch file, protected files, ini copy, environment and working folder, and refuses to
    take it while the previous job left a thread running or a descriptor on its scratch file.
    A command that fails or is refused something there raises :class:`ReusedChildFailed` and
    the next command runs in a new child. SQLite only."""
    refused: list[str] = field(default_factory=list, init=False)
    """What the guard refused during the last command (also printed on stderr)."""
    _clean: bool = field(default=True, init=False, repr=False)
    _ran: bool = field(default=False, init=False, repr=False)
    _reused: bool = field(default=False, init=False, repr=False)
    _pending: bool = field(default=False, init=False, repr=False)
    """No child yet: one is adopted or started at the first command."""
    _kept: str | None = field(default=None, init=False, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _dir: Path | None = field(default=None, init=False, repr=False)
    _prints: dict[Path, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    _fds: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _buf: bytes = field(default=b"", init=False, repr=False)

    def __enter__(self) -> Sandbox:
        ini = Path(self.alembic_ini)
        if not ini.is_file():
            raise RecoveryError(
                f"--alembic-ini {ini} does not exist", "point it at the application's alembic.ini"
            )
        self.scratch = Path(os.path.abspath(self.scratch))
        seen: dict[str, Path] = {}
        for p in [*self.protect, *_ALSO_PROTECTED.get(), *named_databases(ini)]:
            real = os.path.realpath(p)
            if real != os.path.realpath(self.scratch):
                seen.setdefault(real, Path(real))
        self._prints = {p: fingerprint(p) for p in seen.values()}
        self._dir = Path(tempfile.mkdtemp(prefix="recovery-sandbox-"))
        sqlite = self.server_url is None
        try:
            if self.keep and sqlite:
                self._kept = _key(ini)
                _SPARES.keep(self._kept, +1)
            if not (self.adopt and sqlite and self._take(wait=True)):
                self._start(ini)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self._parkable():
            try:
                self.check_protected()
            except BaseException:
                self.close()
                raise
            self._park()
            return
        self.close()
        if exc[0] is None or not isinstance(exc[1], ProtectedChanged):
            self.check_protected()

    @property
    def pid(self) -> int | None:
        """The child's process id (None: not started yet, or ended)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def reused(self) -> bool:
        """The child ran another job first (:attr:`adopt`)."""
        return self._reused

    def _guarded(self) -> list[str]:
        """The protected files and their sidecars, as the child's guard is given them."""
        return [str(p) for p in self._prints] + [
            str(p) + s for p in self._prints for s in (*_SIDECARS, "-shm")
        ]

    def _parkable(self) -> bool:
        return (
            self._kept is not None
            and self._clean
            and not self._reused
            and self._fds is not None
            and self._proc is not None
            and self._proc.poll() is None
        )

    def _park(self) -> None:
        """Hand the child to :data:`_SPARES` (it ends by itself after :data:`LINGER` seconds)."""
        assert self._kept is not None and self._proc is not None and self._fds is not None
        assert self._dir is not None
        parked = _Parked(
            self._kept,
            self._proc,
            self._fds,
            self._dir,
            frozenset(self._prints),
            ran=self._ran or self._reused,
        )
        try:  # the child parks only when nothing of the job can act on (a thread, a timer…)
            answer = self._ask({"op": "park", "linger": LINGER})
        except RecoveryError:
            answer = {"ok": False}
        if not answer.get("ok"):
            log.debug("recovery: the sandbox child is not kept: %s", answer.get("error"))
            self.close()
            return
        self._proc, self._fds, self._dir = None, None, None
        key, self._kept = self._kept, None
        _SPARES.park(parked, key)

    def _take(self, wait: bool) -> bool:
        """Adopt the parked child for this job (True). Else, with ``wait`` and while a keeper of
        this ini still runs, leave it for the first command (True; ``_pending``). False: start
        a child."""
        key = _key(Path(self.alembic_ini))
        if not wait:  # a child is needed now: one started ahead is never later than a new one
            _prestarted(key)
        parked, keeper_runs = _SPARES.take(key, keeper=self._kept is not None)
        if parked is None:
            self._pending = wait and keeper_runs
            return self._pending
        if not parked.protected <= set(self._prints):  # (another run's child: not this one's)
            parked.close()
            return False
        own = self._dir
        assert own is not None
        self._dir = parked.folder
        self._proc, self._fds, self._buf = parked.proc, parked.fds, b""
        url = f"sqlite:///{self.scratch}"
        ini_copy = write_ini_copy(Path(self.alembic_ini), parked.folder / "alembic.ini", url)
        request = {
            "op": "rebind",
            "scratch": str(self.scratch),
            "url": url,
            "ini": str(ini_copy),
            "protected": self._guarded(),
            "env": child_environment(self.scratch, list(self._prints)),
            "sys_path": _child_sys_path(),
            "cwd": str(parked.folder),
        }
        try:
            answer = self._ask(request)
        except RecoveryError as exc:  # (it died or hung: a new child does the job)
            answer = {"ok": False, "error": exc.message}
        if not answer.get("ok"):
            log.debug("recovery: a new sandbox child, the parked one: %s", answer.get("error"))
            self.close()
            self._dir = own
            return False
        shutil.rmtree(own, ignore_errors=True)
        self._reused = parked.ran
        return True

    def _start(self, ini: Path) -> None:
        assert self._dir is not None
        url = self.server_url or f"sqlite:///{self.scratch}"
        ini_copy = write_ini_copy(ini, self._dir / "alembic.ini", url)
        init: dict[str, Any] = {
            "scratch": str(self.scratch),
            "url": url,
            "ini": str(ini_copy),
            "protected": self._guarded(),
            "sys_path": _child_sys_path(),
        }
        if self.server_url is not None:
            from sqlalchemy.engine import make_url

            u = make_url(self.server_url)
            init["server"] = {"database": str(u.database), "user": str(u.username)}
        init_path = self._dir / "init.json"
        init_path.write_text(json.dumps(init), encoding="utf-8")
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        log = open(self._dir / "child.log", "wb")  # closed right after the start
        try:
            self._proc = (_SPARES.spawn if self._kept is not None else subprocess.Popen)(
                [
                    sys.executable,
                    "-m",
                    "recovery.migrate.sandbox_child",
                    str(init_path),
                    str(req_r),
                    str(resp_w),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                env=child_environment(self.scratch, list(self._prints), server_url=self.server_url),
                pass_fds=(req_r, resp_w),
                start_new_session=True,
            )
        finally:
            log.close()
            os.close(req_r)
            os.close(resp_w)
        self._fds = (req_w, resp_r)

    def log_tail(self, n: int = 1500) -> str:
        try:
            text = (
                (self._dir / "child.log").read_text(encoding="utf-8", errors="replace")
                if self._dir
                else ""
            )
        except OSError:
            return ""
        return text[-n:].strip()

    def migrate(
        self, direction: str, target: str, fast: bool = True, reads: bool = False
    ) -> list[str]:
        """Run the app's ``upgrade``/``downgrade`` to ``target`` on the scratch file; return the SQL
        it executed, reads and ``alembic_version`` left out (``reads``: every statement run on any
        SQLite connection of the child, reads and raw DB-API cursors included). Raises :class:`MigrationFailed` when
        the app's code fails, :class:`ProtectedChanged` when a protected file changed."""
        if self._pending and self._dir is not None:
            self._pending = False  # the keeper's child, parked meanwhile, or a new one
            if not self._take(wait=False):
                self._start(Path(self.alembic_ini))
        if self._proc is None or self._fds is None:
            raise RuntimeError("Sandbox used outside its with-block")
        self._ran = True
        try:
            answer = self._ask(
                {
                    "op": "migrate",
                    "direction": direction,
                    "target": target,
                    "fast": fast,
                    "reads": reads,
                }
            )
        finally:
            self.check_protected()
        self.refused = list(answer.get("refused") or [])
        if self.refused or not answer.get("ok"):
            self._clean = False
            if self._reused:  # perhaps the previous job's state: a new child runs it again
                log.info(
                    "recovery: %s to %s failed in the lineage's sandbox child (%s); it runs "
                    "again in a new one",
                    direction,
                    target,
                    "; ".join(self.refused) or answer.get("error"),
                )
                self._drop_reused()
                raise ReusedChildFailed(
                    direction,
                    target,
                    str(answer.get("error") or "the sandbox refused what the app's code tried"),
                    self.refused,
                )
        if self.refused and answer.get("ok"):  # swallowed by the app's code: say it here
            log.warning(
                f"recovery: the application's migration code ({direction} to {target}) tried to reach "
                f"another database; the sandbox refused it: {'; '.join(self.refused)}"
            )
        if not answer.get("ok"):
            raise MigrationFailed(
                direction, target, str(answer.get("error")), list(answer.get("refused") or [])
            )
        return list(answer.get("statements") or [])

    def _drop_reused(self) -> None:
        """End the reused child; the next command starts a new one (never a parked one)."""
        self.close()
        self._dir = Path(tempfile.mkdtemp(prefix="recovery-sandbox-"))
        self._reused, self._pending = False, False
        self._start(Path(self.alembic_ini))

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self._fds is not None and self._proc is not None
        req_w, resp_r = self._fds
        data = (json.dumps(req) + "\n").encode("utf-8")
        try:
            while data:
                data = data[os.write(req_w, data) :]
        except BrokenPipeError:
            self._died()
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise RecoveryError(
                    f"the application's migration code did not finish within {self.timeout:g} s in the sandbox; "
                    "it was stopped",
                    f"set {TIMEOUT_ENV}=SECONDS for a longer bound, or check the migration",
                    ExitCode.FAILED,
                )
            ready, _, _ = select.select([resp_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(resp_r, 65536)
            if not chunk:
                self._died()
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _died(self) -> None:
        assert self._proc is not None
        code = self._proc.wait(timeout=10)
        self._proc = None
        raise RecoveryError(
            f"the sandboxed child running the application's migration code ended (exit code {code}): "
            f"{self.log_tail(600) or 'no output'}",
            "check the application's env.py and migrations",
            ExitCode.FAILED,
        )

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(
                    self._proc.pid, signal.SIGKILL
                )  # the child's own session: it and nothing else
            except ProcessLookupError:
                pass
            self._proc.wait()
        self._proc = None

    def check_protected(self) -> None:
        """Raise :class:`ProtectedChanged` naming every protected file that is not as it was."""
        changed = []
        for path, before in self._prints.items():
            after = fingerprint(path)
            if after != before:
                changed.append(f"{path} ({_describe_change(before, after)})")
        if changed:
            self._prints = {}  # said once
            raise ProtectedChanged(
                "the application's migration code changed a real database although it ran in the sandbox on a "
                f"scratch copy: {'; '.join(changed)}. The run stopped here; nothing else was done",
                "compare that file with its safety copy or the backup before anything else (if the "
                "application itself is running and wrote to it, stop the application and run again); the "
                "application's env.py or migrations reach the database by a way the sandbox does not cover",
            )

    def close(self) -> None:
        if self._kept is not None:
            _SPARES.keep(self._kept, -1)
            self._kept = None
        if self._fds is not None:
            req_w, _resp_r = self._fds
            try:
                os.write(req_w, b'{"op": "exit"}\n')
            except OSError:
                pass
            for fd in self._fds:
                os.close(fd)
            self._fds = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _key(alembic_ini: Path) -> str:
    """Which parked child a sandbox may adopt: one started for the same application's ini."""
    return os.path.realpath(alembic_ini)


def _child_sys_path() -> list[str]:
    """The tool's ``sys.path`` for the child (``""``, the working folder, spelled out)."""
    cwd = os.getcwd()
    return [cwd if p == "" else p for p in sys.path]


def migrate_once(
    alembic_ini: str | os.PathLike[str],
    db: str | os.PathLike[str],
    direction: str,
    target: str,
    protect: list[Path] | None = None,
    fast: bool = True,
) -> list[str]:
    """One sandboxed Alembic command on ``db`` (a scratch file: it is changed)."""
    with Sandbox(Path(alembic_ini), Path(db), list(protect or [])) as sb:
        return sb.migrate(direction, target, fast)
