"""Whether a run folder can be trusted to name the database a command will replace or delete from.

``recovery undo RUN`` and ``recovery apply-deletes RUN`` take the database to write from the run
folder's ``journal.json`` / ``report.json``, and ``undo`` puts the folder's safety copy in place of
that database. The operator usually runs them as root. A run folder that someone else can write
(its owner, or anyone through a group/world-writable folder on the way to it) could name any
database and supply any "safety copy": root would then replace a file of the attacker's choosing
with the attacker's bytes. So, as OpenSSH's ``StrictModes`` does for ``~/.ssh``:

* the run folder and every folder above it is owned by root or by the user running the command;
* none of them is writable by others, or by a group other than root's and the user's own (a
  umask of 002 gives the user's private group write), except a folder above the run folder that
  has the sticky bit (``/tmp``): there others cannot rename or remove what they do not own;
* ``journal.json``, ``report.json``, ``safety/`` and the files in it, when present, are owned by
  root or the user, writable by no one else in the same sense, and not symlinks.

Symlinks on the way are followed (their targets are what is checked), so a run folder reached by a
link is judged by the real folders.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from recovery.errors import RecoveryError

_MEMBERS = ("journal.json", "report.json", "safety")


def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def _shared(st: os.stat_result) -> bool:
    """Writable by others, or by a group that is neither root's nor the user's own."""
    return bool(st.st_mode & stat.S_IWOTH) or bool(
        st.st_mode & stat.S_IWGRP and st.st_gid not in (0, os.getegid())
    )


def _refuse(path: Path, why: str, what: str) -> RecoveryError:
    return RecoveryError(
        f"run folder {path} {why}: a journal there could name any database for `recovery {what}` "
        "to replace; nothing was changed",
        "check the folder's content, then make it yours and not writable by others "
        "(chown, chmod go-w) and run the command again",
    )


def check_run_folder(run_dir: Path, what: str) -> None:
    """Refuse (exit 2) a run folder that anyone but root and the current user could have written."""
    real = Path(os.path.realpath(run_dir))
    chain = [real, *real.parents]
    for i, folder in enumerate(chain):
        try:
            st = os.stat(folder)
        except OSError as exc:
            raise RecoveryError(
                f"run folder {run_dir} cannot be checked ({exc.strerror}: {folder})",
                "pass a run folder you can read",
            ) from None
        if not _owner_ok(st):
            raise _refuse(run_dir, f"is under {folder}, owned by uid {st.st_uid}", what)
        if _shared(st) and not (i > 0 and st.st_mode & stat.S_ISVTX):
            raise _refuse(run_dir, f"is under {folder}, which others can write", what)
    members = [real / m for m in _MEMBERS]
    safety = real / "safety"
    if safety.is_dir() and not safety.is_symlink():
        members += sorted(safety.iterdir())
    for p in members:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(run_dir, f"holds a symlink {p.name}", what)
        if not _owner_ok(st):
            raise _refuse(run_dir, f"holds {p.relative_to(real)}, owned by uid {st.st_uid}", what)
        if _shared(st):
            raise _refuse(run_dir, f"holds {p.relative_to(real)}, which others can write", what)
