"""A rollback killed after its re-import and resumed writes the same run files as one that went
straight through.

The uninterrupted run keeps the re-import's outcome in memory (``as_read_back``) and writes
``outcome.json`` after the re-import, the relink and the verification; a resumed run reads that
file back instead. So one world is rolled back twice: once straight through (in this process), once
killed (SIGKILL, a real process) at ``reimport:done``, resumed and killed at ``relink:done``,
resumed and killed at ``verify:start``, then resumed to the end. Every CSV, ``reimport.sql`` and
``outcome.json`` must be the same text (after the normalization of ``test_rollback_outputs``: the
world's folder, the bundle id, the wall-clock time), except the verification itself: the resumed
run has no proof of the staged copy from the killed process, so it checks the whole file
where the straight run checked what the re-import wrote (``checked: bounded``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_reliability import killed, rerun, run_cli, run_here
from tests.test_rollback_outputs import _normalized
from tests.test_run_truth import rollback_args  # the same run, uploads included

SAME = (
    "files.csv",
    "conflicts.csv",
    "deletes_for_review.csv",
    "lost_values.csv",
    "filled_by_upgrade.csv",
    "not_carried.csv",
    "reimport.sql",
)
CHAIN = ("reimport:done", "relink:done", "verify:start")


def _outcome_without_verification(run: Path, w: Path) -> tuple[dict, dict]:
    doc = json.loads(_normalized(run, w, "outcome.json"))
    return {k: v for k, v in doc.items() if k != "verification"}, doc["verification"]


def test_a_run_killed_after_its_reimport_resumes_to_the_same_files(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = tmp_path / "ref"
    shutil.copytree(world, ref)
    straight = run_here(rollback_args(), ref)
    assert straight.returncode in (0, 1), straight.stderr
    w = tmp_path / "w"
    shutil.copytree(world, w)
    for point in CHAIN:
        proc = run_cli(rollback_args(), w, {"RECOVERY_TEST_KILL_AT_STEP": point})
        assert killed(proc), f"not killed at {point}: rc={proc.returncode} {proc.stderr[-800:]}"
        steps = json.loads((w / "run" / "journal.json").read_text(encoding="utf-8"))["steps"]
        assert steps[point.split(":")[0]]["state"] == point.split(":")[1]
        if point == "relink:done":  # what the resumed run will take from the file, not redo
            saved = json.loads((w / "run" / "outcome.json").read_text(encoding="utf-8"))
            assert saved["files"]["counts"]["relinked"] > 0
    code, out = rerun(rollback_args(), w, monkeypatch)
    assert code == straight.returncode, out
    for name in SAME:
        assert _normalized(w / "run", w, name) == _normalized(ref / "run", ref, name), name
    resumed, checked = _outcome_without_verification(w / "run", w)
    expected, bounded = _outcome_without_verification(ref / "run", ref)
    assert resumed == expected
    assert bounded.get("checked") == "bounded" and checked.get("checked") != "bounded"
    assert bounded["ok"] and checked["ok"]
