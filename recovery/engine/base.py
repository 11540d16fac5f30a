"""The engine interface: everything the stages need from a database that differs between SQLite and
PostgreSQL, behind one small typed contract.

The stages (capture, compare, restore, reimport, verify, report) never call ``sqlite3`` or
``psycopg`` to *locate*, *open*, *copy*, *compare*, *swap* or *guard* a database; they ask an
:class:`Engine` obtained from :func:`recovery.engine.open_engine` (a filesystem path → SQLite, a
``postgresql://`` / ``postgresql+psycopg://`` URL → PostgreSQL). The SQL they run on the connections
it hands out is built as sqlglot trees and rendered for :attr:`Engine.dialect`.

Contract every implementation keeps (the tests prove it for SQLite; the PostgreSQL tests for it):

* **Read-only inputs are opened read-only**: :meth:`Engine.connect_readonly` returns a connection
  that cannot write, checkpoint or truncate the database (SQLite ``mode=ro`` + ``query_only``;
  PostgreSQL ``default_transaction_read_only``).
* **Bad input is refused with one clear line**: :meth:`Engine.check` raises
  :class:`~recovery.errors.RecoveryError` (exit 2) for a missing/foreign/truncated database, before
  anything else is asked.
* **One transaction or nothing**: :meth:`Engine.write_transaction` takes the write lock (SQLite
  ``BEGIN IMMEDIATE`` with a bounded wait; PostgreSQL ``BEGIN`` + ``SET CONSTRAINTS ALL DEFERRED``),
  commits when the block ends normally and rolls back on any exception (KeyboardInterrupt
  included), re-raising it.
* **Consistent copies**: :meth:`Engine.snapshot` writes a copy that includes every committed
  transaction and nothing half-written, atomically (the destination is absent or complete).
* **Set-based comparison**: :meth:`Engine.open_pair` gives one read-only connection on which the two
  databases are reachable as the schemas ``old`` (backup) and ``new`` (live), so a diff is a join
  inside the engine, never a Python loop over rows.
* **Atomic restore**: :meth:`Engine.stage_restore` prepares the restored database beside the live
  one without touching it; :meth:`Engine.swap_in` switches it in so that at every instant the live
  name denotes either the old database or the complete restored one.

Connections are DB-API 2 connections (:class:`Connection`) in autocommit mode: transactions are
explicit (:meth:`Engine.write_transaction`). SQLite connections are :class:`sqlite3.Connection`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from collections.abc import Callable


@runtime_checkable
class Cursor(Protocol):
    """The part of a DB-API 2 cursor the stages use."""

    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


@runtime_checkable
class Connection(Protocol):
    """The part of a DB-API 2 connection the stages use (``sqlite3.Connection``, ``psycopg.Connection``)."""

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ..., /) -> Any: ...

    def close(self) -> None: ...


@dataclass
class Holder:
    """Another process or session that has the database open (and could commit into it while we
    work): a process with the SQLite file (or ``-wal``/``-shm``) open or locked, a PostgreSQL
    backend in ``pg_stat_activity``."""

    pid: int
    """The OS process id (SQLite) or backend pid (PostgreSQL); 0 when the owner is in another pid
    namespace, -1 for an open-file-description lock whose owner the kernel does not tell."""
    command: str
    """Its command line (SQLite) or ``application_name``/client address (PostgreSQL)."""
    files: list[str] = field(default_factory=list)
    """What it holds: ``gestima.db``, ``gestima.db-wal``, ``gestima.db-shm (lock)``, or for
    PostgreSQL e.g. ``session (idle in transaction)``."""

    def describe(self) -> str:
        """One phrase naming the holder and what it holds."""
        who = (
            f"pid {self.pid}"
            if self.pid > 0
            else "an open-file-description lock (owner not told)"
            if self.pid < 0
            else "a process in another pid namespace (pid not visible)"
        )
        cmd = f" ({self.command})" if self.command else ""
        return f"{who}{cmd} holds {', '.join(self.files)}"


@dataclass(frozen=True)
class Staged:
    """A restored database ready to be switched in (:meth:`Engine.stage_restore`), not yet live."""

    location: str
    """SQLite: the path of the staged file beside the live one; PostgreSQL: the staged database's name."""
    sha256: str
    """A digest of the staged content, journaled so that ``undo`` and a resumed run know it."""

    @property
    def path(self) -> Path:
        """The staged file (SQLite)."""
        return Path(self.location)


class Engine(abc.ABC):
    """One database (a SQLite file or a PostgreSQL database) and what the stages may do with it.

    An engine object is cheap and holds no connection; every method that opens one closes it
    (or hands it to the caller to close). Methods named for a *role* (``"backup"``, ``"live
    database"``) use it in their refusal messages.
    """

    kind: str
    """``"sqlite"`` or ``"postgresql"``."""
    dialect: str
    """The sqlglot dialect the stages render their statement trees for (``"sqlite"``, ``"postgres"``)."""

    # ---- locating and checking ------------------------------------------------------------

    @property
    @abc.abstractmethod
    def spec(self) -> str:
        """What the user passed, normalised (an absolute path, or the URL without its password):
        what journals record and messages show."""

    @abc.abstractmethod
    def check(self, role: str = "database") -> None:
        """Refuse (RecoveryError, exit 2, one line) when this is not a readable database of this
        engine: missing, a directory, empty, a foreign file, truncated, no such server/database."""

    @abc.abstractmethod
    def exists(self) -> bool:
        """The database is there (a file / a database on the server)."""

    # ---- connections ------------------------------------------------------------------------

    @abc.abstractmethod
    def connect_readonly(self, role: str = "database") -> Connection:
        """A validated read-only connection (sees every committed transaction, can write nothing).
        The caller closes it."""

    @contextmanager
    def readonly(self, role: str = "database") -> Iterator[Connection]:
        """:meth:`connect_readonly` as a context manager that closes the connection."""
        conn = self.connect_readonly(role)
        try:
            yield conn
        finally:
            conn.close()

    @abc.abstractmethod
    def connect_write(self, role: str = "database", timeout: float = 5.0) -> Connection:
        """A validated connection for writing, in autocommit mode (transactions are explicit, see
        :meth:`write_transaction`). ``timeout``: how long one statement waits for a lock."""

    @abc.abstractmethod
    def write_transaction(
        self, conn: Connection, busy_timeout: float = 10.0
    ) -> AbstractContextManager[Connection]:
        """Open the one write transaction on ``conn``, waiting at most ``busy_timeout`` seconds for
        other writers (then RecoveryError exit 2, nothing changed); commit when the block ends,
        roll back and re-raise on any exception. A block that has already ended the transaction
        itself (an explicit ``ROLLBACK``, e.g. an aborted re-import) is left as it is."""

    @abc.abstractmethod
    def sqlalchemy_url(self, readonly: bool = True) -> str:
        """A SQLAlchemy URL for reflection and Alembic (read-only when asked)."""

    # ---- copies and comparison ---------------------------------------------------------------

    @abc.abstractmethod
    def snapshot(self, dst: Path, role: str = "database") -> Path:
        """A consistent copy of the database at one instant, written atomically to ``dst`` (SQLite:
        a self-contained ``.db`` file via the backup API; PostgreSQL: a ``pg_dump`` custom-format
        file). Returns ``dst``."""

    @abc.abstractmethod
    def open_pair(self, backup: Engine) -> Connection:
        """One read-only connection on which ``backup`` is reachable as schema ``old`` and this
        (live) database as schema ``new``, for set-based comparison (SQLite: ATTACH; PostgreSQL: a
        scratch database with ``postgres_fdw`` foreign schemas). The caller closes it (which drops
        any scratch state)."""

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What the database holds, as a JSON-able dict: equal fingerprints mean nothing was
        committed in between (SQLite: size and sha256 of the file and of a non-empty ``-wal``)."""

    # ---- who else is there -------------------------------------------------------------------

    @abc.abstractmethod
    def holders(self, ignore_own_guard: bool = False) -> list[Holder]:
        """Every other process/session that has the database open and could commit into it
        (never this process's own connections). ``ignore_own_guard``: leave out the lock our own
        :class:`WriteWindow`-like guard holds."""

    def describe_holders(self, holders: list[Holder]) -> str:
        """One line naming each holder."""
        return (
            f"{self.spec} is in use (open or locked) by {len(holders)} other process(es): "
            + "; ".join(h.describe() for h in holders)
        )

    @abc.abstractmethod
    def write_lock_held(self) -> bool:
        """True when another connection holds (or keeps taking) the write lock right now. Writes
        nothing."""

    def write_window(self, timeout: float | None = None) -> Any:
        """A guard that keeps every other writer out from before the safety copy until the swap
        (so nothing commits between what was extracted and what is restored), released with
        ``.release()``, given to :meth:`swap_in`; its ``.replaced`` is what the late-commit check
        reads after the swap, or None. SQLite: :class:`recovery.restore.livewindow.WriteWindow`.
        An engine without one returns None (the rollback then relies on the holder refusal)."""
        return None

    # ---- restore -----------------------------------------------------------------------------

    @abc.abstractmethod
    def stage_restore(
        self, backup: Path, prepare: Callable[[Path], None] | None = None, purpose: str = "restore"
    ) -> Staged:
        """Prepare a consistent copy of ``backup`` (a file of this engine's :meth:`snapshot`
        format, or a database file) beside this database, after ``prepare(copy)`` (e.g. an Alembic
        downgrade), in this database's journal mode and with its owner, group, mode and extended
        attributes (PostgreSQL: owner, privileges, extensions). ``purpose`` (``"restore"``,
        ``"undo"``) names the staging place, so a resumed run finds its own leftovers. This
        database is not touched, so this can run while the extract still reads it."""

    @abc.abstractmethod
    def swap_in(self, staged: Staged, window: Any = None) -> None:
        """Switch ``staged`` in as this database, atomically. ``window``: the engine's write guard
        held since the safety copy (SQLite :class:`recovery.restore.livewindow.WriteWindow`), under
        which the swap happens. Refused before anything moved: the staged copy is removed."""

    @abc.abstractmethod
    def discard(self, staged: Staged) -> None:
        """Remove a staged copy that will not be swapped in."""

    # ---- re-import hooks ---------------------------------------------------------------------

    @abc.abstractmethod
    def read_sequences(self, conn: Connection, schema: str = "main") -> dict[str, int]:
        """The key counters of ``schema`` as {table: last value} (SQLite ``sqlite_sequence``;
        PostgreSQL the sequences/identity columns owned by each table)."""

    @abc.abstractmethod
    def raise_sequences(
        self, conn: Connection, live: dict[str, int], before: dict[str, int]
    ) -> list[dict[str, Any]]:
        """Inside the caller's transaction: raise each table's key counter to max(its value,
        ``before`` (the target's before the re-import wrote), ``live`` (the live DB's at extract
        time), the largest id now in the table); one entry per such table:
        ``{"table", "backup", "live", "max_id", "seq"}`` (``seq``: the value now)."""

    @abc.abstractmethod
    def suspend_triggers(self, conn: Connection, tables: set[str]) -> list[Any]:
        """Inside the caller's transaction: stop the triggers on ``tables`` from firing; returns
        what :meth:`restore_triggers` needs (SQLite: drop and keep their exact DDL; PostgreSQL:
        ``ALTER TABLE … DISABLE TRIGGER USER`` or ``session_replication_role``)."""

    @abc.abstractmethod
    def restore_triggers(self, conn: Connection, suspended: list[Any]) -> None:
        """Inside the same transaction: bring back exactly what :meth:`suspend_triggers` stopped."""


_PG_SCHEME = re.compile(r"^(postgres|postgresql|postgresql\+\w+):/+", re.IGNORECASE)


def normalise_spec(spec: str) -> str:
    """``spec`` with a URL's ``scheme://`` restored where a ``Path`` collapsed it to ``scheme:/``
    (``Path("postgresql://h/db")`` is ``postgresql:/h/db``), so a URL survives being passed as a path."""
    m = _PG_SCHEME.match(spec)
    return f"{m.group(1)}://{spec[m.end() :]}" if m else spec


def is_postgres_url(spec: str) -> bool:
    """``spec`` names a PostgreSQL database (``postgresql://…``, ``postgresql+psycopg://…``,
    ``postgres://…``; also after a ``Path`` collapsed the ``//``)."""
    return _PG_SCHEME.match(spec) is not None
