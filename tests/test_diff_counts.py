"""The one-pass counts of ``recovery diff`` (inserted = live rows − matched pairs, the created-after
flags from the tail above the backup's largest key) agree with a plain keyed comparison on any
pair of key sets: reused keys below the largest one, gaps, deletes at the end, text keys, WITHOUT
ROWID tables and ``INTEGER PRIMARY KEY DESC`` (not the rowid)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery.compare.diff import diff

BEFORE, AFTER, SINCE = "2026-11-20 13:00:00", "2026-11-20 15:00:00", "2026-11-20 14:00:00"
SHAPES = {
    "rowid": "CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT, created_at DATETIME)",
    "desc": "CREATE TABLE t (id INTEGER, body TEXT, created_at DATETIME, PRIMARY KEY (id DESC))",
    "norowid": "CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT, created_at DATETIME) WITHOUT ROWID",
    "text": "CREATE TABLE t (id TEXT PRIMARY KEY, body TEXT, created_at DATETIME)",
}


def _write(path: Path, shape: str, rows: dict[int, tuple[str, bool]]) -> None:
    conn = sqlite3.connect(path)
    conn.execute(SHAPES[shape])
    key = str if shape == "text" else int
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?)",
        [(key(k), body, AFTER if late else BEFORE) for k, (body, late) in rows.items()],
    )
    conn.commit()
    conn.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.sampled_from(sorted(SHAPES)),
    old=st.dictionaries(st.integers(1, 40), st.sampled_from(["a", "b"]), max_size=25),
    new=st.dictionaries(
        st.integers(1, 60), st.tuples(st.sampled_from(["a", "b"]), st.booleans()), max_size=30
    ),
)
def test_counts_match_a_keyed_compare(tmp_path_factory, shape, old, new):
    tmp = tmp_path_factory.mktemp("pair")
    _write(tmp / "old.db", shape, {k: (b, False) for k, b in old.items()})
    _write(tmp / "new.db", shape, new)
    t = diff(tmp / "old.db", tmp / "new.db", since=SINCE).changes.tables["t"]
    inserted = [k for k in new if k not in old]
    assert t.inserted == len(inserted)
    assert t.deleted == len([k for k in old if k not in new])
    assert t.updated == len([k for k in new if k in old and (new[k][0] != old[k] or new[k][1])])
    assert t.after_deploy is not None
    assert t.after_deploy["inserted"] == len([k for k in inserted if new[k][1]])
