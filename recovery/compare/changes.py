"""``ChangeSet``: the row diff backup → live, judged in the old schema's projection.

All of it runs inside SQLite over the two attached databases (``old`` = backup, ``new`` = live):
anti-joins by key for inserted and deleted rows, a keyed join comparing the old columns with their
new-schema expressions (renames and mapping rules applied) for updated rows. Python only streams
keys and changed cells when asked for rows, in bounded batches.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from recovery.engine.base import Connection
from recovery.model.kinds import RowKind
from recovery.transpile.mapping import ColumnMapping, TableMapping
from recovery.engine.schema import Schema, Table
from recovery.migrate.replay import Replayed
from recovery.engine.sqlbuild import (
    and_all,
    col,
    current_dialect,
    is_distinct,
    is_same,
    or_all,
    qualify_columns,
    sql,
    table,
)
from recovery.compare.timestamps import after_expr, find_timestamp_columns

BATCH = 5000


@dataclass(frozen=True)
class CellChange:
    column: str
    old: Any
    new: Any


@dataclass(frozen=True)
class RowChange:
    kind: RowKind
    key: tuple[Any, ...]
    cells: tuple[CellChange, ...] = ()
    after_deploy: bool | None = None


@dataclass(frozen=True)
class TableChanges:
    table: str
    key: tuple[str, ...]
    keyed_by: str  # "primary key" | "all columns"
    status: str  # "compared" | "new table" | "removed table" | "skipped: <why>"
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    compared_columns: tuple[str, ...] = ()
    uncompared_columns: tuple[str, ...] = ()
    timestamp_columns: dict[str, str] = field(default_factory=dict)
    after_deploy: dict[RowKind, int | None] | None = None
    rows: tuple[RowChange, ...] | None = None
    changed_only_in_new_columns: int = 0
    """Of the ``updated`` rows, those whose old-schema projection is the backup's: only a column
    the new schema alone has holds a value a user set (see :func:`new_only_parts`); extract
    carries them as updated rows and lists those values as lost."""
    values_at_risk: int = 0
    """The values of those rows that the old schema has no place for."""
    filled_by_upgrade: int = 0
    """Non-default values in columns only the new schema has, in rows whose old-schema projection
    is the backup's, that nothing can tell from what the upgrade filled in (no replay of the
    upgrade, no updated-at time): listed, not lost (:func:`filled_parts`)."""

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.deleted


@dataclass(frozen=True)
class ChangeSet:
    tables: dict[str, TableChanges]
    since: str | None = None

    @property
    def total(self) -> int:
        return sum(t.total for t in self.tables.values())

    @property
    def at_risk(self) -> int:
        """Rows changed only in new-schema columns, over all tables."""
        return sum(t.changed_only_in_new_columns for t in self.tables.values())

    @property
    def filled_by_upgrade(self) -> int:
        """Values filled by the upgrade, not verified, over all tables (not at risk)."""
        return sum(t.filled_by_upgrade for t in self.tables.values())


@dataclass(frozen=True)
class TableSides:
    """The SQL pieces one table's diff needs: key and compared columns as (old expr, new expr)."""

    name: str
    key: tuple[str, ...]
    old_key: tuple[exp.Expression, ...]
    new_key: tuple[exp.Expression, ...]
    compared: tuple[tuple[str, exp.Expression, exp.Expression], ...]
    null_safe_key: bool
    new_name: str = ""
    """The live table's name when the table was renamed (empty: the same name)."""


def sides(old_t: Table, tm: TableMapping) -> TableSides | str:
    """Build the comparison pieces, or return why the table cannot be compared."""
    key = old_t.key
    rules = {r.column: r for r in tm.rules}
    new_key = []
    for k in key:
        r = rules[k]
        if r.expression is None:
            return f"skipped: key column {k} has no source in the new schema"
        new_key.append(qualify_columns(r.expression, "n"))
    compared = tuple(
        (r.column, col(r.column, "o"), qualify_columns(r.expression, "n"))
        for r in tm.rules
        if r.expression is not None and r.column not in key
    )
    return TableSides(
        old_t.name,
        key,
        tuple(col(k, "o") for k in key),
        tuple(new_key),
        compared,
        not old_t.has_primary_key,
        tm.new_table or "",
    )


DUP = "__recovery_dup"
"""Occurrence number of a row among its identical twins, for tables keyed by all columns."""


def _key_match(s: TableSides) -> exp.Expression:
    op = is_same if s.null_safe_key else (lambda a, b: exp.EQ(this=a, expression=b))
    conds = [op(o, n) for o, n in zip(s.old_key, s.new_key, strict=True)]
    if s.null_safe_key:
        conds.append(exp.EQ(this=col(DUP, "o"), expression=col(DUP, "n")))
    return and_all(conds)


def _source(s: TableSides, side: str) -> exp.Expression:
    """``side.table AS alias``; for a table without a primary key a derived table that numbers
    identical rows (``row_number() OVER (PARTITION BY key)``), so duplicates diff as a multiset:
    two copies in the backup and one live is one deleted row, not none."""
    alias = "o" if side == "old" else "n"
    name = s.new_name or s.name if side == "new" else s.name
    if not s.null_safe_key:
        return table(name, side, alias)
    key = s.old_key if side == "old" else s.new_key
    parts = []
    for e in key:
        bare = e.copy()
        for c in bare.find_all(exp.Column):
            c.set("table", None)
        parts.append(bare)
    numbered = exp.Window(this=exp.RowNumber(), partition_by=parts)
    inner = exp.select(exp.Star(), exp.alias_(numbered, DUP, quoted=True)).from_(table(name, side))
    return inner.subquery(exp.TableAlias(this=exp.Identifier(this=alias, quoted=True)))


def _not_exists(inner_table: exp.Table, cond: exp.Expression) -> exp.Expression:
    sub = exp.select(exp.Literal.number(1)).from_(inner_table).where(cond)
    return exp.Not(this=exp.Exists(this=sub))


def _scan(s: TableSides, side: str) -> exp.Expression:
    """The outer side of an anti-join, read ``NOT INDEXED`` (in rowid order): left to itself SQLite
    scans the smallest covering index (``ix_quote_items_part_id``), so each probe into the other
    side's key lands on a random page — 1.5M quote_items: 6.3 s, NOT INDEXED 0.8 s."""
    src = _source(s, side)
    if isinstance(src, exp.Table) and current_dialect() == "sqlite":  # a hint only SQLite has
        src.set("indexed", False)
    return src


def inserted_query(s: TableSides, select: list[exp.Expression]) -> exp.Select:
    """Rows of the live table whose key the backup lacks."""
    return (
        exp.select(*select)
        .from_(_scan(s, "new"))
        .where(_not_exists(_source(s, "old"), _key_match(s)))
    )


def deleted_query(s: TableSides, select: list[exp.Expression]) -> exp.Select:
    """Rows of the backup whose key the live table lacks."""
    return (
        exp.select(*select)
        .from_(_scan(s, "old"))
        .where(_not_exists(_source(s, "new"), _key_match(s)))
    )


def updated_condition(s: TableSides) -> exp.Expression:
    return or_all(is_distinct(o, n) for _, o, n in s.compared)


def uncarried_columns(new_t: Table, tm: TableMapping | None) -> list[str]:
    """New-schema columns of a shared table that no old column's rule uses: their values are lost."""
    used = tm.used_new_columns if tm is not None else set()
    return [c for c in new_t.column_names if c not in used]


def non_default(t: Table, column: str, alias: str) -> exp.Expression:
    """``alias.column`` holds something other than its default (NULL when it has none)."""
    from recovery.transpile.passes import default_value

    spec = t.column(column)
    dv = default_value(spec.default if spec else None)
    return is_distinct(col(column, alias), dv if dv is not None else exp.Null())


def user_value(t: Table, column: str, alias: str, replay: Replayed | None = None) -> exp.Expression:
    """THE definition of "a value a user made" in a column only the new schema has, on row
    ``alias`` of table ``t``: a non-default value (:func:`non_default`) that — when the upgrade was
    replayed on a copy of the backup (:mod:`recovery.migrate.replay`) and that copy has the row — differs
    from what the migration itself wrote there. Shared by ``diff`` (values at risk) and
    ``extract`` (lost values)."""
    nd = non_default(t, column, alias)
    if replay is None or not t.has_primary_key or not replay.covers(t.name, [*t.key, column]):
        return nd  # (a table without a primary key has no row identity to look the replay up by)
    from recovery.migrate.replay import SCHEMA

    # on PostgreSQL also the plain key equality (a primary key holds no NULL, so it says the
    # same): the lookup is then hashed or an index probe, not a scan per row
    plain = (
        [exp.EQ(this=col(k, "rp"), expression=col(k, alias)) for k in t.key]
        if current_dialect() == "postgres"
        else []
    )
    same = exp.Exists(
        this=exp.select(exp.Literal.number(1))
        .from_(table(t.name, SCHEMA, "rp"))
        .where(
            and_all(
                plain
                + [is_same(col(k, "rp"), col(k, alias)) for k in t.key]
                + [is_same(col(column, "rp"), col(column, alias))]
            )
        )
    )
    return exp.and_(nd, exp.Not(this=same))


def replay_needs(old_t: Table, new_t: Table, tm: TableMapping | None) -> exp.Expression | None:
    """The backup rows (row ``o``, the live database attached as ``new``) whose replayed values
    :func:`user_value` may ask for: those whose live row holds a non-default value in a column the
    old schema cannot carry. That is every row ``diff`` and ``extract`` ever look up in the
    replayed copy (an inserted row has no backup row to replay), whatever the replay answers, so
    the bounded copy (:mod:`recovery.migrate.bounded`) can be built before the replay runs.
    None: nothing of this table is ever asked for."""
    if tm is None or tm.skip or not new_t.has_primary_key:
        return None
    s = sides(old_t, tm)
    if isinstance(s, str) or s.null_safe_key:
        return None
    lost = [c for c in uncarried_columns(new_t, tm) if c not in new_t.key]
    if not lost:
        return None
    # driven by the live side (a scan of it, often an index), the backup probed by its key
    keys = exp.select(*s.new_key).from_(table(new_t.name, "new", "n"))
    keys = keys.where(or_all(non_default(new_t, c, "n") for c in lost))
    own = s.old_key[0] if len(s.old_key) == 1 else exp.Tuple(expressions=list(s.old_key))
    return exp.In(this=own.copy(), query=keys.subquery())


def verified(
    new_t: Table, tm: TableMapping | None, since_jd: float | None, replay: Replayed | None = None
) -> bool:
    """Whether a non-default value in an uncarried column of an otherwise unchanged row can be told
    apart from what the upgrade filled in: the row carries an updated-at time and the deploy time
    is known, or the upgrade was replayed on a copy of the backup that has the table."""
    lost_cols = [c for c in uncarried_columns(new_t, tm) if c not in new_t.key]
    if "updated" in find_timestamp_columns(new_t) and since_jd is not None:
        return True
    return (
        replay is not None
        and new_t.has_primary_key
        and replay.covers(new_t.name, [*new_t.key, *lost_cols])
    )


def new_only_parts(
    new_t: Table, tm: TableMapping | None, since_jd: float | None, replay: Replayed | None = None
) -> tuple[exp.Expression, list[exp.Expression]] | None:
    """(condition, per-column flags) for "a column the old schema cannot carry holds a value a
    user made" on the live row ``n`` (:func:`user_value`) — where the table has an updated
    timestamp and the deploy time is known, also "the row was updated after the deploy". None
    when no column is uncarried, or when nothing tells a user's value from the upgrade's
    (:func:`verified` is false): such values are "filled by the upgrade, not verified"
    (:func:`filled_parts`), neither changed rows nor lost values."""
    lost_cols = [c for c in uncarried_columns(new_t, tm) if c not in new_t.key]
    if not lost_cols or not verified(new_t, tm, since_jd, replay):
        return None
    flags = [user_value(new_t, c, "n", replay) for c in lost_cols]
    any_set = or_all(f.copy() for f in flags)
    ts = find_timestamp_columns(new_t)
    if since_jd is not None and "updated" in ts:
        return and_all([after_expr(col(ts["updated"], "n"), since_jd), any_set]), flags
    return any_set, flags


def filled_parts(
    new_t: Table, tm: TableMapping | None, since_jd: float | None, replay: Replayed | None = None
) -> tuple[list[str], list[exp.Expression]] | None:
    """(columns, per-column flags on the live row ``n``) of values the upgrade may have filled in
    rows whose old-schema projection is unchanged, when nothing can verify them (no replay, no
    updated-at evidence): listed as "filled by the upgrade, not verified". None otherwise."""
    lost_cols = [c for c in uncarried_columns(new_t, tm) if c not in new_t.key]
    if not lost_cols or verified(new_t, tm, since_jd, replay):
        return None
    return lost_cols, [non_default(new_t, c, "n") for c in lost_cols]


def changed_condition(
    s: TableSides,
    new_t: Table,
    tm: TableMapping | None,
    since_jd: float | None,
    replay: Replayed | None = None,
) -> exp.Expression | None:
    """THE definition of a changed ("updated") row, over the backup row ``o`` and the live row
    ``n`` joined by key. ``diff`` counts and lists with it, ``extract`` selects the bundle's
    ``updated`` rows with it, and ``report`` and ``rehearse`` read those bundle rows, so all four
    agree on every pair. A row in both is changed when

    * its old-schema projection differs from the backup row: some compared column (every old
      column but the key, renames and mapping rules applied to the live side) is distinct in
      SQLite's ``IS NOT`` sense — NULL differs from ``''``, and ``1`` equals ``1.0`` as in SQL;
      a change to a timestamp column alone is a change; or
    * (:func:`new_only_parts`) a column only the new schema has holds a value a user made
      (:func:`user_value`), and — where the table has an updated-at column and the deploy time
      is known — the row was updated after the deploy. ``diff`` reports how many changed rows
      changed only so as ``changed_only_in_new_columns`` (a part of ``updated``).

    A table without a primary key is keyed by all its columns: its rows are inserted or deleted,
    never changed. None when nothing can make a row changed (nothing to compare)."""
    return changed_predicate(s, new_only_parts(new_t, tm, since_jd, replay))


def changed_predicate(
    s: TableSides, new_only: tuple[exp.Expression, list[exp.Expression]] | None
) -> exp.Expression | None:
    """:func:`changed_condition` from its parts (``new_only``: :func:`new_only_parts`' result)."""
    if s.null_safe_key:
        return None
    conds = [updated_condition(s)] if s.compared else []
    if new_only is not None:
        conds.append(new_only[0].copy())
    return or_all(conds) if conds else None


def updated_query(s: TableSides, select: list[exp.Expression]) -> exp.Select:
    """Rows in both whose old-schema projection differs from the backup row."""
    return (
        exp.select(*select)
        .from_(_source(s, "old"))
        .join(_source(s, "new"), on=_key_match(s))
        .where(updated_condition(s))
    )


@dataclass(frozen=True)
class _Job:
    """One counting statement of one table: its SQL, which counts its single row holds, and its
    bound parameters (a key range's bounds). The counts of jobs of the same table add up."""

    table: str
    sql: str
    fields: tuple[str, ...]
    params: tuple[int, ...] = ()


ROWID_MIN, ROWID_MAX = -(2**63), 2**63 - 1
"""The bounds of a SQLite rowid: the first and last key range of a split table reach them."""
SPLIT_PIECES = 32
"""Into how many key ranges the rowid-keyed tables' joins are cut, all tables together: enough
that the two workers finish within one small piece of each other (the ``parts`` join alone is
over half the counting work on the sample world), few enough that the per-statement cost stays
negligible; a constant, so the number of statements does not grow with the rows."""
SPLIT_MIN_ROWS = 20_000
"""A table whose key span is below this is counted in one statement."""


def key_ranges(spans: dict[str, tuple[int, int]]) -> dict[str, list[tuple[int, int]]]:
    """Cut each table's rowid span ``(min, max)`` into inclusive ranges of about equal width, about
    :data:`SPLIT_PIECES` over all tables (at least :data:`SPLIT_MIN_ROWS` keys each). The first
    range starts at :data:`ROWID_MIN` and the last ends at :data:`ROWID_MAX`, so together they
    cover every possible key whatever the table holds when a range is read. A table with one range
    is left out (counted whole)."""
    total = sum(hi - lo + 1 for lo, hi in spans.values())
    width = max(SPLIT_MIN_ROWS, -(-total // SPLIT_PIECES))
    out: dict[str, list[tuple[int, int]]] = {}
    for name, (lo, hi) in spans.items():
        pieces = -(-(hi - lo + 1) // width)
        if pieces < 2:
            continue
        step = -(-(hi - lo + 1) // pieces)
        starts = [lo + i * step for i in range(pieces)]
        bounds = [ROWID_MIN, *starts[1:]]
        ends = [b - 1 for b in starts[1:]] + [ROWID_MAX]
        out[name] = list(zip(bounds, ends, strict=True))
    return out


def rowid_span(conn: Connection, s: TableSides) -> tuple[int, int] | None:
    """The smallest and largest key of the backup table when its key is the rowid and it has rows
    (two B-tree descents), else None: the table is not split."""
    if not isinstance(conn, sqlite3.Connection) or s.null_safe_key:
        return None
    if not rowid_key(conn, "old", s.name, s.key):
        return None
    k = col(s.key[0])
    # one scalar subquery per end: SQLite answers a lone min() or max() with one B-tree descent,
    # but scans the whole table for both in one SELECT
    ends = [
        exp.select(f(this=k.copy())).from_(table(s.name, "old")).subquery()
        for f in (exp.Min, exp.Max)
    ]
    lo, hi = conn.execute(sql(exp.select(*ends))).fetchone()
    return None if lo is None else (int(lo), int(hi))


def _sum_when(cond: exp.Expression, value: exp.Expression | None = None) -> exp.Expression:
    then = value if value is not None else exp.Literal.number(1)
    return exp.Sum(this=exp.Case(ifs=[exp.If(this=cond, true=then)]))


def count_jobs(
    s: TableSides,
    created_after: exp.Expression | None,
    updated_after: exp.Expression | None,
    new_only: tuple[exp.Expression, list[exp.Expression]] | None = None,
    filled: list[exp.Expression] | None = None,
    rowid_keys: bool = False,
    ranges: list[tuple[int, int]] | None = None,
) -> list[_Job]:
    """The statements that count one table's inserted, updated and deleted rows: ONE pass over the
    table pair. One ``LEFT JOIN`` backup → live gives the deleted rows (no live match), the updated
    ones (a match that :func:`changed_predicate` calls changed: the one definition extract
    selects with) and the matched pairs in the same scan; the
    inserted rows are then the live rows less the matched ones (:func:`finish_counts`), and
    ``SELECT count(*)`` of the live table reads only its B-tree's page counts. Why that is exact:
    the backup key is unique (a primary key) and equality is transitive, so each live row matches
    at most one backup row and the matched pairs number the live rows that have a match. A key
    expression with its own ``COLLATE`` could break that, so such a table keeps the anti-join.

    When the inserted rows created after the deploy are counted too, and both keys are the rowid
    (``rowid_keys``), the live rows above the backup's largest key are inserted rows by
    construction: one range read counts them and their created-after flags; only when some
    inserted row sits below that largest key does :func:`finish_counts` run the anti-join. Other
    tables keep the anti-join live → backup. A table keyed by all columns (no primary key) keeps
    three statements: its key may hold NULLs, so "no match" cannot be read off the joined row.

    With ``ranges`` (inclusive bounds of the backup's rowid key, see :func:`key_ranges`) the
    ``LEFT JOIN`` is one statement per range, its bounds bound as parameters: each reads only its
    rows (a rowid range search), so the pieces of one large table spread over both workers; the
    ranges' counts add up to the whole table's."""
    by_count = not s.null_safe_key and not any(e.find(exp.Collate) for e in s.new_key)
    if by_count and created_after is not None and not rowid_keys:
        by_count = False
    jobs: list[_Job] = []
    if by_count:
        jobs.append(
            _Job(
                s.name,
                sql(
                    exp.select(exp.Count(this=exp.Star())).from_(table(s.new_name or s.name, "new"))
                ),
                ("live_rows",),
            )
        )
        if created_after is not None:
            top = exp.select(exp.Max(this=col(s.key[0], "o"))).from_(table(s.name, "old", "o"))
            tail = (
                exp.select(
                    exp.Count(this=exp.Star()),
                    exp.Sum(this=exp.Cast(this=created_after, to=exp.DataType.build("INT"))),
                )
                .from_(table(s.new_name or s.name, "new", "n"))
                .where(exp.GT(this=s.new_key[0].copy(), expression=top.subquery()))
            )
            jobs.append(_Job(s.name, sql(tail), ("tail", "tail_after")))
    else:
        ins_sel: list[exp.Expression] = [exp.Count(this=exp.Star())]
        ins_fields: list[str] = [RowKind.INSERTED]
        if created_after is not None:
            ins_sel.append(exp.Sum(this=exp.Cast(this=created_after, to=exp.DataType.build("INT"))))
            ins_fields.append("inserted_after")
        jobs.append(_Job(s.name, sql(inserted_query(s, ins_sel)), tuple(ins_fields)))
    if s.null_safe_key:
        jobs.append(
            _Job(s.name, sql(deleted_query(s, [exp.Count(this=exp.Star())])), (RowKind.DELETED,))
        )
        if s.compared:
            upd_sel: list[exp.Expression] = [exp.Count(this=exp.Star())]
            upd_fields: list[str] = [RowKind.UPDATED]
            if updated_after is not None:
                upd_sel.append(
                    exp.Sum(this=exp.Cast(this=updated_after, to=exp.DataType.build("INT")))
                )
                upd_fields.append("updated_after")
            jobs.append(_Job(s.name, sql(updated_query(s, upd_sel)), tuple(upd_fields)))
        return jobs
    # a matched row has every key expression equal to a (non-NULL) backup key, so a NULL first key
    # expression on the live side means "no live row with this key"
    missing = exp.Is(this=s.new_key[0].copy(), expression=exp.Null())
    sel: list[exp.Expression] = [_sum_when(missing)]
    fields: list[str] = [RowKind.DELETED]
    if by_count:
        sel.append(exp.Count(this=s.new_key[0].copy()))
        fields.append("matched")
    changed_row = changed_predicate(s, new_only)
    if changed_row is not None:
        changed = exp.and_(exp.Not(this=missing.copy()), exp.Paren(this=changed_row))
        sel.append(_sum_when(changed))
        fields.append(RowKind.UPDATED)
        if updated_after is not None:
            sel.append(
                _sum_when(
                    changed.copy(), exp.Cast(this=updated_after, to=exp.DataType.build("INT"))
                )
            )
            fields.append("updated_after")
    if new_only is not None:
        cond, flags = new_only
        only_new = and_all(
            [exp.Not(this=missing.copy()), cond.copy()]
            + ([exp.Not(this=updated_condition(s))] if s.compared else [])
        )
        sel += [
            _sum_when(only_new),
            _sum_when(only_new.copy(), exp.Paren(this=_plus([_int(f) for f in flags]))),
        ]
        fields += ["changed_only_in_new_columns", "values_at_risk"]
    if filled:
        untouched = and_all(
            [exp.Not(this=missing.copy())]
            + ([exp.Not(this=updated_condition(s))] if s.compared else [])
        )
        sel.append(_sum_when(untouched, exp.Paren(this=_plus([_int(f) for f in filled]))))
        fields.append("filled_by_upgrade")
    q = (
        exp.select(*sel)
        .from_(_scan(s, "old"))
        .join(_source(s, "new"), on=_key_match(s), join_type="left")
    )
    if not ranges:
        jobs.append(_Job(s.name, sql(q), tuple(fields)))
        return jobs
    within = exp.Between(this=col(s.key[0], "o"), low=exp.Placeholder(), high=exp.Placeholder())
    text = sql(q.where(within))
    jobs += [_Job(s.name, text, tuple(fields), (lo, hi)) for lo, hi in ranges]
    return jobs


def rowid_key(conn: Connection, schema: str, name: str, key: tuple[str, ...]) -> bool:
    """Whether ``key`` is the rowid of table ``schema.name``: one ``INTEGER PRIMARY KEY`` column in
    a rowid table, so every key is an integer (SQLite refuses anything else). A WITHOUT ROWID
    table, an ``INTEGER PRIMARY KEY DESC`` or any other primary key has an index of origin ``pk``."""
    if len(key) != 1:
        return False
    if conn.execute(
        "SELECT 1 FROM pragma_index_list(?, ?) WHERE origin = 'pk'", (name, schema)
    ).fetchone():
        return False
    info = conn.execute(
        "SELECT type, pk FROM pragma_table_info(?, ?) WHERE name = ?", (name, schema, key[0])
    ).fetchone()
    return info is not None and info[1] == 1 and str(info[0]).upper() == "INTEGER"


def sides_on_rowid(conn: Connection, s: TableSides) -> bool:
    """Both the backup's key and the live key expression are the rowid of their tables (SQLite
    only: another engine's tables have no rowid, so their inserted rows are counted by anti-join)."""
    if not isinstance(conn, sqlite3.Connection):
        return False
    nk = s.new_key[0] if len(s.new_key) == 1 else None
    return (
        isinstance(nk, exp.Column)
        and rowid_key(conn, "old", s.name, s.key)
        and rowid_key(conn, "new", s.new_name or s.name, (nk.name,))
    )


def finish_counts(
    conn: Connection,
    s: TableSides,
    created_after: exp.Expression | None,
    counts: dict[str, int | None],
) -> dict[str, int | None]:
    """Turn the one-pass counts of :func:`count_jobs` into inserted (and inserted-after) counts:
    inserted = live rows − matched pairs. The created-after flags of the inserted rows come from
    the tail above the backup's largest key when every inserted row is there; otherwise (a key
    below it was reused or a row inserted in a gap) from the anti-join, as before."""
    if "live_rows" not in counts:
        return counts
    out = dict(counts)
    out["inserted"] = int(out.pop("live_rows") or 0) - int(out.pop("matched") or 0)
    if "tail" in out:
        tail, tail_after = int(out.pop("tail") or 0), int(out.pop("tail_after") or 0)
        if tail == out["inserted"]:
            out["inserted_after"] = tail_after
        else:
            assert created_after is not None
            q = inserted_query(
                s,
                [
                    exp.Count(this=exp.Star()),
                    exp.Sum(this=exp.Cast(this=created_after, to=exp.DataType.build("INT"))),
                ],
            )
            ins, after = conn.execute(sql(q)).fetchone()
            out["inserted"], out["inserted_after"] = int(ins), after
    return out


def _int(e: exp.Expression) -> exp.Expression:
    return exp.Cast(this=e.copy(), to=exp.DataType.build("INT"))


def _plus(terms: list[exp.Expression]) -> exp.Expression:
    out = terms[0]
    for t in terms[1:]:
        out = exp.Add(this=out, expression=t)
    return out


def run_jobs(
    conn: Connection,
    jobs: list[_Job],
    more: Callable[[], Connection] | None = None,
    instant: OneInstant | None = None,
) -> dict[str, dict[str, int | None]]:
    """Run every counting statement and gather the counts per table. With ``more`` (a factory of
    further connections to the same pair), statements run on two threads: sqlite3 releases the
    GIL while a statement runs, so the two cores each take their share of the tables.

    With ``instant`` each worker's connection joins it (a read transaction) before its first
    statement, and once both have, :meth:`OneInstant.still` must hold, else
    :class:`InstantMoved` is raised before any count is taken."""
    import threading

    out: dict[str, dict[str, int | None]] = {}
    adding = threading.Lock()  # two workers may add to the same table's counts

    def run(c: Connection, job: _Job) -> None:
        row = (c.execute(job.sql, job.params) if job.params else c.execute(job.sql)).fetchone()
        with adding:
            counts = out.setdefault(job.table, {})
            for f, v in zip(job.fields, row, strict=True):
                if v is not None:
                    counts[f] = int(v) + (counts.get(f) or 0)
                else:  # SUM over no rows: NULL, as the whole table's would be
                    counts.setdefault(f, None)

    if more is None or len(jobs) < 2:
        for job in jobs:
            run(conn, job)
        return out
    import queue

    todo: queue.SimpleQueue[_Job] = queue.SimpleQueue()
    for job in jobs:
        todo.put(job)
    errors: list[BaseException] = []
    moved: list[bool] = []

    def check() -> None:  # run once, by the last worker to arrive, before either counts
        if instant is not None and not instant.still():
            moved.append(True)

    arrived = threading.Barrier(2, action=check)

    def worker() -> None:  # each thread owns its connection: sqlite3 objects stay in their thread
        try:
            c = more()
            try:
                if instant is not None:
                    instant.join(c)
                try:
                    arrived.wait()
                except threading.BrokenBarrierError:
                    return  # the other worker failed: its error is raised below
                while not errors and not moved:
                    try:
                        job = todo.get_nowait()
                    except queue.Empty:
                        return
                    run(c, job)
            finally:
                c.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
            errors.append(exc)
            arrived.abort()

    threads = [threading.Thread(target=worker, name=f"recovery-diff-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    if moved:
        raise InstantMoved
    return out


INSTANT_TRIES = 3
"""How many times :func:`diff_rows` takes its snapshots again when a commit fell between them,
before it counts on one connection alone."""


class InstantMoved(Exception):
    """The live database changed between two connections' snapshots: take them again."""


class OneInstant:
    """One point in time of the live database (the pair's ``new``, a SQLite file in WAL mode) for
    several connections: each :meth:`join` opens a read transaction whose snapshot is fixed by its
    first read; :meth:`still` is true when no other connection has committed into the live file
    since this object was made (``PRAGMA data_version`` of a private read-only connection changes
    on every commit by any other connection), so every snapshot taken in between is the same."""

    def __init__(self, live: str) -> None:
        from recovery.engine.sqlite_io import CommitWatch

        self._watch = CommitWatch(Path(live))

    @staticmethod
    def join(c: Connection) -> None:
        """Open ``c``'s read transaction and fix its snapshot of ``new`` now."""
        c.execute("BEGIN")
        c.execute(
            sql(exp.select(exp.Literal.number(1)).from_(table("sqlite_master", "new")).limit(1))
        ).fetchone()

    def still(self) -> bool:
        return self._watch.unchanged()

    def close(self) -> None:
        self._watch.close()


def read_schema_of(c: Connection, schema: str) -> None:
    """Make ``c`` read the schema of its attached file ``schema``, that file's alone, before a
    statement names a table another process created there since ``c`` last read it (a worker's
    list of :mod:`recovery.bundle.prelist`, the replayed upgrade's copy).

    Why: a statement naming a table that ``c``'s cached schema of the file lacks fails to prepare,
    and SQLite then checks the schema cookie of *every* attached file in ATTACH order, stopping at
    the first one another process holds locked (after the busy timeout): the statement fails with
    "no such table" although the table is there, or, once that check has reset the schema of a
    file another process then locks, the next statements fail with "database is locked". A read
    of the file's own ``sqlite_master`` checks that file's cookie alone (SQLite reloads that one
    schema and runs the read again). Found on the 10M world: the replayed upgrade's child held its
    file while the extract asked for a worker's list (bench/RESULTS.md, round 14)."""
    master = table("sqlite_master", schema)
    c.execute(sql(exp.select(exp.func("count", exp.Star())).from_(master))).fetchone()


def _live_wal_file(conn: Connection) -> str | None:
    """The live file of a SQLite pair connection when it is in WAL mode; None otherwise (another
    engine, an in-memory or rollback-journal live database)."""
    if not isinstance(conn, sqlite3.Connection) or conn.in_transaction:
        return None
    files = {row[1]: row[2] for row in conn.execute("PRAGMA database_list")}
    live = files.get("new")
    if not live:
        return None
    mode = conn.execute("PRAGMA new.journal_mode").fetchone()
    return live if mode and str(mode[0]).lower() == "wal" else None


@contextmanager
def one_instant(conn: Connection) -> Iterator[OneInstant | None]:
    """Hold one read transaction on the pair connection ``conn`` for the block and yield the
    :class:`OneInstant` further connections join; yields None (and holds nothing) when ``conn`` is
    not a SQLite pair over a WAL-mode live file."""
    live = _live_wal_file(conn)
    if live is None:
        yield None
        return
    instant = OneInstant(live)
    assert isinstance(conn, sqlite3.Connection)
    try:
        instant.join(conn)
        yield instant
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # a read transaction: nothing to keep
        instant.close()


def _timestamps(
    new_t: Table, since_jd: float | None, ts_override: dict[str, str] | None = None
) -> tuple[dict[str, str], exp.Expression | None, exp.Expression | None]:
    ts = find_timestamp_columns(new_t, ts_override)
    created_after = (
        after_expr(col(ts["created"], "n"), since_jd)
        if since_jd is not None and "created" in ts
        else None
    )
    updated_after = (
        after_expr(col(ts["updated"], "n"), since_jd)
        if since_jd is not None and "updated" in ts
        else None
    )
    return ts, created_after, updated_after


def _table_changes(
    old_t: Table,
    tm: TableMapping,
    s: TableSides,
    ts: dict[str, str],
    counts: dict[str, int | None],
    since_jd: float | None,
    rows: tuple[RowChange, ...] | None,
) -> TableChanges:
    after = None
    if since_jd is not None:  # counted only where the table has the timestamp column
        after = {
            kind: int(counts[f"{kind}_after"] or 0) if f"{kind}_after" in counts else None
            for kind in (RowKind.INSERTED, RowKind.UPDATED)
        }
    return TableChanges(
        table=old_t.name,
        key=s.key,
        keyed_by="primary key" if old_t.has_primary_key else "all columns",
        status="compared",
        inserted=int(counts.get(RowKind.INSERTED) or 0),
        updated=int(counts.get(RowKind.UPDATED) or 0),
        deleted=int(counts.get(RowKind.DELETED) or 0),
        compared_columns=tuple(c for c, _, _ in s.compared),
        uncompared_columns=tuple(r.column for r in tm.rules if r.expression is None),
        timestamp_columns=ts,
        after_deploy=after,
        rows=rows,
        changed_only_in_new_columns=int(counts.get("changed_only_in_new_columns") or 0),
        values_at_risk=int(counts.get("values_at_risk") or 0),
        filled_by_upgrade=int(counts.get("filled_by_upgrade") or 0),
    )


def diff_table(
    conn: sqlite3.Connection,
    old_t: Table,
    new_t: Table,
    tm: TableMapping,
    since_jd: float | None,
    want_rows: bool = False,
    ts_override: dict[str, str] | None = None,
    replay: Replayed | None = None,
) -> TableChanges:
    keyed_by = "primary key" if old_t.has_primary_key else "all columns"
    s = sides(old_t, tm)
    if isinstance(s, str):
        return TableChanges(old_t.name, old_t.key, keyed_by, s)
    ts, created_after, updated_after = _timestamps(new_t, since_jd, ts_override)
    new_only = None if s.null_safe_key else new_only_parts(new_t, tm, since_jd, replay)
    filled = None if s.null_safe_key else filled_parts(new_t, tm, since_jd, replay)
    rowid = created_after is not None and sides_on_rowid(conn, s)
    counts = run_jobs(
        conn,
        count_jobs(s, created_after, updated_after, new_only, filled[1] if filled else None, rowid),
    ).get(s.name, {})
    counts = finish_counts(conn, s, created_after, counts)
    rows = (
        tuple(iter_rows(conn, s, created_after, updated_after, new_only, new_t, tm))
        if want_rows
        else None
    )
    return _table_changes(old_t, tm, s, ts, counts, since_jd, rows)


def iter_rows(
    conn: Connection,
    s: TableSides,
    created_after: exp.Expression | None,
    updated_after: exp.Expression | None,
    new_only: tuple[exp.Expression, list[exp.Expression]] | None = None,
    new_t: Table | None = None,
    tm: TableMapping | None = None,
) -> Iterator[RowChange]:
    """Stream every changed row with its key (and, for updates, the changed cells)."""
    nk = len(s.key)
    flag_ins = [created_after] if created_after is not None else []
    cur = conn.execute(sql(inserted_query(s, [*s.new_key, *flag_ins])))
    while batch := cur.fetchmany(BATCH):
        for r in batch:
            yield RowChange(
                RowKind.INSERTED, tuple(r[:nk]), after_deploy=_flag(r, nk, created_after)
            )
    if s.compared:
        flag_upd = [updated_after] if updated_after is not None else []
        pairs = [e for _, o, n in s.compared for e in (o, n)]
        cur = conn.execute(sql(updated_query(s, [*s.old_key, *pairs, *flag_upd])))
        while batch := cur.fetchmany(BATCH):
            for r in batch:
                cells = []
                for i, (name, _, _) in enumerate(s.compared):
                    o, n = r[nk + 2 * i], r[nk + 2 * i + 1]
                    if not _same(o, n):
                        cells.append(CellChange(name, o, n))
                yield RowChange(
                    RowKind.UPDATED,
                    tuple(r[:nk]),
                    tuple(cells),
                    _flag(r, nk + 2 * len(s.compared), updated_after),
                )
    if new_only is not None and new_t is not None:
        lost_cols = [c for c in uncarried_columns(new_t, tm) if c not in new_t.key]
        cond = and_all(
            [new_only[0].copy()] + ([exp.Not(this=updated_condition(s))] if s.compared else [])
        )
        flag_new = [updated_after] if updated_after is not None else []
        q = (
            exp.select(
                *s.old_key,
                *[col(c, "n") for c in lost_cols],
                *[f.copy() for f in new_only[1]],
                *flag_new,
            )
            .from_(_source(s, "old"))
            .join(_source(s, "new"), on=_key_match(s))
            .where(cond)
        )
        cur = conn.execute(sql(q))
        n = len(lost_cols)
        while batch := cur.fetchmany(BATCH):
            for r in batch:
                only_new = tuple(
                    CellChange(c, None, r[nk + i]) for i, c in enumerate(lost_cols) if r[nk + n + i]
                )
                yield RowChange(
                    RowKind.UPDATED, tuple(r[:nk]), only_new, _flag(r, nk + 2 * n, updated_after)
                )
    cur = conn.execute(sql(deleted_query(s, list(s.old_key))))
    while batch := cur.fetchmany(BATCH):
        for r in batch:
            yield RowChange(RowKind.DELETED, tuple(r))


def _flag(row: tuple[Any, ...], idx: int, expr: exp.Expression | None) -> bool | None:
    if expr is None:
        return None
    return None if row[idx] is None else bool(row[idx])


def _same(a: Any, b: Any) -> bool:
    """SQLite's ``IS``: equal values of the same kind (1 and 1.0 compare equal, as in SQL)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def count_table(conn: Connection, schema: str, name: str) -> int:
    q = exp.select(exp.Count(this=exp.Star())).from_(table(name, schema))
    return int(conn.execute(sql(q)).fetchone()[0])


def diff_rows(
    conn: Connection,
    old: Schema,
    new: Schema,
    mapping: ColumnMapping,
    tables: list[str] | None = None,
    since_jd: float | None = None,
    want_rows: bool = False,
    since_text: str | None = None,
    more: Callable[[], Connection] | None = None,
    replay: Replayed | None = None,
) -> ChangeSet:
    """The row diff of every table (or of ``tables``), old schema's view. ``more`` opens further
    connections to the same pair, so the counting statements of all tables share two cores.

    Every count and row comes from ONE instant of the live database when it is a SQLite file in
    WAL mode, even while the application commits into it: the pair connection holds one read
    transaction for the whole diff, each further connection opens its own and the
    :class:`OneInstant` check proves that no commit fell between the first and the last snapshot
    (else all are taken again, and after :data:`INSTANT_TRIES` moves the diff runs on the pair
    connection alone, in its one transaction). A WAL reader does not block the app's writers.
    In rollback-journal mode a held read lock would stall them for the whole diff, so there each
    statement reads its own instant, as an unguarded reader would."""
    for _attempt in range(INSTANT_TRIES):
        with one_instant(conn) as instant:
            try:
                return _diff_rows(
                    conn,
                    old,
                    new,
                    mapping,
                    tables,
                    since_jd,
                    want_rows,
                    since_text,
                    more,
                    replay,
                    instant,
                )
            except InstantMoved:
                continue
    with one_instant(conn) as instant:  # one connection in one transaction: one instant by itself
        return _diff_rows(
            conn, old, new, mapping, tables, since_jd, want_rows, since_text, None, replay, None
        )


def _diff_rows(
    conn: Connection,
    old: Schema,
    new: Schema,
    mapping: ColumnMapping,
    tables: list[str] | None,
    since_jd: float | None,
    want_rows: bool,
    since_text: str | None,
    more: Callable[[], Connection] | None,
    replay: Replayed | None,
    instant: OneInstant | None,
) -> ChangeSet:
    names = sorted(set(old.data_tables) | set(new.data_tables))
    if tables:
        names = [n for n in names if n in tables]
    renamed_to = {tm.new_table for tm in mapping.tables.values() if tm.new_table}
    out: dict[str, TableChanges] = {}
    compared: list[
        tuple[
            Table,
            Table,
            TableMapping,
            TableSides,
            dict[str, str],
            exp.Expression | None,
            exp.Expression | None,
            tuple[exp.Expression, list[exp.Expression]] | None,
        ]
    ] = []
    jobs: list[_Job] = []
    counting: list[
        tuple[
            TableSides,
            exp.Expression | None,
            exp.Expression | None,
            tuple[exp.Expression, list[exp.Expression]] | None,
            list[exp.Expression] | None,
            bool,
        ]
    ] = []
    spans: dict[str, tuple[int, int]] = {}
    for name in names:
        old_t, new_t = old.table(name), new.table(name)
        if old_t is None and name in renamed_to:
            continue  # compared under its old name
        if old_t is not None and name in mapping.tables and mapping.tables[name].new_table:
            new_t = new.table(mapping.tables[name].source_table)
        if old_t is not None and new_t is not None:
            tm = mapping.tables[name]
            if tm.skip:
                out[name] = TableChanges(
                    name, old_t.key, "primary key", "skipped: mapping file says skip"
                )
                continue
            s = sides(old_t, tm)
            if isinstance(s, str):
                out[name] = TableChanges(
                    name, old_t.key, "primary key" if old_t.has_primary_key else "all columns", s
                )
                continue
            ts, created_after, updated_after = _timestamps(new_t, since_jd)
            new_only = None if s.null_safe_key else new_only_parts(new_t, tm, since_jd, replay)
            filled = None if s.null_safe_key else filled_parts(new_t, tm, since_jd, replay)
            compared.append((old_t, new_t, tm, s, ts, created_after, updated_after, new_only))
            rowid = created_after is not None and sides_on_rowid(conn, s)
            span = rowid_span(conn, s) if more is not None else None
            if span is not None:
                spans[name] = span
            counting.append(
                (s, created_after, updated_after, new_only, filled[1] if filled else None, rowid)
            )
        elif new_t is not None:
            jobs.append(
                _Job(
                    name,
                    sql(exp.select(exp.Count(this=exp.Star())).from_(table(name, "new"))),
                    (RowKind.INSERTED,),
                )
            )
            out[name] = TableChanges(
                name,
                new_t.key,
                "primary key" if new_t.has_primary_key else "all columns",
                "new table",
            )
        else:
            assert old_t is not None
            out[name] = TableChanges(
                name,
                old_t.key,
                "primary key" if old_t.has_primary_key else "all columns",
                "removed table",
            )
    ranges = key_ranges(spans)
    split: list[_Job] = []
    for args in counting:
        table_jobs = count_jobs(*args, ranges=ranges.get(args[0].name))
        jobs += [j for j in table_jobs if not j.params]
        split += [j for j in table_jobs if j.params]
    # the small pieces last: the workers end together
    counts = run_jobs(conn, jobs + split, more, instant)
    for name, entry in list(out.items()):
        if entry.status == "new table":
            out[name] = TableChanges(
                name,
                entry.key,
                entry.keyed_by,
                "new table",
                inserted=int(counts[name][RowKind.INSERTED] or 0),
            )
    for old_t, new_t, tm, s, ts, created_after, updated_after, new_only in compared:
        rows = (
            tuple(iter_rows(conn, s, created_after, updated_after, new_only, new_t, tm))
            if want_rows
            else None
        )
        table_counts = finish_counts(conn, s, created_after, counts.get(s.name, {}))
        out[old_t.name] = _table_changes(old_t, tm, s, ts, table_counts, since_jd, rows)
    return ChangeSet(dict(sorted(out.items())), since_text)
