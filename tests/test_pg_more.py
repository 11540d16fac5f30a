"""The rest of issue 19's verbs on a real PostgreSQL server: ``demo --url``, ``rehearse``,
``check --db``, ``relink`` and ``rollback --backup`` given another database's URL, and bad URLs
refused in one line with exit 2 by every verb that takes a database.

The sample world (parts=60, seed=42) is conftest's session-wide ``pg_world`` (``recovery sample
--url`` into a template database, its dump restored once into a backup database); every test that
writes works on its own ``CREATE DATABASE … TEMPLATE`` copy. Without PostgreSQL the tests skip,
saying how to run them (``pg_server`` in conftest.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql as pgsql
from sqlalchemy.engine import make_url

from recovery.cli import main
from tests.clirun import invoke
from tests.pgcluster import PgWorld, password_checked_role

PARTS, SEED = 60, 42
APP_INI = (
    Path(__file__).resolve().parent.parent / "recovery" / "sample" / "gestima_app" / "alembic.ini"
)
OLD_REV = "aa001_add_drawing_number_drop_drawings"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (:mod:`tests.clirun`); the rollbacks in a process of their own are
    those of :mod:`tests.test_pg_rollback`'s kill chain."""
    return invoke(*args)


def _url(server: str, name: str) -> str:
    return make_url(server).set(database=name).render_as_string(False)


def _admin(server: str) -> psycopg.Connection[Any]:
    return psycopg.connect(_url(server, "postgres"), autocommit=True)


def _create(server: str, name: str, template: str | None = None) -> str:
    q = pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name))
    if template:
        q = pgsql.SQL("{} TEMPLATE {}").format(q, pgsql.Identifier(template))
    with _admin(server) as a:
        a.execute(q)
    return _url(server, name)


def _drop_like(server: str, prefix: str) -> None:
    with _admin(server) as a:
        for (db,) in a.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)
        ).fetchall():
            a.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(db))
            )


def _databases(server: str) -> set[str]:
    with _admin(server) as a:
        return {r[0] for r in a.execute("SELECT datname FROM pg_database").fetchall()}


def _rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every application table's rows, ordered, as text (equal databases give equal dicts); the
    tool's own bookkeeping (``_recovery_*``: run ids, times) is left out."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(url) as c:
        tables = [
            r[0]
            for r in c.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename NOT LIKE '\\_recovery\\_%' ORDER BY 1"
            ).fetchall()
        ]
        for t in tables:
            out[t] = [
                tuple(r)
                for r in c.execute(
                    pgsql.SQL("SELECT CAST(t AS TEXT) FROM public.{} AS t ORDER BY 1").format(
                        pgsql.Identifier(t)
                    )
                ).fetchall()
            ]
    return out


@pytest.fixture(scope="module")
def world(pg_world: PgWorld) -> dict[str, Any]:
    """The sample world (conftest's session-wide ``pg_world``, read only): its folder, dump,
    template (live) database and a database the dump was restored into (the backup given as a
    URL)."""
    return {
        "dir": pg_world.folder,
        "dump": pg_world.dump,
        "template": pg_world.template,
        "backup_url": pg_world.backup_url,
    }


@pytest.fixture
def live(pg_server: str, world: dict[str, Any]) -> Iterator[str]:
    """A copy of the world's live database (and whatever a rollback of it leaves), dropped after."""
    name = f"pgmore_live_{uuid.uuid4().hex[:8]}"
    yield _create(pg_server, name, world["template"])
    _drop_like(pg_server, name)


# ---- rollback --backup URL, relink ------------------------------------------------------------


def test_rollback_with_the_backup_as_a_database_url_equals_the_dump_rollback(
    pg_server: str, world: dict[str, Any], tmp_path: Path
) -> None:
    """``--backup postgresql://…`` (the dump restored into another database) rolls back to the
    same rows, revision, exit code and lost values as ``--backup FILE.dump``; the backup database
    is only read; the live database itself is refused as its own backup (exit 2)."""
    results = []
    backup_before = _rows(world["backup_url"])
    for label, backup in (("dump", str(world["dump"])), ("url", world["backup_url"])):
        name = f"pgmore_rb{label}_{uuid.uuid4().hex[:6]}"
        url = _create(pg_server, name, world["template"])
        try:
            run_dir = tmp_path / label
            r = cli("rollback", url, "--backup", backup, "--out", str(run_dir), "--yes", "--quiet")
            assert r.returncode in (0, 1), r.stderr
            summary = json.loads((run_dir / "report.json").read_text())["summary"]
            results.append((r.returncode, summary["lost_values"], _rows(url)))
            if label == "url":
                assert (run_dir / "backup-database.dump").is_file()
        finally:
            _drop_like(pg_server, name)
    (rc_d, lost_d, rows_d), (rc_u, lost_u, rows_u) = results
    assert (rc_u, lost_u) == (rc_d, lost_d)
    assert rows_u == rows_d
    assert rows_u["alembic_version"] == [(f"({OLD_REV})",)]
    assert _rows(world["backup_url"]) == backup_before
    same = cli("rollback", world["backup_url"], "--backup", world["backup_url"], "--out",
               str(tmp_path / "same"), "--yes")  # fmt: skip
    assert same.returncode == 2
    assert "is the live database itself" in same.stderr
    assert "Traceback" not in same.stderr


def test_relink_on_a_url_restores_a_carried_upload(
    pg_server: str, world: dict[str, Any], tmp_path: Path
) -> None:
    """``recovery relink BUNDLE postgresql://…`` (a bundle extracted on PostgreSQL, its keys text)
    puts a carried upload that went missing back from the bundle with its recorded content; a
    dry run writes nothing."""
    name = f"pgmore_rl_{uuid.uuid4().hex[:8]}"
    target = _create(pg_server, name, world["backup_url"].rsplit("/", 1)[1])
    try:
        live_url = _create(pg_server, f"{name}_src", world["template"])
        bundle = tmp_path / "bundle"
        r = cli("extract", str(world["dump"]), live_url, "--out", str(bundle),
                "--uploads", str(world["dir"] / "uploads"), "--quiet")  # fmt: skip
        assert r.returncode in (0, 1), r.stderr
        r = cli("reimport", str(bundle), target, "--out", str(tmp_path / "run"), "--yes", "--quiet")
        assert r.returncode in (0, 1), r.stderr
        uploads = tmp_path / "uploads"
        shutil.copytree(world["dir"] / "uploads", uploads)
        carried = [f for f in json.loads((world["dir"] / "world.json").read_text())["files"]
                   if f["uploaded_after_deploy"]]  # fmt: skip
        assert carried
        gone = uploads / carried[0]["path"]
        gone.unlink()
        dry = cli("relink", str(bundle), target, "--uploads", str(uploads), "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert not gone.exists()
        r = cli("relink", str(bundle), target, "--uploads", str(uploads), "--json")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["counts"]["restored_from_bundle"] == 1
        import hashlib

        assert hashlib.sha256(gone.read_bytes()).hexdigest() == carried[0]["sha256"]
    finally:
        _drop_like(pg_server, name)


# ---- demo --url -------------------------------------------------------------------------------


def test_demo_url_rolls_back_the_world_as_the_sqlite_demo_does(
    pg_server: str, tmp_path: Path
) -> None:
    """``recovery demo --url`` builds the world in a new database and rolls it back: exit 0, the
    same verdict, carried records and lost values as the SQLite demo of the same seed; a second
    demo into the same (now full) database is refused with exit 2 and leaves no folder behind."""
    name = f"pgmore_demo_{uuid.uuid4().hex[:8]}"
    try:
        r = cli("demo", str(tmp_path / "pg"), "--url", _url(pg_server, name), "--parts",
                str(PARTS), "--seed", str(SEED), "--quiet")  # fmt: skip
        assert r.returncode == 0, r.stderr
        lite = cli("demo", str(tmp_path / "lite"), "--parts", str(PARTS), "--seed", str(SEED),
                   "--quiet")  # fmt: skip
        assert lite.returncode == 0, lite.stderr
        pg_s = json.loads((tmp_path / "pg" / "run" / "report.json").read_text())["summary"]
        lite_s = json.loads((tmp_path / "lite" / "run" / "report.json").read_text())["summary"]
        for key in ("verdict", "records_carried", "lost_values", "rows_inserted", "rows_updated",
                    "conflicts", "verified"):  # fmt: skip
            assert pg_s[key] == lite_s[key], key
        again = cli("demo", str(tmp_path / "again"), "--url", _url(pg_server, name), "--parts",
                    str(PARTS))  # fmt: skip
        assert again.returncode == 2
        assert "already has" in again.stderr
        assert not (tmp_path / "again").exists()
    finally:
        _drop_like(pg_server, name)


# ---- rehearse ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backup_kind", ["dump", "url"])
def test_rehearse_on_postgres_passes_and_leaves_the_live_database_alone(
    pg_server: str, world: dict[str, Any], live: str, tmp_path: Path, backup_kind: str
) -> None:
    """``recovery rehearse postgresql://…`` rolls back a scratch copy: PASS (exit 0), every
    post-deploy key found on the server, the copy at the backup's revision, uploads carried; the
    live database's rows are unchanged and no scratch database is left on the server."""
    before_rows, before_dbs = _rows(live), _databases(pg_server)
    backup = str(world["dump"]) if backup_kind == "dump" else world["backup_url"]
    r = cli("rehearse", live, "--backup", backup, "--alembic-ini", str(APP_INI), "--uploads",
            str(world["dir"] / "uploads"), "--out", str(tmp_path / "r"), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["result"] == "PASS", data["reasons"]
    changes = data["checks"]["post_deploy_changes"]
    assert sum(v["expected"] for v in changes.values()) > 0
    assert all(v["missing"] == 0 for v in changes.values())
    assert data["checks"]["alembic_revision"] == {
        "expected": OLD_REV,
        "actual": OLD_REV,
        "ok": True,
    }
    assert data["checks"]["uploads"]["problems"] == 0
    assert data["losses_total"] > 0
    assert _rows(live) == before_rows
    assert _databases(pg_server) == before_dbs
    assert (tmp_path / "r" / "rehearsal.md").is_file()


def test_rehearse_fails_when_a_post_deploy_row_would_not_be_carried(
    pg_server: str, world: dict[str, Any], live: str, tmp_path: Path
) -> None:
    """The key check can fail: in this backup an old part already holds the part number of the
    newest post-deploy part, so the re-import skips that part (a unique conflict) and the file
    record pointing at it: FAIL (exit 1) names the conflict and the keys missing on the server,
    and nothing is left on the server."""
    bak_name = f"pgmore_bk2_{uuid.uuid4().hex[:8]}"
    bak = _create(pg_server, bak_name, world["backup_url"].rsplit("/", 1)[1])
    try:
        with psycopg.connect(live) as c:
            newest = c.execute(
                "SELECT id, part_number FROM parts ORDER BY id DESC LIMIT 1"
            ).fetchone()
        assert newest is not None
        with psycopg.connect(bak) as c:
            c.execute("UPDATE parts SET part_number = %s WHERE id = 1", (newest[1],))
        before_dbs = _databases(pg_server)
        r = cli("rehearse", live, "--backup", bak, "--out", str(tmp_path / "r"), "--json")
        assert r.returncode == 1, r.stderr
        data = json.loads(r.stdout)
        assert data["result"] == "FAIL"
        assert any("unique conflict" in x for x in data["reasons"]), data["reasons"]
        assert any(
            f"of parts are not in the rolled-back copy (e.g. key ['{newest[0]}'])" in x
            for x in data["reasons"]
        ), data["reasons"]
        assert data["checks"]["post_deploy_changes"]["parts"]["missing"] == 1
        assert _databases(pg_server) == before_dbs
    finally:
        _drop_like(pg_server, bak_name)


# ---- check --db -------------------------------------------------------------------------------


@pytest.mark.parametrize("db_kind", ["url", "dump"])
def test_check_starts_at_the_revision_of_a_postgres_db_or_dump(
    world: dict[str, Any], db_kind: str
) -> None:
    """``recovery check --db postgresql://…`` (or the pg_dump file with its manifest) judges the
    revisions after the database's own revision."""
    db = world["backup_url"] if db_kind == "url" else str(world["dump"])
    res = CliRunner().invoke(main, ["check", "--alembic-ini", str(APP_INI), "--db", db, "--json"])
    assert res.exit_code in (0, 1), res.output
    data = json.loads(res.stdout)
    assert data["from"] == OLD_REV
    assert data["revisions"] and all(r["revision"] != OLD_REV for r in data["revisions"])


# ---- bad input ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def password_role(pg_server: str) -> Iterator[str]:
    """A role whose password the server checks (a pg_hba line for it alone, removed after), so a
    wrong password can be tried; skipped when the server's pg_hba.conf is not ours to edit."""
    with password_checked_role(
        pg_server,
        "pgmore_pw_",
        "right-password",
        lambda role: f"host all {role} 127.0.0.1/32 scram-sha-256\n",
    ) as role:
        yield role


BAD = ["unreachable", "wrong_password", "no_database", "driver", "engine"]


def _bad_url(kind: str, server: str, role: str) -> str:
    u = make_url(server)
    if kind == "unreachable":
        return u.set(port=1, database="gestima").render_as_string(False)
    if kind == "wrong_password":
        return u.set(username=role, password="wrong", database="postgres").render_as_string(False)
    if kind == "no_database":
        return u.set(database=f"missing_{uuid.uuid4().hex[:6]}").render_as_string(False)
    if kind == "driver":
        return u.set(drivername="postgresql+asyncpg", database="postgres").render_as_string(False)
    return "mysql://app@db.internal/gestima"


@pytest.mark.parametrize("kind", BAD)
def test_a_bad_database_url_is_one_line_exit_2_for_every_verb(
    pg_server: str, world: dict[str, Any], password_role: str, tmp_path: Path, kind: str
) -> None:
    """Unreachable server, wrong password, missing database, a driver other than psycopg, another
    engine's URL: every verb that takes a database says so in one line, exits 2, no traceback, and
    creates nothing (no database on the server, no demo folder)."""
    bad = _bad_url(kind, pg_server, password_role)
    dump, good = str(world["dump"]), world["backup_url"]
    bundle = tmp_path / "no-bundle"
    calls = {
        "diff": ["diff", dump, bad],
        "diff-backup": ["diff", bad, good],
        "extract": ["extract", dump, bad, "--out", str(tmp_path / "b")],
        "rollback": ["rollback", bad, "--backup", dump, "--out", str(tmp_path / "r1"), "--yes"],
        "rollback-backup": [
            "rollback",
            good,
            "--backup",
            bad,
            "--out",
            str(tmp_path / "r2"),
            "--yes",
        ],
        "reimport": ["reimport", str(bundle), bad, "--yes"],
        "relink": ["relink", str(bundle), bad, "--uploads", str(world["dir"] / "uploads")],
        "rehearse": ["rehearse", bad, "--backup", dump, "--out", str(tmp_path / "r3")],
        "rehearse-backup": ["rehearse", good, "--backup", bad, "--out", str(tmp_path / "r4")],
        "check": ["check", "--alembic-ini", str(APP_INI), "--db", bad],
    }
    if kind != "no_database":  # demo --url creates a missing database: that is its contract
        calls["demo"] = ["demo", str(tmp_path / "demo"), "--url", bad, "--parts", "10"]
    before = _databases(pg_server)
    for verb, args in calls.items():
        res = CliRunner().invoke(main, args)
        err = "\n".join(ln for ln in res.stderr.splitlines() if not ln.startswith("· "))
        assert res.exit_code == 2, (verb, res.exit_code, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, (verb, err)
        assert err.startswith("error:"), (verb, err)
    assert _databases(pg_server) == before
    assert not (tmp_path / "demo").exists()
