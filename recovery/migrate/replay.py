"""The upgrade replayed on a scratch copy of the backup: what the migrations themselves write.

A value in a column only the new schema has is a user's only when it differs from what the
upgrade produces for that row. :func:`replay_upgrade` copies the backup, upgrades the copy to the
live database's revision with the application's own migrations in the sandbox
(:mod:`recovery.migrate.sandbox`, never in-process), and returns the copy; callers ATTACH it read-only
(schema :data:`SCHEMA`) and compare set-based in SQL (:func:`recovery.compare.changes.user_value`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from recovery.engine.base import Connection
from recovery.engine import open_engine

SCHEMA = "replayed"
"""The schema name the replayed copy is attached under (read-only)."""

log = logging.getLogger(__name__)


def replay_upgrade(
    alembic_ini: str | os.PathLike[str],
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    folder: str | os.PathLike[str],
) -> Path | None:
    """A copy of ``backup`` in ``folder`` upgraded to ``live``'s revision in the sandbox, or None
    (with one line on stderr) when the revisions are unknown or the application's upgrade fails:
    then nothing is verified and the callers fall back to "filled by the upgrade, not verified"."""
    from recovery.engine.schema import alembic_revision
    from recovery.migrate.sandbox import MigrationFailed, Sandbox

    with open_engine(backup).readonly("backup") as b:
        old_rev = alembic_revision(b)
    with open_engine(live).readonly("live database") as n:
        new_rev = alembic_revision(n)
    if old_rev is None or new_rev is None:
        return None
    copy = open_engine(backup).snapshot(Path(folder) / "replayed-upgrade.db", "backup")
    if old_rev == new_rev:
        return copy
    try:
        with Sandbox(Path(alembic_ini), copy, [Path(backup), Path(live)]) as sb:
            sb.migrate("upgrade", new_rev)
    except MigrationFailed as err:
        log.warning(
            f"recovery: replaying the upgrade on a copy of the backup failed ({err.one_line()}); values the "
            "upgrade may have filled are listed as not verified"
        )
        return None
    return copy


class Replayed:
    """The replayed copy's tables and columns, and how to ATTACH it read-only as :data:`SCHEMA`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open_engine(self.path).readonly("replayed copy") as c:
            names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            self.columns: dict[str, frozenset[str]] = {
                n: frozenset(r[0] for r in c.execute("SELECT name FROM pragma_table_info(?)", (n,)))
                for n in names
            }

    def attach(self, conn: Connection) -> Connection:
        from recovery.engine.sqlite_io import readonly_uri

        conn.execute("ATTACH DATABASE ? AS " + SCHEMA, (readonly_uri(self.path),))
        return conn

    def covers(self, table: str, columns: list[str] | tuple[str, ...]) -> bool:
        """The replayed copy has ``table`` with every one of ``columns``."""
        have = self.columns.get(table)
        return have is not None and all(c in have for c in columns)
