"""The relink's second walk of the uploads folder (after it wrote files) reads again only what it
cannot know: :meth:`recovery.files.uploads.UploadsIndex.adopt_hashes`."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

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
