"""SQLite file handling: validated read-only opens, consistent copies, atomic replace, lock probe.

Every input database goes through :func:`check_sqlite_file` first so that a missing file, a
directory, a zero-byte file, a text file or a truncated database is refused with one clear line
(exit 2) before SQLite is asked anything.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from recovery.errors import ExitCode, RecoveryError

SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(path: str | os.PathLike[str], role: str = "database") -> Path:
    """Return ``path`` as a Path if it looks like a SQLite database file, else raise.

    Cheap checks only (existence, type, size, magic header); :func:`open_readonly` then
    lets SQLite validate the rest.
    """
    p = Path(path)
    if not p.exists():
        raise RecoveryError(f"{role} {p} does not exist", "check the path")
    if p.is_dir():
        raise RecoveryError(
            f"{role} {p} is a directory, not a SQLite file", "pass the .db file itself"
        )
    size = p.stat().st_size
    if size == 0:
        raise RecoveryError(f"{role} {p} is empty (0 bytes)", "pass a real SQLite database")
    with p.open("rb") as fh:
        head = fh.read(100)
    if not head.startswith(SQLITE_HEADER):
        raise RecoveryError(
            f"{role} {p} is not a SQLite database (bad header)", "pass a SQLite .db file"
        )
    if len(head) < 100:
        raise RecoveryError(
            f"{role} {p} is truncated ({size} bytes)", "restore it from a good copy"
        )
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise RecoveryError(
            f"{role} {p} is not a SQLite database (bad page size)", "pass a SQLite .db file"
        )
    page_count = int.from_bytes(head[28:32], "big")
    # the in-header size is only valid when the change counter equals version-valid-for
    header_size_valid = head[24:28] == head[92:96]
    wal, _ = sidecars(real_path(p))
    if (
        header_size_valid
        and page_count
        and size < page_size * page_count
        and not (wal.exists() and wal.stat().st_size)
    ):
        raise RecoveryError(
            f"{role} {p} is truncated ({size} bytes, header says {page_size * page_count})",
            "restore it from a good copy",
        )
    return p


def file_uri(path: Path, **params: str) -> str:
    """The ``file:`` URI of ``path`` (resolved, percent-quoted) with these query parameters
    (``mode=ro``, ``immutable=1`` …), for ``sqlite3.connect(uri=True)`` and ``ATTACH``."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{quote(str(path.resolve()))}" + (f"?{query}" if query else "")


_ro_copies: dict[tuple[str, int, int, int, int], Path] = {}


def _cleanup_ro_copies() -> None:
    for copy in _ro_copies.values():
        shutil.rmtree(copy.parent, ignore_errors=True)
    _ro_copies.clear()


def is_wal_file(p: Path) -> bool:
    """The header says WAL mode (bytes 18-19 = 2), whether or not a ``-wal`` file is beside it."""
    with p.open("rb") as fh:
        head = fh.read(20)
    return len(head) >= 20 and head[18] == 2


def readonly_uri(p: Path) -> str:
    """The URI that opens ``p`` read-only, committed WAL content included.

    ``mode=ro`` needs the ``-shm`` index of a WAL-mode file, and creates it when missing. In a
    folder we may not write (a read-only mount, another user's backups) that fails although no
    process has the file open (an open connection would keep ``-shm``), so:
    no ``-wal`` content → ``immutable=1`` (nothing to replay, nobody writing); otherwise the file
    and its ``-wal`` are copied to a private temporary folder and that copy is opened.
    """
    p = real_path(p)  # through a symlink, the -wal and -shm are beside the real file
    mark = file_identity(p)  # before the checks: a checkpoint after it shows in the mark
    uri = file_uri(p, mode="ro")
    wal, shm = sidecars(p)
    wal_mode = is_wal_file(p)
    if not (
        wal_mode and not shm.exists()
    ):  # a mode=ro open of a WAL file without -shm would create it
        try:
            probe = sqlite3.connect(uri, uri=True, timeout=5.0)
            try:
                probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return uri
            finally:
                probe.close()
        except sqlite3.OperationalError:
            if not wal_mode or shm.exists():  # not WAL mode, or -shm is there
                return uri  # let the caller report SQLite's own error
    if not wal.exists() or wal.stat().st_size == 0:
        if mark is not None:  # the first open's mark: see unchanged_while_read
            _immutable_marks.setdefault(str(p), mark)
        return file_uri(p, immutable="1")
    st, wst = p.stat(), wal.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, wst.st_size, wst.st_mtime_ns)
    copy = _ro_copies.get(key)
    if copy is None or not copy.exists():
        if not _ro_copies:
            atexit.register(_cleanup_ro_copies)
        folder = Path(tempfile.mkdtemp(prefix="recovery-ro-"))
        copy = folder / p.name
        shutil.copyfile(p, copy)
        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        _ro_copies[key] = copy
    return file_uri(copy, mode="ro")


def index_idle_wal(path: Path) -> sqlite3.Connection | None:
    """Keep the ``-shm`` index of a WAL-mode file whose ``-wal`` holds commits built, as the first
    connection of any application would build it, with a read-only connection returned open
    (None when there is no such ``-wal``, or it cannot be opened); the caller closes it.

    Without ``-shm`` (nobody has the file open) :func:`readonly_uri` would copy the database and
    its ``-wal`` to a private folder; with it, every open after the last connection closed
    rebuilds the index from the whole ``-wal``. With this connection open, read-only opens read
    the file in place, under SQLite's locks, and find the index built. Only for a file the caller
    opens read-write next anyway (the rollback's write window creates ``-shm`` too). The
    connection is read-only: closing, it can neither checkpoint nor delete ``-wal``, so no byte of
    the database or ``-wal`` changes. Where the index cannot be built (a folder we may not write,
    a holder in exclusive locking mode) nothing is done."""
    p = real_path(path)
    wal = sidecars(p)[0]
    try:
        if not wal.exists() or not wal.stat().st_size or not is_wal_file(p):
            return None
        conn = sqlite3.connect(file_uri(p, mode="ro"), uri=True, timeout=0.5)
    except (sqlite3.DatabaseError, OSError):
        return None
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError:
        conn.close()
        return None
    return conn


_immutable_marks: dict[str, tuple[int, ...]] = {}


def file_identity(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """What a write into the file or a rename over it changes: its device, inode, size, mtime
    and ctime, and SQLite's file change counter (header bytes 24-27, moved by every commit in
    rollback-journal mode, even within one clock tick). None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            counter = int.from_bytes(fh.read(28)[24:28].ljust(4, b"\0"), "big")
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, counter


def changed_since_immutable_open(path: str | os.PathLike[str]) -> bool:
    """True when :func:`readonly_uri` opened ``path`` with ``immutable=1`` (in this process, since
    :func:`forget_immutable_open`) and the file has been written since.

    ``immutable=1`` is chosen only when no process has the WAL-mode file open (no ``-shm``); SQLite
    then takes no locks and trusts the file not to change. An application that opens the file
    afterwards writes into ``-wal``, which such a reader never sees (a consistent, older instant),
    but its checkpoint writes pages into the main file under the reader: a torn read. The
    checkpoint changes the file's mtime and ctime, which this compares. Left open: a checkpoint
    within the file system's timestamp tick of an earlier write to the same file (the application
    was writing a moment before the open: it would still have had ``-shm`` then)."""
    p = real_path(Path(path))
    mark = _immutable_marks.get(str(p))
    return mark is not None and file_identity(p) != mark


def forget_immutable_open(path: str | os.PathLike[str]) -> None:
    """Start a new watch of ``path`` (see :func:`changed_since_immutable_open`)."""
    _immutable_marks.pop(str(real_path(Path(path))), None)


@contextmanager
def unchanged_while_read(paths: dict[str, str | os.PathLike[str]]) -> Iterator[None]:
    """Run a block of reads of ``paths`` (role → path) and refuse its result (exit 3, nothing
    written by it is kept by the caller) when one of them was opened ``immutable=1`` and another
    process wrote into it meanwhile (:func:`changed_since_immutable_open`)."""
    for p in paths.values():
        forget_immutable_open(p)
    yield
    for role, p in paths.items():
        if changed_since_immutable_open(p):
            raise RecoveryError(
                f"{role} {p} was changed by another process while it was read (nobody had it "
                "open when the read began, so SQLite could not keep the read consistent)",
                "run the command again: now that the application has the file open, the read is "
                "consistent",
                ExitCode.FAILED,
            )


class CommitWatch:
    """Whether any other connection or process has committed into a SQLite file since this object
    was made: ``PRAGMA data_version`` of a private read-only connection changes on every commit by
    any other connection (SQLite's own promise), and a checkpoint does not change it.

    ``path`` must be a file whose ``-shm`` already exists or may be created (a WAL-mode file open
    elsewhere, or one of ours): a ``mode=ro`` open of a WAL file creates a missing ``-shm``. Usable
    from any thread (one call at a time)."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(file_uri(path, mode="ro"), uri=True, check_same_thread=False)
        self._version = self.version()

    def version(self) -> int:
        """The file's data version as this connection sees it now."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def unchanged(self) -> bool:
        """True when nobody has committed into the file since this object was made."""
        return self.version() == self._version

    def close(self) -> None:
        self._conn.close()


def open_readonly(path: str | os.PathLike[str], role: str = "database") -> sqlite3.Connection:
    """Open a validated SQLite file read-only (``mode=ro``): it sees committed WAL content and
    can never write, checkpoint or truncate the file (see :func:`readonly_uri`)."""
    p = check_sqlite_file(path, role)
    try:
        conn = sqlite3.connect(readonly_uri(p), uri=True, timeout=5.0)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise RecoveryError(
            f"{role} {p} cannot be read: {exc}", "is it a corrupt or encrypted database?"
        ) from None
    return conn


def open_readwrite(
    path: str | os.PathLike[str], role: str = "database", timeout: float = 5.0
) -> sqlite3.Connection:
    """Open an existing, validated SQLite file for writing with explicit transactions."""
    p = check_sqlite_file(path, role)
    try:
        conn = sqlite3.connect(str(p), timeout=timeout, isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise RecoveryError(
            f"{role} {p} cannot be opened: {exc}", "is it a corrupt database?"
        ) from None
    return conn


@contextmanager
def readonly(path: str | os.PathLike[str], role: str = "database") -> Iterator[sqlite3.Connection]:
    conn = open_readonly(path, role)
    try:
        yield conn
    finally:
        conn.close()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's sha256 (hashlib's own read loop; it releases the GIL while it hashes). A digest
    :func:`remember_sha256` recorded for the file as it is now (same :func:`file_identity`, before
    and after the lookup) is returned without reading the file again."""
    coming = _promised.get(str(real_path(Path(path)))) if _promised else None
    if coming is not None and coming[1] != threading.get_ident():
        coming[0].wait(PROMISE_WAIT)  # another thread is reading these bytes: wait for its digest
    key = _digest_key(path) if _digests else None
    known = _digests.get(key) if key is not None else None
    if known is not None and _digest_key(path) == key:
        return known
    with open(path, "rb", buffering=0) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


_digests: dict[tuple[Any, ...], str] = {}
"""sha256 of files read whole by this process, keyed by real path and :func:`file_identity`."""


_promised: dict[str, tuple[threading.Event, int]] = {}
"""Files whose digest a thread of this process (its ident beside the event) is about to remember
(:func:`promise_sha256`)."""

PROMISE_WAIT = 60.0
"""How long :func:`sha256_file` waits for a promised digest before reading the file itself."""


@contextmanager
def promise_sha256(path: str | os.PathLike[str]) -> Iterator[None]:
    """While the block runs, :func:`sha256_file` of ``path`` in other threads waits for it (at
    most :data:`PROMISE_WAIT`), then takes the digest the block remembered, or reads the file
    itself when none was (the file changed, or the block did not read it). The promising thread
    itself never waits for its own promise: it reads the file."""
    key = str(real_path(Path(path)))
    done = threading.Event()
    mine = (done, threading.get_ident())
    _promised[key] = mine
    try:
        yield
    finally:
        if _promised.get(key) is mine:
            del _promised[key]
        done.set()


def _digest_key(path: str | os.PathLike[str]) -> tuple[Any, ...] | None:
    ident = file_identity(path)
    return None if ident is None else (str(real_path(Path(path))), *ident)


def remember_sha256(path: str | os.PathLike[str], identity: tuple[int, ...], digest: str) -> None:
    """Record ``digest`` as the sha256 of ``path`` while its identity is ``identity`` (taken before
    the bytes were read): kept only when the file still has that identity, so a write since the
    read never gets the old digest back."""
    if file_identity(path) == identity:
        _digests[(str(real_path(Path(path))), *identity)] = digest


HEADER_WRITE_STAMPS = ((18, 20), (24, 28), (40, 44), (92, 100))
"""Bytes of the 100-byte SQLite header that a copy may change without changing what the file
holds: the read/write format versions (18-19: 1 rollback journal, 2 WAL), the file change counter
(24-27), the schema cookie (40-43: a counter that tells other connections to re-read the schema;
the backup API moves it on every copy), and the version-valid-for number with the library version
that wrote last (92-99). Every page and every other header field (page size, page count, freelist,
encoding, schema format, ...) must be equal."""


def same_content_digest(
    original: str | os.PathLike[str], copy: str | os.PathLike[str], chunk: int = 1 << 20
) -> str | None:
    """The sha256 of ``original`` when ``copy`` holds the same bytes, apart from the header's
    :data:`HEADER_WRITE_STAMPS`; None when any other byte or the length differs.

    One pass reads both files side by side and hashes the very bytes it compared, so a digest
    returned vouches for the copy as read: whatever was proven of the bytes with that digest (a
    snapshot's ``integrity_check``) holds for every page of the copy. The digest is remembered
    for :func:`sha256_file` when ``original`` kept its identity through the read and had not been
    changed within :data:`SETTLED_NS` before it."""
    started = time.time_ns()
    before = file_identity(original)
    h = hashlib.sha256()
    with open(original, "rb", buffering=0) as a, open(copy, "rb", buffering=0) as b:
        if os.fstat(a.fileno()).st_size != os.fstat(b.fileno()).st_size:
            return None
        first = True
        while True:
            x, y = a.read(chunk), b.read(chunk)
            if x != y:
                if not first or len(x) != len(y) or len(x) < 100:
                    return None
                mx, my = bytearray(x), bytearray(y)
                for lo, hi in HEADER_WRITE_STAMPS:
                    mx[lo:hi] = my[lo:hi] = bytes(hi - lo)
                if mx != my:
                    return None
            if not x:
                break
            h.update(x)
            first = False
    digest = h.hexdigest()
    if before is not None and started - before[4] >= SETTLED_NS:
        remember_sha256(original, before, digest)
    return digest


SETTLED_NS = 2 * 10**9
"""How long before a read a file's last change (ctime) must lie for its digest to be remembered. A
write within the same timestamp tick as the change before it (coarse clock ticks; 1-2 s on some
file systems) leaves mtime and ctime as they were: with equal size and no SQLite commit it would
keep the file's :func:`file_identity`. Any write to a file settled longer than a tick moves its
ctime, which nobody can set back."""


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def consistent_copy(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], role: str = "database"
) -> Path:
    """Copy a (possibly live, WAL-mode) database with SQLite's online backup API.

    The copy includes every commit still in ``-wal``, is written beside ``dst`` under a temporary
    name, switched to rollback-journal mode (one self-contained file), fsynced and renamed into
    place, so ``dst`` is either absent or complete.
    """
    src_p = check_sqlite_file(src, role)
    dst_p = Path(dst)
    tmp = dst_p.with_name(f".{dst_p.name}.tmp-{os.getpid()}")
    for attempt in range(1, COPY_TRIES + 1):
        forget_immutable_open(src_p)
        _backup_into(src_p, dst_p, tmp, role)
        if not changed_since_immutable_open(src_p):
            break
        # an application opened the idle file and checkpointed into it under the copy: take it
        # again (the application now keeps -shm, so the next read is a locked, consistent one)
        tmp.unlink(missing_ok=True)
        if attempt == COPY_TRIES:
            raise RecoveryError(
                f"{role} {src_p} kept changing while it was copied ({COPY_TRIES} tries)",
                "run the command again when the application is idle or running steadily",
                ExitCode.FAILED,
            )
    return _publish_copy(tmp, dst_p)


def _publish_copy(tmp: Path, dst_p: Path) -> Path:
    """fsync the finished copy ``tmp``, then rename it to ``dst_p`` (and fsync the folder), so
    ``dst_p`` is either absent or complete."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    # a -wal, -shm or hot -journal left under the copy's name (a killed earlier copy or writer)
    # would be replayed into the copy by the next open: the copy is self-contained, so none may stay
    for side in (*sidecars(dst_p), dst_p.with_name(dst_p.name + "-journal")):
        side.unlink(missing_ok=True)
    os.replace(tmp, dst_p)
    fsync_dir(dst_p.parent)
    return dst_p


COPY_TRIES = 3
"""How many times :func:`consistent_copy` copies a file that an application started writing into
during an ``immutable=1`` read, before it gives up."""


def _backup_into(src_p: Path, dst_p: Path, tmp: Path, role: str) -> None:
    """SQLite's online backup of ``src_p`` into ``tmp`` (journal mode DELETE), not yet fsynced."""
    source = open_readonly(src_p, role)  # refuse an unreadable source before creating anything
    try:
        dst_p.parent.mkdir(parents=True, exist_ok=True)
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)
        target = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            # the temporary file is trusted only after the fsync and rename below (a failure
            # removes it): no journal and no syncs while it is written, the same bytes ~40% faster
            target.execute("PRAGMA journal_mode = OFF")
            target.execute("PRAGMA synchronous = OFF")
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    except (sqlite3.DatabaseError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise RecoveryError(
            f"could not copy {role} {src_p} to {dst_p}: {exc}",
            "check the file, the target folder and free disk space",
        ) from None
    finally:
        source.close()


WAL_HEADER, WAL_FRAME_HEADER = 32, 24
WAL_INDEX_VERSION = 3007000


@dataclass(frozen=True)
class WalIndexHeader:
    """The fields of the WAL-index header (the start of ``-shm``) that say which frames of
    ``-wal`` make up the newest committed snapshot: frames 1..``max_frame`` of the WAL whose
    header carries ``salt``, a database of ``pages`` pages of ``page_size`` bytes."""

    max_frame: int
    pages: int
    page_size: int
    salt: bytes

    def wal_bytes(self) -> int:
        """Length of the WAL prefix that holds those frames (0: nothing to replay)."""
        if not self.max_frame:
            return 0
        return WAL_HEADER + self.max_frame * (WAL_FRAME_HEADER + self.page_size)


def wal_index_header(shm_fd: int) -> WalIndexHeader | None:
    """Read the WAL-index header through ``shm_fd`` (an open ``-shm``); None when it is
    uninitialised, of another version, or its two copies differ (a writer or a recovery is
    changing it).

    SQLite keeps two copies of the 48-byte header (native byte order) and a reader trusts them
    only when they are equal; only a connection holding the WAL write lock (or recovering the
    index, which takes it too) changes them, so a caller holding that lock reads a stable one.
    The caller keeps ``shm_fd`` open while any connection of this process has the file open:
    closing a descriptor drops every POSIX lock the process holds on that file, SQLite's too."""
    import struct

    raw = os.pread(shm_fd, 96, 0)
    if len(raw) < 96 or raw[:48] != raw[48:96]:
        return None
    version, _, _, is_init, _, size = struct.unpack_from("=IIIBBH", raw, 0)
    max_frame, pages = struct.unpack_from("=II", raw, 16)
    if version != WAL_INDEX_VERSION or is_init != 1:
        return None
    page_size = 65536 if size == 1 else size
    return WalIndexHeader(max_frame, pages, page_size, raw[32:40])


def _send_all(src_fd: int, dst_fd: int, length: int | None) -> int:
    """Copy ``length`` bytes (None: up to end of file) from the start of ``src_fd`` to
    ``dst_fd`` inside the kernel (``sendfile``: no pass through Python's memory)."""
    offset = 0
    while length is None or offset < length:
        want = (1 << 30) if length is None else min(1 << 30, length - offset)
        sent = os.sendfile(dst_fd, src_fd, offset, want)
        if sent == 0:
            break
        offset += sent
    return offset


def held_copy(
    src: Path,
    dst: str | os.PathLike[str],
    pages: int,
    role: str,
    db_fd: int,
    shm_fd: int | None,
) -> bool:
    """Copy ``src`` to ``dst`` with the kernel's file copy; False (nothing left behind) where it
    cannot prove the result is the snapshot of ``pages`` pages, so the caller takes the backup API.

    **Precondition: the caller holds the write lock of ``src`` (``BEGIN IMMEDIATE`` on an open
    connection, whose snapshot has ``pages`` pages) and an OFD read lock on its shared-lock
    range** (:class:`recovery.restore.livewindow.WriteWindow`), and passes its open descriptors
    of the file (``db_fd``) and of ``-shm`` (``shm_fd``; None when there is none): the file and
    ``-shm`` are read only through them, because closing any descriptor of a file drops every
    POSIX lock this process holds on it, the write lock of our own connection included.
    Then no other process can change what the copied bytes say (docs/RELIABILITY.md, "The safety
    copy under the write window"):

    * WAL mode: no commit can append a frame, nor a restart rewrite the WAL from its start (both
      need the write lock; FULL/RESTART/TRUNCATE checkpoints without it degrade to PASSIVE). A
      PASSIVE checkpoint may copy frames into the main file while it is read, but only frames
      ``<= max_frame`` of the WAL-index, and every one of those pages is replayed from the WAL
      copy over whatever version of it the main-file copy caught; the WAL is deleted or truncated
      only under an exclusive lock, which our OFD read lock refuses everyone. The WAL is copied
      up to ``max_frame`` (frames after it are a rolled-back spill or an older generation) and
      folded into the copy by SQLite itself (checkpoint, then journal mode DELETE), which must
      find exactly ``max_frame`` valid frames (salts and checksums) and ``pages`` pages.
    * Rollback-journal mode (no ``-wal``): a commit needs the EXCLUSIVE lock, which our locks
      refuse; a ``-journal`` with content (a hot journal of a crashed writer) sends the copy to
      the backup API, which recovers it under SQLite's own rules.

    The result is written under a temporary name, fsynced and renamed (as :func:`consistent_copy`).
    """
    src = real_path(src)  # SQLite keeps -wal and -shm beside the real file
    dst_p = Path(dst)
    tmp = dst_p.with_name(f".{dst_p.name}.tmp-{os.getpid()}")
    tmp_wal, tmp_shm = sidecars(tmp)
    wal, _ = sidecars(src)
    journal = src.with_name(src.name + "-journal")
    if journal.exists() and journal.stat().st_size:
        return False
    index: WalIndexHeader | None = None
    if wal.exists():
        index = wal_index_header(shm_fd) if shm_fd is not None else None
        if index is None:
            return False
    elif os.pread(db_fd, 20, 0)[18:19] == b"\x02":  # WAL mode, yet no -wal beside it
        return False
    leftovers = (tmp, tmp_wal, tmp_shm, tmp.with_name(tmp.name + "-journal"))
    dst_p.parent.mkdir(parents=True, exist_ok=True)
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    try:
        if index is not None and index.max_frame:
            with open(wal, "rb") as w, open(tmp_wal, "wb") as out:
                head = os.pread(w.fileno(), WAL_HEADER, 0)
                if head[16:24] != index.salt:
                    raise _NotProven("the WAL's salts are not the WAL-index's")
                if _send_all(w.fileno(), out.fileno(), index.wal_bytes()) != index.wal_bytes():
                    raise _NotProven("the WAL is shorter than the WAL-index says")
        with open(tmp, "wb") as out:
            _send_all(db_fd, out.fileno(), None)
        _fold(tmp, index, pages)
    except _NotProven:
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return False
    except (sqlite3.DatabaseError, OSError) as exc:
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        raise RecoveryError(
            f"could not copy {role} {src} to {dst_p}: {exc}",
            "check the file, the target folder and free disk space",
        ) from None
    _publish_copy(tmp, dst_p)
    return True


class _NotProven(Exception):
    """The kernel copy could not be shown to be the locked snapshot (the caller copies again)."""


def _fold(tmp: Path, index: WalIndexHeader | None, pages: int) -> None:
    """Replay the copied WAL into ``tmp`` and make it one self-contained rollback-journal file;
    raise :class:`_NotProven` unless SQLite found every frame of the WAL-index and ``pages``
    pages. Its own syncs are off: the caller fsyncs the finished file."""
    conn = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        if index is not None:
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if (busy, frames, done) != (0, index.max_frame, index.max_frame):
                raise _NotProven(f"the WAL copy replays {frames} of {index.max_frame} frames")
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        got = conn.execute("PRAGMA page_count").fetchone()[0]
        if mode != "delete" or got != pages or (index is not None and got != index.pages):
            raise _NotProven(f"the copy has {got} pages, the snapshot {pages}")
    finally:
        conn.close()


def write_lock_held(path: str | os.PathLike[str], timeout: float = 0.5) -> bool:
    """True when another connection holds (or keeps taking) the write lock on ``path``.

    Probes with ``BEGIN IMMEDIATE`` and a short busy timeout, then rolls back: nothing is written.
    """
    p = check_sqlite_file(path)
    if is_wal_file(p) and not sidecars(p)[1].exists():
        # WAL mode without -shm: no connection has the file open (every one keeps -shm). Probing
        # would make ours the last connection, whose close checkpoints and deletes -wal.
        return False
    conn = sqlite3.connect(str(p), timeout=timeout, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return True
        raise RecoveryError(f"cannot probe {p} for locks: {exc}") from None
    finally:
        conn.close()


def wait_for_write_lock(conn: sqlite3.Connection, seconds: float) -> None:
    """``BEGIN IMMEDIATE`` on ``conn``, retrying SQLITE_BUSY for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise RecoveryError(
                    f"the database stayed locked by another writer for {seconds:.0f}s",
                    "stop the application (or the other writer) and run the command again",
                    ExitCode.REFUSED,
                ) from None
            time.sleep(0.1)


def real_path(path: Path) -> Path:
    """``path`` with every symlink resolved when it goes through one (else ``path`` unchanged):
    SQLite keeps ``-wal``/``-shm`` beside the real file, and a restore must replace the real file,
    leaving the link a link."""
    real = Path(os.path.realpath(path))
    return real if real != Path(os.path.abspath(path)) else path


def copy_file_identity(src: Path, dst: Path) -> None:
    """Give ``dst`` the owner, group, permission bits and extended attributes (POSIX ACLs are
    ``system.posix_acl_*`` attributes) of ``src``, so a restored file is the same file to the
    application: run as root, a DB owned ``nobody:nogroup 0660`` must not come back ``root 0644``.
    Ownership needs privilege: without it (not root) the owner is kept as it is and the rest copied."""
    st = os.stat(src)
    try:
        os.chown(dst, st.st_uid, st.st_gid)
    except PermissionError:
        pass
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    if not hasattr(os, "listxattr"):  # not Linux
        return
    try:
        names = os.listxattr(src)
    except OSError:  # no xattr support on this filesystem
        return
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name))
        except OSError:
            continue  # e.g. security.* without the privilege, or unsupported on dst's filesystem


def sidecars(path: Path) -> tuple[Path, Path]:
    """The ``-wal`` and ``-shm`` files SQLite keeps beside a WAL-mode database."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def open_pair(old: str | os.PathLike[str], new: str | os.PathLike[str]) -> sqlite3.Connection:
    """A scratch in-memory connection with ``old`` and ``new`` attached read-only, so that set-based
    SQL can join the two databases (ATTACH, anti-joins) without writing either."""
    old_p = check_sqlite_file(old, "backup")
    new_p = check_sqlite_file(new, "live database")
    for p, role in ((old_p, "backup"), (new_p, "live database")):
        open_readonly(p, role).close()  # validates with a clear message before ATTACH
    conn = sqlite3.connect("file::memory:", uri=True)
    try:
        conn.execute("ATTACH DATABASE ? AS old", (readonly_uri(old_p),))
        conn.execute("ATTACH DATABASE ? AS new", (readonly_uri(new_p),))
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise RecoveryError(f"cannot open {old_p} and {new_p} together: {exc}") from None
    return conn
