"""Re-importing a bundle into the (restored) old-schema database: a three-way merge in ONE transaction.

Everything happens inside one ``BEGIN IMMEDIATE`` transaction on the target, with the bundle's
``rows.db`` attached read-only as ``bundle`` and ``base.db`` as ``base``. The re-import is a list of
passes over one shared :class:`recovery.reimport.context.Context` (:data:`DETECTORS`, then
:func:`_merge`'s order); every write of every pass goes through the context's
:class:`recovery.reimport.script.Script`, which keeps it as a step of the plan as executed — the
run folder's ``reimport.sql``:

1. stage (:mod:`.stage`) — the plan's SELECTs fill TEMP tables: ``ins:<t>`` (rows to insert, old schema) and
   ``upd:<t>`` (key, theirs_i, base_i per updatable column);
2. detect (:mod:`.detect`, one module per conflict kind, each returning typed conflicts) —
   set-based queries find ``primary_key``, ``unique``, ``missing_parent``, ``constraint``,
   ``update_deleted`` and cell-level ``update_update`` conflicts; ``constraint`` covers every rule of
   the target's own DDL a row would break (:mod:`recovery.reimport.constraints`: NOT NULL, STRICT types,
   CHECK, unique indexes on expressions / partial / collated), evaluated over a typed copy;
3. resolve (:mod:`.remap`, :mod:`.skips`) — by policy: remap integer keys (rewriting every bundle reference, entity links
   included) or skip whole units (a skipped parent skips its children; a skipped child of an
   ``ON DELETE CASCADE`` parent skips the parent: a quote never lands without its items);
4. apply (:mod:`.apply`, :mod:`.review_deletes`) — with the target's triggers on the written tables suspended (:mod:`recovery.reimport.triggers`):
   inserts parents first (generated columns never written), the column-wise three-way UPDATE,
   deletes only on request; a statement the target still refuses is narrowed to its rows (a
   SAVEPOINT each), whose units become ``constraint`` conflicts, and the apply runs again;
   AUTOINCREMENT counters are carried forward (:mod:`recovery.reimport.sequences`), the triggers re-created;
   ``_recovery_applied`` records the bundle id so a second run is a no-op;
5. check (:mod:`.fkcheck`) — :func:`merge_and_check`: every foreign key of every row the re-import wrote (inserted,
   updated, or a child of a row it deleted or whose referenced columns it changed) must resolve,
   checked set-based over the staged keys instead of a ``PRAGMA foreign_key_check`` of the whole
   file; any problem rolls everything back. The full pragma stays in :mod:`recovery.verify.checks`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlglot import exp

from recovery.bundle.store import Bundle
from recovery.engine.schema import Schema
from recovery.engine.sqlbuild import sql, table
from recovery.errors import RecoveryError
from recovery.files.uploads import FilesConfig
from recovery.options import MergeOptions
from recovery.model.values import LostValues
from recovery.model.outcome import (
    Conflict,
    ConflictPolicy,
    Outcome,
    TableOutcome,
)
from recovery.reimport import sequences, triggers
from recovery.reimport.applied import (
    APPLIED_TABLE,
    OUTCOME_COLUMN,
    already_applied,
    check_target_schema,
    record_applied,
    record_outcome,
    recorded_outcome,
)
from recovery.reimport.apply import apply
from recovery.reimport.context import KILL_ENV, Context, Counter
from recovery.reimport.detect import constraint, missing_parent, primary_key, unique, update
from recovery.reimport.fkcheck import fk_problems
from recovery.reimport.remap import remap, settle_remaps
from recovery.reimport.review_deletes import deletes
from recovery.reimport.script import Script
from recovery.reimport.skips import collect_skipped, propagate_skips
from recovery.reimport.stage import stage
from recovery.reimport.target_fks import TargetFk, target_foreign_keys
from recovery.transpile.passes import BASE_DB, BUNDLE_DB, TablePlan
from recovery.transpile.passes import plan as make_plan

__all__ = [
    "APPLIED_TABLE",
    "KILL_ENV",
    "OUTCOME_COLUMN",
    "TargetFk",
    "already_applied",
    "attach_bundle",
    "check_target_schema",
    "load_lost",
    "merge_and_check",
    "open_target",
    "record_applied",
    "record_outcome",
    "recorded_outcome",
    "target_foreign_keys",
]

Detector = Callable[[Context, TablePlan], list[Conflict]]
DETECTORS: tuple[tuple[Detector, ...], ...] = (
    (unique.detect, constraint.detect),
    (missing_parent.detect, update.detect),
)
"""The detectors after ``primary_key`` (whose remaps come first), in rounds: each round runs over
every staged table before the next starts (a parent's skips are known before its children's
missing parents are looked for)."""


def load_lost(conn: sqlite3.Connection) -> LostValues:
    """The bundle's lost values as a bounded :class:`recovery.report.lost.LostValues`: the first 1,000 by
    (table, key, column), exact counts, and the bundle's rows.db, which keeps the complete list."""
    from recovery.report.lost import load

    return load(conn, BUNDLE_DB)


class _LostLoader:
    """:func:`load_lost` on its own read-only connection to the bundle's rows.db, on a second core
    while staging and detection run (the sample and counts are a full read of ``_recovery_lost``;
    the outcome needs them only when it is recorded). The same statements, time-bounded alike."""

    def __init__(self, conn: sqlite3.Connection, bundle: Bundle) -> None:
        from concurrent.futures import ThreadPoolExecutor

        source = next(
            (r[2] for r in conn.execute("PRAGMA database_list") if r[1] == BUNDLE_DB), None
        )
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recovery-lost")
        self._future = pool.submit(self._load, bundle.rows_db, source or None)
        pool.shutdown(wait=False)

    @staticmethod
    def _load(path: Path, source: str | None) -> LostValues:
        from recovery.engine.sqlite_io import file_uri
        from recovery.engine.timebound import statement_time_limit
        from recovery.report.lost import load

        conn = sqlite3.connect(file_uri(path, mode="ro"), uri=True)
        try:
            with statement_time_limit(conn):
                return load(conn, "main", source)
        finally:
            conn.close()

    def result(self) -> LostValues:
        return self._future.result()


def merge_and_check(
    conn: sqlite3.Connection,
    bundle: Bundle,
    options: MergeOptions,
    files: FilesConfig,
    target_name: str,
    dry_run: bool,
    target: Schema,
    in_place: bool = False,
    limit: int = 20,
    script: Script | None = None,
    fk_clean: bool | Callable[[], bool] = False,
    on_applied: Callable[[], None] | None = None,
) -> tuple[Outcome, list[dict[str, Any]]]:
    """Stage, detect, resolve and apply the bundle on ``conn`` (bundle attached, transaction open)
    as ``options`` say; ``target`` is the target's reflected schema (reflected on another
    connection: SQLAlchemy may reset a connection's transaction state). Then the foreign-key
    check of what it wrote (:func:`recovery.reimport.fkcheck.fk_problems`):
    the problems ``PRAGMA foreign_key_check`` would report for those rows, in its shape
    (``{"table", "rowid", "parent", "fk"}``, at most ``limit``); empty when nothing was written
    (already applied, aborted). The caller commits only when the list is empty. Every statement
    is time-bounded (:mod:`recovery.engine.timebound`): one that runs too long raises exit 3.
    ``fk_clean``: the caller proved the target's ``foreign_key_check`` clean right before this
    transaction (:attr:`recovery.reimport.context.Context.fk_clean`); never pass it otherwise.
    ``on_applied``: called once every write of the merge is applied (not when nothing is, nor
    when it aborted), before the check: e.g. to start writing the file's pages back."""
    from recovery.engine.timebound import statement_time_limit

    with statement_time_limit(conn):
        outcome, ctx = _merge(
            conn, bundle, options, files, target_name, dry_run, target, in_place, script, fk_clean
        )
        if ctx is None or outcome.aborted:
            return outcome, []
        if on_applied is not None:
            on_applied()
        return outcome, fk_problems(ctx, limit)


def _merge(
    conn: sqlite3.Connection,
    bundle: Bundle,
    options: MergeOptions,
    files: FilesConfig,
    target_name: str,
    dry_run: bool,
    target: Schema,
    in_place: bool,
    script: Script | None = None,
    fk_clean: bool | Callable[[], bool] = False,
) -> tuple[Outcome, Context | None]:
    policy, conflicts = options.on_conflict, options.conflicts
    check_target_schema(bundle, target)
    outcome = Outcome(
        bundle.bundle_id, target_name, policy.value, dry_run, conflicts_mode=conflicts.value
    )
    lost = _LostLoader(conn, bundle)
    if already_applied(conn, bundle.bundle_id):
        outcome.lost = lost.result()
        outcome.already_applied = True
        return outcome, None
    p = make_plan(bundle.old, bundle.new, bundle.mapping, bundle.tables_with_rows())
    if p.errors:
        raise RecoveryError(
            "the plan has errors, nothing was changed: " + "; ".join(p.errors),
            "add the missing columns to a mapping file and extract again",
        )
    ctx = Context(
        conn,
        bundle,
        p,
        target,
        policy,
        options.prefer,
        files,
        outcome,
        Counter(),
        in_place,
        mode=conflicts,
        script=script,
        fk_clean=fk_clean,
    )
    for name in bundle.old.data_tables:
        outcome.tables.setdefault(name, TableOutcome(name)).rows_before = _count(conn, name)
    stage(ctx)
    _detect(ctx)
    outcome.lost = lost.result()
    if policy is ConflictPolicy.ABORT and outcome.conflicts:
        outcome.aborted = True
        return outcome, ctx
    _apply(ctx, options.apply_deletes)
    outcome.set_columns = {name: frozenset(c) for name, c in ctx.set_columns.items()}
    return outcome, ctx


def _detect(ctx: Context) -> None:
    """Every detector, then remaps, skip propagation and the staged twins of unique indexes."""
    for tp in ctx.staged():
        found, remapped = primary_key.detect(ctx, tp)
        ctx.outcome.conflicts += found
        if remapped:
            remap(ctx, tp, remapped)
    for detectors in DETECTORS:
        for tp in ctx.staged():
            for detect in detectors:
                ctx.outcome.conflicts += detect(ctx, tp)
    propagate_skips(ctx)
    twins = constraint.staged_duplicates(ctx)
    if twins:
        ctx.outcome.conflicts += twins
        propagate_skips(ctx)
    settle_remaps(ctx)
    collect_skipped(ctx)


def _apply(ctx: Context, apply_deletes: bool) -> None:
    """Write with the target's triggers suspended: the inserts and updates, the deletes, the
    AUTOINCREMENT counters carried forward, the triggers re-created, the bookkeeping row."""
    conn, bundle, outcome = ctx.conn, ctx.bundle, ctx.outcome
    assert ctx.script is not None
    write = ctx.script.execute
    seq_before = sequences.read_sequences(conn)
    written = [tp.table for tp in ctx.staged()] + (
        sorted(bundle.tables_with_deletes()) if apply_deletes else []
    )
    suspended = triggers.suspend(
        conn, written, write
    )  # the app's triggers must not fire for carried rows
    outcome.triggers_suspended = [t.name for t in suspended]
    ctx.quiet = True
    apply(ctx)
    if outcome.aborted:  # the caller rolls back; the triggers are back either way
        triggers.restore(conn, suspended, write)
        return
    deletes(ctx, apply_deletes)
    outcome.sequences = sequences.carry_forward(
        conn, sequences.live_from_manifest(bundle.manifest), seq_before, write
    )
    triggers.restore(conn, suspended, write)
    for name, c in bundle.counts.items():
        if name in outcome.tables:
            outcome.tables[name].bundle_deleted = c.get("deleted", 0)
            outcome.tables[name].lost = c.get("lost", 0)
    record_applied(ctx)
    for name in bundle.old.data_tables:
        outcome.tables[name].rows_after = _count(conn, name)


def _count(conn: sqlite3.Connection, name: str) -> int:
    return conn.execute(sql(exp.select("count(*)").from_(table(name, "main")))).fetchone()[0]


def attach_bundle(conn: sqlite3.Connection, bundle: Bundle) -> None:
    from recovery.engine.sqlite_io import file_uri

    conn.execute(f"ATTACH DATABASE ? AS {BUNDLE_DB}", (file_uri(bundle.rows_db, mode="ro"),))
    conn.execute(f"ATTACH DATABASE ? AS {BASE_DB}", (file_uri(bundle.base_db, mode="ro"),))


def open_target(path: Path, timeout: float) -> sqlite3.Connection:
    from recovery.engine.sqlite_io import check_sqlite_file, file_uri

    p = check_sqlite_file(path, "target database")
    conn = sqlite3.connect(file_uri(p, mode="rw"), uri=True, isolation_level=None, timeout=0.2)
    conn.execute(
        "PRAGMA foreign_keys = OFF"
    )  # no cascade may fire; integrity is checked before commit
    conn.execute(
        "PRAGMA temp_store = FILE"
    )  # staged rows spill to a temp file: bounded RSS at any size
    return conn
