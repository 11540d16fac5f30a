"""The backup of a PostgreSQL rollback as the one form the restore takes: a pg_dump file.

``--backup`` names either the pg_dump custom-format file ``recovery snapshot`` wrote, or another
database (a URL: e.g. last night's backup restored on a reporting server). A database is dumped
once (``pg_dump -Fc``, atomic) into the run folder and that file is what every step restores, so
a resumed run restores exactly what the first attempt extracted against.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from recovery.engine.base import is_postgres_url, normalise_spec
from recovery.errors import RecoveryError

BACKUP_DUMP = "backup-database.dump"
"""The run folder's ``pg_dump`` of a backup given as a database URL."""


def backup_as_dump(db: str, backup: str, run_dir: Path) -> str:
    """``backup`` as a pg_dump file for a PostgreSQL rollback of ``db``: a file as it is; another
    database's URL dumped once into ``run_dir`` as :data:`BACKUP_DUMP`, which a resumed run
    reuses. The live database itself is refused as its own backup (exit 2, nothing written)."""
    if not is_postgres_url(normalise_spec(backup)):
        return backup
    from recovery.engine.postgres import PostgresEngine

    source, live = PostgresEngine(normalise_spec(backup)), PostgresEngine(normalise_spec(db))
    if source.url.set(password=None) == live.url.set(password=None):
        raise RecoveryError(
            f"the backup {source.spec} is the live database itself; nothing was changed",
            "pass the pre-deploy backup: its pg_dump file or the URL of the database it was "
            "restored into",
        )
    dump = Path(run_dir) / BACKUP_DUMP
    if not dump.is_file():
        source.check("backup database")
        dump.parent.mkdir(parents=True, exist_ok=True)
        source.snapshot(dump, "backup database")
    return os.fspath(dump)


def dump_revision(dump: str | os.PathLike[str]) -> str | None:
    """The Alembic revision recorded in the manifest beside a pg_dump file (None: no manifest, or
    none recorded there)."""
    manifest = Path(f"{os.fspath(dump)}.manifest.json")
    if not manifest.is_file():
        return None
    try:
        value = json.loads(manifest.read_text(encoding="utf-8")).get("alembic_revision")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None
