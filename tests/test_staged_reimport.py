"""The backup restore re-imports into the staged file before the swap (``pipeline._reimport_staged_then_swap``).

What the application can see: the live DB is the failed release's DB until one rename makes it
the backup with the post-deploy work re-imported — never the bare backup, never a half-finished
re-import. The kill points of the new order are in ``tests/test_reliability.py``
(``test_rollback_killed_at_step``, ``reimport:committed`` included).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from recovery.pipeline import rollback
from recovery.sample import app_dir
from tests.forkrun import forked

APP = r"""
import sqlite3, sys, time
from pathlib import Path
db, stop, log = Path(sys.argv[1]), Path(sys.argv[2]), open(sys.argv[3], "w")
n = 0
while not stop.exists():
    n += 1
    c = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        # a writer waits for any write lock; a reader reads what is committed, at once
        c.execute("BEGIN IMMEDIATE" if n % 2 else "BEGIN")
        rev = c.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        applied = c.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = '_recovery_applied'"
        ).fetchone()[0]
        parts = c.execute("SELECT count(*) FROM parts").fetchone()[0]
        c.execute("ROLLBACK")
        log.write(f"{rev} {applied} {parts}\n")
        log.flush()
    except sqlite3.Error as exc:
        log.write(f"error {exc}\n")
        log.flush()
    finally:
        c.close()
    time.sleep(0.01)
"""


def _state(db: Path) -> tuple[str, int, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        rev = c.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        applied = c.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = '_recovery_applied'"
        ).fetchone()[0]
        parts = c.execute("SELECT count(*) FROM parts").fetchone()[0]
    c.close()
    return rev, applied, parts


def test_an_application_writer_sees_the_old_db_or_the_final_one(
    tmp_path: Path, sample_world: Path
) -> None:
    """An application process opens the live DB afresh, again and again, during a whole
    ``rollback(force=True)``, every other time as a writer (``BEGIN IMMEDIATE``: it waits for our
    write lock) and else as a reader: every state it reads is the failed release's DB (before the
    swap, or the replaced file it still has open) or the final one (the backup's revision *with*
    ``_recovery_applied``) — never the backup without the re-import (which a reader saw for the
    whole re-import when it ran on the live DB after the swap)."""
    w = tmp_path / "w"
    shutil.copytree(sample_world, w)
    db = w / "gestima.db"
    backup = next(w.glob("gestima.db.bak.*[0-9]"))
    pre = _state(db)
    stop, log = tmp_path / "stop", tmp_path / "seen.log"
    app = subprocess.Popen([sys.executable, "-c", APP, str(db), str(stop), str(log)])
    try:
        result = rollback(
            db,
            backup,
            tmp_path / "run",
            alembic_ini=app_dir() / "alembic.ini",
            force=True,
        )
    finally:
        stop.touch()
        app.wait(timeout=60)
    assert result.exit_code in (0, 1)
    final = _state(db)
    assert final[0] != pre[0] and final[1] == 1 and pre[1] == 0
    seen = [tuple(line.split()) for line in log.read_text().splitlines()]
    assert seen, "the application never read the DB"
    assert not [s for s in seen if s[0] == "error"], seen
    states = {(rev, int(applied), int(parts)) for rev, applied, parts in seen}
    assert states <= {pre, final}, f"saw {states - {pre, final}} (pre {pre}, final {final})"
    journal = json.loads((tmp_path / "run" / "journal.json").read_text(encoding="utf-8"))
    assert journal["steps"]["report"]["state"] == "done"


@pytest.fixture
def sample_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world (60 parts) generated for this module."""
    from recovery.sample import generate

    return generate(tmp_path_factory.mktemp("staged") / "world", parts=60, seed=7)


def _rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows, ordered (what an application reads)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        names = [
            r[0]
            for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        out = {n: sorted(c.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}
    c.close()
    return out


def test_an_aborted_reimport_swaps_the_bare_backup_in_and_says_so(tmp_path: Path) -> None:
    """``--on-conflict abort`` keeps its contract with the re-import in the staged file: the
    re-import is rolled back, the bare backup is swapped in (exit 3, "the live DB … is now the
    backup"), the run's files say so, and ``undo`` puts the failed release's DB back."""
    from recovery.pipeline import undo
    from tests.test_report import _small_world

    w = _small_world(tmp_path / "w", "conflict")
    db = w / "gestima.db"
    backup = next(w.glob("gestima.db.bak.*[0-9]"))
    failed_release = _rows(db)
    result = rollback(
        db, backup, tmp_path / "run", alembic_ini=app_dir() / "alembic.ini", on_conflict="abort"
    )
    assert result.exit_code == 3 and result.outcome is not None and result.outcome.aborted
    assert result.note is not None and f"the live DB {db} is now the backup" in result.note
    assert _rows(db) == _rows(backup)
    assert not list(w.glob(".gestima.db.restore-tmp*"))
    script = (tmp_path / "run" / "reimport.sql").read_text(encoding="utf-8")
    assert "aborted on conflicts" in script.splitlines()[0]
    assert undo(tmp_path / "run").state == "undone"
    assert _rows(db) == failed_release


def test_a_live_db_replaced_by_someone_else_after_a_kill_is_not_taken_for_ours(
    tmp_path: Path, sample_world: Path
) -> None:
    """Killed before the swap, then something else puts another file at the live path (a new
    inode): the resumed run must not take it for the file it swapped in (it holds no re-import of
    the run's bundle) — exit 2, nothing changed, the other file untouched."""
    import os

    from recovery.errors import RecoveryError

    w = tmp_path / "w"
    shutil.copytree(sample_world, w)
    db = w / "gestima.db"
    backup = next(w.glob("gestima.db.bak.*[0-9]"))
    args = [
        "rollback",
        str(db),
        "--backup",
        str(backup),
        "--alembic-ini",
        str(app_dir() / "alembic.ini"),
        "--out",
        str(tmp_path / "run"),
        "--yes",
    ]
    killed = forked(*args, env={"RECOVERY_TEST_KILL_AT_STEP": "reimport:done"}, timeout=120)
    assert killed.returncode == -9, killed.stderr
    other = w / "other.db"
    shutil.copyfile(backup, other)
    os.replace(other, db)
    for side in ("-wal", "-shm"):
        (w / f"gestima.db{side}").unlink(missing_ok=True)
    before = _rows(db)
    with pytest.raises(RecoveryError) as err:
        rollback(db, backup, tmp_path / "run", alembic_ini=app_dir() / "alembic.ini")
    assert err.value.exit_code == 2 and "neither the file this run found" in err.value.message
    assert _rows(db) == before


def test_a_writeback_error_of_the_staged_file_fails_the_run_before_the_swap(
    tmp_path: Path, sample_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staged file's pages are written back by an fsync on a side thread once the re-import's
    writes are applied (``pipeline._reimport_into``'s ``writeback``, a ``_Background``). Linux reports a write-back error to one fsync
    only, so an error there must fail the run although the fsync after the COMMIT succeeds: the
    live DB is the failed release's, no staged file is left."""
    import errno
    import os
    import threading

    w = tmp_path / "w"
    shutil.copytree(sample_world, w)
    db = w / "gestima.db"
    backup = next(w.glob("gestima.db.bak.*[0-9]"))
    before = _rows(db)
    real_fsync, failed = os.fsync, []

    def fsync(fd: int) -> None:
        if threading.current_thread().name.startswith("recovery-writeback"):
            failed.append(os.readlink(f"/proc/self/fd/{fd}"))
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as err:  # as an error of the fsync after the COMMIT would be
        rollback(db, backup, tmp_path / "run", alembic_ini=app_dir() / "alembic.ini")
    assert err.value.errno == errno.EIO
    assert failed and all(p.endswith(".gestima.db.restore-tmp") for p in failed), failed
    assert _rows(db) == before
    assert not list(w.glob(".gestima.db.restore-tmp*"))
