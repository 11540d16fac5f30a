"""Uploaded files: the uploads manifest and safe path handling.

A stored path is only ever used after :func:`safe_path` has proved it relative, free of ``..``
and, with symlinks resolved, inside the uploads root.
"""
from __future__ import annotations

import hashlib
import os
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


def safe_path(root: Path, stored: str) -> Path | None:
    """The real file a stored relative path names under ``root``, or None when it is unsafe
    (absolute, contains ``..``, a NUL, or resolves — symlinks included — outside the root)."""
    if not isinstance(stored, str) or not stored or "\x00" in stored or "\\" in stored:
        return None
    pure = PurePosixPath(stored)
    if pure.is_absolute() or ".." in pure.parts or stored.startswith("~"):
        return None
    real_root = root.resolve()
    candidate = (real_root / pure).resolve()
    try:
        candidate.relative_to(real_root)
    except ValueError:
        return None
    return candidate


def iter_uploads(root: Path) -> Iterator[FileEntry]:
    """Every regular file under ``root`` (sorted; symlinks leading outside are skipped)."""
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(real_root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(real_root).as_posix()
            target = safe_path(real_root, rel)
            if target is None or not target.is_file():
                continue
            st = target.stat()
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


def _copy_verified(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` (fsynced) and return the sha256 of the bytes written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    tmp = dst.with_name(dst.name + ".tmp")
    with src.open("rb") as fin, tmp.open("wb") as fout:
        while block := fin.read(1 << 20):
            h.update(block)
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)
    return h.hexdigest()


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
        src = safe_path(root, stored) if isinstance(stored, str) else None
        entry: dict[str, object] = {"record_key": key, "path": stored, "recorded_sha256": recorded_sha}
        if src is None:
            report["unsafe"].append({**entry, "status": "unsafe"})
            continue
        referenced.add(PurePosixPath(stored).as_posix())
        if not src.is_file():
            report["records"].append({**entry, "size": None, "sha256": None, "status": "missing"})
            continue
        digest = _copy_verified(src, work / "files" / PurePosixPath(stored))
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
    for entry in iter_uploads(root):
        if entry.path in referenced or entry.path in known:
            continue
        if cutoff is not None and entry.mtime <= cutoff:
            continue
        digest = _copy_verified(root / entry.path, work / "files" / "_unrecorded" / entry.path)
        report["unrecorded"].append({"path": entry.path, "size": entry.size, "sha256": digest, "status": "copied"})
    json.dumps(report)  # the report must stay JSON-serialisable
    return {"root": str(root.resolve()), **report}
