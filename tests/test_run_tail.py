"""The run's bookkeeping around its steps: the collector's freeze (recovery.gcquiet) is handed
back however the run ends and never undoes someone else's, and the replaced file's last
descriptors — closed beside the report — are closed by the time the rollback returns."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recovery.errors import RecoveryError
from recovery.gcquiet import freeze_more, long_lived_frozen
from recovery.pipeline import rollback
from recovery.restore.livewindow import ReplacedFile

ALEMBIC_INI = Path(__file__).resolve().parents[1] / "sample_dbs" / "app" / "alembic.ini"


def _paths(world: Path) -> tuple[Path, Path, Path]:
    t = json.loads((world / "world.json").read_text())
    return world / t["live"], world / t["backup"], world / t["uploads"]


def _deleted_fds_of(db: Path) -> list[str]:
    """This process's descriptors on a file that had ``db``'s name and was since replaced."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(db)) and target.endswith("(deleted)"):
            out.append(target)
    return out


def test_a_rollback_closes_the_replaced_file_and_hands_the_collector_back(
    world_copy: Path, tmp_path: Path
) -> None:
    db, backup, uploads = _paths(world_copy)
    assert gc.get_freeze_count() == 0
    seen: list[int] = []
    res = rollback(
        db,
        backup,
        tmp_path / "run",
        uploads=uploads,
        alembic_ini=ALEMBIC_INI,
        confirm=lambda _plan: seen.append(gc.get_freeze_count()) or True,
    )
    assert res.exit_code in (0, 1)
    assert seen and seen[0] > 0  # frozen while the run went on
    assert gc.get_freeze_count() == 0
    journal = json.loads((tmp_path / "run" / "journal.json").read_text())
    assert journal["steps"]["late_check"]["checked"] is True  # the replaced file was looked at
    assert _deleted_fds_of(db) == []  # ... and its descriptors are closed


def test_a_refused_run_hands_the_collector_back(world_copy: Path, tmp_path: Path) -> None:
    db, _, uploads = _paths(world_copy)
    newer = tmp_path / "newer.db"
    shutil.copyfile(db, newer)  # refused by the probe: newer than the live DB
    with pytest.raises(RecoveryError):
        rollback(db, newer, tmp_path / "run", uploads=uploads, alembic_ini=ALEMBIC_INI)
    assert gc.get_freeze_count() == 0


def test_someone_elses_freeze_is_left_alone() -> None:
    gc.freeze()
    try:
        held = gc.get_freeze_count()
        with long_lived_frozen():
            freeze_more()  # not ours: nothing more is frozen
            assert gc.get_freeze_count() == held
        assert gc.get_freeze_count() == held  # not unfrozen by us
    finally:
        gc.unfreeze()
    freeze_more()  # outside any run: nothing
    assert gc.get_freeze_count() == 0


def test_a_detached_replaced_file_closes_nothing_twice(tmp_path: Path) -> None:
    paths = [tmp_path / n for n in ("a.db", "a.db-wal", "a.db-shm")]
    for p in paths:
        p.write_bytes(b"x")
    fds = [os.open(p, os.O_RDWR) for p in paths]
    replaced = ReplacedFile("a.db", fds[0], fds[1], fds[2])
    handed = replaced.detach()
    assert sorted(handed) == sorted(fds)
    for fd in handed:
        os.close(fd)
    reused = os.open(paths[0], os.O_RDONLY)  # may get one of the numbers just closed
    try:
        replaced.close()  # closes nothing: the reused number stays open
        os.fstat(reused)
        assert replaced.detach() == []
    finally:
        os.close(reused)


def test_the_command_exits_with_the_collector_frozen() -> None:
    """The ``recovery`` command freezes at exit (recovery.cli.main): the exit's collections walk
    nothing. An atexit hook registered before the command (so run after the freeze) sees it."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "from recovery.cli import main\n"
        "sys.argv = ['recovery', 'diff', '--help']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("frozen True")
