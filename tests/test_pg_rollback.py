"""``recovery rollback`` / ``recovery undo`` on a real PostgreSQL server (issue 19, end to end).

The sample world is built once per session with ``recovery sample --url`` (parts=60, seed=42) into
a template database (conftest's ``pg_world``); every test rolls back its own ``CREATE DATABASE …
TEMPLATE`` copy with the real CLI: in this process (:mod:`tests.clirun`), and in a child process
for the kill points (they need a process to kill). The SQLite world of the same
seed, rolled back with ``recovery rollback``, is the reference: same rows table by table, same
Alembic revision, exit code and lost-value count. Without PostgreSQL the tests skip, saying how
to run them (``pg_server`` in conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlglot import exp

from recovery.engine.base import Staged
from recovery.engine.postgres import (
    PostgresEngine,
    connect,
    create_database_sql,
    drop_database_sql,
    run,
)
from recovery.errors import RecoveryError
from tests import clirun
from tests.pgcluster import PgWorld

PARTS, SEED = 60, 42
BACKUP_STAMP = ".bak.20261120_140000"


def cli(
    *args: str, env: dict[str, str] | None = None, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """The CLI in this process, or in a child process when ``process`` is set or ``env`` asks for
    a kill (:func:`tests.clirun.run`)."""
    return clirun.run(*args, env=env, process=process)


def _url(server: str, name: str) -> str:
    return make_url(server).set(database=name).render_as_string(False)


def _admin(server: str) -> psycopg.Connection[Any]:
    return connect(make_url(server), "server")


def _databases(server: str, like: str = "%") -> set[str]:
    """The databases on the server whose name is ``LIKE like`` (other tests, run at the same time
    on the same server, create and drop their own)."""
    with _admin(server) as a:
        q = "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE %s"
        return {r[0] for r in run(a, q, (like,)).fetchall()}


def _ours(server: str, live: str) -> set[str]:
    """The databases a rollback of ``live`` may create: ``<live>…`` and its staged database."""
    name = str(make_url(live).database)
    staged = PostgresEngine(live).staging_name()
    return _databases(server, f"{name}%") | (_databases(server, staged))


@pytest.fixture(scope="module")
def pg_template(pg_world: PgWorld) -> tuple[Path, str]:
    """(world folder, template database name): conftest's session-wide ``pg_world``, never rolled
    back itself."""
    return pg_world.folder, pg_world.template


@pytest.fixture
def live(pg_server: str, pg_template: tuple[Path, str]) -> Iterator[str]:
    """A copy of the world's live database under a fresh, hostile name (and every database a
    rollback of it left: safety, undone), dropped after the test."""
    name = f'Gé "{uuid.uuid4().hex[:8]}"; x'  # quotes, a semicolon, a space, non-ASCII
    with _admin(pg_server) as a:
        run(a, create_database_sql(name, template=pg_template[1]))
    yield _url(pg_server, name)
    with _admin(pg_server) as a:
        run(a, drop_database_sql(PostgresEngine(_url(pg_server, name)).staging_name()))
        for (db,) in run(
            a, "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE %s", (f"{name}%",)
        ).fetchall():
            run(a, drop_database_sql(db))


def _dump(world: Path) -> Path:
    return world / str(json.loads((world / "world.json").read_text())["backup"])


def _lite_rollback(folder: Path, *extra: str) -> tuple[int, dict[str, Any], Path]:
    from recovery.sample import generate

    world = generate(folder / "world", parts=PARTS, seed=SEED)
    run_dir = folder / "run"
    r = cli("rollback", str(world / "gestima.db"), "--backup", str(world / f"gestima.db{BACKUP_STAMP}"),
            "--out", str(run_dir), "--yes", "--quiet", *extra)  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    summary = json.loads((run_dir / "report.json").read_text())["summary"]
    return r.returncode, summary, world / "gestima.db"


@pytest.fixture(scope="module")
def lite_rolled(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], Path]:
    """(exit code, report summary, rolled-back DB) of the SQLite world of the same seed."""
    return _lite_rollback(tmp_path_factory.mktemp("litewrb"))


def _alembic_ini() -> str:
    from recovery.sample import app_dir

    return str(app_dir() / "alembic.ini")


def _rollback(url: str, world: Path, run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return cli("rollback", url, "--backup", str(_dump(world)), "--out", str(run_dir), "--yes",
               "--quiet", *extra, env=env)  # fmt: skip


def _normal(v: Any) -> Any:
    """SQLite stores booleans as 0/1: compare PostgreSQL's the same way."""
    return int(v) if isinstance(v, bool) else v


def _select(table: str, columns: list[str], dialect: str) -> str:
    cols = [exp.column(exp.to_identifier(c, quoted=True)) for c in columns]
    return (
        exp.select(*cols)
        .from_(exp.Table(this=exp.to_identifier(table, quoted=True)))
        .order_by(*cols)
        .sql(dialect)
    )


def _app_tables(lite: Path) -> dict[str, list[str]]:
    from recovery.engine.schema import reflect
    from recovery.engine.sqlite_io import readonly

    with readonly(lite, "sqlite world") as conn:
        schema = reflect(conn)
    return {
        n: list(t.column_names) for n, t in schema.tables.items() if not n.startswith("_recovery")
    }


def assert_same_rows(url: str, lite: Path) -> None:
    """Every application table of the PostgreSQL database holds the SQLite database's rows (each
    side ordered by every column in its own SQL)."""
    import sqlite3

    tables = _app_tables(lite)
    with PostgresEngine(url).readonly() as pg:
        have = {
            r[0]
            for r in pg.execute(
                "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        assert {t for t in have if not t.startswith("_recovery")} == set(tables)
        conn = sqlite3.connect(f"file:{lite}?mode=ro", uri=True)
        try:
            for name, cols in tables.items():
                got = [tuple(_normal(v) for v in r) for r in pg.execute(_select(name, cols, "postgres")).fetchall()]  # fmt: skip
                want = list(conn.execute(_select(name, cols, "sqlite")).fetchall())
                assert got == want, name
        finally:
            conn.close()


def _revision(url: str) -> str:
    with PostgresEngine(url).readonly() as conn:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def _app_fingerprint(url: str) -> dict[str, Any]:
    return {k: v for k, v in PostgresEngine(url).fingerprint().items() if "._recovery" not in k}


def test_rollback_gives_the_sqlite_rows_revision_exit_code_and_lost_values_then_undo(
    pg_server: str, pg_template: tuple[Path, str], live: str, tmp_path: Path
) -> None:
    """With the app's Alembic (lineage rules from its migrations, run in the sandbox) on both."""
    world = pg_template[0]
    lite_code, lite_summary, lite_db = _lite_rollback(tmp_path / "lite", "--alembic-ini", _alembic_ini())  # fmt: skip
    before = _app_fingerprint(live)
    engine = PostgresEngine(live)
    facts = engine.facts()
    r = _rollback(live, world, tmp_path / "run", "--alembic-ini", _alembic_ini())
    assert r.returncode == lite_code, r.stderr
    summary = json.loads((tmp_path / "run" / "report.json").read_text())["summary"]
    assert summary["lost_values"] == lite_summary["lost_values"] > 0
    assert summary["verdict"] == lite_summary["verdict"] and summary["verified"]
    assert _revision(live) == "aa001_add_drawing_number_drop_drawings"
    assert_same_rows(live, lite_db)
    assert (
        engine.facts().differences(facts) == []
    )  # owner, locale, privileges, settings, extensions
    journal = json.loads((tmp_path / "run" / "journal.json").read_text())
    safety = journal["steps"]["restore"]["safety"]
    assert _app_fingerprint(_url(pg_server, safety)) == before  # the failed DB, kept renamed
    assert engine.staging_name() not in _databases(pg_server)
    # a finished run run again changes nothing and exits as it finished
    again = _rollback(live, world, tmp_path / "run", "--alembic-ini", _alembic_ini())
    assert again.returncode == lite_code and _app_fingerprint(live) != before
    # undo: the failed release's database is live again; the rolled-back one is kept, renamed
    rolled = _app_fingerprint(live)
    u = cli("undo", str(tmp_path / "run"), "--yes")
    assert u.returncode == 0, u.stderr
    assert _app_fingerprint(live) == before and _revision(live) == "bb006_drop_parts_notes"
    undone = json.loads((tmp_path / "run" / "journal.json").read_text())["steps"]["undo"]
    assert _app_fingerprint(_url(pg_server, undone["kept"])) == rolled
    assert safety not in _databases(pg_server)
    u2 = cli("undo", str(tmp_path / "run"), "--yes")
    assert u2.returncode == 0 and "already undone" in u2.stdout
    resumed = _rollback(live, world, tmp_path / "run", "--alembic-ini", _alembic_ini())
    assert resumed.returncode == 2 and "was undone" in resumed.stderr


def test_sessions_on_the_live_database_are_refused_and_named(
    pg_server: str, pg_template: tuple[Path, str], live: str, tmp_path: Path
) -> None:
    before, dbs = _app_fingerprint(live), _ours(pg_server, live)
    app = psycopg.connect(conninfo_of(PostgresEngine(live)), application_name="gestima-web")
    try:
        r = _rollback(live, pg_template[0], tmp_path / "run")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert f"pid {app.info.backend_pid}" in r.stderr and "gestima-web" in r.stderr
        assert "--terminate-sessions" in r.stderr
        # --force goes past the probe, but the swap still refuses while the session is there
        f = _rollback(live, pg_template[0], tmp_path / "run2", "--force")
        assert f.returncode == 2 and "gestima-web" in f.stderr, f.stderr
        assert "nothing was changed" in f.stderr
        app.execute("SELECT 1")  # still connected: nothing terminated it
    finally:
        app.close()
    assert _app_fingerprint(live) == before and _ours(pg_server, live) == dbs


def test_terminate_sessions_ends_them_and_rolls_back(
    pg_server: str,
    pg_template: tuple[Path, str],
    live: str,
    lite_rolled: tuple[int, dict[str, Any], Path],
    tmp_path: Path,
) -> None:
    app = psycopg.connect(conninfo_of(PostgresEngine(live)), application_name="gestima-web")
    try:
        r = _rollback(live, pg_template[0], tmp_path / "run", "--terminate-sessions")
        assert r.returncode == lite_rolled[0], r.stderr
        with pytest.raises(psycopg.OperationalError):
            app.execute("SELECT 1")
    finally:
        app.close()
    journal = json.loads((tmp_path / "run" / "journal.json").read_text())
    assert any("gestima-web" in t for t in journal["steps"]["probe"]["terminated"])
    assert_same_rows(live, lite_rolled[2])


KILL_CHAIN = (
    "safety:done",
    "extract:done",
    "reimport:done",
    "restore:swapping",
    "restore:blocked",
    "restore:done",
    "report:start",
)
"""Each resume is killed at the next point: before the extract, with the re-import committed into
the staged database, journaled as swapping, with new connections refused inside the swap (before
its renaming transaction), right after the swap, and before the report."""


def test_a_run_killed_at_each_step_is_finished_by_the_same_command(
    pg_server: str,
    pg_template: tuple[Path, str],
    live: str,
    lite_rolled: tuple[int, dict[str, Any], Path],
    tmp_path: Path,
) -> None:
    name = make_url(live).database
    for point in KILL_CHAIN:
        killed = _rollback(
            live, pg_template[0], tmp_path / "run", env={"RECOVERY_TEST_KILL_AT_STEP": point}
        )
        assert killed.returncode == -9, (point, killed.stderr)
        with _admin(pg_server) as a:
            allow = run(
                a, "SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = %s", (name,)
            ).fetchone()[0]
        assert allow is (point != "restore:blocked"), point
        steps = json.loads((tmp_path / "run" / "journal.json").read_text())["steps"]
        swapped = point in ("restore:done", "report:start")
        assert (steps["restore"]["state"] == "done" if "restore" in steps else False) is swapped
        if not swapped and point != "restore:blocked":  # the app sees the failed release's DB
            assert _revision(live) == "bb006_drop_parts_notes", point
    resumed = _rollback(live, pg_template[0], tmp_path / "run")
    assert resumed.returncode == lite_rolled[0], resumed.stderr
    assert_same_rows(live, lite_rolled[2])
    summary = json.loads((tmp_path / "run" / "report.json").read_text())["summary"]
    assert summary["lost_values"] == lite_rolled[1]["lost_values"]
    assert PostgresEngine(live).staging_name() not in _databases(pg_server)


def test_dry_run_changes_nothing_on_the_server(
    pg_server: str,
    pg_template: tuple[Path, str],
    live: str,
    lite_rolled: tuple[int, dict[str, Any], Path],
    tmp_path: Path,
) -> None:
    before, dbs = _app_fingerprint(live), _ours(pg_server, live)
    r = _rollback(live, pg_template[0], tmp_path / "run", "--dry-run")
    assert r.returncode == lite_rolled[0], r.stderr
    summary = json.loads((tmp_path / "run" / "report.json").read_text())["summary"]
    assert summary["dry_run"] and summary["lost_values"] == lite_rolled[1]["lost_values"]
    assert _app_fingerprint(live) == before and _ours(pg_server, live) == dbs
    assert not (tmp_path / "run" / "journal.json").exists()


HOSTILE = 'we "ird; DROP'


@pytest.fixture
def hostile(pg_server: str, tmp_path: Path) -> Iterator[PostgresEngine]:
    """A database with a hostile name, its own owner, revoked PUBLIC access, a grant, per-database
    and per-role settings, a connection limit and an extension, and a dump of it."""
    names = [HOSTILE, f"{HOSTILE}_kept", f"{HOSTILE}_safety_x"]
    with _admin(pg_server) as a:
        for n in names:
            run(a, drop_database_sql(n))
        for role in ("rb_owner", "rb_reader"):
            if not run(a, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                a.execute(f"CREATE ROLE {role} LOGIN")
        a.execute('CREATE DATABASE "we ""ird; DROP" OWNER rb_owner')
        for q in (
            'REVOKE ALL ON DATABASE "we ""ird; DROP" FROM PUBLIC',
            'GRANT CONNECT ON DATABASE "we ""ird; DROP" TO rb_reader',
            'ALTER DATABASE "we ""ird; DROP" SET search_path TO "$user", public, "odd, schema"',
            'ALTER DATABASE "we ""ird; DROP" SET work_mem TO \'8MB\'',
            'ALTER ROLE rb_reader IN DATABASE "we ""ird; DROP" SET statement_timeout TO \'5s\'',
            'ALTER DATABASE "we ""ird; DROP" CONNECTION LIMIT 50',
        ):
            a.execute(q)
    engine = PostgresEngine(_url(pg_server, HOSTILE))
    with connect(engine.url) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t VALUES (1, 'backup')")
    engine.snapshot(tmp_path / "h.dump")
    with connect(engine.url) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # added after the backup: kept too
        c.execute("INSERT INTO t VALUES (2, 'after')")
    yield engine
    with _admin(pg_server) as a:
        for (n,) in run(
            a, "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{HOSTILE}%",)
        ).fetchall():
            run(a, drop_database_sql(n))
        run(a, drop_database_sql(engine.staging_name()))


def _rows(engine: PostgresEngine) -> list[tuple[Any, ...]]:
    with engine.readonly() as c:
        return list(c.execute("SELECT * FROM t ORDER BY id").fetchall())


def test_staged_restore_keeps_owner_privileges_settings_extensions_and_swaps_in_one_transaction(
    pg_server: str, hostile: PostgresEngine, tmp_path: Path
) -> None:
    facts = hostile.facts()
    assert facts.owner == "rb_owner" and facts.acl and facts.settings and facts.connlimit == 50
    staged = hostile.stage_restore(tmp_path / "h.dump")
    assert hostile.facts().differences(hostile.with_database(staged.location).facts()) == []
    assert _rows(hostile) == [(1, "backup"), (2, "after")]  # staging did not touch the live DB
    hostile.swap_in(staged, keep_as=f"{HOSTILE}_safety_x")
    assert _rows(hostile) == [(1, "backup")]
    assert hostile.facts().differences(facts) == [] and hostile.facts().allow_connections
    kept = hostile.with_database(f"{HOSTILE}_safety_x")
    assert _rows(kept) == [(1, "backup"), (2, "after")] and kept.facts().allow_connections
    assert staged.location not in _databases(pg_server)


def test_swap_is_refused_when_a_session_appears_and_nothing_changes(
    pg_server: str, hostile: PostgresEngine, tmp_path: Path
) -> None:
    staged = hostile.stage_restore(tmp_path / "h.dump")
    app = psycopg.connect(conninfo_of(hostile), application_name="late-app")
    try:
        with pytest.raises(RecoveryError) as err:
            hostile.swap_in(staged, keep_as=f"{HOSTILE}_safety_x")
        assert "late-app" in err.value.message and "nothing was changed" in err.value.message
        app.execute("SELECT 1")
    finally:
        app.close()
    assert _rows(hostile) == [(1, "backup"), (2, "after")] and hostile.facts().allow_connections
    assert {staged.location, f"{HOSTILE}_safety_x"}.isdisjoint(_databases(pg_server))
    # a check that fails (the live rows changed) refuses the same way
    staged = hostile.stage_restore(tmp_path / "h.dump")

    def changed(conn: Any) -> None:
        raise RecoveryError("the live rows changed; nothing was changed")

    with pytest.raises(RecoveryError):
        hostile.swap_in(staged, keep_as=f"{HOSTILE}_kept", check=changed)
    assert _rows(hostile) == [(1, "backup"), (2, "after")] and hostile.facts().allow_connections
    # an undo-like swap never drops what it was asked to swap in
    keep = Staged(f"{HOSTILE}_kept", "")
    with _admin(pg_server) as a:
        a.execute('CREATE DATABASE "we ""ird; DROP_kept"')
    with pytest.raises(RecoveryError):
        hostile.swap_in(keep, keep_as=f"{HOSTILE}_safety_x", check=changed, drop_on_refusal=False)
    assert f"{HOSTILE}_kept" in _databases(pg_server)


def conninfo_of(engine: PostgresEngine) -> str:
    from recovery.engine.postgres import conninfo

    return conninfo(engine.url)
