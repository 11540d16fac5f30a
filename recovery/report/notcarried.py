"""The records a re-import did not carry back, whole: every column of every such row, read from the
bundle's ``rows.db`` (the post-deploy rows as the new release stored them), so a person can enter
them again by hand. Written as ``not_carried.csv`` (one line per column of each record) and
listed in the report.

Which records: :meth:`recovery.model.outcome.Outcome.not_carried` — rows with a conflict of their own
whose unit was skipped (``unique``, ``update_deleted``, ``constraint`` …) and the rows skipped with
their unit (a skipped new quote's items), once each.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing
from typing import Any

from sqlglot import exp

from recovery.bundle.store import Bundle
from recovery.model.kinds import KIND_COLUMN, RowKind
from recovery.escape import SHOW_LIMIT, cut
from recovery.report.lost import csv_cell, open_ro
from recovery.engine.sqlbuild import col, sql, table

NOT_CARRIED_COLUMNS = ["table", "key", "label", "reason", "column", "value"]
CHUNK = 200
"""Keys looked up per statement (well under SQLite's bound-parameter limit)."""


def present_tables(conn: sqlite3.Connection) -> set[str]:
    """The tables of ``conn``'s main database (a bundle's rows.db holds only tables with rows)."""
    q = (
        exp.select(col("name"))
        .from_(table("sqlite_master", "main"))
        .where(exp.EQ(this=col("type"), expression=exp.Literal.string("table")))
    )
    return {r[0] for r in conn.execute(sql(q))}


def rows_of(
    conn: sqlite3.Connection, name: str, key: list[str], keys: list[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The bundle rows of ``name`` with these keys, column → value (the post-deploy version, not
    a closure row, where there is one)."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for i in range(0, len(keys), CHUNK):
        chunk = [k for k in keys[i : i + CHUNK] if len(k) == len(key)]
        if not chunk:
            continue
        values = exp.Values(
            expressions=[exp.Tuple(expressions=[exp.Placeholder()] * len(key))] * len(chunk)
        )
        q = (
            exp.select("*")
            .from_(table(name, "main"))
            .where(
                exp.In(
                    this=exp.Tuple(expressions=[col(k) for k in key]),
                    query=exp.Subquery(this=values),
                )
            )
        )
        cur = conn.execute(sql(q), [v for k in chunk for v in k])
        names = [d[0] for d in cur.description]
        for rec in cur:
            d = dict(zip(names, rec, strict=True))
            k = tuple(d[c] for c in key)
            if k not in found or found[k].get(KIND_COLUMN) == RowKind.CLOSURE:
                found[k] = d
    return found


def whole_records(
    bundle: Bundle, records: list[dict[str, Any]], conn: sqlite3.Connection | None = None
) -> list[dict[str, Any]]:
    """``records`` (``{"table", "key", "label", "reason"}``) each with ``values``: its bundle row,
    column → value in the table's column order (empty when the bundle holds no such row).
    ``conn``: an open read-only connection to the bundle's rows.db; without one, one is opened
    here, every statement time-bounded (rows.db is untrusted input)."""
    if not records:
        return []
    if conn is None:
        if not bundle.rows_db.is_file():
            return _records(bundle, records, None)
        from recovery.engine.timebound import statement_time_limit

        with closing(open_ro(bundle.rows_db)) as own, statement_time_limit(own):
            return _records(bundle, records, own)
    return _records(bundle, records, conn)


def _records(
    bundle: Bundle, records: list[dict[str, Any]], conn: sqlite3.Connection | None
) -> list[dict[str, Any]]:
    by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_table[r["table"]].append(r)
    out = []
    present = present_tables(conn) if conn is not None else set()
    for name in sorted(by_table):
        t = bundle.new.table(name)
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        if conn is not None and t is not None and name in present and t.key:
            found = rows_of(conn, name, list(t.key), [tuple(r["key"]) for r in by_table[name]])
        order = list(t.column_names) if t is not None else []
        for r in by_table[name]:
            row = found.get(tuple(r["key"]), {})
            values = {c: row[c] for c in order if c in row}
            values.update({c: v for c, v in row.items() if c not in values and c != KIND_COLUMN})
            out.append({**r, "values": values})
    return out


def csv_rows(records: list[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
    """``not_carried.csv``'s lines: one per column of each record (a record the bundle holds no
    row for: one line with the column and value empty)."""
    for r in records:
        head = (r["table"], csv_cell(r["key"]), csv_cell(r.get("label")), r.get("reason"))
        if not r["values"]:
            yield (*head, None, None)
        for c, v in r["values"].items():
            yield (*head, c, csv_cell(v))


def shown(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records as the report lists them: the row's values as one ``column: value; …`` cell."""
    return [
        {
            "table": r["table"],
            "key": r["key"],
            "label": r.get("label"),
            "reason": r.get("reason"),
            "values": cut(
                "; ".join(f"{c}: {_word(v)}" for c, v in r["values"].items()), 4 * SHOW_LIMIT
            ),
        }
        for r in records
    ]


def _word(v: Any) -> str:
    """A value in plain words: NULL as empty, bytes as hex, text and numbers as they are."""
    if v is None:
        return ""
    if isinstance(v, bytes):
        return "0x" + v.hex()
    return str(v)
