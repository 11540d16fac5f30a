"""Uploaded files: the uploads manifest and safe path handling.

A stored path is only ever used after :func:`safe_path` has proved it relative, free of ``..``
and, with symlinks resolved, inside the uploads root.

The uploads folder is writable by other local accounts, which can swap a folder for a symlink at
any instant. So no upload is ever opened by a path string: :func:`open_nofollow` opens the root as
a directory descriptor and every folder below it with ``O_DIRECTORY | O_NOFOLLOW`` relative to the
previous one, the file itself ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block it), and accepts
only a regular file; copies and hashes read from that descriptor. The walk (:func:`_scan`) enters
folders the same way. :func:`write_under` is the same discipline for files written under the root.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from recovery.errors import RecoveryError
from recovery.model.kinds import CARRIED_KINDS, KIND_COLUMN

if TYPE_CHECKING:
    from recovery.engine.base import Connection

T = TypeVar("T")
R = TypeVar("R")
UNRECORDED_DIR = "_unrecorded"  # bundle files/ folder for files no record names


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    mtime: float

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "mtime": self.mtime}


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
SWAPPED_HINT = "stop whatever changes the uploads folder and run the command again; nothing was copied or overwritten"


def _swapped(path: str, exc: OSError | None = None) -> RecoveryError:
    why = (
        "became a symbolic link or a special file"
        if exc is None or exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)
        else f"changed ({os.strerror(exc.errno or 0)})"
    )
    return RecoveryError(
        f"{path} {why} while the uploads were being read (no symbolic link is followed)",
        SWAPPED_HINT,
    )


def _parts(rel: str) -> list[str]:
    """The folder names of a relative path (``.`` and empty pieces dropped); ``..`` is refused."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RecoveryError(f"{rel!r} leads out of its folder", SWAPPED_HINT)
    return parts


def open_dir_nofollow(root: str, rel: str = "", create: bool = False) -> int:
    """A descriptor of folder ``root/rel``: ``root`` (a real path) opened as a directory, then each
    folder of ``rel`` with ``O_DIRECTORY | O_NOFOLLOW`` relative to the previous one, so a symlink
    at any level fails instead of being followed. ``create``: missing folders are made (mode 0755
    under the umask, owner and group of the folder they are made in)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for name in _parts(rel):
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                _own_like(nxt, fd)
            os.close(fd)
            fd = nxt
    except OSError as exc:
        os.close(fd)
        raise _swapped(os.path.join(root, rel), exc) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_nofollow(path: str | os.PathLike[str], root: str | os.PathLike[str] = "/") -> int:
    """A read-only descriptor of the regular file ``path`` (a real path inside ``root``), opened
    without following a symbolic link at any level below ``root``: a symlink, a FIFO or anything
    but a regular file there now is refused with one :class:`RecoveryError`."""
    path_s, root_s = os.fspath(path), os.fspath(root)
    prefix = root_s.rstrip("/") + "/"
    if not path_s.startswith(prefix):
        raise RecoveryError(f"{path_s} is not inside {root_s}", SWAPPED_HINT)
    folder, _, name = path_s[len(prefix) :].rpartition("/")
    dfd = open_dir_nofollow(root_s, folder)
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
    except OSError as exc:
        raise _swapped(path_s, exc) from None
    finally:
        os.close(dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _swapped(path_s)
    return fd


def digest_fd(fd: int) -> tuple[str, int, int]:
    """(sha256, size, mode bits) of an open regular file, read from its start."""
    h = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while block := os.read(fd, 1 << 20):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size, stat.S_IMODE(os.fstat(fd).st_mode)


def sha256_bytes_of(path: str | os.PathLike[str], root: str | os.PathLike[str] = "/") -> str:
    """An upload's sha256, read through :func:`open_nofollow` (``path`` is a real path inside
    ``root``). One name for it, so relink's reads of uploads can be counted in tests."""
    fd = open_nofollow(path, root)
    try:
        return digest_fd(fd)[0]
    finally:
        os.close(fd)


def _own_like(fd: int, folder_fd: int) -> None:
    """Give ``fd`` the owner and group of the folder it was made in (the app's user, when we run
    as root); without the right to (not root) it stays ours."""
    st = os.fstat(folder_fd)
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except PermissionError:
        pass


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def sane_mode(recorded: object) -> int:
    """The mode of a file written under the uploads: the source's recorded permission bits without
    set-id, sticky or world-write bits, else 0644 under the umask."""
    if isinstance(recorded, int) and not isinstance(recorded, bool) and 0 <= recorded <= 0o7777:
        return recorded & 0o775
    return 0o644 & ~_umask()


def write_under(
    root: str,
    rel: str,
    source: str | os.PathLike[str],
    expect_sha256: str | None,
    mode: int,
    source_root: str | os.PathLike[str] = "/",
) -> bool:
    """Put a copy of ``source`` (a real path, opened by :func:`open_nofollow` under
    ``source_root``) at ``root/rel`` without following a symbolic link at any level and without
    ever replacing a file: folders are walked (and made) by descriptor, the copy is written to a
    new temporary name in the target folder (``O_CREAT | O_EXCL | O_NOFOLLOW``), fsynced, given the
    folder's owner and group and ``mode``, then hard-linked to its name (which fails if anything
    is there) and the temporary name removed. Returns False when the same bytes are already there.
    Refuses (leaving nothing) when the bytes copied do not hash to ``expect_sha256``."""
    folder, _, name = rel.strip("/").rpartition("/")
    if name in ("", ".", ".."):
        raise RecoveryError(f"{rel!r} names no file", SWAPPED_HINT)
    dfd = open_dir_nofollow(root, folder, create=True)
    target = os.path.join(root, rel)
    try:
        try:
            os.stat(name, dir_fd=dfd, follow_symlinks=False)
            present = True
        except FileNotFoundError:
            present = False
        if present:
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
            except OSError:
                raise RecoveryError(
                    f"{target} appeared while relinking (not a regular file)",
                    "run relink again; nothing was overwritten",
                ) from None
            try:
                same = stat.S_ISREG(os.fstat(fd).st_mode) and digest_fd(fd)[0] == expect_sha256
            finally:
                os.close(fd)
            if same:
                return False
            raise RecoveryError(
                f"{target} appeared while relinking", "run relink again; nothing was overwritten"
            )
        tmp = f".{name}.relink-{os.getpid()}-{os.urandom(4).hex()}.tmp"  # a name nobody can plant ahead
        src = open_nofollow(source, source_root)
        try:
            out = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dfd,
            )
        except FileExistsError:
            os.close(src)
            raise RecoveryError(
                f"{target}: its temporary name appeared while relinking",
                "run relink again; nothing was overwritten",
            ) from None
        except BaseException:
            os.close(src)
            raise
        try:
            h = hashlib.sha256()
            try:
                while block := os.read(src, 1 << 20):
                    h.update(block)
                    view = memoryview(block)
                    while view:
                        view = view[os.write(out, view) :]
                _own_like(out, dfd)
                os.fchmod(out, mode)
                os.fsync(out)
            finally:
                os.close(out)
                os.close(src)
            if expect_sha256 is not None and h.hexdigest() != expect_sha256:
                raise RecoveryError(
                    f"bundle copy {source} changed while it was being restored",
                    "extract the bundle again; nothing was overwritten",
                )
            try:
                os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            except FileExistsError:
                raise RecoveryError(
                    f"{target} appeared while relinking",
                    "run relink again; nothing was overwritten",
                ) from None
            except OSError:  # no hard links on this filesystem: rename, after a last look
                try:
                    os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    raise RecoveryError(
                        f"{target} appeared while relinking",
                        "run relink again; nothing was overwritten",
                    )
                except FileNotFoundError:
                    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except FileNotFoundError:
                pass
        os.fsync(dfd)
        return True
    finally:
        os.close(dfd)


def _stored_ok(stored: object) -> bool:
    """The textual rules of :func:`safe_path`: a non-empty relative POSIX path without ``..``,
    NUL, backslash or a leading ``~``."""
    if not isinstance(stored, str) or not stored or "\x00" in stored or "\\" in stored:
        return False
    # As PurePosixPath sees it: absolute when it starts with "/"; its parts are the "/"-separated
    # pieces (empty ones and "." dropped), so ".." is a part exactly when it is a piece.
    return not (stored.startswith(("/", "~")) or ".." in stored.split("/"))


def _resolve_str(path: str) -> str:
    """``Path(path).resolve()`` on a string: symlinks resolved (non-strict), and a symlink loop
    raises RuntimeError as pathlib does."""
    for _ in range(3):
        try:
            real = os.path.realpath(path)
            break
        except (
            OSError
        ) as exc:  # a symlink lstat saw was gone before readlink: the path changed under us
            changed = exc
    else:
        raise _swapped(path, changed)
    try:
        os.stat(real)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RuntimeError(f"Symlink loop from {real!r}") from None
    return real


class SafeRoot:
    """:func:`safe_path` for many paths under one root, resolved once (symlinks in every stored
    path are still resolved, each time it is asked)."""

    def __init__(self, root: Path):
        self.real = _resolve_str(os.fspath(root))
        self.prefix = self.real.rstrip("/") + "/"

    def __call__(self, stored: object) -> Path | None:
        if not _stored_ok(stored):
            return None
        candidate = _resolve_str(self.prefix + stored)  # type: ignore[operator]  # realpath drops "." and "//"
        if candidate != self.real and not candidate.startswith(self.prefix):
            return None
        return Path(candidate)


def safe_path(root: Path, stored: str) -> Path | None:
    """The real file a stored relative path names under ``root``, or None when it is unsafe
    (absolute, contains ``..``, a NUL, or resolves — symlinks included — outside the root)."""
    if not _stored_ok(stored):
        return None
    return SafeRoot(root)(stored)


FolderMark = tuple[int, int, int, int]
"""A folder's device, inode, mtime and ctime (ns): what says its entries did not change."""
Folders = dict[str, tuple[FolderMark, tuple[str, ...], tuple[str, ...]]]
"""What a walk saw of each folder it listed, by its relative path with a trailing ``/`` (``""``
for the root): the folder's stat taken right before its entries were listed, the names of its
entries that are not folders and of its folders, each sorted."""


def _scan(
    under: SafeRoot,
    hashes: dict[str, str] | None = None,
    known: Callable[[str, os.stat_result], str | None] | None = None,
    folders: Folders | None = None,
    reuse: tuple[Folders, int] | None = None,
) -> list[tuple[str, str, os.stat_result]]:
    """(relative path, real path, stat) of every regular file under ``under``'s root that resolves
    inside it, sorted as :func:`os.walk` with sorted names gives them (a folder's files, then its
    folders). Symlinked folders are not entered; a symlink is resolved and kept only when it leads
    to a regular file inside the root. A plain file in a folder reached without symlinks is its own
    real path, so only symlinks need resolving (one ``lstat`` a file otherwise).

    ``hashes``: filled with the sha256 of every plain file (relative path → digest), each read
    through the descriptor of the folder being walked (``O_NOFOLLOW``, as :func:`open_nofollow`
    would open it, without opening every folder from the root again) and kept only when the file
    opened is the one listed (same device and inode, still a regular file) with the stat the
    walk records for it. ``known(rel, stat)``: a digest already known for the file the walk
    lists with that stat (then it is not read), or None. ``folders``: filled with what the walk
    saw of each folder (:data:`Folders`).

    ``reuse``: (an earlier walk's ``folders``, a cutoff in ns): a folder whose device, inode, mtime
    and ctime (ns) are what that walk saw, both older than the cutoff, holds the entries it listed
    then — adding, removing or renaming an entry moves a folder's mtime and ctime, and the cutoff
    keeps a change made in the same timestamp tick as that listing from hiding — so its entries are
    taken from there and only ``lstat``-ed again, by path (metadata only: every read of a file's
    bytes still goes through descriptors opened without following a symlink). Any other folder
    (changed, new, too recent, not a folder now) is listed again by descriptor; each folder below
    it is again taken from there when it is unchanged itself. The result is the list a new walk
    would give."""
    out: list[tuple[str, str, os.stat_result]] = []
    prefix = under.prefix

    def hashed(dfd: int | None, name: str, rel: str, st: os.stat_result) -> os.stat_result:
        """``st``, or the file's stat taken right before its sha256 was read into ``hashes`` (a
        change while it is read moves its mtime/ctime past that stat, so nothing later takes the
        digest for the changed file: :meth:`UploadsIndex.adopt_hashes`). ``dfd``: the folder's
        descriptor (None: the file is opened from the root, folder by folder)."""
        try:
            fd = (
                os.open(name, _FILE_FLAGS, dir_fd=dfd)
                if dfd is not None
                else open_nofollow(prefix + rel, under.real)
            )
        except (OSError, RecoveryError):
            return st
        try:
            now = os.fstat(fd)
            if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                return st
            assert hashes is not None
            hashes[rel] = digest_fd(fd)[0]
            return now
        finally:
            os.close(fd)

    def entry(dfd: int | None, name: str, rel: str, st: os.stat_result) -> None:
        """A folder entry that is not a folder, with its ``lstat``: listed as the walk lists it."""
        if stat.S_ISREG(st.st_mode):
            if hashes is not None:
                digest = known(rel, st) if known is not None else None
                if digest is None:
                    st = hashed(dfd, name, rel, st)
                else:
                    hashes[rel] = digest
            out.append((rel, prefix + rel, st))
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = under(rel)
            except RuntimeError:  # a symlink loop: no file there
                return
            if target is None:
                return
            try:
                st = os.stat(target)
            except OSError:
                return
            if stat.S_ISREG(st.st_mode):
                out.append((rel, os.fspath(target), st))

    old, cutoff = reuse if reuse is not None else ({}, 0)

    def unchanged(relprefix: str, path: str, dir_fd: int | None) -> os.stat_result | None:
        """The folder's stat now (an ``lstat`` of ``path``, relative to ``dir_fd`` when given),
        when ``old`` holds its listing and it has not changed since (same device, inode, mtime
        and ctime, both older than the cutoff); else None."""
        seen = old.get(relprefix)
        if seen is None or seen[0][2] >= cutoff or seen[0][3] >= cutoff:
            return None
        try:
            st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None
        return st if stat.S_ISDIR(st.st_mode) and _same_folder(seen[0], st) else None

    def walk(dfd: int, relprefix: str) -> None:
        try:
            seen = os.fstat(dfd)  # before the listing: a change after it moves mtime/ctime
            with os.scandir(dfd) as it:
                entries = sorted(it, key=_entry_name)
        except OSError:
            return
        dirs: list[str] = []
        names: list[str] = []
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(e.name)
                continue
            names.append(e.name)
            rel = relprefix + e.name
            if not _stored_ok(rel):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            entry(dfd, e.name, rel, st)
        if folders is not None:
            folders[relprefix] = (_folder_mark(seen), tuple(names), tuple(dirs))
        for name in dirs:
            sub = relprefix + name + "/"
            # a folder swapped for a symlink since it was listed is not entered
            descend(sub, unchanged(sub, name, dfd), partial(os.open, name, _DIR_FLAGS, dir_fd=dfd))

    def listed(relprefix: str, now: os.stat_result) -> None:
        """A folder :func:`unchanged` vouches for: its entries as ``old`` lists them, each
        ``lstat``-ed again by path; its folders likewise, or listed again when they changed."""
        _, names, dirs = old[relprefix]
        for name in names:
            rel = relprefix + name
            if not _stored_ok(rel):
                continue
            try:
                st = os.lstat(prefix + rel)
            except OSError:
                continue
            entry(None, name, rel, st)
        if folders is not None:
            folders[relprefix] = (_folder_mark(now), names, dirs)
        for name in dirs:
            sub = relprefix + name + "/"
            descend(  # its lstat without a trailing "/", its descriptor from the root: no symlink
                sub,  # on the way is followed
                unchanged(sub, prefix + relprefix + name, None),
                partial(open_dir_nofollow, under.real, sub),
            )

    def descend(relprefix: str, now: os.stat_result | None, opener: Callable[[], int]) -> None:
        """The folder ``relprefix``: taken from ``old`` when :func:`unchanged` gave its stat
        (``now``), else listed through the descriptor ``opener`` gives (not entered when that
        fails)."""
        if now is not None:
            listed(relprefix, now)
            return
        try:
            fd = opener()
        except (RecoveryError, OSError):
            return
        try:
            walk(fd, relprefix)
        finally:
            os.close(fd)

    descend("", unchanged("", under.real, None), partial(os.open, under.real, _DIR_FLAGS))
    return out


def _folder_mark(st: os.stat_result) -> FolderMark:
    """What a walk keeps of a folder's stat (four ints, not the whole result: memory per folder)."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _same_folder(a: FolderMark, b: os.stat_result) -> bool:
    return a == _folder_mark(b)


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


class UploadsIndex:
    """The uploads folder as one walk saw it: every regular file by relative path (as
    :func:`_scan` finds them), with its real path and stat, and each file's sha256 read at most
    once. Made for one operation, so a big folder is walked once instead of once per question,
    and a stored path is checked without a ``realpath`` per path.

    :meth:`resolve` answers as :func:`safe_path` does: a stored path the walk listed is a plain
    relative path reached through real folders (its real path is known, and it is a regular
    file); any other stored path — a missing file, a path through a symlinked folder, one spelled
    with ``./`` or ``//`` — is resolved on disk, symlinks included, exactly as
    :func:`safe_path` resolves it."""

    RACY_NS = 2_000_000_000
    """A hash from an earlier walk is taken only for a file whose change time is at least this
    much older than that walk's start (:meth:`_known_from`)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        hash_all: bool = False,
        earlier: UploadsIndex | None = None,
    ):
        """``hash_all``: read every plain file's sha256 during the walk, through the folder
        descriptor the walk holds (for an operation that needs nearly every hash: relink and its
        uploads state); otherwise each file is read when its hash is first asked for.
        ``earlier``: a walk of the same folder made before (a rollback makes one while its
        re-import runs): the folders it proves unchanged are not listed again, only their entries
        ``lstat``-ed (:func:`_scan`'s ``reuse``, under the same rule as its hashes); with
        ``hash_all``, its hashes are taken for the files it proves unchanged
        (:meth:`_known_from`), every other file is read."""
        self.under = SafeRoot(Path(root))
        self.real = self.under.real
        self.started_ns = time.time_ns()
        self._sha: dict[str, str] = {}
        self.folders: Folders = {}
        same = earlier is not None and earlier.real == self.real
        known = self._known_from(earlier) if hash_all and same and earlier is not None else None
        reuse = (
            (earlier.folders, earlier.started_ns - self.RACY_NS)
            if same and earlier is not None and earlier.folders
            else None
        )
        found = _scan(self.under, self._sha if hash_all else None, known, self.folders, reuse)
        self.files: dict[str, tuple[str, os.stat_result]] = {
            rel: (real, st) for rel, real, st in found
        }

    def safe(self, stored: object) -> bool:
        """``safe_path`` would accept ``stored``."""
        return isinstance(stored, str) and (stored in self.files or self.under(stored) is not None)

    def resolve(self, stored: object) -> Path | None:
        """The real path ``stored`` names under the root, or None when it is unsafe."""
        hit = self.files.get(stored) if isinstance(stored, str) else None
        return Path(hit[0]) if hit is not None else self.under(stored)

    def is_file(self, stored: object, resolved: Path) -> bool:
        """``resolved.is_file()`` for ``resolved = self.resolve(stored)``, from the walk when it can."""
        return (isinstance(stored, str) and stored in self.files) or resolved.is_file()

    @classmethod
    def _known_from(cls, earlier: UploadsIndex) -> Callable[[str, os.stat_result], str | None]:
        """``earlier``'s digest of a file, when the file listed now is the one it read: same
        real path, and the same device, inode, size, mtime and ctime (nanoseconds) as its stat
        right before that read — any write or rename since moves the change time — with that
        change time (and mtime) at least :data:`RACY_NS` older than ``earlier``'s walk, so a
        write in the same timestamp tick as the read cannot hide behind an unchanged stat (git's
        racy-clean rule; a filesystem whose timestamps step by more, or a clock set back past it,
        is not covered)."""
        cutoff = earlier.started_ns - cls.RACY_NS
        prefix = earlier.under.prefix

        def known(rel: str, st: os.stat_result) -> str | None:
            seen, digest = earlier.files.get(rel), earlier._sha.get(rel)
            if seen is None or digest is None or seen[0] != prefix + rel:
                return None
            then = seen[1]
            if then.st_ctime_ns >= cutoff or then.st_mtime_ns >= cutoff:
                return None
            return digest if _same_file(then, st) else None

        return known

    def adopt_hashes(self, earlier: UploadsIndex, written: dict[str, str]) -> None:
        """Take hashes already known instead of reading those files again: ``written`` (real path
        → sha256 of a file this process has just written there and checked, e.g. by
        :func:`write_under`) and ``earlier``'s, for a file at the same real path whose inode, size,
        mtime and ctime are unchanged since ``earlier``'s walk hashed it."""
        for rel, (real, st) in self.files.items():
            if real in written:
                self._sha[rel] = written[real]
                continue
            seen, digest = earlier.files.get(rel), earlier._sha.get(rel)
            if (
                seen is not None
                and digest is not None
                and seen[0] == real
                and _same_file(seen[1], st)
            ):
                self._sha[rel] = digest

    def vouch(self, copied: dict[str, tuple[str, os.stat_result]]) -> None:
        """Keep the digests a copy of a listed file took as it read it (real path → (sha256,
        the file's ``fstat`` right before the read)), for a file whose stat then is the one this
        walk listed: a later walk that takes this one as ``earlier`` then reads it again only if
        it changed since (:meth:`_known_from`)."""
        for real, (digest, st) in copied.items():
            rel = real[len(self.under.prefix) :] if real.startswith(self.under.prefix) else None
            seen = self.files.get(rel) if rel is not None else None
            if seen is not None and seen[0] == real and _same_file(seen[1], st):
                self._sha.setdefault(rel, digest)  # type: ignore[arg-type]

    def sha256(self, stored: object, resolved: Path | None = None) -> str:
        """The sha256 of the file ``stored`` names (``resolved``, :meth:`resolve`'s answer, is
        needed only for a path the walk did not list); a file the walk listed is read once however
        often it is asked for."""
        if isinstance(stored, str) and stored in self.files:
            digest = self._sha.get(stored)
            if digest is None:
                digest = self._sha[stored] = sha256_bytes_of(self.files[stored][0], self.real)
            return digest
        if resolved is None:
            raise ValueError(f"{stored!r} is not a file the walk listed")
        return sha256_bytes_of(resolved, self.real)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def iter_uploads(root: Path) -> Iterator[FileEntry]:
    """Every regular file under ``root`` (sorted; symlinks leading outside are skipped)."""
    under = SafeRoot(root)
    for rel, real, st in _scan(under):
        yield FileEntry(rel, st.st_size, sha256_bytes_of(real, under.real), round(st.st_mtime, 6))


def scan_uploads(root: str | os.PathLike[str]) -> dict[str, object]:
    """The uploads manifest: root and every file's relative path, size, sha256 and mtime."""
    r = Path(root)
    if not r.is_dir():
        raise RecoveryError(
            f"uploads folder {r} does not exist or is not a folder", "check --uploads"
        )
    return {"root": str(r.resolve()), "files": [e.to_dict() for e in iter_uploads(r)]}


@dataclass(frozen=True)
class FilesConfig:
    """Where the application records its uploads (defaults fit Gestima; all can be named by options)."""

    table: str = "file_records"
    path: str = "path"
    sha256: str = "sha256"
    size: str = "size"
    entity_type: str = "entity_type"
    entity_id: str = "entity_id"


class _BundleWriter:
    """Copies files into the bundle folder being built.

    ``top`` is extract's private work folder: nothing reads it until it is sealed and renamed into
    place (a crash leaves only a ``.partial`` folder, and the seal's hashes would refuse a torn
    file anyway), so each file is created at its own name — never over an existing one — instead
    of through a temporary name and a rename. Each file is hashed as its bytes are written.

    Durability comes after all the writes, in one step (:meth:`sync`): one ``syncfs(2)`` of the
    filesystem ``top`` is on, through a descriptor of ``top`` opened before the first copy — on
    Linux 5.8 and later it waits for every dirty page and the journal and reports any writeback
    error the filesystem saw since that descriptor was opened, so a copy the kernel failed to write
    fails the extract before the seal. Where ``syncfs`` is missing or older (no error report), each
    written file and every folder that gained an entry is fsynced instead, in one pass after the
    writes. Either way no file the bundle lists is left only in the page cache when
    :func:`copy_files_into_bundle` returns.

    The copies run on a few threads, a slice of files each (file I/O and hashlib release the
    GIL)."""

    THREADS = 2  # the copies' own work is CPU (page cache, hashing): two cores
    SYNC_THREADS = 8  # fsyncs, where syncfs cannot serve, wait on the disk: they share commits
    SLICE = 32

    def __init__(self, top: Path, root: str = "/") -> None:
        self.top = os.fspath(top)
        self.root = root  # the uploads root (real path): sources are opened below it by descriptor
        self.made: set[str] = set()
        self.written: list[str] = []
        self.opened: dict[str, os.stat_result] = {}  # destination -> source's stat before its read
        # opened before any copy: syncfs reports the writeback errors seen since it was opened
        os.makedirs(self.top, mode=0o700, exist_ok=True)
        self.top_fd: int | None = os.open(self.top, _DIR_FLAGS)

    def close(self) -> None:
        if self.top_fd is not None:
            os.close(self.top_fd)
            self.top_fd = None

    def copy_all(self, jobs: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
        """Copy every ``(source, destination)`` pair (destinations distinct, under ``top``) and
        return each copy's (sha256 of the bytes written, size, source's mode bits), in order."""
        out = self._on_threads(lambda job: self._copy(*job), jobs, self.SLICE)
        self.written += [dst for _, dst in jobs]
        return out

    def _on_threads(
        self, fn: Callable[[T], R], items: list[T], size: int, threads: int = 0
    ) -> list[R]:
        """``[fn(x) for x in items]``, slices of ``size`` items on up to ``threads`` threads
        (``THREADS`` when 0; in this thread when there is one slice), results in order."""
        slices = [items[i : i + size] for i in range(0, len(items), size)]
        if len(slices) <= 1:
            return [fn(x) for x in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(
            max_workers=min(threads or self.THREADS, len(slices)),
            thread_name_prefix="recovery-files",
        ) as pool:
            return [r for part in pool.map(lambda xs: [fn(x) for x in xs], slices) for r in part]

    def _copy(self, src: str, dst: str) -> tuple[str, int, int]:
        parent = os.path.dirname(dst)
        if parent not in self.made:  # two threads may both create it: exist_ok
            os.makedirs(parent, mode=0o700, exist_ok=True)
            self.made.add(parent)
        h = hashlib.sha256()
        size = 0
        # ``src`` is a real path under the uploads root (resolved or listed by the walk): opened by
        # descriptor with no symlink followed at any level, so a folder or file swapped for a
        # symlink since is refused rather than followed out of the uploads folder
        fin = open_nofollow(src, self.root)
        try:
            st = self.opened[dst] = os.fstat(fin)
            mode = stat.S_IMODE(st.st_mode)
            fout = os.open(
                dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                while block := os.read(fin, 1 << 20):
                    h.update(block)
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fout, view) :]
                    size += len(block)
            finally:
                os.close(fout)
        finally:
            os.close(fin)
        return h.hexdigest(), size, mode

    def sync(self) -> None:
        """Make every copy durable: one ``syncfs`` of ``top``'s filesystem (:func:`_syncfs`), or,
        where that is not available, an fsync of every written file and of every folder that
        gained an entry (each file's folder and every folder created on the way down from
        ``top``, whose entry lives in its parent; ``top`` included). Raises the ``OSError`` of a
        failed write-back."""
        if not self.written:
            return
        if self.top_fd is not None and _syncfs(self.top_fd):
            return
        folders: set[str] = set()
        for d in self.made:
            while d not in folders and d.startswith(self.top + os.sep):
                folders.add(d)
                d = os.path.dirname(d)
        folders.add(self.top)
        self._on_threads(
            _fsync_path, [*self.written, *sorted(folders)], self.SLICE, self.SYNC_THREADS
        )


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs_reports_errors() -> bool:
    """Linux 5.8 or later: ``syncfs(2)`` returns the writeback errors of its filesystem (earlier
    kernels return 0 whatever happened)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


def _syncfs(fd: int) -> bool:
    """``syncfs(2)`` of the filesystem ``fd`` is on: True when it ran and reported no error;
    False when it cannot be trusted here (not Linux 5.8+, no ``syncfs`` in the C library), so the
    caller fsyncs file by file. A write-back error is raised as ``OSError``."""
    if not _syncfs_reports_errors():
        return False
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    if call(fd) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            return False
        raise OSError(err, f"syncfs: {os.strerror(err)}")
    return True


def bundle_file_rows(
    conn: Connection, cfg: FilesConfig, schema: str = "main"
) -> list[tuple[Any, Any, Any]]:
    """(key, stored path, recorded sha256) of every carried row of the bundle's files table in
    ``schema`` of ``conn`` (a rows.db), in its row order; none when the bundle has no such table."""
    from recovery.engine.sqlbuild import col, sql, table
    from sqlglot import exp

    info = conn.execute(
        "SELECT name, pk FROM pragma_table_info(?, ?)", (cfg.table, schema)
    ).fetchall()
    if not info:  # (extract writes tables only: a name with columns is the table)
        return []
    names = [n for n, _ in info]
    pk = next((n for n, is_pk in info if is_pk == 1), names[0])
    q = (
        exp.select(col(pk), col(cfg.path), col(cfg.sha256) if cfg.sha256 in names else exp.Null())
        .from_(table(cfg.table, schema))
        .where(
            exp.In(
                this=col(KIND_COLUMN), expressions=[exp.Literal.string(k) for k in CARRIED_KINDS]
            )
        )
    )
    return [tuple(r) for r in conn.execute(sql(q)).fetchall()]


def _bundle_file_rows(rows_db: Path, cfg: FilesConfig) -> list[tuple[Any, Any, Any]]:
    """:func:`bundle_file_rows` of a finished rows.db, opened read-only."""
    import sqlite3

    from recovery.engine.sqlite_io import file_uri

    conn = sqlite3.connect(file_uri(Path(rows_db), mode="ro"), uri=True)
    try:
        return bundle_file_rows(conn, cfg)
    finally:
        conn.close()


def copy_files_into_bundle(
    work: Path,
    uploads: str | os.PathLike[str],
    backup: str | os.PathLike[str],
    cfg: FilesConfig,
    index: UploadsIndex | None = None,
    backup_paths: set[str] | None = None,
    written: dict[str, str] | None = None,
    rows: list[tuple[Any, Any, Any]] | None = None,
) -> dict[str, object]:
    """Copy into ``work/files/`` every file a bundle ``file_records`` row references, and every file
    on disk added since the backup that no record references, so the bundle alone can bring them back.
    Unsafe stored paths are reported, never read. ``work`` is the private folder extract builds the
    bundle in (see :class:`_BundleWriter`); every copy is hashed and fsynced before this returns.

    The uploads folder is walked once: the walk answers which stored paths are plain files inside
    the root (any other is resolved on disk, symlinks included) and lists the unrecorded files.
    ``index``: that walk, when the caller already made it (extract walks while its SQL runs).
    ``backup_paths``: the backup's stored paths, when the caller read them (a backup that is not
    an SQLite file, e.g. a PostgreSQL dump). ``written``: filled with {path relative to ``work``:
    sha256} of every copy written, each digest taken of the bytes as they were written (the seal
    need not read them again). ``rows``: the bundle's ``file_records`` rows as (key, stored path,
    recorded sha256), when the caller read them inside its own transaction (rows.db is then not
    opened here: extract copies while its last statements run)."""
    import json
    import sqlite3

    from recovery.capture.manifest import deploy_time_of, read_manifest
    from recovery.engine.sqlite_io import readonly
    from recovery.engine.sqlbuild import col, sql, table
    from sqlglot import exp

    root = Path(uploads)
    if not root.is_dir():
        raise RecoveryError(
            f"uploads folder {root} does not exist or is not a folder", "check --uploads"
        )
    if index is None or index.real != _resolve_str(os.fspath(root)):
        index = UploadsIndex(root)  # the root resolved once, the folder walked once
    report: dict[str, list[dict[str, object]]] = {"records": [], "unrecorded": [], "unsafe": []}
    referenced: set[str] = set()
    rows = rows if rows is not None else _bundle_file_rows(work / "rows.db", cfg)
    files_dir = work / "files"
    # Copies to make: destination -> source, and each report entry that waits for a copy's digest.
    sources: dict[str, str] = {}
    waiting: list[
        tuple[dict[str, object], str, object]
    ] = []  # (entry, destination, recorded sha256)
    for key, stored, recorded_sha in rows:
        src = index.resolve(stored) if isinstance(stored, str) else None
        entry: dict[str, object] = {
            "record_key": key,
            "path": stored,
            "recorded_sha256": recorded_sha,
        }
        if src is None:
            report["unsafe"].append({**entry, "status": "unsafe"})
            continue
        norm = PurePosixPath(stored).as_posix()
        referenced.add(norm)
        if not index.is_file(stored, src):
            report["records"].append({**entry, "size": None, "sha256": None, "status": "missing"})
            continue
        dst = os.fspath(files_dir / norm)
        sources.setdefault(
            dst, os.fspath(src)
        )  # the same normalised path: the same file, copied once
        report["records"].append(entry)
        waiting.append((entry, dst, recorded_sha))
    # Files on disk that appeared after the backup and that no record (old or new) references.
    snap = read_manifest(backup)
    known: set[str] = set()
    if snap and snap.get("uploads"):
        known = {f["path"] for f in snap["uploads"]["files"]}
    if backup_paths is not None:
        known |= backup_paths
    else:
        with readonly(backup, "backup") as bconn:
            try:
                q = exp.select(col(cfg.path)).from_(table(cfg.table))
                known |= {r[0] for r in bconn.execute(sql(q)) if isinstance(r[0], str)}
            except sqlite3.DatabaseError:
                pass
    since = deploy_time_of(backup)
    cutoff = None
    if not (snap and snap.get("uploads")) and since:
        from datetime import datetime

        cutoff = datetime.fromisoformat(since).timestamp()
    shadowed: dict[
        str, str
    ] = {}  # a record's copy whose destination an unrecorded file takes (see below)
    unrecorded: list[tuple[dict[str, object], str]] = []
    for rel, (
        real,
        st,
    ) in index.files.items():  # stat only: a file is hashed when (and as) it is copied
        if rel in referenced or rel in known:
            continue
        if cutoff is not None and round(st.st_mtime, 6) <= cutoff:
            continue
        dst = os.fspath(files_dir / UNRECORDED_DIR / rel)
        if dst in sources:  # a record stored under _unrecorded/: the unrecorded file's copy wins
            shadowed[dst] = sources[dst]
        sources[dst] = real
        entry = {"path": rel, "size": st.st_size, "sha256": None, "status": "copied"}
        report["unrecorded"].append(entry)
        unrecorded.append((entry, dst))
    writer = _BundleWriter(work, index.real)
    try:
        done = dict(
            zip(sources, writer.copy_all([(src, dst) for dst, src in sources.items()]), strict=True)
        )
        writer.sync()  # every copy durable before the caller seals the bundle
    finally:
        writer.close()
    index.vouch(
        {
            src: (done[dst][0], writer.opened[dst])
            for dst, src in sources.items()
            if dst in writer.opened
        }
    )
    if written is not None:
        for dst, (digest, _size, _mode) in done.items():
            written[os.path.relpath(dst, work).replace(os.sep, "/")] = digest
    for (
        shadow,
        shadowed_src,
    ) in shadowed.items():  # hashed as it would have been copied, not written
        fd = open_nofollow(shadowed_src, index.real)
        try:
            done[shadow] = digest_fd(fd)
        finally:
            os.close(fd)
    for entry, dst, recorded_sha in waiting:
        digest, size, mode = done[dst]
        entry.update(
            size=size,
            sha256=digest,
            mode=mode,
            status="copied" if recorded_sha in (None, digest) else "copied_hash_differs",
        )
    for entry, dst in unrecorded:
        entry.update(sha256=done[dst][0], mode=done[dst][2])
    json.dumps(report)  # the report must stay JSON-serialisable
    return {"root": index.real, **report}
