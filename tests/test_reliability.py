"""Fault injection: ``recovery rollback`` and ``recovery reimport`` SIGKILLed at many points.

Kill points (see docs/RELIABILITY.md):

* every journal step of ``rollback`` × ``start``/``done`` (``RECOVERY_TEST_KILL_AT_STEP``);
* after N statements inside the re-import transaction of ``rollback``
  (``RECOVERY_TEST_KILL_AFTER_STATEMENTS``);
* after N statements inside the transaction of the stand-alone ``reimport`` command.

After each kill: the live DB holds exactly the content expected at that point (the pre-state up
to the swap, the final state after it: the re-import writes the staged file before the swap —
never the bare backup, never anything in between), the safety copy is complete once ``safety`` is done, and running the same command again
(no fault env var) ends with the same content as an uninterrupted run.

Content = schema (``sqlite_master``) plus every table's rows, ordered, ``_recovery_applied.applied_at``
ignored. Databases are read through a private copy (db, ``-wal``, ``-journal``) so reading never
changes the files the resumed run sees.

Concurrency (SQLITE_BUSY handling of restore and re-import) is tested here too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import invoke
from tests.forkrun import forked

ROOT = Path(__file__).resolve().parents[1]
ALEMBIC_INI = ROOT / "sample_dbs" / "app" / "alembic.ini"
BACKUP = "gestima.db.bak.20261120_140000"
STEPS = (
    "probe",
    "safety",
    "extract",
    "restore",
    "reimport",
    "relink",
    "verify",
    "late_check",
    "report",
)
STEP_KILLS = [
    f"{s}:{when}"
    for s in STEPS
    for when in ("start", "done")
    if s != "late_check" or when == "done"
]
"""Every point the journal of a rollback is written at (``late_check`` journals only its end);
:func:`test_every_journaled_step_is_a_kill_point` holds this list to what a real run journals."""
ROLLBACK_STMT_KILLS = [1, 25, 80]
REIMPORT_STMT_KILLS = [1, 3, 10, 25, 50, 80, 85]
"""Kill points inside the re-import's transaction, the last near its end: the shared world's
re-import runs about 90 statements (``RECOVERY_TEST_KILL_AFTER_STATEMENTS`` counts them)."""


# ---------------------------------------------------------------------------------------------
# helpers


def db_content(path: Path) -> dict[str, Any]:
    """Schema and every table's rows (sorted), read from a private copy of the file set."""
    with tempfile.TemporaryDirectory(prefix="content-") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        for suffix in ("-wal", "-journal"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                shutil.copyfile(side, copy.with_name(copy.name + suffix))
        conn = sqlite3.connect(str(copy))
        try:
            master = sorted(
                conn.execute(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex%'"
                ).fetchall(),
                key=repr,
            )
            out: dict[str, Any] = {"__schema__": master}
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
            ).fetchall():
                cur = conn.execute(f'SELECT * FROM "{name}"')
                cols = [d[0] for d in cur.description]
                rows = cur.fetchall()
                if name == "_recovery_applied" and "applied_at" in cols:
                    # applied_at is a clock; bundle_id hashes the source paths (another folder,
                    # another id): keep only whether it names this run's bundle (checked by callers)
                    # outcome: the re-import's Outcome JSON, which names the run's paths (compared
                    # through the reports in test_run_truth.py)
                    b = cols.index("bundle_id")
                    drop = {cols.index(c) for c in ("applied_at", "outcome") if c in cols}
                    rows = [
                        tuple("<bundle>" if j == b else v for j, v in enumerate(r) if j not in drop)
                        for r in rows
                    ]
                    cols = [c for j, c in enumerate(cols) if j not in drop]
                    out["__bundle_ids__"] = sorted(
                        r[b] for r in conn.execute(f'SELECT * FROM "{name}"')
                    )
                out[name] = (cols, sorted(rows, key=repr))
            return out
        finally:
            conn.close()


def run_cli(
    args: list[str], cwd: Path, env_extra: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``recovery ARGS`` in ``cwd`` in a process of its own (:mod:`tests.forkrun`: forked from a
    server that has the package imported), with no ``RECOVERY_TEST_*`` variable but ``env_extra``."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("RECOVERY_TEST_")}
    env.update(env_extra or {})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return forked(*args, env=env, cwd=cwd, timeout=timeout)


def run_here(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``recovery ARGS`` in ``cwd``, in this process (:mod:`tests.clirun`), with no
    ``RECOVERY_TEST_*`` variable: the uninterrupted reference runs (only a kill needs a process)."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("RECOVERY_TEST_")}
    return invoke(*args, env=unset, cwd=cwd)


def rerun(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """The same command run again after a kill, in this process (the killed one is gone either
    way; only the kill itself needs a process of its own): (exit code, output)."""
    from click.testing import CliRunner

    from recovery.cli import main

    with monkeypatch.context() as m:
        m.chdir(cwd)
        for k in [k for k in os.environ if k.startswith("RECOVERY_TEST_")]:
            m.delenv(k)
        res = CliRunner().invoke(main, ["--quiet", *args], catch_exceptions=False)
    return res.exit_code, res.output


def rollback_args() -> list[str]:
    return [
        "rollback",
        "gestima.db",
        "--backup",
        BACKUP,
        "--alembic-ini",
        str(ALEMBIC_INI),
        "--out",
        "run",
        "--yes",
    ]


def journal_bundle_id(run_dir: Path) -> str:
    return json.loads((run_dir / "journal.json").read_text(encoding="utf-8"))["steps"]["extract"][
        "bundle_id"
    ]


def bundle_id_of(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["bundle_id"]


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of an interrupted copy, extract or restore."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob(".*")
        if ".partial-" in p.name or ".tmp-" in p.name or ".restore-tmp" in p.name
    )


def killed(proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode == -signal.SIGKILL


def assert_same(
    actual: dict[str, Any], expected: dict[str, Any], what: str, bundle_id: str | None = None
) -> None:
    """Equal content; ``bundle_id``: the id ``_recovery_applied`` must name (when it has rows)."""
    if "__bundle_ids__" in actual:
        ids = actual["__bundle_ids__"]
        assert bundle_id is None or ids == [bundle_id], (
            f"{what}: _recovery_applied names {ids}, not {bundle_id}"
        )
    assert actual.keys() == expected.keys(), (
        f"{what}: tables differ: {sorted(actual.keys() ^ expected.keys())}"
    )
    for name in expected:
        if name == "__bundle_ids__":
            continue
        assert actual[name] == expected[name], f"{what}: table {name} differs"


# ---------------------------------------------------------------------------------------------
# fixtures: one world, its states computed once per worker


@pytest.fixture(scope="module")
def states(world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """pre (live DB), restored (the backup), final (uninterrupted rollback) and, for the stand-alone
    re-import, a bundle, its target's pre-state and the final state after an uninterrupted run."""
    base = tmp_path_factory.mktemp("reliability")
    src = base / "world"
    shutil.copytree(world, src)
    ref = base / "ref"
    shutil.copytree(src, ref)
    proc = run_here(rollback_args(), ref)
    assert proc.returncode in (0, 1), proc.stderr
    final_code = proc.returncode
    bundle = base / "bundle"
    proc = run_here(
        ["extract", BACKUP, "gestima.db", "--out", str(bundle), "--alembic-ini", str(ALEMBIC_INI)],
        src,
    )
    assert proc.returncode in (0, 1), proc.stderr
    target = base / "target"
    target.mkdir()
    with (
        sqlite3.connect(f"file:{src / BACKUP}?mode=ro", uri=True) as b,
        sqlite3.connect(target / "target.db") as t,
    ):
        b.backup(t)
    b.close()
    t.close()
    ref_target = base / "ref_target"
    shutil.copytree(target, ref_target)
    proc = run_here(["reimport", str(bundle), "target.db", "--out", "rr", "--yes"], ref_target)
    assert proc.returncode in (0, 1), proc.stderr
    return {
        "world": src,
        "ref": ref,
        "final_code": final_code,
        "pre": db_content(src / "gestima.db"),
        "restored": db_content(src / BACKUP),
        "final": db_content(ref / "gestima.db"),
        "bundle": bundle,
        "target": target,
        "target_pre": db_content(target / "target.db"),
        "target_final": db_content(ref_target / "target.db"),
    }


def test_the_reference_states_differ(states: dict[str, Any]) -> None:
    """Otherwise the kill tests could not tell the states apart."""
    assert states["pre"] != states["restored"] != states["final"] != states["pre"]
    assert states["target_pre"] != states["target_final"]
    assert states["final"]["_recovery_applied"][1], "the finished run records its bundle"


def expected_after_step_kill(point: str) -> str:
    """The backup restore re-imports into the staged file before its swap (journal order:
    ``restore:start``, ``reimport:start``, ``reimport:committed``, ``reimport:done``, swap
    (``restore:swapped``: not journaled yet), ``restore:done``): the live DB is the failed
    release's DB up to the swap and the final one after it — never the bare backup."""
    step, _when = point.split(":")
    i = STEPS.index(step)
    if i <= STEPS.index("reimport") and point not in ("restore:done", "restore:swapped"):
        return "pre"
    return "final"


# ---------------------------------------------------------------------------------------------
# rollback killed at every journal step


@pytest.mark.parametrize("point", [*STEP_KILLS, "reimport:committed", "restore:swapped"])
def test_rollback_killed_at_step(
    point: str, states: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = tmp_path / "w"
    shutil.copytree(states["world"], w)
    proc = run_cli(rollback_args(), w, {"RECOVERY_TEST_KILL_AT_STEP": point})
    assert killed(proc), f"not killed at {point}: rc={proc.returncode} {proc.stderr[-500:]}"
    expect = expected_after_step_kill(point)
    assert_same(
        db_content(w / "gestima.db"),
        states[expect],
        f"live DB after kill at {point} (want {expect})",
    )
    safety = w / "run" / "safety" / "gestima.db"
    # the safety copy is made while the extract reads: complete once the extract is done
    if (
        STEPS.index(point.split(":")[0]) > STEPS.index("safety") and point != "extract:start"
    ) or point == "safety:done":
        assert_same(db_content(safety), states["pre"], f"safety copy after kill at {point}")
    else:
        assert not safety.exists() or db_content(safety) == states["pre"]  # never a partial copy
    assert db_content(w / BACKUP) == states["restored"], "the backup is an input: never changed"
    code, out = rerun(rollback_args(), w, monkeypatch)
    assert code == states["final_code"], out
    assert "Traceback" not in out
    bid = journal_bundle_id(w / "run")
    assert_same(
        db_content(w / "gestima.db"), states["final"], f"resumed after kill at {point}", bid
    )
    assert (
        json.loads((w / "run" / "journal.json").read_text(encoding="utf-8"))["steps"]["report"][
            "state"
        ]
        == "done"
    )
    with sqlite3.connect(f"file:{w / 'gestima.db'}?mode=ro", uri=True) as c:
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    c.close()
    assert leftovers(w) == [], f"half-written files left after resuming a kill at {point}"
    if point == "reimport:done":  # a finished run run again changes nothing (once is enough)
        code, out = rerun(rollback_args(), w, monkeypatch)
        assert code == states["final_code"], out
        assert_same(db_content(w / "gestima.db"), states["final"], "a finished run run again", bid)


# ---------------------------------------------------------------------------------------------
# rollback killed inside its re-import transaction


@pytest.mark.parametrize("n", ROLLBACK_STMT_KILLS)
def test_rollback_killed_inside_reimport_transaction(
    n: int, states: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = tmp_path / "w"
    shutil.copytree(states["world"], w)
    proc = run_cli(rollback_args(), w, {"RECOVERY_TEST_KILL_AFTER_STATEMENTS": str(n)})
    assert killed(proc), (
        f"not killed after {n} statements: rc={proc.returncode} {proc.stderr[-500:]}"
    )
    assert_same(  # the re-import writes the staged file: the live DB is untouched
        db_content(w / "gestima.db"), states["pre"], f"live DB after kill at statement {n}"
    )
    assert_same(db_content(w / "run" / "safety" / "gestima.db"), states["pre"], "safety copy")
    code, out = rerun(rollback_args(), w, monkeypatch)
    assert code == states["final_code"], out
    assert_same(
        db_content(w / "gestima.db"),
        states["final"],
        f"resumed after kill at statement {n}",
        journal_bundle_id(w / "run"),
    )


# ---------------------------------------------------------------------------------------------
# stand-alone reimport killed inside its transaction


@pytest.mark.parametrize("n", REIMPORT_STMT_KILLS)
def test_reimport_killed_inside_transaction(
    n: int, states: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = tmp_path / "t"
    shutil.copytree(states["target"], w)
    args = ["reimport", str(states["bundle"]), "target.db", "--out", "rr", "--yes"]
    proc = run_cli(args, w, {"RECOVERY_TEST_KILL_AFTER_STATEMENTS": str(n)})
    assert killed(proc), (
        f"not killed after {n} statements: rc={proc.returncode} {proc.stderr[-500:]}"
    )
    assert_same(
        db_content(w / "target.db"), states["target_pre"], f"target after kill at statement {n}"
    )
    assert_same(db_content(w / "rr" / "safety" / "target.db"), states["target_pre"], "safety copy")
    code, out = rerun(args, w, monkeypatch)
    assert code in (0, 1), out
    assert_same(
        db_content(w / "target.db"),
        states["target_final"],
        f"resumed after kill at statement {n}",
        bundle_id_of(states["bundle"]),
    )
    code, out = rerun(
        args, w, monkeypatch
    )  # the bundle id is recorded: a second run changes nothing
    assert code in (0, 1), out
    assert_same(
        db_content(w / "target.db"),
        states["target_final"],
        "re-import run twice",
        bundle_id_of(states["bundle"]),
    )


def test_every_journaled_step_is_a_kill_point(states: dict[str, Any]) -> None:
    """The step kill points are the ones a run passes: an uninterrupted rollback journals exactly
    the steps :data:`STEP_KILLS` names, in that order, each one done; every such point is then
    killed by a real SIGKILL in :func:`test_rollback_killed_at_step` (which fails unless the
    process died there)."""
    journal = json.loads((states["ref"] / "run" / "journal.json").read_text(encoding="utf-8"))
    assert list(journal["steps"]) == list(dict.fromkeys(p.split(":")[0] for p in STEP_KILLS))
    assert {s: e["state"] for s, e in journal["steps"].items()} == dict.fromkeys(STEPS, "done")


# ---------------------------------------------------------------------------------------------
# concurrency


def _hold_write_lock(db: Path, seconds: float, started: threading.Event) -> None:
    conn = sqlite3.connect(str(db), isolation_level=None, timeout=5)
    try:
        conn.execute("BEGIN IMMEDIATE")
        started.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _holder_process(db: Path, seconds: float) -> subprocess.Popen[str]:
    code = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)\n"
        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(float(sys.argv[2]))\n"
        "c.execute('ROLLBACK')\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def _file_hashes(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


def test_rollback_refuses_while_another_process_holds_the_write_lock(
    states: dict[str, Any], tmp_path: Path
) -> None:
    w = tmp_path / "w"
    shutil.copytree(states["world"], w)
    before = _file_hashes(w)
    holder = _holder_process(w / "gestima.db", 30)
    try:
        proc = run_cli(
            ["rollback", "gestima.db", "--backup", BACKUP, "--out", str(tmp_path / "run"), "--yes"],
            w,
        )
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "locked" in errors[0] and "Traceback" not in proc.stderr
    assert _file_hashes(w) == before
    assert not (tmp_path / "run" / "safety").exists()


def test_restore_step_refuses_when_the_wal_cannot_be_checkpointed(
    states: dict[str, Any], tmp_path: Path
) -> None:
    """--force skips the probe; the restore itself must still refuse while a reader pins the WAL."""
    from recovery.errors import RecoveryError
    from recovery.pipeline import restore_atomically

    w = tmp_path / "w"
    shutil.copytree(states["world"], w)
    reader = sqlite3.connect(str(w / "gestima.db"), isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM parts").fetchone()  # holds a read mark on the WAL
    try:
        with pytest.raises(RecoveryError) as err:
            restore_atomically(w / BACKUP, w / "gestima.db")
        assert err.value.exit_code == 2
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    assert_same(db_content(w / "gestima.db"), states["pre"], "live DB after a refused restore")
    assert leftovers(w) == [], "the refused restore leaves its staged copy behind"


def test_reimport_gives_up_after_busy_timeout_with_nothing_applied(
    states: dict[str, Any], tmp_path: Path
) -> None:
    from recovery.errors import RecoveryError
    from recovery.pipeline import reimport

    w = tmp_path / "t"
    shutil.copytree(states["target"], w)
    holder = _holder_process(w / "target.db", 20)
    t0 = time.monotonic()
    try:
        with pytest.raises(RecoveryError) as err:
            reimport(states["bundle"], w / "target.db", out=tmp_path / "rr", busy_timeout=1.0)
    finally:
        holder.kill()
        holder.wait()
    elapsed = time.monotonic() - t0
    assert err.value.exit_code == 2 and "locked" in err.value.message
    assert 0.9 <= elapsed < 10, elapsed
    assert_same(db_content(w / "target.db"), states["target_pre"], "target after giving up")


def test_reimport_succeeds_when_the_lock_is_released_within_the_timeout(
    states: dict[str, Any], tmp_path: Path
) -> None:
    from recovery.pipeline import reimport

    w = tmp_path / "t"
    shutil.copytree(states["target"], w)
    started = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(w / "target.db", 1.0, started))
    holder.start()
    assert started.wait(5)
    try:
        res = reimport(states["bundle"], w / "target.db", out=tmp_path / "rr", busy_timeout=8.0)
    finally:
        holder.join()
    assert res.outcome is not None and not res.outcome.already_applied
    assert_same(
        db_content(w / "target.db"),
        states["target_final"],
        "target after waiting for the lock",
        bundle_id_of(states["bundle"]),
    )


def test_resume_removes_only_dead_runs_temp_files(tmp_path: Path) -> None:
    """``_clean_leftovers``: a killed run's temp files go; a running writer's (its folder lock held, its
    pid alive) stay."""
    from recovery.pipeline import _clean_leftovers

    run, db = tmp_path / "run", tmp_path / "gestima.db"
    (run / "safety").mkdir(parents=True)
    db.write_bytes(b"live")
    dead = 2**22 + 12345  # above pid_max's default: no such process
    alive = os.getpid()
    gone = [
        run / f".bundle.partial-{dead}",
        run / "safety" / f".gestima.db.tmp-{dead}",
        run / "safety" / f".gestima.db.tmp-{dead}-journal",
        tmp_path / f"..gestima.db.restore-tmp.tmp-{dead}",
        tmp_path / ".gestima.db.restore-tmp",
        tmp_path / ".gestima.db.restore-tmp-journal",
    ]
    kept = [
        run / f".bundle.partial-{alive}",
        run / "safety" / f".gestima.db.tmp-{alive}",
        run / "safety" / "gestima.db",
        run / "safety" / ".gestima.db.tmp-notapid",
    ]
    for p in gone + kept:
        p.mkdir() if "partial" in p.name else p.write_bytes(b"x")
    (run / f".bundle.partial-{dead}" / "rows.db").write_bytes(b"half")
    from recovery.bundle.extract import lock_partial

    held = lock_partial(
        run / f".bundle.partial-{alive}"
    )  # a partial folder lives while its writer holds it
    try:
        removed = _clean_leftovers(run, db)
    finally:
        os.close(held)
    assert sorted(removed) == sorted(gone)
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in kept)
    assert db.read_bytes() == b"live"
