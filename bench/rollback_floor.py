"""The copy-and-read floor of ``recovery rollback`` (issue 18): copy the backup file once, then
read every column of every row of both databases once inside SQLite.

    python bench/rollback_floor.py BACKUP LIVE SCRATCH_DIR

One connection per database, opened read-only (``mode=ro``: committed ``-wal`` content is read,
as the tool reads it); per table one ``SELECT count(c1), …, count(cN) FROM t NOT INDEXED`` (every
row's record decoded column by column, in rowid order). The copy goes to ``SCRATCH_DIR`` and is
removed. Prints one JSON object: seconds for the copy, the reads, and the total.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_all(path: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = 0
    try:
        for (t,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({q(t)})")]
            sel = ", ".join(f"count({q(c)})" for c in cols) or "count(*)"
            conn.execute(f"SELECT count(*), {sel} FROM {q(t)} NOT INDEXED").fetchone()
            rows += conn.execute(f"SELECT count(*) FROM {q(t)}").fetchone()[0]
    finally:
        conn.close()
    return rows


def main() -> None:
    backup, live, scratch = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    scratch.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dest = scratch / "floor-copy.db"
    shutil.copyfile(backup, dest)
    t1 = time.perf_counter()
    rows = read_all(backup) + read_all(live)
    t2 = time.perf_counter()
    dest.unlink()
    print(
        json.dumps(
            {
                "copy_s": round(t1 - t0, 3),
                "read_s": round(t2 - t1, 3),
                "seconds": round(t2 - t0, 3),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
