"""Which table of a database holds the file records, and which of its columns hold the path,
the hash, the size and the entity link: the configured names when present, else the usual ones.
Read from the reflected :class:`~recovery.engine.schema.Schema`."""

from __future__ import annotations

from recovery.engine.schema import Schema
from recovery.errors import RecoveryError
from recovery.files.uploads import FilesConfig

PATH_CANDIDATES = ("path", "file_path", "storage_path", "relative_path", "filepath")
HASH_CANDIDATES = ("sha256", "hash", "checksum", "digest", "sha256_hex")


def _pick(
    columns: tuple[str, ...],
    configured: str,
    default: str,
    candidates: tuple[str, ...],
    what: str,
    table: str,
    required: bool,
) -> str | None:
    if configured in columns:
        return configured
    if configured != default:  # named by an option: it must exist
        raise RecoveryError(
            f"the files table {table} has no column {configured!r} ({what})",
            f"columns are: {', '.join(columns)}",
        )
    found = next((c for c in candidates if c in columns), None)
    if found is None and required:
        raise RecoveryError(
            f"cannot find the {what} column of the files table {table}",
            "name it with --path-column / --hash-column",
        )
    return found


def detect_files_config(schema: Schema, cfg: FilesConfig) -> FilesConfig | None:
    """The files table and its columns as they are in ``schema``: the configured names when
    present, else the usual ones. None when the default table is absent and no table looks like
    one (exactly one table with a path-like and a hash-like column)."""
    default = FilesConfig()
    name = cfg.table
    if name not in schema.tables:
        if cfg.table != default.table:
            raise RecoveryError(
                f"the database has no files table {cfg.table!r}", "name it with --files-table"
            )
        guesses = [
            t.name
            for t in schema.tables.values()
            if any(c in t.column_names for c in PATH_CANDIDATES)
            and any(c in t.column_names for c in HASH_CANDIDATES)
        ]
        if len(guesses) != 1:
            return None
        name = guesses[0]
    cols = schema.tables[name].column_names
    path = _pick(cols, cfg.path, default.path, PATH_CANDIDATES, "path", name, True)
    sha = _pick(cols, cfg.sha256, default.sha256, HASH_CANDIDATES, "hash", name, False)
    etype = cfg.entity_type if cfg.entity_type in cols else ""
    eid = cfg.entity_id if cfg.entity_id in cols else ""
    size = cfg.size if cfg.size in cols else ""
    return FilesConfig(name, path or cfg.path, sha or "", size, etype, eid)
