"""``recovery diff`` of a live database the application keeps committing into counts ONE instant.

The writer below is a real process that moves one "missing" row between two tables in every
transaction: at every committed instant exactly one row of the backup is absent from the live
database (``a`` row 1 or ``b`` row 1, never both, never neither). A diff that counted ``a`` at one
instant and ``b`` at another (separate statements, two connections, several key ranges) would
report 0 or 2 deleted rows; one that reads one instant always reports 1.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from recovery.compare import changes
from recovery.compare.diff import diff
from recovery.engine.sqlite_io import readonly_uri

ROWS = 30_000  # over changes.SPLIT_MIN_ROWS: the tables are also split into key ranges

WRITER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    conn.execute("PRAGMA synchronous = OFF")
    stop = time.monotonic() + float(sys.argv[2])
    n = 0
    print("ready", flush=True)
    while time.monotonic() < stop:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT 1 FROM a WHERE id = 1").fetchone():
            conn.execute("DELETE FROM a WHERE id = 1")
            conn.execute("INSERT INTO b VALUES (1, 'v1')")
        else:
            conn.execute("DELETE FROM b WHERE id = 1")
            conn.execute("INSERT INTO a VALUES (1, 'v1')")
        conn.execute("COMMIT")
        n += 1
    print(n, flush=True)
    """
)


def _world(tmp: Path, wal: bool = True) -> tuple[Path, Path]:
    backup, live = tmp / "backup.db", tmp / "live.db"
    conn = sqlite3.connect(backup)
    for t in ("a", "b"):
        conn.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        conn.execute(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) "
            f"INSERT INTO {t} SELECT i, 'v' || i FROM n"
        )
    conn.commit()
    conn.execute("VACUUM INTO ?", (str(live),))
    conn.close()
    conn = sqlite3.connect(live, isolation_level=None)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("DELETE FROM b WHERE id = 1")  # the one missing row starts in b
    conn.close()
    return backup, live


def _deleted(backup: Path, live: Path) -> int:
    result = diff(backup, live)
    return sum(t.deleted for t in result.changes.tables.values())


def _writing(live: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(live), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_diff_counts_one_instant_while_the_app_commits(tmp_path: Path) -> None:
    backup, live = _world(tmp_path)
    assert _deleted(backup, live) == 1  # at rest
    writer = _writing(live, 30)
    seen = [_deleted(backup, live) for _ in range(4)]
    writer.terminate()
    writer.wait()
    assert seen == [1] * 4, f"deleted rows per diff while the app committed: {seen}"


def test_a_diff_whose_snapshots_keep_moving_counts_on_one_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No retry left: the one-connection fallback (one read transaction) is itself one instant."""
    monkeypatch.setattr(changes, "INSTANT_TRIES", 0)
    backup, live = _world(tmp_path)
    writer = _writing(live, 30)
    seen = [_deleted(backup, live) for _ in range(2)]
    writer.terminate()
    writer.wait()
    assert seen == [1] * 2


def test_the_instant_check_sees_a_commit_between_two_snapshots(tmp_path: Path) -> None:
    _backup, live = _world(tmp_path)
    app = sqlite3.connect(live)  # the running app: its connection keeps the -shm index
    app.execute("SELECT count(*) FROM a").fetchone()
    pair = sqlite3.connect("file::memory:", uri=True)
    pair.execute("ATTACH DATABASE ? AS new", (readonly_uri(live),))
    with changes.one_instant(pair) as instant:
        assert instant is not None and instant.still()
        app.execute("INSERT INTO a VALUES (?, 'late')", (ROWS + 1,))
        app.commit()
        assert not instant.still()
        # the pair's own snapshot was fixed before the commit
        assert pair.execute("SELECT count(*) FROM new.a").fetchone() == (ROWS,)
    assert pair.execute("SELECT count(*) FROM new.a").fetchone() == (ROWS + 1,)
    pair.close()
    app.close()


def test_a_rollback_journal_live_database_is_not_held(tmp_path: Path) -> None:
    """Outside WAL a held read lock would stall the app's writers for the whole diff: none is held."""
    backup, live = _world(tmp_path, wal=False)
    pair = sqlite3.connect("file::memory:", uri=True)
    pair.execute("ATTACH DATABASE ? AS new", (readonly_uri(live),))
    with changes.one_instant(pair) as instant:
        assert instant is None and not pair.in_transaction
        app = sqlite3.connect(live, timeout=0)
        t0 = time.monotonic()
        app.execute("INSERT INTO a VALUES (?, 'late')", (ROWS + 1,))
        app.commit()  # would raise "database is locked" at once if the diff held a read lock
        app.close()
        assert time.monotonic() - t0 < 5
    pair.close()
    assert _deleted(backup, live) == 1
