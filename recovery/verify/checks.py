"""Verification after a re-import: integrity, foreign keys, alembic revision, row counts.

:func:`verify_file` is the fast form, given the file: ``PRAGMA integrity_check`` and ``PRAGMA
foreign_key_check`` each read the whole database, so they run at the same time on two read-only
connections in two threads (Python's sqlite3 releases the GIL while SQLite works). :func:`verify`
runs the same checks one after the other on a connection the caller already has. Both return the
same dict; each check reads one committed state of the file.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlglot import exp

from recovery.model.outcome import Outcome
from recovery.model.values import RowCountCheck, Verification
from recovery.engine.schema import alembic_revision
from recovery.engine.sqlbuild import sql
from recovery.engine import open_engine
from recovery.engine.base import Connection, Engine

INTEGRITY_CACHE_KIB = 16 * 1024
"""Page cache of the integrity-check connection. ``integrity_check`` looks every row up in each of
its table's indexes; with SQLite's default 2 MB cache most of those page reads go to the OS, 16 MB
makes it about 10-20 % faster at 1M parts (more helps little). ``mmap_size`` is faster still (~30 %)
but every mapped page counts in the process's resident size, up to the size of the file, so it is
not used. ``foreign_key_check`` gains nothing from either: it keeps the default."""

T = TypeVar("T")


def foreign_key_problems(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute("PRAGMA main.foreign_key_check").fetchmany(limit)
    return [{"table": t, "rowid": r, "parent": p, "fk": fk} for t, r, p, fk in rows]


def integrity_problems(conn: Connection) -> list[str]:
    """``PRAGMA integrity_check``'s lines: ``["ok"]`` when the file is sound."""
    return [r[0] for r in conn.execute("PRAGMA main.integrity_check").fetchall()]


def verify(conn: Connection, outcome: Outcome, expected_revision: str | None) -> dict[str, Any]:
    """Run every check and return the results; ``ok`` is True only when all pass."""
    return _result(integrity_problems(conn), foreign_key_problems(conn), alembic_revision(conn), outcome,
                   expected_revision)


def verify_file(path: str | os.PathLike[str], outcome: Outcome, expected_revision: str | None,
                role: str = "database", integrity_cache_kib: int = INTEGRITY_CACHE_KIB) -> dict[str, Any]:
    """:func:`verify` on the database file ``path``, opened read-only (committed WAL content
    included): the integrity check and the foreign-key check run concurrently, each on its own
    connection, so the whole takes about as long as the slower of the two. ``role`` names the file
    in the error raised when it cannot be opened."""
    engine = open_engine(path)
    with engine.readonly(role) as conn:  # refuses a bad file with one clear line, before any thread
        revision = alembic_revision(conn)
    cache = exp.Pragma(this=exp.EQ(this=exp.to_identifier("cache_size"),
                                   expression=exp.Literal.number(-int(integrity_cache_kib))))

    def integrity(conn: sqlite3.Connection) -> list[str]:
        conn.execute(sql(cache))
        return integrity_problems(conn)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify") as pool:
        lines = pool.submit(_on_connection, engine, role, integrity)
        fks = pool.submit(_on_connection, engine, role, foreign_key_problems)
        return _result(lines.result(), fks.result(), revision, outcome, expected_revision)


def _on_connection(engine: Engine, role: str, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work`` on a fresh read-only connection of this thread (a connection stays in its thread;
    for a WAL file in an unwritable folder both threads read the same private copy)."""
    conn = engine.connect_readonly(role)
    try:
        return work(conn)  # type: ignore[arg-type]
    finally:
        conn.close()


def _result(integrity: list[str], fks: list[dict[str, Any]], revision: str | None, outcome: Outcome,
            expected_revision: str | None) -> dict[str, Any]:
    counts = {}
    for name, t in sorted(outcome.tables.items()):
        expected = t.rows_before + t.inserted - t.deleted
        counts[name] = RowCountCheck(t.rows_before, t.inserted, t.deleted, expected, t.rows_after)
    return Verification(tuple(integrity), tuple(fks), expected_revision, revision, counts).to_dict()
