"""Lost values without holding them: a bundle's ``rows.db`` keeps the complete list in
``_recovery_lost`` (one row per cell: table, key, label, column, value, reason); everything else
holds only exact counts and a bounded sample.

* :class:`LostValues` is what ``Outcome.lost`` holds: the first :data:`SAMPLE_LIMIT` values by
  (table, key, column), their exact ``total``, counts per table and column, and ``source``, the
  rows.db that has them all.
* :func:`iter_lost` streams the list in batches; :func:`iter_csv_rows` streams it already shaped
  as ``lost_values.csv`` rows (``lost_values.csv`` is written from it).

Every statement here is a sqlglot tree (``recovery.engine.sqlbuild``); the orders are lists of
expressions, so a caller can pass its own.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from recovery.engine.base import Connection
from recovery.bundle.store import LOST_TABLE
from recovery.escape import ELLIPSIS, SHOW_LIMIT
from recovery.engine.sqlbuild import col, sql, table
from recovery.model.values import LostValues
from recovery.engine.sqlite_io import file_uri

if TYPE_CHECKING:
    from recovery.model.outcome import Outcome

SAMPLE_LIMIT = 1000
"""At most this many lost values are kept in memory, in ``Outcome.lost`` and in report.json."""
BATCH = 5000
COLUMNS = ("table", "key", "label", "column", "value", "reason")
"""The columns of ``_recovery_lost`` and of ``lost_values.csv``, in order."""


def _fn(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(args))


def _json_at(i: int) -> exp.Expression:
    return _fn("json_extract", col("key"), exp.Literal.string(f"$[{i}]"))


TEXT_ORDER: tuple[exp.Expression, ...] = (col("table"), col("key"), col("column"))
"""The order of ``Outcome.lost`` and ``lost_values.csv``: keys as their JSON text."""
NATURAL_ORDER: tuple[exp.Expression, ...] = (
    col("table"),
    _json_at(0),
    _json_at(1),
    _json_at(2),
    col("key"),
    col("column"),
)
"""The report's order: numeric keys numerically (1, 2, 10), as ``report.model`` sorts them."""


def _shown(e: exp.Expression, limit: int) -> exp.Expression:
    """``e`` cut inside SQLite to ``limit + 1`` characters (a blob to ``limit // 2 + 1`` bytes, its
    hex then fits ``limit``), so a huge value never reaches Python whole; :func:`as_dict` sees the
    extra character and marks the value as cut."""
    typeof = _fn("typeof", e.copy())
    n = exp.Literal.number
    return exp.Case(
        ifs=[
            exp.If(
                this=exp.EQ(this=typeof, expression=exp.Literal.string("text")),
                true=_fn("substr", e.copy(), n(1), n(limit + 1)),
            ),
            exp.If(
                this=exp.EQ(this=typeof.copy(), expression=exp.Literal.string("blob")),
                true=_fn("substr", e.copy(), n(1), n(limit // 2 + 1)),
            ),
        ],
        default=e.copy(),
    )


def _size(e: exp.Expression) -> exp.Expression:
    """The stored size of ``e`` in bytes (UTF-8 for text), without copying it to Python."""
    return _fn("length", exp.Cast(this=e.copy(), to=exp.DataType.build("BLOB")))


def cut_value(v: Any, limit: int) -> tuple[Any, bool]:
    """(shown value, whether it was cut): text to ``limit`` characters + ``…``; a blob to its
    ``0x`` hex of ``limit // 2`` bytes + ``…`` (text: bytes cannot carry the mark)."""
    if isinstance(v, str) and len(v) > limit:
        return v[:limit] + ELLIPSIS, True
    if isinstance(v, bytes) and len(v) > limit // 2:
        return "0x" + v[: limit // 2].hex() + ELLIPSIS, True
    return v, False


def parse_key(key: Any) -> list[Any]:
    try:
        k = json.loads(key) if isinstance(key, str) else key
    except json.JSONDecodeError:
        k = key
    return list(k) if isinstance(k, (list, tuple)) else [k]


def as_dict(rec: tuple[Any, ...], cut: int | None = None) -> dict[str, Any]:
    """A ``_recovery_lost`` row as a dict; a row of :func:`iter_rows` with ``cut`` (one more
    column, the value's size) has label and value cut, and ``value_size`` (bytes) when the value is."""
    if cut is None:
        table, key, label, column, value, reason = rec[:6]
        return {
            "table": table,
            "key": parse_key(key),
            "label": label,
            "column": column,
            "value": value,
            "reason": reason,
        }
    table, key, label, column, value, reason, size = rec
    label, _ = cut_value(label, cut)
    value, was_cut = cut_value(value, cut)
    d = {
        "table": table,
        "key": parse_key(key),
        "label": label,
        "column": column,
        "value": value,
        "reason": reason,
    }
    if was_cut:
        d["value_size"] = size
    return d


def lost_table(schema: str = "main", alias: str | None = None, name: str = LOST_TABLE) -> exp.Table:
    return table(name, schema, alias)


def has_lost(conn: Connection, schema: str = "main", name: str = LOST_TABLE) -> bool:
    """Whether ``schema`` has the list table ``name`` (the lost list, or with
    :data:`recovery.bundle.store.FILLED_TABLE` the "filled by the upgrade, not verified" list)."""
    q = (
        exp.select(exp.Literal.number(1))
        .from_(table("sqlite_master", schema))
        .where(
            exp.and_(
                exp.EQ(this=col("type"), expression=exp.Literal.string("table")),
                exp.EQ(this=col("name"), expression=exp.Placeholder()),
            )
        )
    )
    return conn.execute(sql(q), (name,)).fetchone() is not None


def count_rows(conn: sqlite3.Connection, schema: str = "main", name: str = LOST_TABLE) -> int:
    """How many values list ``name`` holds (0 when the table is not there)."""
    if not has_lost(conn, schema, name):
        return 0
    return int(
        conn.execute(
            sql(exp.select(exp.Count(this=exp.Star())).from_(lost_table(schema, None, name)))
        ).fetchone()[0]
    )


def select_list(
    columns: Sequence[exp.Expression],
    schema: str,
    order: Sequence[exp.Expression],
    limit: int | None,
    name: str = LOST_TABLE,
) -> exp.Select:
    q = (
        exp.select(*columns)
        .from_(lost_table(schema, None, name))
        .order_by(*[o.copy() for o in order])
    )
    return q.limit(int(limit)) if limit is not None else q


def _fetch(conn: Connection, q: exp.Expression, batch: int = BATCH) -> Iterator[tuple[Any, ...]]:
    cur = conn.execute(sql(q))
    try:
        while rows := cur.fetchmany(batch):
            yield from rows
    finally:
        cur.close()


def iter_rows(
    conn: Connection,
    schema: str = "main",
    order: Sequence[exp.Expression] = TEXT_ORDER,
    limit: int | None = None,
    batch: int = BATCH,
    cut: int | None = None,
) -> Iterator[tuple[Any, ...]]:
    """``_recovery_lost`` as (table, key, label, column, value, reason) tuples, fetched in batches.
    ``cut``: label and value cut inside SQLite (see :func:`_shown`) and the value's size in bytes
    appended — for lists that are shown, never for the CSV."""
    if not has_lost(conn, schema):
        return
    columns: list[exp.Expression] = [col(c) for c in COLUMNS]
    if cut is not None:
        columns[2], columns[4] = _shown(col("label"), cut), _shown(col("value"), cut)
        columns.append(_size(col("value")))
    yield from _fetch(conn, select_list(columns, schema, order, limit), batch)


def iter_lost(
    conn: sqlite3.Connection,
    schema: str = "main",
    order: Sequence[exp.Expression] = TEXT_ORDER,
    limit: int | None = None,
    cut: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Lost values as dicts — exact, or with ``cut`` as :func:`as_dict` shows them."""
    for rec in iter_rows(conn, schema, order, limit, cut=cut):
        yield as_dict(rec, cut)


def count_by(
    conn: sqlite3.Connection, first: str, second: str, schema: str = "main"
) -> list[tuple[Any, Any, int]]:
    """(``first``, ``second``, n) of the lost values grouped by those two columns, sorted."""
    if not has_lost(conn, schema):
        return []
    one, two = exp.Literal.number(1), exp.Literal.number(2)
    q = (
        exp.select(col(first), col(second), exp.Count(this=exp.Star()))
        .from_(lost_table(schema))
        .group_by(one, two)
        .order_by(one.copy(), two.copy())
    )
    return conn.execute(sql(q)).fetchall()


def counts(conn: sqlite3.Connection, schema: str = "main") -> dict[str, dict[str, int]]:
    """{table: {column: n}} of the lost values."""
    out: dict[str, dict[str, int]] = {}
    for t, c, n in count_by(conn, "table", "column", schema):
        out.setdefault(t, {})[c] = n
    return out


def load(
    conn: sqlite3.Connection,
    schema: str = "main",
    source: str | None = None,
    limit: int = SAMPLE_LIMIT,
    cut: int | None = SHOW_LIMIT,
) -> LostValues:
    """The sample (first ``limit`` by table, key, column), exact counts, and where the rest is.
    The sample is for showing: labels and values are cut to ``cut`` characters inside SQLite
    (``value_size`` says a value was), so memory stays bounded whatever the values' sizes; the
    exact values are only ever streamed (:func:`stream_file`, :func:`csv_rows`)."""
    if source is None:
        source = (
            next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == schema), None)
            or None
        )
    c = counts(conn, schema)
    return LostValues(
        iter_lost(conn, schema, TEXT_ORDER, limit, cut),
        sum(n for cols in c.values() for n in cols.values()),
        c,
        source,
    )


def open_ro(path: str | Path) -> sqlite3.Connection:
    return sqlite3.connect(file_uri(Path(path), mode="ro"), uri=True)


def iter_outcome_lost(outcome: Outcome) -> Iterator[dict[str, Any]]:
    """Every lost value of ``outcome``: streamed from the bundle's rows.db when ``outcome.lost``
    is only a sample (and that file still exists — a dry run's bundle is gone when it ends), else
    the sample itself, which is then complete."""
    source = outcome.lost.source if isinstance(outcome.lost, LostValues) else None
    if outcome.lost_truncated and source and Path(source).is_file():
        return stream_file(source)
    return iter(outcome.lost)


def stream_file(
    path: str | Path, order: Sequence[exp.Expression] = TEXT_ORDER
) -> Iterator[dict[str, Any]]:
    """Every lost value of a rows.db, streamed (the connection closes when the iterator ends)."""
    with closing(open_ro(path)) as conn:
        yield from iter_lost(conn, "main", order)


# ---------------------------------------------------------------------------------------------
# lost_values.csv rows, shaped inside SQLite


def cell(v: Any) -> Any:
    """A value as a report cell: bytes as hex, lists/dicts as JSON, keys of one column unwrapped
    (as they are: a bytes key part stays bytes). Bytes inside the JSON (a part of a composite
    key) are tagged as outcome.json tags them, ``{"$bytes": hex}``, so the cell reads back exactly
    and never equals a text part that spells the same hex."""
    if isinstance(v, bytes):
        return "0x" + v.hex()
    if isinstance(v, (list, tuple)):
        return (
            v[0]
            if len(v) == 1 and not isinstance(v[0], (list, dict))
            else json.dumps(list(v), ensure_ascii=False, default=_tagged_bytes)
        )
    if isinstance(v, dict):
        return json.dumps(v, ensure_ascii=False, default=_tagged_bytes)
    return v


def _tagged_bytes(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(v).hex()}
    raise TypeError(f"Object of type {type(v).__name__} is not JSON serializable")


def csv_cell(v: Any) -> Any:
    """A value as a CSV cell, exactly as ``report.tables.frame(...).to_csv()`` writes it: the
    :func:`cell`, with NULL and NaN as an empty cell."""
    v = cell(v)
    return None if isinstance(v, float) and math.isnan(v) else v


def sql_cell(e: exp.Expression) -> exp.Expression:
    """A stored value as its CSV cell, in SQL: blobs as ``0x`` + lower-case hex (SQLite never
    returns NaN, and every other storage class is written by the csv module as pandas does)."""
    is_blob = exp.EQ(this=_fn("typeof", e.copy()), expression=exp.Literal.string("blob"))
    return exp.Case(
        ifs=[
            exp.If(
                this=is_blob,
                true=exp.DPipe(
                    this=exp.Literal.string("0x"), expression=_fn("lower", _fn("hex", e.copy()))
                ),
            )
        ],
        default=e.copy(),
    )


KEY_CELL_FUNCTION = "recovery_lost_key_cell"


def key_cell_udf(key: Any) -> Any:
    """``csv_cell(parse_key(key))`` as a value SQLite can return unchanged to the CSV writer."""
    v = csv_cell(parse_key(key))
    if isinstance(v, bool) or (isinstance(v, int) and not -(2**63) <= v < 2**63):
        return str(v)  # the text the csv module writes for it
    if v is None or isinstance(v, (str, int, float, bytes)):
        return v
    return str(v)


def key_cell_sql() -> exp.Expression:
    """The ``key`` cell of lost_values.csv, in SQL: ``[12]`` → 12, ``["GS-1"]`` → GS-1,
    ``[null]`` → empty — when ``key`` is exactly that canonical JSON (the form extract's
    ``json_array`` writes; one integer, or one string without escapes or control characters),
    whose value is then its text between the brackets. Any other key (composite keys, reals …)
    goes to ``recovery_lost_key_cell``, i.e. Python's ``json.loads`` + :func:`csv_cell`."""
    key = col("key")
    length = _fn("length", key.copy())

    def inner(trim: int) -> exp.Expression:
        return _fn(
            "substr",
            key.copy(),
            exp.Literal.number(1 + trim),
            exp.Sub(this=length.copy(), expression=exp.Literal.number(2 * trim)),
        )

    as_int = exp.Cast(this=inner(1), to=exp.DataType.build("INTEGER"))
    # (a non-text key never equals text: a blob, number or NULL key fails both tests)
    canonical_int = exp.EQ(
        this=key.copy(),
        expression=exp.DPipe(
            this=exp.DPipe(this=exp.Literal.string("["), expression=as_int.copy()),
            expression=exp.Literal.string("]"),
        ),
    )
    plain_text = exp.and_(
        exp.EQ(
            this=_fn("substr", key.copy(), exp.Literal.number(1), exp.Literal.number(2)),
            expression=exp.Literal.string('["'),
        ),
        exp.EQ(
            this=_fn("substr", key.copy(), exp.Literal.number(-2)),
            expression=exp.Literal.string('"]'),
        ),
        exp.GTE(this=length.copy(), expression=exp.Literal.number(4)),
        exp.EQ(
            this=_fn("instr", inner(2), exp.Literal.string('"')), expression=exp.Literal.number(0)
        ),
        exp.EQ(
            this=_fn("instr", key.copy(), exp.Literal.string("\\")),
            expression=exp.Literal.number(0),
        ),
        exp.Not(
            this=exp.Glob(
                this=key.copy(), expression=exp.Literal.string("*[" + chr(1) + "-" + chr(31) + "]*")
            )
        ),
    )
    return exp.Case(
        ifs=[
            exp.If(this=canonical_int, true=as_int),
            exp.If(this=plain_text, true=inner(2)),
            exp.If(
                this=exp.EQ(this=key.copy(), expression=exp.Literal.string("[null]")),
                true=exp.Null(),
            ),
        ],
        default=_fn(KEY_CELL_FUNCTION, key.copy()),
    )


def csv_cells() -> list[exp.Expression]:
    """A ``lost_values.csv`` row's six cells as SQLite shapes them for the CSV writer."""
    return [
        col("table"),
        key_cell_sql(),
        sql_cell(col("label")),
        col("column"),
        sql_cell(col("value")),
        col("reason"),
    ]


def csv_rows(
    conn: sqlite3.Connection,
    schema: str = "main",
    order: Sequence[exp.Expression] = TEXT_ORDER,
    name: str = LOST_TABLE,
) -> Iterator[tuple[Any, ...]]:
    """Every lost value as a ``lost_values.csv`` row (cells as :func:`csv_cell` makes them), in
    ``order`` — shaped by SQLite, so the rows go to the CSV writer untouched (a cursor: iterate
    it before closing ``conn``)."""
    if not has_lost(conn, schema, name):
        return iter(())
    conn.create_function(KEY_CELL_FUNCTION, 1, key_cell_udf, deterministic=True)
    q = select_list(
        csv_cells(),
        schema,
        order,
        None,
        name,
    )
    return conn.execute(sql(q))
