"""The changed-row lists of the extract's large tables, read by two worker processes.

A table keyed by the rowid on both sides is extracted from ONE list of its updated and deleted
keys: a ``LEFT JOIN`` of the backup table to the live one, in rowid order
(:func:`changed_list_query`). On the 1M-part world those joins were most of the extract's SQL,
run one after the other by the extract's connection on one core. Here each large table's list is
made by one of two workers into a private scratch file per worker, while the extract's
connection checks the rules and goes on with the tables before it; the extract then reads a
whole table's list where the worker wrote it (an early list, which the replay narrows, is copied
into its own temporary table), in the list's order, so every statement after it (and every byte
of the bundle) is what the list made on the extract's connection would have given. A worker is a
:class:`~recovery.engine.childpair.ChildPair` (a bare ``python -I`` with :mod:`sqlite3`, the same
read-only URIs) driven by a thread: two threads of one process running SQLite statements contend
on SQLite's process-wide mutexes, two processes do not.

One instant: the extract's connection opens its transaction and reads the live file before the
workers start. A live file in rollback-journal mode cannot take a commit while that read lock is
held; in WAL mode each worker checks, once its own snapshot is fixed, that no commit reached the
live file since just before the extract's (:class:`~recovery.compare.changes.OneInstant`). A worker
that cannot say so, or fails in any way, lists nothing: the extract then makes those lists itself.

One mapping: the workers begin before the rules are checked (the checks may infer a rule, and a
rule is part of a table's condition); each list is a function of its query, and
:meth:`Prelists.hold_to` keeps only the lists whose query is the one the checked mapping asks for,
the others made again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlglot import exp

from recovery.compare.changes import OneInstant, TableSides, read_schema_of
from recovery.engine.base import Connection
from recovery.engine.sqlbuild import sql, table
from recovery.engine.childpair import ChildPair
from recovery.engine.sqlite_io import readonly_uri

log = logging.getLogger(__name__)

WORKERS = 2
"""Worker processes: one per core of the machines the extract is measured on."""
MIN_ROWS = 20_000
"""A table whose backup key span is below this is listed by the extract's own connection (the
copy would cost about what the join does)."""


def list_columns(sure: exp.Expression | None) -> str:
    """The list's columns: key ``k``, deleted ``d`` and, for an early list, surely changed ``u``."""
    return "kdu" if sure is not None else "kd"


def _scan_old(s: TableSides) -> exp.Expression:
    """The backup table read ``NOT INDEXED``: in rowid order, as the anti-join reads it."""
    src = table(s.name, "old", "o")
    src.set("indexed", False)
    return src


def changed_list_query(
    s: TableSides, cond: exp.Expression, sure: exp.Expression | None = None
) -> exp.Select:
    """``old LEFT JOIN new`` of a table keyed by the rowid on both sides (scanned in rowid order,
    each row's live twin found by its rowid): the key of every updated (``d`` 0, ``cond`` holds)
    or deleted (``d`` 1) row, and with ``sure`` a third column ``u``: deleted or ``sure`` holds."""
    okey, nkey = s.old_key[0], s.new_key[0]
    gone = exp.Is(this=nkey.copy(), expression=exp.Null())
    flags: list[exp.Expression] = [gone.copy()]
    if sure is not None:
        flags.append(exp.or_(gone.copy(), exp.Paren(this=sure.copy())))
    return (
        exp.select(okey.copy(), *flags)
        .from_(_scan_old(s), copy=False)
        .join(
            table(s.new_name or s.name, "new", "n"),
            on=exp.EQ(this=okey.copy(), expression=nkey.copy()),
            join_type="left",
            copy=False,
        )
        .where(exp.or_(gone.copy(), exp.Paren(this=cond.copy())), copy=False)
    )


def create_list(conn: Connection, listed: exp.Table, cols: str) -> None:
    """``CREATE TABLE listed`` with the untyped columns ``cols`` (one letter each)."""
    conn.execute(
        sql(
            exp.Create(
                this=exp.Schema(
                    this=listed.copy(),
                    expressions=[
                        exp.ColumnDef(this=exp.to_identifier(c, quoted=True)) for c in cols
                    ],
                ),
                kind="TABLE",
            )
        )
    )


def fill_list(conn: Connection, listed: exp.Table, cols: str, q: exp.Select) -> None:
    """``INSERT INTO listed (cols) q``."""
    conn.execute(
        sql(
            exp.Insert(
                this=exp.Schema(
                    this=listed.copy(),
                    expressions=[exp.to_identifier(c, quoted=True) for c in cols],
                ),
                expression=q,
            )
        )
    )


def copy_query(source: exp.Table, cols: str) -> exp.Select:
    """A worker's list read back in the order it was written (its rowid order)."""
    return (
        exp.select(*[exp.column(c, quoted=True) for c in cols])
        .from_(source.copy())
        .order_by(exp.column("rowid"))
    )


@dataclass(frozen=True)
class ListJob:
    """One table's list: its sides, the condition that calls a matched row changed (a superset
    of it with ``sure`` for an early list), and its backup key span (the job's weight)."""

    table: str
    sides: TableSides
    cond: exp.Expression
    sure: exp.Expression | None
    rows: int

    def query(self) -> exp.Select:
        """What the worker runs (:func:`changed_list_query`): the list is a function of it."""
        return changed_list_query(self.sides, self.cond, self.sure)


def _unreadable(exc: sqlite3.OperationalError) -> bool:
    """A worker's list the extract's connection cannot read now: its file locked (SQLITE_BUSY,
    SQLITE_LOCKED), or its table not found (SQLite's generic error: known by its message)."""
    locked = exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return locked or "no such table" in str(exc)


class Prelists:
    """The lists of ``jobs``, shared out between :data:`WORKERS` worker processes in the order
    the extract needs them (each job to the least loaded worker). Use: :meth:`attach` on the
    extract's connection (outside a transaction), open its transaction and read the live file,
    :meth:`start`; :meth:`hold_to` the lists the extract needs once it knows them (the workers
    then make the lists that adds, after their first ones, and end); :meth:`source` then waits
    for a table's list; :meth:`detach` after COMMIT; :meth:`close` always (it stops and waits for
    the workers)."""

    def __init__(self, folder: Path, jobs: list[ListJob]) -> None:
        workers = min(WORKERS, len(jobs))
        self._loads = [0] * workers
        self._groups: list[list[tuple[ListJob, str]]] = [[] for _ in range(workers)]
        self._where: dict[str, tuple[int, str]] = {}
        for job in jobs:
            self._add(job)
        self.files = [folder / f"changed-lists-{i}.db" for i in range(workers)]
        self.schemas = [f"prelist{i}" for i in range(workers)]
        self._done = [threading.Event() for _ in range(workers)]
        self._ok = [False] * workers
        self._conns: list[ChildPair | None] = [None] * workers
        self._threads: list[threading.Thread] = []
        self._stop = False
        self._held = threading.Event()
        self._instant: OneInstant | None = None
        # (rendered here, before any worker reads the jobs' trees)
        self._queries = {job.table: sql(job.query()) for job in jobs}
        self._dropped: set[str] = set()  # (the names of the lists dropped)

    def _add(self, job: ListJob) -> None:
        i = self._loads.index(min(self._loads))
        listed = f"l{sum(len(g) for g in self._groups)}"  # (a name never used before)
        self._groups[i].append((job, listed))
        self._loads[i] += job.rows
        self._where[job.table] = (i, listed)

    def attach(self, conn: Connection) -> None:
        for path, schema in zip(self.files, self.schemas, strict=True):
            conn.execute("ATTACH DATABASE ? AS " + schema, (str(path),))

    def detach(self, conn: Connection) -> None:
        for schema in self.schemas:
            conn.execute("DETACH DATABASE " + schema)

    def hold_to(self, jobs: list[ListJob]) -> None:
        """Hold the lists to ``jobs`` (the lists as the extract needs them now:
        :func:`recovery.bundle.extract.list_jobs`), each a function of its query: the workers
        begin before the rules are checked, and a check that infers a rule changes a table's
        condition, so its query. A list begun with another query than the one ``jobs`` ask for
        its table (or that they do not ask for) is dropped: never read (:meth:`source` says
        None), skipped by a worker that has not begun it. A job of ``jobs`` no worker has (its
        table's list dropped, or none begun) is added to the least loaded worker, which makes it
        after its first lists. Called once, after :meth:`start` and before :meth:`source`."""
        want = {job.table: sql(job.query()) for job in jobs}
        for t, q in self._queries.items():
            if want.get(t) != q:
                self._dropped.add(self._where.pop(t)[1])
        if self._groups:
            for job in jobs:
                if job.table not in self._where:
                    self._add(job)  # (under a new name: the dropped list may be made already)
        self._held.set()

    def start(self, backup: Path, live: Path, instant: OneInstant | None) -> None:
        """Start the workers; ``instant`` (closed by :meth:`close`): the live file in WAL mode."""
        self._instant = instant
        for i in range(len(self._groups)):
            t = threading.Thread(
                target=self._work, args=(i, backup, live, instant), name=f"recovery-list-{i}"
            )
            t.start()
            self._threads.append(t)

    def _work(self, i: int, backup: Path, live: Path, instant: OneInstant | None) -> None:
        try:
            if self._stop:
                return
            c = ChildPair([("old", readonly_uri(backup)), ("new", readonly_uri(live))])
            self._conns[i] = c
            try:
                c.execute("PRAGMA query_only = OFF")  # (old and new stay read-only: mode=ro)
                c.execute("ATTACH DATABASE ? AS lw", (str(self.files[i]),))
                c.execute("PRAGMA lw.journal_mode = OFF")  # a scratch file, deleted after
                c.execute("PRAGMA lw.synchronous = OFF")
                OneInstant.join(c)  # type: ignore[arg-type]
                if self._stop or (instant is not None and not instant.still()):
                    return  # stopped, or the live file took a commit: not the extract's instant
                made = self._make(c, i, 0)  # the first lists, while the rules are checked
                self._held.wait()
                if made < 0 or self._make(c, i, made) < 0:
                    return
                c.execute("COMMIT")
                self._ok[i] = True
            finally:
                self._conns[i] = None
                c.close()
        except Exception:  # noqa: BLE001 - whatever it was, the extract lists those tables itself
            self._ok[i] = False
        finally:
            self._done[i].set()

    def _make(self, c: ChildPair, i: int, k: int) -> int:
        """Worker ``i`` makes its lists from the ``k``-th on (through ``c``); returns how many
        it has gone through, or -1 when stopped."""
        group = self._groups[i]
        while k < len(group):
            if self._stop:
                return -1
            job, name = group[k]
            k += 1
            if name in self._dropped:
                continue
            cols = list_columns(job.sure)
            listed = table(name, "lw")
            create_list(c, listed, cols)  # type: ignore[arg-type]
            fill_list(c, listed, cols, job.query())  # type: ignore[arg-type]
        return k

    def source(self, name: str, conn: Connection) -> exp.Table | None:
        """The worker's list of table ``name`` once it is there (waits), to read from the
        extract's connection ``conn``; None when ``name`` was not listed, its worker did not
        finish, or ``conn`` does not see the list (:meth:`_seen`): the extract then lists the
        table itself, as for a worker that failed."""
        where = self._where.get(name)
        if where is None:
            return None
        i, listed = where
        self._done[i].wait()
        if not self._ok[i]:
            return None
        made = table(listed, self.schemas[i])
        return made if self._seen(conn, i, made) else None

    def _seen(self, conn: Connection, i: int, made: exp.Table) -> bool:
        """Whether ``conn`` can read the list ``made`` that worker ``i`` committed. The file's
        schema is read first, alone (:func:`~recovery.compare.changes.read_schema_of`): asked for
        directly, the list made SQLite check every attached file, and the replayed upgrade's file,
        held by its child, failed the ask on the 10M world ("no such table: prelist0.l0" after a
        5 s wait, then "database is locked"). A list that cannot be read now (its file locked by
        another holder, its table missing) is not used: the extract lists the table itself."""
        probe = sql(exp.select(exp.Literal.number(1)).from_(made.copy()).limit(0))
        try:
            read_schema_of(conn, self.schemas[i])
            conn.execute(probe).fetchall()
        except sqlite3.OperationalError as exc:
            if not _unreadable(exc):
                raise
            log.debug("the extract cannot read %s.%s: %s", made.db, made.name, exc)
            return False
        return True

    def close(self) -> None:
        """Stop the workers (a child in a statement is ended) and wait for them."""
        self._stop = True
        self._held.set()
        for t, c in zip(self._threads, list(self._conns), strict=False):
            if t.is_alive() and c is not None:
                c.kill()
        for t in self._threads:
            t.join()
        if self._instant is not None:
            self._instant.close()
            self._instant = None
