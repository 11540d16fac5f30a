"""One sandbox child serves the lineage's downgrades and then the replay's upgrade
(``Sandbox(keep=True)`` parks it, ``Sandbox(adopt=True)`` takes it over): the second job gets its
own scratch file, protected files, environment and ini, and what the app's modules kept from the
first job cannot carry it to the first job's file. Hostile apps: one whose module remembers the
first job's URL and then writes that file and opens the live DB; one whose module made its engine
at import (bound to the first scratch URL); one that leaves a connection open."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from recovery.migrate import sandbox
from recovery.migrate.migrations import derive_lineage
from recovery.migrate.replay import replay_upgrade
from recovery.migrate.sandbox import (
    MigrationFailed,
    ReusedChildFailed,
    Sandbox,
    keeping,
    parked_child,
)
from recovery.sample import app_dir
from tests.test_sandbox import NEW_REV, backup_of, hostile_app

PASSED = 'passed = config.attributes.get("connection")'
ENGINE = "engine = create_engine(_url(), poolclass=pool.NullPool)"


def reuse_app(tmp: Path, variant: str) -> Path:
    """A copy of the sample app with a module of its own (``appstate.py``, imported by env.py
    from the app's folder) that keeps state between Alembic commands, as ``variant``:

    * ``remembers``: records each command's ``$DATABASE_URL``; from the second on, writes a
      table into the first URL's file and opens the live DB (in ``$APP_LIVE_DIR``), both
      swallowed;
    * ``cached-engine``: ``engine = create_engine($DATABASE_URL)`` at import, which env.py uses
      instead of the connection it is given;
    * ``thread``: starts a thread at import that is still running when the command ends."""
    app = tmp / f"app-{variant}"
    shutil.copytree(app_dir(), app, ignore=shutil.ignore_patterns("__pycache__"))
    env = (app / "env.py").read_text()
    assert PASSED in env and ENGINE in env
    env = env.replace(PASSED, "passed = None  # ignores the connection it is given")
    if variant == "remembers":
        (app / "appstate.py").write_text(
            "import os\nimport sqlite3\n\nSEEN = []\n\n\n"
            "def note() -> None:\n"
            "    SEEN.append(os.environ['DATABASE_URL'])\n"
            "    if len(SEEN) < 2:\n"
            "        return\n"
            "    try:\n"
            "        c = sqlite3.connect(SEEN[0].removeprefix('sqlite:///'))\n"
            "        c.execute('CREATE TABLE second_job_was_here (x)')\n"
            "        c.commit()\n"
            "    except Exception:\n"
            "        pass\n"
            "    try:\n"
            "        open(os.path.join(os.environ['APP_LIVE_DIR'], 'gestima.db'), 'r+b').close()\n"
            "    except Exception:\n"
            "        pass\n"
        )
        env = env.replace(
            "def run_migrations_online() -> None:\n",
            "def run_migrations_online() -> None:\n    import appstate\n    appstate.note()\n",
        )
        env = env.replace(
            '    return config.get_main_option("sqlalchemy.url")',
            '    import os\n    return os.environ["DATABASE_URL"]',
        )
    if variant == "thread":
        (app / "appstate.py").write_text(
            "import threading\nimport time\n\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        )
        env = env.replace(
            "def run_migrations_online() -> None:\n",
            "def run_migrations_online() -> None:\n    import appstate  # noqa: F401\n",
        )
    if variant == "cached-engine":
        (app / "appstate.py").write_text(
            "import os\nfrom sqlalchemy import create_engine\n\n"
            "engine = create_engine(os.environ['DATABASE_URL'])\n"
        )
        env = env.replace(ENGINE, "import appstate\n    engine = appstate.engine")
        env = env.replace("    engine.dispose()\n", "")
    (app / "env.py").write_text(env)
    return app / "alembic.ini"


def revision(db: Path) -> str:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return str(c.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def digest(*paths: Path) -> list[str | None]:
    return [
        hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None
        for p in paths
        for f in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-journal"))
    ]


@pytest.fixture(autouse=True)
def _no_parked_child() -> object:
    sandbox.release_spare()
    yield
    sandbox.release_spare()


def park_after_upgrade(ini: Path, scratch: Path, protect: list[Path]) -> int:
    """A first job (the upgrade on ``scratch``) whose child is parked; its process id."""
    with Sandbox(ini, scratch, protect, keep=True) as sb:
        sb.migrate("upgrade", NEW_REV)
        pid = sb.pid
    parked = parked_child()
    assert pid is not None and parked is not None and parked.pid == pid
    return pid


def test_the_replay_runs_in_the_lineages_child_and_replays_the_same(
    world_copy: Path, tmp_path: Path
) -> None:
    """The lineage parks its child; the replay takes it over (no second interpreter) and writes
    the same copy a new child writes."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = app_dir() / "alembic.ini"
    derive_lineage(ini, backup, live, keep_child=True)
    parked = parked_child()
    assert parked is not None and parked.poll() is None
    reused = replay_upgrade(ini, backup, live, tmp_path, into=tmp_path / "reused.db")
    assert parked_child() is None and parked.poll() is not None  # adopted, then ended
    fresh = replay_upgrade(ini, backup, live, tmp_path, into=tmp_path / "fresh.db")
    assert reused is not None and fresh is not None
    assert revision(reused) == revision(fresh) == NEW_REV
    with closing(sqlite3.connect(reused)) as a:
        a.execute("ATTACH DATABASE ? AS f", (str(fresh),))
        for (name,) in a.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            assert not a.execute(
                f'SELECT * FROM main."{name}" EXCEPT SELECT * FROM f."{name}"'
            ).fetchall()


def test_a_second_job_cannot_reach_the_first_jobs_scratch_or_a_protected_file(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's module remembers the first job's URL and, in the second job, writes that file
    and opens the live DB (swallowing the errors): both refused; the job is not taken from the
    reused child but run again in a new one, where it succeeds."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    monkeypatch.setenv("APP_LIVE_DIR", str(live.parent))  # (a path to it would be rewritten)
    ini = reuse_app(tmp_path, "remembers")
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    shutil.copyfile(backup, one)
    pid = park_after_upgrade(ini, one, [live, backup])
    before = digest(one, live, backup)
    with Sandbox(ini, two, [live, backup], adopt=True) as sb:
        assert sb.reused and sb.pid == pid
        shutil.copyfile(backup, two)
        with pytest.raises(ReusedChildFailed) as info:
            sb.migrate("upgrade", NEW_REV)
        refused = " ".join(info.value.refused)
        assert str(one) in refused and str(live) in refused
        assert digest(one, live, backup) == before
        shutil.copyfile(backup, two)  # the caller's new copy
        sb.migrate("upgrade", NEW_REV)
        assert not sb.reused and sb.pid != pid and not sb.refused
    assert revision(two) == NEW_REV
    assert digest(one, live, backup) == before


def test_an_engine_the_app_made_at_import_does_not_carry_the_first_url_into_the_second_job(
    world_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """env.py migrates through an engine its module made at import from ``$DATABASE_URL`` (the
    first job's scratch). In the reused child that engine is refused the first scratch; the
    replay runs again on a new copy in a new child, whose engine is the second job's: the
    replayed copy is upgraded, the first scratch untouched."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = reuse_app(tmp_path, "cached-engine")
    one = tmp_path / "one.db"
    shutil.copyfile(backup, one)
    park_after_upgrade(ini, one, [live, backup])
    before = digest(one)
    with caplog.at_level(logging.INFO, logger="recovery.migrate.sandbox"):
        out = replay_upgrade(ini, backup, live, tmp_path, into=tmp_path / "replayed.db")
    assert "runs again in a new one" in caplog.text
    assert f"sqlite3.connect({str(one)!r})" in caplog.text  # the cached engine, refused
    assert out is not None and revision(out) == NEW_REV
    assert digest(one) == before


@pytest.mark.parametrize("variant", ["left-open", "thread"])
def test_a_child_the_app_left_something_running_or_open_in_is_not_kept(
    world_copy: Path, tmp_path: Path, variant: str
) -> None:
    """The app's code kept a connection on the first scratch (it could write that file from the
    second job), or left a thread running (it would run on, unwatched, while the child waits):
    the child is not parked but ended, and the next job gets a new one."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = (
        hostile_app(tmp_path, variant, live)
        if variant == "left-open"
        else reuse_app(tmp_path, variant)
    )
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    shutil.copyfile(backup, one)
    with Sandbox(ini, one, [live], keep=True) as sb:
        sb.migrate("upgrade", NEW_REV)
        pid = sb.pid
    assert parked_child() is None
    shutil.copyfile(backup, two)
    with Sandbox(ini, two, [live], adopt=True) as sb:
        assert not sb.reused and sb.pid not in (None, pid)
        sb.migrate("upgrade", NEW_REV)
    assert revision(two) == NEW_REV


def test_a_child_that_was_refused_something_is_never_parked(
    world_copy: Path, tmp_path: Path
) -> None:
    live = world_copy / "gestima.db"
    ini = hostile_app(tmp_path, "direct", live)
    scratch = tmp_path / "one.db"
    shutil.copyfile(backup_of(world_copy), scratch)
    with pytest.raises(MigrationFailed):
        with Sandbox(ini, scratch, [live], keep=True) as sb:
            sb.migrate("upgrade", NEW_REV)
    assert parked_child() is None


def test_the_parked_child_outlives_the_thread_that_started_it_and_ends_unadopted(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's parent-death signal follows the thread that started it: the lineage's thread
    ends before the replay adopts its child, which must still be there; unadopted, it ends by
    itself after ``LINGER`` seconds."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = app_dir() / "alembic.ini"
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    shutil.copyfile(backup, one)
    pids: list[int] = []
    job = threading.Thread(target=lambda: pids.append(park_after_upgrade(ini, one, [live])))
    job.start()
    job.join()
    time.sleep(0.3)
    shutil.copyfile(backup, two)
    with Sandbox(ini, two, [live], adopt=True) as sb:
        assert sb.reused and sb.pid == pids[0]
        sb.migrate("upgrade", NEW_REV)
    assert revision(two) == NEW_REV
    monkeypatch.setattr(sandbox, "LINGER", 0.2)
    shutil.copyfile(backup, one)
    park_after_upgrade(ini, one, [live])
    parked = parked_child()
    assert parked is not None
    parked.wait(timeout=10)  # ended by itself


def test_a_child_is_handed_only_to_a_job_protecting_what_its_first_job_protected(
    world_copy: Path, tmp_path: Path
) -> None:
    """A parked child is another run's when the new job does not protect every file its first
    job protected (that run's live DB): a new child runs it."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = app_dir() / "alembic.ini"
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    shutil.copyfile(backup, one)
    pid = park_after_upgrade(ini, one, [live, backup])
    shutil.copyfile(backup, two)
    with Sandbox(ini, two, [backup], adopt=True) as sb:
        assert not sb.reused and sb.pid != pid
        sb.migrate("upgrade", NEW_REV)
    assert parked_child() is None
    assert revision(two) == NEW_REV


def test_a_replay_started_while_the_lineage_runs_waits_for_its_child(
    world_copy: Path, tmp_path: Path
) -> None:
    """The extract starts the replay's sandbox while the lineage (begun beside the safety copy)
    still reads the schemas: no child is started then; the first command takes the lineage's."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = app_dir() / "alembic.ini"
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    shutil.copyfile(backup, one)
    shutil.copyfile(backup, two)
    with keeping(ini):
        with Sandbox(ini, two, [live, backup], adopt=True) as sb:
            assert sb.pid is None
            pid = park_after_upgrade(ini, one, [live, backup])
            sb.migrate("upgrade", NEW_REV)
            assert sb.reused and sb.pid == pid
    assert revision(two) == NEW_REV


def test_an_extract_refused_after_the_lineage_leaves_no_child(
    world_copy: Path, tmp_path: Path
) -> None:
    """The lineage parks its child for the replay; an extract refused before the replay (a
    mapping naming an unknown column) ends it."""
    from recovery.bundle.extract import extract
    from recovery.errors import RecoveryError

    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    mp = tmp_path / "mapping.toml"
    mp.write_text('[tables.parts.columns]\nprice = "no_such_column * 2"\n')
    with pytest.raises(RecoveryError):
        extract(backup, live, tmp_path / "b", mapping=mp, alembic_ini=app_dir() / "alembic.ini")
    assert parked_child() is None


def _fds_on(pid: int, target: Path) -> list[str]:
    """The descriptors process ``pid`` has open on ``target`` or its sidecars (by device+inode)."""
    wanted = {
        (st.st_dev, st.st_ino)
        for p in (
            target,
            target.with_name(target.name + "-wal"),
            target.with_name(target.name + "-shm"),
        )
        if p.exists()
        for st in [p.stat()]
    }
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            st = fd.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in wanted:
            found.append(fd.name)
    return found


def test_a_child_started_ahead_serves_the_lineage_and_then_the_replay(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prestart`` (the rollback calls it before its probe) starts a child that holds nothing of
    the live DB (a holder check would refuse the run) and runs nothing of the app; the lineage
    takes it as a FIRST job (not "reused": it is parked again), the replay takes it after: one
    interpreter for the whole run, and the same replayed copy as a new child's."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = app_dir() / "alembic.ini"
    with closing(sqlite3.connect(live)) as held:  # the caller has the live DB open meanwhile
        held.execute("SELECT count(*) FROM parts").fetchone()
        pid = sandbox.prestart(ini)
        assert pid is not None and _fds_on(pid, live) == []
    starts: list[int | None] = []
    real_start = Sandbox._start

    def counted(self: Sandbox, ini_path: Path) -> None:
        real_start(self, ini_path)
        starts.append(self.pid)

    monkeypatch.setattr(Sandbox, "_start", counted)
    derive_lineage(ini, backup, live, keep_child=True)
    parked = parked_child()
    assert parked is not None and parked.pid == pid  # the lineage's job ran in it, then parked
    replayed = replay_upgrade(ini, backup, live, tmp_path, into=tmp_path / "reused.db")
    assert starts == [] and parked_child() is None  # no other child was started
    assert replayed is not None and revision(replayed) == NEW_REV


def test_a_child_started_ahead_whose_protected_file_changed_is_ended_and_replaced(
    world_copy: Path, tmp_path: Path
) -> None:
    """The ini names the live DB, which the application commits into while the child started
    ahead is still starting: that child is not kept (none of the app's code ran in it, but
    nothing vouches for it either), so the lineage would start its own."""
    live = world_copy / "gestima.db"
    ini = hostile_app(tmp_path, "ini", live)  # (its env.py is not run here: only its ini)
    pid = sandbox.prestart(ini)
    assert pid is not None
    with closing(sqlite3.connect(live)) as app:  # the application commits meanwhile
        app.execute("UPDATE users SET username = username || '' WHERE rowid = 1")
        app.commit()
    sandbox.release_spare(ini)  # waits for the child started ahead: not parked, ended
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (
        not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )
    assert parked_child() is None
