"""Stored upload paths as relink compares them: one normal form, and the names of the copies it
writes beside a different file (``name.recovered-<sha8>.pdf``)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from recovery.files.uploads import SafeRoot, sha256_bytes_of


def norm(stored: str) -> str:
    """``PurePosixPath(stored).as_posix()``, without building a path for the usual plain one."""
    if (
        "//" in stored
        or "/./" in stored
        or stored.startswith("./")
        or stored.endswith(("/", "/."))
        or stored in ("", ".")
    ):
        return PurePosixPath(stored).as_posix()
    return stored


def recovered_name(
    root: Path, rel: str, sha: str, under: SafeRoot | None = None
) -> tuple[str, Path] | None:
    """A free (or already identical) sibling path for the bundle's copy of ``rel``."""
    safe = under or SafeRoot(root)
    pure = PurePosixPath(rel)
    for n in range(1, 100):
        extra = "" if n == 1 else f"-{n}"
        name = f"{pure.stem}.recovered-{sha[:8]}{extra}{pure.suffix}"
        cand_rel = (pure.parent / name).as_posix()
        target = safe(cand_rel)
        if target is None:
            return None
        if not target.exists() or (target.is_file() and sha256_bytes_of(target) == sha):
            return cand_rel, target
    return None


def recovered_of(current: Any, original: Any) -> bool:
    """``current`` is a kept-both sibling of ``original`` written by an earlier relink."""
    if not (isinstance(current, str) and isinstance(original, str)):
        return False
    c, o = PurePosixPath(current), PurePosixPath(original)
    return (
        c.parent == o.parent and c.name.startswith(f"{o.stem}.recovered-") and c.suffix == o.suffix
    )
