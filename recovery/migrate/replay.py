"""The upgrade replayed on a scratch copy of the backup: what the migrations themselves write.

A value in a column only the new schema has is a user's only when it differs from what the
upgrade produces for that row. :func:`replay_upgrade` copies the backup, upgrades the copy to the
live database's revision with the application's own migrations in the sandbox
(:mod:`recovery.migrate.sandbox`, never in-process), and returns the copy; callers ATTACH it read-only
(schema :data:`SCHEMA`) and compare set-based in SQL (:func:`recovery.compare.changes.user_value`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlglot import exp

from recovery.engine.base import Connection
from recovery.engine import open_engine
from recovery.errors import RecoveryError
from recovery.migrate import bounded
from recovery.migrate.sandbox import ReusedChildFailed

if TYPE_CHECKING:
    from recovery.migrate.sandbox import Sandbox

SCHEMA = "replayed"
"""The schema name the replayed copy is attached under (read-only)."""

log = logging.getLogger(__name__)


def replay_upgrade(
    alembic_ini: str | os.PathLike[str],
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    needs: dict[str, exp.Expression] | None = None,
    keys: dict[str, tuple[str, ...]] | None = None,
    into: Path | None = None,
    started: Sandbox | None = None,
) -> Path | None:
    """A copy of ``backup`` upgraded to ``live``'s revision in the sandbox, or None (with one line
    on stderr) when the revisions are unknown or the application's upgrade fails: then nothing is
    verified and the callers fall back to "filled by the upgrade, not verified".

    With ``needs`` (backup table → condition on its row ``o`` selecting the rows whose replayed
    values will be asked for, :func:`recovery.compare.changes.replay_needs`) the copy is bounded
    (:mod:`recovery.migrate.bounded`): only those rows and their FK closure, every other table
    whole; the migrations' statements are judged, and when the rule cannot vouch for the bounded
    copy the upgrade is replayed again on a full copy. ``keys``: the live schema's primary keys.
    :data:`~recovery.migrate.bounded.FULL_ENV` set to ``1`` always uses the full copy.

    ``into``: the file to write (an existing, possibly empty file is rewritten in place, so a
    connection that attached it beforehand reads the result); default ``folder``/replayed-upgrade.db.

    ``started``: a sandbox already started for ``into`` with ``backup`` and ``live`` protected
    (:func:`start_sandbox`, so that its child's start-up is over when the upgrade is asked for);
    this function owns it from the call on and closes it in every case."""
    from recovery.engine.schema import alembic_revision

    with _closing(started):
        with open_engine(backup).readonly("backup") as b:
            old_rev = alembic_revision(b)
        with open_engine(live).readonly("live database") as n:
            new_rev = alembic_revision(n)
        if old_rev is None or new_rev is None:
            return None
        target = into if into is not None else Path(folder) / "replayed-upgrade.db"
        from recovery.engine.sqlite import SQLiteEngine

        if not isinstance(open_engine(backup), SQLiteEngine) or old_rev == new_rev:
            _close(started)
            started = None
        if not isinstance(open_engine(backup), SQLiteEngine):
            target = open_engine(backup).snapshot(target, "backup")
            with _sandbox(alembic_ini, target, backup, live, old_rev != new_rev, adopt=False) as sb:
                return target if _upgrade(sb, new_rev) is not None else None
        return _replay_sqlite(
            alembic_ini, backup, live, target, old_rev, new_rev, needs, keys, started
        )


def _replay_sqlite(
    alembic_ini: str | os.PathLike[str],
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    target: Path,
    old_rev: str,
    new_rev: str,
    needs: dict[str, exp.Expression] | None,
    keys: dict[str, tuple[str, ...]] | None,
    started: Sandbox | None,
) -> Path | None:
    """:func:`replay_upgrade` of a SQLite backup into ``target`` (in ``started`` when given)."""
    # the child starts (Python, Alembic, the app's imports) while the copy is written
    with (
        _given(started)
        if started is not None
        else _sandbox(alembic_ini, target, backup, live, old_rev != new_rev)
    ) as sb:
        if needs is not None and os.environ.get(bounded.FULL_ENV) != "1":
            done = _replay_bounded(backup, live, target, new_rev, needs, keys, sb)
            if done:
                return target
        for _ in range(2):  # (twice only when the lineage's child failed it: a new child)
            _full_copy(Path(backup), target)
            try:
                return target if _upgrade(sb, new_rev) is not None else None
            except ReusedChildFailed:
                continue
        raise AssertionError("a new child never raises ReusedChildFailed")


def _replay_bounded(
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    target: Path,
    new_rev: str,
    needs: dict[str, exp.Expression],
    keys: dict[str, tuple[str, ...]] | None,
    sb: Sandbox | None,
) -> bool:
    """The upgrade replayed on the bounded copy in ``target`` (True), or False when there is no
    bounded copy, the upgrade failed on it or :func:`bounded.judge` cannot vouch for it (the
    caller replays on a full copy). A failure in the lineage's child (``ReusedChildFailed``) is
    replayed once more on a new bounded copy, in a new child."""
    for _ in range(2):
        _empty(target)
        try:
            copy = bounded.build(Path(backup), Path(live), target, needs)
        except sqlite3.Error as exc:  # e.g. DDL naming a collation only the app registers
            log.info("recovery: no bounded copy of the backup (%s); replaying on a full copy", exc)
            return False
        if copy is None:
            return False
        try:
            statements = _upgrade(sb, new_rev, reads=True)
        except ReusedChildFailed:
            continue
        why = (
            "the upgrade failed on the bounded copy"
            if statements is None
            else bounded.judge(statements, copy, keys or {})
        )
        if why is None:
            log.debug("recovery: upgrade replayed on %s rows of the backup", copy.rows)
            return True
        log.info("recovery: the upgrade is replayed on a full copy of the backup: %s", why)
        return False
    raise AssertionError("a new child never raises ReusedChildFailed")


def start_sandbox(
    alembic_ini: str | os.PathLike[str],
    target: Path,
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
) -> Sandbox | None:
    """The sandbox :func:`replay_upgrade` would start for ``target``, started now (its child
    imports Python, SQLAlchemy and Alembic while the caller does other work); None when it
    cannot be started (a missing ini…): :func:`replay_upgrade` then starts its own and reports
    what is wrong as it always did. Hand it to :func:`replay_upgrade` (``started``), or close it."""
    from recovery.migrate.sandbox import Sandbox

    try:
        return Sandbox(
            Path(alembic_ini), target, [Path(backup), Path(live)], adopt=True
        ).__enter__()
    except (RecoveryError, OSError):
        return None


def _close(sb: Sandbox | None) -> None:
    if sb is not None:
        sb.close()


@contextmanager
def _closing(sb: Sandbox | None) -> Iterator[None]:
    """Close ``sb`` (if still open) when the block ends, however it ends."""
    try:
        yield
    finally:
        _close(sb)


@contextmanager
def _given(sb: Sandbox) -> Iterator[Sandbox]:
    """A started sandbox (entered once, by :func:`start_sandbox`: entering it again would start a
    second child) used as :func:`_sandbox` uses a new one: closed and checked at the end."""
    try:
        yield sb
    except BaseException as exc:
        sb.__exit__(type(exc), exc, exc.__traceback__)
        raise
    sb.__exit__(None, None, None)


@contextmanager
def _sandbox(
    alembic_ini: str | os.PathLike[str],
    target: Path,
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    needed: bool,
    adopt: bool = True,
) -> Iterator[Sandbox | None]:
    """The sandbox child for ``target`` (None when the revisions are the same: nothing to run);
    ``adopt``: the lineage's child when it was parked (:attr:`Sandbox.adopt`)."""
    from recovery.migrate.sandbox import Sandbox

    if not needed:
        yield None
        return
    with Sandbox(Path(alembic_ini), target, [Path(backup), Path(live)], adopt=adopt) as sb:
        yield sb


def _empty(path: Path) -> None:
    """``path`` as an empty file (same inode when it exists)."""
    with open(path, "wb"):
        pass


def _full_copy(backup: Path, target: Path) -> None:
    """Every page of ``backup`` written into ``target`` in place (SQLite's backup API): a connection
    that attached ``target`` before sees the copy, not a file that was replaced under it."""
    from recovery.engine.sqlite_io import open_readonly

    _empty(target)
    source = open_readonly(backup, "backup")
    try:
        dst = sqlite3.connect(str(target), isolation_level=None)
        try:
            source.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        source.close()


def _upgrade(sb: Sandbox | None, new_rev: str, reads: bool = False) -> list[str] | None:
    """The app's upgrade run in ``sb`` on its copy: the statements it ran ([] without a sandbox:
    the revisions are the same), or None when it failed (with one line on stderr unless
    ``reads``: a failure on the bounded copy is retried on the full one). Raises
    :class:`ReusedChildFailed` when it failed in the lineage's child: the caller replays it on a
    new copy, in the new child the sandbox starts."""
    from recovery.migrate.sandbox import MigrationFailed

    if sb is None:
        return []
    try:
        return sb.migrate("upgrade", new_rev, reads=reads)
    except ReusedChildFailed:
        raise
    except MigrationFailed as err:
        if reads:
            return None
        log.warning(
            f"recovery: replaying the upgrade on a copy of the backup failed ({err.one_line()}); values the "
            "upgrade may have filled are listed as not verified"
        )
        return None


class Replayed:
    """The replayed copy's tables and columns, and how to ATTACH it read-only as :data:`SCHEMA`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open_engine(self.path).readonly("replayed copy") as c:
            names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            self.columns: dict[str, frozenset[str]] = {
                n: frozenset(r[0] for r in c.execute("SELECT name FROM pragma_table_info(?)", (n,)))
                for n in names
            }

    def attach(self, conn: Connection) -> Connection:
        from recovery.engine.sqlite_io import readonly_uri

        conn.execute("ATTACH DATABASE ? AS " + SCHEMA, (readonly_uri(self.path),))
        return conn

    def covers(self, table: str, columns: list[str] | tuple[str, ...]) -> bool:
        """The replayed copy has ``table`` with every one of ``columns``."""
        have = self.columns.get(table)
        return have is not None and all(c in have for c in columns)
