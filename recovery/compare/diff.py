"""``recovery diff``: schema diff + row diff of a backup against the live database.

:func:`analyse` opens both inputs read-only and resolves schemas, the schema diff and the column
mapping; ``diff`` and ``extract`` both start from it.
"""

from __future__ import annotations

import contextvars
import json
import os
import sqlite3
import tempfile
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlglot import exp

from recovery.engine.base import Connection
from recovery.compare.changes import ChangeSet, diff_rows
from recovery.errors import RecoveryError
from recovery.model.kinds import RowKind
from recovery.compare.evidence import verify
from recovery.migrate.replay import SCHEMA as REPLAY_SCHEMA, Replayed
from recovery.transpile.mapping import ColumnMapping, UserMapping, load_mapping, resolve
from recovery.engine.schema import Schema, reflect
from recovery.compare.schemadiff import SchemaDiff, compare
from recovery.capture.manifest import deploy_time_of
from recovery.engine.sqlbuild import qualify_columns, sql, table
from recovery.engine import open_engine
from recovery.engine.sqlite import SQLiteEngine
from recovery.compare.timestamps import parse_since


@dataclass
class Analysis:
    """Both inputs opened read-only and understood. Close it when done."""

    backup: Path
    live: Path
    pair: Connection
    old: Schema
    new: Schema
    schema_diff: SchemaDiff
    mapping: ColumnMapping
    user_mapping: UserMapping
    since_jd: float | None
    since: str | None
    replay: Replayed | None = None
    """The upgrade replayed on a copy of the backup, attached to ``pair`` (None without one)."""

    def close(self) -> None:
        self.pair.close()

    def live_name(self, name: str) -> str:
        """The live table holding old table ``name``'s rows (its new name after a table rename)."""
        tm = self.mapping.tables.get(name)
        return tm.source_table if tm is not None and self.old.table(name) is not None else name

    @property
    def bundle_tables(self) -> list[str]:
        """The live data tables, a renamed one under its old (backup) name: the names of the
        bundle's tables, so a renamed table's rows are carried like any shared table's."""
        renamed = {tm.new_table: n for n, tm in self.mapping.tables.items() if tm.new_table}
        return [renamed.get(n, n) for n in self.new.data_tables]

    def __enter__(self) -> Analysis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def analyse(
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    since: str | None = None,
    mapping: str | os.PathLike[str] | None = None,
    lineage: dict[str, dict[str, exp.Expression]]
    | Callable[[], dict[str, dict[str, exp.Expression]] | None]
    | None = None,
    trust_mapping: bool = False,
    mapped: Callable[[Analysis], None] | None = None,
) -> Analysis:
    """Open both inputs read-only and resolve the schemas, the schema diff and the column mapping,
    every rule checked against the data (:mod:`recovery.compare.evidence`): a rule the unchanged rows
    contradict is refused (exit 2) unless ``trust_mapping``. ``lineage``: the migrations' rules, or
    a function that waits for them (called once the schemas are read and compared, so a lineage
    still being derived on another thread overlaps that work).

    ``mapped``: called with the analysis whose mapping is resolved but not yet checked (the
    checks may refuse it, or infer rules that change it) just before the checks run on its
    ``pair``: a caller may open its transaction on the pair there and start work that overlaps
    the checks, as long as it holds that work to the returned (checked) mapping."""
    backup_p, live_p = Path(backup), Path(live)
    user = load_mapping(mapping)
    since_text = since if since is not None else deploy_time_of(backup_p)
    since_jd, since_norm = parse_since(since_text) if since_text is not None else (None, None)
    old_engine, new_engine = open_engine(backup_p), open_engine(live_p)
    old_conn = old_engine.connect_readonly("backup")
    new_conn = new_engine.connect_readonly("live database")
    try:
        with database_errors(backup_p, live_p):
            old, new = reflect(old_conn), reflect(new_conn)
        shared = set(old.data_tables) & set(new.data_tables)
        pair = new_engine.open_pair(old_engine)
        try:
            with database_errors(backup_p, live_p):
                sdiff = compare(pair, old_conn, new_conn, old, new, user, since_jd)
                if not shared and not sdiff.table_renames:  # a renamed table counts as shared
                    raise RecoveryError(
                        f"{backup_p} and {live_p} have no table in common",
                        "is the backup of the same application?",
                    )
                rules = lineage() if callable(lineage) else lineage
                cmap = resolve(
                    old, new, user, rules, sdiff.renames_by_table(), sdiff.table_renames_by_old()
                )
                check_user_expressions(pair, user, new, cmap)
            if mapped is not None:  # (its own failures are its own, not the inputs')
                pre = Analysis(
                    backup_p, live_p, pair, old, new, sdiff, cmap, user, since_jd, since_norm
                )
                mapped(pre)
            with database_errors(backup_p, live_p):
                cmap = verify(pair, old, new, cmap, since_jd, trust_mapping)
        except BaseException:
            pair.close()
            raise
    finally:
        old_conn.close()
        new_conn.close()
    return Analysis(backup_p, live_p, pair, old, new, sdiff, cmap, user, since_jd, since_norm)


@contextmanager
def database_errors(backup: Path, live: Path) -> Iterator[None]:
    """Turn SQLite failures met while reading the inputs (a page that is malformed deep inside the
    file, a lock held too long) into one-line errors naming the file that is at fault."""
    try:
        yield
    except (sqlite3.Error, sa_exc.DBAPIError) as exc:
        orig = getattr(exc, "orig", None) or exc
        culprit = _first_damaged(backup, live)
        where = f"{culprit}" if culprit else f"{backup} / {live}"
        raise RecoveryError(
            f"cannot read {where}: {str(orig).splitlines()[0]}",
            "is it corrupt, truncated or locked? run PRAGMA integrity_check on it",
        ) from None


def _first_damaged(*paths: Path) -> Path | None:
    for p in paths:
        try:
            with open_engine(p).readonly() as conn:
                if conn.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
                    return p
        except (RecoveryError, sqlite3.Error):
            return p
    return None


def check_user_expressions(
    pair: Connection, user: UserMapping, new: Schema, cmap: ColumnMapping | None = None
) -> None:
    """Evaluate every mapping-file expression once against the live table, so that an unknown
    function or a refused one fails here, named, rather than halfway through the diff."""
    for tname, tm in user.tables.items():
        live_name = (
            cmap.tables[tname].source_table if cmap is not None and tname in cmap.tables else tname
        )
        if tm.skip or new.table(live_name) is None:
            continue
        for cname, expression in tm.columns.items():
            q = (
                exp.select(qualify_columns(expression, "n"))
                .from_(table(live_name, "new", "n"))
                .limit(1)
            )
            try:
                pair.execute(sql(q)).fetchall()
            except sqlite3.Error as exc:
                raise RecoveryError(
                    f"mapping file {user.path} [tables.{tname}.columns] {cname}: "
                    f"{expression.sql(dialect='sqlite')!r} fails in SQLite: {exc}",
                    "use columns, literals, operators and SQLite's scalar functions",
                ) from None


@dataclass(frozen=True)
class DiffResult:
    backup: Path
    live: Path
    schema: SchemaDiff
    changes: ChangeSet
    mapping: ColumnMapping
    since: str | None

    def to_dict(self, rows: bool = False) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        for name, t in sorted(self.changes.tables.items()):
            entry: dict[str, Any] = {
                "key": list(t.key),
                "keyed_by": t.keyed_by,
                "status": t.status,
                RowKind.INSERTED: t.inserted,
                RowKind.UPDATED: t.updated,
                RowKind.DELETED: t.deleted,
            }
            if t.uncompared_columns:
                entry["uncompared_columns"] = list(t.uncompared_columns)
            if t.timestamp_columns:
                entry["timestamp_columns"] = t.timestamp_columns
            if t.after_deploy is not None:
                entry["after_deploy"] = t.after_deploy
            if t.status == "compared":
                entry["changed_only_in_new_columns"] = t.changed_only_in_new_columns
                entry["values_at_risk"] = t.values_at_risk
                entry["filled_by_upgrade"] = t.filled_by_upgrade
            tm = self.mapping.tables.get(name)
            if tm is not None and tm.new_table:
                entry["renamed_to"] = tm.new_table
            if rows and t.rows is not None:
                entry["rows"] = [
                    {
                        "kind": r.kind,
                        "key": list(r.key),
                        "after_deploy": r.after_deploy,
                        "changes": {
                            c.column: {"old": _jsonable(c.old), "new": _jsonable(c.new)}
                            for c in r.cells
                        },
                    }
                    for r in t.rows
                ]
            tables[name] = entry
        return {
            "backup": str(self.backup),
            "live": str(self.live),
            "since": self.since,
            "schema": self.schema.to_dict(),
            "mapping": self.mapping.to_dict(),
            "tables": tables,
            "totals": {
                k: sum(getattr(t, k) for t in self.changes.tables.values())
                for k in (RowKind.INSERTED, RowKind.UPDATED, RowKind.DELETED)
            },
            "at_risk": {
                k: sum(getattr(t, k) for t in self.changes.tables.values())
                for k in ("changed_only_in_new_columns", "values_at_risk")
            },
            "filled_by_upgrade": self.changes.filled_by_upgrade,
        }

    def csv_rows(self) -> Iterator[dict[str, Any]]:
        """One row per changed row (``--csv``)."""
        for name, t in sorted(self.changes.tables.items()):
            for r in t.rows or ():
                yield {
                    "table": name,
                    "kind": r.kind,
                    "key": json.dumps(list(r.key), ensure_ascii=False),
                    "after_deploy": "" if r.after_deploy is None else str(r.after_deploy).lower(),
                    "columns": ";".join(c.column for c in r.cells),
                    "old": json.dumps(
                        {c.column: _jsonable(c.old) for c in r.cells}, ensure_ascii=False
                    )
                    if r.cells
                    else "",
                    "new": json.dumps(
                        {c.column: _jsonable(c.new) for c in r.cells}, ensure_ascii=False
                    )
                    if r.cells
                    else "",
                }


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"hex": v.hex()}
    return v


def diff(
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    since: str | None = None,
    tables: list[str] | None = None,
    mapping: str | os.PathLike[str] | None = None,
    rows: bool = False,
    alembic_ini: str | os.PathLike[str] | None = None,
    trust_mapping: bool = False,
) -> DiffResult:
    """Compare ``backup`` with ``live`` (both opened read-only): schema, then rows per table.
    ``alembic_ini`` adds the migrations' lineage rules, as for ``extract``."""
    lineage = None
    if alembic_ini is not None:
        from recovery.migrate.migrations import derive_lineage

        lineage, _report = derive_lineage(alembic_ini, backup, live, keep_child=True)
    with tempfile.TemporaryDirectory(prefix="recovery-replay-") as tmp, ExitStack() as stack:
        if alembic_ini is not None:  # the lineage's child, if the replay below never adopts it
            from recovery.migrate.sandbox import release_spare

            stack.callback(release_spare)
        # the counting's child starts before the analysis; a replayed upgrade is bounded by the
        # analysis, so with one the child is started later, with the replay attached
        child = _start_child(backup, live, None) if alembic_ini is None else None
        if child is not None:
            stack.callback(child.close)  # once more if the counting took and closed it: harmless
        with analyse(backup, live, since, mapping, lineage, trust_mapping) as a:
            unknown = [t for t in tables or [] if t not in a.old.tables and t not in a.new.tables]
            if unknown:
                raise RecoveryError(
                    f"--table {unknown[0]} is in neither database", "check the table name"
                )
            replay = replayed_upgrade(alembic_ini, backup, live, tmp, a)
            if replay is not None:
                replay.attach(a.pair)
                a.replay = replay
            with database_errors(a.backup, a.live):
                changes = diff_rows(
                    a.pair,
                    a.old,
                    a.new,
                    a.mapping,
                    tables,
                    a.since_jd,
                    rows,
                    a.since,
                    more=_more_pairs(a, replay, child),
                    replay=replay,
                )
            return DiffResult(a.backup, a.live, a.schema_diff, changes, a.mapping, a.since)


def replayed_upgrade(
    alembic_ini: str | os.PathLike[str] | None,
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    a: Analysis | None = None,
    into: Path | None = None,
    started: Any = None,
) -> Replayed | None:
    """The upgrade replayed in the sandbox on a copy of ``backup`` in ``folder``
    (:mod:`recovery.migrate.replay`), or None without migrations or when the replay failed. With
    the analysis ``a`` the copy is bounded to the rows the comparison asks about
    (:func:`replay_needs`), else it is the whole backup. ``started``: a sandbox already started
    for ``into`` (:func:`recovery.migrate.replay.start_sandbox`), owned (closed) from here on."""
    from recovery.migrate.replay import replay_upgrade

    if alembic_ini is None:
        if started is not None:
            started.close()
        return None
    try:
        needs, keys = replay_needs(a) if a is not None else (None, None)
    except BaseException:
        if started is not None:
            started.close()
        raise
    path = replay_upgrade(alembic_ini, backup, live, folder, needs, keys, into, started)
    return Replayed(path) if path is not None else None


def replay_needs(a: Analysis) -> tuple[dict[str, exp.Expression], dict[str, tuple[str, ...]]]:
    """Per backup table, the condition on its row ``o`` selecting the rows whose replayed values
    may be asked for (:func:`recovery.compare.changes.replay_needs`); and the live schema's
    primary keys under both the backup's and the live name (the migrations' statements name
    either)."""
    from recovery.compare.changes import replay_needs as table_needs

    needs: dict[str, exp.Expression] = {}
    keys: dict[str, tuple[str, ...]] = {}
    for name, old_t in a.old.tables.items():
        new_t = a.new.tables.get(a.live_name(name))
        if new_t is None:
            continue
        keys[name] = keys[new_t.name] = new_t.key
        cond = table_needs(old_t, new_t, a.mapping.tables.get(name))
        if cond is not None:
            needs[name] = cond
    return needs, keys


@dataclass
class PendingReplay:
    """The replayed upgrade running on another thread (its work is a child process and SQLite),
    written into :attr:`path`, which exists from the start so that it can be ATTACHed before
    the caller's transaction begins and read once :meth:`result` returned."""

    path: Path
    future: Future[Replayed | None]
    started: Any = None
    """The sandbox started for it beforehand (the replay closes it; :meth:`wait` too, for a
    replay cancelled before it began)."""

    def result(self) -> Replayed | None:
        return self.future.result()

    def wait(self) -> None:
        """Block until the work is over, whatever its outcome (nothing outlives the caller)."""
        if not self.future.cancel():
            self.future.exception()
        if self.started is not None:
            self.started.close()


def replay_path(folder: str | os.PathLike[str]) -> Path:
    """The file :func:`start_replayed_upgrade` writes the replayed copy into."""
    return Path(folder) / "replayed-upgrade.db"


def start_replayed_upgrade(
    alembic_ini: str | os.PathLike[str],
    a: Analysis,
    folder: str | os.PathLike[str],
    started: Any = None,
) -> PendingReplay:
    """:func:`replayed_upgrade` (bounded by ``a``) started on its own thread. ``started``: a
    sandbox already started for :func:`replay_path` (owned from here on)."""
    path = replay_path(folder)
    path.touch()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recovery-replay")
    # in the caller's context: the files a ``protecting`` block names stay protected in the thread
    try:
        future = pool.submit(
            contextvars.copy_context().run,
            replayed_upgrade,
            alembic_ini,
            a.backup,
            a.live,
            folder,
            a,
            path,
            started,
        )
    except BaseException:
        if started is not None:
            started.close()
        raise
    pool.shutdown(wait=False)
    return PendingReplay(path, future, started)


def _child_attach(
    backup: str | os.PathLike[str], live: str | os.PathLike[str], replay: Replayed | None
) -> list[tuple[str, str]] | None:
    """What a :class:`~recovery.engine.childpair.ChildPair` attaches for this pair: the same
    read-only URIs under the pair's names; None unless both inputs are SQLite files."""
    old_e, new_e = open_engine(backup), open_engine(live)
    if not (isinstance(new_e, SQLiteEngine) and isinstance(old_e, SQLiteEngine)):
        return None
    from recovery.engine.sqlite_io import readonly_uri

    attach = [("old", readonly_uri(Path(backup))), ("new", readonly_uri(Path(live)))]
    if replay is not None:
        attach.append((REPLAY_SCHEMA, readonly_uri(replay.path)))
    return attach


def _start_child(
    backup: str | os.PathLike[str], live: str | os.PathLike[str], replay: Replayed | None
) -> Any:
    """The counting's child process, started before the analysis so that its start-up overlaps
    it (:class:`~recovery.engine.childpair.ChildPair` with ``wait=False``); None when the inputs
    are not SQLite files or no process can be started (a thread connection counts instead)."""
    try:
        attach = _child_attach(backup, live, replay)
    except (RecoveryError, OSError, sqlite3.Error):
        return None  # a missing, unreadable or non-SQLite input: the analysis names what is wrong
    if attach is None:
        return None
    from recovery.engine.childpair import ChildPair

    try:
        return ChildPair(attach, wait=False)
    except (OSError, sqlite3.Error):
        return None


def _more_pairs(a: Analysis, replay: Replayed | None, child: Any = None) -> Callable[[], Any]:
    """The factory of further connections to the pair for the counting workers: the first one a
    child process (:class:`recovery.engine.childpair.ChildPair`: threads of one process do not
    scale on SQLite statements, processes do; ``child`` when one was started early), the others
    thread connections; a server engine gets thread connections only."""
    calls = itertools.count()

    def make() -> Any:
        old_e, new_e = open_engine(a.backup), open_engine(a.live)
        first = next(calls) == 0
        if first and child is not None:
            try:
                return child.ready()
            except (OSError, sqlite3.Error):
                pass  # it could not attach: a thread connection counts the same
        elif first and isinstance(new_e, SQLiteEngine) and isinstance(old_e, SQLiteEngine):
            from recovery.engine.childpair import ChildPair

            attach = _child_attach(a.backup, a.live, replay)
            try:
                return ChildPair(attach or [])
            except (OSError, sqlite3.Error):
                pass  # no child process here: a thread connection counts the same, on a shared core
        return _with_replay(new_e.open_pair(old_e), replay)

    return make


def _with_replay(conn: Connection, replay: Replayed | None) -> Connection:
    return replay.attach(conn) if replay is not None else conn
