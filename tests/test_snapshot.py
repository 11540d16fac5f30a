"""`recovery snapshot`: WAL-safe copies, the manifest, and deploy_time_of (real SQLite files)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from recovery.cli import main
from recovery.errors import RecoveryError
from recovery.capture.snapshot import deploy_time_of, manifest_path_for, read_manifest, snapshot

NOW = datetime(2026, 11, 20, 14, 0, 0)


def sha(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


def make_db(path: Path, wal: bool = False, parts: int = 5) -> None:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    conn.execute("INSERT INTO alembic_version VALUES ('abc123def')")
    conn.execute("CREATE TABLE parts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL)")
    conn.execute(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, part_id INTEGER REFERENCES parts(id), body TEXT)"
    )
    conn.executemany(
        "INSERT INTO parts VALUES (?, ?, ?)", [(i, f"p{i}", i * 1.5) for i in range(1, parts + 1)]
    )
    conn.execute("INSERT INTO notes VALUES (1, 1, 'hello')")
    conn.commit()
    conn.close()


@pytest.fixture()
def live_writer(tmp_path: Path):
    """A WAL database with an open writer whose last commits sit only in -wal."""
    db = tmp_path / "app.db"
    make_db(db, wal=True)
    writer = sqlite3.connect(db, check_same_thread=False)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("PRAGMA journal_mode=WAL")
    writer.executemany(
        "INSERT INTO parts VALUES (?, ?, ?)", [(i, f"w{i}", 1.0) for i in range(100, 150)]
    )
    writer.commit()
    yield db, writer
    writer.close()


def count_parts(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM parts").fetchone()[0]
    finally:
        conn.close()


def test_backup_contains_commits_still_in_wal_unlike_a_plain_copy(live_writer, tmp_path):
    db, _writer = live_writer
    wal = db.with_name(db.name + "-wal")
    assert wal.stat().st_size > 0
    naive = tmp_path / "naive" / "app.db"
    naive.parent.mkdir()
    shutil.copy(db, naive)  # what `cp app.db app.db.bak` does
    assert count_parts(naive) == 5  # the 50 rows in -wal are missing

    snap = snapshot(db, tmp_path / "out", now=NOW)
    assert count_parts(snap.backup) == 55
    assert snap.manifest["tables"]["parts"] == 55
    # the copy is one self-contained file (no -wal needed)
    assert not snap.backup.with_name(snap.backup.name + "-wal").exists()
    head = snap.backup.read_bytes()[:20]
    assert head[18] == 1 and head[19] == 1  # rollback-journal mode, not WAL


def test_snapshot_does_not_touch_source(live_writer, tmp_path):
    db, _writer = live_writer
    wal = db.with_name(db.name + "-wal")
    before = (sha(db), sha(wal))
    snapshot(db, tmp_path / "out", now=NOW)
    assert (sha(db), sha(wal)) == before


def test_snapshot_while_another_thread_writes(tmp_path):
    db = tmp_path / "busy.db"
    make_db(db, wal=True)
    stop = threading.Event()
    written = [0]
    errors: list[BaseException] = []

    def write() -> None:
        conn = sqlite3.connect(db, timeout=10)
        try:
            i = 1000
            while not stop.is_set():
                conn.execute("INSERT INTO parts VALUES (?, ?, ?)", (i, f"t{i}", 2.0))
                conn.execute("UPDATE notes SET body = ? WHERE id = 1", (f"v{i}",))
                conn.commit()
                written[0] += 1
                i += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which fails the test  # pragma: no cover
            errors.append(exc)
        finally:
            conn.close()

    t = threading.Thread(target=write)
    t.start()
    try:
        while written[0] < 20:
            pass
        snaps = [
            snapshot(db, tmp_path / "out", now=datetime(2026, 1, 1, 0, 0, s)) for s in range(3)
        ]
    finally:
        stop.set()
        t.join()
    assert not errors
    for s in snaps:
        conn = sqlite3.connect(s.backup)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n = conn.execute("SELECT count(*) FROM parts").fetchone()[0]
        conn.close()
        assert s.manifest["integrity_check"] == "ok"
        assert s.manifest["tables"]["parts"] == n >= 5


def test_manifest_keys_and_values(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    db = app / "gestima.db"
    make_db(db)
    uploads = tmp_path / "uploads"
    (uploads / "drawings").mkdir(parents=True)
    (uploads / "drawings" / "a.pdf").write_bytes(b"%PDF-1.4 a")
    (uploads / "b.txt").write_text("bee")

    snap = snapshot(db, tmp_path / "backups", uploads=uploads, now=NOW)
    assert snap.backup == tmp_path / "backups" / "gestima.db.bak.20261120_140000"
    assert snap.manifest_path == manifest_path_for(snap.backup)
    assert snap.manifest_path.name == "gestima.db.bak.20261120_140000.manifest.json"
    on_disk = json.loads(snap.manifest_path.read_text())
    assert on_disk == snap.manifest == read_manifest(snap.backup)
    m = on_disk
    for key in (
        "created_at",
        "source",
        "size",
        "sha256",
        "integrity_check",
        "alembic_revision",
        "git",
        "tables",
        "uploads",
    ):
        assert key in m
    assert m["created_at"] == "2026-11-20T14:00:00"
    assert m["source"] == str(db.resolve())
    assert m["size"] == snap.backup.stat().st_size
    assert m["sha256"] == sha(snap.backup)
    assert m["integrity_check"] == "ok"
    assert m["alembic_revision"] == "abc123def"
    assert m["tables"] == {"notes": 1, "parts": 5}
    assert m["git"] is None  # not a git repo
    files = {f["path"]: f for f in m["uploads"]["files"]}
    assert set(files) == {"b.txt", "drawings/a.pdf"}
    pdf = uploads / "drawings" / "a.pdf"
    assert files["drawings/a.pdf"]["size"] == pdf.stat().st_size
    assert files["drawings/a.pdf"]["sha256"] == sha(pdf)
    assert files["drawings/a.pdf"]["mtime"] == pytest.approx(pdf.stat().st_mtime, abs=1e-3)


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_manifest_git_tag_and_commit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "app.py").write_text("print('hi')\n")
    _git(repo, "add", "app.py")
    _git(repo, "commit", "-q", "-m", "release")
    _git(repo, "tag", "v2.0.0")
    commit = _git(repo, "rev-parse", "HEAD")
    db = tmp_path / "data.db"
    make_db(db)

    with_app = snapshot(db, tmp_path / "o1", app_dir=repo, now=NOW)
    assert with_app.manifest["git"]["commit"] == commit
    assert with_app.manifest["git"]["tag"] == "v2.0.0"

    # default: the DB's own folder; a DB inside the repo finds it
    db2 = repo / "inside.db"
    make_db(db2)
    inside = snapshot(db2, tmp_path / "o2", now=NOW)
    assert inside.manifest["git"]["commit"] == commit


def test_cli_snapshot_json_and_name_pattern(tmp_path):
    db = tmp_path / "app.db"
    make_db(db)
    res = CliRunner().invoke(main, ["snapshot", str(db), "--out", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert re.fullmatch(r"app\.db\.bak\.\d{8}_\d{6}", Path(data["backup"]).name)
    assert Path(data["manifest"]).is_file()
    assert data["tables"] == {"notes": 1, "parts": 5}
    assert deploy_time_of(data["backup"]) == data["created_at"]


def test_refuses_to_overwrite(tmp_path):
    db = tmp_path / "app.db"
    make_db(db)
    first = snapshot(db, tmp_path, now=NOW)
    before = sha(first.backup), sha(first.manifest_path)
    with pytest.raises(RecoveryError, match="already exists"):
        snapshot(db, tmp_path, now=NOW)
    assert (sha(first.backup), sha(first.manifest_path)) == before


@pytest.mark.parametrize("kind", ["missing", "dir", "empty", "text", "truncated"])
def test_cli_snapshot_bad_input_exit_2(tmp_path, kind):
    p = tmp_path / "x.db"
    if kind == "dir":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("hello, I am not a database\n" * 10)
    elif kind == "truncated":
        make_db(p, parts=400)
        p.write_bytes(p.read_bytes()[:5000])
    res = CliRunner().invoke(main, ["snapshot", str(p), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_snapshot_bad_uploads_exit_2(tmp_path):
    db = tmp_path / "app.db"
    make_db(db)
    res = CliRunner().invoke(main, ["snapshot", str(db), "--uploads", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert not list(tmp_path.glob("app.db.bak.*"))


def test_deploy_time_of_manifest_then_name(tmp_path):
    db = tmp_path / "app.db"
    make_db(db)
    snap = snapshot(db, tmp_path, now=NOW)
    manifest = json.loads(snap.manifest_path.read_text())
    manifest["created_at"] = "2026-11-20T14:03:07+01:00"
    snap.manifest_path.write_text(json.dumps(manifest))
    assert deploy_time_of(snap.backup) == "2026-11-20T14:03:07+01:00"
    snap.manifest_path.unlink()
    assert deploy_time_of(snap.backup) == "2026-11-20T14:00:00"  # from the name
    other = tmp_path / "copy.db"
    shutil.copy(db, other)
    assert deploy_time_of(other) is None
    snap.manifest_path.write_text("{not json")
    with pytest.raises(RecoveryError):
        deploy_time_of(snap.backup)


_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from recovery.engine.sqlite_io import consistent_copy, open_pair, open_readonly
for name in ("quiet.db", "pending.db"):
    conn = open_readonly(name)
    print(name, conn.execute("SELECT count(*) FROM t").fetchone()[0])
    conn.close()
pair = open_pair("quiet.db", "pending.db")
print("pair", *pair.execute("SELECT (SELECT count(*) FROM old.t), (SELECT count(*) FROM new.t)").fetchone())
pair.close()
consistent_copy("pending.db", sys.argv[2])
print("copied")
"""


def test_open_readonly_wal_without_shm_in_readonly_folder():
    """A WAL-mode file whose -shm is gone, in a folder we may not write: still readable, WAL included."""
    import tempfile

    as_root = os.geteuid() == 0
    if as_root and not (shutil.which("runuser") and Path("/usr/bin/python3").exists()):
        pytest.skip("needs an unprivileged user to make a folder read-only")
    base = Path(tempfile.mkdtemp(prefix="recovery-rotest-"))
    try:
        pkg = base / "lib" / "recovery"
        pkg.mkdir(parents=True)
        src = Path(__file__).resolve().parents[1] / "recovery"
        (pkg / "engine").mkdir()
        shutil.copy(src / "engine" / "sqlite_io.py", pkg / "engine")
        shutil.copy(src / "errors.py", pkg)
        (pkg / "__init__.py").write_text("")
        (pkg / "engine" / "__init__.py").write_text("")
        (base / "probe.py").write_text(_PROBE)
        data = base / "data"
        data.mkdir()
        for name, extra in (("quiet.db", False), ("pending.db", True)):
            conn = sqlite3.connect(data / name)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("CREATE TABLE t (x)")
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(3)])
            conn.commit()
            if extra:  # keep the commit in -wal: copy the files while the writer is open
                conn.execute("INSERT INTO t VALUES (99)")
                conn.commit()
                shutil.copy(data / name, base / name)
                shutil.copy(data / (name + "-wal"), base / (name + "-wal"))
            conn.close()
        for name in ("pending.db", "pending.db-wal"):
            shutil.move(base / name, data / name)
        assert (
            not (data / "pending.db-shm").exists() and (data / "pending.db-wal").stat().st_size > 0
        )
        out = base / "out"
        out.mkdir()
        before = {p.name: sha(p) for p in data.iterdir()}
        for p in (
            base,
            base / "lib",
            pkg,
            data,
            *pkg.iterdir(),
            base / "probe.py",
            *data.iterdir(),
        ):
            p.chmod(0o755 if p.is_dir() else 0o644)
        out.chmod(0o777)
        if as_root:
            cmd = ["runuser", "-u", "nobody", "--", "/usr/bin/python3"]
        else:
            data.chmod(0o555)
            cmd = [sys.executable]
        res = subprocess.run(
            [*cmd, str(base / "probe.py"), str(base / "lib"), str(out / "copy.db")],
            cwd=data,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.split("\n")[:4] == ["quiet.db 3", "pending.db 4", "pair 3 4", "copied"]
        assert {
            p.name: sha(p) for p in data.iterdir()
        } == before  # nothing created, nothing changed
        assert count_rows(out / "copy.db") == 4
    finally:
        (base / "data").chmod(0o755) if (base / "data").exists() else None
        shutil.rmtree(base, ignore_errors=True)


def count_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        conn.close()


def test_cli_snapshot_corrupt_source_keeps_nothing(tmp_path):
    db = tmp_path / "c.db"
    make_db(db, parts=400)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE parts SET name = printf('%0200d', id)")
    conn.commit()
    conn.close()
    data = bytearray(db.read_bytes())
    for off in range(4096, len(data), 97):
        data[off] = 0xA5
    db.write_bytes(bytes(data))
    before = sha(db)
    res = CliRunner().invoke(main, ["snapshot", str(db), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True
    assert sha(db) == before
