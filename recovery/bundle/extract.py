"""``recovery extract``: the post-deploy changes as a self-contained bundle, plus its plan.

Everything is set-based inside SQLite: the backup (``old``) and live DB (``new``) are attached
read-only, the bundle's ``rows.db`` (``bnew``) and ``base.db`` (``bbase``) writable, and rows move
with ``INSERT … SELECT`` built as sqlglot trees. The bundle is built in a temporary folder beside
the target and renamed into place when complete.
"""

from __future__ import annotations

import contextvars
import os
import sqlite3
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from recovery import __version__
from recovery.engine.base import Connection
from recovery.bundle.store import (
    DIR_MODE,
    FILLED_TABLE,
    FORMAT,
    LOST_TABLE,
    Bundle,
    open_bundle,
    seal,
)
from recovery.compare import changes
from recovery.compare.changes import (
    OneInstant,
    TableSides,
    deleted_query,
    inserted_query,
    rowid_span,
    sides,
    sides_on_rowid,
    user_value,
)
from recovery.compare.diff import (
    Analysis,
    PendingReplay,
    analyse,
    replay_path,
    start_replayed_upgrade,
)
from recovery import progress
from recovery.errors import RecoveryError
from recovery.files.uploads import (
    FilesConfig,
    UploadsIndex,
    bundle_file_rows,
    copy_files_into_bundle,
)
from recovery.migrate.bounded import attach_uri
from recovery.bundle import prelist
from recovery.bundle.prelist import (
    ListJob,
    Prelists,
    changed_list_query,
    copy_query,
    create_list,
    fill_list,
    list_columns,
)
from recovery.migrate.replay import SCHEMA as REPLAY_SCHEMA, Replayed, start_sandbox
from recovery.migrate.sandbox import release_spare
from recovery.model.labels import label_column
from recovery.engine.schema import ForeignKey, Schema, Table
from recovery.reimport.sequences import read_sequences
from recovery.engine.sqlbuild import and_all, col, is_same, or_all, sql, table
from recovery.engine.sqlite_io import fsync_dir, sha256_file, sidecars
from recovery.model.kinds import CHANGED_KINDS, KIND_COLUMN as KIND, RowKind
from recovery.model.values import TableCounts
from recovery.transpile.passes import Plan
from recovery.transpile.passes import plan as make_plan

if TYPE_CHECKING:
    from recovery.migrate.sandbox import Sandbox

DERIVABLE_VIA = {"entity_type", "entity_id"}


@dataclass(frozen=True)
class ExtractResult:
    bundle: Bundle
    plan: Plan
    analysis_since: str | None
    # the walk of the uploads folder the copies used, with the digests the copies took (a later
    # walk of the folder can take it as ``earlier``); None without uploads
    uploads_walk: UploadsIndex | None = None

    def summary(self) -> dict[str, Any]:
        m = self.bundle.manifest
        counts = {t: {k: v for k, v in c.items()} for t, c in sorted(m["counts"].items())}
        return {
            "bundle": str(self.bundle.path),
            "bundle_id": m["bundle_id"],
            "deploy_time": m["deploy_time"],
            "live_fingerprint": (m.get("sources") or {}).get("live", {}).get("sha256"),
            "counts": counts,
            "lost": sum(c.get("lost", 0) for c in counts.values()),
            "filled_by_upgrade": sum(c.get("filled_by_upgrade", 0) for c in counts.values()),
            "planning_errors": m["planning_errors"],
            "mapping_sources": {
                t: {c["column"]: c["source"] for c in v["columns"] if c["source"] != "same-name"}
                for t, v in m["mapping"].items()
            },
            "lineage": m.get("lineage"),
            "files": m.get("files"),
        }


def _create_untyped(conn: Connection, schema: str, name: str, columns: list[str]) -> None:
    """A bundle table: the given columns with no declared type (values keep their storage class)."""
    ddl = exp.Create(
        this=exp.Schema(
            this=table(name, schema),
            expressions=[
                exp.ColumnDef(this=exp.to_identifier(c, quoted=True)) for c in [*columns, KIND]
            ],
        ),
        kind="TABLE",
    )
    conn.execute(sql(ddl))


def _insert_select(
    conn: Connection, schema: str, name: str, columns: list[str], query: exp.Select
) -> int:
    stmt = exp.Insert(
        this=exp.Schema(
            this=table(name, schema),
            expressions=[exp.to_identifier(c, quoted=True) for c in [*columns, KIND]],
        ),
        expression=query,
    )
    return conn.execute(sql(stmt)).rowcount


def label_parent(t: Table, new: Schema) -> tuple[ForeignKey, Table, str] | None:
    """The FK, parent table and parent's label column :func:`label_expr` takes a row's label
    from when the row has no label column of its own (its first single-column FK into a
    labelled table); None when it has its own or none at all."""
    if label_column(t):
        return None
    for fk in t.foreign_keys:
        parent = new.table(fk.ref_table)
        if parent is None or len(fk.columns) != 1:
            continue
        pcol = label_column(parent)
        if pcol:
            return fk, parent, pcol
    return None


def label_expr(t: Table, new: Schema, alias: str, schema: str = "new") -> exp.Expression:
    """A human label for a row: its own label column, else its first labelled FK parent's (looked
    up in ``schema``'s table of the parent's name), else NULL."""
    own = label_column(t)
    if own:
        return col(own, alias)
    found = label_parent(t, new)
    if found is None:
        return exp.Null()
    fk, parent, pcol = found
    sub = (
        exp.select(col(pcol, "p"))
        .from_(table(parent.name, schema, "p"))
        .where(exp.EQ(this=col(fk.ref_columns[0], "p"), expression=col(fk.columns[0], alias)))
    )
    return exp.Subquery(this=sub)


def key_json(key: tuple[str, ...], alias: str) -> exp.Expression:
    """A row's key as the JSON text extract stores in ``_recovery_lost.key`` (compare with it)."""
    return exp.Anonymous(this="json_array", expressions=[col(k, alias) for k in key])


def derivable(t: Table, column: str, files: FilesConfig, alias: str) -> exp.Expression | None:
    """For a new-only FK into the files table (``parts.file_id``): the value is carried by the file
    record's entity link when that record points back at this row."""
    fk = next(
        (f for f in t.foreign_keys if f.columns == (column,) and f.ref_table == files.table), None
    )
    if fk is None or len(t.key) != 1:
        return None
    cond = and_all(
        [
            exp.EQ(this=col(fk.ref_columns[0], "f"), expression=col(column, alias)),
            is_same(
                exp.cast(col(files.entity_id, "f"), "TEXT"), exp.cast(col(t.key[0], alias), "TEXT")
            ),
            exp.In(
                this=col(files.entity_type, "f"),
                expressions=[exp.Literal.string(t.name), exp.Literal.string(t.name.rstrip("s"))],
            ),
        ]
    )
    return exp.Exists(
        this=exp.select(exp.Literal.number(1)).from_(table(files.table, "new", "f")).where(cond)
    )


def uncarried_columns(a: Analysis, name: str) -> list[str]:
    """New-schema columns of a shared table that no old column's rule uses: their values are lost."""
    return changes.uncarried_columns(a.new.tables[a.live_name(name)], a.mapping.tables.get(name))


def needs_replay(a: Analysis, name: str) -> bool:
    """Whether the table's updated rows depend on the replayed upgrade (it has a column the old
    schema cannot carry): its extract waits for the replay; the others need not."""
    old_t, tm = a.old.table(name), a.mapping.tables.get(name)
    if old_t is None or tm is None or tm.skip:
        return False
    return bool(uncarried_columns(a, name))


def waiting_for_replay(a: Analysis, replays: bool) -> list[str]:
    """The bundle tables whose extract waits for the replayed upgrade (:func:`needs_replay`),
    in bundle order; none when there is no replay (``replays`` False)."""
    return [n for n in a.bundle_tables if replays and needs_replay(a, n)]


def extract_table(
    conn: Connection,
    a: Analysis,
    name: str,
    counts: dict[str, Any],
    part: str = "all",
    early: str | None = None,
    lists: Prelists | None = None,
) -> None:
    """The table's rows into the bundle. ``part``: ``"inserted"`` writes only the inserted rows
    (they need no replay), ``"rest"`` the updated, base and deleted rows after them, ``"all"``
    both, in that order (the order rows take in the bundle files is the same either way).
    ``early``: for ``"rest"``, the temporary list :func:`list_changed_early` made of the table's
    candidates while the replay ran; it is narrowed to the changed rows instead of a new read.
    ``lists``: the lists the worker processes made (:class:`~recovery.bundle.prelist.Prelists`)."""
    old_t, new_t = a.old.table(name), a.new.tables[a.live_name(name)]
    new_cols = list(new_t.column_names)
    if part != "rest":
        _create_untyped(conn, "bnew", name, new_cols)
    shared = old_t is not None and name in a.mapping.tables and not a.mapping.tables[name].skip
    if not shared:
        assert part == "all"  # (only shared tables are split: needs_replay)
        q = exp.select(
            *[col(c, "n") for c in new_cols], exp.Literal.string(RowKind.INSERTED)
        ).from_(table(a.live_name(name), "new", "n"))
        counts[name] = {
            RowKind.INSERTED: _insert_select(conn, "bnew", name, new_cols, q),
            RowKind.UPDATED: 0,
            RowKind.DELETED: 0,
            "status": "new table" if old_t is None else "skipped by mapping",
        }
        return
    assert old_t is not None  # shared
    s = sides(old_t, a.mapping.tables[name])
    if isinstance(s, str):
        raise RecoveryError(f"cannot extract {name}: {s}", "map the key column in the mapping file")
    old_cols = list(old_t.column_names)
    n_cols = [col(c, "n") for c in new_cols]
    cond = _changed_condition(a, s, new_t, a.replay) if part != "inserted" else None
    rowid = sides_on_rowid(conn, s)
    on_rowid = cond is not None and rowid
    in_place: exp.Table | None = None  # a worker's list of the table, read where it is
    if part != "rest":
        _create_untyped(conn, "bbase", name, old_cols)
        ins_select = [*n_cols, exp.Literal.string(RowKind.INSERTED)]
        if on_rowid:  # one read of the backup table lists its changed keys and proves the rest
            assert cond is not None
            made = lists.source(name, conn) if lists is not None else None
            if made is not None and part == "all":  # read where the worker wrote it
                in_place = made
                deleted = _deleted_in(conn, made)
            else:
                deleted = _list_changed_on_rowid(conn, s, cond, source=made)
            ins = _insert_select(
                conn, "bnew", name, new_cols, _inserted_on_rowid(conn, s, deleted, ins_select)
            )
        elif rowid and part == "inserted":  # before the list: proven by the backup's keys alone
            ins = _insert_select(
                conn, "bnew", name, new_cols, _inserted_on_rowid(conn, s, None, ins_select)
            )
        else:
            ins = _insert_select(conn, "bnew", name, new_cols, inserted_query(s, ins_select))
        counts[name] = {RowKind.INSERTED: ins}
    if part == "inserted":
        return
    ins = counts[name][RowKind.INSERTED]
    # (no primary key: never changed, only in/out)
    if early is not None and not on_rowid:  # (no replay-dependent condition after all)
        conn.execute(sql(exp.Drop(kind="TABLE", tables=[table(early, "temp")])))
    if on_rowid:
        assert cond is not None
        list_name = CHANGED_LIST
        if part == "rest" and early is not None:
            list_name = early
            _narrow_early_list(conn, s, cond, early)
        elif part == "rest":
            _list_changed_on_rowid(conn, s, cond)
        upd, dele = _rest_on_rowid(conn, a, s, new_cols, old_cols, cond, list_name, in_place)
        counts[name] = {
            RowKind.INSERTED: ins,
            RowKind.UPDATED: upd,
            RowKind.DELETED: dele,
            "status": "compared",
        }
        return
    upd_q = (
        exp.select(*n_cols, exp.Literal.string(RowKind.UPDATED))
        .from_(table(name, "old", "o"))
        .join(
            table(a.live_name(name), "new", "n"),
            on=and_all(
                (is_same if s.null_safe_key else lambda x, y: exp.EQ(this=x, expression=y))(o, n)
                for o, n in zip(s.old_key, s.new_key, strict=True)
            ),
        )
        .where(cond)
    )
    upd = _insert_select(conn, "bnew", name, new_cols, upd_q) if cond is not None else 0
    base_q = (
        exp.select(*[col(c, "o") for c in old_cols], exp.Literal.string(RowKind.UPDATED))
        .from_(table(name, "old", "o"))
        .join(
            table(name, "bnew", "b"),
            on=and_all(
                [is_same(o, _rebase(n, "b")) for o, n in zip(s.old_key, s.new_key, strict=True)]
                + [exp.EQ(this=col(KIND, "b"), expression=exp.Literal.string(RowKind.UPDATED))]
            ),
        )
    )
    _insert_select(conn, "bbase", name, old_cols, base_q)
    dele = _insert_select(
        conn,
        "bbase",
        name,
        old_cols,
        deleted_query(s, [*[col(c, "o") for c in old_cols], exp.Literal.string(RowKind.DELETED)]),
    )
    counts[name] = {
        RowKind.INSERTED: ins,
        RowKind.UPDATED: upd,
        RowKind.DELETED: dele,
        "status": "compared",
    }


CHANGED_LIST = "_recovery_changed"
"""The temporary list of one table's updated and deleted keys (:func:`_rest_on_rowid`)."""


def _list_changed_on_rowid(
    conn: Connection,
    s: TableSides,
    cond: exp.Expression,
    name: str = CHANGED_LIST,
    sure: exp.Expression | None = None,
    source: exp.Table | None = None,
) -> int:
    """ONE read of the backup table of a table keyed by the rowid on both sides: ``old LEFT JOIN
    new`` (:func:`~recovery.bundle.prelist.changed_list_query`) lists the key of every updated
    (``d`` 0) or deleted (``d`` 1) row in the temporary table ``name``, read by
    :func:`_inserted_on_rowid` and :func:`_rest_on_rowid`. Returns how many were deleted.

    With ``sure`` (:func:`list_changed_early`), ``cond`` is a superset of the changed rows and a
    third column ``u`` says whether the row is deleted or ``sure`` holds (then it is changed
    whatever the replay answers); :func:`_narrow_early_list` removes the others that are not.

    ``source``: the same list a worker process made (:class:`~recovery.bundle.prelist.Prelists`),
    copied in its order instead of the read."""
    listed = table(name, "temp")
    cols = list_columns(sure)
    conn.execute(sql(exp.Drop(kind="TABLE", tables=[listed.copy()], exists=True)))
    create_list(conn, listed, cols)
    find = copy_query(source, cols) if source is not None else changed_list_query(s, cond, sure)
    fill_list(conn, listed, cols, find)
    return _deleted_in(conn, listed)


def _deleted_in(conn: Connection, listed: exp.Table) -> int:
    """How many keys of the list ``listed`` are of deleted rows (``d`` 1)."""
    deleted = (
        exp.select(exp.func("count", exp.Star()))
        .from_(listed.copy())
        .where(exp.EQ(this=col("d"), expression=exp.Literal.number(1)))
    )
    return int(conn.execute(sql(deleted)).fetchone()[0])


def _inserted_on_rowid(
    conn: Connection, s: TableSides, deleted: int | None, select: list[exp.Expression]
) -> exp.Select:
    """The inserted rows of a table keyed by the rowid on both sides, without a second read of
    either table when counts prove where they are: the live rows above the backup's largest key
    ``top`` (a rowid range: a B-tree seek, in rowid order, the order the anti-join gave). Proven
    when no live key at or below ``top`` is missing from the backup, by either

    * ``deleted`` (from :func:`_list_changed_on_rowid`): every backup row but the deleted ones has
      its live twin (same rowid), all at or below ``top``; so if the live table holds exactly
      that many rows up to ``top``, none of them is new; or
    * (else) the backup's keys fill every integer from its smallest ``low`` to
      ``top`` (its count is ``top - low + 1``) and no live key lies below ``low``: every live key
      up to ``top`` is then a backup key.

    Counting (a rowid range or a whole table) walks the B-tree's keys only, and ``min``/``max``
    are one descent each. Otherwise (a key re-used, or below the backup's smallest) the anti-join
    of :func:`~recovery.compare.changes.inserted_query`. Runs in the extract's read transaction."""
    okey, nkey = s.old_key[0], s.new_key[0]
    old_t, new_t = table(s.name, "old", "o"), table(s.new_name or s.name, "new", "n")

    def one(q: exp.Select) -> Any:
        return conn.execute(sql(q)).fetchone()[0]

    def count(t: exp.Table) -> exp.Select:
        return exp.select(exp.func("count", exp.Star())).from_(t.copy())

    # each alone, so that SQLite answers it from the B-tree
    top = one(exp.select(exp.func("max", okey.copy())).from_(old_t.copy()))
    q = exp.select(*select).from_(new_t.copy())
    if top is None:  # an empty backup table: every live row is inserted
        return q.order_by(nkey.copy())
    above = exp.GT(this=nkey.copy(), expression=exp.Literal.number(int(top)))
    old_rows = int(one(count(old_t)))
    proven = False
    if deleted is not None:
        live_below = int(one(count(new_t))) - int(one(count(new_t).where(above.copy())))
        proven = live_below == old_rows - deleted
    if not proven:
        low = int(one(exp.select(exp.func("min", okey.copy())).from_(old_t.copy())))
        under = exp.LT(this=nkey.copy(), expression=exp.Literal.number(low))
        proven = old_rows == int(top) - low + 1 and int(one(count(new_t).where(under))) == 0
    if not proven:
        return inserted_query(s, select)
    return q.where(above).order_by(nkey.copy())


def _rest_on_rowid(
    conn: Connection,
    a: Analysis,
    s: TableSides,
    new_cols: list[str],
    old_cols: list[str],
    cond: exp.Expression,
    name: str = CHANGED_LIST,
    made: exp.Table | None = None,
) -> tuple[int, int]:
    """The updated rows, their backup images and the deleted rows of a table keyed by the rowid on
    both sides, fetched by rowid from :func:`_list_changed_on_rowid`'s list ``name`` in that list's
    order — the order, rows and counts the separate join and anti-join gave. Returns (updated,
    deleted). ``made``: instead, the same list as a worker process made it
    (:class:`~recovery.bundle.prelist.Prelists`; same rows in the same rowid order), read in place
    and left there."""
    okey, nkey = s.old_key[0], s.new_key[0]
    listed = made if made is not None else table(name, "temp")

    def fetch(side: str, cols: list[str], deleted: bool, kind: str) -> exp.Select:
        alias = "o" if side == "old" else "n"
        key = (okey if side == "old" else nkey).copy()
        return (
            exp.select(*[col(c, alias) for c in cols], exp.Literal.string(kind))
            .from_(table(listed.name, listed.db, "c"), copy=False)
            .join(
                table(s.name if side == "old" else s.new_name or s.name, side, alias),
                on=exp.EQ(this=key, expression=col("k", "c")),
                join_type="cross",  # the list drives: each row fetched by its rowid
                copy=False,
            )
            .where(
                exp.EQ(this=col("d", "c"), expression=exp.Literal.number(int(deleted))),
                copy=False,
            )
        )

    upd = _insert_select(
        conn, "bnew", s.name, new_cols, fetch("new", new_cols, False, RowKind.UPDATED)
    )
    _insert_select(conn, "bbase", s.name, old_cols, fetch("old", old_cols, False, RowKind.UPDATED))
    dele = _insert_select(
        conn, "bbase", s.name, old_cols, fetch("old", old_cols, True, RowKind.DELETED)
    )
    if made is None:
        conn.execute(sql(exp.Drop(kind="TABLE", tables=[listed.copy()])))
    return upd, dele


def list_changed_early(
    conn: Connection,
    a: Analysis,
    names: list[str],
    done: Callable[[], bool] = lambda: False,
    lists: Prelists | None = None,
) -> dict[str, str]:
    """While the upgrade's replay runs: for each table among ``names`` keyed by the rowid on both
    sides, the one read of :func:`_list_changed_on_rowid` with a condition that holds for every
    row the replay can make changed (:func:`_candidates`), into a temporary list of its own.
    Once the replay is done, :func:`_narrow_early_list` keeps of it exactly the rows
    :func:`_list_changed_on_rowid` would have listed, in the same order, by looking at the few
    candidates the replay decides (a new-only column with a non-default value) — no second read
    of the table. ``done``: the replay has ended (no further table is started then: the list
    after the replay costs the same read), unless a worker made it (``lists``: then it is copied).
    Returns {table: its list's name}."""
    out: dict[str, str] = {}
    for i, name in enumerate(names):
        source = lists.source(name, conn) if lists is not None else None
        if source is None and done():
            continue
        old_t, tm = a.old.table(name), a.mapping.tables.get(name)
        if old_t is None or tm is None or tm.skip:
            continue
        s = sides(old_t, tm)
        if isinstance(s, str) or s.null_safe_key or not sides_on_rowid(conn, s):
            continue
        found = _candidates(a, s, name)
        if found is None:
            continue
        listed = f"{CHANGED_LIST}_early_{i}"
        _list_changed_on_rowid(conn, s, found[0], listed, found[1], source)
        out[name] = listed
    return out


def list_jobs(conn: Connection, a: Analysis, waiting: list[str]) -> list[ListJob]:
    """The lists worth a worker process (:data:`~recovery.bundle.prelist.MIN_ROWS` backup keys
    or more) among those :func:`extract_table` and :func:`list_changed_early` make by the rowid,
    with the same conditions, in the order the extract needs them: the tables extracted whole
    (before the replay: their condition needs none), then the early lists of ``waiting``."""
    whole: list[ListJob] = []
    early: dict[str, ListJob] = {}
    for name in a.bundle_tables:
        old_t, tm = a.old.table(name), a.mapping.tables.get(name)
        if old_t is None or tm is None or tm.skip:
            continue
        s = sides(old_t, tm)
        if isinstance(s, str) or not sides_on_rowid(conn, s):
            continue
        sure: exp.Expression | None = None
        if name in waiting:
            found = None if s.null_safe_key else _candidates(a, s, name)
            if found is None:
                continue
            cond, sure = found
        else:
            whole_cond = _changed_condition(a, s, a.new.tables[a.live_name(name)], a.replay)
            if whole_cond is None:
                continue
            cond = whole_cond
        span = rowid_span(conn, s)
        if span is None or span[1] - span[0] + 1 < prelist.MIN_ROWS:
            continue
        # the worker's own trees: nothing it reads is shared with what this thread builds
        mine = replace(
            s,
            old_key=tuple(k.copy() for k in s.old_key),
            new_key=tuple(k.copy() for k in s.new_key),
            compared=(),
        )
        job = ListJob(
            name,
            mine,
            cond.copy(),
            sure.copy() if sure is not None else None,
            span[1] - span[0] + 1,
        )
        if name in waiting:
            early[name] = job
        else:
            whole.append(job)
    return whole + [early[n] for n in waiting if n in early]


def _attach_and_begin(
    a: Analysis, work: Path, replay_dir: str, replays: bool, begun: list[Prelists | None]
) -> None:
    """On ``a.pair``: attach the bundle's files in ``work`` and (``replays``) the replayed
    upgrade's file (:func:`~recovery.compare.diff.replay_path` in ``replay_dir``, written later),
    then :func:`_begin` the extract's transaction with the lists of ``a``'s mapping; appended to
    ``begun``. Called before the rules are checked (so that the workers' lists and the checks
    overlap): the lists are then held to the checked mapping (:meth:`Prelists.hold_to`), and the
    pair is query-only again until the caller writes."""
    conn = a.pair
    conn.execute("PRAGMA query_only = OFF")
    conn.execute("ATTACH DATABASE ? AS bnew", (str(work / "rows.db"),))
    conn.execute("ATTACH DATABASE ? AS bbase", (str(work / "base.db"),))
    if replays:
        path = replay_path(replay_dir)
        path.touch()
        conn.execute("ATTACH DATABASE ? AS " + REPLAY_SCHEMA, (attach_uri(path),))
    begun.append(_begin(conn, a, waiting_for_replay(a, replays), Path(replay_dir)))
    conn.execute("PRAGMA query_only = ON")


def _begin(conn: Connection, a: Analysis, waiting: list[str], folder: Path) -> Prelists | None:
    """Open the extract's transaction; when some large tables' lists are worth it, first attach
    the scratch files of :class:`~recovery.bundle.prelist.Prelists` (in ``folder``), then fix the
    transaction's snapshot of the live file and start the workers that make those lists in it."""
    jobs = list_jobs(conn, a, waiting) if isinstance(conn, sqlite3.Connection) else []
    if not jobs:
        conn.execute("BEGIN")
        return None
    lists = Prelists(folder, jobs)
    lists.attach(conn)
    mode = conn.execute("PRAGMA new.journal_mode").fetchone()
    instant = OneInstant(str(a.live)) if mode and str(mode[0]).lower() == "wal" else None
    try:
        OneInstant.join(conn)  # BEGIN, and the live file read: the instant the workers join
        lists.start(a.backup, a.live, instant)
    except BaseException:
        lists.close()
        raise
    return lists


def _candidates(
    a: Analysis, s: TableSides, name: str
) -> tuple[exp.Expression, exp.Expression] | None:
    """(superset, sure) of :func:`changes.changed_condition` for any replay: ``sure`` is its part
    that needs no replay (the old-schema projection differs; FALSE when nothing is compared), the
    superset adds "a column the old schema cannot carry holds a non-default value", which every
    :func:`changes.user_value` implies. None when no column is uncarried (the condition does not
    depend on the replay)."""
    new_t = a.new.tables[a.live_name(name)]
    lost = [c for c in uncarried_columns(a, name) if c not in new_t.key]
    if not lost:
        return None
    sure = changes.updated_condition(s) if s.compared else exp.false()
    nd = [changes.non_default(new_t, c, "n") for c in lost]
    return or_all([sure.copy(), *nd]), sure


def _narrow_early_list(conn: Connection, s: TableSides, cond: exp.Expression, name: str) -> None:
    """Remove from the early list ``name`` the candidates that are not changed by ``cond`` (the
    condition with the replay): each one is looked up by its rowid on both sides, so the work is
    the candidates', not the table's. Rows are only deleted: the rest keep their order."""
    okey, nkey = s.old_key[0], s.new_key[0]
    unsure = exp.EQ(this=col("u", "c"), expression=exp.Literal.number(0))
    keep = (
        exp.select(col("k", "c"))
        .from_(table(name, "temp", "c"))
        .join(
            table(s.name, "old", "o"),
            on=exp.EQ(this=okey.copy(), expression=col("k", "c")),
            join_type="cross",
        )
        .join(
            table(s.new_name or s.name, "new", "n"),
            on=exp.EQ(this=nkey.copy(), expression=col("k", "c")),
            join_type="cross",
        )
        .where(exp.and_(unsure.copy(), exp.Paren(this=cond.copy())))
    )
    drop = exp.Delete(
        this=table(name, "temp"),
        where=exp.Where(
            this=exp.and_(
                exp.EQ(this=col("u"), expression=exp.Literal.number(0)),
                exp.Not(this=exp.In(this=col("k"), query=keep.subquery())),
            )
        ),
    )
    conn.execute(sql(drop))


def _rebase(e: exp.Expression, alias: str) -> exp.Expression:
    out = e.copy()
    for c in out.find_all(exp.Column):
        c.set("table", exp.to_identifier(alias, quoted=True))
    return out


def _changed_condition(
    a: Analysis, s: TableSides, new_t: Table, replay: Replayed | None = None
) -> exp.Expression | None:
    """Updated for extraction: the one definition ``diff`` also counts with."""
    return changes.changed_condition(s, new_t, a.mapping.tables.get(s.name), a.since_jd, replay)


def _match(a: str, a_cols: tuple[str, ...], b: str, b_cols: tuple[str, ...]) -> exp.Expression:
    return and_all(is_same(col(x, a), col(y, b)) for x, y in zip(a_cols, b_cols, strict=True))


def _exists(name: str, schema: str, alias: str, cond: exp.Expression) -> exp.Expression:
    return exp.Exists(
        this=exp.select(exp.Literal.number(1)).from_(table(name, schema, alias)).where(cond)
    )


def _keys(name: str, alias: str, cols: tuple[str, ...]) -> exp.Select:
    """The non-NULL ``cols`` of bundle table ``name`` (NULL references nothing, and a NULL in a
    ``NOT IN`` list would make it unknown for every row)."""
    return (
        exp.select(*[col(c, alias) for c in cols])
        .from_(table(name, "bnew", alias))
        .where(
            and_all(exp.Not(this=exp.Is(this=col(c, alias), expression=exp.Null())) for c in cols)
        )
    )


def _row(cols: tuple[str, ...], alias: str) -> exp.Expression:
    return (
        col(cols[0], alias)
        if len(cols) == 1
        else exp.Tuple(expressions=[col(c, alias) for c in cols])
    )


def close_foreign_keys(conn: Connection, a: Analysis, counts: dict[str, Any]) -> None:
    """Bring every parent a bundle row needs that neither the bundle nor the backup has (e.g. a
    parent left out by a filter), until nothing changes. Parents the backup has are referenced,
    not copied.

    The bundle sides are uncorrelated ``IN (SELECT …)`` lists: SQLite materialises each once and
    drives the parent by its key, linear in the bundle size (a correlated EXISTS over the unindexed
    bundle tables would cost parent rows × bundle rows: hours at 1M parts).

    A foreign key's statement runs again only when its child table gained rows since it last ran:
    otherwise every parent it could find is in the bundle by now (its own last run added them),
    so it would add nothing."""
    grown: dict[str, int] = {}  # table -> rows the closure added to it so far
    seen: dict[tuple[str, int], int] = {}  # (child, FK index) -> the child's growth at its last run
    for _ in range(len(a.new.tables) + 1):
        added = 0
        for name in a.bundle_tables:
            for i, fk in enumerate(a.new.tables[a.live_name(name)].foreign_keys):
                parent = a.new.table(fk.ref_table)
                if parent is None or fk.ref_table not in counts:
                    continue
                if _holds_every_new_parent(a, counts, fk):
                    continue
                if seen.get((name, i)) == grown.get(name, 0):
                    continue
                seen[(name, i)] = grown.get(name, 0)
                conds: list[exp.Expression] = [
                    exp.In(
                        this=_row(fk.ref_columns, "p"),
                        query=_keys(name, "c", fk.columns).subquery(),
                    ),
                    exp.Not(
                        this=exp.In(
                            this=_row(fk.ref_columns, "p"),
                            query=_keys(fk.ref_table, "pb", fk.ref_columns).subquery(),
                        )
                    ),
                ]
                if a.old.table(fk.ref_table) is not None:
                    conds.append(
                        exp.Not(
                            this=_exists(
                                fk.ref_table,
                                "old",
                                "po",
                                _match("po", fk.ref_columns, "p", fk.ref_columns),
                            )
                        )
                    )
                q = (
                    exp.select(
                        *[col(c, "p") for c in parent.column_names],
                        exp.Literal.string(RowKind.CLOSURE),
                    )
                    .from_(table(fk.ref_table, "new", "p"))
                    .where(and_all(conds))
                )
                n = _insert_select(conn, "bnew", fk.ref_table, list(parent.column_names), q)
                if n:
                    counts[fk.ref_table][RowKind.CLOSURE] = (
                        counts[fk.ref_table].get(RowKind.CLOSURE, 0) + n
                    )
                    grown[fk.ref_table] = grown.get(fk.ref_table, 0) + n
                    added += n
        if not added:
            return


ALL_ROWS = ("new table", "skipped by mapping")
"""Statuses of a bundle table that holds every live row (:func:`extract_table`)."""


def _holds_every_new_parent(a: Analysis, counts: dict[str, Any], fk: ForeignKey) -> bool:
    """Whether ``fk``'s parent table in the bundle already holds every live row the closure could
    bring for it (a row the backup lacks): the table holds every live row; or it was compared
    (its inserted rows are every live row whose key the backup lacks, matched by ``=`` on the
    same-named key columns) and ``fk`` references exactly that key, so a parent the backup lacks
    is an inserted row, already in the bundle. Then the closure's statement would add nothing."""
    status = counts[fk.ref_table].get("status")
    if status in ALL_ROWS:
        return True
    old_t, tm = a.old.table(fk.ref_table), a.mapping.tables.get(fk.ref_table)
    if status != "compared" or old_t is None or tm is None or tm.skip or tm.new_table:
        return False
    s = sides(old_t, tm)
    return (
        not isinstance(s, str)
        and not s.null_safe_key
        and tuple(fk.ref_columns) == tuple(s.key)
        and all(
            isinstance(n, exp.Column) and n.name == k for n, k in zip(s.new_key, s.key, strict=True)
        )
    )


def _create_list(conn: Connection, name: str, schema: str = "bnew") -> None:
    conn.execute(
        sql(
            exp.Create(
                this=exp.Schema(
                    this=table(name, schema),
                    expressions=[
                        exp.ColumnDef(this=exp.to_identifier(c, quoted=True))
                        for c in ("table", "key", "label", "column", "value", "reason")
                    ],
                ),
                kind="TABLE",
            )
        )
    )


def _same(e: exp.Expression) -> exp.Expression:
    return e


EARLY_LOST = "_recovery_lost_early"
"""The temporary list :func:`list_lost_early` fills (the columns of ``_recovery_lost``)."""
EARLY_DONE = "_recovery_lost_early_tables"
"""The tables :func:`list_lost_early` listed in full, with their count of lost values."""


def _lost_queries(
    a: Analysis,
    files: FilesConfig,
    name: str,
    replay: Replayed | None,
    as_text: Callable[[exp.Expression], exp.Expression] = _same,
    key_expr: Callable[[tuple[str, ...], str], exp.Expression] = key_json,
    label_schema: str = "new",
    label: exp.Expression | None = None,
) -> list[exp.Select]:
    """The SELECTs of :func:`record_lost` for bundle table ``name``, one per column, in order.
    ``label``: the row's label as :func:`_labels_listed` looks it up (default :func:`label_expr`)."""
    new_t = a.new.tables[a.live_name(name)]
    carried = _carried(a, name)
    if carried:
        cols = [c for c in uncarried_columns(a, name) if c not in new_t.key]
        reason = "column not in the old schema"
    else:
        cols = [c for c in new_t.column_names if c not in new_t.key]
        reason = (
            "table not in the old schema"
            if a.old.table(name) is None
            else "table skipped by mapping"
        )
    out = []
    for c in cols:
        conds = [
            exp.In(this=col(KIND, "b"), expressions=[exp.Literal.string(k) for k in CHANGED_KINDS])
        ]
        conds.append(
            user_value(new_t, c, "b", replay)
            if carried
            else exp.Not(this=exp.Is(this=col(c, "b"), expression=exp.Null()))
        )
        via = derivable(new_t, c, files, "b") if carried else None
        if via is not None:
            conds.append(exp.Not(this=via))
        out.append(
            exp.select(
                exp.Literal.string(name),
                key_expr(new_t.key, "b"),
                as_text(
                    label.copy()
                    if label is not None
                    else label_expr(new_t, a.new, "b", label_schema)
                ),
                exp.Literal.string(c),
                as_text(col(c, "b")),
                exp.Literal.string(reason),
            )
            .from_(table(name, "bnew", "b"))
            .where(and_all(conds))
        )
    return out


LABELS = "_recovery_labels"
"""The temporary list of one bundle table's row labels (:func:`_labels_listed`)."""


def _labels_listed(conn: Connection, a: Analysis, name: str) -> exp.Expression | None:
    """When bundle table ``name``'s rows take their label from a parent (:func:`label_parent`):
    each changed row's label looked up ONCE, into the temporary :data:`LABELS` keyed by the
    bundle row's rowid, and the expression that reads it back for row ``b``; the per-column
    statements of :func:`_lost_queries` then find it by rowid instead of each looking the parent
    up again (a random read of a large parent per row and column). None when the label needs no
    lookup or only one column is listed. SQLite only; the caller drops :data:`LABELS`."""
    new_t = a.new.tables[a.live_name(name)]
    if (
        label_parent(new_t, a.new) is None
        or any(c.lower() in ("rowid", "oid", "_rowid_") for c in new_t.column_names)
        or len(_lost_queries(a, FilesConfig(), name, None)) < 2
    ):
        return None  # (a column named rowid would shadow the bundle row's rowid)
    listed = table(LABELS, "temp")
    conn.execute(sql(exp.Drop(kind="TABLE", tables=[listed.copy()], exists=True)))
    conn.execute(
        sql(
            exp.Create(
                this=exp.Schema(
                    this=listed.copy(),
                    expressions=[
                        exp.ColumnDef(
                            this=exp.to_identifier("r", quoted=True),
                            kind=exp.DataType.build("INTEGER"),
                            constraints=[
                                exp.ColumnConstraint(kind=exp.PrimaryKeyColumnConstraint())
                            ],
                        ),
                        exp.ColumnDef(this=exp.to_identifier("l", quoted=True)),
                    ],
                ),
                kind="TABLE",
            )
        )
    )
    fill = (
        exp.select(col("rowid", "b"), label_expr(new_t, a.new, "b"))
        .from_(table(name, "bnew", "b"))
        .where(
            exp.In(this=col(KIND, "b"), expressions=[exp.Literal.string(k) for k in CHANGED_KINDS])
        )
    )
    conn.execute(sql(exp.Insert(this=listed.copy(), expression=fill)))
    return exp.Subquery(
        this=exp.select(col("l", "lb"))
        .from_(table(LABELS, "temp", "lb"))
        .where(exp.EQ(this=col("r", "lb"), expression=col("rowid", "b")))
    )


def _drop_labels(conn: Connection) -> None:
    conn.execute(sql(exp.Drop(kind="TABLE", tables=[table(LABELS, "temp")], exists=True)))


def _carried(a: Analysis, name: str) -> bool:
    """The old schema has table ``name`` and the mapping carries it."""
    return (
        name in a.mapping.tables
        and not a.mapping.tables[name].skip
        and a.old.table(name) is not None
    )


def list_lost_early(
    conn: Connection, a: Analysis, files: FilesConfig, names: list[str], done: Callable[[], bool]
) -> None:
    """:func:`record_lost`'s statements for the bundle tables among ``names`` that the old schema
    lacks or the mapping skips, written into the temporary :data:`EARLY_LOST`, while the upgrade's
    replay runs on another thread (``done``: it has ended; no further table is started then).
    Their lost values need no replay and their changed rows are final once extracted (the FK
    closure adds ``closure`` rows only, which hold no lost values); :func:`record_lost` then
    copies each listed table's rows into ``_recovery_lost`` at its turn, in the order written, so
    the list is the one it would have made."""
    todo = [n for n in sorted(names) if not _carried(a, n)]
    if not todo or done():
        return
    _create_list(conn, EARLY_LOST, "temp")
    conn.execute(
        sql(
            exp.Create(
                this=exp.Schema(
                    this=table(EARLY_DONE, "temp"),
                    expressions=[
                        exp.ColumnDef(this=exp.to_identifier(c, quoted=True)) for c in "nc"
                    ],
                ),
                kind="TABLE",
            )
        )
    )
    for name in todo:
        if done():
            return
        total = 0
        label = _labels_listed(conn, a, name)
        for q in _lost_queries(a, files, name, None, label=label):
            total += int(
                conn.execute(sql(exp.Insert(this=table(EARLY_LOST, "temp"), expression=q))).rowcount
            )
        _drop_labels(conn)
        conn.execute(
            sql(
                exp.Insert(
                    this=table(EARLY_DONE, "temp"),
                    expression=exp.select(exp.Literal.string(name), exp.Literal.number(total)),
                )
            )
        )


def _early_lists(conn: Connection) -> dict[str, int] | None:
    """{table: lost values} that :func:`list_lost_early` listed on ``conn`` (None: it did not run)."""
    has = conn.execute(
        "SELECT 1 FROM temp.sqlite_master WHERE type = 'table' AND name = ?", (EARLY_DONE,)
    ).fetchone()
    if not has:
        return None
    q = exp.select(col("n"), col("c")).from_(table(EARLY_DONE, "temp"))
    return {str(n): int(c) for n, c in conn.execute(sql(q)).fetchall()}


def record_lost(
    conn: Connection,
    a: Analysis,
    files: FilesConfig,
    counts: dict[str, Any],
    *,
    as_text: Callable[[exp.Expression], exp.Expression] = _same,
    key_expr: Callable[[tuple[str, ...], str], exp.Expression] = key_json,
    create_list: Callable[[Any, str], None] | None = None,
    label_schema: str = "new",
) -> None:
    """Every value a user made that the old schema has no place for, one row per cell: in an
    inserted row, a non-NULL value; in an updated row of a shared table, a value
    :func:`recovery.compare.changes.user_value` calls a user's (non-default and, with the upgrade replayed,
    not what the migration wrote). Then the values listed as "filled by the upgrade, not
    verified" (:func:`record_filled`). ``as_text`` wraps the label and the value as the lists
    store them, ``key_expr`` writes a row's key as JSON text and ``create_list`` creates a list:
    the PostgreSQL extract's casts to text, its ``to_json`` keys and its DDL (:mod:`recovery.bundle.pgextract`); by default SQLite's, values as they are. ``label_schema``: where
    :func:`label_expr` looks a row's label up in its parent (the PostgreSQL extract's local copy)."""
    (create_list or _create_list)(conn, LOST_TABLE)
    replay = a.replay
    early = _early_lists(conn) if create_list is None else None
    for name in sorted(counts):
        if (
            early is not None and name in early
        ):  # listed by list_lost_early while the replay ran: same rows, same order
            from_early = (
                exp.select(exp.Star())
                .from_(table(EARLY_LOST, "temp"))
                .where(exp.EQ(this=col("table"), expression=exp.Literal.string(name)))
                .order_by(exp.column("rowid"))
            )
            conn.execute(sql(exp.Insert(this=table(LOST_TABLE, "bnew"), expression=from_early)))
            counts[name]["lost"] = early[name]
            continue
        total = 0
        label = _labels_listed(conn, a, name) if create_list is None else None  # (SQLite)
        for q in _lost_queries(a, files, name, replay, as_text, key_expr, label_schema, label):
            stmt = exp.Insert(this=table(LOST_TABLE, "bnew"), expression=q)
            total += int(conn.execute(sql(stmt)).rowcount)
        if label is not None:
            _drop_labels(conn)
        counts[name]["lost"] = total
    if early is not None:
        for t in (EARLY_LOST, EARLY_DONE):
            conn.execute(sql(exp.Drop(kind="TABLE", tables=[table(t, "temp")])))
    record_filled(
        conn,
        a,
        counts,
        replay,
        as_text=as_text,
        key_expr=key_expr,
        create_list=create_list,
        label_schema=label_schema,
    )


def record_filled(
    conn: Connection,
    a: Analysis,
    counts: dict[str, Any],
    replay: Replayed | None,
    *,
    as_text: Callable[[exp.Expression], exp.Expression] = _same,
    key_expr: Callable[[tuple[str, ...], str], exp.Expression] = key_json,
    create_list: Callable[[Any, str], None] | None = None,
    label_schema: str = "new",
) -> None:
    """Values in columns only the new schema has, in live rows whose old-schema projection is the
    backup's, that nothing can tell from what the upgrade filled in (no replay of the upgrade, no
    updated-at time; :func:`recovery.compare.changes.filled_parts`): listed in ``_recovery_filled`` with
    their count as ``filled_by_upgrade`` — not lost, and not carried (the rollback restores those
    rows exactly as the backup has them). ``as_text``, ``key_expr``, ``create_list``,
    ``label_schema``: as for :func:`record_lost`."""
    (create_list or _create_list)(conn, FILLED_TABLE)
    for name in sorted(counts):
        tm = a.mapping.tables.get(name)
        old_t, new_t = a.old.table(name), a.new.tables[a.live_name(name)]
        if old_t is None or tm is None or tm.skip:
            continue
        s = sides(old_t, tm)
        parts = (
            None
            if isinstance(s, str) or s.null_safe_key
            else changes.filled_parts(new_t, tm, a.since_jd, replay)
        )
        if parts is None or isinstance(s, str):
            continue
        untouched = [exp.Not(this=changes.updated_condition(s))] if s.compared else []
        total = 0
        for c, flag in zip(*parts, strict=True):
            q = (
                exp.select(
                    exp.Literal.string(name),
                    key_expr(new_t.key, "n"),
                    as_text(label_expr(new_t, a.new, "n", label_schema)),
                    exp.Literal.string(c),
                    as_text(col(c, "n")),
                    exp.Literal.string("filled by the upgrade, not verified"),
                )
                .from_(table(name, "old", "o"))
                .join(
                    table(a.live_name(name), "new", "n"),
                    on=and_all(
                        exp.EQ(this=o, expression=n)
                        for o, n in zip(s.old_key, s.new_key, strict=True)
                    ),
                )
                .where(and_all([*untouched, flag]))
            )
            total += int(
                conn.execute(
                    sql(exp.Insert(this=table(FILLED_TABLE, "bnew"), expression=q))
                ).rowcount
            )
        if total:
            counts[name]["filled_by_upgrade"] = total


def live_fingerprint(path: Path) -> dict[str, Any]:
    wal, _ = sidecars(path)
    return {
        "path": str(path.resolve()),
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
        "wal_sha256": sha256_file(wal) if wal.exists() else None,
    }


def extract(
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    out: str | os.PathLike[str],
    since: str | None = None,
    mapping: str | os.PathLike[str] | None = None,
    alembic_ini: str | os.PathLike[str] | None = None,
    uploads: str | os.PathLike[str] | None = None,
    files: FilesConfig | None = None,
    trust_mapping: bool = False,
    derived_lineage: Callable[[], tuple[dict[str, dict[str, exp.Expression]], dict[str, Any]]]
    | None = None,
    live_print: Callable[[], dict[str, Any]] | None = None,
) -> ExtractResult:
    """Extract every change since ``backup`` from ``live`` into a new bundle folder ``out``.
    A column rule the unchanged rows contradict is refused unless ``trust_mapping``.

    ``derived_lineage``: waits for and returns what
    :func:`recovery.migrate.migrations.derive_lineage` gives for ``alembic_ini``, ``backup`` and
    this live schema, when the caller started it earlier (the rollback starts it beside its safety
    copy); else it is derived here, on a thread, while the schemas are read and compared.

    ``live_print``: the manifest's live fingerprint (:func:`live_fingerprint`) when it is not
    ``live``'s own: the rollback reads the live DB under its write lock and fingerprints the
    safety copy it makes meanwhile (called on the hashing thread, after the others' work)."""
    out_p = Path(out)
    if out_p.exists() and (not out_p.is_dir() or any(out_p.iterdir())):
        raise RecoveryError(
            f"--out {out_p} already exists and is not empty",
            "choose a new folder; nothing was overwritten",
        )
    files = files or FilesConfig()
    lineage, lineage_report = None, None
    replay_dir = tempfile.mkdtemp(prefix="recovery-replay-")
    pending: PendingReplay | None = None
    work = out_p.with_name(f".{out_p.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=DIR_MODE)  # users' data: nobody else may enter while it is built
    held = lock_partial(work)  # released only when this process ends or the bundle is done
    # The sources' fingerprints only go into the manifest: hash them on the second core while
    # SQLite works on the first (hashlib releases the GIL). The inputs are read-only.
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recovery-hash")
    live_printed = None if live_print is not None else hasher.submit(live_fingerprint, Path(live))
    # and walk the uploads folder (the copy after the SQL asks the walk which files exist)
    walk = (
        hasher.submit(UploadsIndex, Path(uploads))
        if uploads is not None and Path(uploads).is_dir()
        else None
    )
    # last: a rollback's staged proof may have hashed the backup meanwhile (sha256_file remembers)
    backup_sha = hasher.submit(sha256_file, Path(backup))
    if live_printed is None:  # after the walk: it may wait for a copy still being made
        assert live_print is not None
        live_printed = hasher.submit(live_print)
    hasher.shutdown(wait=False)
    derived: Future[tuple[dict[str, dict[str, exp.Expression]], dict[str, Any]]] | None = None
    copying: Future[dict[str, object]] | None = None
    written: dict[str, str] = {}  # the upload copies' digests, taken as they were written
    db_hashes: dict[str, Future[str]] = {}
    sandbox: Sandbox | None = None
    lists: Prelists | None = None
    begun: list[Prelists | None] = []  # the workers' lists, once the transaction is open
    try:
        if alembic_ini is not None and derived_lineage is None:
            # the app's downgrade in the sandbox (its own child process) while the hashes run and
            # the schemas are read; in this context, so a ``protecting`` block still applies
            from recovery.migrate.migrations import derive_lineage

            lineage_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recovery-lineage")
            derived = lineage_pool.submit(  # (its child kept for the replay below)
                contextvars.copy_context().run, derive_lineage, alembic_ini, backup, live, True
            )
            lineage_pool.shutdown(wait=False)
            derived_lineage = derived.result

        def rules() -> dict[str, dict[str, exp.Expression]] | None:
            nonlocal lineage, lineage_report
            if derived_lineage is None:
                return None
            lineage, lineage_report = derived_lineage()
            return lineage

        if alembic_ini is not None:
            # the replay's child starts now (Python, SQLAlchemy, Alembic): warm when the upgrade
            # is asked for, after the analysis and the bounded copy
            sandbox = start_sandbox(alembic_ini, replay_path(replay_dir), backup, live)

        def mapped(pre: Analysis) -> None:  # the rules resolved, not yet checked
            _attach_and_begin(pre, work, replay_dir, alembic_ini is not None, begun)

        with analyse(backup, live, since, mapping, rules, trust_mapping, mapped) as a:
            conn = a.pair
            conn.execute("PRAGMA query_only = OFF")
            counts: dict[str, Any] = {}
            if alembic_ini is not None:
                # the replay runs (its own thread, its child process) while the tables that do
                # not depend on it are extracted; its file was attached before BEGIN (SQLite
                # attaches only outside a transaction), and is first read once it is done
                pending = start_replayed_upgrade(alembic_ini, a, replay_dir, sandbox)
                sandbox = None  # (the replay owns it now)
            waiting = waiting_for_replay(a, pending is not None)  # (of the checked mapping)
            assert begun  # (analyse calls ``mapped`` before the checks)
            lists = begun[0]
            if lists is not None:  # the checked rules: drop a list begun under other ones
                lists.hold_to(list_jobs(conn, a, waiting))
            progress.set_total(
                len(a.bundle_tables) + 2
            )  # the extract step's bar: tables, closure, lost
            for name in a.bundle_tables:
                part = "inserted" if name in waiting else "all"
                extract_table(conn, a, name, counts, part, lists=lists)
                if name not in waiting:
                    progress.advance(1, name)
            early_files: list[tuple[Any, Any, Any]] | None = None
            if uploads and files.table not in waiting:
                # the files table is extracted: copy its files while the replay and the rest run
                early_files = bundle_file_rows(conn, files, "bnew")
                copying = _start_copy(work, uploads, backup, files, walk, early_files, written)
            early: dict[str, str] = {}
            if pending is not None and waiting:  # the idle wait for the replay: lists first
                early = list_changed_early(conn, a, waiting, pending.future.done, lists)
                list_lost_early(conn, a, files, a.bundle_tables, pending.future.done)
            replay = pending.result() if pending is not None else None
            if replay is not None:  # its file, written by the child: read its schema alone first
                changes.read_schema_of(conn, REPLAY_SCHEMA)
            a.replay = replay
            for name in waiting:
                extract_table(conn, a, name, counts, "rest", early.get(name))
                progress.advance(1, name)
            close_foreign_keys(conn, a, counts)
            progress.advance(1, "foreign-key closure")
            if uploads:  # the bundle's files table is final: copy its files while SQLite works on
                final_files = bundle_file_rows(conn, files, "bnew")
                if copying is not None and final_files != early_files:  # the closure added some
                    _discard_copy(copying, work, written)
                    copying = None
                if copying is None:
                    copying = _start_copy(work, uploads, backup, files, walk, final_files, written)
            record_lost(conn, a, files, counts)
            progress.advance(1, "lost values")
            live_sequences = read_sequences(conn, "new")  # in the same read as the rows
            conn.execute("COMMIT")
            if lists is not None:
                lists.detach(conn)
            conn.execute("DETACH DATABASE bnew")
            conn.execute("DETACH DATABASE bbase")
            # both files are complete and closed: hash them while the plan, the upload copies and
            # the manifest are made (the seal takes these digests of the bytes just written)
            db_hashes = {f: _hash_in_background(work / f) for f in ("rows.db", "base.db")}
            has_rows = {t for t, c in counts.items() if TableCounts.from_dict(c).carried}
            has_deletes = {t for t, c in counts.items() if TableCounts.from_dict(c).deleted}
            p = make_plan(a.old, a.new, a.mapping, has_rows, has_deletes)
            file_report = copying.result() if copying is not None else None
            manifest: dict[str, Any] = {
                "format": FORMAT,
                "tool_version": __version__,
                "created_at": datetime.now().replace(microsecond=0).isoformat(sep="T"),
                "deploy_time": a.since,
                "sources": {
                    "backup": {
                        "path": str(a.backup.resolve()),
                        "sha256": backup_sha.result(),
                        "alembic_revision": a.old.alembic_revision,
                    },
                    "live": {
                        **live_printed.result(),
                        "alembic_revision": a.new.alembic_revision,
                        "sqlite_sequence": live_sequences,
                    },
                },
                "schemas": {"old": a.old.to_dict(), "new": a.new.to_dict()},
                "schema_diff": a.schema_diff.to_dict(),
                "mapping": a.mapping.to_dict(),
                "lineage": lineage_report,
                "upgrade_replayed": replay is not None,
                "counts": counts,
                "planning_errors": list(p.errors),
                "files": file_report,
            }
        (work / "reimport.sql").write_text(p.to_sql("sqlite"), encoding="utf-8")
        seal(work, manifest, known={**written, **{f: h.result() for f, h in db_hashes.items()}})
        os.replace(work, out_p) if not out_p.exists() else _move_into(work, out_p)
        fsync_dir(out_p.parent)
    except BaseException as exc:
        jobs = (backup_sha, live_printed, walk, derived, copying, *db_hashes.values())
        for f in jobs:  # no job outlives a failure
            if f is not None and not f.cancel():
                f.exception()
        if pending is not None:
            pending.wait()
        shutil.rmtree(work, ignore_errors=True)
        first = _lineage_error(derived)
        if first is not None and first is not exc and isinstance(exc, Exception):
            raise first from None  # what the migrations said comes first, as it always has
        raise
    finally:
        if sandbox is not None:  # started, never handed to the replay
            sandbox.close()
        if derived is not None:  # the lineage's child, if the replay never adopted it
            release_spare()
        for started in begun:  # (before their files are removed with the replay's folder)
            if started is not None:
                started.close()
        os.close(held)
        shutil.rmtree(replay_dir, ignore_errors=True)
    return ExtractResult(
        open_bundle(out_p, verify=False), p, manifest["deploy_time"], _walk_done(walk)
    )  # sealed just above


def _discard_copy(copying: Future[dict[str, object]], work: Path, written: dict[str, str]) -> None:
    """Wait for an upload copy made from rows that are no longer the bundle's, and remove what it
    wrote (``work/files`` and its digests): the copy is then made again from the final rows."""
    copying.exception()  # whatever it ended with: it is made again
    shutil.rmtree(work / "files", ignore_errors=True)
    written.clear()


def _hash_in_background(path: Path) -> Future[str]:
    """sha256 of ``path`` on its own thread (hashlib releases the GIL)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recovery-seal")
    try:
        return pool.submit(sha256_file, path)
    finally:
        pool.shutdown(wait=False)


def _walk_done(walk: Future[UploadsIndex] | None) -> UploadsIndex | None:
    """The uploads walk, when it finished without an error."""
    if walk is None or not walk.done() or walk.cancelled() or walk.exception() is not None:
        return None
    return walk.result()


def _lineage_error(derived: Future[Any] | None) -> RecoveryError | None:
    """The refusal the lineage's derivation ended with (a finished job), if any."""
    if derived is None or not derived.done() or derived.cancelled():
        return None
    err = derived.exception()
    return err if isinstance(err, RecoveryError) else None


def _start_copy(
    work: Path,
    uploads: str | os.PathLike[str],
    backup: str | os.PathLike[str],
    files: FilesConfig,
    walk: Future[UploadsIndex] | None,
    rows: list[tuple[Any, Any, Any]],
    written: dict[str, str],
) -> Future[dict[str, object]]:
    """:func:`recovery.files.uploads.copy_files_into_bundle` of ``rows`` (the bundle's files table,
    read in the extract's transaction) on its own thread: file reads, writes, fsyncs and hashing
    release the GIL, so the copies overlap the extract's last statements."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recovery-copy")
    try:
        return pool.submit(
            lambda: copy_files_into_bundle(
                work,
                uploads,
                backup,
                files,
                walk.result() if walk else None,
                written=written,
                rows=rows,
            )
        )
    finally:
        pool.shutdown(wait=False)


def lock_partial(folder: Path) -> int:
    """An exclusive ``flock`` on ``folder``, held through the returned descriptor: the kernel drops
    it when the writer closes it or dies, so a held lock means a live writer (whatever its pid now
    names: a zombie holds no lock, a reused pid never took this one)."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def partial_in_use(folder: Path) -> bool:
    """True while a live process holds :func:`lock_partial` on ``folder``."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _move_into(work: Path, out_p: Path) -> None:
    """``out_p`` exists and is empty: replace it with the finished bundle."""
    out_p.rmdir()
    os.replace(work, out_p)
