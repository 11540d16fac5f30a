"""A snapshot's manifest read back: the ``<backup>.manifest.json`` :mod:`recovery.capture.snapshot`
writes beside a backup, and what later stages take from it (deploy time, release tag, uploads
manifest, row identity). Imports nothing above :mod:`recovery.errors`, so every stage may read a
manifest without depending on how snapshots are taken.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from recovery.errors import RecoveryError

MANIFEST_FORMAT = "recovery-snapshot/1"
"""The ``format`` of the manifests :mod:`recovery.capture.snapshot` writes."""

_STAMP = re.compile(r"\.bak\.(\d{8}_\d{6})$")


def manifest_path_for(backup: Path) -> Path:
    """Where the manifest of ``backup`` lives: beside it, named ``<backup>.manifest.json``."""
    return backup.with_name(backup.name + ".manifest.json")


def read_manifest(backup: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest beside a backup, or None when there is none (nor a regular file: a FIFO or a
    device under that name is never opened). One that cannot be read, is not JSON, or is not a
    JSON object is refused (exit 2)."""
    p = manifest_path_for(Path(backup))
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RecoveryError(
            f"backup manifest {p} is not valid JSON: {str(exc)[:200]}", "fix or remove it"
        ) from None
    except OSError as exc:
        raise RecoveryError(
            f"backup manifest {p} cannot be read: {exc.strerror}", "fix or remove it"
        ) from None
    if not isinstance(data, dict):
        raise RecoveryError(f"backup manifest {p} is not a JSON object", "fix or remove it")
    return data


def release_tag(backup: str | os.PathLike[str] | None) -> str | None:
    """The release tag (``git.tag``, else ``git.describe``) the backup's snapshot manifest
    recorded, or None (no backup, no manifest, or one that cannot be read: only shown, never
    relied on)."""
    if not backup:
        return None
    p = manifest_path_for(Path(backup))
    try:
        data = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None
    git = data.get("git") if isinstance(data, dict) else None
    tag = (git.get("tag") or git.get("describe")) if isinstance(git, dict) else None
    return tag if isinstance(tag, str) and tag else None


def deploy_time_of(backup: str | os.PathLike[str]) -> str | None:
    """The deploy time a backup stands for: its manifest's time, else the ``.bak.YYYYMMDD_HHMMSS`` name."""
    manifest = read_manifest(backup)
    if manifest and manifest.get("created_at"):
        return str(manifest["created_at"])
    m = _STAMP.search(Path(backup).name)
    if m:
        return datetime.strptime(m.group(1), "%Y%m%d_%H%M%S").isoformat(sep="T")
    return None
