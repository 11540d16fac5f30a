"""``recovery diff``: schema diff + row diff of a backup against the live database.

:func:`analyse` opens both inputs read-only and resolves schemas, the schema diff and the column
mapping; ``diff`` and ``extract`` both start from it.
"""
from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlglot import exp

from recovery.changes import ChangeSet, diff_rows
from recovery.errors import RecoveryError
from recovery.mapping import ColumnMapping, UserMapping, load_mapping, resolve
from recovery.schema import Schema, reflect
from recovery.schemadiff import SchemaDiff, compare
from recovery.snapshot import deploy_time_of
from recovery.sqlite_io import open_pair, open_readonly
from recovery.timestamps import parse_since


@dataclass
class Analysis:
    """Both inputs opened read-only and understood. Close it when done."""

    backup: Path
    live: Path
    pair: sqlite3.Connection
    old: Schema
    new: Schema
    schema_diff: SchemaDiff
    mapping: ColumnMapping
    user_mapping: UserMapping
    since_jd: float | None
    since: str | None

    def close(self) -> None:
        self.pair.close()

    def __enter__(self) -> Analysis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def analyse(
    backup: str | os.PathLike[str], live: str | os.PathLike[str], since: str | None = None,
    mapping: str | os.PathLike[str] | None = None,
    lineage: dict[str, dict[str, exp.Expression]] | None = None,
) -> Analysis:
    backup_p, live_p = Path(backup), Path(live)
    user = load_mapping(mapping)
    since_text = since if since is not None else deploy_time_of(backup_p)
    since_jd, since_norm = parse_since(since_text) if since_text is not None else (None, None)
    old_conn = open_readonly(backup_p, "backup")
    new_conn = open_readonly(live_p, "live database")
    try:
        old, new = reflect(old_conn), reflect(new_conn)
        shared = set(old.data_tables) & set(new.data_tables)
        if not shared:
            raise RecoveryError(
                f"{backup_p} and {live_p} have no table in common",
                "is the backup of the same application?",
            )
        pair = open_pair(backup_p, live_p)
        try:
            sdiff = compare(pair, old_conn, new_conn, old, new, user)
            cmap = resolve(old, new, user, lineage, sdiff.renames_by_table())
        except BaseException:
            pair.close()
            raise
    finally:
        old_conn.close()
        new_conn.close()
    return Analysis(backup_p, live_p, pair, old, new, sdiff, cmap, user, since_jd, since_norm)


@dataclass(frozen=True)
class DiffResult:
    backup: Path
    live: Path
    schema: SchemaDiff
    changes: ChangeSet
    mapping: ColumnMapping
    since: str | None

    def to_dict(self, rows: bool = False) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        for name, t in sorted(self.changes.tables.items()):
            entry: dict[str, Any] = {
                "key": list(t.key), "keyed_by": t.keyed_by, "status": t.status,
                "inserted": t.inserted, "updated": t.updated, "deleted": t.deleted,
            }
            if t.uncompared_columns:
                entry["uncompared_columns"] = list(t.uncompared_columns)
            if t.timestamp_columns:
                entry["timestamp_columns"] = t.timestamp_columns
            if t.after_deploy is not None:
                entry["after_deploy"] = t.after_deploy
            if rows and t.rows is not None:
                entry["rows"] = [
                    {"kind": r.kind, "key": list(r.key), "after_deploy": r.after_deploy,
                     "changes": {c.column: {"old": _jsonable(c.old), "new": _jsonable(c.new)} for c in r.cells}}
                    for r in t.rows
                ]
            tables[name] = entry
        return {
            "backup": str(self.backup), "live": str(self.live), "since": self.since,
            "schema": self.schema.to_dict(), "mapping": self.mapping.to_dict(), "tables": tables,
            "totals": {k: sum(getattr(t, k) for t in self.changes.tables.values())
                       for k in ("inserted", "updated", "deleted")},
        }

    def csv_rows(self) -> Iterator[dict[str, Any]]:
        """One row per changed row (``--csv``)."""
        for name, t in sorted(self.changes.tables.items()):
            for r in t.rows or ():
                yield {
                    "table": name, "kind": r.kind, "key": json.dumps(list(r.key), ensure_ascii=False),
                    "after_deploy": "" if r.after_deploy is None else str(r.after_deploy).lower(),
                    "columns": ";".join(c.column for c in r.cells),
                    "old": json.dumps({c.column: _jsonable(c.old) for c in r.cells}, ensure_ascii=False) if r.cells else "",
                    "new": json.dumps({c.column: _jsonable(c.new) for c in r.cells}, ensure_ascii=False) if r.cells else "",
                }


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"hex": v.hex()}
    return v


def diff(
    backup: str | os.PathLike[str], live: str | os.PathLike[str], since: str | None = None,
    tables: list[str] | None = None, mapping: str | os.PathLike[str] | None = None, rows: bool = False,
) -> DiffResult:
    """Compare ``backup`` with ``live`` (both opened read-only): schema, then rows per table."""
    with analyse(backup, live, since, mapping) as a:
        unknown = [t for t in tables or [] if t not in a.old.tables and t not in a.new.tables]
        if unknown:
            raise RecoveryError(f"--table {unknown[0]} is in neither database", "check the table name")
        changes = diff_rows(a.pair, a.old, a.new, a.mapping, tables, a.since_jd, rows, a.since)
        return DiffResult(a.backup, a.live, a.schema_diff, changes, a.mapping, a.since)
