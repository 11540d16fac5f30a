"""Issue 19's PostgreSQL gaps on a real server: what a killed command leaves on the server is found
and dropped (only when the run that made it is provably gone), result files as on SQLite, and the
sandbox's limit under ``trust`` authentication said out loud.

One tiny sample world (``--parts 20``) is built per module with ``recovery sample --url``; every
test that writes works on its own ``CREATE DATABASE … TEMPLATE`` copy. Without PostgreSQL the tests
skip, saying how to run them (``pg_server`` in conftest.py).
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
from psycopg import sql as pgsql
from sqlalchemy.engine import make_url

from tests import clirun
from tests.pgcluster import password_checked_role

PARTS, SEED = 20, 7
APP_INI = (
    Path(__file__).resolve().parent.parent / "recovery" / "sample" / "gestima_app" / "alembic.ini"
)


def cli(*args: str, process: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process, or in a process of its own when ``process`` is set or ``env`` asks
    for a kill or a signal (:func:`tests.clirun.run`)."""
    return clirun.run(*args, env=env, process=process)


def _url(server: str, name: str) -> str:
    return make_url(server).set(database=name).render_as_string(False)


def _admin(server: str) -> psycopg.Connection[Any]:
    return psycopg.connect(_url(server, "postgres"), autocommit=True)


def _drop(server: str, name: str) -> None:
    with _admin(server) as a:
        a.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )


def _settled(server: str, timeout: float = 120) -> None:
    """Wait until no other client session on the server is running a statement: a SIGKILLed
    command's server session finishes the statement it was in (a ``CREATE DATABASE`` of the
    extract that runs beside the staged restore, say) before it sees its client gone, and what
    that statement makes must be counted with what the killed command left."""
    import time

    deadline = time.monotonic() + timeout
    with _admin(server) as a:
        while True:
            busy = a.execute(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND backend_type = 'client backend' AND state = 'active'"
            ).fetchone()[0]  # type: ignore[index]
            if busy == 0 or time.monotonic() > deadline:
                return
            time.sleep(0.1)


def _ours(server: str) -> set[tuple[str, str]]:
    """Every database and role with one of the tool's prefixes on the server."""
    with _admin(server) as a:
        dbs = a.execute(
            "SELECT datname FROM pg_database WHERE datname ~ '^recovery_(scratch|staged|rehearsal)_'"
        ).fetchall()
        roles = a.execute(
            "SELECT rolname FROM pg_roles WHERE rolname ~ '^recovery_sandbox_'"
        ).fetchall()
    return {("database", r[0]) for r in dbs} | {("role", r[0]) for r in roles}


@pytest.fixture(scope="module")
def world(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(sample folder with the dump, template database name)."""
    folder = tmp_path_factory.mktemp("pggaps") / "world"
    name = f"recovery_test_gaps_{uuid.uuid4().hex[:8]}"
    r = cli(
        "sample",
        str(folder),
        "--url",
        _url(pg_server, name),
        "--parts",
        str(PARTS),
        "--seed",
        str(SEED),
    )
    assert r.returncode == 0, r.stderr
    try:
        yield folder, name
    finally:
        _drop(pg_server, name)


@pytest.fixture
def live(pg_server: str, world: tuple[Path, str]) -> Iterator[str]:
    """A fresh copy of the world's live database."""
    name = f"recovery_test_gapl_{uuid.uuid4().hex[:8]}"
    with _admin(pg_server) as a:
        a.execute(
            pgsql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                pgsql.Identifier(name), pgsql.Identifier(world[1])
            )
        )
    try:
        yield _url(pg_server, name)
    finally:
        _drop(pg_server, name)


def _dump(world: tuple[Path, str]) -> str:
    return str(next(p for p in world[0].glob("*.dump.bak.*") if not p.name.endswith(".json")))


# ---- (1) what killed runs leave behind ---------------------------------------------------------


KILLS = {
    "scratch:backup": ["diff", "{dump}", "{live}", "--json"],
    "sandbox:made": ["extract", "{dump}", "{live}", "--out", "{tmp}/b", "--alembic-ini", str(APP_INI)],
    "staged:restore": ["rollback", "{live}", "--backup", "{dump}", "--out", "{tmp}/run", "--yes",
                       "--alembic-ini", str(APP_INI), "--uploads", "{uploads}"],
}  # fmt: skip
"""Kill points right after a command made (and claimed) its scratch database, its sandbox role
and scratch copy, its staged restore."""


def test_killed_commands_leave_objects_the_next_command_drops_and_never_a_live_runs(
    pg_server: str, world: tuple[Path, str], live: str, tmp_path: Path
) -> None:
    """SIGKILL right after each command made its database (or sandbox role): it is left on the
    server, claimed by a run that is gone, and the next command that makes such an object drops
    it by itself; `clean-stale --dry-run` lists the last ones and `clean-stale` drops them. A
    scratch database of a run that is alive (this test process's) and a database the operator
    named like ours (no claim) stay throughout."""
    from recovery.engine.postgres import PostgresEngine, scratch_database

    fill = {"dump": _dump(world), "live": live, "tmp": str(tmp_path),
            "uploads": str(world[0] / "uploads")}  # fmt: skip
    operators = f"recovery_scratch_operators_{uuid.uuid4().hex[:6]}"
    with _admin(pg_server) as a:
        a.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(operators)))
    try:
        with scratch_database(PostgresEngine(live), "alive") as mine:
            kept = {("database", mine.database), ("database", operators)}
            before = _ours(pg_server)
            assert kept <= before
            previous: set[tuple[str, str]] = set()
            for point, args in KILLS.items():
                killed = cli(*(a.format(**fill) for a in args), RECOVERY_TEST_KILL_AT_STEP=point)
                assert killed.returncode == -9, (point, killed.stderr)
                _settled(pg_server)
                now = _ours(pg_server)
                left = now - before
                assert left and not (previous & now), (point, previous, now)
                assert ("role" in {k for k, _ in left}) is (point == "sandbox:made"), left
                previous = left
            # real processes, as the killed ones: clean-stale judges other processes' claims
            listed = cli("clean-stale", live, "--dry-run", "--json", process=True)
            assert listed.returncode == 0, listed.stderr
            objects = json.loads(listed.stdout)["objects"]
            states = {(o["object"], o["name"]): o["state"] for o in objects}
            assert all(states[x] == "would drop" for x in previous), states
            assert states[("database", mine.database)] == "in use"
            assert states[("database", operators)] == "unclaimed"
            assert _ours(pg_server) - before == previous  # the dry run dropped nothing
            cleaned = cli("clean-stale", live, process=True)
            assert cleaned.returncode == 0, cleaned.stderr
            assert _ours(pg_server) == before
    finally:
        _drop(pg_server, operators)


def test_sigterm_drops_what_the_command_made(
    pg_server: str, world: tuple[Path, str], live: str
) -> None:
    """SIGTERM right after the scratch database is made: the command stops with the one-line
    "interrupted" (exit 3) and drops it on the way out."""
    before = _ours(pg_server)
    r = cli(
        "diff", _dump(world), live, "--json",
        RECOVERY_TEST_KILL_AT_STEP="scratch:backup", RECOVERY_TEST_KILL_SIGNAL="TERM",
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "interrupted" in r.stderr and "Traceback" not in r.stderr
    assert _ours(pg_server) - before == set()


# ---- (2) result files as on SQLite ---------------------------------------------------------------


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*")}


def test_a_postgres_run_folder_has_the_sqlite_run_folders_files_and_deletes_sql_is_what_apply_deletes_runs(
    pg_server: str, world: tuple[Path, str], live: str, tmp_path: Path
) -> None:
    """The PostgreSQL rollback's run folder holds every file of the SQLite rollback's of the same
    world but the safety copy (on PostgreSQL the failed database itself, kept renamed); the
    database under the live name keeps the live database's comment (not the staged one's claim);
    ``deletes.sql`` lists, commented out, exactly the DELETEs that ``--apply-deletes`` runs (the
    same statements in that run's ``reimport.sql``), as many as on SQLite."""
    lite = tmp_path / "lite"
    assert cli("sample", str(lite), "--parts", str(PARTS), "--seed", str(SEED)).returncode == 0
    lite_backup = next(p for p in lite.glob("gestima.db.bak.*") if not p.name.endswith(".json"))
    common = ["--alembic-ini", str(APP_INI), "--yes"]
    name = make_url(live).database
    note = "the operator's note: don't drop"
    with _admin(pg_server) as a:
        a.execute(
            pgsql.SQL("COMMENT ON DATABASE {} IS {}").format(
                pgsql.Identifier(name), pgsql.Literal(note)
            )
        )
    lr = cli("rollback", str(lite / "gestima.db"), "--backup", str(lite_backup),
             "--uploads", str(lite / "uploads"), "--out", str(tmp_path / "lrun"), *common)  # fmt: skip
    pr = cli("rollback", live, "--backup", _dump(world), "--uploads", str(world[0] / "uploads"),
             "--out", str(tmp_path / "prun"), *common)  # fmt: skip
    assert (lr.returncode, pr.returncode) == (1, 1), (lr.stderr, pr.stderr)
    sqlite_files = {f for f in _files(tmp_path / "lrun") if not f.startswith("safety")}
    assert sqlite_files - _files(tmp_path / "prun") == set()
    assert "deletes.sql" in sqlite_files
    with _admin(pg_server) as a:  # the live name keeps the operator's comment, never a claim
        got = a.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
    assert got == (note,)

    def deletes(text: str) -> list[str]:
        return [ln.removeprefix("-- ") for ln in text.splitlines() if ln.startswith("-- DELETE ")]

    pg_deletes = deletes((tmp_path / "prun" / "deletes.sql").read_text())
    assert pg_deletes and len(pg_deletes) == len(
        deletes((tmp_path / "lrun" / "deletes.sql").read_text())
    )
    # the bundle into a fresh restore of the backup, with --apply-deletes (dry run)
    target = f"recovery_test_gapd_{uuid.uuid4().hex[:8]}"
    with _admin(pg_server) as a:
        a.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(target)))
    try:
        subprocess.run(
            ["pg_restore", "--no-owner", "-d", _url(pg_server, target), _dump(world)],
            check=True, capture_output=True,
        )  # fmt: skip
        r = cli("reimport", str(tmp_path / "prun" / "bundle"), _url(pg_server, target),
                "--apply-deletes", "--dry-run", "--yes", "--out", str(tmp_path / "r2"))  # fmt: skip
        assert r.returncode in (0, 1), r.stderr
        executed = (tmp_path / "r2" / "reimport.sql").read_text().splitlines()
        assert [ln for ln in executed if ln.startswith("DELETE ")] == pg_deletes
        assert not (tmp_path / "r2" / "deletes.sql").exists()
    finally:
        _drop(pg_server, target)


# ---- (4) the sandbox under trust authentication ------------------------------------------------


@pytest.fixture
def scram_role(pg_server: str) -> Iterator[str]:
    """A role whose password the server checks (a pg_hba line for it alone, removed after);
    skipped when the server's pg_hba.conf is not ours to edit."""
    with password_checked_role(
        pg_server,
        "pggaps_scram_",
        "pw",
        lambda role: f"local all {role} scram-sha-256\nhost all {role} all scram-sha-256\n",
    ) as role:
        yield role


def test_trust_authentication_is_detected_and_said_in_one_line(
    pg_server: str, world: tuple[Path, str], live: str, tmp_path: Path, scram_role: str
) -> None:
    """The probe tells a role the server checks (scram) from one it lets in unchecked (trust, as
    this test cluster does for every other role); under trust the extract with the app's Alembic
    says so in one warning line, and still extracts."""
    import time

    from recovery.engine.postgres import PostgresEngine
    from recovery.migrate.pgsandbox import password_checked

    server = PostgresEngine(live)
    time.sleep(0.2)  # the reload is asynchronous
    assert password_checked(server, scram_role, server.database) is True
    with _admin(pg_server) as a:
        trusted = a.execute("SELECT rolname FROM pg_roles WHERE rolsuper LIMIT 1").fetchone()[0]  # type: ignore[index]
    assert password_checked(server, trusted, server.database) is False
    r = cli(  # a process of its own: the warning is said once per server per process
        "extract",
        _dump(world),
        live,
        "--out",
        str(tmp_path / "b"),
        "--alembic-ini",
        str(APP_INI),
        process=True,
    )
    assert r.returncode in (0, 1), r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "without checking its password" in ln]
    assert len(lines) == 1, r.stderr
    assert "trust" in lines[0] and "any role" in lines[0]
