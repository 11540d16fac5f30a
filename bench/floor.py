"""The plain-SQL floor for ``recovery diff``: a bare keyed compare in ONE sqlite3 connection.

    python bench/floor.py BACKUP LIVE [--naive]

Both files are ATTACHed read-only (``mode=ro``, so committed ``-wal`` content is seen, as the tool
sees it). For every table the two share (``alembic_version`` aside) it counts, by primary key:

* inserted = live rows whose key the backup lacks (anti-join new → old),
* deleted  = backup rows whose key the live table lacks (anti-join old → new),
* updated  = rows in both where any same-named column ``IS NOT`` equal.

The outer side of each anti-join is scanned ``NOT INDEXED`` (in rowid order), so the probes into
the other table's primary key come in key order and hit the page cache. ``--naive`` leaves the
choice to SQLite's planner, which scans the smallest covering index instead (for ``quote_items``
``ix_quote_items_part_id``: rowids in part_id order, one random B-tree probe per row — 4-8× slower
at 1.5M rows). Both are measured; the tuned one is the floor.

Hand-written SQL, no reflection beyond ``PRAGMA table_info``, no imports beyond the standard
library: the least work any row diff of these two files can do. Prints one JSON object.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import quote


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def uri(p: str) -> str:
    return f"file:{quote(str(Path(p).resolve()))}?mode=ro"


def columns(conn: sqlite3.Connection, schema: str, table: str) -> tuple[list[str], list[str]]:
    info = conn.execute(f"PRAGMA {schema}.table_info({q(table)})").fetchall()
    cols = [r[1] for r in info]
    pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
    return cols, pk


def floor(backup: str, live: str, naive: bool = False) -> dict:
    t0 = time.perf_counter()
    conn = sqlite3.connect(":memory:")
    conn.execute("ATTACH DATABASE ? AS old", (uri(backup),))
    conn.execute("ATTACH DATABASE ? AS new", (uri(live),))

    def names(s: str) -> set[str]:
        return {
            r[0]
            for r in conn.execute(
                f"SELECT name FROM {s}.sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        }

    shared = sorted((names("old") & names("new")) - {"alembic_version"})
    out: dict = {"tables": {}}
    for t in shared:
        ocols, pk = columns(conn, "old", t)
        ncols, npk = columns(conn, "new", t)
        if not pk or pk != npk:
            out["tables"][t] = "skipped: no common primary key"
            continue
        common = [c for c in ocols if c in ncols and c not in pk]
        hint = "" if naive else " NOT INDEXED"
        on = " AND ".join(f"o.{q(k)} = n.{q(k)}" for k in pk)
        ins = conn.execute(
            f"SELECT count(*) FROM new.{q(t)} n{hint} WHERE NOT EXISTS "
            f"(SELECT 1 FROM old.{q(t)} o WHERE {on})"
        ).fetchone()[0]
        dele = conn.execute(
            f"SELECT count(*) FROM old.{q(t)} o{hint} WHERE NOT EXISTS "
            f"(SELECT 1 FROM new.{q(t)} n WHERE {on})"
        ).fetchone()[0]
        upd = 0
        if common:
            ne = " OR ".join(f"o.{q(c)} IS NOT n.{q(c)}" for c in common)
            upd = conn.execute(
                f"SELECT count(*) FROM old.{q(t)} o JOIN new.{q(t)} n ON {on} WHERE {ne}"
            ).fetchone()[0]
        out["tables"][t] = {"inserted": ins, "updated": upd, "deleted": dele, "compared": common}
    conn.close()
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


if __name__ == "__main__":
    print(json.dumps(floor(sys.argv[1], sys.argv[2], naive="--naive" in sys.argv[3:]), indent=1))
