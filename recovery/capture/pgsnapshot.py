"""Snapshots of a PostgreSQL database: ``pg_dump`` (custom format) and the same manifest as SQLite's.

The dump and the manifest's row counts and alembic revision describe one instant: a REPEATABLE
READ transaction exports its snapshot (``pg_export_snapshot()``), counts the tables in it and
hands it to ``pg_dump --snapshot``, so a user writing meanwhile cannot make the two disagree.
The file is ``<dbname>.dump.bak.YYYYMMDD_HHMMSS`` (the ``.bak.<stamp>`` ending the other
commands read the deploy time from), its manifest ``<file>.manifest.json`` beside it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlglot import exp

from recovery import __version__
from recovery.capture.snapshot import MANIFEST_FORMAT, Snapshot, git_info, manifest_path_for
from recovery.engine.postgres import (
    PostgresEngine,
    command,
    count_rows,
    dump_to,
    find_tool,
    run,
    server_version,
    sha256_file,
    user_tables,
)
from recovery.engine.schema import BOOKKEEPING_TABLES
from recovery.errors import RecoveryError
from recovery.files.uploads import scan_uploads


def backup_name(database: str, taken: datetime) -> str:
    return f"{database}.dump.bak.{taken:%Y%m%d_%H%M%S}"


def _alembic_revision(conn: psycopg.Connection[Any], tables: list[tuple[str, str]]) -> str | None:
    if ("public", "alembic_version") not in tables:
        return None
    q = exp.select(exp.column("version_num", quoted=True)).from_(
        exp.Table(
            this=exp.to_identifier("alembic_version", quoted=True),
            db=exp.to_identifier("public", quoted=True),
        )
    )
    rows = run(conn, q).fetchall()
    return ",".join(sorted(str(r[0]) for r in rows)) or None


def snapshot_postgres(
    url: str,
    out_dir: str | os.PathLike[str] | None = None,
    uploads: str | os.PathLike[str] | None = None,
    app_dir: str | os.PathLike[str] | None = None,
    now: datetime | None = None,
) -> Snapshot:
    """Dump the database ``url`` into ``out_dir`` (default: the current folder) and write the
    manifest beside the dump. Nothing is written to the database."""
    engine = PostgresEngine(url)
    taken = (now or datetime.now()).replace(microsecond=0)
    folder = Path(out_dir) if out_dir else Path.cwd()
    if folder.exists() and not folder.is_dir():
        raise RecoveryError(f"--out {folder} is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    backup = folder / backup_name(engine.database, taken)
    if backup.exists():
        raise RecoveryError(
            f"{backup} already exists",
            "wait a second or choose another --out; nothing was overwritten",
        )
    upload_manifest = scan_uploads(uploads) if uploads else None
    with engine.readonly("database") as conn:
        assert isinstance(conn, psycopg.Connection)
        major, version = server_version(conn)
        pg_dump = find_tool("pg_dump", major)
        run(conn, command("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        snap_id = str(run(conn, exp.select(exp.func("pg_export_snapshot"))).fetchone()[0])
        tables = user_tables(conn)
        counts = {
            name: count_rows(conn, schema, name)
            for schema, name in tables
            if schema == "public" and name not in BOOKKEEPING_TABLES
        }
        revision = _alembic_revision(conn, tables)
        dump_to(engine.url, backup, pg_dump, snapshot_id=snap_id)
        run(conn, command("COMMIT"))
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "tool_version": __version__,
        "engine": "postgresql",
        "created_at": taken.isoformat(sep="T"),
        "source": engine.spec,
        "backup": backup.name,
        "dump_format": "pg_dump custom",
        "size": backup.stat().st_size,
        "sha256": sha256_file(backup),
        "integrity_check": None,
        "server_version": version,
        "pg_dump": pg_dump,
        "alembic_revision": revision,
        "git": git_info(Path(app_dir)) if app_dir else None,
        "tables": dict(sorted(counts.items())),
        "identity": None,
        "uploads": upload_manifest,
    }
    mpath = manifest_path_for(backup)
    tmp = mpath.with_name(mpath.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, mpath)
    return Snapshot(backup, mpath, manifest)
