"""Every file a rollback leaves in its run folder stays the same when the steps get faster.

Three worlds are rolled back through the CLI and each output (report.json, report.md, report.html,
every CSV, reimport.sql, outcome.json) is compared, after taking out what differs between two runs
of the same code (the world's folder, the bundle id, the wall-clock time, the journal's
timestamps, the safety copy's sha256), with the digests in ``tests/golden/rollback/digests.json``:

* ``sample``: the session's sample world (120 parts, uploads);
* ``many_lost``: a 5,000-part world (more than 1,000 lost values, so report.json's list is cut and
  lost_values.csv holds the rest; 170 files to relink);
* ``conflict``: a pre-deploy quote deleted and a new one with its number (a unique conflict, a unit
  not carried, a formula-like value);
* ``conflict-spilled``: the same world rolled back with ``RECOVERY_SPILL_AFTER=0``: the outcome's
  long lists and the script's steps with values held in temporary files (bounded memory at any
  size, ``recovery/model/spill.py``), compared with ``conflict``'s digests.

The digests were made by the code before the performance work of issue 18; when an output changes
on purpose, review the normalized files this test writes to ``test-artifacts/rollback-outputs/``
and run ``python -m pytest tests/test_rollback_outputs.py --update-golden``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import date, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from recovery.cli import main
from recovery.sample import app_dir, generate
from tests.test_report import _small_world

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "rollback" / "digests.json"
ARTIFACTS = ROOT / "test-artifacts" / "rollback-outputs"
OUTPUTS = (
    "report.json",
    "report.md",
    "report.html",
    "lost_values.csv",
    "filled_by_upgrade.csv",
    "conflicts.csv",
    "deletes_for_review.csv",
    "files.csv",
    "not_carried.csv",
    "reimport.sql",
    "outcome.json",
)


def _rollback_fails(w: Path) -> None:
    """The rollback of world copy ``w`` in this process (a step patched by the caller fails)."""
    from recovery import pipeline
    from recovery.errors import RecoveryError

    with pytest.raises(RecoveryError):
        pipeline.rollback(
            w / "gestima.db",
            next(w.glob("gestima.db.bak.*[0-9]")),
            w / "run",
            uploads=w / "uploads",
            alembic_ini=app_dir() / "alembic.ini",
            confirm=lambda _plan: True,
        )


def _rollback(w: Path) -> Path:
    backup = next(w.glob("gestima.db.bak.*[0-9]"))
    run = w / "run"
    res = CliRunner().invoke(
        main,
        [
            "rollback",
            str(w / "gestima.db"),
            "--backup",
            str(backup),
            "--uploads",
            str(w / "uploads"),
            "--alembic-ini",
            str(app_dir() / "alembic.ini"),
            "--out",
            str(run),
            "--yes",
        ],
    )
    assert res.exit_code in (0, 1), res.output
    return run


def _made_ahead_or_not(run: Path) -> None:
    """The run's report files made again from its outcome into two scratch folders, once with
    ``runfiles.advance_run_files`` first (as a rollback does while its verification finishes, on
    a WAL-mode live DB) and once without: the same text (but for the time they were made)."""
    from recovery.bundle.store import open_bundle
    from recovery.model.outcome import Outcome
    from recovery.report import runfiles

    bundle = open_bundle(run / "bundle")
    extra = {"journal": json.loads((run / "journal.json").read_text(encoding="utf-8"))["steps"]}
    texts = []
    for ahead in (False, True):
        out = run.parent / f"remade-{ahead}"
        out.mkdir()
        outcome = Outcome.from_json((run / "outcome.json").read_bytes())
        prepared = runfiles.prepare_run_files(out, bundle)
        try:
            if ahead:
                runfiles.advance_run_files(prepared, out, outcome, bundle, extra)
                assert prepared.advanced is not None
            runfiles.write_run_files(
                out, outcome, bundle, {**extra, "late_commits": None}, prepared
            )
        finally:
            prepared.close()
        assert not list(out.glob("*.tmp"))
        now = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d"
        texts.append(
            {
                n: re.sub(now, "<NOW>", (out / n).read_text(encoding="utf-8"))
                for n in runfiles.RUN_FILES
                if n != "reimport.sql"
            }
        )
        shutil.rmtree(out)
    assert texts[0] == texts[1]


def _normalized(run: Path, w: Path, name: str) -> str:
    """The text of ``run/name`` with what differs between two runs of the same code replaced."""
    text = (run / name).read_text(encoding="utf-8")
    doc = json.loads((run / "report.json").read_text(encoding="utf-8"))
    bundle_id = doc["bundle"]["id"]
    safety_sha = doc["journal"]["safety"]["sha256"]  # the copy's pages depend on the WAL's history
    for folder in {str(w.resolve()), str(w)}:
        text = text.replace(folder, "<W>")
    text = text.replace(bundle_id, "<BUNDLE>").replace(safety_sha, "<SAFETY>")
    for day in (date.today(), date.today() - timedelta(days=1)):
        text = re.sub(rf"{day.isoformat()}[T ]\d\d:\d\d:\d\d", "<NOW>", text)
    return text


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory, world: Path) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("outputs")
    sample = base / "sample"
    shutil.copytree(world, sample)
    return {
        "sample": sample,
        "many_lost": generate(base / "many_lost", parts=5000, seed=7),
        "conflict": _small_world(base / "conflict", "conflict"),
        "conflict-spilled": _small_world(base / "conflict-spilled", "conflict"),
    }


@pytest.mark.parametrize("scenario", ["sample", "many_lost", "conflict", "conflict-spilled"])
def test_rollback_outputs_are_unchanged(
    scenario: str,
    worlds: dict[str, Path],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = worlds[scenario]
    if scenario.endswith("-spilled"):
        monkeypatch.setenv("RECOVERY_SPILL_AFTER", "0")
        scenario = scenario.removesuffix("-spilled")
    run = _rollback(w)
    _made_ahead_or_not(run)
    texts = {name: _normalized(run, w, name) for name in OUTPUTS}
    digests = {n: hashlib.sha256(t.encode("utf-8")).hexdigest() for n, t in texts.items()}
    update = bool(request.config.getoption("--update-golden", default=False)) or bool(
        os.environ.get("RECOVERY_UPDATE_GOLDEN")
    )
    known = json.loads(GOLDEN.read_text(encoding="utf-8")) if GOLDEN.is_file() else {}
    if update:
        known[scenario] = digests
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    assert scenario in known, f"{GOLDEN} has no {scenario}: run with --update-golden and review"
    changed = sorted(n for n in OUTPUTS if known[scenario].get(n) != digests[n])
    if changed:
        out = ARTIFACTS / scenario
        out.mkdir(parents=True, exist_ok=True)
        for name in changed:
            (out / name).write_text(texts[name], encoding="utf-8")
    assert not changed, f"outputs changed: {changed} (normalized copies in {ARTIFACTS / scenario})"


def test_a_run_failing_after_the_report_preparation_leaves_no_temporary_files(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report's background preparation writes lost_values.csv and filled_by_upgrade.csv to
    their ``.tmp`` names while the relink and the verification run; a run that fails there (here:
    the relink raises once those files exist) removes them, and the same command then finishes."""
    import time

    from recovery import pipeline
    from recovery.errors import RecoveryError

    w = tmp_path / "w"
    shutil.copytree(world, w)
    pending = w / "run" / "lost_values.csv.tmp"
    seen: list[bool] = []

    def failing(*args: object, **kwargs: object) -> object:
        deadline = time.monotonic() + 60
        while not pending.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(pending.exists())
        raise RecoveryError("the relink failed (test)", exit_code=3)

    real = pipeline._relink
    monkeypatch.setattr(pipeline, "_relink", failing)
    _rollback_fails(w)
    assert seen == [True]  # the preparation had written its files when the run failed
    assert sorted(p.name for p in (w / "run").glob("*.tmp")) == []
    monkeypatch.setattr(pipeline, "_relink", real)
    _rollback(w)
    assert not list((w / "run").glob("*.tmp"))
    assert (w / "run" / "lost_values.csv").read_text(encoding="utf-8").count("\n") == 28


def test_the_report_is_made_ahead_and_a_failure_after_it_leaves_no_temporary_files(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the verification's reads finish, the rollback drafts the report and writes
    conflicts.csv, deletes_for_review.csv and not_carried.csv to their ``.tmp`` names
    (``runfiles.advance_run_files``: so the golden digests above hold the report made ahead); a
    run failing after that (here: the late check raises) removes them, and the same command
    then finishes with the files the golden digests hold."""
    from recovery import pipeline
    from recovery.errors import RecoveryError

    w = tmp_path / "w"
    shutil.copytree(world, w)  # a WAL-mode live DB: the verification's reads start early
    seen: list[list[str]] = []

    def failing(*args: object, **kwargs: object) -> object:
        seen.append(sorted(p.name for p in (w / "run").glob("*.csv.tmp")))
        raise RecoveryError("the late check failed (test)", exit_code=3)

    real = pipeline._late_check
    monkeypatch.setattr(pipeline, "_late_check", failing)
    _rollback_fails(w)
    assert seen and {
        "conflicts.csv.tmp",
        "deletes_for_review.csv.tmp",
        "not_carried.csv.tmp",
        "files.csv.tmp",
    } <= set(seen[0])  # made ahead, beside the verification
    assert sorted(p.name for p in (w / "run").glob("*.tmp")) == []
    monkeypatch.setattr(pipeline, "_late_check", real)
    _rollback(w)
    assert not list((w / "run").glob("*.tmp"))
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))["sample"]
    for name in OUTPUTS:
        if name in ("outcome.json", "reimport.sql", "report.json"):
            continue  # a resumed run's (its journal in report.json): not this test's subject
        text = _normalized(w / "run", w, name)
        assert hashlib.sha256(text.encode()).hexdigest() == golden[name], name
