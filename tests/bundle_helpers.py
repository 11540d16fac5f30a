"""Helpers shared by test_extract.py and test_transpile.py: read-only opens and applying a
bundle's plan to a copy of the backup the way the re-import will (one transaction, FKs on)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from recovery.bundle.store import open_bundle
from recovery.transpile.passes import plan as make_plan


def ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_by_key(conn: sqlite3.Connection, table: str, where: str = "1") -> dict[tuple, dict]:
    cur = conn.execute(f'SELECT * FROM "{table}" WHERE {where}')
    names = [d[0] for d in cur.description]
    out = {}
    for r in cur.fetchall():
        d = dict(zip(names, r, strict=True))
        out[(d["id"],)] = d
    return out


def apply_to_copy(
    bundle_dir: Path,
    backup: Path,
    target: Path,
    apply_deletes: bool = False,
    prepare: str = "",
) -> sqlite3.Connection:
    """Copy ``backup`` to ``target`` (backup API) and run the bundle's plan on it in one
    transaction with foreign keys on; returns the open connection (bundle still attached).
    ``prepare``: SQL run on the copy first (edits made in the target since the rollback)."""
    with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
        if prepare:
            dst.executescript(prepare)
    src.close()
    dst.close()
    b = open_bundle(bundle_dir)
    p = make_plan(b.old, b.new, b.mapping, b.tables_with_rows(), b.tables_with_deletes())
    assert not p.errors, p.errors
    conn = sqlite3.connect(f"file:{target}", uri=True, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("ATTACH DATABASE ? AS bundle", (f"file:{b.rows_db}?mode=ro",))
    conn.execute("ATTACH DATABASE ? AS base", (f"file:{b.base_db}?mode=ro",))
    conn.execute("BEGIN")
    try:
        for stmt in p.statements(apply_deletes=apply_deletes):
            conn.execute(stmt.sql(dialect="sqlite"))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return conn


def check_constraints(conn: sqlite3.Connection) -> None:
    assert conn.execute("PRAGMA main.integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA main.foreign_key_check").fetchall() == []
