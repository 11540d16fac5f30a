"""lost_values.csv (and filled_by_upgrade.csv) with each line made inside SQLite.

The list tables of a bundle's rows.db hold ~200k values at 1M parts. Handing every cell to
Python's csv module costs a Python object per cell and Python calls per row; here SQLite joins
a row's six cells into one text (``table,key,label,column,value,reason``) and Python writes
batches of those lines, checked with a few C-speed scans. The bytes are those of
:func:`recovery.report.csvout.write_rows` over :func:`recovery.report.lost.csv_rows`:

* SQLite makes a line only from cells whose text it writes as Python's csv module does, with no
  :func:`recovery.escape.csv_safe` guard needed: text not starting with ``= + - @`` or a tab,
  integers, NULL label/value (an empty cell), a blob label/value as ``0x`` + lower-case hex, a
  one-part key (``[12]`` → ``12``, ``["GS-1"]`` → ``GS-1``), and a real label/value whose
  15-digit text reads back to the same double and lies in ``[1e-4, 1e15)`` — there Python's
  shortest round-trip ``repr`` has the same digits and, like SQLite's ``%!.15g``, fixed notation
  with at least one decimal. Any other row gets no line.
* A batch of lines goes out as it is when its text has no ``"``, carriage return or NUL and
  exactly five commas and one line end per line (so no cell holds one: each line's cells are
  its comma-separated parts, none needing quotes), and no line is longer than
  :data:`recovery.report.csvout.BIG_CELL`.
* Every other row of the batch (no line, or a line that fails those checks) is read again by
  ``rowid`` with ``csv_rows``' cells and written by the csv module, in its place.

A table with a column named ``rowid`` (or without a rowid) is written by the csv module whole.
``tests/test_report_csvlines.py`` compares both writers on generated values.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from collections.abc import Sequence
from typing import IO, Any

from sqlglot import exp

from recovery.bundle.store import LOST_TABLE
from recovery.engine.sqlbuild import col, sql
from recovery.report import csvout
from recovery.report.lost import (
    KEY_CELL_FUNCTION,
    TEXT_ORDER,
    csv_cells,
    has_lost,
    key_cell_sql,
    key_cell_udf,
    lost_table,
    select_list,
)

BATCH = 5000
_CELLS = 6
_FORMULA_GLOB = "[-=+@\t]*"
"""Text starting with a character :func:`recovery.escape.csv_safe` looks at (a carriage return
too, but a line with one never goes out as SQLite made it)."""
_RAW = ("table", "column", "reason")
"""Cells SQLite puts in the line as stored (checked text, integer or NULL beforehand)."""


_ROWID_NAMES = frozenset({"rowid", "oid", "_rowid_"})


def _rowid() -> exp.Column:
    """``rowid`` unquoted: a table without one makes the statement fail (SQLite reads an unknown
    double-quoted name as a string)."""
    return exp.Column(this=exp.Identifier(this="rowid", quoted=False))


def _column_names(conn: sqlite3.Connection, name: str) -> set[str]:
    q = exp.select(col("name")).from_(exp.Table(this=_fn("pragma_table_info", exp.Placeholder())))
    return {str(r[0]).lower() for r in conn.execute(sql(q), (name,))}


def _fn(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(args))


def _s(text: str) -> exp.Literal:
    return exp.Literal.string(text)


def _n(value: int | float | str) -> exp.Literal:
    return exp.Literal.number(value)


def _typeof_is(e: exp.Expression, kind: str) -> exp.Expression:
    return exp.EQ(this=_fn("typeof", e.copy()), expression=_s(kind))


def _exact_real(e: exp.Expression) -> exp.Expression:
    """A real whose SQLite text is Python's ``repr``: it reads back to itself and is in the
    range where both write fixed notation (0.0, -0.0 and the rest go to the csv module)."""
    magnitude = _fn("abs", e.copy())
    text = exp.Cast(this=e.copy(), to=exp.DataType.build("TEXT"))
    return exp.and_(
        exp.GTE(this=magnitude, expression=_n("1e-4")),
        exp.LT(this=magnitude.copy(), expression=_n("1e15")),
        exp.EQ(this=exp.Cast(this=text, to=exp.DataType.build("REAL")), expression=e.copy()),
    )


@functools.cache
def _reals_as_fifteen_digits() -> bool:
    """This SQLite library writes a real as ``%!.15g`` (what :func:`_exact_real` relies on); a
    library that writes them otherwise leaves every real to the csv module."""
    conn = sqlite3.connect(":memory:")
    try:
        for x in (0.1, 1.0 / 3, 100.0, 2.5e-4, 123456.7, 98765432109.875):
            want = f"{x:.15g}"
            want = want if "." in want or "e" in want else want + ".0"
            if conn.execute("SELECT CAST(? AS TEXT)", (x,)).fetchone() != (want,):
                return False
        return True
    finally:
        conn.close()


def _value_text(e: exp.Expression) -> exp.Expression:
    """A ``label``/``value`` cell's text as the csv module writes it; NULL (no line) otherwise."""
    return exp.Case(
        ifs=[
            exp.If(this=exp.and_(_typeof_is(e, "text"), _no_formula(e)), true=e.copy()),
            exp.If(this=_typeof_is(e, "integer"), true=e.copy()),
            exp.If(this=_typeof_is(e, "null"), true=_s("")),
            exp.If(
                this=_typeof_is(e, "blob"),
                true=exp.DPipe(this=_s("0x"), expression=_fn("lower", _fn("hex", e.copy()))),
            ),
        ]
        + (
            [
                exp.If(
                    this=exp.and_(_typeof_is(e, "real"), _exact_real(e)),
                    true=exp.Cast(this=e.copy(), to=exp.DataType.build("TEXT")),
                )
            ]
            if _reals_as_fifteen_digits()
            else []
        )
    )


def _no_formula(e: exp.Expression) -> exp.Expression:
    """Text that :func:`recovery.escape.csv_safe` leaves as it is for its first character (the
    empty text too); a carriage return anywhere is caught in Python."""
    return exp.Not(this=exp.Glob(this=e.copy(), expression=_s(_FORMULA_GLOB)))


def _raw_text(e: exp.Expression) -> exp.Expression:
    """A ``table``/``column``/``reason`` cell's text: text or an integer as stored; NULL (no
    line) for anything else."""
    return exp.Case(
        ifs=[
            exp.If(this=exp.and_(_typeof_is(e, "text"), _no_formula(e)), true=e.copy()),
            exp.If(this=_typeof_is(e, "integer"), true=e.copy()),
        ]
    )


def _key_text() -> exp.Expression:
    """The key cell's text for the keys :func:`recovery.report.lost.key_cell_sql` unwraps in SQL
    (one integer, one plain string); NULL (no line) for the rest."""
    case = key_cell_sql()
    one_int, one_text = (i.copy() for i in case.args["ifs"][:2])
    one_text.set("this", exp.and_(one_text.args["this"], _no_formula(one_text.args["true"])))
    return exp.Case(ifs=[one_int, one_text])


def _line() -> exp.Expression:
    cells: list[exp.Expression] = [
        _raw_text(col("table")),
        _key_text(),
        _value_text(col("label")),
        _raw_text(col("column")),
        _value_text(col("value")),
        _raw_text(col("reason")),
    ]
    line = cells[0]
    for c in cells[1:]:
        line = exp.DPipe(this=exp.DPipe(this=line, expression=_s(",")), expression=c)
    return line


def _in_rowids(name: str, *columns: exp.Expression) -> exp.Select:
    """``columns`` of the rows of ``name`` whose rowid is in the JSON array bound to ``?``."""
    return (
        exp.select(_rowid(), *columns)
        .from_(lost_table("main", None, name))
        .where(
            exp.In(
                this=_rowid(),
                query=exp.Subquery(
                    this=exp.select(col("value")).from_(
                        exp.Table(this=_fn("json_each", exp.Placeholder()))
                    )
                ),
            )
        )
    )


def _sizes(conn: sqlite3.Connection, name: str, rowids: list[int]) -> dict[int, int]:
    """Each given row's stored size in bytes (its six cells), read without the cells."""
    size: exp.Expression = _n(0)
    for c in ("table", "key", "label", "column", "value", "reason"):
        stored = _fn("length", exp.Cast(this=col(c), to=exp.DataType.build("BLOB")))
        size = exp.Add(this=size, expression=_fn("ifnull", stored, _n(0)))
    q = _in_rowids(name, size)
    return {r[0]: r[1] for r in conn.execute(sql(q), (json.dumps(rowids),))}


def _by_rowid(conn: sqlite3.Connection, name: str, rowids: list[int]) -> dict[int, tuple[Any, ...]]:
    """The csv module's cells (:func:`recovery.report.lost.csv_rows`) of the given rows."""
    q = _in_rowids(name, *csv_cells())
    return {r[0]: r[1:] for r in conn.execute(sql(q), (json.dumps(rowids),))}


def _clean(line: str) -> bool:
    """A line whose cells are its comma-separated parts, none needing quotes."""
    return (
        len(line) <= csvout.BIG_CELL
        and line.count(",") == _CELLS - 1
        and '"' not in line
        and "\n" not in line
        and "\r" not in line
        and "\x00" not in line
    )


def _write_mixed(
    fh: IO[str],
    conn: sqlite3.Connection,
    name: str,
    rows: Sequence[tuple[Any, int]],
) -> None:
    """A batch with rows the scans did not pass: each of those rows as the csv module writes it,
    their cells read by rowid in groups of at most :data:`recovery.report.csvout.CHUNK_CHARS`
    bytes (or one row), so memory stays bounded by the largest row as in the csv module's path."""
    others = [rid for line, rid in rows if line is None or not _clean(line)]
    sizes = _sizes(conn, name, others) if others else {}
    cells: dict[int, tuple[Any, ...]] = {}
    at = 0  # the next of ``others`` not read yet
    out: list[str] = []
    for line, rid in rows:
        if rid not in sizes:
            out.append(line + os.linesep)
            continue
        if out:
            fh.write("".join(out))
            out.clear()
        if rid not in cells:
            cells.clear()
            group: list[int] = []
            total = 0
            while at < len(others) and (
                not group or total + sizes[others[at]] <= csvout.CHUNK_CHARS
            ):
                total += sizes[others[at]]
                group.append(others[at])
                at += 1
            cells = _by_rowid(conn, name, group)
        csvout.write_body(fh, [cells[rid]])
    fh.write("".join(out))


def _write_batch(
    fh: IO[str], conn: sqlite3.Connection, name: str, rows: list[tuple[Any, int]]
) -> None:
    if not rows:
        return
    lines = [r[0] for r in rows]
    if None in lines:
        _write_mixed(fh, conn, name, rows)
        return
    text = "\n".join(lines)
    n = len(lines)
    if (
        text.count("\n") != n - 1
        or text.count(",") != (_CELLS - 1) * n
        or '"' in text
        or "\r" in text
        or "\x00" in text
        or max(map(len, lines)) > csvout.BIG_CELL
    ):
        _write_mixed(fh, conn, name, rows)
        return
    if os.linesep == "\n":
        fh.write(text)
        fh.write("\n")
        return
    fh.write(os.linesep.join(lines))
    fh.write(os.linesep)


def write_lines(
    fh: IO[str],
    conn: sqlite3.Connection,
    columns: Sequence[str],
    name: str = LOST_TABLE,
    order: Sequence[exp.Expression] = TEXT_ORDER,
) -> bool:
    """``columns`` then every row of list table ``name`` (``_recovery_lost`` or
    ``_recovery_filled``) in ``order``, as :func:`recovery.report.csvout.write_rows` writes
    :func:`recovery.report.lost.csv_rows`. False, with nothing written, when the list is not one
    the lines can carry (see the module docstring): the caller then uses the csv module."""
    if not has_lost(conn, "main", name):
        return False
    if _ROWID_NAMES & _column_names(conn, name):
        return False  # "rowid" would name that column, not the row
    conn.create_function(KEY_CELL_FUNCTION, 1, key_cell_udf, deterministic=True)
    q = select_list([_line(), _rowid()], "main", order, None, name)
    try:
        cur = conn.execute(sql(q))
    except sqlite3.OperationalError:  # e.g. a WITHOUT ROWID table in a hand-made rows.db
        return False
    csvout.write_header(fh, columns)
    batch: list[tuple[Any, int]] = []
    chars = 0
    for row in cur:
        batch.append(row)
        line = row[0]
        if line is not None:
            chars += len(line)
        if len(batch) >= BATCH or chars > csvout.CHUNK_CHARS:
            _write_batch(fh, conn, name, batch)
            batch.clear()
            chars = 0
    _write_batch(fh, conn, name, batch)
    return True
