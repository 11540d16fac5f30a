"""A backup taken by ``recovery snapshot`` carries the checks that snapshot ran (its manifest's
``integrity_check`` and ``foreign_key_check``, bound to the file's sha256). The rollback's staged
copy takes them from the manifest instead of running them again when it holds exactly those bytes
(:func:`recovery.verify.checks.snapshot_vouch`); any other byte, a manifest that recorded a
failure or names another sha256, or none at all, and the checks run on the staged copy."""

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
from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.capture.snapshot import manifest_path_for, snapshot
from recovery.engine import sqlite_io
from recovery.engine.sqlite_io import (
    HEADER_WRITE_STAMPS,
    promise_sha256,
    same_content_digest,
    sha256_file,
)
from recovery.bundle.store import open_bundle
from recovery.pipeline import rollback
from recovery.report.runfiles import read_outcome_file
from recovery.sample import app_dir
from recovery.verify.checks import StagedProof, snapshot_vouch, verify_file

DEPLOY = datetime(2026, 11, 20, 14, 0, 0)
INI = app_dir() / "alembic.ini"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _small_db(path: Path, dangling: bool = False) -> Path:
    """A few dozen pages: two tables, an index, a foreign key (one dangling row if asked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT);"
            "CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id), note TEXT);"
            "CREATE INDEX ix_c_p ON c (p_id);"
            "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 400) "
            "INSERT INTO p SELECT v, 'part ' || v FROM n;"
            "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 800) "
            "INSERT INTO c SELECT v, 1 + v % 400, hex(randomblob(40)) FROM n;"
        )
        if dangling:
            conn.execute("INSERT INTO c VALUES (9001, 99999, 'orphan')")
    conn.close()
    return path


def _snapshotted(tmp_path: Path, dangling: bool = False) -> Path:
    """A backup with its manifest, as ``recovery snapshot`` writes them."""
    src = _small_db(tmp_path / "src" / "app.db", dangling)
    return snapshot(src, tmp_path / "backups", now=DEPLOY).backup


def _staged_copy(backup: Path, dest: Path) -> Path:
    """What the rollback stages: SQLite's backup API copy, switched to WAL like the live DB."""
    src, out = sqlite3.connect(backup), sqlite3.connect(dest)
    src.backup(out)
    src.close()
    out.execute("PRAGMA journal_mode = WAL")
    out.close()
    return dest


def _hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files (real paths) sha256_file reads whole from now on."""
    hashed: list[str] = []
    whole_file_digest = hashlib.file_digest

    def recording(fh, digest):  # type: ignore[no-untyped-def]
        hashed.append(os.path.realpath(fh.name))
        return whole_file_digest(fh, digest)

    monkeypatch.setattr(hashlib, "file_digest", recording)
    return hashed


# --- same_content_digest ------------------------------------------------------------------------


def test_a_backup_api_copy_in_wal_mode_has_the_same_content(tmp_path: Path) -> None:
    backup = _small_db(tmp_path / "b.db")
    staged = _staged_copy(backup, tmp_path / "s.db")
    assert _sha(staged) != _sha(backup)  # the header's write stamps differ ...
    assert same_content_digest(backup, staged) == _sha(backup)  # ... and nothing else
    assert sha256_file(backup) == _sha(backup)  # the remembered digest is the file's


STAMPED = {i for lo, hi in HEADER_WRITE_STAMPS for i in range(lo, hi)}


@settings(max_examples=40, deadline=None)
@given(offset=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_byte_outside_the_write_stamps_differs(
    tmp_path_factory: pytest.TempPathFactory, offset: int, flip: int
) -> None:
    folder = tmp_path_factory.mktemp("flip")
    backup = _small_db(folder / "b.db")
    staged = folder / "s.db"
    shutil.copyfile(backup, staged)
    data = bytearray(staged.read_bytes())
    offset %= len(data)
    data[offset] ^= flip
    staged.write_bytes(bytes(data))
    got = same_content_digest(backup, staged)
    assert got == (_sha(backup) if offset in STAMPED else None)


def test_a_shorter_or_longer_copy_differs(tmp_path: Path) -> None:
    backup = _small_db(tmp_path / "b.db")
    staged = tmp_path / "s.db"
    data = backup.read_bytes()
    staged.write_bytes(data[:-4096])
    assert same_content_digest(backup, staged) is None
    staged.write_bytes(data + bytes(4096))
    assert same_content_digest(backup, staged) is None


def test_a_remembered_digest_is_forgotten_when_the_file_is_written(tmp_path: Path) -> None:
    backup = _small_db(tmp_path / "b.db")
    staged = _staged_copy(backup, tmp_path / "s.db")
    assert same_content_digest(backup, staged) == _sha(backup)
    with sqlite3.connect(backup) as conn:
        conn.execute("UPDATE p SET name = 'changed' WHERE id = 1")
    conn.close()
    assert sha256_file(backup) == _sha(backup)  # the new bytes, not the remembered digest


def test_a_promised_digest_is_waited_for_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = _small_db(tmp_path / "b.db")
    staged = _staged_copy(backup, tmp_path / "s.db")
    hashed = _hashes(monkeypatch)
    monkeypatch.setattr(sqlite_io, "SETTLED_NS", 0)  # written a moment ago: count it as settled
    started, got = threading.Event(), []
    waiter = threading.Thread(target=lambda: (started.wait(), got.append(sha256_file(backup))))
    with promise_sha256(backup):
        waiter.start()
        started.set()
        time.sleep(0.2)  # the waiter is asking now, before the digest below exists
        assert same_content_digest(backup, staged) == _sha(backup)
    waiter.join(10)
    assert got == [_sha(backup)] and hashed == []
    with sqlite3.connect(backup) as conn:  # new bytes: the remembered digest no longer applies
        conn.execute("UPDATE p SET name = 'changed' WHERE id = 1")
    conn.close()
    with promise_sha256(backup):  # a promise ended with nothing remembered: read after all
        pass
    assert sha256_file(backup) == _sha(backup) and hashed == [os.path.realpath(backup)]


# --- snapshot_vouch and StagedProof.staging ------------------------------------------------------


def test_snapshot_records_the_foreign_key_check(tmp_path: Path) -> None:
    clean = json.loads(manifest_path_for(_snapshotted(tmp_path / "a")).read_text())
    dirty = json.loads(manifest_path_for(_snapshotted(tmp_path / "b", dangling=True)).read_text())
    assert clean["foreign_key_check"] == []
    assert dirty["foreign_key_check"] == [{"table": "c", "rowid": 9001, "parent": "p", "fk": 0}]


def _proof(backup: Path, tmp_path: Path) -> StagedProof:
    proof = StagedProof()
    staged = tmp_path / "staged.db"
    proof.staging(lambda b: (_staged_copy(b, staged), _sha(staged)), backup=backup)(backup)
    return proof


def test_the_manifest_vouches_for_both_checks(tmp_path: Path) -> None:
    backup = _snapshotted(tmp_path)
    proof = _proof(backup, tmp_path)
    assert proof.sound
    assert proof.basis == {
        "integrity_check": "snapshot manifest",
        "foreign_key_check": "snapshot manifest",
    }


def test_a_recorded_foreign_key_problem_is_carried_not_hidden(tmp_path: Path) -> None:
    backup = _snapshotted(tmp_path, dangling=True)
    proof = _proof(backup, tmp_path)
    assert proof.foreign_keys == [{"table": "c", "rowid": 9001, "parent": "p", "fk": 0}]
    assert not proof.sound  # the rollback then verifies in full


def test_an_older_manifest_without_the_foreign_key_check_gets_it_run(tmp_path: Path) -> None:
    backup = _snapshotted(tmp_path, dangling=True)
    m = manifest_path_for(backup)
    data = json.loads(m.read_text())
    del data["foreign_key_check"]
    m.write_text(json.dumps(data))
    proof = _proof(backup, tmp_path)
    assert proof.basis == {"integrity_check": "snapshot manifest", "foreign_key_check": "checked"}
    assert proof.foreign_keys == [{"table": "c", "rowid": 9001, "parent": "p", "fk": 0}]


@pytest.mark.parametrize(
    "edit",
    [
        "bytes changed after the snapshot",
        "manifest names another sha256",
        "manifest recorded a failed integrity_check",
        "manifest of another format",
        "manifest is not JSON",
        "manifest's foreign_key_check is not a list of problems",
        "no manifest",
    ],
)
def test_anything_else_and_the_checks_run(tmp_path: Path, edit: str) -> None:
    backup = _snapshotted(tmp_path)
    m = manifest_path_for(backup)
    data = json.loads(m.read_text())
    if edit == "bytes changed after the snapshot":
        with sqlite3.connect(backup) as conn:
            conn.execute("UPDATE p SET name = 'edited' WHERE id = 7")
        conn.close()
    elif edit == "manifest names another sha256":
        data["sha256"] = "0" * 64
    elif edit == "manifest recorded a failed integrity_check":
        data["integrity_check"] = ["row 1 missing from index ix_c_p"]
    elif edit == "manifest of another format":
        data["format"] = "something-else/9"
    elif edit == "manifest's foreign_key_check is not a list of problems":
        data["foreign_key_check"] = "ok"
    if edit == "manifest is not JSON":
        m.write_text("{not json")
    elif edit == "no manifest":
        m.unlink()
    else:
        m.write_text(json.dumps(data))
    staged = _staged_copy(backup, tmp_path / "s.db")
    assert snapshot_vouch(backup, staged) is None
    proof = _proof(backup, tmp_path)
    assert proof.basis == {"integrity_check": "checked", "foreign_key_check": "checked"}
    assert proof.sound


# --- the rollback ---------------------------------------------------------------------------------


def _world_with_snapshot(world: Path, dest: Path) -> Path:
    """The shared world, its backup replaced by ``recovery snapshot``'s copy of it (taken at the
    deploy time) with the manifest beside it."""
    shutil.copytree(world, dest)
    backup = next(dest.glob("gestima.db.bak.*"))
    src = dest / "pre-deploy" / "gestima.db"
    src.parent.mkdir()
    shutil.copyfile(backup, src)
    snap = snapshot(src, dest / "pre-deploy" / "out", now=DEPLOY)
    live = dest / "gestima.db"
    stamp = (live.stat().st_atime_ns, live.stat().st_mtime_ns)
    shutil.copyfile(snap.backup, backup)
    shutil.copyfile(snap.manifest_path, manifest_path_for(backup))
    os.utime(backup, ns=(stamp[0], stamp[1] - 10**9))  # taken before the live DB's last write
    return dest


def test_a_rollback_from_a_snapshot_rests_on_its_manifest_and_verifies_the_same(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bounded verification on the manifest's proof says what the full checks of the
    rolled-back file say (test_verify_bounded: the same with the staged copy checked). The
    backup is read for its digest once: the extract takes the one the proof remembered."""
    w = _world_with_snapshot(world, tmp_path / "snap")
    backup = next(w.glob("gestima.db.bak.*[0-9]"))
    hashed = _hashes(monkeypatch)
    monkeypatch.setattr(sqlite_io, "SETTLED_NS", 0)  # copied a moment ago: count it as settled
    rollback(w / "gestima.db", backup, w / "run", alembic_ini=INI)
    assert os.path.realpath(backup) not in hashed
    bundle_manifest = json.loads((w / "run" / "bundle" / "manifest.json").read_text())
    assert bundle_manifest["sources"]["backup"]["sha256"] == _sha(backup)
    journal = json.loads((w / "run" / "journal.json").read_text())
    assert journal["steps"]["restore"]["proof"] == {
        "integrity_check": "snapshot manifest",
        "foreign_key_check": "snapshot manifest",
    }
    recorded = json.loads((w / "run" / "outcome.json").read_text())["verification"]
    assert recorded["checked"] == "bounded" and recorded["ok"] is True
    outcome = read_outcome_file(w / "run" / "outcome.json")
    bundle = open_bundle(w / "run" / "bundle", verify=False)
    full = verify_file(w / "gestima.db", outcome, bundle.old.alembic_revision)
    assert {k: v for k, v in recorded.items() if k != "checked"} == full
