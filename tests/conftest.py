"""Shared fixtures: a small generated Gestima world.

``world`` is generated once per test session and shared — treat it as read-only: open its
databases with ``sqlite3.connect(f"file:{path}?mode=ro", uri=True)``. A read-write open
that closes last checkpoints ``gestima.db-wal`` into ``gestima.db`` and deletes the WAL,
which changes the world under every other test. Tests that write use ``world_copy``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# CI replays the same examples every run (a failure there is reproducible, never a coin flip);
# local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="Rewrite the golden files (tests/golden/) from the code's output instead of comparing.",
    )


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
    process starts (:mod:`tests.pgcluster`), else the test is skipped saying how to run it."""
    from tests import pgcluster

    url = os.environ.get(pgcluster.ENV_URL)
    if url:
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
