"""Uploaded files: the uploads manifest and safe path handling.

A stored path is only ever used after :func:`safe_path` has proved it relative, free of ``..``
and, with symlinks resolved, inside the uploads root.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from recovery.errors import RecoveryError


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    mtime: float

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "mtime": self.mtime}


def sha256_bytes_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def _walk(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative path, real path, stat) of every regular file under ``root`` that resolves inside
    it, sorted as :func:`os.walk` with sorted names gives them. Symlinked folders are not entered;
    a symlink is resolved and kept only when it leads to a regular file inside the root. A plain
    file in a folder reached without symlinks is its own real path, so only symlinks need
    resolving (one ``lstat`` a file otherwise)."""
    under = _Under(root)

    def walk(dirpath: str, relprefix: str) -> Iterator[tuple[str, Path, os.stat_result]]:
        try:
            with os.scandir(dirpath) as it:
                entries = list(it)
        except OSError:
            return
        files, dirs = [], []
        for e in entries:
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(e)
        for e in sorted(files, key=lambda x: x.name):
            rel = relprefix + e.name
            if not _stored_ok(rel):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield rel, Path(e.path), st
            elif stat.S_ISLNK(st.st_mode):
                target = under(rel)
                if target is None:
                    continue
                try:
                    st = target.stat()
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield rel, target, st
        for e in sorted(dirs, key=lambda x: x.name):
            try:
                if e.is_symlink():
                    continue
            except OSError:
                continue
            yield from walk(e.path, relprefix + e.name + "/")

    yield from walk(under.real, "")


def iter_uploads(root: Path) -> Iterator[FileEntry]:
    """Every regular file under ``root`` (sorted; symlinks leading outside are skipped)."""
    for rel, target, st in _walk(root):
        yield FileEntry(rel, st.st_size, sha256_bytes_of(target), round(st.st_mtime, 6))


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
    """Copies files into a bundle folder: each folder created once, each file written to a
    temporary name and renamed in; :meth:`sync` then fsyncs every file written (and the folders
    that received them) in one batch, before the bundle is sealed."""

    def __init__(self) -> None:
        self.made: set[Path] = set()
        self.written: list[Path] = []

    def copy(self, src: Path, dst: Path) -> str:
        """Copy ``src`` to ``dst`` and return the sha256 of the bytes written."""
        parent = dst.parent
        if parent not in self.made:
            parent.mkdir(parents=True, exist_ok=True)
            self.made.add(parent)
        h = hashlib.sha256()
        tmp = dst.with_name(dst.name + ".tmp")
        with src.open("rb") as fin, tmp.open("wb") as fout:
            while block := fin.read(1 << 20):
                h.update(block)
                fout.write(block)
        os.replace(tmp, dst)
        self.written.append(dst)
        return h.hexdigest()

    def sync(self, top: Path) -> None:
        """fsync every file written and every folder that gained an entry (up to ``top``).
        The calls run on a few threads, so the filesystem commits them together instead of
        one journal commit per file; each file is still fsynced itself."""
        from concurrent.futures import ThreadPoolExecutor

        folders: set[Path] = set()
        for d in self.made:  # a new folder's own entry lives in its parent: that one too
            while d not in folders and d != top and top in d.parents:
                folders.add(d)
                d = d.parent
        folders.add(top)
        todo = [*dict.fromkeys(self.written), *sorted(folders)]
        if not self.written:
            return
        with ThreadPoolExecutor(max_workers=16) as pool:
            for _ in pool.map(_fsync_path, todo):
                pass


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_files_into_bundle(
    work: Path, uploads: str | os.PathLike[str], backup: str | os.PathLike[str], cfg: FilesConfig,
) -> dict[str, object]:
    """Copy into ``work/files/`` every file a bundle ``file_records`` row references, and every file
    on disk added since the backup that no record references, so the bundle alone can bring them back.
    Unsafe stored paths are reported, never read."""
    import json
    import sqlite3

    from recovery.snapshot import deploy_time_of, read_manifest
    from recovery.sqlite_io import readonly
    from recovery.sqlbuild import col, sql, table
    from sqlglot import exp

    root = Path(uploads)
    if not root.is_dir():
        raise RecoveryError(f"uploads folder {root} does not exist or is not a folder", "check --uploads")
    under = _Under(root)  # the root resolved once
    writer = _BundleWriter()
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
    for key, stored, recorded_sha in rows:
        src = under(stored) if isinstance(stored, str) else None
        entry: dict[str, object] = {"record_key": key, "path": stored, "recorded_sha256": recorded_sha}
        if src is None:
            report["unsafe"].append({**entry, "status": "unsafe"})
            continue
        referenced.add(PurePosixPath(stored).as_posix())
        if not src.is_file():
            report["records"].append({**entry, "size": None, "sha256": None, "status": "missing"})
            continue
        digest = writer.copy(src, work / "files" / PurePosixPath(stored))
        entry.update(size=src.stat().st_size, sha256=digest,
                     status="copied" if recorded_sha in (None, digest) else "copied_hash_differs")
        report["records"].append(entry)
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
    for rel, real, st in _walk(root):  # stat only: a file is hashed when (and as) it is copied
        if rel in referenced or rel in known:
            continue
        if cutoff is not None and round(st.st_mtime, 6) <= cutoff:
            continue
        digest = writer.copy(real, work / "files" / "_unrecorded" / rel)
        report["unrecorded"].append({"path": rel, "size": st.st_size, "sha256": digest, "status": "copied"})
    writer.sync(work)  # every copy durable before the caller seals the bundle
    json.dumps(report)  # the report must stay JSON-serialisable
    return {"root": under.real, **report}
