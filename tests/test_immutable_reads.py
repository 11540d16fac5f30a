"""Reads of an idle WAL-mode file (nobody has it open, so no ``-shm``) use ``immutable=1``: SQLite
takes no locks and trusts the file not to change. An application that starts meanwhile and
checkpoints into the main file would tear such a read; these tests prove the tool notices it
(``changed_since_immutable_open``), refuses the result (exit 3) and that the snapshot's copy takes
the file again instead of keeping a torn copy."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from recovery.engine.sqlite_io import (
    changed_since_immutable_open,
    consistent_copy,
    forget_immutable_open,
    readonly_uri,
    unchanged_while_read,
)
from recovery.errors import RecoveryError


def idle_wal_db(path: Path, rows: int = 100) -> Path:
    """A WAL-mode file with ``rows`` rows, closed cleanly: no ``-wal``, no ``-shm`` beside it."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE total (n INTEGER)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 200,) for _ in range(rows)])
    conn.execute("INSERT INTO total VALUES (?)", (rows,))
    conn.commit()
    conn.close()
    assert not Path(f"{path}-shm").exists() and not Path(f"{path}-wal").exists()
    return path


def app_connection(path: Path) -> sqlite3.Connection:
    """The application opening the file: it keeps ``-shm`` and writes into ``-wal``."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def app_write(conn: sqlite3.Connection, n: int = 50) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [("y" * 200,) for _ in range(n)])
    conn.execute("UPDATE total SET n = n + ?", (n,))
    conn.execute("COMMIT")


def test_a_checkpoint_after_an_immutable_open_is_seen_and_a_wal_only_write_is_not(tmp_path):
    db = idle_wal_db(tmp_path / "live.db")
    forget_immutable_open(db)
    uri = readonly_uri(db)
    assert "immutable=1" in uri
    reader = sqlite3.connect(uri, uri=True)
    assert reader.execute("SELECT n FROM total").fetchone() == (100,)
    app = app_connection(db)
    app_write(app)  # into -wal only: the immutable reader still reads one older, whole instant
    assert not changed_since_immutable_open(db)
    assert reader.execute("SELECT count(*), (SELECT n FROM total) FROM t").fetchone() == (100, 100)
    app.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # pages land in the main file, under the reader
    assert changed_since_immutable_open(db)
    reader.close()
    app.close()
    forget_immutable_open(db)
    assert not changed_since_immutable_open(db)


def test_a_file_with_an_open_application_is_not_read_immutable(tmp_path):
    db = idle_wal_db(tmp_path / "live.db")
    app = app_connection(db)
    app_write(app)
    forget_immutable_open(db)
    uri = readonly_uri(db)
    assert "immutable=1" not in uri  # SQLite's own locks keep this read consistent
    app.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert not changed_since_immutable_open(db)
    app.close()


def test_a_block_of_reads_torn_by_a_checkpoint_is_refused_with_exit_3(tmp_path):
    db = idle_wal_db(tmp_path / "live.db")
    with pytest.raises(RecoveryError) as err:
        with unchanged_while_read({"live database": db}):
            reader = sqlite3.connect(readonly_uri(db), uri=True)
            reader.execute("SELECT count(*) FROM t").fetchone()
            app = app_connection(db)
            app_write(app)
            app.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            app.close()
            reader.close()
    assert err.value.exit_code == 3
    assert "changed by another process while it was read" in err.value.one_line()
    assert "run the command again" in err.value.one_line()
    # the same block without a writer passes
    with unchanged_while_read({"live database": db}):
        sqlite3.connect(readonly_uri(db), uri=True).close()


def test_snapshot_copy_of_an_idle_file_an_application_starts_writing_into_is_whole(tmp_path):
    """``consistent_copy`` starts on an idle file (an ``immutable=1`` read); as soon as its copy
    file appears the application opens the file and checkpoints commit after commit into it. The
    copy is of one instant (integrity ok, the invariant every commit keeps holds): the torn first
    read is noticed and the file copied again, now under SQLite's locks."""
    import os
    import time

    for i in range(3):
        db = idle_wal_db(tmp_path / f"live{i}.db", rows=80_000)  # about 20 MB: a read of ~0.1 s
        dst = tmp_path / f"copy{i}.db"
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        stop = threading.Event()

        def application(db: Path = db, tmp: Path = tmp, stop: threading.Event = stop) -> None:
            deadline = time.monotonic() + 10
            while not tmp.exists() and time.monotonic() < deadline:
                time.sleep(0.0005)
            app = app_connection(db)
            while not stop.is_set():
                app_write(app, 2_000)
                app.execute("PRAGMA wal_checkpoint(PASSIVE)")
            app.close()

        writer = threading.Thread(target=application)
        writer.start()
        try:
            copy = consistent_copy(db, dst, "live database")
        except RecoveryError as exc:  # kept changing for every try: said, nothing kept
            assert exc.exit_code == 3 and "kept changing" in exc.message
            assert not dst.exists() and not tmp.exists()
            continue
        finally:
            stop.set()
            writer.join()
        c = sqlite3.connect(copy)
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        count, total = c.execute("SELECT count(*), (SELECT n FROM total) FROM t").fetchone()
        assert count == total  # one instant: every commit keeps the two equal
        c.close()


def test_an_extract_torn_by_a_checkpoint_exits_3_and_leaves_no_bundle(world_copy: Path) -> None:
    """A stand-alone ``extract`` of an idle live DB (checkpointed, closed: no -wal, no -shm, so
    it is read ``immutable=1``); as soon as the bundle's ``rows.db`` appears (the live DB is
    attached by then) the application opens the DB and checkpoints commit after commit into it.
    The result is refused (exit 3) and no bundle is left to be re-imported."""
    import time

    from recovery import commands

    live = world_copy / "gestima.db"
    conn = sqlite3.connect(live)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert not Path(f"{live}-shm").exists() and not Path(f"{live}-wal").exists()
    out = world_copy / "bundle"
    stop = threading.Event()

    def application() -> None:
        deadline = time.monotonic() + 30
        while (
            not list(world_copy.glob(".bundle.partial-*/rows.db")) and time.monotonic() < deadline
        ):
            time.sleep(0.0005)
        app = sqlite3.connect(live, isolation_level=None)
        while not stop.is_set():
            app.execute("BEGIN IMMEDIATE")
            app.execute("UPDATE materials SET name = name || 'x' WHERE id = 1")
            app.execute("COMMIT")
            app.execute("PRAGMA wal_checkpoint(PASSIVE)")
            time.sleep(0.001)
        app.close()

    writer = threading.Thread(target=application)
    writer.start()
    try:
        with pytest.raises(RecoveryError) as err:
            commands.extract(backup=next(world_copy.glob("gestima.db.bak.*")), db=live, out_dir=out)
    finally:
        stop.set()
        writer.join()
    assert err.value.exit_code == 3 and "while it was read" in err.value.message
    assert not out.exists() and not list(world_copy.glob(".bundle.partial-*"))
