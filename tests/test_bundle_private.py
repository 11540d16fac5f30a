"""``store.private`` (the seal's first step): every folder ``0700``, every file ``0600``, at any
depth, and a symbolic link is neither changed nor followed (an upload may be a link to a file or
a folder outside the bundle: those keep their modes and are not entered)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from recovery.bundle.store import private


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_private_reaches_every_depth_and_never_follows_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "secret.txt").write_text("x")
    os.chmod(outside / "secret.txt", 0o644)
    os.chmod(outside / "inner", 0o755)
    bundle = tmp_path / "bundle"
    deep = bundle / "files" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (bundle / "rows.db").write_text("r")
    (deep / "drawing.pdf").write_text("d")
    os.chmod(deep / "drawing.pdf", 0o644)
    os.chmod(deep, 0o000)  # a folder nobody may list: made 0700 before it is listed
    os.chmod(bundle, 0o755)
    (bundle / "files" / "to-file").symlink_to(outside / "secret.txt")
    (bundle / "files" / "a" / "to-dir").symlink_to(outside)
    private(bundle)
    dirs = [bundle, bundle / "files", bundle / "files" / "a", bundle / "files" / "a" / "b", deep]
    assert {_mode(d) for d in dirs} == {0o700}
    assert {_mode(f) for f in (bundle / "rows.db", deep / "drawing.pdf")} == {0o600}
    assert _mode(outside / "secret.txt") == 0o644  # the link's target is untouched
    assert _mode(outside / "inner") == 0o755  # the linked folder was not entered
