"""Uploaded files through a rollback (issue 6): every post-deploy PDF is linked and hash-identical
afterwards; files lost after the extract come back from the bundle; entity links follow remapped
keys; unsafe paths and symlinks out of the uploads folder are refused without touching anything
outside it; a different file at a target path is kept and the bundle's copy written beside it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recovery.bundle.store import open_bundle
from recovery.cli import main
from recovery.bundle.extract import extract
from recovery.files.uploads import FilesConfig, scan_uploads
from recovery.pipeline import reimport, restore_atomically, rollback
from recovery.files.relink import relink, uploads_state

ALEMBIC_INI = Path(__file__).resolve().parents[1] / "sample_dbs" / "app" / "alembic.ini"
MAPPING = """\
[tables.parts.columns]
price = "price_cents / 100.0"
[tables.quotes.columns]
customer = "customer_name"
"""
AFTER_DEPLOY = 1795515000.0  # 2026-11-24, after the sample deploy (2026-11-20 14:00)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def fast_extract(world: Path, bundle: Path) -> None:
    """extract with a mapping file (the same rules alembic lineage derives, without its cost)."""
    db, backup, uploads = paths(world)
    mapping = bundle.with_name("mapping.toml")
    mapping.write_text(MAPPING)
    extract(backup, db, bundle, mapping=mapping, uploads=uploads)


def truth(world: Path) -> dict[str, Any]:
    return json.loads((world / "world.json").read_text())


def paths(world: Path) -> tuple[Path, Path, Path]:
    t = truth(world)
    return world / t["live"], world / t["backup"], world / t["uploads"]


def records(db: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return {r["path"]: dict(r) for r in conn.execute("SELECT * FROM file_records")}
    finally:
        conn.close()


def execute(db: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def extracted(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle extracted (files copied) from the shared world, once; tests copy it."""
    bundle = tmp_path_factory.mktemp("files") / "bundle"
    fast_extract(world, bundle)
    return bundle


@pytest.fixture(scope="module")
def applied(world: Path, extracted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The backup with ``extracted`` re-imported (records only, no relink), once; tests copy it."""
    folder = tmp_path_factory.mktemp("applied")
    db = folder / "gestima.db"
    restore_atomically(paths(world)[1], db)
    reimport(extracted, db, folder / "run")
    return db


def extract_and_restore(world: Path, tmp: Path, extracted: Path) -> Path:
    """The shared bundle (extracted from an identical world), then the backup in place of the live DB."""
    db, backup, _ = paths(world)
    bundle = tmp / "bundle"
    shutil.copytree(extracted, bundle)
    restore_atomically(backup, db)
    return bundle


def reimported(world: Path, tmp: Path, extracted: Path, applied: Path) -> Path:
    """As after ``recovery reimport`` without --uploads: records in the DB, no relink yet."""
    db = paths(world)[0]
    bundle = extract_and_restore(world, tmp, extracted)
    restore_atomically(applied, db)
    return bundle


def assert_linked(world: Path, db: Path) -> None:
    recs = records(db)
    uploads = paths(world)[2]
    for f in truth(world)["files"]:
        assert f["path"] in recs, f"{f['path']} has no file record after the rollback"
        assert recs[f["path"]]["sha256"] == f["sha256"]
        assert sha(uploads / f["path"]) == f["sha256"]


def test_rollback_links_every_post_deploy_file(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """... and the walk beside the re-import is handed the extract's walk, which holds the
    digests its copies took (so it lists again only changed folders and reads only the files not
    copied)."""
    import recovery.pipeline as pipeline_mod

    db, backup, uploads = paths(world_copy)
    files = truth(world_copy)["files"]
    assert files, "the sample world uploads files after the deploy"
    handed: list[Any] = []
    walk_uploads = pipeline_mod._walk_uploads

    def spy(root: Any, earlier: Any = None) -> Any:
        handed.append(earlier)
        return walk_uploads(root, earlier)

    monkeypatch.setattr(pipeline_mod, "_walk_uploads", spy)
    res = rollback(
        db, backup, tmp_path / "run", uploads=uploads, alembic_ini=ALEMBIC_INI, confirm=None
    )
    (earlier,) = handed
    assert earlier is not None and earlier.real == os.path.realpath(uploads)
    assert {f["path"]: f["sha256"] for f in files}.items() <= earlier._sha.items()
    assert_linked(world_copy, db)
    report = res.outcome.files
    assert report is not None
    assert not report["missing"] and not report["unsafe"] and not report["kept_both"]
    assert {e["path"] for e in report["relinked"]} >= {f["path"] for f in files}
    # the old schema links a drawing to its part through entity_type/entity_id
    recs = records(db)
    for f in files:
        assert (recs[f["path"]]["entity_type"], recs[f["path"]]["entity_id"]) == (
            f["entity_type"],
            f["entity_id"],
        )
    bundle_report = open_bundle(tmp_path / "run" / "bundle").manifest["files"]
    copied = {r["path"]: r for r in bundle_report["records"]}
    for f in files:
        assert copied[f["path"]]["sha256"] == f["sha256"] and copied[f["path"]]["size"] == f["size"]
        assert sha(tmp_path / "run" / "bundle" / "files" / f["path"]) == f["sha256"]


def test_files_deleted_after_extract_come_back_from_the_bundle(
    world_copy: Path, tmp_path: Path, extracted: Path
) -> None:
    db, _, uploads = paths(world_copy)
    bundle = extract_and_restore(world_copy, tmp_path, extracted)
    files = truth(world_copy)["files"]
    for f in files:
        (uploads / f["path"]).unlink()
    res = reimport(bundle, db, tmp_path / "run", uploads=uploads)
    assert_linked(world_copy, db)
    report = res.outcome.files
    assert {e["path"] for e in report["restored_from_bundle"]} == {f["path"] for f in files}
    assert not report["missing"] and not report["unsafe"]
    # the uploads state is the folder after the files came back (not the walk made before)
    state = report["uploads_state"]
    assert {f["path"] for f in files} <= {a["path"] for a in state["added"]} and not state[
        "removed"
    ]
    added = {a["path"]: a["sha256"] for a in state["added"]}  # the written files' hashes as checked
    assert all(added[f["path"]] == f["sha256"] == sha(uploads / f["path"]) for f in files)
    # a second relink finds everything in place and writes nothing
    again = relink(bundle, db, uploads)
    assert not again["restored_from_bundle"] and not again["links_fixed"]
    assert {e["action"] for e in again["relinked"]} == {"present"}


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` (symlinks as their target text): content hash and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[p.relative_to(root).as_posix()] = (os.readlink(p), 0)
        elif p.is_file():
            out[p.relative_to(root).as_posix()] = (sha(p), p.stat().st_mtime_ns)
    return out


def test_dry_run_reports_and_writes_nothing(
    world_copy: Path, tmp_path: Path, extracted: Path, applied: Path
) -> None:
    db, _, uploads = paths(world_copy)
    bundle = reimported(world_copy, tmp_path, extracted, applied)  # records only, no relink yet
    gone, theirs, moved = truth(world_copy)["files"][:3]
    (uploads / gone["path"]).unlink()  # would be restored
    (uploads / theirs["path"]).write_bytes(
        b"%PDF-1.4 a different file\n"
    )  # would be kept, the copy beside
    execute(
        db,
        "UPDATE file_records SET entity_type = 'quote', entity_id = 1 WHERE path = ?",
        (moved["path"],),
    )
    before_db, before_tree = sha(db), tree(uploads)
    report = relink(bundle, db, uploads, dry_run=True)
    assert [e["path"] for e in report["restored_from_bundle"] if e["kind"] == "record"] == [
        gone["path"]
    ]
    assert [k["path"] for k in report["kept_both"]] == [theirs["path"]]
    assert {x["column"] for x in report["links_fixed"]} >= {"entity_type", "entity_id"}
    assert gone["path"] not in {a["path"] for a in report["uploads_state"]["added"]}  # still gone
    assert sha(db) == before_db and tree(uploads) == before_tree  # byte-identical: nothing written
    relink(bundle, db, uploads)
    assert sha(uploads / gone["path"]) == gone["sha256"]
    assert (uploads / theirs["path"]).read_bytes() == b"%PDF-1.4 a different file\n"
    assert (records(db)[moved["path"]]["entity_type"], records(db)[moved["path"]]["entity_id"]) == (
        moved["entity_type"],
        moved["entity_id"],
    )


def test_relink_reads_each_upload_once(
    world_copy: Path,
    tmp_path: Path,
    extracted: Path,
    applied: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plan's hashes of the uploads serve the uploads state too: no file is read twice (every
    read of an upload's bytes goes through ``digest_fd``: by path or from the walk's folder)."""
    import recovery.files.uploads

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file a descriptor reads")
    db, _, uploads = paths(world_copy)
    bundle = reimported(world_copy, tmp_path, extracted, applied)
    reads: dict[str, int] = {}
    real = recovery.files.uploads.digest_fd

    def counting(fd: int) -> tuple[str, int, int]:
        path = os.readlink(f"/proc/self/fd/{fd}")
        reads[path] = reads.get(path, 0) + 1
        return real(fd)

    monkeypatch.setattr(recovery.files.uploads, "digest_fd", counting)
    report = relink(bundle, db, uploads)
    assert report["uploads_state"]["source"] == "backup-records"
    on_disk = {os.fspath(p.resolve()) for p in uploads.rglob("*") if p.is_file()}
    assert set(reads) == on_disk  # every upload hashed (the state compares them all) ...
    assert set(reads.values()) == {1}  # ... and each once
    assert len(report["relinked"]) == len(truth(world_copy)["files"])


@pytest.mark.parametrize("durable_by", ["syncfs", "fsync"])
def test_bundle_copies_are_hashed_fsynced_and_written_once(
    world_copy: Path,
    tmp_path: Path,
    extracted: Path,
    monkeypatch: pytest.MonkeyPatch,
    durable_by: str,
) -> None:
    """Every copy is created at its own name (no temporary left over), hashes as its source, and
    is durable before copy_files_into_bundle returns: one syncfs of the bundle's filesystem after
    every copy is written in full (through a descriptor of the work folder), or, where syncfs
    cannot serve, an fsync of every copy and every folder that gained an entry; a path two
    records share is one copy."""
    import recovery.files.uploads as uploads_mod
    from recovery.files.uploads import copy_files_into_bundle

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file an fsync was for")
    _, backup, uploads = paths(world_copy)
    files = truth(world_copy)["files"]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(extracted / "rows.db", work / "rows.db")
    conn = sqlite3.connect(work / "rows.db")
    conn.row_factory = sqlite3.Row
    with conn:
        twin = dict(
            conn.execute(
                "SELECT * FROM file_records WHERE path = ?", (files[0]["path"],)
            ).fetchone()
        )
        twin["id"] = 10**6
        conn.execute(
            f"INSERT INTO file_records ({', '.join(twin)}) VALUES ({', '.join('?' * len(twin))})",
            list(twin.values()),
        )
    conn.close()
    loose = uploads / "parts" / "loose" / "notes.txt"
    loose.parent.mkdir(parents=True)
    loose.write_bytes(b"uploaded without a record")
    os.utime(loose, (AFTER_DEPLOY, AFTER_DEPLOY))
    synced: set[str] = set()
    real_fsync, real_syncfs = os.fsync, uploads_mod._syncfs
    whole: list[tuple[str, set[str]]] = []  # (folder synced, the copies complete at that moment)

    def spy(fd: int) -> None:
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def spy_syncfs(fd: int) -> bool:
        complete = {
            f["path"]
            for f in files
            if (work / "files" / f["path"]).is_file()
            and sha(work / "files" / f["path"]) == f["sha256"]
        }
        whole.append((os.readlink(f"/proc/self/fd/{fd}"), complete))
        return real_syncfs(fd) if durable_by == "syncfs" else False

    monkeypatch.setattr(os, "fsync", spy)
    monkeypatch.setattr(uploads_mod, "_syncfs", spy_syncfs)
    report = copy_files_into_bundle(work, uploads, backup, FilesConfig())
    monkeypatch.undo()
    assert [w[0] for w in whole] == [str(work.resolve())]  # one call, for the whole bundle
    assert whole[0][1] >= {f["path"] for f in files}  # made after every copy was written
    by_path: dict[str, list[dict[str, Any]]] = {}
    for r in report["records"]:
        by_path.setdefault(r["path"], []).append(r)
    assert set(by_path) == {f["path"] for f in files} and len(by_path[files[0]["path"]]) == 2
    for f in files:
        for r in by_path[f["path"]]:
            assert (r["status"], r["sha256"], r["size"]) == ("copied", f["sha256"], f["size"])
        assert sha(work / "files" / f["path"]) == sha(uploads / f["path"]) == f["sha256"]
    (extra,) = report["unrecorded"]
    assert extra["path"] == "parts/loose/notes.txt" and extra["sha256"] == sha(loose)
    assert (
        work / "files" / "_unrecorded" / "parts" / "loose" / "notes.txt"
    ).read_bytes() == b"uploaded without a record"
    written = {p for p in (work / "files").rglob("*") if p.is_file()}
    assert {p.relative_to(work / "files").as_posix() for p in written} == {
        *(f["path"] for f in files),
        "_unrecorded/parts/loose/notes.txt",
    }  # no temporary files left
    folders = {p for p in (work / "files").rglob("*") if p.is_dir()} | {work / "files", work}
    if durable_by == "fsync" or not uploads_mod._syncfs_reports_errors():
        assert {str(p.resolve()) for p in written | folders} <= synced
    else:
        assert not synced & {str(p.resolve()) for p in written}  # syncfs did it: no fsync each


def test_the_copies_digests_spare_the_next_walk_its_reads(
    world_copy: Path, tmp_path: Path, extracted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extract's walk keeps the digest each copy took of a file it listed unchanged; the
    rollback's walk beside the re-import, given that walk, reads only the files not copied and
    a copied file changed since — and holds the hashes a new walk reads."""
    import time

    import recovery.files.uploads as uploads_mod
    from recovery.files.uploads import UploadsIndex, copy_files_into_bundle

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file a descriptor reads")
    monkeypatch.setattr(UploadsIndex, "RACY_NS", 0)  # files made a moment ago count as settled
    _, backup, uploads = paths(world_copy)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(extracted / "rows.db", work / "rows.db")
    index = UploadsIndex(uploads)
    copy_files_into_bundle(work, uploads, backup, FilesConfig(), index=index)
    copied = {f["path"] for f in truth(world_copy)["files"]}
    assert set(index._sha) == copied and len(index.files) > len(copied)
    time.sleep(0.02)
    edited = sorted(copied)[0]
    (uploads / edited).write_bytes(b"changed after the copy")
    reads: list[str] = []
    real_digest = uploads_mod.digest_fd

    def counting(fd: int) -> tuple[str, int, int]:
        reads.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_digest(fd)

    monkeypatch.setattr(uploads_mod, "digest_fd", counting)
    now = UploadsIndex(uploads, hash_all=True, earlier=index)
    real = os.path.realpath(uploads)
    assert sorted(reads) == sorted(
        f"{real}/{rel}" for rel in now.files if rel not in copied or rel == edited
    )
    assert now._sha == UploadsIndex(uploads, hash_all=True)._sha
    assert now._sha[edited] == hashlib.sha256(b"changed after the copy").hexdigest()


def test_a_disk_full_during_the_copies_leaves_no_bundle(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copies are made durable together after the last write (one syncfs), so a copy the
    disk has no room for must still stop the extract before its seal: with an upload bigger than
    a small tmpfs, extract fails (the copy, or a database write after the copy took the room),
    and no bundle and no work folder are left there; with room, the bundle it seals holds every
    copy it lists, each with its hash."""
    import subprocess

    import recovery.files.uploads as uploads_mod

    db, backup, uploads = paths(world_copy)
    big = uploads / "parts" / "loose" / "big.bin"  # uploaded after the deploy, no record
    big.parent.mkdir(parents=True)
    big.write_bytes(os.urandom(1 << 20) * 6)
    os.utime(big, (AFTER_DEPLOY, AFTER_DEPLOY))
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)]
    proc = subprocess.run(mount, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); needs root")
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(MAPPING)
    try:
        # the copies start while the last statements run: whichever write meets the full disk
        with pytest.raises((OSError, sqlite3.OperationalError)) as failed:
            extract(backup, db, disk / "bundle", mapping=mapping, uploads=uploads)
        assert getattr(failed.value, "errno", None) == errno.ENOSPC or "full" in str(failed.value)
        assert list(disk.iterdir()) == []  # no bundle, no work folder
        # the copies alone: the write that meets the full disk fails them, before any sync
        synced: list[int] = []
        monkeypatch.setattr(uploads_mod, "_syncfs", synced.append)
        (disk / "work").mkdir()
        with pytest.raises(OSError) as copying:
            uploads_mod.copy_files_into_bundle(
                disk / "work", uploads, backup, FilesConfig(), backup_paths=set(), rows=[]
            )
        assert copying.value.errno == errno.ENOSPC and synced == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    extract(backup, db, tmp_path / "roomy", mapping=mapping, uploads=uploads)
    bundle = open_bundle(tmp_path / "roomy")  # checks every sealed file's hash
    (loose,) = bundle.manifest["files"]["unrecorded"]
    listed = [*bundle.manifest["files"]["records"], loose]
    assert loose["sha256"] == sha(big) and len(listed) > 1
    for r in listed:
        prefix = "_unrecorded/" if r is loose else ""
        assert sha(tmp_path / "roomy" / "files" / f"{prefix}{r['path']}") == r["sha256"]


def _new_part_with_drawing(world: Path) -> dict[str, Any]:
    """A file uploaded for a part created after the deploy (so the part's key can collide)."""
    backup = paths(world)[1]
    conn = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    top = conn.execute("SELECT max(id) FROM parts").fetchone()[0]
    conn.close()
    return next(
        f for f in truth(world)["files"] if f["entity_type"] == "part" and f["entity_id"] > top
    )


def test_links_follow_remapped_keys(world_copy: Path, tmp_path: Path, extracted: Path) -> None:
    db, _, uploads = paths(world_copy)
    f = _new_part_with_drawing(world_copy)
    pid = f["entity_id"]
    bundle = extract_and_restore(world_copy, tmp_path, extracted)
    # the old release, back in service, created a part that took the key the bundle's part has
    execute(
        db,
        "INSERT INTO parts (id, part_number, name, material_id, price, notes, created_at, updated_at, "
        "created_by, drawing_number) SELECT ?, 'GS-COLLIDE', 'made after the rollback', material_id, 1.0, "
        "NULL, created_at, updated_at, created_by, NULL FROM parts ORDER BY id LIMIT 1",
        (pid,),
    )
    res = reimport(bundle, db, tmp_path / "run", uploads=uploads)
    remaps = {(r.table, r.old_key): r.new_key for r in res.outcome.remaps}
    new_id = remaps[("parts", pid)]
    assert new_id != pid
    rec = records(db)[f["path"]]
    assert (rec["entity_type"], rec["entity_id"]) == ("part", new_id)
    assert sha(uploads / f["path"]) == f["sha256"]
    # relink itself repairs a link left at the old key (with or without the re-import's remaps)
    for given in (None, res.outcome.remaps):
        execute(db, "UPDATE file_records SET entity_id = ? WHERE path = ?", (pid, f["path"]))
        report = relink(bundle, db, uploads, remaps=given)
        assert any(x["column"] == "entity_id" and x["new"] == new_id for x in report["links_fixed"])
        assert records(db)[f["path"]]["entity_id"] == new_id
    # the colliding part keeps its own key and gets no drawing
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert (
        conn.execute("SELECT part_number FROM parts WHERE id = ?", (pid,)).fetchone()[0]
        == "GS-COLLIDE"
    )
    assert (
        conn.execute("SELECT part_number FROM parts WHERE id = ?", (new_id,)).fetchone()[0]
        != "GS-COLLIDE"
    )
    conn.close()


def test_new_schema_file_id_maps_back_to_the_entity_link(
    world_copy: Path, tmp_path: Path, extracted: Path, applied: Path
) -> None:
    """parts.file_id (new schema only) says which part a drawing belongs to; in the old schema the
    record's entity link says it. A record whose link disagrees is pointed back at the part."""
    db, _, uploads = paths(world_copy)
    f = truth(world_copy)["files"][0]
    bundle = reimported(world_copy, tmp_path, extracted, applied)
    relink(bundle, db, uploads)
    execute(
        db,
        "UPDATE file_records SET entity_type = 'quote', entity_id = 1 WHERE path = ?",
        (f["path"],),
    )
    report = relink(bundle, db, uploads)
    rec = records(db)[f["path"]]
    assert (rec["entity_type"], rec["entity_id"]) == ("part", f["entity_id"])
    assert {x["column"] for x in report["links_fixed"]} == {"entity_type", "entity_id"}


def _outside_sentinels(tmp_path: Path, uploads: Path) -> dict[Path, tuple[str, int]]:
    """Files outside the uploads folder that unsafe records name."""
    escaped = (uploads / "../../etc/passwd").resolve()
    escaped.parent.mkdir(parents=True, exist_ok=True)
    escaped.write_text("root:x:0:0:sentinel\n")
    absolute = tmp_path / "outside" / "secret.pdf"
    absolute.parent.mkdir(parents=True, exist_ok=True)
    absolute.write_bytes(b"%PDF-1.4 not yours\n")
    return {p: (sha(p), p.stat().st_mtime_ns) for p in (escaped, absolute)}


def test_unsafe_paths_are_refused_and_nothing_outside_is_touched(
    world_copy: Path, tmp_path: Path
) -> None:
    db, backup, uploads = paths(world_copy)
    sentinels = _outside_sentinels(tmp_path, uploads)
    absolute = tmp_path / "outside" / "secret.pdf"
    a, b = truth(world_copy)["files"][:2]
    execute(db, "UPDATE file_records SET path = '../../etc/passwd' WHERE id = ?", (a["record_id"],))
    execute(db, "UPDATE file_records SET path = ? WHERE id = ?", (str(absolute), b["record_id"]))
    (uploads / a["path"]).unlink()  # so a naive relink would try to "restore" something
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(MAPPING)
    res = rollback(db, backup, tmp_path / "run", uploads=uploads, mapping=mapping, confirm=None)
    bundle_files = open_bundle(tmp_path / "run" / "bundle").manifest["files"]
    assert {u["record_key"] for u in bundle_files["unsafe"]} == {a["record_id"], b["record_id"]}
    report = res.outcome.files
    unsafe = {(u["record_key"], u["path"]) for u in report["unsafe"]}
    assert (a["record_id"], "../../etc/passwd") in unsafe and (
        b["record_id"],
        str(absolute),
    ) in unsafe
    assert res.outcome.needs_review
    for p, (digest, mtime) in sentinels.items():
        assert (sha(p), p.stat().st_mtime_ns) == (digest, mtime), (
            f"{p} outside the uploads folder was touched"
        )
    assert not list((tmp_path / "run" / "bundle" / "files").rglob("passwd"))
    assert not list((tmp_path / "run" / "bundle" / "files").rglob("secret.pdf"))
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret.pdf"]


def test_symlink_out_of_the_uploads_folder_is_refused(
    world_copy: Path, tmp_path: Path, applied: Path
) -> None:
    db, _backup, uploads = paths(world_copy)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.pdf"
    secret.write_bytes(b"%PDF-1.4 outside\n")
    before = sha(secret)
    a, b = truth(world_copy)["files"][:2]
    # a: the file itself is a symlink leading out (extract must not read through it)
    (uploads / a["path"]).unlink()
    (uploads / a["path"]).symlink_to(secret)
    bundle = tmp_path / "bundle"
    fast_extract(world_copy, bundle)
    unsafe = open_bundle(bundle).manifest["files"]["unsafe"]
    assert [u["record_key"] for u in unsafe] == [a["record_id"]]
    assert not (bundle / "files" / a["path"]).exists()
    restore_atomically(applied, db)  # the same rows re-imported: only the files step is left
    # b: after the extract its folder is replaced by a symlink leading out (relink must not write through it)
    folder = (uploads / b["path"]).parent
    shutil.rmtree(folder)
    folder.symlink_to(outside, target_is_directory=True)
    unsafe_now = {u["record_key"] for u in relink(bundle, db, uploads)["unsafe"]}
    assert {a["record_id"], b["record_id"]} <= unsafe_now
    assert sorted(p.name for p in outside.iterdir()) == ["secret.pdf"] and sha(secret) == before


def test_a_different_file_at_the_path_is_kept_and_the_copy_written_beside(
    world_copy: Path, tmp_path: Path, extracted: Path, applied: Path
) -> None:
    db, _, uploads = paths(world_copy)
    f = truth(world_copy)["files"][0]
    bundle = reimported(world_copy, tmp_path, extracted, applied)
    theirs = b"%PDF-1.4 uploaded again after the rollback\n"
    (uploads / f["path"]).write_bytes(theirs)
    report = relink(bundle, db, uploads)
    assert (uploads / f["path"]).read_bytes() == theirs  # never overwritten
    (kept,) = report["kept_both"]
    beside = uploads / kept["recovered_path"]
    assert beside.parent == (uploads / f["path"]).parent
    assert beside.name == f"drawing-rev-A.recovered-{f['sha256'][:8]}.pdf"
    assert (
        sha(beside) == f["sha256"] and kept["existing_sha256"] == hashlib.sha256(theirs).hexdigest()
    )
    rec = records(db)
    assert f["path"] not in rec and rec[kept["recovered_path"]]["sha256"] == f["sha256"]
    assert {o["path"] for o in report["orphans"]} == {f["path"]}  # their file has no record now
    again = relink(bundle, db, uploads)
    assert not again["kept_both"] and not again["restored_from_bundle"]


def unrecorded_upload_extracted(
    world: Path, tmp_path: Path, name: str, content: bytes
) -> tuple[Path, Path]:
    """A file uploaded after the deploy that no record names (``uploads/parts/loose/<name>``),
    then a bundle extracted: (the file, the bundle)."""
    extra = paths(world)[2] / "parts" / "loose" / name
    extra.parent.mkdir(parents=True)
    extra.write_bytes(content)
    os.utime(extra, (AFTER_DEPLOY, AFTER_DEPLOY))
    bundle = tmp_path / "bundle"
    fast_extract(world, bundle)
    return extra, bundle


def test_unrecorded_file_is_carried_and_restored(
    world_copy: Path, tmp_path: Path, applied: Path
) -> None:
    db, _, uploads = paths(world_copy)
    extra, bundle = unrecorded_upload_extracted(
        world_copy, tmp_path, "notes.txt", b"uploaded without a record"
    )
    restore_atomically(applied, db)  # the same rows re-imported: only the files step is left
    (entry,) = open_bundle(bundle).manifest["files"]["unrecorded"]
    assert entry["path"] == "parts/loose/notes.txt" and entry["sha256"] == sha(extra)
    extra.unlink()
    report = relink(bundle, db, uploads)
    assert extra.read_bytes() == b"uploaded without a record"
    assert any(e["kind"] == "unrecorded" for e in report["restored_from_bundle"])
    assert {o["path"] for o in report["orphans"]} == {"parts/loose/notes.txt"}


def test_an_upload_named_like_a_temporary_file_is_sealed_and_restored(
    world_copy: Path, tmp_path: Path, applied: Path
) -> None:
    """The bundle seals every copied file whatever its name (``*.tmp`` was once skipped by the
    seal, and then refused by open_bundle as 'added after extraction')."""
    db, _, uploads = paths(world_copy)
    extra, bundle = unrecorded_upload_extracted(
        world_copy, tmp_path, "scan.tmp", b"a scanner's file name"
    )
    manifest = open_bundle(bundle).manifest
    assert "files/_unrecorded/parts/loose/scan.tmp" in manifest["hashes"]
    restore_atomically(applied, db)
    extra.unlink()
    relink(bundle, db, uploads)
    assert extra.read_bytes() == b"a scanner's file name"


def test_uploads_state_against_the_snapshot_manifest(world_copy: Path) -> None:
    _db, backup, uploads = paths(world_copy)
    post = {f["path"] for f in truth(world_copy)["files"]}
    # no manifest beside the sample backup: the backup's own records are the baseline
    state = uploads_state(backup, uploads)
    assert state["source"] == "backup-records" and {a["path"] for a in state["added"]} == post
    assert not state["changed"] and not state["removed"]
    # with the snapshot's uploads manifest
    manifest = backup.with_name(backup.name + ".manifest.json")
    manifest.write_text(json.dumps({"uploads": scan_uploads(uploads)}))
    some = sorted(post)
    (uploads / some[0]).write_bytes(b"changed")
    (uploads / some[1]).unlink()
    (uploads / "new.pdf").write_bytes(b"added")
    state = uploads_state(backup, uploads)
    assert state["source"] == "manifest"
    assert [a["path"] for a in state["added"]] == ["new.pdf"]
    assert [c["path"] for c in state["changed"]] == [some[0]]
    assert [r["path"] for r in state["removed"]] == [some[1]]


def test_relink_command(world_copy: Path, tmp_path: Path, extracted: Path, applied: Path) -> None:
    db, _, uploads = paths(world_copy)
    bundle = reimported(world_copy, tmp_path, extracted, applied)
    gone = truth(world_copy)["files"][0]
    (uploads / gone["path"]).unlink()
    runner = CliRunner()
    dry = runner.invoke(
        main, ["relink", str(bundle), str(db), "--uploads", str(uploads), "--dry-run", "--json"]
    )
    assert dry.exit_code == 0, dry.output
    assert [e["path"] for e in json.loads(dry.output)["restored_from_bundle"]] == [gone["path"]]
    assert not (uploads / gone["path"]).exists()
    done = runner.invoke(
        main,
        [
            "relink",
            str(bundle),
            str(db),
            "--uploads",
            str(uploads),
            "--files-table",
            "file_records",
            "--path-column",
            "path",
            "--hash-column",
            "sha256",
        ],
    )
    assert done.exit_code == 0, done.output
    assert sha(uploads / gone["path"]) == gone["sha256"]
    bad = runner.invoke(
        main, ["relink", str(bundle), str(db), "--uploads", str(uploads), "--path-column", "nope"]
    )
    assert bad.exit_code == 2 and "nope" in bad.output
    missing = runner.invoke(
        main, ["relink", str(bundle), str(db), "--uploads", str(tmp_path / "none")]
    )
    assert missing.exit_code == 2
    assert "Example:" in runner.invoke(main, ["relink", "--help"]).output


def test_files_table_and_columns_can_be_named(
    world_copy: Path, tmp_path: Path, extracted: Path, applied: Path
) -> None:
    db, _, uploads = paths(world_copy)
    bundle = reimported(world_copy, tmp_path, extracted, applied)
    report = relink(
        bundle, db, uploads, FilesConfig("file_records", "path", "sha256"), dry_run=True
    )
    assert report["files_table"]["table"] == "file_records" and len(report["relinked"]) == len(
        truth(world_copy)["files"]
    )
    with pytest.raises(Exception, match="no files table"):
        relink(bundle, db, uploads, FilesConfig("uploads_table"), dry_run=True)


STORED_CASES = [
    "a/b.pdf",
    "./a/b.pdf",
    "a//b.pdf",
    "a/./b.pdf",
    "a/b.pdf/",
    "a/c.pdf",
    "a/out.pdf",
    "a/dangling.pdf",
    "a/loop.pdf",
    "inside/b.pdf",
    "outdir/secret.pdf",
    "../outside/secret.pdf",
    "a/../a/b.pdf",
    "/etc/passwd",
    "a/missing.pdf",
    "empty",
    "~a/b.pdf",
    "a\\b.pdf",
    "",
    ".",
    "a",
]


def test_uploads_index_answers_as_safe_path(tmp_path: Path) -> None:
    """The one-walk index agrees with safe_path on every kind of stored path: plain, spelled with
    ``./`` or ``//``, a symlink inside, a symlink or symlinked folder leading out, a dangling link,
    a link loop, ``..``, absolute, missing, a folder."""
    from recovery.files.uploads import UploadsIndex, safe_path

    root, outside = tmp_path / "uploads", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    (root / "empty").mkdir()
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(b"secret")
    (root / "a" / "b.pdf").write_bytes(b"b")
    (root / "a" / "c.pdf").symlink_to("b.pdf")
    (root / "a" / "out.pdf").symlink_to(outside / "secret.pdf")
    (root / "a" / "dangling.pdf").symlink_to("nothing.pdf")
    (root / "a" / "loop.pdf").symlink_to("loop.pdf")
    (root / "inside").symlink_to(root / "a", target_is_directory=True)
    (root / "outdir").symlink_to(outside, target_is_directory=True)
    index = UploadsIndex(root)
    assert set(index.files) == {
        "a/b.pdf",
        "a/c.pdf",
    }  # symlinked folders not entered, links out skipped
    for stored in STORED_CASES:
        try:
            expected = safe_path(root, stored)
        except RuntimeError:  # a symlink loop, as pathlib reports it
            with pytest.raises(RuntimeError):
                index.resolve(stored)
            continue
        got = index.resolve(stored)
        assert got == expected, stored
        assert index.safe(stored) == (expected is not None), stored
        if expected is not None:
            assert index.is_file(stored, got) == expected.is_file(), stored
            if expected.is_file():
                assert index.sha256(stored, got) == sha(expected), stored


def test_an_upload_swapped_for_a_symlink_after_the_walk_is_refused(
    world_copy: Path, tmp_path: Path
) -> None:
    """extract walks uploads/ while its SQL runs and copies afterwards: a listed file replaced by a
    symlink leading outside in between is refused, never followed into the bundle."""
    from recovery.files.uploads import UploadsIndex, copy_files_into_bundle
    from recovery.errors import RecoveryError

    _, backup, uploads = paths(world_copy)
    bundle = tmp_path / "bundle"
    fast_extract(world_copy, bundle)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(bundle / "rows.db", work / "rows.db")
    with sqlite3.connect(f"file:{work / 'rows.db'}?mode=ro", uri=True) as c:
        stored = c.execute(
            "SELECT path FROM file_records WHERE _recovery_kind = 'inserted' ORDER BY id LIMIT 1"
        ).fetchone()[0]
    index = UploadsIndex(uploads)
    secret = tmp_path / "outside" / "secret.pdf"
    secret.parent.mkdir()
    secret.write_bytes(b"not an upload")
    (uploads / stored).unlink()
    (uploads / stored).symlink_to(secret)
    with pytest.raises(RecoveryError, match="symbolic link"):
        copy_files_into_bundle(work, uploads, backup, FilesConfig(), index)
    assert not any(p.is_file() and p.read_bytes() == b"not an upload" for p in work.rglob("*"))
