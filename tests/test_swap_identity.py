"""The live file's identity decides what a rollback may assume (round 7's review): a file put at
the live path by someone else during the run is never renamed over (its content is in no copy of
ours); a resumed run takes the live file for swapped in only when it is the very staged file the
re-import wrote; and a second bundle's re-import records itself beside the first's."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from recovery.engine import open_engine
from recovery.errors import RecoveryError
from tests.clirun import invoke, run

BACKUP = "gestima.db.bak.20261120_140000"


def _wal_db(path: Path, value: str) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        conn.execute("INSERT INTO t VALUES (?)", (value,))
    conn.close()
    return path


def _values(path: Path) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")]
    conn.close()
    return rows


def test_a_file_put_at_the_live_path_during_the_run_is_never_swapped_over(tmp_path: Path) -> None:
    db = _wal_db(tmp_path / "live.db", "original")
    staged = _wal_db(tmp_path / "staged.db", "restored")
    window = open_engine(db).write_window()
    try:
        newcomer = _wal_db(tmp_path / "newcomer.db", "precious")
        os.replace(newcomer, db)  # someone else's file, with writes of its own
        with pytest.raises(RecoveryError, match="replaced by another file"):
            window.swap(staged)
    finally:
        window.release()
    assert _values(db) == ["precious"] and staged.exists()


def _rollback_args(w: Path) -> list[object]:
    from recovery.sample import app_dir

    return [
        "rollback",
        w / "gestima.db",
        "--backup",
        w / BACKUP,
        "--alembic-ini",
        app_dir() / "alembic.ini",
        "--out",
        w / "run",
        "--yes",
    ]


def _killed_then(world: Path, tmp_path: Path, point: str) -> Path:
    w = tmp_path / "w"
    shutil.copytree(world, w)
    killed = run(*_rollback_args(w), env={"RECOVERY_TEST_KILL_AT_STEP": point})
    assert killed.returncode < 0 or killed.returncode == 137, killed.stderr[-400:]
    return w  # the caller resumes with the same arguments


@pytest.mark.parametrize("point", ["reimport:start", "reimport:done"])
def test_a_resume_never_takes_someone_elses_file_for_the_swapped_one(
    world: Path, tmp_path: Path, point: str
) -> None:
    """Killed before the swap (before or after the staged re-import), then the live file replaced
    by a copy of itself (same content, a new inode): the resume refuses, exit 2, and leaves that
    file as it is (before: it journaled the restore done and said the live DB was the backup)."""
    w = _killed_then(world, tmp_path, point)
    live = w / "gestima.db"
    copy = w / "copy.db"
    shutil.copyfile(live, copy)
    for side in ("-wal", "-shm"):
        if Path(str(live) + side).exists():
            shutil.copyfile(Path(str(live) + side), Path(str(copy) + side))
    os.replace(copy, live)
    before = live.read_bytes()
    res = invoke(*_rollback_args(w))
    journal = json.loads((w / "run" / "journal.json").read_text())
    # refused, not started over: a new attempt would take a new safety copy over the one holding
    # the file the run found, which is no longer at the live path
    assert res.returncode == 2, res.stderr[-400:]
    assert "neither the file this run found nor the one it swapped in" in res.stderr
    assert live.read_bytes() == before
    assert journal["steps"]["restore"]["state"] != "done"


def test_a_second_bundle_records_itself_beside_the_first(
    bundle: Path, restored: Path, tmp_path: Path
) -> None:
    """``_recovery_applied`` gains its ``outcome`` column with the first re-import; the next
    bundle's row names its columns (before: "has 5 columns but 4 values were supplied")."""
    first = invoke("reimport", bundle, restored, "--out", tmp_path / "run1", "--yes")
    assert first.returncode in (0, 1), first.stderr[-400:]
    with sqlite3.connect(restored) as conn:  # the same rows again, as another bundle's
        conn.execute("UPDATE _recovery_applied SET bundle_id = 'an-earlier-bundle'")
    conn.close()
    second = invoke(
        "reimport", bundle, restored, "--out", tmp_path / "run2", "--on-conflict", "skip", "--yes"
    )
    assert second.returncode in (0, 1), second.stderr[-400:]
    with sqlite3.connect(f"file:{restored}?mode=ro", uri=True) as conn:
        ids = sorted(r[0] for r in conn.execute("SELECT bundle_id FROM _recovery_applied"))
    conn.close()
    assert len(ids) == 2 and "an-earlier-bundle" in ids
