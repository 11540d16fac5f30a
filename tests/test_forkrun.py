"""The forked runs of :mod:`tests.forkrun` answer as ``subprocess.run`` with a fresh interpreter
does: exit code, stdout, stderr, the environment laid over, the working folder, a SIGKILL as -9."""

from __future__ import annotations

import shutil
import signal
import sqlite3
from pathlib import Path

from tests.forkrun import forked, forked_bytes


def test_exit_codes_and_output_come_back_as_from_a_process(tmp_path: Path) -> None:
    ok = forked("--help")
    assert ok.returncode == 0 and "Usage: recovery" in ok.stdout and ok.stderr == ""
    bad = forked("no-such-command", cwd=tmp_path)
    assert bad.returncode == 2 and "No such command" in bad.stderr
    raw = forked_bytes("--help")
    assert raw.stdout.decode() == ok.stdout


def test_a_kill_hook_kills_the_child_not_the_caller(world: Path, tmp_path: Path) -> None:
    w = tmp_path / "w"
    shutil.copytree(world, w)
    backup = next(w.glob("gestima.db.bak.*"))
    args = ["rollback", "gestima.db", "--backup", backup.name, "--out", "run", "--yes"]
    killed = forked(*args, env={"RECOVERY_TEST_KILL_AT_STEP": "safety:done"}, cwd=w)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (w / "run" / "safety" / "gestima.db").is_file()  # it ran in w, up to the kill point
    with sqlite3.connect(f"file:{w / 'run' / 'safety' / 'gestima.db'}?mode=ro", uri=True) as c:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    c.close()
