"""Who else has the live database open: every process that could commit into it while we work.

A probe for the write lock only sees a writer that is inside a transaction at that instant; a web
app's idle pool connection holds no lock and keeps writing after a restore, into the replaced
(unlinked) file, where its commits vanish. So a holder is any other process with

* an open file descriptor on the DB, its ``-wal`` or its ``-shm`` (``/proc/<pid>/fd``, compared by
  device and inode so that hard links, symlinks and bind mounts name the same file), or
* a POSIX lock on the bytes SQLite's unix VFS uses: the WAL-index locks in ``-shm`` (bytes 120-127:
  write, checkpoint, recover, five read marks; byte 128: the "DMS" shared lock every connection
  holds while it has the WAL index open) and the database file's lock bytes (``PENDING_BYTE``
  0x40000000, reserved, and the 510-byte shared range). ``F_GETLK`` reports the owner of a
  conflicting lock even when that process is in another pid namespace (a container): its pid is
  then 0, and it is reported as such.

``F_GETLK`` never reports a lock of the calling process (POSIX locks of one process do not
conflict), so our own connections are never holders. Closing *any* descriptor of a file drops all
of the process's POSIX locks on it, which would silently release locks SQLite holds for a
connection of this process; so a file that this process already has open is probed through that
existing descriptor and never opened and closed here.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from pathlib import Path

from recovery.engine.base import Holder

__all__ = [
    "Holder",
    "attached_elsewhere",
    "describe_holders",
    "find_holders",
    "fd_holders",
    "lock_holders",
]

WALINDEX_LOCK_OFFSET = 120
"""First lock byte of the WAL index in ``-shm`` (SQLite ``unix_shm``: ``UNIX_SHM_BASE``)."""
WALINDEX_LOCK_BYTES = 9
"""8 WAL-index locks (write, checkpoint, recover, 5 read marks) + the DMS byte at 128."""
PENDING_BYTE = 0x40000000


class Flock(ctypes.Structure):
    """``struct flock`` as the C library lays it out (padding included)."""

    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    ]


def _files_of(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def _identities(paths: list[Path]) -> dict[tuple[int, int], str]:
    out = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        out[(st.st_dev, st.st_ino)] = p.name
    return out


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = " ".join(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a)
    return "".join(ch if ch.isprintable() else " " for ch in text)[:200]


def _own_fds(ident: tuple[int, int]) -> int | None:
    """A descriptor this process already has on the file ``ident``, or None."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for name in names:
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident:
            return int(name)
    return None


def fd_holders(db: Path) -> dict[int, set[str]]:
    """Other processes with an open descriptor on ``db``, ``-wal`` or ``-shm``: pid → file names."""
    wanted = _identities(_files_of(db))
    me = os.getpid()
    found: dict[int, set[str]] = {}
    if not wanted:
        return found
    try:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            name = wanted.get((st.st_dev, st.st_ino))
            if name is not None:
                found.setdefault(pid, set()).add(name)
    return found


def _lock_owner(fd: int, start: int) -> int | None:
    """The pid of a lock conflicting with a write lock on byte ``start`` of ``fd`` (0: another pid
    namespace), or None when there is none."""
    probe = Flock(fcntl.F_WRLCK, os.SEEK_SET, start, 1, 0)
    try:
        res = Flock.from_buffer_copy(fcntl.fcntl(fd, fcntl.F_GETLK, bytes(probe)))
    except OSError:
        return None
    return None if res.l_type == fcntl.F_UNLCK else int(res.l_pid)


WALINDEX_DMS_BYTE = WALINDEX_LOCK_OFFSET + 8
"""The WAL index's "DMS" byte: every connection that has the file open in WAL mode holds a shared
lock on it for as long as it keeps ``-shm`` mapped."""


def attached_elsewhere(shm_fd: int) -> bool:
    """Another process still has the database whose ``-shm`` is open as ``shm_fd`` open in WAL
    mode (it holds the DMS byte's shared lock), so it may still commit into that file."""
    return _lock_owner(shm_fd, WALINDEX_DMS_BYTE) is not None


def lock_holders(db: Path, ignore_ofd: bool = False) -> dict[int, set[str]]:
    """Other processes (pid, 0 for another pid namespace) holding a SQLite lock byte of ``db`` or
    of its WAL index (``-shm``): pid → ``"<file> (lock)"``. Each byte is probed on its own, so
    holders of different bytes (the writer, each reader's read mark) are each seen. An OFD lock
    (``F_OFD_SETLK``; reported with pid -1) conflicts even with this process's probe, so
    ``ignore_ofd`` leaves them out while this process holds one (:mod:`recovery.restore.livewindow`)."""
    found: dict[int, set[str]] = {}
    shm = db.with_name(db.name + "-shm")
    ranges = [
        (shm, WALINDEX_LOCK_OFFSET, WALINDEX_LOCK_BYTES),
        (db, PENDING_BYTE, 3),
    ]  # pending, reserved, and the shared range (locked whole)
    for path, start, count in ranges:
        try:
            st = os.stat(path)
        except OSError:
            continue
        fd = _own_fds((st.st_dev, st.st_ino))
        opened = fd is None
        if opened:  # this process has no descriptor (hence no lock) on it: safe to open and close
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
        assert fd is not None
        try:
            for offset in range(count):
                owner = _lock_owner(fd, start + offset)
                if owner is not None and not (ignore_ofd and owner == -1):
                    found.setdefault(owner, set()).add(f"{path.name} (lock)")
        finally:
            if opened:
                os.close(fd)
    return found


def find_holders(db: Path, ignore_ofd: bool = False) -> list[Holder]:
    """Every other process that has ``db`` (or its ``-wal``/``-shm``) open or locked, by pid
    (-1: an open-file-description lock, whose owner the kernel does not tell)."""
    merged: dict[int, set[str]] = {}
    for source in (fd_holders(db), lock_holders(db, ignore_ofd)):
        for pid, names in source.items():
            merged.setdefault(pid, set()).update(names)
    merged.pop(os.getpid(), None)
    return [
        Holder(pid, _command_line(pid) if pid > 0 else "", sorted(names))
        for pid, names in sorted(merged.items())
    ]


def describe_holders(db: Path, holders: list[Holder]) -> str:
    """One line naming each holder."""
    return f"{db} is in use (open or locked) by {len(holders)} other process(es): " + "; ".join(
        h.describe() for h in holders
    )
