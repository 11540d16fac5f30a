"""The report's per-user and activity numbers, computed set-based inside SQLite on a bundle's
``rows.db`` — one scan per table, folded into a few (kind, user, bin) groups; never one Python
object per row.

What the SQL reproduces (``model`` composes the report from it):

* **per user**: a row of kind ``inserted`` is *created* and belongs to the creator column, one of
  kind ``updated`` is *changed* and belongs to the changer column. Each (table, kind, user) group
  carries its row count, its rows named in a skipped conflict, its conflicts and its lost values
  (rows joined by key to the per-record counts) and its first rowid, so users keep the order in
  which a row-by-row read would first meet them; user values are grouped with their type (3 and
  3.0 are one user to Python too, but the one met first names it).
* **activity**: each row's timestamp as integer microseconds since 1970 (naive = UTC), exactly as
  :func:`parse_time` reads it — ISO text and Unix seconds/milliseconds in plain SQL, anything
  unusual through :func:`parse_time` itself (a SQL function, only for those values) — counted in
  5-minute bins from the start; wider bins are unions of these.

Keys the report knows in Python (conflicts; lost values from an in-memory list) are matched in a
TEMP table, one column per key part, compared with ``IS`` (SQLite's equality: 5 = 5.0, '5' ≠ 5,
NULL matches NULL — Python's tuple equality). The bundle's own lost values are matched by their
JSON key text, which extract wrote with the same ``json_array`` over the same rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlglot import exp

from recovery.report.lost import lost_table
from recovery.engine.sqlbuild import and_all, col, is_same, sql, table
from recovery.model.kinds import KIND_COLUMN as KIND
from recovery.model.kinds import RowKind

CREATED, CHANGED = RowKind.INSERTED, RowKind.UPDATED
EPOCH = datetime(1970, 1, 1)
US = 1_000_000
BIN_US = 5 * 60 * US
"""The finest activity bin: 5 minutes (every ``BIN_CHOICES`` width is a multiple of it)."""
_SHIFT = 4_000_000_000
"""Bins added before an integer division so it floors (SQLite's truncates toward zero): any
difference of two timestamps between years 1 and 9999 stays far inside 64 bits."""
TIME_FUNCTION = "recovery_time_us"
LOST_KEYS = "recovery_report_lost"
PY_KEYS = "recovery_report_keys"
GROUPS = "recovery_report_groups"


def parse_time(value: Any) -> datetime | None:
    """A stored timestamp (ISO text or Unix epoch s/ms) as naive UTC-ish datetime, or None.
    (:func:`time_us` is its SQL twin; a property test keeps the two equal.)"""
    if value is None or isinstance(value, bytes):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000.0 if abs(value) > 1e11 else float(value)
        try:
            return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return None
    text = str(value).strip()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return parse_time(float(text))
        except ValueError:
            return None
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def to_us(dt: datetime | None) -> int | None:
    return None if dt is None else (dt - EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _fn(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(args))


def _s(text: str) -> exp.Literal:
    return exp.Literal.string(text)


def _n(value: int) -> exp.Literal:
    return exp.Literal.number(value)


def _eq(a: exp.Expression, b: exp.Expression) -> exp.Expression:
    return exp.EQ(this=a, expression=b)


def _div(a: exp.Expression, b: exp.Expression) -> exp.Expression:
    return exp.Div(this=a, expression=b, typed=True)  # integer division of integers, as SQLite does


def _epoch_seconds(text: exp.Expression) -> exp.Expression:
    """Whole seconds since 1970 of an ISO text SQLite can parse (``julianday`` keeps integer
    milliseconds; rounding the day fraction back to seconds is exact for whole-second times)."""
    days = exp.Sub(this=_fn("julianday", text), expression=exp.Literal.number("2440587.5"))
    return exp.Cast(
        this=_fn("round", exp.Mul(this=exp.Paren(this=days), expression=_n(86400))),
        to=exp.DataType.build("INTEGER"),
    )


def time_us(c: exp.Expression) -> exp.Expression:
    """``c`` (ISO text or Unix epoch s/ms) as integer microseconds since 1970, NULL when it is no
    time — the SQL twin of ``to_us(parse_time(c))``.

    Branches, cheapest first; each one takes only values on which SQLite and Python agree:

    * ``YYYY-MM-DD HH:MM:SS`` (or ``T``) with day ≤ 28 and hour ≤ 23 — SQLite's parser gives
      NULL for anything but ASCII digits in the fields, month 0/13+, day 0, minute/second 60+
      (Python refuses them too: no time), but would roll Feb 30 over and accept hour 24, which
      Python refuses; those go to the round trip below;
    * Unix seconds (0 … 10^11) and milliseconds (up to 2^32 s, where ``value / 1000.0`` is
      still exact to the microsecond);
    * other ISO date-times, dates and ``.ffffff`` fractions that SQLite re-formats, from their
      Julian day number, to themselves (so its lenient parser accepts nothing Python would not);
    * anything else non-NULL goes to ``recovery_time_us`` — Python's :func:`parse_time` itself.
    """
    typeof = _fn("typeof", c.copy())
    is_text = _eq(typeof.copy(), _s("text"))
    is_int = _eq(typeof.copy(), _s("integer"))
    length = _fn("length", c.copy())
    head = _fn("substr", c.copy(), _n(1), _n(19))
    # the round trip goes through the Julian day number: strftime of the text itself would echo
    # the parsed fields (Feb 30, hour 24); from the number it writes the real date-time
    full_time = lambda e: _eq(  # noqa: E731
        _fn("strftime", _s("%Y-%m-%dT%H:%M:%S"), _fn("julianday", e.copy())),
        _fn("replace", e.copy(), _s(" "), _s("T")),
    )
    from_year_1 = exp.GTE(this=c.copy(), expression=_s("0001"))
    shape = exp.Paren(
        this=exp.or_(
            exp.Glob(this=c.copy(), expression=_s("????-??-?? ??:??:??")),
            exp.Glob(this=c.copy(), expression=_s("????-??-??T??:??:??")),
        )
    )
    plain = exp.and_(
        shape,
        exp.LTE(this=_fn("substr", c.copy(), _n(9), _n(2)), expression=_s("28")),
        exp.LT(this=_fn("substr", c.copy(), _n(12), _n(2)), expression=_s("24")),
        from_year_1.copy(),
        is_text.copy(),
    )
    iso_seconds = exp.and_(is_text, _eq(length.copy(), _n(19)), from_year_1, full_time(c))
    iso_date = exp.and_(
        is_text.copy(),
        _eq(length.copy(), _n(10)),
        from_year_1.copy(),
        _eq(_fn("strftime", _s("%Y-%m-%d"), _fn("julianday", c.copy())), c.copy()),
    )
    iso_fraction = exp.and_(
        is_text.copy(),
        exp.Between(this=length.copy(), low=_n(21), high=_n(26)),
        from_year_1.copy(),
        _eq(_fn("substr", c.copy(), _n(20), _n(1)), _s(".")),
        exp.Not(this=exp.Glob(this=_fn("substr", c.copy(), _n(21)), expression=_s("*[^0-9]*"))),
        full_time(head),
    )
    fraction = exp.Cast(
        this=_fn("substr", exp.DPipe(this=c.copy(), expression=_s("00000")), _n(21), _n(6)),
        to=exp.DataType.build("INTEGER"),
    )
    epoch_s = exp.and_(
        is_int.copy(), exp.Between(this=c.copy(), low=_n(0), high=_n(100_000_000_000))
    )
    epoch_ms = exp.and_(
        is_int.copy(),
        exp.GT(this=c.copy(), expression=_n(100_000_000_000)),
        exp.LTE(this=c.copy(), expression=_n(2**32 * 1000)),
    )
    us = lambda e: exp.Mul(this=_epoch_seconds(e), expression=_n(US))  # noqa: E731
    return exp.Case(
        ifs=[
            exp.If(this=plain, true=us(c.copy())),
            exp.If(this=epoch_s, true=exp.Mul(this=c.copy(), expression=_n(US))),
            exp.If(this=epoch_ms, true=exp.Mul(this=c.copy(), expression=_n(1000))),
            exp.If(
                this=exp.In(this=typeof.copy(), expressions=[_s("null"), _s("blob")]),
                true=exp.Null(),
            ),
            exp.If(this=iso_seconds, true=us(c.copy())),
            exp.If(this=iso_date, true=us(c.copy())),
            exp.If(this=iso_fraction, true=exp.Add(this=us(head.copy()), expression=fraction)),
        ],
        default=_fn(TIME_FUNCTION, c.copy()),
    )


def register(conn: sqlite3.Connection) -> None:
    """Make ``recovery_time_us`` (the fallback of :func:`time_us`) callable on ``conn``."""
    conn.create_function(TIME_FUNCTION, 1, lambda v: to_us(parse_time(v)), deterministic=True)


@dataclass(frozen=True)
class TablePlan:
    """How one table's rows are attributed (``model`` decides the columns)."""

    name: str
    key: tuple[str, ...]
    creator: str | None
    changer: str | None
    created_time: str | None
    changed_time: str | None


@dataclass
class UserGroup:
    """One (table, kind, user) group of rows."""

    table: str
    kind: str  # created | changed
    user: Any
    has_user_column: bool
    rows: int
    skipped: int  # rows whose key is in a skipped conflict
    conflicts: int
    lost: int
    first: int  # smallest rowid: where a row-by-row read first meets this user in the table


@dataclass
class ActivityCounts:
    """Rows per (table, kind, 5-minute bin from ``start_us``) and rows without a usable time."""

    start_us: int | None
    bins: list[tuple[str, str, int, int]] = field(default_factory=list)  # (table, kind, bin, rows)
    untimed: dict[str, int] = field(default_factory=dict)


@dataclass
class KeyCounts:
    """Counts per record that the report holds in Python: {(table, key tuple): n}."""

    conflicts: dict[tuple[str, tuple[Any, ...]], int] = field(default_factory=dict)
    skipped: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)
    lost: dict[tuple[str, tuple[Any, ...]], int] | None = None  # None: the bundle's _recovery_lost


def _kinds() -> exp.Expression:
    return exp.In(this=col(KIND, "b"), expressions=[_s(CREATED), _s(CHANGED)])


def _by_kind(created: exp.Expression, changed: exp.Expression) -> exp.Expression:
    return exp.Case(
        ifs=[exp.If(this=_eq(col(KIND, "b"), _s(CREATED)), true=created)], default=changed
    )


def _or_null(name: str | None) -> exp.Expression:
    return col(name, "b") if name else exp.Null()


def _create(conn: sqlite3.Connection, name: str, columns: Sequence[str]) -> None:
    """A fresh TEMP table with untyped columns (values keep their storage class, no affinity)."""
    conn.execute(sql(exp.Drop(tables=[table(name, "temp")], kind="TABLE", exists=True)))
    defs = [exp.ColumnDef(this=exp.to_identifier(c, quoted=True)) for c in columns]
    conn.execute(
        sql(exp.Create(this=exp.Schema(this=table(name, "temp"), expressions=defs), kind="TABLE"))
    )


def _index(
    conn: sqlite3.Connection, name: str, columns: Sequence[str], unique: bool = False
) -> None:
    conn.execute(
        sql(
            exp.Create(
                kind="INDEX",
                unique=unique,
                this=exp.Index(
                    this=table(name + "_key", "temp"),
                    table=table(name),
                    params=exp.IndexParameters(columns=[col(c) for c in columns]),
                ),
            )
        )
    )


def lost_counts(conn: sqlite3.Connection) -> tuple[list[tuple[str, Any, int]], int]:
    """One pass over the bundle's ``_recovery_lost``: [(table, reason, n)] and the number of
    records with lost values. Leaves ``temp.recovery_report_lost`` (table, JSON key, n — unique
    per record) for :func:`attribute` to join."""
    _create(conn, LOST_KEYS, ("table", "key", "n", "reasons", "reason", "last_reason"))
    q = (
        exp.select(
            col("table"),
            col("key"),
            exp.Count(this=exp.Star()),
            exp.Count(this=col("reason")),
            exp.Min(this=col("reason")),
            exp.Max(this=col("reason")),
        )
        .from_(lost_table(), copy=False)
        .group_by(_n(1), _n(2), copy=False)
    )
    conn.execute(sql(exp.Insert(this=table(LOST_KEYS, "temp"), expression=q)))
    _index(conn, LOST_KEYS, ("table", "key"), unique=True)
    records = conn.execute(
        sql(exp.select(exp.Count(this=exp.Star())).from_(table(LOST_KEYS, "temp")))
    ).fetchone()[0]
    # a record's cells share one reason (extract gives one per table): count reasons per record
    one_reason = exp.or_(
        _eq(col("reasons"), _n(0)),
        exp.and_(_eq(col("reasons"), col("n")), _eq(col("reason"), col("last_reason"))),
    )
    mixed = (
        exp.select(_n(1))
        .from_(table(LOST_KEYS, "temp"), copy=False)
        .where(exp.Not(this=exp.Paren(this=one_reason)), copy=False)
        .limit(1, copy=False)
    )
    source, count = (lost_table(), exp.Count(this=exp.Star()))
    if conn.execute(sql(mixed)).fetchone() is None:
        source, count = table(LOST_KEYS, "temp"), exp.Sum(this=col("n"))
    q = (
        exp.select(col("table"), col("reason"), count)
        .from_(source, copy=False)
        .group_by(_n(1), _n(2), copy=False)
    )
    return [(t, r, n) for t, r, n in conn.execute(sql(q))], records


def _py_key_table(conn: sqlite3.Connection, keys: KeyCounts) -> tuple[int, set[str]]:
    """``temp.recovery_report_keys``: one row per record the report knows in Python, its key one
    value per column. Returns the widest key and the tables that have rows there."""
    merged: dict[tuple[str, tuple[Any, ...]], list[int]] = {}
    for k, n in keys.conflicts.items():
        merged.setdefault(k, [0, 0, 0])[0] += n
    for k in keys.skipped:
        merged.setdefault(k, [0, 0, 0])[1] = 1
    for k, n in (keys.lost or {}).items():
        merged.setdefault(k, [0, 0, 0])[2] += n
    width = max((len(k) for _, k in merged), default=0)
    parts = [f"k{i}" for i in range(width)]
    _create(conn, PY_KEYS, ("table", "arity", "conflicts", "skipped", "lost", *parts))
    if merged:
        cols = 5 + width
        ins = exp.Insert(
            this=exp.Schema(
                this=table(PY_KEYS, "temp"),
                expressions=[
                    exp.to_identifier(c, quoted=True)
                    for c in ("table", "arity", "conflicts", "skipped", "lost", *parts)
                ],
            ),
            expression=exp.Values(expressions=[exp.Tuple(expressions=[exp.Placeholder()] * cols)]),
        )
        conn.executemany(
            sql(ins),
            (
                (t, len(k), c, s, lo, *k, *([None] * (width - len(k))))
                for (t, k), (c, s, lo) in merged.items()
            ),
        )
        _index(conn, PY_KEYS, ("table", "arity", *parts[:1]))
    return width, {t for t, _ in merged}


def _start(
    conn: sqlite3.Connection,
    plans: Sequence[TablePlan],
    times: dict[str, exp.Expression],
    deploy_us: int | None,
) -> int | None:
    """Where the bins start: the deploy, else the earliest timestamp of any row (a scan)."""
    if deploy_us is not None:
        return deploy_us
    found = [
        conn.execute(
            sql(
                exp.select(exp.Min(this=times[p.name].copy()))
                .from_(table(p.name, "main", "b"), copy=False)
                .where(_kinds(), copy=False)
            )
        ).fetchone()[0]
        for p in plans
    ]
    return min((v for v in found if v is not None), default=None)


def _bin(t: exp.Expression, start: int | None) -> exp.Expression:
    """The 5-minute bin of time ``t`` from ``start``, -1 for no time or a time before it: one
    reference to ``t``, so SQLite computes it once per row."""
    if start is None:
        return _n(-1)
    shifted = exp.Add(this=exp.Sub(this=t, expression=_n(start)), expression=_n(_SHIFT * BIN_US))
    b5 = exp.Sub(this=_div(exp.Paren(this=shifted), _n(BIN_US)), expression=_n(_SHIFT))
    return _fn("max", exp.Coalesce(this=b5, expressions=[_n(-1)]), _n(-1))


@dataclass
class TableAttribution:
    """:func:`attribute`'s result for one table: its groups, its activity bins (table, kind, bin,
    rows) and its rows without a usable time (None: none)."""

    groups: list[UserGroup] = field(default_factory=list)
    bins: list[tuple[str, str, int, int]] = field(default_factory=list)
    untimed: int | None = None


class _Times(dict[str, exp.Expression]):
    """Each plan's row time (:func:`time_us` by kind) as a tree, built when first asked for: a
    table whose result is ``cached`` needs none (the trees cost more to build than to run)."""

    def __init__(self, plans: Sequence[TablePlan]) -> None:
        super().__init__()
        self._plans = {p.name: p for p in plans}

    def __missing__(self, name: str) -> exp.Expression:
        p = self._plans[name]
        made = self[name] = _by_kind(
            time_us(col(p.created_time, "b")) if p.created_time else exp.Null(),
            time_us(col(p.changed_time, "b")) if p.changed_time else exp.Null(),
        )
        return made


def attribute(
    conn: sqlite3.Connection,
    plans: Sequence[TablePlan],
    keys: KeyCounts,
    lost_tables: set[str],
    deploy_us: int | None,
    cached: dict[str, TableAttribution] | None = None,
    collect: dict[str, TableAttribution] | None = None,
) -> tuple[list[UserGroup], ActivityCounts]:
    """Per (table, kind, user): rows, rows skipped, conflicts and lost values; and rows per
    (table, kind, 5-minute bin from the deploy — else from the earliest time); rows with no time,
    or one before the deploy, are ``untimed``. See the module doc.

    One scan per table: each row is folded into ``temp.recovery_report_groups`` keyed by (kind,
    user, bin) with an UPSERT — a small b-tree probe per row instead of the sort a ``GROUP BY``
    over every row costs — and the two views are grouped from those few rows. With ``keys.lost``
    None the lost values per record are ``temp.recovery_report_lost`` (from :func:`lost_counts`),
    joined only for ``lost_tables`` (the tables that have any).

    ``cached``: per-table results of an earlier call on the same rows.db with no keys in Python
    (``KeyCounts()``) and the same ``lost_tables`` and ``deploy_us`` — used for every table that
    ``keys`` names no record of when ``keys.lost`` is None (the keys only add to a group's
    counts, so such a table's result is the same); ``collect``: filled with this call's per-table
    results."""
    register(conn)
    _, keyed_tables = _py_key_table(conn, keys)
    times = _Times(plans)
    start = _start(conn, plans, times, deploy_us)
    group_key = ("kind", "type", "user", "bin")
    sums = ("rows", "skipped", "conflicts", "lost")
    _create(conn, GROUPS, (*group_key, *sums, "first"))
    _index(conn, GROUPS, group_key, unique=True)
    groups: list[UserGroup] = []
    activity = ActivityCounts(start)
    for p in plans:
        done = (cached or {}).get(p.name) if keys.lost is None else None
        if done is not None and p.name not in keyed_tables:
            _add(done, groups, activity, p.name)
            continue
        one = TableAttribution()
        _attribute_table(conn, p, keys, lost_tables, keyed_tables, times, start, one)
        if collect is not None:
            collect[p.name] = one
        _add(one, groups, activity, p.name)
    return groups, activity


def _add(
    one: TableAttribution, groups: list[UserGroup], activity: ActivityCounts, name: str
) -> None:
    groups.extend(one.groups)
    activity.bins.extend(one.bins)
    if one.untimed is not None:
        activity.untimed[name] = one.untimed


def _attribute_table(
    conn: sqlite3.Connection,
    p: TablePlan,
    keys: KeyCounts,
    lost_tables: set[str],
    keyed_tables: set[str],
    times: dict[str, exp.Expression],
    start: int | None,
    out: TableAttribution,
) -> None:
    """One table's scan (see :func:`attribute`) into ``out``."""
    group_key = ("kind", "type", "user", "bin")
    sums = ("rows", "skipped", "conflicts", "lost")
    user = _by_kind(_or_null(p.creator), _or_null(p.changer))
    zero = _n(0)
    lost_in_db = keys.lost is None and p.name in lost_tables
    lost = (
        exp.Coalesce(this=col("n", "l"), expressions=[zero.copy()]) if lost_in_db else zero.copy()
    )
    conflicts, skipped = zero.copy(), zero.copy()
    q = exp.select(
        col(KIND, "b"),
        _fn("typeof", user.copy()),
        exp.Coalesce(this=user, expressions=[_s("")]),
        _bin(times[p.name], start),
        _n(1),
    ).from_(table(p.name, "main", "b"), copy=False)
    if lost_in_db:
        key_json = _fn("json_array", *[col(k, "b") for k in p.key])
        q = q.join(
            table(LOST_KEYS, "temp", "l"),
            join_type="LEFT",
            on=and_all([_eq(col("table", "l"), _s(p.name)), _eq(col("key", "l"), key_json)]),
            copy=False,
        )
    if p.name in keyed_tables:
        q = q.join(
            table(PY_KEYS, "temp", "c"),
            join_type="LEFT",
            on=and_all(
                [
                    _eq(col("table", "c"), _s(p.name)),
                    _eq(col("arity", "c"), _n(len(p.key))),
                    *[is_same(col(f"k{i}", "c"), col(k, "b")) for i, k in enumerate(p.key)],
                ]
            ),
            copy=False,
        )
        coalesce = lambda name: exp.Coalesce(this=col(name, "c"), expressions=[_n(0)])  # noqa: E731
        conflicts, skipped = coalesce("conflicts"), coalesce("skipped")
        if keys.lost is not None:
            lost = coalesce("lost")
    into = exp.Schema(
        this=table(GROUPS, "temp"),
        expressions=[exp.to_identifier(c, quoted=True) for c in (*group_key, *sums, "first")],
    )
    if p.creator or p.changer or p.created_time or p.changed_time:
        q = q.select(skipped, conflicts, lost, exp.column("rowid", "b"), copy=False).where(
            _kinds(), copy=False
        )
        fold = [
            exp.EQ(this=col(c), expression=exp.Add(this=col(c), expression=col(c, "excluded")))
            for c in sums
        ]
        fold.append(
            exp.EQ(this=col("first"), expression=_fn("min", col("first"), col("first", "excluded")))
        )
        conn.execute(
            sql(
                exp.Insert(
                    this=into,
                    expression=q,
                    conflict=exp.OnConflict(
                        conflict_keys=[col(c) for c in group_key],
                        action=exp.var("DO UPDATE"),
                        expressions=fold,
                    ),
                )
            )
        )
    else:  # no user, no time: one group per kind — a plain aggregate per kind, no per-row upsert
        q.set("expressions", q.expressions[:4] + [exp.Count(this=exp.Star())])
        q = q.select(
            exp.Sum(this=skipped),
            exp.Sum(this=conflicts),
            exp.Sum(this=lost),
            exp.Min(this=exp.column("rowid", "b")),
            copy=False,
        )
        values = exp.Insert(
            this=into,
            expression=exp.Values(
                expressions=[
                    exp.Tuple(
                        expressions=[
                            exp.Placeholder() for _ in range(len(group_key) + len(sums) + 1)
                        ]
                    )
                ]
            ),
        )
        for kind in (CREATED, CHANGED):
            row = conn.execute(sql(q.where(_eq(col(KIND, "b"), _s(kind))))).fetchone()
            if row[4]:
                conn.execute(sql(values), (kind, *row[1:]))
    per_user = (
        exp.select(
            col("kind"),
            col("type"),
            col("user"),
            *[exp.Sum(this=col(c)) for c in sums],
            exp.Min(this=col("first")),
        )
        .from_(table(GROUPS, "temp"), copy=False)
        .group_by(_n(1), _n(2), _n(3), copy=False)
    )
    for kind, type_, uid, rows, skip, conf, lo, first in conn.execute(sql(per_user)).fetchall():
        created = kind == CREATED
        has_col = (p.creator if created else p.changer) is not None
        out.groups.append(
            UserGroup(
                p.name,
                "created" if created else "changed",
                None if type_ == "null" else uid,
                has_col,
                rows,
                skip,
                conf,
                lo,
                first,
            )
        )
    per_bin = (
        exp.select(col("kind"), col("bin"), exp.Sum(this=col("rows")))
        .from_(table(GROUPS, "temp"), copy=False)
        .group_by(_n(1), _n(2), copy=False)
    )
    for kind, b5, n in conn.execute(sql(per_bin)).fetchall():
        if b5 < 0:
            out.untimed = (out.untimed or 0) + n
        else:
            out.bins.append((p.name, "created" if kind == CREATED else "changed", b5, n))
    conn.execute(sql(exp.delete(table(GROUPS, "temp"))))
