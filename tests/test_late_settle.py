"""The late check waits for a commit that was waiting on our lock (ReplacedFile.settle).

A process that had the live file open and was waiting on the rollback's write lock commits its
pending transaction into the replaced file once the lock is let go, after its own next retry. The
end-of-run look at the replaced file must not be taken before that commit lands, or the commit is
neither in the restored database nor listed in late_commits.json."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from recovery.engine.holders import attached_elsewhere
from recovery.restore.livewindow import ReplacedFile

# retries every 0.3 s on its own (timeout 0): later than SQLite's default busy handler would
WRITER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
c.execute("SELECT 1").fetchone()
print("ready", flush=True)
while True:
    try:
        c.execute("INSERT INTO t (v) VALUES ('late')")
        break
    except sqlite3.OperationalError:
        time.sleep(0.3)
print("committed", flush=True)
sys.stdin.readline()  # stays attached until told
"""


def _wal_db(path: Path) -> None:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (v TEXT)")
    c.execute("INSERT INTO t (v) VALUES ('before')")
    c.close()


def _replaced(db: Path) -> ReplacedFile:
    fds = [os.open(p, os.O_RDWR) for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"))]
    return ReplacedFile(db.name, fds[0], fds[1], fds[2])


def test_settle_waits_for_the_commit_that_waited_on_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    _wal_db(db)
    ours = sqlite3.connect(db, isolation_level=None)
    ours.execute("BEGIN IMMEDIATE")  # the rollback's write lock
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdin is not None
    try:
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.4)  # it is now retrying against our lock
        replaced = _replaced(db)
        assert attached_elsewhere(replaced.shm_fd or -1)
        replaced.mark()
        ours.execute("ROLLBACK")  # the lock is let go
        assert not replaced.changed()  # its commit has not landed yet: a look now would miss it
        replaced.settle(forced=False)
        assert writer.stdout.readline().strip() == "committed"
        assert replaced.changed()  # the late check, looking now, sees the commit
        assert time.monotonic() - replaced.let_go >= 0.5
        replaced.close()
    finally:
        writer.stdin.close()
        writer.wait(timeout=10)
        ours.close()


def test_settle_does_not_wait_when_nobody_else_has_the_file_open(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    _wal_db(db)
    ours = sqlite3.connect(db, isolation_level=None)
    ours.execute("BEGIN IMMEDIATE")
    replaced = _replaced(db)
    assert replaced.shm_fd is not None and not attached_elsewhere(replaced.shm_fd)
    replaced.mark()
    ours.execute("ROLLBACK")
    t = time.monotonic()
    replaced.settle(forced=True)
    assert time.monotonic() - t < 0.2
    replaced.close()
    ours.close()
