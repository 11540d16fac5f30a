"""Uploaded files: the uploads manifest and safe path handling.

A stored path is only ever used after :func:`safe_path` has proved it relative, free of ``..``
and, with symlinks resolved, inside the uploads root.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from recovery.errors import RecoveryError
from recovery.sqlite_io import sha256_file

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


def sha256_bytes_of(path: str | os.PathLike[str]) -> str:
    """An upload's sha256 (one name for it, so relink's reads of uploads can be counted in tests)."""
    return sha256_file(path)


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
    real = os.path.realpath(path)
    try:
        os.stat(real)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RuntimeError(f"Symlink loop from {real!r}") from None
    return real


class _Under:
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
    return _Under(root)(stored)


def _scan(under: _Under) -> list[tuple[str, str, os.stat_result]]:
    """(relative path, real path, stat) of every regular file under ``under``'s root that resolves
    inside it, sorted as :func:`os.walk` with sorted names gives them (a folder's files, then its
    folders). Symlinked folders are not entered; a symlink is resolved and kept only when it leads
    to a regular file inside the root. A plain file in a folder reached without symlinks is its own
    real path, so only symlinks need resolving (one ``lstat`` a file otherwise)."""
    out: list[tuple[str, str, os.stat_result]] = []
    prefix = under.prefix

    def walk(dirpath: str, relprefix: str) -> None:
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=_entry_name)
        except OSError:
            return
        dirs = []
        for e in entries:
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(e)
                continue
            rel = relprefix + e.name
            if not _stored_ok(rel):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((rel, prefix + rel, st))
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = under(rel)
                except RuntimeError:  # a symlink loop: no file there
                    continue
                if target is None:
                    continue
                try:
                    st = os.stat(target)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append((rel, os.fspath(target), st))
        for e in dirs:
            try:
                if e.is_symlink():
                    continue
            except OSError:
                continue
            walk(e.path, relprefix + e.name + "/")

    walk(under.real, "")
    return out


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
    with ``./`` or ``//`` — is resolved on disk, symlinks included, as before."""

    def __init__(self, root: str | os.PathLike[str]):
        self.under = _Under(Path(root))
        self.real = self.under.real
        self.files: dict[str, tuple[str, os.stat_result]] = {rel: (real, st) for rel, real, st in _scan(self.under)}
        self._sha: dict[str, str] = {}

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

    def sha256(self, stored: object, resolved: Path | None = None) -> str:
        """The sha256 of the file ``stored`` names (``resolved``, :meth:`resolve`'s answer, is
        needed only for a path the walk did not list); a file the walk listed is read once however
        often it is asked for."""
        if isinstance(stored, str) and stored in self.files:
            digest = self._sha.get(stored)
            if digest is None:
                digest = self._sha[stored] = sha256_bytes_of(self.files[stored][0])
            return digest
        if resolved is None:
            raise ValueError(f"{stored!r} is not a file the walk listed")
        return sha256_bytes_of(resolved)


def iter_uploads(root: Path) -> Iterator[FileEntry]:
    """Every regular file under ``root`` (sorted; symlinks leading outside are skipped)."""
    for rel, real, st in _scan(_Under(root)):
        yield FileEntry(rel, st.st_size, sha256_bytes_of(real), round(st.st_mtime, 6))


def scan_uploads(root: str | os.PathLike[str]) -> dict[str, object]:
    """The uploads manifest: root and every file's relative path, size, sha256 and mtime."""
    r = Path(root)
    if not r.is_dir():
        raise RecoveryError(f"uploads folder {r} does not exist or is not a folder", "check --uploads")
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
    of through a temporary name and a rename. Each file is hashed as its bytes are written and
    fsynced before it is closed; :meth:`sync` then fsyncs every folder that gained an entry.

    The copies run on a few threads, a slice of files each: they wait on the disk rather than the
    CPU (file I/O and hashlib release the GIL), and concurrent fsyncs share the filesystem's journal
    commits instead of paying one each. Every file is still fsynced itself."""

    THREADS = 8
    SLICE = 32

    def __init__(self, top: Path) -> None:
        self.top = os.fspath(top)
        self.made: set[str] = set()
        self.written: list[str] = []

    def copy_all(self, jobs: list[tuple[str, str]]) -> list[tuple[str, int]]:
        """Copy every ``(source, destination)`` pair (destinations distinct, under ``top``) and
        return each copy's (sha256 of the bytes written, size), in order."""
        out = self._on_threads(lambda job: self._copy(*job), jobs, self.SLICE)
        self.written += [dst for _, dst in jobs]
        return out

    def _on_threads(self, fn: Callable[[T], R], items: list[T], size: int) -> list[R]:
        """``[fn(x) for x in items]``, slices of ``size`` items on up to ``THREADS`` threads (in
        this thread when there is one slice), results in order."""
        slices = [items[i:i + size] for i in range(0, len(items), size)]
        if len(slices) <= 1:
            return [fn(x) for x in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self.THREADS, len(slices)), thread_name_prefix="recovery-files") as pool:
            return [r for part in pool.map(lambda xs: [fn(x) for x in xs], slices) for r in part]

    def _copy(self, src: str, dst: str) -> tuple[str, int]:
        parent = os.path.dirname(dst)
        if parent not in self.made:  # two threads may both create it: exist_ok
            os.makedirs(parent, exist_ok=True)
            self.made.add(parent)
        h = hashlib.sha256()
        size = 0
        # ``src`` is a real path (resolved or listed by the walk): a symlink there now was put there
        # since, and may lead out of the uploads folder — refuse it rather than follow it
        try:
            fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise RecoveryError(f"{src} became a symbolic link while the uploads were being copied",
                                "stop whatever changes the uploads folder and run the command again") from None
        try:
            fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                while block := os.read(fin, 1 << 20):
                    h.update(block)
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fout, view):]
                    size += len(block)
                os.fsync(fout)
            finally:
                os.close(fout)
        finally:
            os.close(fin)
        return h.hexdigest(), size

    def sync(self) -> None:
        """fsync every folder that gained an entry: each file's folder and every folder created
        on the way down from ``top`` (whose entry lives in its parent), ``top`` included."""
        if not self.written:
            return
        folders: set[str] = set()
        for d in self.made:
            while d not in folders and d.startswith(self.top + os.sep):
                folders.add(d)
                d = os.path.dirname(d)
        folders.add(self.top)
        self._on_threads(_fsync_path, sorted(folders), self.SLICE * 4)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_files_into_bundle(
    work: Path, uploads: str | os.PathLike[str], backup: str | os.PathLike[str], cfg: FilesConfig,
    index: UploadsIndex | None = None,
) -> dict[str, object]:
    """Copy into ``work/files/`` every file a bundle ``file_records`` row references, and every file
    on disk added since the backup that no record references, so the bundle alone can bring them back.
    Unsafe stored paths are reported, never read. ``work`` is the private folder extract builds the
    bundle in (see :class:`_BundleWriter`); every copy is hashed and fsynced before this returns.

    The uploads folder is walked once: the walk answers which stored paths are plain files inside
    the root (any other is resolved on disk, symlinks included) and lists the unrecorded files.
    ``index``: that walk, when the caller already made it (extract walks while its SQL runs)."""
    import json
    import sqlite3

    from recovery.snapshot import deploy_time_of, read_manifest
    from recovery.sqlite_io import readonly
    from recovery.sqlbuild import col, sql, table
    from sqlglot import exp

    root = Path(uploads)
    if not root.is_dir():
        raise RecoveryError(f"uploads folder {root} does not exist or is not a folder", "check --uploads")
    if index is None or index.real != _resolve_str(os.fspath(root)):
        index = UploadsIndex(root)  # the root resolved once, the folder walked once
    writer = _BundleWriter(work)
    report: dict[str, list[dict[str, object]]] = {"records": [], "unrecorded": [], "unsafe": []}
    referenced: set[str] = set()
    rows_db = work / "rows.db"
    conn = sqlite3.connect(f"file:{rows_db}?mode=ro", uri=True)
    try:
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (cfg.table,)).fetchone()
        rows = []
        if has:
            info = conn.execute("SELECT name, pk FROM pragma_table_info(?)", (cfg.table,)).fetchall()
            names = [n for n, _ in info]
            pk = next((n for n, is_pk in info if is_pk == 1), names[0])
            q = exp.select(col(pk), col(cfg.path), col(cfg.sha256) if cfg.sha256 in names else exp.Null()).from_(
                table(cfg.table)).where(exp.In(this=col("_recovery_kind"), expressions=[
                    exp.Literal.string("inserted"), exp.Literal.string("updated"), exp.Literal.string("closure")]))
            rows = conn.execute(sql(q)).fetchall()
    finally:
        conn.close()
    files_dir = work / "files"
    # Copies to make: destination -> source, and each report entry that waits for a copy's digest.
    sources: dict[str, str] = {}
    waiting: list[tuple[dict[str, object], str, object]] = []  # (entry, destination, recorded sha256)
    for key, stored, recorded_sha in rows:
        src = index.resolve(stored) if isinstance(stored, str) else None
        entry: dict[str, object] = {"record_key": key, "path": stored, "recorded_sha256": recorded_sha}
        if src is None:
            report["unsafe"].append({**entry, "status": "unsafe"})
            continue
        norm = PurePosixPath(stored).as_posix()
        referenced.add(norm)
        if not index.is_file(stored, src):
            report["records"].append({**entry, "size": None, "sha256": None, "status": "missing"})
            continue
        dst = os.fspath(files_dir / norm)
        sources.setdefault(dst, os.fspath(src))  # the same normalised path: the same file, copied once
        report["records"].append(entry)
        waiting.append((entry, dst, recorded_sha))
    # Files on disk that appeared after the backup and that no record (old or new) references.
    snap = read_manifest(backup)
    known: set[str] = set()
    if snap and snap.get("uploads"):
        known = {f["path"] for f in snap["uploads"]["files"]}
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
    shadowed: dict[str, str] = {}  # a record's copy whose destination an unrecorded file takes (see below)
    unrecorded: list[tuple[dict[str, object], str]] = []
    for rel, (real, st) in index.files.items():  # stat only: a file is hashed when (and as) it is copied
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
    done = dict(zip(sources, writer.copy_all([(src, dst) for dst, src in sources.items()]), strict=True))
    writer.sync()  # every copy durable before the caller seals the bundle
    for dst, src in shadowed.items():  # hashed as it would have been copied, not written
        done[dst] = (sha256_bytes_of(src), os.stat(src).st_size)
    for entry, dst, recorded_sha in waiting:
        digest, size = done[dst]
        entry.update(size=size, sha256=digest,
                     status="copied" if recorded_sha in (None, digest) else "copied_hash_differs")
    for entry, dst in unrecorded:
        entry["sha256"] = done[dst][0]
    json.dumps(report)  # the report must stay JSON-serialisable
    return {"root": index.real, **report}
