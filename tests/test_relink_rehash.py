"""The relink's second walk of the uploads folder (after it wrote files) reads again only what it
cannot know: :meth:`recovery.files.uploads.UploadsIndex.adopt_hashes`."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from recovery.files.uploads import UploadsIndex


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_known_hashes_are_taken_and_a_changed_file_is_read_again(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    (root / "d").mkdir(parents=True)
    (root / "kept.txt").write_bytes(b"kept")
    (root / "d" / "edited.txt").write_bytes(b"before")
    earlier = UploadsIndex(root)
    assert earlier.sha256("kept.txt") == _sha(b"kept")
    assert earlier.sha256("d/edited.txt") == _sha(b"before")
    st = (root / "d" / "edited.txt").stat()
    time.sleep(0.02)
    # the same size and mtime put back: only the inode's change time tells
    (root / "d" / "edited.txt").write_bytes(b"AFTER!")
    os.utime(root / "d" / "edited.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    (root / "new.txt").write_bytes(b"written by the apply")
    now = UploadsIndex(root)
    now.adopt_hashes(earlier, {os.path.realpath(root / "new.txt"): "f" * 64})
    os.remove(root / "kept.txt")  # taken over: never read again
    assert now.sha256("kept.txt") == _sha(b"kept")
    assert now.sha256("new.txt") == "f" * 64  # the apply's checked hash, as given
    assert now.sha256("d/edited.txt") == _sha(b"AFTER!")


def test_hashes_read_during_the_walk_are_the_files_own(tmp_path: Path) -> None:
    """``UploadsIndex(root, hash_all=True)`` reads each plain file through the walk's folder
    descriptor; a symlink (followed only inside the root) and a FIFO (never opened) are left to
    the lazy read, which gives the same answers as an index that hashed nothing up front."""
    root = tmp_path / "uploads"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "deep.pdf").write_bytes(b"deep")
    (root / "top.txt").write_bytes(b"top")
    (root / "link.txt").symlink_to(root / "a" / "b" / "deep.pdf")
    os.mkfifo(root / "a" / "pipe")
    eager, lazy = UploadsIndex(root, hash_all=True), UploadsIndex(root)
    assert eager._sha == {"a/b/deep.pdf": _sha(b"deep"), "top.txt": _sha(b"top")}
    assert lazy._sha == {}
    assert sorted(eager.files) == sorted(lazy.files) == ["a/b/deep.pdf", "link.txt", "top.txt"]
    for rel in eager.files:
        assert eager.sha256(rel) == lazy.sha256(rel)
    assert eager.files["top.txt"][1].st_size == 3


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every upload read from now on (its real path), however it is opened."""
    import recovery.files.uploads as uploads

    seen: list[str] = []
    real = uploads.digest_fd

    def counting(fd: int) -> tuple[str, int, int]:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(uploads, "digest_fd", counting)
    return seen


def test_a_walk_made_earlier_vouches_only_for_files_unchanged_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rollback walks and hashes the uploads while its re-import runs; the relink walks again
    and takes an earlier hash only for a file with the same inode, size, mtime and ctime — a
    rewrite with its size and mtime put back, a file replaced by another, a new file are read."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file a descriptor reads")
    monkeypatch.setattr(UploadsIndex, "RACY_NS", 0)  # files made a moment ago count as settled
    root = tmp_path / "uploads"
    (root / "d").mkdir(parents=True)
    for name in ("kept.txt", "d/edited.txt", "swapped.txt"):
        (root / name).write_bytes(name.encode())
    earlier = UploadsIndex(root, hash_all=True)
    time.sleep(0.02)
    st = (root / "d" / "edited.txt").stat()
    (root / "d" / "edited.txt").write_bytes(b"EDITED" + b"!" * (len(b"d/edited.txt") - 6))
    os.utime(root / "d" / "edited.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    (root / "other").write_bytes(b"another file")
    os.replace(root / "other", root / "swapped.txt")
    (root / "new.txt").write_bytes(b"new")
    reads = _reads(monkeypatch)
    now = UploadsIndex(root, hash_all=True, earlier=earlier)
    real = os.path.realpath(root)
    assert sorted(reads) == sorted(
        f"{real}/{n}" for n in ("d/edited.txt", "swapped.txt", "new.txt")
    )
    assert now.sha256("kept.txt") == _sha(b"kept.txt")
    assert now.sha256("d/edited.txt") == _sha(b"EDITED!!!!!!")
    assert now.sha256("swapped.txt") == _sha(b"another file")
    assert now.sha256("new.txt") == _sha(b"new")
    assert len(reads) == 3  # nothing read again when asked


def test_a_hash_read_in_the_same_moment_as_a_change_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose change time is not RACY_NS older than the earlier walk may have changed
    again within the same timestamp tick after it was read: it is read again, whatever its stat."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file a descriptor reads")
    root = tmp_path / "uploads"
    root.mkdir()
    (root / "fresh.txt").write_bytes(b"fresh")
    earlier = UploadsIndex(root, hash_all=True)
    reads = _reads(monkeypatch)
    now = UploadsIndex(root, hash_all=True, earlier=earlier)
    assert reads == [os.path.realpath(root / "fresh.txt")]
    assert now.sha256("fresh.txt") == _sha(b"fresh")
    other = UploadsIndex(tmp_path, hash_all=True, earlier=earlier)  # another root: not used
    assert other.sha256("uploads/fresh.txt") == _sha(b"fresh")


def test_a_walk_made_earlier_lists_again_only_the_folders_changed_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk given an earlier one lists again (``scandir``) only the folders that changed since
    — an entry added, removed or renamed, a folder swapped for a symlink, a new folder — and
    finds what a new walk finds: the same files in the same order with the same stats, and the
    same hashes; a folder changed within RACY_NS of the earlier walk is listed again too."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the folder a descriptor lists")
    import recovery.files.uploads as uploads

    monkeypatch.setattr(UploadsIndex, "RACY_NS", 0)
    root = tmp_path / "uploads"
    for rel in ("a/x.txt", "a/b/y.txt", "c/z.txt", "e/w.txt", "f/g/h.txt", "q/r/s.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    (root / "d").mkdir()
    (root / "link.txt").symlink_to(root / "a" / "x.txt")
    os.mkfifo(root / "f" / "pipe")
    earlier = UploadsIndex(root, hash_all=True)
    time.sleep(0.02)
    (root / "d" / "new.txt").write_bytes(b"added")  # d changes
    os.remove(root / "c" / "z.txt")  # c changes
    (root / "a" / "b" / "y.txt").write_bytes(b"rewritten")  # a file's bytes: no folder changes
    os.rename(root / "e", tmp_path / "e-away")  # the root changes: e is now a symlink
    (root / "e").symlink_to(root / "f")
    (root / "q" / "n").mkdir()  # q changes: a new folder in it
    (root / "q" / "n" / "m.txt").write_bytes(b"m")
    real = os.path.realpath(root)
    listed: list[str] = []
    scandir = os.scandir

    def spy(fd: Any) -> Any:
        listed.append(os.readlink(f"/proc/self/fd/{fd}"))
        return scandir(fd)

    monkeypatch.setattr(uploads.os, "scandir", spy)
    now = UploadsIndex(root, hash_all=True, earlier=earlier)
    assert sorted(listed) == sorted(f"{real}{p}" for p in ("", "/c", "/d", "/q", "/q/n"))
    listed.clear()
    fresh = UploadsIndex(root, hash_all=True)
    assert len(listed) == 10  # a new walk lists every folder
    expected = ["link.txt", "a/x.txt", "a/b/y.txt", "d/new.txt", "f/g/h.txt", "q/n/m.txt"]
    assert list(now.files) == list(fresh.files) == [*expected, "q/r/s.txt"]
    for rel, (path, st) in fresh.files.items():
        assert now.files[rel][0] == path
        assert (now.files[rel][1].st_ino, now.files[rel][1].st_ctime_ns) == (
            st.st_ino,
            st.st_ctime_ns,
        )
        assert now.sha256(rel) == fresh.sha256(rel) == _sha((root / rel).read_bytes())
    # every folder the new walk made a record of, with the same stat and entries
    assert {k: (v[0][1], v[1], v[2]) for k, v in now.folders.items()} == {
        k: (v[0][1], v[1], v[2]) for k, v in fresh.folders.items()
    }
    monkeypatch.setattr(UploadsIndex, "RACY_NS", 10**12)  # every folder counts as too recent
    listed.clear()
    UploadsIndex(root, earlier=now)
    assert len(listed) == 10
