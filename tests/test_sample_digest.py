"""The sample world is pinned: the same seed and size give the same rows, byte for byte.

The generator is tuned for speed at 10M parts (batched inserts, bulk-build PRAGMAs, the ledger
kept out of RAM); none of that may change the world a seed names, because tests, goldens and the
PostgreSQL sample (``recovery sample --url`` copies the SQLite world) all rely on it. The digests
below were computed with the row-at-a-time generator before it was tuned.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recovery.sample import content as c
from recovery.sample.generator import write_json
from recovery.sample.ledger import SortedPairs
from recovery.sample import BACKUP_NAME, LIVE_NAME, UPLOADS_NAME, WORLD_JSON, generate


def world_digest(out: Path) -> str:
    """sha256 over the schema and every row of every table of both databases (live read through
    its WAL, read-only), world.json's bytes and every upload's path and bytes."""
    h = hashlib.sha256()
    for name in (BACKUP_NAME, LIVE_NAME):
        conn = sqlite3.connect(f"file:{out / name}?mode=ro", uri=True)
        try:
            for kind, obj, table, sql in conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
            ):
                h.update(repr((kind, obj, table, _clauses(sql))).encode())
            for (table,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            ).fetchall():
                h.update(f"\n#{table}\n".encode())
                q = 'SELECT * FROM "{}" ORDER BY {}'.format(
                    table.replace('"', '""'), "rowid" if table != "alembic_version" else "1"
                )
                for row in conn.execute(q):
                    h.update(repr(row).encode())
        finally:
            conn.close()
    h.update((out / WORLD_JSON).read_bytes())
    uploads = out / UPLOADS_NAME
    for path in sorted(p for p in uploads.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(uploads)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _clauses(sql: str | None) -> list[str]:
    """A table's DDL as its sorted clauses: Alembic's batch rebuilds order a table's
    constraints by hash (PYTHONHASHSEED), so their order differs between runs of any generator."""
    return sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines())


PINNED = {
    (10, 1): "c21f78db18f3eb0adc608f731138a7dbcbb414efd0b91a9b9fa3aab6c0c03bb7",
    (60, 42): "19a4cd9ec9a3bea0cbd77e8e876c2006eceb899b66ec6059c89be9af3384c5c9",
    (300, 42): "b3a918e33c0f4dc4b1ea2bee9c914ea5145376cf04771503a4a1e78fcde72e1c",
    (1500, 7): "54a87036659ebb53f7a176d885502fff75f2dd3d106a323ea7f816d6cafa2091",
}


@pytest.mark.parametrize(("parts", "seed"), sorted(PINNED))
def test_the_same_seed_gives_the_pinned_world(tmp_path: Path, parts: int, seed: int) -> None:
    out = generate(tmp_path / "w", parts=parts, seed=seed)
    assert world_digest(out) == PINNED[(parts, seed)]


@given(
    base=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=0)
    ),
    seconds=st.integers(min_value=-(10**9), max_value=10**9),
)
def test_the_fast_clock_writes_what_datetime_writes(base: datetime, seconds: int) -> None:
    assert c.Clock(base).at(seconds) == c.at(base, seconds)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(value=_json, streamed=st.booleans())
def test_streamed_json_is_json_dumps_byte_for_byte(value: object, streamed: bool) -> None:
    """world.json is written piece by piece (lists as iterators, objects as SortedPairs), and
    must read exactly as ``json.dumps(sort_keys=True, indent=2, ensure_ascii=False)``."""

    def stream(v: object) -> object:
        if isinstance(v, dict):
            if streamed and v:
                return SortedPairs(iter([(k, stream(v[k])) for k in sorted(v)]))
            return {k: stream(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return iter([stream(x) for x in v]) if streamed else [stream(x) for x in v]
        return v

    fp = io.StringIO()
    write_json(fp, {"a": stream(value), "b": [stream(value)], "c": value})
    want = {"a": value, "b": [value], "c": value}
    assert fp.getvalue() == json.dumps(want, sort_keys=True, indent=2, ensure_ascii=False)
