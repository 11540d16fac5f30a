"""Lost values without holding them: a bundle's ``rows.db`` keeps the complete list in
``_recovery_lost`` (one row per cell: table, key, label, column, value, reason); everything else
holds only exact counts and a bounded sample.

* :class:`LostValues` is what ``Outcome.lost`` holds: the first :data:`SAMPLE_LIMIT` values by
  (table, key, column), their exact ``total``, counts per table and column, and ``source``, the
  rows.db that has them all.
* :func:`iter_lost` streams the list in batches (``lost_values.csv`` is written from it).
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from recovery.bundle import LOST_TABLE
SAMPLE_LIMIT = 1000
"""At most this many lost values are kept in memory, in ``Outcome.lost`` and in report.json."""
BATCH = 5000
TEXT_ORDER = '"table", "key", "column"'
"""The order of ``Outcome.lost`` and ``lost_values.csv``: keys as their JSON text."""
NATURAL_ORDER = ('"table", json_extract("key", \'$[0]\'), json_extract("key", \'$[1]\'), '
                 'json_extract("key", \'$[2]\'), "key", "column"')
"""The report's order: numeric keys numerically (1, 2, 10), as ``report.model`` sorts them."""


class LostValues(list):  # type: ignore[type-arg]
    """A bounded sample of lost values (dicts like ``Outcome.lost`` always held) that knows the
    exact ``total``, the ``counts`` per table and column and the ``source`` rows.db with all of them.
    It is a list, so code that only reads ``Outcome.lost`` keeps working on the sample."""

    total: int
    counts: dict[str, dict[str, int]]
    source: str | None

    def __init__(self, sample: Any = (), total: int | None = None,
                 counts: dict[str, dict[str, int]] | None = None, source: str | None = None) -> None:
        super().__init__(sample)
        self.total = len(self) if total is None else total
        self.counts = counts or {}
        self.source = source

    @property
    def truncated(self) -> bool:
        return self.total > len(self)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parse_key(key: Any) -> list[Any]:
    try:
        k = json.loads(key) if isinstance(key, str) else key
    except json.JSONDecodeError:
        k = key
    return list(k) if isinstance(k, (list, tuple)) else [k]


def as_dict(rec: tuple[Any, ...]) -> dict[str, Any]:
    table, key, label, column, value, reason = rec
    return {"table": table, "key": parse_key(key), "label": label, "column": column, "value": value, "reason": reason}


def has_lost(conn: sqlite3.Connection, schema: str = "main") -> bool:
    return conn.execute(f"SELECT 1 FROM {_q(schema)}.sqlite_master WHERE type='table' AND name=?",
                        (LOST_TABLE,)).fetchone() is not None


def iter_rows(conn: sqlite3.Connection, schema: str = "main", order: str = TEXT_ORDER,
              limit: int | None = None, batch: int = BATCH) -> Iterator[tuple[Any, ...]]:
    """``_recovery_lost`` as (table, key, label, column, value, reason) tuples, fetched in batches."""
    if not has_lost(conn, schema):
        return
    sql = (f'SELECT "table", "key", "label", "column", "value", "reason" FROM {_q(schema)}.{LOST_TABLE} '
           f"ORDER BY {order}" + (f" LIMIT {int(limit)}" if limit is not None else ""))
    cur = conn.execute(sql)
    try:
        while rows := cur.fetchmany(batch):
            yield from rows
    finally:
        cur.close()


def iter_lost(conn: sqlite3.Connection, schema: str = "main", order: str = TEXT_ORDER,
              limit: int | None = None) -> Iterator[dict[str, Any]]:
    for rec in iter_rows(conn, schema, order, limit):
        yield as_dict(rec)


def counts(conn: sqlite3.Connection, schema: str = "main") -> dict[str, dict[str, int]]:
    """{table: {column: n}} of the lost values."""
    out: dict[str, dict[str, int]] = {}
    if has_lost(conn, schema):
        for t, c, n in conn.execute(f'SELECT "table", "column", count(*) FROM {_q(schema)}.{LOST_TABLE} '
                                    'GROUP BY 1, 2 ORDER BY 1, 2'):
            out.setdefault(t, {})[c] = n
    return out


def load(conn: sqlite3.Connection, schema: str = "main", source: str | None = None,
         limit: int = SAMPLE_LIMIT) -> LostValues:
    """The sample (first ``limit`` by table, key, column), exact counts, and where the rest is."""
    if source is None:
        source = next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == schema), None) or None
    c = counts(conn, schema)
    return LostValues(iter_lost(conn, schema, TEXT_ORDER, limit), sum(n for cols in c.values() for n in cols.values()),
                      c, source)


def open_ro(path: str | Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)


def stream_file(path: str | Path, order: str = TEXT_ORDER) -> Iterator[dict[str, Any]]:
    """Every lost value of a rows.db, streamed (the connection closes when the iterator ends)."""
    with closing(open_ro(path)) as conn:
        yield from iter_lost(conn, "main", order)
