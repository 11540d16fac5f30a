"""The staged proof of a backup without a snapshot manifest (:class:`recovery.verify.checks.
BackupChecks`): ``integrity_check`` and ``foreign_key_check`` run on the backup file itself while
its copy is staged (and while the extract and the re-import go on), and count for the staged copy
only when that copy holds the very bytes checked and the backup kept them to the checks' end;
otherwise the staged copy is checked itself, or the proof is void."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from recovery.engine.sqlite_io import consistent_copy, sha256_file
from recovery.verify.checks import PROOF_NICE, BackupChecks, StagedProof, _lower_priority


def _backup(path: Path, damage: str | None = None) -> Path:
    """A small backup: parents, children with an index and a foreign key; ``damage``:
    ``"dangling"`` (a child whose parent is missing) or ``"index"`` (an index whose entries no
    longer match its definition: what only ``integrity_check`` finds)."""
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT);"
            "CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id), note TEXT);"
            "CREATE INDEX ix_c_p ON c (p_id);"
            "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 300) "
            "INSERT INTO p SELECT v, 'part ' || v FROM n;"
            "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 600) "
            "INSERT INTO c SELECT v, 1 + v % 300, 'n' || v FROM n;"
        )
        if damage == "dangling":
            conn.execute("INSERT INTO c VALUES (9001, 99999, 'orphan')")
        if damage == "index":
            conn.execute("PRAGMA writable_schema = ON")
            conn.execute(
                "UPDATE sqlite_master SET sql = 'CREATE INDEX ix_c_p ON c (note)' "
                "WHERE name = 'ix_c_p'"
            )
    conn.close()
    return path


def _stage(tmp: Path, then: str | None = None):  # type: ignore[no-untyped-def]
    """A stage function like ``stage_restore``: a consistent copy, then ``then`` run on it."""

    def stage(backup: Path) -> tuple[Path, str]:
        consistent_copy(backup, tmp, "backup")
        if then is not None:
            with sqlite3.connect(tmp) as conn:
                conn.execute(then)
            conn.close()
        return tmp, sha256_file(tmp)

    return stage


@pytest.mark.parametrize(
    ("damage", "integrity_ok", "dangling"),
    [(None, True, False), ("dangling", True, True), ("index", False, False)],
    ids=["sound", "dangling-key", "index-damage"],
)
def test_a_bare_backup_is_checked_in_place_and_counts_for_its_copy(
    tmp_path: Path, damage: str | None, integrity_ok: bool, dangling: bool
) -> None:
    backup = _backup(tmp_path / "b.db", damage)
    proof = StagedProof()
    _, digest = proof.staging(_stage(tmp_path / "staged.db"), backup=backup)(backup)
    assert proof.pending is not None  # the checks ran on the backup, beside the copy
    assert proof.basis == {"integrity_check": "checked", "foreign_key_check": "checked"}
    assert proof.sound is (integrity_ok and not dangling)
    assert proof.pending is None and proof.sha256 == digest
    assert (proof.integrity == ["ok"]) is integrity_ok
    assert bool(proof.foreign_keys) is dangling
    if dangling:
        assert proof.foreign_keys[0]["table"] == "c" and proof.foreign_keys[0]["rowid"] == 9001


def test_a_copy_that_differs_from_the_backup_is_checked_itself(tmp_path: Path) -> None:
    """The backup's checks say nothing of other bytes: a copy with a row the backup lacks (here a
    dangling key) gets both checks of its own, which find it."""
    backup = _backup(tmp_path / "b.db")
    proof = StagedProof()
    stage = _stage(tmp_path / "staged.db", "INSERT INTO c VALUES (9001, 99999, 'orphan')")
    proof.staging(stage, backup=backup)(backup)
    assert proof.pending is None and proof.basis["foreign_key_check"] == "checked"
    assert proof.foreign_keys and not proof.sound


def test_a_backup_written_before_its_checks_end_voids_the_proof(tmp_path: Path) -> None:
    """The checks are of the backup's bytes from before they began to their end: a write into
    the backup after the copy (a dangling key the copy does not hold) leaves them proving
    nothing: the proof is void, so the verification after the re-import runs in full."""
    backup = _backup(tmp_path / "b.db")
    proof = StagedProof()
    proof.staging(_stage(tmp_path / "staged.db"), backup=backup)(backup)
    assert proof.pending is not None
    with sqlite3.connect(backup) as conn:
        conn.execute("INSERT INTO c VALUES (9001, 99999, 'orphan')")
    conn.close()
    assert not proof.sound and proof.sha256 is None


def test_a_backup_someone_has_open_is_not_read_in_place(tmp_path: Path) -> None:
    """A WAL-mode backup with commits in its ``-wal`` (and ``-shm``: a connection holds it) is
    not read as its bytes alone: the copy, which folds the ``-wal`` in, is checked itself and its
    dangling key (committed only in the ``-wal``) is found."""
    backup = _backup(tmp_path / "b.db")
    holder = sqlite3.connect(backup, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode = WAL")
        holder.execute("PRAGMA wal_autocheckpoint = 0")
        holder.execute("INSERT INTO c VALUES (9001, 99999, 'orphan')")
        assert BackupChecks.start(backup) is None
        proof = StagedProof()
        proof.staging(_stage(tmp_path / "staged.db"), backup=backup)(backup)
        assert proof.pending is None and proof.foreign_keys and not proof.sound
    finally:
        holder.close()


def test_a_run_that_stops_early_stops_the_checks(tmp_path: Path) -> None:
    backup = _backup(tmp_path / "b.db")
    proof = StagedProof()
    proof.staging(_stage(tmp_path / "staged.db"), backup=backup)(backup)
    proof.abandon()
    assert proof.pending is None and not proof.sound
    assert not [t for t in threading.enumerate() if t.name.startswith("staged-proof")]


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_only_the_checking_thread_is_niced() -> None:
    seen: list[int] = []

    def work() -> None:
        _lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [PROOF_NICE] and before != PROOF_NICE
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
