"""``recovery rollback`` and ``recovery undo`` on PostgreSQL: the same steps, journal, resume, exit
codes and result files as the SQLite rollback (:mod:`recovery.pipeline`).

(Being built: the signature is final.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recovery.errors import RecoveryError
from recovery.files.uploads import FilesConfig
from recovery.options import RollbackOptions
from recovery.pipeline import RunResult


def rollback_postgres(
    db: str,
    backup: str,
    run_dir: Path,
    options: RollbackOptions,
    *,
    alembic_ini: Any = None,
    uploads: Any = None,
    files: FilesConfig | None = None,
) -> RunResult:
    """Roll the PostgreSQL database ``db`` back to ``backup`` (a pg_dump custom-format file)
    without losing the post-deploy work; the run is journaled in ``run_dir``."""
    raise RecoveryError("rolling back PostgreSQL is not built yet", "nothing was changed")
