"""The engine interface (recovery/engine/base.py) on real SQLite files: dispatch by spec, read-only
connections that cannot write, one write transaction that commits or rolls back whole, a
refusal while another process holds the write lock, and the atomic stage/swap."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recovery.engine import open_engine
from recovery.engine.base import Engine
from recovery.engine.sqlite import SQLiteEngine
from recovery.errors import ExitCode, RecoveryError


def _db(path: Path, rows: int = 3) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"v{i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        conn.close()


def test_a_path_is_sqlite_and_an_engine_passes_through(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "a.db")
    assert isinstance(engine, SQLiteEngine) and engine.dialect == "sqlite"
    assert open_engine(engine) is engine


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@localhost/gestima",
        "postgresql+psycopg://u@h:5432/db",
        Path("postgresql://u@localhost/gestima"),  # a URL passed on as a Path keeps its //
    ],
)
def test_a_postgres_url_opens_the_postgres_engine_without_connecting(url: str | Path) -> None:
    from recovery.engine.postgres import PostgresEngine

    engine = open_engine(url)  # no server here: nothing may be reached yet
    assert isinstance(engine, PostgresEngine) and engine.dialect == "postgres"
    assert "gestima" in str(engine.spec) or "db" in str(engine.spec)


@pytest.mark.parametrize("url", ["mysql://u@h/db", "oracle+cx://u@h/db"])
def test_other_database_urls_are_refused_in_one_line(url: str) -> None:
    with pytest.raises(RecoveryError, match="databases are not supported") as err:
        open_engine(url)
    assert err.value.exit_code == ExitCode.REFUSED


def test_another_url_scheme_is_refused_in_one_line() -> None:
    with pytest.raises(RecoveryError, match="mysql:// databases are not supported"):
        open_engine("mysql://u@h/db")


def test_a_missing_database_is_refused_before_anything(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "missing.db")
    with pytest.raises(RecoveryError, match="does not exist"):
        engine.check("live database")
    with pytest.raises(RecoveryError, match="does not exist"):
        engine.connect_write("live database")
    assert not (tmp_path / "missing.db").exists()  # a write open never creates the file


def test_readonly_connection_cannot_write(tmp_path: Path) -> None:
    engine = open_engine(_db(tmp_path / "a.db"))
    with engine.readonly("backup") as conn, pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM t")
    assert _count(tmp_path / "a.db") == 3


def test_write_transaction_commits_whole_or_rolls_back_whole(tmp_path: Path) -> None:
    db = _db(tmp_path / "a.db")
    engine: Engine = open_engine(db)
    conn = engine.connect_write()
    try:
        with pytest.raises(KeyboardInterrupt), engine.write_transaction(conn):
            conn.execute("DELETE FROM t")
            raise KeyboardInterrupt
        assert not conn.in_transaction and _count(db) == 3
        with engine.write_transaction(conn):
            conn.execute("DELETE FROM t WHERE id = 1")
        assert _count(db) == 2
        with engine.write_transaction(
            conn
        ):  # a block that ended the transaction itself is left as it is
            conn.execute("DELETE FROM t")
            conn.execute("ROLLBACK")
        assert _count(db) == 2
    finally:
        conn.close()


def test_write_transaction_refuses_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    db = _db(tmp_path / "a.db")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sqlite3, sys, time\n"
                f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
                "c.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(30)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        engine = open_engine(db)
        assert engine.write_lock_held()
        assert any(h.pid == holder.pid for h in engine.holders())
        conn = engine.connect_write(timeout=0.1)
        try:
            started = time.monotonic()
            with (
                pytest.raises(RecoveryError) as err,
                engine.write_transaction(conn, busy_timeout=0.5),
            ):
                conn.execute("DELETE FROM t")
            assert err.value.exit_code == ExitCode.REFUSED and time.monotonic() - started < 10
        finally:
            conn.close()
    finally:
        holder.kill()
        holder.wait()
    assert _count(db) == 3


def test_stage_then_swap_replaces_the_file_whole_and_keeps_its_mode(tmp_path: Path) -> None:
    live = _db(tmp_path / "live.db", rows=5)
    backup = _db(tmp_path / "backup.db", rows=2)
    live.chmod(0o640)
    engine = open_engine(live)
    before = engine.fingerprint()
    staged = engine.stage_restore(backup)
    assert (
        staged.path.exists() and _count(live) == 5 and engine.fingerprint() == before
    )  # live untouched
    engine.swap_in(staged)
    assert not staged.path.exists() and _count(live) == 2 and live.stat().st_mode & 0o777 == 0o640
    assert engine.fingerprint()["sha256"] == staged.sha256


def test_open_pair_joins_backup_as_old_and_live_as_new(tmp_path: Path) -> None:
    live, backup = (
        open_engine(_db(tmp_path / "live.db", rows=5)),
        open_engine(_db(tmp_path / "b.db", rows=2)),
    )
    pair = live.open_pair(backup)
    try:
        got = pair.execute(
            "SELECT count(*) FROM new.t AS n LEFT JOIN old.t AS o ON o.id = n.id WHERE o.id IS NULL"
        ).fetchone()[0]
    finally:
        pair.close()
    assert got == 3


def test_sqlalchemy_url_reflects_read_only(tmp_path: Path) -> None:
    import sqlalchemy as sa

    db = _db(tmp_path / "a b?#%20.db")
    sa_engine = sa.create_engine(open_engine(db).sqlalchemy_url(readonly=True))
    try:
        assert sa.inspect(sa_engine).get_table_names() == ["t"]
        with sa_engine.connect() as conn, pytest.raises(sa.exc.OperationalError):
            conn.execute(sa.text("DELETE FROM t"))
    finally:
        sa_engine.dispose()
    sa_engine = sa.create_engine(open_engine(db).sqlalchemy_url(readonly=False))
    try:
        with sa_engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM t WHERE id = 1"))
    finally:
        sa_engine.dispose()
    assert _count(db) == 2 and sorted(p.name for p in tmp_path.iterdir()) == [
        db.name
    ]  # no stray file


def test_rendering_in_place_is_checked_under_the_suite() -> None:
    """``sqlbuild.sql`` renders trees in place (no copy); under the suite
    (``RECOVERY_CHECK_RENDER=1``, set by conftest and inherited by the CLI's children) a tree the
    generator rewrites while rendering it fails loudly instead of changing a later statement."""
    import sqlglot

    from recovery.engine import sqlbuild

    assert os.environ.get(sqlbuild.CHECK_RENDER_ENV) == "1"
    rewritten = sqlglot.parse_one("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a", read="postgres")
    with pytest.raises(AssertionError, match="rendering changed the tree"):
        sqlbuild.sql(rewritten)
    plain = sqlbuild.key_join(["id", "name"], "o", "n", null_safe=True)
    assert sqlbuild.sql(plain) == plain.sql(dialect="sqlite") == sqlbuild.sql(plain)
