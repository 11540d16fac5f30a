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
