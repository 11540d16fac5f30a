"""The rollback's safety copy under the held write window (``WriteWindow.safety_copy`` →
``sqlite_io.held_copy``): a kernel copy of the live file and of the WAL-index's WAL prefix, folded
by SQLite. It must hold exactly the rows SQLite's online backup holds, whatever another process
does to the files meanwhile, and never leave a half copy where the safety copy belongs.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery.engine import sqlite_io
from recovery.engine.sqlite_io import consistent_copy, sidecars, wal_index_header
from recovery.errors import RecoveryError
from recovery.restore.livewindow import WriteWindow


def _rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows, sorted (a logical picture of the database)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        names = [
            r[0]
            for r in c.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        return {n: sorted(c.execute(f'SELECT * FROM "{n}"').fetchall()) for n in names}


def _self_contained(db: Path) -> None:
    assert not any(p.exists() for p in sidecars(db))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _wal_db(path: Path, rows: int = 300) -> None:
    """A WAL-mode DB whose newest commits are still in ``-wal`` (a keeper connection in a child
    process never checkpoints, and exits without its close-time checkpoint)."""
    script = textwrap.dedent(
        f"""
        import os, sqlite3
        c = sqlite3.connect({str(path)!r}, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA wal_autocheckpoint=0")
        c.execute("PRAGMA synchronous=OFF")  # a fixture: no crash to survive, and fast
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
        c.execute("CREATE INDEX t_v ON t(v)")
        for i in range({rows}):
            c.execute("INSERT INTO t (v, b) VALUES (?, randomblob(300))", (f"row {{i}}",))
        c.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the first half into the main file
        for i in range(3):
            c.execute("UPDATE t SET v = v || '!' , b = randomblob(310) WHERE id % 3 = ?", (i,))
        c.execute("DELETE FROM t WHERE id % 7 = 0")
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    wal, _ = sidecars(path)
    assert wal.stat().st_size > 0


def _backup_copy(db: Path, dst: Path) -> Path:
    return consistent_copy(db, dst, "live database")


def _held_copy_checked(db: Path, out: Path, source: Path | None = None) -> Path:
    """The safety copy of ``db`` made under a write window, asserted to be a held copy,
    self-contained, and row for row SQLite's online backup of ``source`` (``db`` unless given)
    taken under the same lock."""
    window = WriteWindow(db)
    try:
        copy, how = window.safety_copy(out / "safety" / "live.db")
        reference = _backup_copy(source or db, out / "ref" / "live.db")
    finally:
        window.release()
    assert how == "held-copy"
    _self_contained(copy)
    assert _rows(copy) == _rows(reference)
    return copy


def test_held_copy_equals_the_backup_api_and_is_self_contained(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    _wal_db(db)
    copy = _held_copy_checked(db, tmp_path)
    assert sorted(p.name for p in copy.parent.iterdir()) == ["live.db"]


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    commits=st.lists(
        st.tuples(
            st.sampled_from(["insert", "update", "delete", "checkpoint"]),
            st.integers(1, 40),
        ),
        min_size=1,
        max_size=12,
    ),
    page_size=st.sampled_from([512, 4096]),
)
def test_held_copy_matches_backup_api_for_any_wal_history(
    tmp_path_factory: pytest.TempPathFactory, commits: list[tuple[str, int]], page_size: int
) -> None:
    """Whatever mix of commits and checkpoints left the WAL as it is (frames backfilled or not,
    a restarted WAL with an older generation's frames after its tail), the held copy holds the
    same rows as SQLite's online backup made under the same lock."""
    d = tmp_path_factory.mktemp("h")
    db = d / "live.db"
    c = sqlite3.connect(str(db), isolation_level=None)
    c.execute(f"PRAGMA page_size={page_size}")
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("PRAGMA synchronous=OFF")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT, b BLOB)")
    for kind, n in commits:
        if kind == "insert":
            c.executemany(
                "INSERT INTO t (v, b) VALUES (?, randomblob(200))", [(str(i),) for i in range(n)]
            )
        elif kind == "update":
            c.execute("UPDATE t SET v = v || 'u', b = randomblob(?) WHERE id % ? = 0", (150 + n, n))
        elif kind == "delete":
            c.execute("DELETE FROM t WHERE id % ? = 1", (n + 1,))
        else:
            c.execute("PRAGMA wal_checkpoint(PASSIVE)")
    try:
        _held_copy_checked(db, d)
    finally:
        c.close()


def test_stale_frames_of_an_earlier_wal_generation_are_not_copied(tmp_path: Path) -> None:
    """A restarted WAL starts again at frame 1 with new salts; the older, longer generation's
    frames stay in the file after the new tail. Only the WAL-index's prefix is copied."""
    db = tmp_path / "live.db"
    c = sqlite3.connect(str(db), isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("PRAGMA synchronous=OFF")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    c.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 500,) for _ in range(400)])
    assert c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    c.execute("INSERT INTO t (v) VALUES ('after the restart')")  # restarts the WAL at frame 1
    wal, shm = sidecars(db)
    shm_fd = os.open(shm, os.O_RDONLY)  # closed after every connection: a close drops their locks
    index = wal_index_header(shm_fd)
    assert index is not None and 0 < index.wal_bytes() < wal.stat().st_size  # stale frames follow
    try:
        copy = _held_copy_checked(db, tmp_path)
    finally:
        c.close()
    os.close(shm_fd)
    assert _rows(copy)["t"][-1] == (401, "after the restart")


_HAMMER = textwrap.dedent(
    """
    import sqlite3, sys, time
    db, stop = sys.argv[1], time.monotonic() + float(sys.argv[2])
    c = sqlite3.connect(db, isolation_level=None, timeout=0)
    moved = wrote = 0
    while time.monotonic() < stop:
        for mode in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            try:
                moved += c.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[2] > 0
            except sqlite3.OperationalError:
                pass
        try:
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO t (v) VALUES ('late')")
            c.execute("COMMIT")
            wrote += 1
        except sqlite3.OperationalError:
            if c.in_transaction:
                c.execute("ROLLBACK")
    print(moved, wrote)
    """
)


def test_checkpoints_and_writes_of_another_process_meanwhile_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process runs every checkpoint mode and tries to commit while the main file is
    copied; it is paused between the two halves of the copy so its PASSIVE checkpoint writes
    WAL pages into pages already copied and pages not yet copied. The copy still holds the
    locked snapshot's rows, and no commit got through."""
    db = tmp_path / "live.db"
    _wal_db(db, rows=600)
    main_before = db.read_bytes()
    window = WriteWindow(db)
    results: list[str] = []
    real_send = sqlite_io._send_all

    def torn_send(src_fd: int, dst_fd: int, length: int | None) -> int:
        if length is not None:  # the WAL prefix
            return real_send(src_fd, dst_fd, length)
        half = os.fstat(src_fd).st_size // 2
        first = real_send(src_fd, dst_fd, half)
        proc = subprocess.run(
            [sys.executable, "-c", _HAMMER, str(db), "0.3"], capture_output=True, text=True
        )
        results.append(proc.stdout.strip())
        rest = os.sendfile(dst_fd, src_fd, first, 1 << 30)
        while rest:
            first += rest
            rest = os.sendfile(dst_fd, src_fd, first, 1 << 30)
        return first

    try:
        monkeypatch.setattr(sqlite_io, "_send_all", torn_send)
        copy, how = window.safety_copy(tmp_path / "safety" / "live.db")
        monkeypatch.undo()
        reference = _backup_copy(db, tmp_path / "ref" / "live.db")
    finally:
        window.release()
    moved, wrote = map(int, results[0].split())
    assert moved > 0, "the other process's checkpoint moved no page: the test would prove nothing"
    assert db.read_bytes() != main_before  # its checkpoint wrote into the main file under the copy
    assert wrote == 0
    assert how == "held-copy"
    _self_contained(copy)
    assert _rows(copy) == _rows(reference)


def test_rollback_journal_mode_and_a_fully_checkpointed_wal(tmp_path: Path) -> None:
    for mode in ("DELETE", "WAL"):
        db = tmp_path / mode / "live.db"
        db.parent.mkdir()
        c = sqlite3.connect(str(db), isolation_level=None)
        c.execute(f"PRAGMA journal_mode={mode}")
        c.execute("PRAGMA synchronous=OFF")
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        c.executemany("INSERT INTO t (v) VALUES (?)", [(str(i) * 50,) for i in range(300)])
        if mode == "WAL":
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        window = WriteWindow(db)
        try:
            copy, how = window.safety_copy(db.parent / "safety" / "live.db")
        finally:
            window.release()
            c.close()
        assert how == "held-copy"
        _self_contained(copy)
        assert _rows(copy) == _rows(db)


def test_a_journal_with_content_sends_the_copy_to_the_backup_api(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    c = sqlite3.connect(str(db), isolation_level=None)
    c.execute("PRAGMA journal_mode=PERSIST")  # leaves a -journal whose header is zeroed
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("INSERT INTO t (v) VALUES ('a')")
    c.close()
    assert (tmp_path / "live.db-journal").stat().st_size > 0
    window = WriteWindow(db)
    try:
        copy, how = window.safety_copy(tmp_path / "safety" / "live.db")
    finally:
        window.release()
    assert how == "backup-api"
    assert _rows(copy) == {"t": [(1, "a")]}


def test_symlinked_path_copies_the_real_file_and_its_wal(tmp_path: Path) -> None:
    real = tmp_path / "data" / "live.db"
    real.parent.mkdir()
    _wal_db(real)
    link = tmp_path / "link.db"
    link.symlink_to(real)
    _held_copy_checked(link, tmp_path, source=real)


def test_full_disk_leaves_no_copy_and_no_temporary_file(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    _wal_db(db, rows=1200)
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({proc.stderr.strip()}); needs root and mount rights"
        )
    window = WriteWindow(db)
    try:
        with pytest.raises(RecoveryError, match="could not copy"):
            window.safety_copy(disk / "live.db")
        assert list(disk.iterdir()) == []
    finally:
        window.release()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


_KILLED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from recovery.engine import sqlite_io
    from recovery.restore.livewindow import WriteWindow
    real = sqlite_io._send_all
    def slow(src, dst, length):
        n = real(src, dst, length)
        print("copying", flush=True)
        time.sleep(30)
        return n
    sqlite_io._send_all = slow
    w = WriteWindow(Path(sys.argv[1]))
    w.safety_copy(Path(sys.argv[2]))
    """
)


def test_killed_during_the_copy_leaves_only_temporary_files_the_next_run_removes(
    tmp_path: Path,
) -> None:
    from recovery.pipeline import _clean_leftovers

    db = tmp_path / "live.db"
    _wal_db(db)
    run = tmp_path / "run"
    dst = run / "safety" / "live.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(db), str(dst)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "copying"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not dst.exists()
    left = sorted(p.name for p in dst.parent.iterdir())
    assert left and all(n.startswith(f".live.db.tmp-{child.pid}") for n in left)
    time.sleep(0.01)
    _clean_leftovers(run, db)
    assert list(dst.parent.iterdir()) == []


def test_indexing_an_idle_wal_changes_no_byte_and_reads_in_place(tmp_path: Path) -> None:
    """The rollback's probe first gives an idle WAL file (commits in ``-wal``, no ``-shm``) its
    index, so its read-only opens read the file in place instead of copying database and WAL."""
    from recovery.engine.sqlite_io import index_idle_wal, readonly_uri

    db = tmp_path / "live.db"
    _wal_db(db)
    wal, shm = sidecars(db)
    shm.unlink()
    before = {p: p.read_bytes() for p in (db, wal)}
    keeper = index_idle_wal(db)
    assert keeper is not None
    assert shm.exists() and {p: p.read_bytes() for p in (db, wal)} == before
    assert readonly_uri(db) == sqlite_io.file_uri(db, mode="ro")  # the file itself, not a copy
    c = sqlite3.connect(readonly_uri(db), uri=True)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 300 - 300 // 7
    c.close()
    again = index_idle_wal(db)  # -shm there, nobody holding it: kept built as well
    assert again is not None
    again.close()
    keeper.close()
    assert {p: p.read_bytes() for p in (db, wal)} == before
