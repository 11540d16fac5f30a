"""``recovery check`` on an application whose first tables are made by its ORM (``create_all``)
and stamped, not by a migration (issue 16, item 7): with ``--db`` the scratch database starts
from a copy of that database's schema and a bounded sample of its rows; without it, a base-up
build that fails says why and that ``--db`` fixes it."""

from __future__ import annotations

import json
import logging  # noqa: F401 - jupyterhub logs through it
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from alembic_apps import write_app

from recovery.migrate.check import SAMPLE_ROWS, seed_scratch

from tests.clirun import invoke


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, in this process (:mod:`tests.clirun`)."""
    return invoke(*args, cwd=cwd)


def orm_app(folder: Path) -> Path:
    """r1 assumes ``items`` exists (the ORM made it) and adds ``code`` filled from the name; r2 adds
    ``note`` with a stub downgrade."""
    revs = [
        ("r0", None, "pass", "pass"),
        (
            "r1",
            "r0",
            (
                'with op.batch_alter_table("items") as b:\n    b.add_column(sa.Column("code", sa.Text))\n'
                'op.execute("UPDATE items SET code = upper(name)")'
            ),
            'with op.batch_alter_table("items") as b:\n    b.drop_column("code")',
        ),
        ("r2", "r1", 'op.add_column("items", sa.Column("note", sa.Text))', "pass"),
    ]
    return write_app(folder, revs)


def orm_db(path: Path, rows: int) -> Path:
    """The database the app's ORM made: ``items`` created directly, stamped at r0."""
    with closing(sqlite3.connect(path)) as c, c:
        c.executescript(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
            "CREATE INDEX ix_items_name ON items (name);"
            "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY);"
            "INSERT INTO alembic_version VALUES ('r0');"
        )
        c.executemany(
            "INSERT INTO items VALUES (?, ?)", [(i, f"item {i}") for i in range(1, rows + 1)]
        )
    return path


def test_check_with_db_judges_an_orm_made_schema_and_names_the_stub(tmp_path: Path) -> None:
    ini = orm_app(tmp_path / "app")
    db = orm_db(tmp_path / "app.db", 50)
    before = db.read_bytes()
    res = cli("check", "--alembic-ini", ini, "--db", db, "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert (data["from"], data["to"]) == ("r0", "r2")
    got = {r["revision"]: r for r in data["revisions"]}
    assert list(got) == ["r1", "r2"]
    assert (
        got["r1"]["downgrade"]["kind"] == "full"
        and got["r1"]["verdict"] == "loses data on downgrade"
    )
    assert got["r2"]["downgrade"]["kind"] == "stub" and got["r2"]["verdict"] == "needs manual SQL"
    assert db.read_bytes() == before  # only read


def test_check_without_db_says_why_and_that_db_fixes_it(tmp_path: Path) -> None:
    ini = orm_app(tmp_path / "app")
    res = cli("check", "--alembic-ini", ini)
    assert res.returncode == 3, res.stdout + res.stderr
    err = res.stderr.strip()
    assert (
        "no such table: items" in err
        and "create_all" in err
        and "--db" in err
        and "Traceback" not in err
    )


def test_seed_copies_the_schema_and_a_bounded_sample(tmp_path: Path) -> None:
    src = orm_db(tmp_path / "app.db", SAMPLE_ROWS + 50)
    dst = seed_scratch(src, tmp_path / "seed.db")
    with closing(sqlite3.connect(dst)) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone()[0] == SAMPLE_ROWS
        assert c.execute("SELECT version_num FROM alembic_version").fetchall() == [("r0",)]
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
    assert {"items", "ix_items_name", "alembic_version"} <= names


def test_check_with_db_judges_jupyterhub_from_its_stamped_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JupyterHub creates its tables with ``orm.Base.metadata.create_all`` and stamps head; its
    migrations assume them. ``check --db`` on a hub DB at 4621fec11365 judges the 4 revisions up
    to head."""
    pytest.importorskip(
        "jupyterhub", reason="jupyterhub is not installed (pip install -e '.[test]' brings it)"
    )
    from jupyterhub import dbutil, orm

    monkeypatch.setenv(
        "PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "jupyterhub.sqlite"
    url = f"sqlite:///{db}"
    ini = tmp_path / "alembic.ini"
    dbutil.write_alembic_ini(str(ini), url)
    s = orm.new_session_factory(url)()
    for i in range(5):
        s.add(orm.User(name=f"user{i}"))
    s.commit()
    s.get_bind().dispose()
    s.close()
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "downgrade", "4621fec11365"],
        check=True,
        capture_output=True,
    )
    before = db.read_bytes()
    res = cli("check", "--alembic-ini", ini, "--db", db, "--json", cwd=tmp_path)
    assert res.returncode in (0, 1), res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert data["from"] == "4621fec11365" and len(data["revisions"]) == 4
    assert data["revisions"][-1]["revision"] == data["to"]
    assert all(
        r["downgrade"]["kind"] in ("full", "stub", "partial", "failed") for r in data["revisions"]
    )
    assert db.read_bytes() == before
    res = cli(
        "check", "--alembic-ini", ini, cwd=tmp_path
    )  # from the base: the hub's first tables are missing
    assert res.returncode == 3 and "--db" in res.stderr and "create_all" in res.stderr, res.stderr
