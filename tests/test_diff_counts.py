"""The one-pass counts of ``recovery diff`` (inserted = live rows − matched pairs, the created-after
flags from the tail above the backup's largest key) agree with a plain keyed comparison on any
pair of key sets: reused keys below the largest one, gaps, deletes at the end, text keys, WITHOUT
ROWID tables and ``INTEGER PRIMARY KEY DESC`` (not the rowid)."""

from __future__ import annotations

import sqlite3
from itertools import pairwise
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


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.sampled_from(sorted(SHAPES)),
    keys=st.lists(
        st.one_of(st.integers(1, 60), st.integers(-(2**63), 2**63 - 1)),
        min_size=0,
        max_size=30,
        unique=True,
    ),
    data=st.data(),
)
def test_key_range_pieces_add_up_to_the_whole_table(tmp_path_factory, shape, keys, data):
    """The rowid-keyed join cut into key ranges (forced down to one-key pieces here) counts what
    the whole-table statement counts: keys at both ends of the rowid range, gaps, negative keys."""
    from unittest import mock

    import recovery.compare.changes as changes

    old = {k: data.draw(st.sampled_from(["a", "b"])) for k in keys if data.draw(st.booleans())}
    new = {
        k: (data.draw(st.sampled_from(["a", "b"])), data.draw(st.booleans()))
        for k in keys
        if data.draw(st.booleans())
    }
    tmp = tmp_path_factory.mktemp("pair")
    _write(tmp / "old.db", shape, {k: (b, False) for k, b in old.items()})
    _write(tmp / "new.db", shape, new)
    whole = diff(tmp / "old.db", tmp / "new.db", since=SINCE).to_dict()
    cuts: list[dict[str, list[tuple[int, int]]]] = []
    real = changes.key_ranges

    def spy(spans):  # type: ignore[no-untyped-def]
        cuts.append(out := real(spans))
        return out

    with (
        mock.patch.object(changes, "SPLIT_MIN_ROWS", 1),
        mock.patch.object(changes, "SPLIT_PIECES", 7),
        mock.patch.object(changes, "key_ranges", spy),
    ):
        pieces = diff(tmp / "old.db", tmp / "new.db", since=SINCE).to_dict()
    assert pieces == whole
    if shape == "rowid" and len(old) > 1 and len(set(old)) > 1:
        assert cuts and "t" in cuts[0], "the table was not cut into key ranges"
        ranges = cuts[0]["t"]
        assert ranges[0][0] == changes.ROWID_MIN and ranges[-1][1] == changes.ROWID_MAX
        assert all(a[1] + 1 == b[0] for a, b in pairwise(ranges))


def test_key_ranges_are_few_and_cover_every_key():
    """However many rows, the tables together are cut into about SPLIT_PIECES ranges (no work
    proportional to rows), each table's ranges contiguous from the smallest to the largest rowid."""
    from recovery.compare.changes import ROWID_MAX, ROWID_MIN, SPLIT_PIECES, key_ranges

    for scale in (10**5, 10**6, 10**7, 10**9):
        spans = {"parts": (1, scale), "quotes": (1, scale // 2), "tiny": (1, 10)}
        ranges = key_ranges(spans)
        assert "tiny" not in ranges
        assert len(ranges["parts"]) + len(ranges["quotes"]) <= SPLIT_PIECES + 2
        for rs in ranges.values():
            assert rs[0][0] == ROWID_MIN and rs[-1][1] == ROWID_MAX
            assert all(a[1] + 1 == b[0] and a[0] <= a[1] for a, b in pairwise(rs))
