"""The SQLite engine: :class:`~recovery.engine.base.Engine` over one database file.

A thin layer over :mod:`recovery.engine.sqlite_io` (validated opens, consistent copies, the lock
probe), :mod:`recovery.engine.holders` (who has the file open or locked),
:mod:`recovery.reimport.sequences` (``sqlite_sequence``) and :mod:`recovery.reimport.triggers`.
Every ``sqlite3.connect`` on a real database of the run happens here or in those modules.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Callable
from urllib.parse import quote

from recovery.engine import sqlite_io
from recovery.engine.base import Connection, Engine, Holder, Staged
from recovery.errors import RecoveryError


class SQLiteEngine(Engine):
    """One SQLite database file (``path`` as given: a symlink is followed where SQLite needs the
    real file, and a restore replaces the real file, leaving the link a link)."""

    kind = "sqlite"
    dialect = "sqlite"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SQLiteEngine({str(self.path)!r})"

    @property
    def spec(self) -> str:
        return str(self.path)

    # ---- locating and checking ------------------------------------------------------------

    def check(self, role: str = "database") -> None:
        sqlite_io.check_sqlite_file(self.path, role)

    def exists(self) -> bool:
        return self.path.exists()

    # ---- connections ------------------------------------------------------------------------

    def connect_readonly(self, role: str = "database") -> sqlite3.Connection:
        return sqlite_io.open_readonly(self.path, role)

    @contextmanager
    def readonly(self, role: str = "database") -> Iterator[sqlite3.Connection]:
        with sqlite_io.readonly(self.path, role) as conn:
            yield conn

    def connect_write(self, role: str = "database", timeout: float = 5.0) -> sqlite3.Connection:
        """``mode=rw``: an existing file only (a missing one is never created)."""
        p = sqlite_io.check_sqlite_file(self.path, role)
        try:
            conn = sqlite3.connect(
                sqlite_io.file_uri(p, mode="rw"), uri=True, timeout=timeout, isolation_level=None
            )
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise RecoveryError(
                f"{role} {p} cannot be opened: {exc}", "is it a corrupt database?"
            ) from None
        return conn

    @contextmanager
    def write_transaction(  # type: ignore[override]
        self,
        conn: sqlite3.Connection,
        busy_timeout: float = 10.0,
    ) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` (retrying SQLITE_BUSY for at most ``busy_timeout``), ``COMMIT`` at
        the end of the block, ``ROLLBACK`` and re-raise on any exception."""
        sqlite_io.wait_for_write_lock(conn, busy_timeout)
        try:
            yield conn
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def sqlalchemy_url(self, readonly: bool = True) -> str:
        """Percent-escaped for SQLAlchemy's URL parser, and once more (read-only) for SQLite's URI
        parser, so a path with spaces, ``?``, ``#`` or ``%`` names that very file."""
        p = str(sqlite_io.real_path(self.path).resolve())
        if readonly:
            return f"sqlite:///file:{quote(quote(p))}?mode=ro&uri=true"
        return f"sqlite:///{quote(p)}"

    # ---- copies and comparison ---------------------------------------------------------------

    def snapshot(self, dst: Path, role: str = "database") -> Path:
        return sqlite_io.consistent_copy(self.path, dst, role)

    def open_pair(self, backup: Engine) -> sqlite3.Connection:
        if not isinstance(backup, SQLiteEngine):
            raise RecoveryError(
                f"cannot compare the SQLite database {self.spec} with {backup.spec}",
                "pass a backup of the same engine (a SQLite file)",
            )
        return sqlite_io.open_pair(backup.path, self.path)

    def fingerprint(self) -> dict[str, Any]:
        """Size and sha256 of the file and of a non-empty ``-wal``: a read leaves both unchanged."""
        wal, _ = sqlite_io.sidecars(self.path)
        wal_sha = sqlite_io.sha256_file(wal) if wal.exists() and wal.stat().st_size else None
        return {
            "size": self.path.stat().st_size,
            "sha256": sqlite_io.sha256_file(self.path),
            "wal_sha256": wal_sha,
        }

    # ---- who else is there -------------------------------------------------------------------

    def holders(self, ignore_own_guard: bool = False) -> list[Holder]:
        """Processes with the file, ``-wal`` or ``-shm`` open or locked (:mod:`recovery.engine.holders`);
        ``ignore_own_guard`` leaves out OFD locks (the :class:`~recovery.restore.livewindow.WriteWindow`'s)."""
        from recovery.engine.holders import find_holders

        return find_holders(self.path, ignore_ofd=ignore_own_guard)

    def describe_holders(self, holders: list[Holder]) -> str:
        from recovery.engine.holders import describe_holders

        return describe_holders(self.path, holders)

    def write_lock_held(self) -> bool:
        return sqlite_io.write_lock_held(self.path)

    def write_window(self, timeout: float | None = None) -> Any:
        """The live DB's write lock plus an OFD lock on its shared range, held until the swap
        (:class:`recovery.restore.livewindow.WriteWindow`)."""
        from recovery.restore.livewindow import WriteWindow

        from recovery.engine.timebound import lock_wait

        return WriteWindow(self.path, lock_wait() if timeout is None else timeout)

    # ---- restore -----------------------------------------------------------------------------

    def staging_path(self, purpose: str = "restore") -> Path:
        """Where a staged file waits beside the database until it is renamed in."""
        return self.path.with_name(f".{self.path.name}.{purpose}-tmp")

    def stage_restore(
        self, backup: Path, prepare: Callable[[Path], None] | None = None, purpose: str = "restore"
    ) -> Staged:
        """A consistent copy of ``backup`` beside the database (after ``prepare(copy)``), in WAL
        mode when the database is, with its owner, group, mode and xattrs, fsynced."""
        db = self.path
        tmp = self.staging_path(purpose)
        sqlite_io.consistent_copy(backup, tmp, "backup" if purpose == "restore" else "safety copy")
        try:
            if prepare is not None:
                prepare(tmp)
            if db.exists() and sqlite_io.is_wal_file(db):
                c = sqlite3.connect(str(tmp), isolation_level=None)
                try:
                    c.execute(
                        "PRAGMA journal_mode=WAL"
                    )  # keep the app's journal mode; leaves no -wal on close
                finally:
                    c.close()
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            if (
                db.exists()
            ):  # the same file to the app: owner, group, mode, xattrs/ACLs of the live DB
                sqlite_io.copy_file_identity(db, tmp)
            return Staged(str(tmp), sqlite_io.sha256_file(tmp))
        except BaseException:
            if (
                purpose != "restore"
            ):  # a failed restore's staged file is cleaned by the run's leftovers pass
                tmp.unlink(missing_ok=True)
            raise

    def swap_in(self, staged: Staged, window: Any = None) -> None:
        """Checkpoint the WAL, remove ``-wal``/``-shm`` and rename the staged file over the
        database; with a ``window`` (:class:`~recovery.restore.livewindow.WriteWindow`) the swap
        happens under its lock and the replaced file stays open for the late check."""
        db, path = self.path, staged.path
        if window is not None:
            window.swap(path)
            return
        wal, shm = sqlite_io.sidecars(db)
        try:
            if db.exists():
                conn = sqlite3.connect(str(db), isolation_level=None, timeout=5)
                try:
                    if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                        if busy:
                            raise RecoveryError(
                                f"{db} is in use: its WAL could not be checkpointed",
                                "stop the application and run the same command again",
                            )
                finally:
                    conn.close()
        except BaseException:
            path.unlink(missing_ok=True)  # refused before anything moved: no staged copy is left
            raise
        for side in (
            wal,
            shm,
        ):  # empty after the checkpoint; stale ones must never meet the new file
            side.unlink(missing_ok=True)
        os.replace(path, db)
        sqlite_io.fsync_dir(db.parent)

    def discard(self, staged: Staged) -> None:
        staged.path.unlink(missing_ok=True)

    # ---- re-import hooks ---------------------------------------------------------------------

    def read_sequences(self, conn: Connection, schema: str = "main") -> dict[str, int]:
        from recovery.reimport.sequences import read_sequences

        return read_sequences(conn, schema)

    def raise_sequences(
        self, conn: Connection, live: dict[str, int], before: dict[str, int]
    ) -> list[dict[str, Any]]:
        from recovery.reimport.sequences import carry_forward

        return carry_forward(conn, live, before)

    def suspend_triggers(self, conn: sqlite3.Connection, tables: set[str]) -> list[Any]:  # type: ignore[override]
        from recovery.reimport import triggers

        return list(triggers.suspend(conn, tables))

    def restore_triggers(self, conn: sqlite3.Connection, suspended: list[Any]) -> None:  # type: ignore[override]
        from recovery.reimport import triggers

        triggers.restore(conn, suspended)
