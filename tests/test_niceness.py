"""Side work runs below the critical path: the report's preparation beside the re-import is niced
below a bare backup's staged proof, and whoever waits for it gives it back its niceness
(``recovery.niceness``, ``pipeline._Background(nice=...)``, ``pipeline.REPORT_NICE``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from recovery import pipeline
from recovery.niceness import Niced, priority, set_priority
from recovery.pipeline import REPORT_NICE, _Background, rollback
from recovery.report import runfiles
from recovery.sample import app_dir
from recovery.verify.checks import PROOF_NICE

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
ROOT = os.geteuid() == 0


def _me() -> int:
    return priority(threading.get_native_id())


def test_the_report_yields_to_the_proof() -> None:
    assert PROOF_NICE < REPORT_NICE <= 19


def _until(flag: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not flag() and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.parametrize("inherited", [0, 3, 19])
def test_a_side_job_runs_niced_until_someone_waits(inherited: int) -> None:
    """The job's thread runs at the job's niceness, or at the one it inherited when that is higher
    (a user's `nice`); ``result()`` gives it back what it had (root may lower a niceness) before
    waiting; the waiting thread's own niceness is never touched."""
    if inherited and not ROOT:
        pytest.skip("a thread may not lower its niceness back without root")
    seen: list[int] = []
    started = threading.Event()
    jobs: list[_Background] = []

    def job() -> str:
        seen.append(_me())
        started.set()
        _until(lambda: jobs and jobs[0]._niced is not None and jobs[0]._niced.hurried)
        seen.append(_me())
        return "done"

    box: list[Any] = []

    def run() -> None:  # a thread of this niceness starts the job, as the run's main thread does
        set_priority(threading.get_native_id(), inherited)
        jobs.append(_Background(job, nice=REPORT_NICE))
        assert started.wait(10)
        box.append(_me())
        box.append(jobs[0].result())
        box.append(_me())

    t = threading.Thread(target=run)
    t.start()
    t.join(20)
    assert box == [inherited, "done", inherited]
    niced = max(inherited, REPORT_NICE)
    assert seen == [niced, inherited if ROOT else niced]


def test_a_side_job_without_nice_keeps_its_threads_niceness() -> None:
    seen: list[int] = []
    before = _me()
    assert _Background(lambda: seen.append(_me())).result() is None
    assert seen == [before] and _me() == before


@pytest.mark.skipif(not ROOT, reason="giving a niceness back needs root")
def test_niced_threads_begun_after_the_hurry_are_not_niced() -> None:
    niced = Niced(REPORT_NICE)
    seen: list[int] = []

    def work() -> None:
        with niced.thread():
            seen.append(_me())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    niced.hurry()
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [REPORT_NICE, 0]


def test_a_rollback_prepares_its_report_niced(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a whole rollback the report's preparation (the real one, only watched) runs on a side
    thread at REPORT_NICE, the run's own thread keeps its niceness, and the report is written
    from what was prepared."""
    real = runfiles.prepare_run_files
    seen: list[tuple[int, str]] = []
    used: list[Any] = []

    def watched(run_dir: Path, bundle: Any) -> Any:
        seen.append((_me(), threading.current_thread().name))
        prepared = real(run_dir, bundle)
        used.append(prepared)
        return prepared

    monkeypatch.setattr(runfiles, "prepare_run_files", watched)
    before = _me()
    w = tmp_path / "w"
    shutil.copytree(world, w)
    backup = next(w.glob("gestima.db.bak.*"))
    rollback(w / "gestima.db", backup, w / "run", alembic_ini=app_dir() / "alembic.ini")
    assert [nice for nice, _ in seen] == [max(before, REPORT_NICE)]
    assert seen[0][1].startswith("recovery-bg")
    assert _me() == before
    assert used and used[0].advanced is not None  # the report step wrote what was prepared
    report = json.loads((w / "run" / "report.json").read_text())
    assert report["outcome"]["verification"]["ok"] is True
    assert (w / "run" / "lost_values.csv").read_text().count("\n") > 1
    assert pipeline.REPORT_NICE == REPORT_NICE
