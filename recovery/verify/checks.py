"""Verification after a re-import: integrity, foreign keys, alembic revision, row counts.

:func:`verify_file` is the fast form, given the file: ``PRAGMA integrity_check`` and ``PRAGMA
foreign_key_check`` each read the whole database, so they run at the same time on two read-only
connections in two threads (Python's sqlite3 releases the GIL while SQLite works). :func:`verify`
runs the same checks one after the other on a connection the caller already has. Both return the
same dict; each check reads one committed state of the file.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlglot import exp

from recovery.model.outcome import Outcome
from recovery.model.values import RowCountCheck, Verification
from recovery.engine.schema import alembic_revision
from recovery.engine.sqlbuild import col, sql, table
from recovery.engine import open_engine
from recovery.engine.base import Connection, Engine
from recovery.engine.sqlite_io import CommitWatch, file_identity, promise_sha256, sidecars
from recovery.errors import RecoveryError

INTEGRITY_CACHE_KIB = 16 * 1024
"""Page cache of the integrity-check connection. ``integrity_check`` looks every row up in each of
its table's indexes; with SQLite's default 2 MB cache most of those page reads go to the OS, 16 MB
makes it about 10-20 % faster at 1M parts (more helps little). ``mmap_size`` is faster still (~30 %)
but every mapped page counts in the process's resident size, up to the size of the file, so it is
not used. ``foreign_key_check`` gains nothing from either: it keeps the default."""

T = TypeVar("T")


def foreign_key_problems(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute("PRAGMA main.foreign_key_check").fetchmany(limit)
    return [{"table": t, "rowid": r, "parent": p, "fk": fk} for t, r, p, fk in rows]


def ordered_foreign_key_problems(
    conn: Connection, limit: int = 20, tables: list[str] | None = None
) -> list[dict[str, Any]]:
    """``PRAGMA foreign_key_check``'s verdict for the whole ``main`` database, for less CPU: a
    foreign key of one column to its parent's rowid (an ``INTEGER PRIMARY KEY``) is checked as an
    anti-join, ``c.col IS NOT NULL AND NOT EXISTS (parent row with that rowid)``, which SQLite may
    read through an index on the child column, so the parent rows are sought in key order (the
    pragma seeks them in the child's rowid order: at 1M parts ~3× the CPU, most of it page reads);
    every other foreign key (several columns, a parent key that is not its rowid, a parent that
    is no rowid table or does not exist, a child WITHOUT ROWID) through
    ``pragma_foreign_key_check(table)``.

    The same rows: the pragma skips a row whose key has a NULL and looks a non-integer value up
    with numeric affinity applied (``OP_SeekRowid``: no match unless it then is an integer), which
    is what ``=`` against the parent's INTEGER column does. The same shape (``{"table", "rowid",
    "parent", "fk"}``, at most ``limit``); with more than ``limit`` problems, which ones are
    listed and their order may differ from the pragma's (empty exactly when the pragma's is).

    ``tables``: these tables only (their problems as the whole check lists them, in its order);
    the lists of consecutive slices of the tables, joined and cut at ``limit``, are the whole
    check's list."""
    problems: list[dict[str, Any]] = []
    if tables is None:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM main.sqlite_master WHERE type = 'table' ORDER BY rowid"
            )
        ]
    for name in tables:
        fks = _simple_foreign_keys(conn, name)
        if fks is None:  # prepared whatever the count so far: a key no index can serve is an
            rows = conn.execute(  # error, as it is for the pragma on the whole file
                'SELECT "table", rowid, parent, fkid FROM pragma_foreign_key_check(?)', (name,)
            ).fetchmany(max(0, limit - len(problems)))
            problems += [{"table": t, "rowid": r, "parent": p, "fk": fk} for t, r, p, fk in rows]
            continue
        for fkid, column, parent, key in fks:
            if len(problems) >= limit:
                break
            parent_row = (
                exp.select(exp.Literal.number(1))
                .from_(table(parent, "main", "p"))
                .where(exp.EQ(this=col(key, "p"), expression=col(column, "c")))
            )
            q = (
                exp.select(exp.Column(this=exp.to_identifier("rowid"), table=_q("c")))
                .from_(table(name, "main", "c"))
                .where(
                    exp.and_(
                        exp.Not(this=exp.Is(this=col(column, "c"), expression=exp.Null())),
                        exp.Not(this=exp.Exists(this=parent_row)),
                    )
                )
                .limit(limit - len(problems))
            )
            problems += [
                {"table": name, "rowid": r[0], "parent": parent, "fk": fkid}
                for r in conn.execute(sql(q))
            ]
    return problems[:limit]


def _simple_foreign_keys(conn: Connection, name: str) -> list[tuple[int, str, str, str]] | None:
    """(fk id, child column, parent table, parent key) of each foreign key of ``name`` when every
    one is a single column referencing its parent's rowid alias and ``name`` has rowids; None
    otherwise (the caller asks the pragma)."""
    if not _rowid_table(conn, name):
        return None
    cols = {r[0] for r in conn.execute("SELECT name FROM pragma_table_xinfo(?)", (name,))}
    if {c.lower() for c in cols} & {"rowid", "oid", "_rowid_"}:  # c.rowid would be that column
        return None
    by_id: dict[int, list[tuple[str, str, str | None]]] = {}
    for fkid, parent, frm, to in conn.execute(
        'SELECT id, "table", "from", "to" FROM pragma_foreign_key_list(?) ORDER BY id, seq', (name,)
    ):
        by_id.setdefault(fkid, []).append((parent, frm, to))
    simple = []
    for fkid, parts in sorted(by_id.items()):
        if len(parts) != 1:
            return None
        parent, frm, to = parts[0]
        key = _rowid_alias(conn, parent)
        if frm not in cols or key is None or (to is not None and to.lower() != key.lower()):
            return None
        simple.append((fkid, frm, parent, key))
    return simple


def _rowid_table(conn: Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT type, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?", (name,)
    ).fetchone()
    return row is not None and row[0] == "table" and not row[1]


def _rowid_alias(conn: Connection, name: str) -> str | None:
    """The column of rowid table ``name`` that is its rowid (``INTEGER PRIMARY KEY``), or None."""
    if not _rowid_table(conn, name):
        return None
    pk = conn.execute(
        "SELECT name, type FROM pragma_table_info(?) WHERE pk > 0", (name,)
    ).fetchall()
    if len(pk) != 1 or pk[0][1].upper() != "INTEGER":
        return None
    if conn.execute(
        "SELECT 1 FROM pragma_index_list(?) WHERE origin = 'pk'", (name,)
    ).fetchone():  # a PRIMARY KEY with its own index (INTEGER PRIMARY KEY DESC): not the rowid
        return None
    return str(pk[0][0])


def integrity_problems(conn: Connection) -> list[str]:
    """``PRAGMA integrity_check``'s lines: ``["ok"]`` when the file is sound."""
    return [r[0] for r in conn.execute("PRAGMA main.integrity_check").fetchall()]


def verify(conn: Connection, outcome: Outcome, expected_revision: str | None) -> dict[str, Any]:
    """Run every check and return the results; ``ok`` is True only when all pass."""
    return _result(
        integrity_problems(conn),
        foreign_key_problems(conn),
        alembic_revision(conn),
        outcome,
        expected_revision,
    )


def verify_file(
    path: str | os.PathLike[str],
    outcome: Outcome,
    expected_revision: str | None,
    role: str = "database",
    integrity_cache_kib: int = INTEGRITY_CACHE_KIB,
) -> dict[str, Any]:
    """:func:`verify` on the database file ``path``, opened read-only (committed WAL content
    included): the integrity check and the foreign-key check run concurrently, each on its own
    connection, so the whole takes about as long as the slower of the two. ``role`` names the file
    in the error raised when it cannot be opened."""
    engine = open_engine(path)
    with engine.readonly(role) as conn:  # refuses a bad file with one clear line, before any thread
        revision = alembic_revision(conn)
    cache = exp.Pragma(
        this=exp.EQ(
            this=exp.to_identifier("cache_size"),
            expression=exp.Literal.number(-int(integrity_cache_kib)),
        )
    )

    def integrity(conn: sqlite3.Connection) -> list[str]:
        conn.execute(sql(cache))
        return integrity_problems(conn)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify") as pool:
        lines = pool.submit(_on_connection, engine, role, integrity)
        fks = pool.submit(_on_connection, engine, role, foreign_key_problems)
        return _result(lines.result(), fks.result(), revision, outcome, expected_revision)


def _on_connection(engine: Engine, role: str, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work`` on a fresh read-only connection of this thread (a connection stays in its thread;
    for a WAL file in an unwritable folder both threads read the same private copy)."""
    conn = engine.connect_readonly(role)
    try:
        return work(conn)  # type: ignore[arg-type]
    finally:
        conn.close()


def _result(
    integrity: list[str],
    fks: list[dict[str, Any]],
    revision: str | None,
    outcome: Outcome,
    expected_revision: str | None,
) -> dict[str, Any]:
    counts = {}
    for name, t in sorted(outcome.tables.items()):
        expected = t.rows_before + t.inserted - t.deleted
        counts[name] = RowCountCheck(t.rows_before, t.inserted, t.deleted, expected, t.rows_after)
    return Verification(tuple(integrity), tuple(fks), expected_revision, revision, counts).to_dict()


@dataclass
class StagedProof:
    """What was proven of the restored file before it replaced the live DB: the full
    ``integrity_check`` and ``foreign_key_check`` of the staged copy (each on its own connection
    and thread, at the same time, while the safety copy and the extract read), bound to the copy's
    sha256. :func:`verify_written` builds on it."""

    sha256: str | None = None
    integrity: list[str] = field(default_factory=list)
    foreign_keys: list[dict[str, Any]] = field(default_factory=list)
    stat: tuple[int, ...] | None = None
    """The staged file's identity while it was checked (:func:`~recovery.engine.sqlite_io.file_identity`)."""
    basis: dict[str, str] = field(default_factory=dict)
    """Where each check's result comes from: ``"checked"`` (run on the staged copy) or
    ``"snapshot manifest"`` (:func:`snapshot_vouch`), per check (journaled with the restore)."""

    pending: BackupChecks | None = field(default=None, repr=False, compare=False)
    """The checks still running on the backup file itself (:class:`BackupChecks`), whose bytes
    the staged copy was proven to hold; :meth:`settle` takes their results."""

    @property
    def sound(self) -> bool:
        """Both checks passed for the file as staged (waits for checks still running)."""
        self.settle()
        return self.sha256 is not None and self.integrity == ["ok"] and not self.foreign_keys

    def settle(self) -> None:
        """Wait for the checks still running on the backup (:attr:`pending`) and take their
        results; re-raise their error. The proof is void (no sha256) when the backup was not the
        same bytes from before the checks to their end."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        self.integrity, self.foreign_keys, held = pending.result()
        if not held:
            self.sha256, self.stat = None, None

    def abandon(self) -> None:
        """Stop the checks still running on the backup (a run that ends before its restore);
        the proof is then void."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.abandon()
            self.sha256, self.stat = None, None

    def clean_if_decided(self) -> bool:
        """For the re-import into the staged file (:attr:`recovery.reimport.context.Context.fk_clean`,
        asked when its foreign-key check runs, before its COMMIT): both checks passed for the file
        as staged, i.e. as it was right before the re-import's transaction. Never waits for
        checks still running: False while they run on the backup; the FK check then reads every
        key of the rows it updated, as it does with no proof, and goes on to its COMMIT while the
        checks end (the swap still waits for them). Once they have ended, a part that found a
        problem or failed makes the verdict the whole check's, which then runs here, on the
        re-import's thread (a damaged backup: the verdict is not clean either way). At 10M parts the re-import waited 20-25 s here for the last
        part of the bare backup's proof, with one core idle (bench/RESULTS.md, round 14)."""
        pending = self.pending
        if pending is not None and not pending.decided():
            return False
        return self.sound

    def staging(
        self, stage: Callable[..., tuple[Path, str]], backup: str | os.PathLike[str] | None = None
    ) -> Callable[..., tuple[Path, str]]:
        """``stage`` (e.g. ``stage_restore``), then both checks of the file it staged. With
        ``backup`` (the file ``stage`` copied), a check its snapshot manifest recorded for the same
        bytes (:func:`snapshot_vouch`) is taken from the manifest instead of run again."""

        def run(*args: Any, **kwargs: Any) -> tuple[Path, str]:
            manifest = _may_vouch(backup) if backup is not None else None  # read once
            # no manifest to vouch: check the backup itself while it is copied (BackupChecks)
            early = BackupChecks.start(backup) if backup is not None and manifest is None else None
            same = False
            try:
                with ExitStack() as promise:
                    if backup is not None and (manifest is not None or early is not None):
                        promise.enter_context(promise_sha256(backup))  # the extract hashes the
                    tmp, digest = stage(*args, **kwargs)  # backup too: it waits for ours
                    before = file_identity(tmp)
                    vouch = (
                        _vouch(manifest, backup, tmp)
                        if backup is not None and manifest is not None
                        else None
                    )
                    same = early is not None and early.holds_bytes_of(tmp)
            finally:
                if early is not None and not same:  # the staged copy is checked itself below
                    early.abandon()
            if early is not None and same:
                self.pending = early
                self.basis.update(integrity_check="checked", foreign_key_check="checked")
                self.sha256, self.stat = (
                    (digest, before) if file_identity(tmp) == before else (None, None)
                )
                return tmp, digest
            staged = open_engine(tmp)
            if vouch is None:
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="staged-fk") as pool:
                    fks = pool.submit(
                        _on_connection, staged, "staged backup", ordered_foreign_key_problems
                    )
                    self.integrity = _on_connection(staged, "staged backup", _integrity_with_cache)
                    self.foreign_keys = fks.result()
                self.basis.update(integrity_check="checked", foreign_key_check="checked")
            else:
                self.integrity = ["ok"]
                self.basis["integrity_check"] = "snapshot manifest"
                if vouch.foreign_keys is None:  # a manifest from before it recorded them
                    self.foreign_keys = _on_connection(
                        staged, "staged backup", ordered_foreign_key_problems
                    )
                    self.basis["foreign_key_check"] = "checked"
                else:
                    self.foreign_keys = vouch.foreign_keys
                    self.basis["foreign_key_check"] = "snapshot manifest"
            self.sha256, self.stat = (
                (digest, before) if file_identity(tmp) == before else (None, None)
            )
            return tmp, digest

        return run

    def confirm(self, staged: str | os.PathLike[str]) -> bool:
        """Call right before ``staged`` is swapped in: the proof holds only for the file as it was
        checked. Any write to it since (its size, mtime or ctime moved, or another file took its
        name) voids the proof, so the verification after the re-import runs the full checks."""
        if self.stat is None or file_identity(staged) != self.stat:
            self.sha256, self.stat = None, None
        return self.sound

    def holds(self, staged: str | os.PathLike[str]) -> bool:
        """:meth:`confirm` without waiting for checks still running: ``staged`` is still the
        file as staged (their verdict, when they end, is :meth:`sound` and
        :meth:`clean_if_decided`)."""
        if self.stat is None or file_identity(staged) != self.stat:
            self.sha256, self.stat = None, None
        return self.stat is not None

    def rebind(self, staged: str | os.PathLike[str]) -> None:
        """Call right after our own transaction wrote ``staged`` (the rollback's re-import into
        the staged file, foreign keys of what it wrote checked before its COMMIT, then the file
        fsynced), when :meth:`confirm` held right before it began: the proof then stands for the
        file as that transaction left it, as it would after the swap, and any other write since
        voids it at the next :meth:`confirm`. A void proof stays void."""
        if self.stat is not None:
            self.stat = file_identity(staged)


PROOF_NICE = 10
"""Niceness of the threads that check the backup for the staged proof (Linux: per thread;
``$RECOVERY_PROOF_NICE``, 0-19, sets another). The checks then take the CPU the rollback's own
steps leave (they have until the swap to finish: the re-import's foreign-key check takes their
verdict only if it is in); the steps keep their core."""

PROOF_NICE_ENV = "RECOVERY_PROOF_NICE"


def _proof_nice() -> int:
    text = os.environ.get(PROOF_NICE_ENV, "").strip()
    return int(text) if text.isdigit() and int(text) <= 19 else PROOF_NICE


class BackupChecks:
    """``integrity_check`` ∥ ``foreign_key_check`` of the backup file itself, read-only, started
    as its copy is staged and running on (niced, :data:`PROOF_NICE`) while the extract and the
    re-import go on; the re-import writes the staged copy meanwhile, which no reader may hold.

    What the results are of: the backup's bytes as they were from before the checks to their end
    (its :func:`~recovery.engine.sqlite_io.file_identity` the same before and after, nothing
    beside it that SQLite would read with it: no ``-wal`` content, ``-shm`` or ``-journal``),
    and :meth:`holds_bytes_of` proves the staged copy, as staged, holds those very bytes (one
    pass over both, every byte equal but the header's write stamps, the backup's identity
    unchanged through it). ``integrity_check`` and ``foreign_key_check`` read nothing else, so
    their results on the backup are their results on the staged copy as staged.

    Two threads take the checks longest first, one after another; whoever waits for the result
    runs those no thread has begun. With ``$RECOVERY_PROOF_SPLIT=1`` both checks run as parts
    (:func:`_proof_parts`), so both threads stay busy to the end."""

    def __init__(self, backup: Path, identity: tuple[int, ...]) -> None:
        self._backup, self._identity = backup, identity
        self._lock = threading.Lock()
        self._conns: list[Any] = []  # sqlite3 connections, interrupted by abandon()
        self._threads: dict[int, int] = {}  # thread still checking -> its niceness before
        self._abandoned = self._hurried = False
        self._engine = engine = open_engine(backup)
        split = _proof_parts(engine) if _split_proof(identity[2]) else None
        self._split = split is not None
        parts, self._order = split or (
            [(1.0, True, _integrity_with_cache), (_FK_COST, False, _whole_fk_check)],
            {},
        )
        jobs = [(cost, is_integrity, _Job(work)) for cost, is_integrity, work in parts]
        self._integrity = [job for _, is_integrity, job in jobs if is_integrity]
        self._fks = [job for _, is_integrity, job in jobs if not is_integrity]  # in table order
        jobs.sort(key=lambda j: -j[0])  # longest first: both threads busy to the end
        self._jobs = [job for _, _, job in jobs]
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="staged-proof")
        for _ in range(2):
            self._pool.submit(self._worker)
        self._pool.shutdown(wait=False)

    @classmethod
    def start(cls, backup: str | os.PathLike[str]) -> BackupChecks | None:
        """The checks started on ``backup``, or None when it is not read as its bytes alone (a
        ``-wal`` with content, a ``-shm``: someone has it open, a ``-journal``)."""
        from recovery.engine.sqlite_io import real_path

        p = real_path(Path(backup))
        identity = file_identity(p)
        if identity is None or not _alone(p):
            return None
        return cls(p, identity)

    def _worker(self) -> None:
        """A checking thread: the jobs no one has taken yet, one after the other."""
        with self._niced():
            while (job := self._claim()) is not None:
                self._run(job)

    def _claim(self) -> _Job | None:
        with self._lock:
            for job in self._jobs:
                if not job.claimed:
                    job.claimed = True
                    return job
        return None

    def _run(self, job: _Job) -> None:
        try:
            job.future.set_result(self._on_backup(job.work))
        except BaseException as e:  # noqa: BLE001 - handed to whoever asks for the result
            job.future.set_exception(e)

    @contextmanager
    def _niced(self) -> Iterator[None]:
        """This thread at :data:`PROOF_NICE` (never below the niceness it has: a user's `nice`
        is kept) until the checks are awaited (:meth:`hurry`), registered for :meth:`hurry`."""
        me = threading.get_native_id()
        with self._lock:
            self._threads[me] = _priority(me)
            if not self._hurried:
                _set_priority(me, max(self._threads[me], _proof_nice()))
        try:
            yield
        finally:
            with self._lock:  # this thread ends: its id may be another's soon, never renice it
                self._threads.pop(me, None)

    def _check(self, engine: Engine, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on a connection to the backup, on this thread niced as a checking thread."""
        with self._niced():
            return self._on_backup(work, engine)

    def _on_backup(
        self, work: Callable[[sqlite3.Connection], T], engine: Engine | None = None
    ) -> T:
        conn = (engine or self._engine).connect_readonly("backup")
        try:
            with self._lock:
                if self._abandoned:
                    raise sqlite3.OperationalError("interrupted")
                self._conns.append(conn)
            return work(conn)  # type: ignore[arg-type]
        finally:
            with self._lock:  # never interrupted once closed
                if conn in self._conns:
                    self._conns.remove(conn)
                conn.close()

    def hurry(self) -> None:
        """Someone waits for the checks: they are on the critical path now, so the threads still
        checking get back the niceness they had (where the process may raise it: root; otherwise
        they go on at :data:`PROOF_NICE`, with the waiter's core free)."""
        with self._lock:
            self._hurried = True
            for tid, nice in self._threads.items():
                _set_priority(tid, nice)

    def holds_bytes_of(self, staged: str | os.PathLike[str]) -> bool:
        """True when ``staged`` holds the backup's bytes (the header's write stamps aside) while
        the backup keeps the identity it had when the checks began; the backup's digest is
        remembered for :func:`~recovery.engine.sqlite_io.sha256_file` on the way."""
        from recovery.engine.sqlite_io import same_content_digest

        if not _self_contained(Path(staged)):
            return False
        try:
            digest = same_content_digest(self._backup, staged)
        except OSError:
            return False
        return digest is not None and file_identity(self._backup) == self._identity

    def decided(self) -> bool:
        """Every check has ended (:meth:`result` then returns without running or waiting for a
        part; a part that failed still makes it run the whole check)."""
        return all(job.future.done() for job in self._jobs)

    def result(self) -> tuple[list[str], list[dict[str, Any]], bool]:
        """Wait for both checks: their lines, their dangling keys, and whether the backup kept
        its identity (and stayed alone) through them; re-raises a check's error. The waiting
        thread runs the parts no checking thread has begun, itself, at its own niceness."""
        self.hurry()
        while (job := self._claim()) is not None:
            self._run(job)
        lines = self._integrity_lines()
        found = [problem for job in self._fks for problem in job.future.result()]
        found.sort(key=lambda p: self._order.get(p["table"], len(self._order)))  # stable
        fks = found[:_FK_LIMIT]
        held = file_identity(self._backup) == self._identity and _alone(self._backup)
        return lines, fks, held

    def _integrity_lines(self) -> list[str]:
        """``integrity_check``'s lines for the whole backup: the full check's, or ``["ok"]`` when
        every part of the split check (:func:`_proof_parts`) passed. When a part did not
        (a problem or an error), the full check runs here and its lines (or its error) are the
        result, exactly as an unsplit check's."""
        if not self._split:
            return self._integrity[0].future.result()
        try:
            if all(job.future.result() == ["ok"] for job in self._integrity):
                return ["ok"]
        except (sqlite3.Error, RecoveryError):
            pass
        return _on_connection(self._engine, "backup", _integrity_with_cache)

    def abandon(self) -> None:
        """Interrupt the checks and wait for their threads to end."""
        with self._lock:
            self._abandoned = True
            for conn in self._conns:
                conn.interrupt()
            for job in self._jobs:  # no thread begins these any more
                if not job.claimed:
                    job.claimed = True
                    job.future.set_exception(sqlite3.OperationalError("interrupted"))
        self._pool.shutdown(wait=True)  # the checking threads have ended
        for job in self._jobs:
            try:
                job.future.result()
            except BaseException:  # noqa: BLE001 - interrupted on purpose
                pass


class _Job:
    """One check of :class:`BackupChecks`, run by whichever thread claims it first."""

    def __init__(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        self.work = work
        self.claimed = False
        self.future: Future[Any] = Future()


_FK_COST = 0.25
"""The ordered foreign-key check's cost against ``integrity_check``'s (1.0): at 1M parts ~0.9 s
CPU against ~3.6 s for the parts of :func:`_proof_parts`."""

_FK_LIMIT = 20
"""Dangling keys listed (``ordered_foreign_key_problems``' default)."""

PROOF_SPLIT_ENV = "RECOVERY_PROOF_SPLIT"
"""``1`` runs the backup's ``integrity_check`` and foreign-key check as parts
(:func:`_proof_parts`) instead of whole, one thread each; ``0`` never; unset: parts for a backup
of :data:`PROOF_SPLIT_BYTES` or more. At 1M parts (a 284 MB backup) the parts cost ~1 s more CPU
than the whole checks (``quick_check`` walks every B-tree the per-table parts walk again, smaller
caches) and no run got faster (bench/RESULTS.md, round 10, bp10); at 10M parts (3 GB) the
re-import waited 37 s for the whole ``integrity_check`` alone on one thread, the other core idle,
and the parts cut the run by 5.6 s (round 11)."""

PROOF_SPLIT_BYTES = 1 << 30
"""A bare backup this large (1 GiB, ~3.5M parts of the sample world) or larger is proven in parts
(:data:`PROOF_SPLIT_ENV`): its whole ``integrity_check`` outlasts the extract and the re-import's
writes, and the re-import then waits for it with a core idle."""


def _split_proof(size: int) -> bool:
    """Whether the proof of a backup of ``size`` bytes runs in parts (:data:`PROOF_SPLIT_ENV`)."""
    chosen = os.environ.get(PROOF_SPLIT_ENV, "").strip()
    if chosen in ("0", "1"):
        return chosen == "1"
    return size >= PROOF_SPLIT_BYTES


def _whole_fk_check(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return ordered_foreign_key_problems(conn, _FK_LIMIT)


ProofPart = tuple[float, bool, Callable[[sqlite3.Connection], Any]]
"""(share of the cost, whether it is part of ``integrity_check`` (else of the foreign-key
check), the check)."""


SPLIT_MAX_TABLES = 500
"""A schema with more tables than this gets both checks whole (reading each table's size and
keys would cost more than the split gains)."""

SPLIT_JOBS = 8
"""At most this many parts of each check (a part checks one or more tables in turn)."""


def _proof_parts(engine: Engine) -> tuple[list[ProofPart], dict[str, int]] | None:
    """The backup's two checks as parts that may run at the same time, each with its share of
    the cost. ``integrity_check``: ``quick_check`` of the whole file (every page accounted for
    once, the freelist, every B-tree well formed, each index's entry count, NOT NULL, types and
    CHECK constraints) and ``integrity_check(table)`` of each table (the same for that table and
    its indexes, but not the whole file's page accounting; and each row's entry in each index,
    its values, UNIQUE indexes without duplicates: the part ``quick_check`` skips); together they
    prove what the full check proves. The foreign-key check: :func:`ordered_foreign_key_problems`
    of each table that declares a foreign key (no other table can have a dangling one); their
    lists, ordered by table as the whole check goes (the order returned: name -> position) and
    cut at its limit, are its list. Tables
    are grouped into at most :data:`SPLIT_JOBS` parts of each check, biggest first. None (both
    run whole) when the schema cannot be read, has more than :data:`SPLIT_MAX_TABLES` tables, or
    a table has no rowid, is virtual or shadow, or has a name the pragma would read as a
    number."""
    try:
        conn = engine.connect_readonly("backup")
    except (RecoveryError, sqlite3.Error, OSError):
        return None  # the checks' own connections say what is wrong
    integrity: list[tuple[float, str]] = []
    fks: list[tuple[float, str]] = []
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM main.sqlite_master WHERE type = 'table' ORDER BY rowid"
            )
        ]
        if len(names) > SPLIT_MAX_TABLES:
            return None
        for name in names:
            if not _rowid_table(conn, name) or _reads_as_number(name):
                return None
            n_index = conn.execute("SELECT count(*) FROM pragma_index_list(?)", (name,))
            n_fk = conn.execute(
                "SELECT count(DISTINCT id) FROM pragma_foreign_key_list(?)", (name,)
            )
            indexes, keys = n_index.fetchone()[0], n_fk.fetchone()[0]
            last = conn.execute(
                sql(exp.select(exp.func("max", exp.column("rowid"))).from_(table(name, "main")))
            ).fetchone()[0]
            rows = float(last if isinstance(last, int) and last > 0 else 0)
            integrity.append((rows * (1 + indexes), name))
            if keys:
                fks.append((rows * keys, name))
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    order = {name: i for i, name in enumerate(names)}
    parts: list[ProofPart] = [
        *(
            (share, True, functools.partial(_tables_integrity, names=group))
            for share, group in _groups(integrity, 1.0, order)
        ),
        (0.17, True, _quick_check_cached),
        *(
            (share, False, functools.partial(_tables_fks, names=group))
            for share, group in _groups(fks, _FK_COST, order)
        ),
    ]
    return parts, order


def _groups(
    tables: list[tuple[float, str]], total: float, order: dict[str, int]
) -> list[tuple[float, list[str]]]:
    """``tables`` (cost, name) in at most :data:`SPLIT_JOBS` groups of about equal cost (each
    next biggest table to the cheapest group so far), each group's names in table order, with
    its share of ``total``."""
    groups: list[tuple[float, list[str]]] = [(0.0, []) for _ in range(min(SPLIT_JOBS, len(tables)))]
    for cost, name in sorted(tables, key=lambda t: -t[0]):
        i = min(range(len(groups)), key=lambda g: groups[g][0])
        groups[i] = (groups[i][0] + cost, [*groups[i][1], name])
    whole = sum(cost for cost, _ in groups)
    return [
        (total * cost / whole if whole else 0.0, sorted(names, key=order.__getitem__))
        for cost, names in groups
    ]


def _tables_integrity(conn: sqlite3.Connection, names: list[str]) -> list[str]:
    """``integrity_check(table)`` of each of ``names`` in turn: ``["ok"]``, or the first table's
    lines that are not."""
    _integrity_cache(conn, PART_CACHE_KIB)
    for name in names:
        rows = conn.execute("SELECT * FROM pragma_integrity_check(?, 'main')", (name,))
        lines = [r[0] for r in rows.fetchall()]
        if lines != ["ok"]:
            return lines
    return ["ok"]


def _tables_fks(conn: sqlite3.Connection, names: list[str]) -> list[dict[str, Any]]:
    return ordered_foreign_key_problems(conn, _FK_LIMIT, tables=names)


def _reads_as_number(name: str) -> bool:
    """``integrity_check(name)`` would take ``name`` as its error limit, not as a table: SQLite
    reads a leading sign and digits (or ``0x``) as a number and ignores what follows."""
    text = name[1:] if name[:1] in ("+", "-") else name
    return text[:1].isdigit()


def _quick_check_cached(conn: sqlite3.Connection) -> list[str]:
    _integrity_cache(conn, PART_CACHE_KIB)
    return _quick_check(conn)


def _alone(p: Path) -> bool:
    """SQLite reads ``p`` as its bytes alone and nobody has it open: no ``-wal`` content, no
    ``-shm`` and no ``-journal`` beside it."""
    return _self_contained(p) and not sidecars(p)[1].exists()


def _priority(tid: int) -> int:
    """Thread ``tid``'s niceness (0 where it cannot be told)."""
    if sys.platform != "linux":
        return 0
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return 0


def _set_priority(tid: int, nice: int) -> None:
    """Thread ``tid`` of this process (and it alone: Linux schedules threads) at niceness
    ``nice``; nothing elsewhere, nor where the process may not (a lower niceness needs root)."""
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        pass


@dataclass(frozen=True)
class Vouch:
    """What a backup's snapshot manifest proves of a copy holding the backup's bytes."""

    manifest: Path
    foreign_keys: list[dict[str, Any]] | None
    """The manifest's ``foreign_key_check`` (None: a manifest written before it recorded one)."""


def snapshot_vouch(backup: str | os.PathLike[str], staged: str | os.PathLike[str]) -> Vouch | None:
    """The checks ``recovery snapshot`` ran on ``backup``, when they hold for ``staged``: the
    manifest beside the backup (format ``recovery-snapshot/1``) recorded ``integrity_check`` "ok"
    for a file whose sha256 it names, and ``staged`` holds exactly the bytes with that sha256
    (:func:`~recovery.engine.sqlite_io.same_content_digest`: every page equal, the header's
    write stamps aside). ``integrity_check`` and ``foreign_key_check`` read nothing else, so their
    results on those bytes are their results on ``staged``. None when there is no such manifest,
    it recorded a failure, or any byte differs: the caller then runs the checks.

    The manifest is trusted as the record of the snapshot's checks; ``--full-verify`` checks the
    restored file in full whatever it says."""
    manifest = _may_vouch(backup)
    return None if manifest is None else _vouch(manifest, backup, staged)


def _vouch(
    manifest: dict[str, Any], backup: str | os.PathLike[str], staged: str | os.PathLike[str]
) -> Vouch | None:
    """:func:`snapshot_vouch` with the manifest already read and found fit (:func:`_may_vouch`)."""
    from recovery.capture.manifest import manifest_path_for
    from recovery.engine.sqlite_io import same_content_digest

    if not _self_contained(Path(staged)):
        return None
    recorded, fks = manifest["sha256"], manifest.get("foreign_key_check")
    try:
        digest = same_content_digest(backup, staged)
    except OSError:
        return None
    if digest is None or digest != recorded.lower():
        return None
    return Vouch(manifest_path_for(Path(backup)), fks)


def _self_contained(staged: Path) -> bool:
    """True when SQLite reads ``staged`` as its bytes alone: no ``-wal`` with frames and no
    ``-journal`` beside it (either would be read, or rolled back, with the file)."""
    wal, journal = (staged.with_name(staged.name + side) for side in ("-wal", "-journal"))
    try:
        return (not wal.exists() or wal.stat().st_size == 0) and not journal.exists()
    except OSError:
        return False


def _may_vouch(backup: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The backup's snapshot manifest when it could vouch for a copy (right format, written with
    this SQLite library, a recorded ``integrity_check`` of "ok", a sha256, a well-formed
    ``foreign_key_check`` if any). Another SQLite version may check more (or less) than the one
    whose results the manifest recorded: then the checks run."""
    from recovery.capture.manifest import MANIFEST_FORMAT, read_manifest

    try:
        manifest = read_manifest(backup)
    except RecoveryError:
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    if manifest.get("sqlite_version") != sqlite3.sqlite_version:
        return None
    if manifest.get("integrity_check") != "ok" or not isinstance(manifest.get("sha256"), str):
        return None
    fks = manifest.get("foreign_key_check")
    if fks is not None and not (isinstance(fks, list) and all(isinstance(f, dict) for f in fks)):
        return None
    return manifest


def _integrity_with_cache(conn: sqlite3.Connection) -> list[str]:
    _integrity_cache(conn)
    return integrity_problems(conn)


def _integrity_cache(conn: sqlite3.Connection, kib: int = INTEGRITY_CACHE_KIB) -> None:
    conn.execute(
        sql(
            exp.Pragma(
                this=exp.EQ(
                    this=exp.to_identifier("cache_size"), expression=exp.Literal.number(-kib)
                )
            )
        )
    )


PART_CACHE_KIB = INTEGRITY_CACHE_KIB // 2
"""Page cache of each part of a split ``integrity_check`` (:func:`_proof_parts`): two run at once
(three when the waiter takes one), so together they hold about what the whole check's one
connection held (at 1M parts the biggest table's part then takes 0.1-0.25 s more CPU than with
16 MB; the resident size stays where it was)."""


def verify_written(
    path: str | os.PathLike[str],
    outcome: Outcome,
    expected_revision: str | None,
    proof: StagedProof,
    bundle: Any,
) -> dict[str, Any] | None:
    """:func:`verify_file`'s result for the live DB after a rollback, at a cost bounded by what the
    re-import wrote, or None when it cannot be bounded (the caller then runs :func:`verify_file`).

    What it rests on (docs/RELIABILITY.md, "Verification"): ``proof`` — the full
    ``integrity_check`` and ``foreign_key_check`` of the restored file, passed before the swap,
    with the sha256 the restore journaled. Since then only the re-import (one transaction whose
    foreign keys :func:`recovery.reimport.fkcheck.fk_problems` checked before the commit: inserted and updated rows,
    children of deleted or re-keyed rows) and the relink (one UPDATE per fixed link of the files
    table) wrote. So it runs, on two threads: ``quick_check`` of the whole file (every page
    accounted for once, every B-tree well formed, NOT NULL and CHECK constraints), and for every
    table the bundle can write: each index holds as many entries as the table has rows and every
    row the re-import may have written (its key in the bundle, or a remapped key) has its entry,
    value for value (``integrity_check``'s remaining check, on those rows); an index on
    expressions, a partial index, a table without rowid or a key the bundle does not name
    plainly gets ``integrity_check(table)``. When the relink fixed links, the files table and the
    tables referencing it get ``foreign_key_check(table)``. With triggers in the file, an
    outcome recorded by an earlier run, or a proof that is not clean: None."""
    reads = _written_reads(path, outcome, proof, bundle)
    return None if reads is None else _written_result(reads, outcome, expected_revision)


_Reads = tuple[list[str], list[str], list[dict[str, Any]], "str | None"]
"""What :func:`_written_reads` found: quick_check lines, index problems, foreign-key problems of
the relinked tables, the alembic revision."""


def _written_result(
    reads: _Reads, outcome: Outcome, expected_revision: str | None
) -> dict[str, Any]:
    lines, index_problems, fks, revision = reads
    if index_problems:
        lines = [line for line in lines if line != "ok"] + index_problems
    result = _result(lines, fks, revision, outcome, expected_revision)
    result["checked"] = "bounded"
    return result


def _files_table(outcome: Outcome) -> str | None:
    """The files table when the relink wrote into it (fixed links), else None."""
    fixed = outcome.files or {}
    return (fixed.get("files_table") or {}).get("table") if fixed.get("links_fixed") else None


def _written_reads(
    path: str | os.PathLike[str], outcome: Outcome, proof: StagedProof, bundle: Any
) -> _Reads | None:
    """The reads of :func:`verify_written` (None: it cannot be bounded)."""
    if not proof.sound or outcome.already_applied or bundle is None:
        return None
    live = open_engine(path)
    with live.readonly("live database") as conn:
        revision = alembic_revision(conn)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' LIMIT 1").fetchone():
            return None
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
    files_table = _files_table(outcome)

    def written(conn: sqlite3.Connection) -> tuple[list[str], list[dict[str, Any]]]:
        _attach_rows(conn, bundle)
        problems: list[str] = []
        for name in tables:
            problems += _written_rows_indexed(conn, bundle, outcome, name)
        fks: list[dict[str, Any]] = []
        if files_table is not None:  # the relink's UPDATEs: rows the bundle may not name
            problems += [
                r[0]
                for r in conn.execute(
                    sql(
                        exp.Pragma(
                            this=exp.Anonymous(
                                this="integrity_check", expressions=[_q(files_table)]
                            )
                        )
                    )
                )
                if r[0] != "ok"
            ]
            for name in [files_table, *_referencing(conn, files_table)]:
                fks += [
                    {"table": t, "rowid": r, "parent": p, "fk": fk}
                    for t, r, p, fk in conn.execute(
                        'SELECT "table", rowid, parent, fkid FROM pragma_foreign_key_check(?)',
                        (name,),
                    ).fetchmany(20)
                ]
        return problems, fks

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify") as pool:
        quick = pool.submit(_on_connection, live, "live database", _quick_check)
        rows = pool.submit(_on_connection, live, "live database", written)
        try:
            lines, (index_problems, fks) = quick.result(), rows.result()
        except sqlite3.Error:  # e.g. a bundle file gone since the re-import: prove it the long way
            return None
    return lines, index_problems, fks, revision


class EarlyWritten:
    """:func:`verify_written`'s reads of the live DB, started as soon as the re-import committed,
    on other threads while the relink works; :meth:`result` is the verification's result when they
    still hold for the file.

    They hold for the file as they read it, so before they start a mark of its state is taken, and
    :meth:`result` takes it again: any commit to the file in between, by any connection or process
    (the relink fixing links, the application), changes it, and the reads are then dropped (the
    caller runs the verification on the file as it is). The mark: when ``-shm`` exists (the file
    is open elsewhere), ``PRAGMA data_version`` on one read-only connection kept for the purpose;
    when neither ``-wal`` content nor ``-shm`` is there (the usual case: the re-import's connection,
    the last one, checkpointed and removed them), the file's identity (device, inode, size, mtime,
    ctime, SQLite's change counter) with still no ``-wal`` content or ``-shm`` beside it — no
    read-only connection is opened then, since it would create ``-shm``. Started only on a
    WAL-mode file: there a reader never delays the relink's commit (in rollback-journal mode the
    reads' shared lock would hold its COMMIT off)."""

    def __init__(
        self, path: str | os.PathLike[str], outcome: Outcome, proof: StagedProof, bundle: Any
    ) -> None:
        from recovery.engine.sqlite_io import is_wal_file, real_path, sidecars

        self._future: Any = None
        self._sentinel: CommitWatch | None = None
        self._mark: tuple[Any, ...] | None = None
        if not proof.sound or outcome.already_applied or bundle is None:
            return
        try:
            self._real = real_path(Path(path))
            if not is_wal_file(self._real):
                return
            if sidecars(self._real)[1].exists():
                self._sentinel = CommitWatch(self._real)
            self._mark = self._state()
        except (OSError, sqlite3.Error):
            self._mark = None
        if self._mark is None:
            self.close()
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-early")
        self._future = pool.submit(_written_reads, path, outcome, proof, bundle)
        pool.shutdown(wait=False)

    def _state(self) -> tuple[Any, ...] | None:
        """The mark (see the class); None when the file's state cannot be told."""
        from recovery.engine.sqlite_io import sidecars

        if self._sentinel is not None:
            return ("data_version", self._sentinel.version())
        wal, shm = sidecars(self._real)
        if shm.exists() or (wal.exists() and wal.stat().st_size > 0):
            return None
        identity = file_identity(self._real)
        return None if identity is None else ("file", identity)

    @property
    def started(self) -> bool:
        return self._future is not None

    def result(self, outcome: Outcome, expected_revision: str | None) -> dict[str, Any] | None:
        """:func:`verify_written`'s result for ``outcome`` (the run's, after the relink), or None:
        not started, not bounded, failed, the relink wrote into the files table, or something was
        committed to the file since the reads began."""
        if self._future is None:
            return None
        try:
            reads = self._future.result()
            mark = self._state()
        except Exception:  # noqa: BLE001 - the verification runs again on the file as it is
            return None
        finally:
            self.close()
        if reads is None or mark is None or mark != self._mark or _files_table(outcome):
            return None
        return _written_result(reads, outcome, expected_revision)

    def close(self) -> None:
        """Wait for the reads (nothing started here outlives the run) and close the connection."""
        if self._future is not None:
            try:
                self._future.result()
            except BaseException:  # noqa: BLE001 - dropped: the verification runs again
                pass
        if self._sentinel is not None:
            self._sentinel.close()
            self._sentinel = None


def _quick_check(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("PRAGMA main.quick_check")]


def _attach_rows(conn: sqlite3.Connection, bundle: Any) -> None:
    from recovery.engine.sqlite_io import file_uri

    conn.execute("ATTACH DATABASE ? AS bundle_rows", (file_uri(bundle.rows_db, mode="ro"),))
    conn.execute(
        "PRAGMA query_only = OFF"
    )  # for the TEMP key list: main and the bundle stay mode=ro
    conn.execute("CREATE TEMP TABLE remapped (k)")


def _referencing(conn: sqlite3.Connection, parent: str) -> list[str]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return [
        n
        for n in names
        if n != parent
        and any(
            r[0] == parent
            for r in conn.execute('SELECT "table" FROM pragma_foreign_key_list(?)', (n,))
        )
    ]


def _q(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _written_rows_indexed(
    conn: sqlite3.Connection, bundle: Any, outcome: Outcome, name: str
) -> list[str]:
    """``integrity_check``'s index-content check for table ``name``, bounded by what the bundle can
    have written into it; ``integrity_check(name)`` where that bound cannot be drawn."""
    from recovery.engine.sqlbuild import col, is_distinct, table
    from recovery.model.kinds import KIND_COLUMN, RowKind

    def whole() -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                sql(exp.Pragma(this=exp.Anonymous(this="integrity_check", expressions=[_q(name)])))
            )
            if r[0] != "ok"
        ]

    old_t = bundle.old.table(name)
    indexes = conn.execute("SELECT name, partial FROM pragma_index_list(?)", (name,)).fetchall()
    in_bundle = conn.execute(
        "SELECT 1 FROM bundle_rows.sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    if old_t is None or not in_bundle:
        # not a table the re-import writes rows into (bookkeeping, or a table the bundle lacks)
        return whole() if name.startswith("_recovery") or name == "alembic_version" else []
    if not indexes:
        return []
    wr = conn.execute("SELECT wr FROM pragma_table_list(?)", (name,)).fetchone()
    tm = bundle.mapping.tables.get(name)
    rules = {r.column: r for r in tm.rules} if tm is not None else {}
    key = old_t.key
    plain = [
        rules[k].expression
        for k in key
        if k in rules and isinstance(rules[k].expression, exp.Column)
    ]
    remaps = [r.new_key for r in outcome.remaps if r.table == name]
    if (
        wr is None
        or wr[0]
        or not old_t.has_primary_key
        or len(plain) != len(key)
        or (remaps and len(key) != 1)
        or any(p for _, p in indexes)
    ):
        return whole()
    cols: dict[str, list[str]] = {}
    for ix, _ in indexes:
        info = conn.execute(
            "SELECT cid, name FROM pragma_index_xinfo(?) WHERE key = 1", (ix,)
        ).fetchall()
        if any(cid < 0 for cid, _ in info):  # an expression (or rowid) column
            return whole()
        cols[ix] = [c for _, c in info]
    conn.execute("DELETE FROM temp.remapped")
    conn.executemany(
        "INSERT INTO temp.remapped VALUES (?)",
        [(k[0] if isinstance(k, (list, tuple)) else k,) for k in remaps],
    )
    problems = []
    total = conn.execute(
        sql(exp.select(exp.Count(this=exp.Star())).from_(table(name, "main")))
    ).fetchone()[0]
    for ix in cols:
        entries = conn.execute(
            sql(
                exp.select(exp.Count(this=exp.Star())).from_(
                    exp.Table(this=_q(name), db=_q("main"), indexed=_q(ix))
                )
            )
        ).fetchone()[0]
        if entries != total:
            problems.append(f"index {ix} holds {entries} entries for {total} rows of {name}")
    written_key = (
        exp.Tuple(expressions=[col(k, "r") for k in key]) if len(key) > 1 else col(key[0], "r")
    )
    sources: exp.Expression = exp.select(
        *[exp.Column(this=_q(p.name), table=_q("b")) for p in plain]
    ).from_(table(name, "bundle_rows", "b"))
    if _updates_left_indexes_alone(conn, name, cols, outcome):
        sources = sources.where(
            is_distinct(
                exp.Column(this=_q(KIND_COLUMN), table=_q("b")),
                exp.Literal.string(RowKind.UPDATED.value),
            )
        )
    if remaps:
        sources = exp.union(
            sources, exp.select(col("k")).from_(table("remapped", "temp")), distinct=True
        )
    missing = []
    for ix, names in cols.items():
        probe = (
            exp.select(exp.Literal.number(1))
            .from_(
                exp.Table(
                    this=_q(name), db=_q("main"), alias=exp.TableAlias(this=_q("x")), indexed=_q(ix)
                )
            )
            .where(
                exp.and_(
                    *[exp.Is(this=col(c, "x"), expression=col(c, "r")) for c in names],
                    exp.EQ(
                        this=exp.Column(this=exp.to_identifier("rowid"), table=_q("x")),
                        expression=exp.Column(this=exp.to_identifier("rowid"), table=_q("r")),
                    ),
                )
            )
        )
        missing.append(exp.Not(this=exp.Exists(this=probe)))
    q = (
        exp.select(exp.Count(this=exp.Star()))
        .from_(table(name, "main", "r"))
        .where(exp.and_(exp.In(this=written_key, query=sources.subquery()), exp.or_(*missing)))
    )
    bad = conn.execute(sql(q)).fetchone()[0]
    if bad:
        problems.append(f"{bad} rows of {name} written by the re-import lack an index entry")
    return problems


def _updates_left_indexes_alone(
    conn: sqlite3.Connection, name: str, cols: dict[str, list[str]], outcome: Outcome
) -> bool:
    """True when no UPDATE of the re-import set a column of any index of ``name`` (``cols``: each
    index's columns) nor its rowid, as the re-import recorded (:attr:`Outcome.set_columns`;
    unknown: False). SQLite's UPDATE rewrites the entries of an index only when it sets one of
    its columns (or the rowid) — with foreign keys off, as on the re-import's connection, every
    other index of the table is left as it was — so the updated rows' entries are then the
    backup's, proven before the swap, and only the rows the re-import inserted need probing.
    Partial and expression indexes never get here (``integrity_check(table)`` instead)."""
    if outcome.set_columns is None:
        return False
    set_by_table = {t.lower(): c for t, c in outcome.set_columns.items()}
    written = {c.lower() for c in set_by_table.get(name.lower(), frozenset())}
    if not written:
        return True
    if written & {c.lower() for names in cols.values() for c in names}:
        return False
    pk = conn.execute(
        "SELECT name, type FROM pragma_table_info(?) WHERE pk > 0", (name,)
    ).fetchall()
    return not (len(pk) == 1 and str(pk[0][1]).upper() == "INTEGER" and pk[0][0].lower() in written)
