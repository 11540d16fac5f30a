"""``recovery extract`` on PostgreSQL: the post-deploy changes as a bundle in the SQLite bundle's
format (:mod:`recovery.bundle.store`), selected set-based inside the server.

(Being built: the signature is final.)
"""

from __future__ import annotations

import os

from recovery.bundle.extract import ExtractResult
from recovery.errors import RecoveryError
from recovery.files.uploads import FilesConfig


def extract_postgres(
    backup: str,
    live: str,
    out: str | os.PathLike[str],
    *,
    since: str | None = None,
    mapping: str | os.PathLike[str] | None = None,
    alembic_ini: str | os.PathLike[str] | None = None,
    uploads: str | os.PathLike[str] | None = None,
    files: FilesConfig | None = None,
    trust_mapping: bool = False,
) -> ExtractResult:
    """Extract every change since ``backup`` (a pg_dump custom-format file or a database URL) from
    the live database ``live`` (a postgresql:// URL) into a new bundle folder ``out``."""
    raise RecoveryError("extracting from PostgreSQL is not built yet", "nothing was changed")
