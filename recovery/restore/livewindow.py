"""Closing the window between the safety copy and the swap, and looking at the replaced file after.

:class:`WriteWindow` holds the live DB's write lock (``BEGIN IMMEDIATE`` on a connection of ours)
from before the safety copy until the restored file has been renamed in place, so no commit can
land between what was extracted and what is restored; readers still read (the safety copy itself
is read with the backup API on another connection while the lock is held).

It also holds an *open-file-description* read lock on the database file's shared lock range
(``F_OFD_SETLK``). SQLite needs an exclusive lock there to (a) commit in rollback-journal mode and
(b) checkpoint-and-delete the WAL when the last connection closes. (b) is the danger: a connection
still on the *replaced* inode that closes last would delete ``db-wal``/``db-shm`` **by path**,
i.e. the restored file's sidecars. An OFD lock conflicts with POSIX locks even of this process, so
neither our own guard connection nor any other process can do that while the lock is held (until
the end of the run). Our own guard closes without a checkpoint for the same reason.

After the swap the replaced file stays open (descriptors on the old database, ``-wal`` and
``-shm``) as :class:`ReplacedFile`; at the end of the run :func:`late_commits` copies it (the WAL
first, with the WAL-index checkpoint lock held so no checkpoint moves pages meanwhile) and lists
every row that differs from the safety copy: commits that a holder made after the safety copy.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recovery.engine.base import Connection
from recovery.errors import RecoveryError
from recovery.engine.holders import PENDING_BYTE, WALINDEX_LOCK_OFFSET, Flock, attached_elsewhere
from recovery.engine.sqlbuild import col, sql, table
from recovery.engine.sqlite_io import (
    consistent_copy,
    fsync_dir,
    held_copy,
    is_wal_file,
    real_path,
    sidecars,
    wait_for_write_lock,
)

SHARED_FIRST, SHARED_SIZE = PENDING_BYTE + 2, 510
WAL_CKPT_BYTE = WALINDEX_LOCK_OFFSET + 1
LATE_ROWS_LISTED = 1000
"""Rows listed per table and direction in ``late_commits.json`` (the counts are always exact)."""


def _ofd_lock(fd: int, kind: int, start: int, length: int) -> bool:
    """Take (or, with ``F_UNLCK``, drop) an OFD lock without waiting; False when it conflicts.
    Where the system has no OFD locks (not Linux) this does nothing and says True."""
    cmd = getattr(fcntl, "F_OFD_SETLK", None)
    if cmd is None:
        return True
    lk = Flock(kind, os.SEEK_SET, start, length, 0)
    try:
        fcntl.fcntl(fd, cmd, bytes(lk))
    except OSError:
        return False
    return True


@dataclass
class ReplacedFile:
    """Descriptors on the database file that the restore replaced, and on its ``-wal``/``-shm``."""

    name: str
    db_fd: int
    wal_fd: int | None
    shm_fd: int | None
    closed: bool = field(default=False)
    stamp: tuple[int, ...] = field(default=())
    """Size and mtime (ns) of the database and ``-wal`` when the lock was let go; see :meth:`changed`."""
    let_go: float = field(default=0.0)
    """``time.monotonic()`` when the lock was let go (:meth:`mark`)."""

    def _stat(self) -> tuple[int, ...]:
        out: list[int] = []
        for fd in (self.db_fd, self.wal_fd):
            if fd is not None:
                st = os.fstat(fd)
                out += [st.st_size, st.st_mtime_ns]
        return tuple(out)

    def mark(self) -> None:
        self.stamp = self._stat()
        self.let_go = time.monotonic()

    def settle(self, forced: bool, quiet: float = 0.5, cap: float = 5.0) -> None:
        """Before the late check looks: wait until the replaced file has taken no write for
        ``quiet`` seconds (at most ``cap`` seconds after the lock was let go), when another
        process may still write into it. A connection that was waiting on our lock commits its
        pending transaction into this file once the lock is let go, after its busy handler's next
        sleep (SQLite's default handler sleeps up to 100 ms between tries); a look taken sooner
        would miss that commit. Who may write: in WAL mode, any other process holding the
        replaced ``-shm``'s DMS lock (every open WAL connection does); in rollback-journal mode
        (no ``-shm``, idle connections hold no lock) only holders let through by ``--force``.
        Nobody attached: no wait."""
        attached = attached_elsewhere(self.shm_fd) if self.shm_fd is not None else forced
        if not attached:
            return
        last, quiet_since = self._stat(), self.let_go
        while (now := time.monotonic()) < self.let_go + cap:
            seen = self._stat()
            if seen != last:
                last, quiet_since = seen, now
            elif now - quiet_since >= quiet:
                return
            time.sleep(0.05)

    def changed(self) -> bool:
        """Was anything written into the replaced file since :meth:`mark`? A commit appends to the
        WAL (or, in rollback-journal mode, writes the file); both move size or mtime. Lets the
        late check skip comparing whole tables when nobody wrote."""
        return not self.stamp or self._stat() != self.stamp

    def copy_to(self, folder: Path, wait: float = 5.0) -> Path:
        """A private copy (database + WAL) of the replaced file as it is now, for reading. The
        WAL-index checkpoint lock is held (up to ``wait`` seconds to get it) so no holder moves
        pages from the WAL into the file while the two are copied, WAL first."""
        locked = False
        if self.shm_fd is not None:
            deadline = time.monotonic() + wait
            while not (locked := _ofd_lock(self.shm_fd, fcntl.F_WRLCK, WAL_CKPT_BYTE, 1)):
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        try:
            target = folder / self.name
            if self.wal_fd is not None:
                _copy_fd(self.wal_fd, target.with_name(target.name + "-wal"))
            _copy_fd(self.db_fd, target)
        finally:
            if locked and self.shm_fd is not None:
                _ofd_lock(self.shm_fd, fcntl.F_UNLCK, WAL_CKPT_BYTE, 1)
        return target

    def close(self) -> None:
        """Drop the descriptors (and with them the OFD locks)."""
        close_fds(self.detach())

    def detach(self) -> list[int]:
        """The descriptors, handed to the caller to close (:func:`close_fds`); this object is
        closed from here on (a second :meth:`close` closes nothing). Ours are the last
        descriptors of the replaced file (it has no name any more), so their ``close`` is where the
        kernel frees its blocks: ~0.1 s for a 450 MB file, which a caller may spend on another
        thread."""
        if self.closed:
            return []
        fds = [fd for fd in (self.wal_fd, self.shm_fd, self.db_fd) if fd is not None]
        self.wal_fd = self.shm_fd = None
        self.closed = True
        return fds


def close_fds(fds: list[int]) -> None:
    """Close each descriptor (all of them, the first error raised after)."""
    error: OSError | None = None
    for fd in fds:
        try:
            os.close(fd)
        except OSError as exc:
            error = error or exc
    if error is not None:
        raise error


def _copy_fd(fd: int, dst: Path) -> None:
    with open(dst, "wb") as out:
        offset = 0
        while chunk := os.pread(fd, 1 << 20, offset):
            out.write(chunk)
            offset += len(chunk)


class WriteWindow:
    """The live DB's write lock, held from before the safety copy until :meth:`swap`.

    ``WriteWindow(db)`` waits up to ``timeout`` seconds for a writer to finish, then refuses
    (exit 2, nothing changed). :meth:`release` gives the lock back without swapping (a refused or
    failed run); after :meth:`swap`, :attr:`replaced` keeps the old file open for the late check.
    """

    def __init__(self, db: Path, timeout: float = 10.0):
        self.db = db
        self.replaced: ReplacedFile | None = None
        self._fd: int | None = os.open(db, os.O_RDONLY)
        self._conn: sqlite3.Connection | None = None
        self._copying: Future[tuple[Path, str]] | None = None
        """The safety copy under way on its own thread (:meth:`start_safety_copy`): joined before
        the lock or the descriptors it reads through are let go."""
        self._shm_fd: int | None = None
        """``-shm``, open for reading the WAL-index; closed only after ``_conn`` (a close drops
        this process's POSIX locks on the file, the write lock ``_conn`` holds there included)."""
        try:
            deadline = time.monotonic() + timeout
            while not _ofd_lock(self._fd, fcntl.F_RDLCK, SHARED_FIRST, SHARED_SIZE):
                if (
                    time.monotonic() >= deadline
                ):  # a connection is committing (rollback journal) or closing
                    raise RecoveryError(
                        f"{db} stayed locked by another writer for {timeout:.0f}s",
                        "stop the application (or the other writer) and run the command again",
                    )
                time.sleep(0.05)
            self._conn = sqlite3.connect(str(db), isolation_level=None, timeout=timeout)
            wait_for_write_lock(self._conn, timeout)
        except BaseException:
            self.release()
            raise

    @property
    def held(self) -> bool:
        return self._conn is not None

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()  # no checkpoint-and-delete: our OFD read lock blocks its exclusive lock
        shm_fd, self._shm_fd = self._shm_fd, None
        if shm_fd is not None:
            os.close(shm_fd)

    def release(self) -> None:
        """Give the lock back without a swap (nothing was changed); a safety copy under way is
        waited for first (it reads through our descriptors)."""
        try:
            self._join_copy()
            self._close_conn()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def safety_copy(self, dst: Path, role: str = "live database") -> tuple[Path, str]:
        """A consistent copy of the locked live DB at ``dst`` (temporary name, fsync, rename) and
        how it was made: ``"held-copy"``, the kernel's file copy that the held lock makes
        consistent (:func:`recovery.engine.sqlite_io.held_copy`), or ``"backup-api"`` where that
        copy cannot be proven (no valid WAL-index, a hot journal, a file at the path that is not
        the locked one) and SQLite's online backup reads it instead."""
        return self._copier(dst, role)()

    def start_safety_copy(self, dst: Path, role: str = "live database") -> Future[tuple[Path, str]]:
        """:meth:`safety_copy` on a thread of its own, while the caller reads the live DB (which
        the held lock keeps at the very state copied). The copy is mostly the kernel's and the
        disk's work, so the caller's reads need not wait for it. :meth:`release` and
        :meth:`swap` wait for it; the future's result is what :meth:`safety_copy` returns, or
        raises what it raised."""
        if self._copying is not None:
            raise RuntimeError("a safety copy is already under way")
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recovery-safety")
        self._copying = pool.submit(self._copier(dst, role))
        pool.shutdown(wait=False)
        return self._copying

    def _copier(self, dst: Path, role: str) -> Callable[[], tuple[Path, str]]:
        """The safety copy split where it leaves our connection: its page count is read now, on
        the connection's own thread; the copy returned reads only through our descriptors and
        files (any thread, while the lock is held)."""
        if self._conn is None or self._fd is None:
            raise RuntimeError("the write window was released")
        pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
        shm = sidecars(real_path(self.db))[1]
        if self._shm_fd is None and shm.exists():
            self._shm_fd = os.open(shm, os.O_RDWR)  # closed only after our connection
        db_fd, shm_fd = self._fd, self._shm_fd

        def copy() -> tuple[Path, str]:
            if self._is_locked_file() and held_copy(self.db, dst, pages, role, db_fd, shm_fd):
                if self._is_locked_file():
                    return dst, "held-copy"
                dst.unlink(missing_ok=True)  # the path was renamed over while it was copied
            return consistent_copy(self.db, dst, role), "backup-api"

        return copy

    def _join_copy(self) -> None:
        """Wait for the safety copy under way, if any (its outcome stays with its handle)."""
        copying, self._copying = self._copying, None
        if copying is not None:
            copying.exception()  # waits; the copy's last read is done once its result is set

    def _is_locked_file(self) -> bool:
        """The file at the path is the one whose lock we hold (same device and inode)."""
        if self._fd is None:
            return False
        held = os.fstat(self._fd)
        try:
            now = os.stat(self.db)
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)

    def swap(self, staged: Path) -> ReplacedFile:
        """Rename ``staged`` over the live DB while the write lock is held, then let the lock go.

        The WAL is checkpointed PASSIVE (which needs no write lock, so our own lock does not block
        it) so the replaced file is self-contained for anyone who reads it in the instant between
        the sidecars' removal and the rename; its ``-wal``/``-shm`` are unlinked *before* the
        rename (a stale WAL must never meet the new file) and stay open here for the late check."""
        if self._conn is None or self._fd is None:
            raise RuntimeError("the write window was released")
        copying = self._copying
        if copying is not None:  # never swap over a live DB whose safety copy is not made
            copying.result()
            self._copying = None
        db = self.db
        held, now = os.fstat(self._fd), os.stat(db)
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            raise RecoveryError(  # its content is in no copy of ours: a rename would lose it
                f"{db} was replaced by another file during the rollback (the one locked since the "
                "safety copy is no longer at that path); nothing was swapped in",
                "stop whatever replaced it, then run the same command again: it starts over from "
                "the file now there",
            )
        wal, shm = sidecars(db)
        if is_wal_file(db):
            c = sqlite3.connect(str(db), isolation_level=None, timeout=5)
            try:
                c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                c.close()
        wal_fd = os.open(wal, os.O_RDONLY) if wal.exists() else None
        shm_fd, self._shm_fd = self._shm_fd, None  # the late check keeps it, open, from here
        if shm_fd is None and shm.exists():
            shm_fd = os.open(shm, os.O_RDWR)
        try:
            for side in (wal, shm):
                side.unlink(missing_ok=True)
            os.replace(staged, db)
            fsync_dir(db.parent)
        except BaseException:
            for fd in (wal_fd, shm_fd):
                if fd is not None:
                    os.close(fd)
            raise
        self.replaced = ReplacedFile(db.name, self._fd, wal_fd, shm_fd)
        self._fd = None  # handed over: the OFD lock lives on with the replaced file's descriptor
        self.replaced.mark()  # still under our write lock: nothing can have been committed since the safety copy
        self._close_conn()
        return self.replaced


def _tables(conn: Connection, schema: str) -> dict[str, list[str]]:
    from sqlglot import exp

    q = (
        exp.select(col("name"))
        .from_(table("sqlite_master", schema))
        .where(
            exp.and_(
                exp.EQ(this=col("type"), expression=exp.Literal.string("table")),
                exp.Not(this=exp.Like(this=col("name"), expression=exp.Literal.string("sqlite_%"))),
            )
        )
    )
    info = exp.select(col("name")).from_(
        exp.func("pragma_table_info", exp.Placeholder(), exp.Placeholder())
    )
    return {
        name: [r[0] for r in conn.execute(sql(info), (name, schema))]
        for (name,) in conn.execute(sql(q)).fetchall()
    }


def _except(cols: list[str], left: str, right: str, name: str) -> Any:
    from sqlglot import exp

    a = exp.select(*[col(c) for c in cols]).from_(table(name, left))
    b = exp.select(*[col(c) for c in cols]).from_(table(name, right))
    return exp.Except(this=a, expression=b, distinct=True)


def late_commits(safety: Path, replaced_copy: Path) -> dict[str, Any]:
    """Every row that differs between the safety copy and the replaced file (set-based ``EXCEPT``
    per table): ``{"tables": {name: {"added_or_changed": n, "removed_or_changed": n, "rows": […]}},
    "total": n}``; rows listed up to :data:`LATE_ROWS_LISTED` per table and direction."""
    from sqlglot import exp

    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("ATTACH DATABASE ? AS safety", (str(safety),))
        conn.execute("ATTACH DATABASE ? AS late", (str(replaced_copy),))
        conn.execute("PRAGMA query_only = ON")
        before, after = _tables(conn, "safety"), _tables(conn, "late")
        out: dict[str, Any] = {"tables": {}, "total": 0}
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                out["tables"][name] = {"schema_changed": True}
                out["total"] += 1
                continue
            cols = after[name]
            entry: dict[str, Any] = {}
            for label, left, right in (
                ("added_or_changed", "late", "safety"),
                ("removed_or_changed", "safety", "late"),
            ):
                diff = _except(cols, left, right, name).subquery("d")
                count = conn.execute(
                    sql(exp.select(exp.func("count", exp.Star())).from_(diff))
                ).fetchone()[0]
                if not count:
                    continue
                rows = conn.execute(
                    sql(exp.select("*").from_(diff).limit(LATE_ROWS_LISTED))
                ).fetchall()
                entry[label] = count
                entry.setdefault("rows", []).extend(
                    {"change": label, **{c: _jsonable(v) for c, v in zip(cols, r, strict=True)}}
                    for r in rows
                )
                out["total"] += count
            if entry:
                out["tables"][name] = entry
        return out
    finally:
        conn.close()


def _jsonable(v: Any) -> Any:
    return "0x" + v.hex() if isinstance(v, bytes) else v


def check_replaced(replaced: ReplacedFile, safety: Path, run_dir: Path) -> dict[str, Any]:
    """Copy the replaced file, compare it with the safety copy, and when anything was committed
    into it after the safety copy write ``RUN_DIR/late_commits.json`` and ``late_commits.csv``.
    Returns the summary kept in the journal and the report (``late_commits``: the row count)."""
    if not replaced.changed():
        return {"checked": True, "late_commits": 0, "unchanged_since_swap": True}
    with tempfile.TemporaryDirectory(prefix="recovery-late-") as tmp:
        copy = replaced.copy_to(Path(tmp))
        c = sqlite3.connect(str(copy))  # private copy: recovers its WAL, sees every commit
        c.execute("SELECT count(*) FROM sqlite_master").fetchone()
        c.close()
        found = late_commits(safety, copy)
    summary: dict[str, Any] = {"checked": True, "late_commits": found["total"]}
    if found["total"]:
        summary["file"] = str(write_late_commits(run_dir, found))
    return summary


def write_late_commits(run_dir: Path, found: dict[str, Any]) -> Path:
    """``late_commits.json`` (every table's counts and rows) and ``late_commits.csv`` (one line a
    row: table, change, the row as JSON)."""
    import csv

    path = run_dir / "late_commits.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(
            {"format": "recovery-late-commits/1", **found},
            indent=2,
            ensure_ascii=False,
            default=str,
        )
        + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, path)
    csv_path = run_dir / "late_commits.csv"
    with open(csv_path.with_name(csv_path.name + ".tmp"), "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["table", "change", "row"])
        for name, entry in found["tables"].items():
            for row in entry.get("rows", []):
                change = row.get("change", "")
                w.writerow(
                    [
                        name,
                        change,
                        json.dumps(
                            {k: v for k, v in row.items() if k != "change"},
                            ensure_ascii=False,
                            default=str,
                        ),
                    ]
                )
    os.replace(csv_path.with_name(csv_path.name + ".tmp"), csv_path)
    return path
