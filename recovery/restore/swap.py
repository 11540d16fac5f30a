"""Restore and undo as one atomic switch: stage the restored database beside the live one, then
swap it in, so the live name denotes at every instant either the old database or the complete
restored one.

The engine does the engine-specific half (:meth:`~recovery.engine.base.Engine.stage_restore`,
:meth:`~recovery.engine.base.Engine.swap_in`: for SQLite a fsynced copy renamed over the file,
for PostgreSQL a new database and a rename inside the server); this module is what the rollback
and ``recovery undo`` call, with a database named by a path, a URL or an engine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from collections.abc import Callable

from recovery.engine import open_engine
from recovery.engine.base import Engine, Staged
from recovery.errors import RecoveryError


def staged_path(db: str | os.PathLike[str] | Engine, purpose: str = "restore") -> Path:
    """Where the restored (``purpose="restore"``) or undo (``"undo"``) file waits beside the SQLite
    ``db`` until it is renamed in."""
    engine = open_engine(db)
    return engine.staging_path(purpose)  # type: ignore[attr-defined]


def stage_restore(
    backup: Path, db: str | os.PathLike[str] | Engine, prepare: Callable[[Path], None] | None = None
) -> tuple[Path, str]:
    """The restored database, ready beside ``db`` but not yet in its place: a consistent copy of
    ``backup`` (after ``prepare(copy)``, e.g. an Alembic downgrade), in ``db``'s journal mode, with
    its owner, group, mode and xattrs, fsynced. Returns its location and sha256. Nothing about
    ``db`` is touched, so this can run while the extract still reads the live data."""
    staged = open_engine(db).stage_restore(backup, prepare)
    return staged.path, staged.sha256


def swap_in(staged: Path, db: str | os.PathLike[str] | Engine, window: Any = None) -> None:
    """Switch the staged copy in as ``db`` (:meth:`~recovery.engine.base.Engine.swap_in`): the live
    database is at every moment either the old one or the complete restored one. With a
    ``window`` (our write lock, held since the safety copy) the swap happens under that lock and
    the replaced file stays open for the late check."""
    open_engine(db).swap_in(Staged(str(staged), ""), window)


def restore_atomically(
    backup: Path,
    db: str | os.PathLike[str] | Engine,
    prepare: Callable[[Path], None] | None = None,
    window: Any = None,
) -> str:
    """Replace ``db`` with a consistent copy of ``backup`` (after ``prepare(copy)``): the live
    database is at every moment either the old one or the complete restored one. Returns the
    restored copy's sha256."""
    engine = open_engine(db)
    staged = engine.stage_restore(backup, prepare)
    engine.swap_in(staged, window)
    return staged.sha256


def stage_undo(safety: Path, db: str | os.PathLike[str] | Engine) -> tuple[Path, str]:
    """A consistent copy of ``safety`` beside ``db``, in ``db``'s journal mode, with its owner,
    group and mode, fsynced; returns it and its sha256. A half copy a killed undo left (its
    writer gone) is removed first; a failed staging leaves nothing behind."""
    engine = open_engine(db)
    tmp = staged_path(engine, "undo")
    for left in tmp.parent.glob(f".{tmp.name}.tmp-*"):  # a killed undo's half copy
        pid = left.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not writer_alive(int(pid), left.lstat().st_mtime):
            left.unlink(missing_ok=True)
    staged = engine.stage_restore(safety, None, purpose="undo")
    return staged.path, staged.sha256


def fingerprint(db: str | os.PathLike[str] | Engine) -> dict[str, Any]:
    """What the database holds, as bytes (:meth:`~recovery.engine.base.Engine.fingerprint`): equal
    fingerprints mean nothing was committed in between (a read leaves them unchanged)."""
    return open_engine(db).fingerprint()


def refuse_holders(
    db: str | os.PathLike[str] | Engine,
    consequence: str,
    hint: str,
    force: bool = False,
    ignore_own_guard: bool = False,
) -> list[Any]:
    """Every other process or session that has ``db`` open (:meth:`~recovery.engine.base.Engine.holders`):
    refused, each named (``consequence`` ends the line), unless ``force`` (then returned)."""
    engine = open_engine(db)
    holders = engine.holders(ignore_own_guard)
    if holders and not force:
        raise RecoveryError(engine.describe_holders(holders) + consequence, hint)
    return holders


def writer_alive(pid: int, made: float) -> bool:
    """Whether process ``pid`` can be the one that made a file at time ``made``: it exists, is not
    a zombie, and started before the file (a pid reused since names a newer process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc: the pid alone
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False
    try:
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return True
    return started <= made + 1.0  # btime has one-second resolution
