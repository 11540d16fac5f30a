"""Attacks on the snapshot manifest's vouch for the staged backup (:func:`snapshot_vouch`) and on the
digest memo behind it (``sqlite_io.same_content_digest``, ``sha256_file``, ``promise_sha256``), each
with real files: sidecars SQLite reads with a file, manifests that are not files or not objects, a
manifest of another SQLite library, files written a moment ago, hard links, promises that fail or
are asked for by their own thread."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from recovery.capture.manifest import read_manifest, release_tag
from recovery.capture.snapshot import manifest_path_for, snapshot
from recovery.engine import open_engine, sqlite_io
from recovery.engine.sqlite_io import promise_sha256, same_content_digest, sha256_file
from recovery.errors import RecoveryError
from recovery.restore.swap import stage_restore
from recovery.verify.checks import StagedProof, snapshot_vouch
from tests.test_snapshot_vouch import _hashes

DEPLOY = datetime(2026, 11, 20, 14, 0, 0)
VOUCHED = {"integrity_check": "snapshot manifest", "foreign_key_check": "snapshot manifest"}
CHECKED = {"integrity_check": "checked", "foreign_key_check": "checked"}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _db(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT);"
            "CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id), note TEXT);"
            "INSERT INTO p VALUES (1, 'a'), (2, 'b'); INSERT INTO c VALUES (1, 1, 'x');"
        )
    conn.close()
    return path


def _snapshotted(tmp_path: Path) -> Path:
    return snapshot(_db(tmp_path / "src" / "app.db"), tmp_path / "backups", now=DEPLOY).backup


def _live(tmp_path: Path, wal: bool) -> Path:
    live = _db(tmp_path / "live" / "app.db")
    if wal:
        conn = sqlite3.connect(live)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    return live


def _rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM c ORDER BY id").fetchall()
    finally:
        conn.close()


def _stale_wal(at: Path, like: Path) -> None:
    """A ``-wal`` with one committed frame (a row 'stale', its parent missing) under ``at``'s name,
    as a writer killed before its checkpoint leaves it; ``at`` itself is removed."""
    shutil.copyfile(like, at)
    writer, holder = sqlite3.connect(at), sqlite3.connect(at)
    writer.execute("PRAGMA journal_mode=WAL")
    holder.execute("SELECT 1 FROM p").fetchall()  # a second connection: no checkpoint on close
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO c VALUES (2, 999, 'stale')")
    writer.commit()
    frames = Path(f"{at}-wal").read_bytes()
    writer.close()
    holder.close()
    for side in ("", "-wal", "-shm"):
        Path(f"{at}{side}").unlink(missing_ok=True)
    Path(f"{at}-wal").write_bytes(frames)


def _hot_journal(at: Path, like: Path) -> None:
    """A hot ``-journal`` under ``at``'s name whose pages hold a row 'stale' (a writer killed
    mid-transaction); ``at`` itself is removed."""
    shutil.copyfile(like, at)
    conn = sqlite3.connect(at, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("INSERT INTO c VALUES (2, 999, 'stale')")
    conn.execute("PRAGMA cache_size=1")
    conn.execute("BEGIN")  # the journal keeps the pages as they were, with the row
    conn.execute("DELETE FROM c WHERE id = 2")
    conn.execute("UPDATE p SET name = 'spilled'")  # a second page: the cache spills, nRec set
    journal = Path(f"{at}-journal").read_bytes()
    conn.execute("ROLLBACK")
    conn.close()
    at.unlink()
    Path(f"{at}-journal").write_bytes(journal)


# --- sidecars --------------------------------------------------------------------------------------


@pytest.mark.parametrize("live_wal", [False, True], ids=["live-delete", "live-wal"])
@pytest.mark.parametrize("leftover", [_stale_wal, _hot_journal], ids=["wal", "journal"])
def test_a_sidecar_left_under_the_staging_name_never_meets_the_staged_copy(
    tmp_path: Path, live_wal: bool, leftover: object
) -> None:
    """A killed earlier staging (or a writer into it) leaves frames or a hot journal under the
    staged file's name; SQLite would read them with the fresh copy (the WAL switch even
    checkpoints them into it): the staged restore would hold a row the backup never had."""
    backup = _snapshotted(tmp_path)
    live = _live(tmp_path, live_wal)
    leftover(open_engine(live).staging_path("restore"), backup)  # type: ignore[operator]
    proof = StagedProof()
    staged, _ = proof.staging(stage_restore, backup=backup)(backup, live)
    assert _rows(staged) == [(1, 1, "x")]
    assert same_content_digest(backup, staged) == _sha(backup)
    assert proof.basis == VOUCHED and proof.sound


def test_a_wal_with_frames_beside_the_staged_copy_is_not_vouched_for(tmp_path: Path) -> None:
    """The main file holds the manifest's bytes, but SQLite reads the file with its -wal."""
    backup = _snapshotted(tmp_path)
    staged = tmp_path / "staged.db"
    _stale_wal(staged, backup)
    shutil.copyfile(backup, staged)
    assert _rows(staged) == [(1, 1, "x"), (2, 999, "stale")]
    assert same_content_digest(backup, staged) == _sha(backup)  # the bytes alone are the same
    assert snapshot_vouch(backup, staged) is None


def test_a_wal_beside_the_backup_is_copied_with_it_and_checked(tmp_path: Path) -> None:
    """Frames someone left beside the backup are in the staged copy: not the manifest's bytes."""
    backup = _snapshotted(tmp_path)
    frames = tmp_path / "frames.db"
    _stale_wal(frames, backup)
    shutil.copyfile(f"{frames}-wal", f"{backup}-wal")
    proof = StagedProof()
    staged, _ = proof.staging(stage_restore, backup=backup)(backup, _live(tmp_path, True))
    assert _rows(staged) == [(1, 1, "x"), (2, 999, "stale")]
    assert proof.basis == CHECKED
    assert proof.foreign_keys == [{"table": "c", "rowid": 2, "parent": "p", "fk": 0}]


# --- the manifest ----------------------------------------------------------------------------------


def _proof(backup: Path, tmp_path: Path) -> StagedProof:
    proof = StagedProof()
    proof.staging(stage_restore, backup=backup)(backup, _live(tmp_path, True))
    return proof


@pytest.mark.parametrize("version", ["3.31.1", None], ids=["another", "unrecorded"])
def test_a_manifest_of_another_sqlite_library_does_not_vouch(
    tmp_path: Path, version: str | None
) -> None:
    """Another SQLite version's integrity_check checks more or less than this one's."""
    backup = _snapshotted(tmp_path)
    m = manifest_path_for(backup)
    data = json.loads(m.read_text())
    assert data["sqlite_version"] == sqlite3.sqlite_version
    data["sqlite_version"] = version
    m.write_text(json.dumps(data))
    assert _proof(backup, tmp_path).basis == CHECKED


def _fifo(m: Path) -> None:
    m.unlink()
    os.mkfifo(m)


def _dev_zero(m: Path) -> None:
    m.unlink()
    m.symlink_to("/dev/zero")


@pytest.mark.parametrize("make", [_fifo, _dev_zero], ids=["fifo", "symlink-to-dev-zero"])
def test_a_manifest_that_is_no_regular_file_is_never_opened(tmp_path: Path, make: object) -> None:
    """Opening a FIFO blocks until a writer comes (the report step hung after the swap), and
    /dev/zero never ends: neither is read; the checks run."""
    backup = _snapshotted(tmp_path)
    m = manifest_path_for(backup)
    make(m)  # type: ignore[operator]
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(release_tag(backup)), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # release the blocked open before failing
        os.close(os.open(m, os.O_WRONLY | os.O_NONBLOCK))
    assert got == [None]
    assert read_manifest(backup) is None
    assert _proof(backup, tmp_path).basis == CHECKED


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "[1, 2]", '"ok"'])
def test_a_manifest_nested_too_deep_or_not_an_object_is_refused(tmp_path: Path, text: str) -> None:
    """One clear line, exit 2 (was an internal error: RecursionError, AttributeError)."""
    backup = _snapshotted(tmp_path)
    manifest_path_for(backup).write_text(text)
    with pytest.raises(RecoveryError) as err:
        read_manifest(backup)
    assert err.value.exit_code == 2 and "manifest" in err.value.message
    assert release_tag(backup) is None
    assert snapshot_vouch(backup, backup) is None


# --- the digest memo and the promise ---------------------------------------------------------------


def test_a_file_written_a_moment_ago_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within a timestamp tick a rewrite keeps size, mtime and ctime: a file changed less than
    SETTLED_NS ago is read again; a settled one is taken from the memo."""
    backup = _db(tmp_path / "b.db")
    copy = tmp_path / "c.db"
    shutil.copyfile(backup, copy)
    hashed = _hashes(monkeypatch)
    assert same_content_digest(backup, copy) == _sha(backup)
    assert sha256_file(backup) == _sha(backup) and hashed == [str(backup)]
    monkeypatch.setattr(sqlite_io, "SETTLED_NS", 0)
    assert same_content_digest(backup, copy) == _sha(backup)
    assert sha256_file(backup) == _sha(backup) and hashed == [str(backup)]


def test_a_remembered_digest_survives_no_write_through_a_hard_link_or_a_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_io, "SETTLED_NS", 0)
    backup = _db(tmp_path / "b.db")
    copy, link = tmp_path / "c.db", tmp_path / "link.db"
    shutil.copyfile(backup, copy)
    os.link(backup, link)
    assert same_content_digest(backup, copy) == _sha(backup)
    with sqlite3.connect(link) as conn:  # the same inode, written under its other name
        conn.execute("UPDATE p SET name = 'through the link' WHERE id = 1")
    conn.close()
    assert sha256_file(backup) == sha256_file(link) == _sha(backup)
    assert same_content_digest(backup, backup) == _sha(backup)
    other = _db(tmp_path / "other" / "b.db")
    with sqlite3.connect(other) as conn:
        conn.execute("UPDATE p SET name = 'another file' WHERE id = 2")
    conn.close()
    os.replace(other, backup)  # another file takes the name
    assert sha256_file(backup) == _sha(backup) != _sha(link)


def test_the_promising_thread_itself_does_not_wait_for_its_promise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_io, "PROMISE_WAIT", 5.0)
    backup = _db(tmp_path / "b.db")
    with promise_sha256(backup):
        start = time.monotonic()
        assert sha256_file(backup) == _sha(backup)
        assert time.monotonic() - start < 1.0


def test_a_promise_whose_block_fails_releases_its_waiters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_io, "PROMISE_WAIT", 5.0)
    backup = _db(tmp_path / "b.db")
    asked, got = threading.Event(), []
    waiter = threading.Thread(target=lambda: (asked.wait(), got.append(sha256_file(backup))))
    start = time.monotonic()
    with pytest.raises(OSError), promise_sha256(backup):
        waiter.start()
        asked.set()
        time.sleep(0.05)
        raise OSError("the staging failed")
    waiter.join(5)
    assert got == [_sha(backup)] and time.monotonic() - start < 1.0


def test_a_key_to_a_column_without_a_unique_index_is_snapshotted_not_vouched(
    tmp_path: Path,
) -> None:
    """foreign_key_check refuses such a schema ("foreign key mismatch"); the app works (SQLite
    checks the key only when it enforces it), so the snapshot is kept, the manifest says why the
    keys were not checked, and it vouches for nothing."""
    src = tmp_path / "src" / "app.db"
    src.parent.mkdir()
    with sqlite3.connect(src) as conn:
        conn.executescript(
            "CREATE TABLE p (id INTEGER PRIMARY KEY, code TEXT);"
            "CREATE TABLE c (id INTEGER PRIMARY KEY, code TEXT REFERENCES p(code));"
            "INSERT INTO p VALUES (1, 'a'); INSERT INTO c VALUES (1, 'a');"
        )
    conn.close()
    snap = snapshot(src, tmp_path / "backups", now=DEPLOY)
    assert snap.manifest["integrity_check"] == "ok"
    assert "foreign key mismatch" in snap.manifest["foreign_key_check"]
    staged = tmp_path / "staged.db"
    shutil.copyfile(snap.backup, staged)
    assert snapshot_vouch(snap.backup, staged) is None
