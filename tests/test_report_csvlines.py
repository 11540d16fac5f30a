"""lost_values.csv made from lines SQLite joins (``recovery.report.csvlines``) is byte for byte
the csv module's file (``csvout.write_rows`` over ``lost.csv_rows``), whatever the stored values:
text that needs quoting or a formula guard, carriage returns, NULs, every number SQLite stores,
blobs, keys of every shape, and the types a hand-made rows.db could put anywhere."""

from __future__ import annotations

import io
import json
import math
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.bundle.store import FILLED_TABLE, LOST_TABLE
from recovery.report import csvlines, csvout
from recovery.report.lost import csv_rows
from recovery.report.tables import LOST_COLUMNS

_TRICKY = st.sampled_from(
    [
        ",",
        '"',
        "\n",
        "\r",
        "\r\n",
        "\x00",
        "=",
        "+",
        "-",
        "@",
        "\t",
        "'",
        " ",
        "0x",
        "é",
        "1",
        ".",
        "e",
    ]
)
TEXT = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(_TRICKY, st.text(max_size=3)), max_size=6).map("".join),
    st.sampled_from(["-12.5", "+3", "=SUM(A1)", "@x", "-", "1e5", "-.5", "GS-1"]),
)
REAL = st.one_of(
    st.floats(allow_nan=False),
    st.floats(min_value=1e-5, max_value=1e16, allow_nan=False),
    st.floats(min_value=-1e16, max_value=-1e-5, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1e-4, 1e15, 1e14 + 0.5, 0.1 + 0.2, 100.0, 123456789012345.6]),
)
INTEGER = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-3, 3))
VALUE = st.one_of(TEXT, INTEGER, REAL, st.binary(max_size=6), st.none())
KEY = st.one_of(
    INTEGER.map(lambda i: json.dumps([i])),
    TEXT.map(lambda t: json.dumps([t], ensure_ascii=False)),
    st.lists(st.one_of(INTEGER, TEXT, st.none()), max_size=3).map(
        lambda k: json.dumps(k, ensure_ascii=False)
    ),
    st.sampled_from(["[null]", "[1.5]", "[true]", "[01]", "[ 1]", "[]", "not json"]),
    VALUE,
)
NAME = st.one_of(st.sampled_from(["parts", "production_records", "a,b", "=x"]), VALUE)
ROWS = st.lists(st.tuples(NAME, KEY, VALUE, NAME, VALUE, NAME), max_size=25)


def _table(rows: list[tuple[object, ...]], name: str = LOST_TABLE) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(f'CREATE TABLE "{name}" ("table", "key", "label", "column", "value", "reason")')
    conn.executemany(f'INSERT INTO "{name}" VALUES (?, ?, ?, ?, ?, ?)', rows)
    return conn


def _both(conn: sqlite3.Connection, name: str = LOST_TABLE) -> tuple[str, str | None]:
    by_module = io.StringIO(newline="")
    csvout.write_rows(by_module, LOST_COLUMNS, csv_rows(conn, name=name))
    by_lines = io.StringIO(newline="")
    made = csvlines.write_lines(by_lines, conn, LOST_COLUMNS, name)
    return by_module.getvalue(), by_lines.getvalue() if made else None


@settings(max_examples=40, deadline=None)
@given(rows=ROWS)
def test_lines_are_the_csv_modules_bytes(rows: list[tuple[object, ...]]) -> None:
    conn = _table(rows)
    expected, got = _both(conn)
    assert got == expected


@settings(max_examples=25, deadline=None)
@given(values=st.lists(REAL, min_size=1, max_size=40))
def test_reals_written_by_sqlite_are_pythons_repr(values: list[float]) -> None:
    """The lines' real cells: SQLite's text only where it is ``repr`` (the rest go to Python)."""
    rows = [("t", json.dumps([i]), v, "c", v, "r") for i, v in enumerate(values)]
    expected, got = _both(_table(rows))
    assert got == expected
    assert all(str(v) in got for v in values if not math.isinf(v))


def test_a_library_writing_reals_otherwise_leaves_them_to_the_csv_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where this SQLite does not write reals as ``%!.15g``, no real cell is made by SQLite (the
    lines stay the csv module's bytes)."""
    monkeypatch.setattr(csvlines, "_reals_as_fifteen_digits", lambda: False)
    values = [0.1, 1.0 / 3, 123456.7, 2.5e-4, -7.25, 1e300]
    rows = [("t", json.dumps([i]), "x", "c", v, "r") for i, v in enumerate(values)]
    expected, got = _both(_table(rows))
    assert got == expected


def test_plain_rows_are_all_made_by_sqlite_and_the_others_in_their_place() -> None:
    rows = [
        ("parts", f"[{i}]", f"GS-{i}", "note", i * 1.5 if i % 2 else "x", "gone")
        for i in range(12000)
    ]
    rows[7000] = ("parts", "[7000]", "=cmd()", "note", 'say "hi", then\r\nbye', "gone")
    rows[100] = ("parts", "[100]", None, "note", b"\x00\xff", "gone")
    rows[200:203] = [("parts", "[5]", "dup", "note", v, "gone") for v in ("z", "=a", "m")]  # ties
    conn = _table(rows)
    expected, got = _both(conn)
    assert got == expected
    assert "'=cmd()" in got and '"say ""hi"", then\r\nbye"' in got and ",0x00ff," in got


def test_filled_list_and_the_tables_lines_cannot_carry() -> None:
    conn = _table([("t", "[1]", "a", "c", 1, "r")], FILLED_TABLE)
    expected, got = _both(conn, FILLED_TABLE)
    assert got == expected
    assert csvlines.write_lines(io.StringIO(), conn, LOST_COLUMNS) is False  # no lost table
    odd = sqlite3.connect(":memory:")  # a column named rowid: the csv module writes it
    odd.execute(
        f'CREATE TABLE "{LOST_TABLE}" ("table", "key", "label", "column", "value", "reason", rowid)'
    )
    odd.execute(
        f'INSERT INTO "{LOST_TABLE}" VALUES (?, ?, ?, ?, ?, ?, ?)',
        ("t", "[1]", "a", "c", 1, "r", 5),
    )
    out = io.StringIO()
    assert csvlines.write_lines(out, odd, LOST_COLUMNS) is False and out.getvalue() == ""
    no_rowid = sqlite3.connect(":memory:")
    no_rowid.execute(
        f'CREATE TABLE "{LOST_TABLE}" ("table", "key" PRIMARY KEY, "label", "column", "value", "reason")'
        " WITHOUT ROWID"
    )
    no_rowid.execute(
        f'INSERT INTO "{LOST_TABLE}" VALUES (?, ?, ?, ?, ?, ?)', ("t", "[1]", "a", "c", 1, "r")
    )
    assert csvlines.write_lines(out, no_rowid, LOST_COLUMNS) is False and out.getvalue() == ""


def test_rows_for_the_csv_module_are_read_in_bounded_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows SQLite makes no line for (here composite keys) are read back by rowid a few at a
    time, never a whole batch of big values at once, and land in their places."""
    rows = [("t", json.dumps([i, "x"]), "l" * (i % 7), "c", "v" * 40, "r") for i in range(300)]
    rows[150] = ("t", "[150]", "plain", "c", "line", "r")
    conn = _table(rows)
    expected, _ = _both(conn)
    monkeypatch.setattr(csvout, "CHUNK_CHARS", 200)
    groups: list[int] = []
    real = csvlines._by_rowid

    def spy(c: sqlite3.Connection, name: str, rowids: list[int]) -> dict[int, tuple[object, ...]]:
        groups.append(len(rowids))
        return real(c, name, rowids)

    monkeypatch.setattr(csvlines, "_by_rowid", spy)
    got = io.StringIO(newline="")
    assert csvlines.write_lines(got, conn, LOST_COLUMNS)
    assert got.getvalue() == expected
    assert sum(groups) == 299 and max(groups) <= 4
