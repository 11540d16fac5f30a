"""Time every SQL statement ``recovery diff`` / ``recovery extract`` runs on its ATTACHed pair.

    python bench/trace_sql.py diff|extract WORLD_DIR [--top 15]

A profiling aid (not part of run.py): wraps ``open_pair`` so each statement is timed (SELECTs are
drained at once), then prints the total and the slowest statements with EXPLAIN QUERY PLAN.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOG: list[tuple[float, str]] = []


class _Rows:
    def __init__(self, rows: list, rowcount: int):
        self.rows, self.rowcount = rows, rowcount

    def fetchone(self):  # type: ignore[no-untyped-def]
        return self.rows.pop(0) if self.rows else None

    def fetchall(self):  # type: ignore[no-untyped-def]
        out, self.rows = self.rows, []
        return out

    def fetchmany(self, n: int = 1):  # type: ignore[no-untyped-def]
        out, self.rows = self.rows[:n], self.rows[n:]
        return out

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.fetchall())


class Timed:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, q: str, *a):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        cur = self.conn.execute(q, *a)
        rows = cur.fetchall() if cur.description else []
        LOG.append((time.perf_counter() - t, q))
        return _Rows(rows, cur.rowcount)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.conn, name)


def main() -> None:
    what, world = sys.argv[1], Path(sys.argv[2])
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 15
    from recovery.compare import diff as d
    from recovery.engine.sqlite import SQLiteEngine

    orig = SQLiteEngine.open_pair  # every stage opens its ATTACHed pair through the engine
    conns: list[sqlite3.Connection] = []

    def pair(self, *a):  # type: ignore[no-untyped-def]
        c = orig(self, *a)
        conns.append(c)
        return Timed(c)

    SQLiteEngine.open_pair = pair  # type: ignore[method-assign]
    b, lv = world / "gestima.db.bak.20261120_140000", world / "gestima.db"
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-trace-"))
    try:
        if what == "diff":
            d.diff(b, lv)
        else:
            from recovery.bundle.extract import extract

            extract(
                b,
                lv,
                tmp / "bundle",
                alembic_ini=HERE.parent / "sample_dbs/app/alembic.ini",
                uploads=world / "uploads",
            )
        total = time.perf_counter() - t0
        print(
            f"{what}: total {total:.2f} s, SQL on the pair {sum(x for x, _ in LOG):.2f} s in {len(LOG)} statements"
        )
        plan_conn = sqlite3.connect(":memory:")
        plan_conn.execute("ATTACH ? AS old", (f"file:{b}?mode=ro",))
        plan_conn.execute("ATTACH ? AS new", (f"file:{lv}?mode=ro",))
        for dt, q in sorted(LOG, reverse=True)[:top]:
            print(f"{dt:7.3f}  {q[:300]}")
            if q.lstrip().upper().startswith("SELECT"):
                try:
                    for row in plan_conn.execute("EXPLAIN QUERY PLAN " + q, ()).fetchall():
                        print("           ", row[3])
                except sqlite3.Error:
                    pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
