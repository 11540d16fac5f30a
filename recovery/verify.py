"""Verification after a re-import: integrity, foreign keys, alembic revision, row counts."""
from __future__ import annotations

import sqlite3
from typing import Any

from recovery.outcome import Outcome
from recovery.schema import alembic_revision


def foreign_key_problems(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute("PRAGMA main.foreign_key_check").fetchmany(limit)
    return [{"table": t, "rowid": r, "parent": p, "fk": fk} for t, r, p, fk in rows]


def verify(conn: sqlite3.Connection, outcome: Outcome, expected_revision: str | None) -> dict[str, Any]:
    """Run every check and return the results; ``ok`` is True only when all pass."""
    integrity = [r[0] for r in conn.execute("PRAGMA main.integrity_check").fetchall()]
    fks = foreign_key_problems(conn)
    revision = alembic_revision(conn)
    counts = {}
    for name, t in sorted(outcome.tables.items()):
        expected = t.rows_before + t.inserted - t.deleted
        counts[name] = {"before": t.rows_before, "inserted": t.inserted, "deleted": t.deleted,
                        "expected": expected, "actual": t.rows_after, "ok": expected == t.rows_after}
    result = {
        "integrity_check": "ok" if integrity == ["ok"] else integrity[:5],
        "foreign_key_check": fks,
        "alembic_revision": {"expected": expected_revision, "actual": revision,
                             "ok": expected_revision is None or revision == expected_revision},
        "row_counts": counts,
    }
    result["ok"] = (integrity == ["ok"] and not fks and result["alembic_revision"]["ok"]
                    and all(c["ok"] for c in counts.values()))
    return result
