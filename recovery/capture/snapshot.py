"""WAL-safe snapshots and their manifests.

``cp gestima.db gestima.db.bak`` misses commits still in ``gestima.db-wal``; a snapshot is taken
with SQLite's online backup API instead and described by ``<backup>.manifest.json`` (time, hashes,
integrity, alembic revision, git tag/commit, row counts, uploads manifest). Later commands read the
deploy time and uploads manifest from it when given the backup (:mod:`recovery.capture.manifest`
reads it; its functions are importable from here too).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc

from recovery import __version__
from recovery.compare.changes import count_table
from recovery.errors import RecoveryError
from recovery.files.uploads import scan_uploads
from recovery.capture.manifest import (
    MANIFEST_FORMAT,
    deploy_time_of,
    manifest_path_for,
    read_manifest,
    release_tag,
)
from recovery.capture.pairing import row_identity
from recovery.engine.schema import alembic_revision, reflect
from recovery.engine import open_engine
from recovery.engine.sqlite_io import sha256_file


__all__ = [
    "MANIFEST_FORMAT",
    "Snapshot",
    "deploy_time_of",
    "git_info",
    "manifest_path_for",
    "read_manifest",
    "release_tag",
    "snapshot",
]


@dataclass(frozen=True)
class Snapshot:
    backup: Path
    manifest_path: Path
    manifest: dict[str, Any]


def _git(app_dir: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(app_dir), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def git_info(app_dir: Path) -> dict[str, Any] | None:
    commit = _git(app_dir, "rev-parse", "HEAD")
    if commit is None:
        return None
    return {
        "commit": commit,
        "tag": _git(app_dir, "describe", "--tags", "--exact-match"),
        "describe": _git(app_dir, "describe", "--tags", "--always", "--dirty"),
    }


def snapshot(
    db: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    uploads: str | os.PathLike[str] | None = None,
    app_dir: str | os.PathLike[str] | None = None,
    now: datetime | None = None,
) -> Snapshot:
    """Take a consistent backup of ``db`` (WAL included) and write its manifest beside it."""
    engine = open_engine(db)
    engine.check("database")
    src = Path(engine.spec)
    taken = (now or datetime.now()).replace(microsecond=0)
    folder = Path(out_dir) if out_dir else src.parent
    if folder.exists() and not folder.is_dir():
        raise RecoveryError(f"--out {folder} is not a folder")
    backup = folder / f"{src.name}.bak.{taken:%Y%m%d_%H%M%S}"
    if backup.exists():
        raise RecoveryError(
            f"{backup} already exists",
            "wait a second or choose another --out; nothing was overwritten",
        )
    upload_manifest = scan_uploads(uploads) if uploads else None
    engine.snapshot(backup)
    try:
        with open_engine(backup).readonly("backup") as conn:
            integrity = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            if integrity != ["ok"]:
                raise RecoveryError(
                    f"database {src} fails PRAGMA integrity_check ({str(integrity[0]).splitlines()[0]}); "
                    "no snapshot was kept",
                    "a damaged copy is no restore point: repair the database (sqlite3 .recover) first",
                )
            foreign_keys: list[dict[str, Any]] | str
            try:
                foreign_keys = [
                    {"table": t, "rowid": r, "parent": p, "fk": fk}
                    for t, r, p, fk in conn.execute("PRAGMA main.foreign_key_check").fetchmany(20)
                ]
            except sqlite3.OperationalError as exc:  # a key to a column no unique index covers:
                foreign_keys = str(exc)  # the app works (SQLite checks it only when enforcing)
            schema = reflect(conn)
            counts = {t: count_table(conn, "main", t) for t in schema.data_tables}
            revision = alembic_revision(conn)
            identity = row_identity(conn)
    except (sqlite3.Error, sa_exc.DBAPIError) as exc:
        backup.unlink(missing_ok=True)
        orig = getattr(exc, "orig", None) or exc
        raise RecoveryError(
            f"database {src} cannot be read: {str(orig).splitlines()[0]}; no snapshot was kept",
            "is it corrupt? run PRAGMA integrity_check on it",
        ) from None
    except RecoveryError:
        backup.unlink(missing_ok=True)
        raise
    manifest = {
        "format": MANIFEST_FORMAT,
        "tool_version": __version__,
        "created_at": taken.isoformat(sep="T"),
        "source": str(src.resolve()),
        "backup": backup.name,
        "size": backup.stat().st_size,
        "sha256": sha256_file(backup),
        "integrity_check": "ok" if integrity == ["ok"] else integrity,
        "foreign_key_check": foreign_keys,
        "sqlite_version": sqlite3.sqlite_version,
        "alembic_revision": revision,
        "git": git_info(Path(app_dir) if app_dir else src.parent),
        "tables": counts,
        "identity": identity,
        "uploads": upload_manifest,
    }
    mpath = manifest_path_for(backup)
    tmp = mpath.with_name(mpath.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, mpath)
    return Snapshot(backup, mpath, manifest)
