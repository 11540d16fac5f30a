"""Shared fixtures: a small generated Gestima world, and the same world on PostgreSQL.

``world`` is generated once per test session and shared — treat it as read-only: open its
databases with ``sqlite3.connect(f"file:{path}?mode=ro", uri=True)``. A read-write open
that closes last checkpoints ``gestima.db-wal`` into ``gestima.db`` and deletes the WAL,
which changes the world under every other test. Tests that write use ``world_copy``.

PostgreSQL tests take ``pg_world_copy`` (a fresh, writable copy of the sample world built once per
session with ``recovery sample --url``: its live URL, the dump, an uploads copy, world.json) or,
to read without writing, ``pg_world`` itself. Never build a world per module: ``recovery sample
--url`` costs 8-12 s, a ``CREATE DATABASE … TEMPLATE`` copy a fraction of a second.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

# every statement the code renders is checked not to be rewritten by sqlglot's generator
# (recovery.engine.sqlbuild.sql renders in place); inherited by the CLI's child processes
os.environ.setdefault("RECOVERY_CHECK_RENDER", "1")

if TYPE_CHECKING:
    from tests.pgcluster import PgWorld, PgWorldCopy

# CI replays the same examples every run (a failure there is reproducible, never a coin flip);
# local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config: pytest.Config) -> None:
    """Compile the package (and the sample apps' migrations under it and ``sample_dbs``) to
    ``__pycache__`` once, in the controlling process, before any test runs.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (this workplace's machines set it) Python never
    caches what it compiles, so every command a test runs — each forked CLI child, each sandbox
    child — compiled the modules it imported again: 0.4 s of the ~4 s of CPU of a rollback of the
    120-part world, measured. An installed copy has its bytecode; with it here the suite measures
    the commands as they run there. Python checks each cached file against its source's size and
    time, so an edited module is compiled afresh as always."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller did it before starting the workers
    import compileall

    for folder in (ROOT / "recovery", ROOT / "sample_dbs"):
        if folder.is_dir():
            compileall.compile_dir(folder, quiet=2)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="Rewrite the golden files (tests/golden/) from the code's output instead of comparing.",
    )


# The PostgreSQL modules with the seconds each took (setup + call + teardown summed, measured
# 2026-12-06 on a shared machine at load ~8.5 and divided by 2.5: a ranking, not a promise; their
# CLI runs are in the test process since round 6, see tests/clirun.py).
# The README's `-n 2` run hands tests out with `--dist worksteal` (pyproject.toml): each worker
# starts with one contiguous half of the collection and steals from the end of the other's queue
# when it runs dry. Collecting these modules first keeps them together on one worker, so the
# PostgreSQL cluster, the session's ``pg_world`` and each module's fixtures are built once, not once
# per worker, while the short SQLite modules at the end are what gets stolen. (Ranking the SQLite
# modules too changed nothing: the measured durations replayed through xdist's load, worksteal and
# loadfile schedulers all end within 1% of half the serial time.) A module not listed counts as
# DEFAULT_MODULE_SECONDS and keeps its alphabetical place.
MODULE_SECONDS: dict[str, float] = {
    "test_pg_more.py": 35.0,
    "test_pg_reimport.py": 29.0,
    "test_pg_rollback.py": 24.0,
    "test_pg_extract.py": 23.0,
    "test_pg_adversarial.py": 22.0,
    "test_pg_gaps.py": 19.0,
    "test_postgres.py": 6.0,
}
DEFAULT_MODULE_SECONDS = 5.0


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest modules first (a stable sort: each module's tests stay together, in their order,
    so module-scoped fixtures are still built once per worker)."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, DEFAULT_MODULE_SECONDS))


WORLD_PARTS = 120
WORLD_SEED = 42


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a world generated once (parts=120, seed=42): backup, live DB + WAL, uploads, world.json."""
    from recovery.sample import generate

    return generate(tmp_path_factory.mktemp("world") / "world", parts=WORLD_PARTS, seed=WORLD_SEED)


@pytest.fixture
def world_copy(world: Path, tmp_path: Path) -> Path:
    """A private, writable copy of ``world`` (files copied as they are, -wal included)."""
    target = tmp_path / "world"
    shutil.copytree(world, target)
    return target


@pytest.fixture(scope="session")
def bundle(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bundle of the world's post-deploy changes (extracted with the app's Alembic), shared
    read-only by every test of the session (a test that edits a bundle edits a copy)."""
    from recovery.bundle.extract import extract
    from recovery.sample import app_dir

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    extract(
        next(world.glob("gestima.db.bak.*")),
        world / "gestima.db",
        out,
        alembic_ini=app_dir() / "alembic.ini",
    )
    return out


@pytest.fixture
def restored(world: Path, tmp_path: Path) -> Path:
    """The backup restored as the live DB (WAL mode like the app's)."""
    import sqlite3

    db = tmp_path / "gestima.db"
    shutil.copyfile(world / "gestima.db.bak.20261120_140000", db)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    return db


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a real PostgreSQL server (a superuser on its ``postgres`` database):
    ``RECOVERY_TEST_PG_URL`` when set (``.ci/run`` sets it), else a throwaway cluster this test
    process starts (:mod:`tests.pgcluster`), else the test is skipped saying how to run it.

    Under xdist only the first worker (``gw0``) uses ``RECOVERY_TEST_PG_URL``; another worker
    starts a throwaway cluster of its own when the binaries are there: several tests check the
    whole server ("the run left no database behind"), which another worker's databases appearing
    at the same moment would break. Without the binaries the workers share the given server."""
    from tests import pgcluster

    url = os.environ.get(pgcluster.ENV_URL)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    own = worker != "gw0" and pgcluster.find_bin("initdb") and pgcluster.find_bin("pg_ctl")
    if url and not own:
        yield url
        return
    if not (pgcluster.find_bin("initdb") and pgcluster.find_bin("pg_ctl")):
        pytest.skip(f"no PostgreSQL server: {pgcluster.HOW_TO}")
    try:
        cluster = pgcluster.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        pytest.skip(
            f"PostgreSQL is installed but a test cluster did not start ({str(detail).strip()[:300]}); "
            f"{pgcluster.HOW_TO}"
        )
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on ``pg_server`` (unique name), dropped after the test."""
    import uuid

    import psycopg
    from psycopg import sql as pgsql
    from sqlalchemy.engine import make_url

    name = f"recovery_test_{uuid.uuid4().hex[:12]}"
    admin = make_url(pg_server)
    with psycopg.connect(
        admin.set(drivername="postgresql").render_as_string(False), autocommit=True
    ) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    try:
        yield admin.set(database=name).render_as_string(False)
    finally:
        with psycopg.connect(
            admin.set(drivername="postgresql").render_as_string(False), autocommit=True
        ) as conn:
            conn.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
            )


PG_WORLD_PARTS = 60
PG_WORLD_SEED = 42


@pytest.fixture(scope="session")
def pg_world(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgWorld]:
    """The PostgreSQL sample world, built once per session (see :class:`PgWorld`); read-only."""
    import json
    import uuid

    from sqlalchemy.engine import make_url

    from recovery.engine.postgres import (
        create_database_sql,
        drop_database_sql,
        find_tool,
        restore_into,
    )
    from tests.pgcluster import PgWorld, admin_run

    token = uuid.uuid4().hex[:8]
    live, template, backup = f"pgw_live_{token}", f"pgw_tpl_{token}", f"pgw_bak_{token}"
    folder = tmp_path_factory.mktemp("pg_world") / "world"
    url = make_url(pg_server).set(database=live).render_as_string(False)
    r = subprocess.run(
        [sys.executable, "-m", "recovery", "sample", str(folder), "--url", url,
         "--parts", str(PG_WORLD_PARTS), "--seed", str(PG_WORLD_SEED), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    world = json.loads((folder / "world.json").read_text())
    dump = folder / str(world["backup"])
    try:
        admin_run(pg_server, create_database_sql(template, live), create_database_sql(backup))
        restore_into(dump, make_url(pg_server).set(database=backup), find_tool("pg_restore", 15))
        yield PgWorld(pg_server, folder, dump, world, live, template, backup)
    finally:
        admin_run(pg_server, *(drop_database_sql(n) for n in (template, backup, live)))


@pytest.fixture
def pg_world_copy(pg_world: PgWorld, tmp_path: Path) -> Iterator[PgWorldCopy]:
    """A fresh copy of the PostgreSQL sample world (``CREATE DATABASE … TEMPLATE``, well under a
    second) with its own uploads folder: see :class:`PgWorldCopy`."""
    import uuid

    from tests.pgcluster import PgWorldCopy, drop_family

    name = f"pgw_copy_{uuid.uuid4().hex[:10]}"
    url = pg_world.copy(name)
    uploads = tmp_path / "pg_world_uploads"
    shutil.copytree(pg_world.folder / "uploads", uploads)
    try:
        yield PgWorldCopy(
            url, name, pg_world.dump, uploads, pg_world.world, pg_world.folder, pg_world
        )
    finally:
        drop_family(pg_world.server, name)
