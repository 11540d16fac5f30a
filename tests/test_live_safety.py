"""Safe beside a running application (issue 14 §1, §2, §5), with real processes and real files:
a writer committing every 0.1 s, an idle pool connection, a DB owned by another user, a symlinked
DB path, and the wrong pairings (the live DB as its own backup, another installation's backup, a
second rollback of a DB already rolled back)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from recovery.sample import app_dir
from tests.forkrun import forked

INI = app_dir() / "alembic.ini"
OLD_REV = "aa001_add_drawing_number_drop_drawings"


def backup_of(w: Path) -> Path:
    return next(w.glob("gestima.db.bak.*"))


def run_cli(
    *args: object, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``recovery ARGS`` in a process of its own, forked from a server that has the package
    imported (:mod:`tests.forkrun`): the holders and writers here are other processes, and so is
    the command. ``env`` is laid over the environment."""
    return forked(*args, timeout=timeout, env=env)


def run_fresh(*args: object, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``recovery ARGS`` in a fresh interpreter (its start-up included, as a user's run has it)."""
    return subprocess.run(
        [sys.executable, "-m", "recovery", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rollback(
    w: Path,
    run: Path,
    *extra: object,
    db: Path | None = None,
    fresh: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``recovery rollback`` of world ``w`` into ``run``: forked, or with ``fresh`` in a fresh
    interpreter, which takes the test's own environment (``env`` is for a forked run)."""
    assert not (fresh and env), "a fresh interpreter here takes the test's environment"
    args = (
        "rollback",
        db or w / "gestima.db",
        "--backup",
        backup_of(w),
        "--alembic-ini",
        INI,
        "--out",
        run,
        "--yes",
        *extra,
    )
    return run_fresh(*args) if fresh else run_cli(*args, env=env)


def hashes(folder: Path) -> dict[str, str]:
    """Every file but ``-shm`` (the WAL index, which any reader may rewrite)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


@contextmanager
def ro(path: Path) -> Iterator[sqlite3.Connection]:
    """Read-only, and closed on exit (an open connection of the test is a holder to the CLI)."""
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield c
    finally:
        c.close()


def revision(path: Path) -> str:
    with ro(path) as c:
        return c.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr[proc.stderr.index("error:") :]


IDLE = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1])
c.execute("SELECT count(*) FROM parts").fetchone()   # a pool connection: WAL index open, no lock
print("ready", flush=True)
time.sleep(120)
"""

WRITER = """
import json, sqlite3, sys, time
from pathlib import Path
db, journal, prefix = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
c = sqlite3.connect(db, timeout=60, isolation_level=None)
c.execute("SELECT 1").fetchone()
print("ready", flush=True)
i = 0
while i < 400:
    steps = json.loads(journal.read_text()).get("steps", {}) if journal.is_file() else {}
    if steps.get("reimport", {}).get("state") == "done" or (Path(sys.argv[2]).parent / "stop").exists():
        break
    code = f"{prefix}-{i:04d}"
    c.execute("INSERT INTO materials (code, name, density, price_per_kg) VALUES (?, 'written live', 1.0, 2.0)",
              (code,))
    print(code, flush=True)   # committed: autocommit mode
    i += 1
    time.sleep(0.1)
"""


def start(code: str, *args: object) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def stop(p: subprocess.Popen[str], graceful: bool = False) -> list[str]:
    """End the helper process; ``graceful``: the writer stops by itself (its stop file), so no
    commit is left unprinted."""
    if graceful:
        try:
            p.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
    if p.poll() is None:
        p.kill()
    out, _ = p.communicate(timeout=30)
    return [ln for ln in out.split() if ln]


# ---------------------------------------------------------------------------------------------
# §1 a running application


def test_idle_holder_is_refused_by_pid(world_copy: Path, tmp_path: Path) -> None:
    """A process that only holds an open connection (no transaction, no write lock) is named."""
    from recovery.engine.holders import lock_holders

    w = world_copy
    holder = start(IDLE, w / "gestima.db")
    try:
        before = hashes(w)
        assert holder.pid in lock_holders(w / "gestima.db")  # the WAL-index lock alone sees it
        proc = rollback(w, tmp_path / "run")
        assert proc.returncode == 2, proc.stderr
        line = one_error(proc)
        assert f"pid {holder.pid}" in line and "gestima.db" in line and "--force" in line
        assert hashes(w) == before
        assert not (tmp_path / "run" / "safety").exists()
    finally:
        stop(holder)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


def test_holder_in_another_pid_namespace_is_seen_by_its_lock(
    world_copy: Path, tmp_path: Path
) -> None:
    """The rollback runs in a pid namespace of its own (``unshare --pid --mount-proc``), so the
    holder is absent from its ``/proc``: the WAL-index lock alone must refuse it."""
    if not _can_unshare():
        pytest.skip("unshare --pid --mount-proc is not permitted here (needs CAP_SYS_ADMIN)")
    w = world_copy
    holder = start(IDLE, w / "gestima.db")
    try:
        before = hashes(w)
        proc = subprocess.run(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                sys.executable,
                "-m",
                "recovery",
                "rollback",
                str(w / "gestima.db"),
                "--backup",
                str(backup_of(w)),
                "--alembic-ini",
                str(INI),
                "--out",
                str(tmp_path / "run"),
                "--yes",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 2, proc.stderr
        assert "another pid namespace" in one_error(proc)
        assert hashes(w) == before
    finally:
        stop(holder)


def test_writer_is_refused_and_with_force_no_commit_is_lost(
    world_copy: Path, tmp_path: Path
) -> None:
    """A writer committing a row every 0.1 s: refused without --force (nothing changed by the
    rollback, every commit of the writer still there); with --force every commit is either in the
    restored DB or listed in late_commits.json, and the run exits 1 saying so."""
    w = world_copy
    db = w / "gestima.db"
    refused_run = tmp_path / "refused"
    writer = start(WRITER, db, refused_run / "journal.json", "REFUSED")
    try:
        proc = rollback(w, refused_run)
        assert proc.returncode == 2, proc.stderr
        assert f"pid {writer.pid}" in one_error(proc)
        assert not (refused_run / "safety").exists()
    finally:
        (refused_run).mkdir(exist_ok=True)
        (refused_run / "stop").touch()
        committed = stop(writer, graceful=True)
    assert revision(db) != OLD_REV
    with ro(db) as c:
        present = {
            r[0] for r in c.execute("SELECT code FROM materials WHERE code LIKE 'REFUSED-%'")
        }
    assert present == set(committed)

    run = tmp_path / "forced"
    run.mkdir()
    writer = start(WRITER, db, run / "journal.json", "FORCED")
    try:  # a fresh interpreter: the writer's timing against the run is the one measured before
        proc = rollback(w, run, "--force", fresh=True)
    finally:
        (run / "stop").touch()
        committed = stop(writer, graceful=True)
    assert proc.returncode == 1, proc.stderr
    assert revision(db) == OLD_REV
    with ro(db) as c:
        restored = {
            r[0] for r in c.execute("SELECT code FROM materials WHERE code LIKE 'FORCED-%'")
        }
    late_file = run / "late_commits.json"
    late = json.loads(late_file.read_text()) if late_file.is_file() else {"tables": {}}
    listed = {
        r["code"]
        for r in late["tables"].get("materials", {}).get("rows", [])
        if r["change"] == "added_or_changed"
    }
    assert committed, "the writer never committed"
    assert set(committed) <= restored | listed, sorted(set(committed) - restored - listed)
    assert listed, (
        "the writer waited on the lock during the run: its commits after the swap must be listed"
    )
    assert (
        "late_commits.json" in proc.stderr.replace("\n", "")
        and "NOT in the restored" in proc.stderr
    )
    report = json.loads((run / "report.json").read_text())
    assert report["late_commits"]["late_commits"] == late["total"] >= len(listed)


def test_forced_run_killed_after_the_swap_says_it_could_not_check(
    world_copy: Path, tmp_path: Path
) -> None:
    """Resumed after a kill right after the swap, the replaced file is gone with the killed
    process: with holders let through by --force the run cannot know what they committed there,
    and says so (late_commits.json, exit 1) instead of reporting all clear."""
    w = world_copy
    holder = start(IDLE, w / "gestima.db")
    run = tmp_path / "run"
    try:
        killed = rollback(w, run, "--force", env={"RECOVERY_TEST_KILL_AT_STEP": "restore:done"})
        assert killed.returncode == -9, killed.stderr
        proc = rollback(w, run, "--force")
    finally:
        stop(holder)
    assert proc.returncode == 1, proc.stderr
    late = json.loads((run / "late_commits.json").read_text())
    assert late["checked"] is False and "resumed" in late["reason"]
    assert json.loads((run / "report.json").read_text())["late_commits"]["checked"] is False


def test_write_lock_is_held_from_safety_copy_to_swap(world_copy: Path, tmp_path: Path) -> None:
    """Between the safety copy and the swap no other connection can commit (it gets SQLITE_BUSY),
    readers still read, and the replaced file is looked at once more at the end."""
    from recovery.restore.livewindow import WriteWindow, check_replaced
    from recovery.pipeline import stage_restore
    from recovery.engine.sqlite_io import consistent_copy

    w = world_copy
    db = w / "gestima.db"
    window = WriteWindow(db)
    try:
        safety = consistent_copy(db, tmp_path / "safety" / "gestima.db", "live database")
        other = sqlite3.connect(db, timeout=0.2, isolation_level=None)
        assert other.execute("SELECT count(*) FROM parts").fetchone()[0] > 0  # readers read
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute(
                "INSERT INTO materials (code, name, density, price_per_kg) VALUES ('X', 'x', 1, 1)"
            )
        staged, _ = stage_restore(backup_of(w), db)
        replaced = window.swap(staged)
        assert not (w / "gestima.db-wal").exists() and not (w / "gestima.db-shm").exists()
        assert not replaced.changed()  # nobody wrote: the late check need not compare tables
        # the holder still on the replaced file can commit now: the late check must see it
        other.execute(
            "INSERT INTO materials (code, name, density, price_per_kg) VALUES ('LATE', 'x', 1, 1)"
        )
        other.close()
        assert revision(db) == OLD_REV
        assert replaced.changed()
        info = check_replaced(replaced, safety, tmp_path)
        assert info["late_commits"] == 1
        rows = json.loads((tmp_path / "late_commits.json").read_text())["tables"]["materials"][
            "rows"
        ]
        assert [r["code"] for r in rows] == ["LATE"]
        with ro(db) as c:  # our closes never deleted the restored file's sidecars nor touched it
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        window.release()
        if window.replaced is not None:
            window.replaced.close()


def test_force_does_not_allow_a_newer_backup(world_copy: Path, tmp_path: Path) -> None:
    w = world_copy
    later = time.time() + 3600
    os.utime(backup_of(w), (later, later))
    before = hashes(w)
    proc = rollback(w, tmp_path / "run", "--force")
    assert proc.returncode == 2
    line = one_error(proc)
    assert "newer" in line and "--allow-newer-backup" in line and "--force" not in line
    assert hashes(w) == before
    proc = rollback(w, tmp_path / "run2", "--allow-newer-backup")
    assert proc.returncode == 1, proc.stderr
    assert revision(w / "gestima.db") == OLD_REV


# ---------------------------------------------------------------------------------------------
# §2 the restored file is the same file to the application


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_owner_mode_and_xattrs_are_kept(world_copy: Path, tmp_path: Path) -> None:
    import grp
    import pwd

    w = world_copy
    db = w / "gestima.db"
    uid = pwd.getpwnam("nobody").pw_uid
    gid = (
        grp.getgrnam("nogroup").gr_gid
        if "nogroup" in {g.gr_name for g in grp.getgrall()}
        else 65534
    )
    for p in (db, w / "gestima.db-wal"):
        os.chown(p, uid, gid)
        os.chmod(p, 0o660)
    try:
        os.setxattr(db, "user.recovery-test", b"kept")
        has_xattr = True
    except OSError:
        has_xattr = False  # the filesystem of the temporary folder has no user xattrs
    # a POSIX ACL (user nobody rw), written as the kernel's xattr: version 2, then (tag, perm, id)
    acl = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, who)
        for tag, perm, who in (
            (0x01, 6, 0xFFFFFFFF),
            (0x02, 6, uid),
            (0x04, 6, 0xFFFFFFFF),
            (0x10, 6, 0xFFFFFFFF),
            (0x20, 0, 0xFFFFFFFF),
        )
    )
    try:
        os.setxattr(db, "system.posix_acl_access", acl)
        has_acl = True
    except OSError:
        has_acl = False  # no ACL support on this filesystem
    proc = rollback(w, tmp_path / "run")
    assert proc.returncode == 1, proc.stderr
    st = os.stat(db)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, 0o660)
    assert revision(db) == OLD_REV
    if has_xattr:
        assert os.getxattr(db, "user.recovery-test") == b"kept"
    if has_acl:
        assert os.getxattr(db, "system.posix_acl_access") == acl
    app = sqlite3.connect(db)  # the app opens it again: its -wal is the app's too
    app.execute("UPDATE materials SET name = name WHERE id = 1")
    app.commit()
    wal = os.stat(w / "gestima.db-wal")
    assert (wal.st_uid, wal.st_gid, wal.st_mode & 0o7777) == (uid, gid, 0o660)
    app.close()


def test_symlinked_db_path(world_copy: Path, tmp_path: Path) -> None:
    """Through a link: every post-deploy row is extracted (the -wal beside the real file is read),
    the real file is restored, the link stays a link to it."""
    w = world_copy
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    for name in ("gestima.db", "gestima.db-wal"):
        shutil.move(w / name, real_dir / name)
    link = w / "gestima.db"
    link.symlink_to(real_dir / "gestima.db")
    with ro(real_dir / "gestima.db") as c:
        live_parts = {r[0] for r in c.execute("SELECT id FROM parts")}
    run = tmp_path / "run"
    proc = rollback(w, run, db=link)
    assert proc.returncode == 1, proc.stderr
    assert link.is_symlink() and link.resolve() == (real_dir / "gestima.db").resolve()
    assert revision(real_dir / "gestima.db") == OLD_REV
    with ro(real_dir / "gestima.db") as c:
        restored_parts = {r[0] for r in c.execute("SELECT id FROM parts")}
    assert live_parts <= restored_parts  # every part of the live DB, post-deploy inserts included
    counts = json.loads((run / "bundle" / "manifest.json").read_text())["counts"]["parts"]
    with ro(backup_of(w)) as c:
        backup_parts = {r[0] for r in c.execute("SELECT id FROM parts")}
    assert counts["inserted"] == len(live_parts - backup_parts) > 0


# ---------------------------------------------------------------------------------------------
# §5 wrong pairings


def test_backup_that_is_the_live_db_by_another_path(world_copy: Path, tmp_path: Path) -> None:
    w = world_copy
    (w / "alias.db").symlink_to(w / "gestima.db")
    os.link(w / "gestima.db", w / "hardlink.db")
    before = hashes(w)
    for n, other in enumerate(
        (w / "alias.db", w / "hardlink.db", w / "uploads" / ".." / "gestima.db")
    ):
        proc = run_cli(
            "rollback",
            w / "gestima.db",
            "--backup",
            other,
            "--alembic-ini",
            INI,
            "--out",
            tmp_path / f"run{n}",
            "--yes",
            "--allow-newer-backup",
        )
        assert proc.returncode == 2, proc.stderr
        assert "is the live database" in one_error(proc)
        assert not (tmp_path / f"run{n}" / "safety").exists()
    assert hashes(w) == before


@pytest.fixture(scope="module")
def two_installations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("installs")
    for seed in (1, 2):
        proc = run_cli("sample", base / f"seed{seed}", "--parts", 60, "--seed", seed)
        assert proc.returncode == 0, proc.stderr
    return base / "seed1", base / "seed2"


def test_backup_of_another_installation(
    two_installations: tuple[Path, Path], tmp_path: Path
) -> None:
    ours, theirs = (tmp_path / "ours", tmp_path / "theirs")
    shutil.copytree(two_installations[0], ours)
    shutil.copytree(two_installations[1], theirs)
    before = hashes(ours)
    # without a manifest: the rows are the evidence
    proc = run_cli(
        "rollback",
        ours / "gestima.db",
        "--backup",
        backup_of(theirs),
        "--alembic-ini",
        INI,
        "--out",
        tmp_path / "run",
        "--yes",
    )
    assert proc.returncode == 2, proc.stderr
    line = one_error(proc)
    assert "another database" in line and "rows of the backup" in line
    # with a manifest: its identity is the evidence (taken from their backup by `recovery snapshot`)
    proc = run_cli("snapshot", backup_of(theirs), "--out", tmp_path / "snap")
    assert proc.returncode == 0, proc.stderr
    snap = next((tmp_path / "snap").glob("*.bak.*[0-9]"))
    assert json.loads((snap.with_name(snap.name + ".manifest.json")).read_text())["identity"][
        "tables"
    ]
    proc = run_cli(
        "rollback",
        ours / "gestima.db",
        "--backup",
        snap,
        "--alembic-ini",
        INI,
        "--out",
        tmp_path / "run2",
        "--yes",
        "--allow-newer-backup",
    )
    assert proc.returncode == 2, proc.stderr
    assert "another database" in one_error(proc) and "manifest identity" in proc.stderr
    assert hashes(ours) == before
    assert not (tmp_path / "run" / "safety").exists()


def test_manifest_identity_of_the_same_installation_is_accepted(
    world_copy: Path, tmp_path: Path
) -> None:
    from recovery.capture.pairing import refuse_wrong_pairing

    w = world_copy
    proc = run_cli("snapshot", backup_of(w), "--out", tmp_path / "snap")
    assert proc.returncode == 0, proc.stderr
    snap = next((tmp_path / "snap").glob("*.bak.*[0-9]"))
    evidence = refuse_wrong_pairing(w / "gestima.db", snap)
    assert (
        evidence["source"] == "manifest identity"
        and evidence["agree"] >= 0.9 * evidence["present"] > 100
    )


def test_second_rollback_is_refused_naming_the_first(world_copy: Path, tmp_path: Path) -> None:
    w = world_copy
    first = w / "run-first"
    proc = rollback(w, first)
    assert proc.returncode == 1, proc.stderr
    before = hashes(w)
    proc = rollback(w, tmp_path / "second")
    assert proc.returncode == 2, proc.stderr
    line = one_error(proc)
    bundle_id = json.loads((first / "journal.json").read_text())["steps"]["extract"]["bundle_id"]
    assert "rolled back already" in line and bundle_id in line and str(first) in line
    assert hashes(w) == before
    assert not (tmp_path / "second" / "safety").exists()
