"""The run folder's CSV files, written with the csv module — byte for byte what
``report.tables.frame(rows, columns).to_csv(index=False)`` (pandas) writes, without building a
DataFrame: pandas hands object cells to the same csv writer (``QUOTE_MINIMAL``, ``"`` doubled,
``os.linesep``), after making NULL/NaN an empty cell; :func:`recovery.report.lost.csv_cell` does the rest
of ``lost.cell`` (bytes as 0x-hex, lists and dicts as JSON, one-column keys unwrapped).
``tests/test_report.py`` compares the two on awkward values. Every cell then goes through
:func:`recovery.escape.csv_safe` (a leading ``'`` for text a spreadsheet would run as a formula).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from typing import IO, Any, Literal

from recovery.escape import csv_safe_row
from recovery.report.lost import csv_cell


CHUNK = 10_000
"""Rows handed to the csv module at once …"""
CHUNK_CHARS = 8 << 20
"""… or fewer, when their text adds up to this many characters."""
BIG_CELL = 1 << 20
"""A row whose text is longer than this (characters) is written cell by cell, a long cell in pieces
of this size: the csv module would hold the cell as 4-byte characters and then the whole line."""


def writer(fh: IO[str], quoting: Literal[0, 1, 2, 3] = csv.QUOTE_MINIMAL) -> Any:
    return csv.writer(
        fh, lineterminator=os.linesep, quoting=quoting, quotechar='"', doublequote=True
    )


def write_rows(fh: IO[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """``columns`` then ``rows`` — tuples whose cells are already CSV cells (None = empty), each
    through :func:`recovery.escape.csv_safe` here (no spreadsheet formulas from the data).

    Python 3.11's ``QUOTE_MINIMAL`` leaves a bare carriage return unquoted when the line ends in
    ``\n`` (pandas too), and a CSV reader then splits the row there: a row with ``\r`` in a cell
    is written with every cell quoted instead (the only difference from pandas' bytes).

    Memory is bounded by the largest value, not the file: rows are written in chunks of at most
    :data:`CHUNK` rows and :data:`CHUNK_CHARS` characters, and a row longer than :data:`BIG_CELL`
    alone, its long cells in pieces (the same bytes the csv module writes)."""
    write_header(fh, columns)
    write_body(fh, rows)


def write_header(fh: IO[str], columns: Sequence[str]) -> None:
    """The header line of :func:`write_rows`."""
    writer(fh).writerow(csv_safe_row(columns))


def write_body(fh: IO[str], rows: Iterable[Sequence[Any]]) -> None:
    """The rows of :func:`write_rows`, without its header line."""
    w = writer(fh)
    quoted = None
    chunk: list[Any] = []
    chars = 0
    for row in map(csv_safe_row, rows):
        n, cr = 0, False
        for c in row:
            if type(c) is str:
                n += len(c)
                if "\r" in c:
                    cr = True
        if cr or n > BIG_CELL:
            w.writerows(chunk)
            chunk.clear()
            chars = 0
            quoted = quoted or writer(fh, csv.QUOTE_ALL)
            if n > BIG_CELL:
                _write_long_row(fh, row, cr)
            else:
                quoted.writerow(row)
            continue
        chunk.append(row)
        chars += n
        if len(chunk) >= CHUNK or chars > CHUNK_CHARS:
            w.writerows(chunk)
            chunk.clear()
            chars = 0
    w.writerows(chunk)


_SPECIAL = (",", '"', "\n", "\r")


def _cell_text(v: Any, quote_all: bool) -> str:
    """One cell exactly as the csv module writes it inside a row (``QUOTE_MINIMAL`` or ``QUOTE_ALL``)."""
    buf = io.StringIO(newline="")
    writer(buf, csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerow(
        [v, 0]
    )  # the line end decides quoting too
    return buf.getvalue()[: -len((',"0"' if quote_all else ",0") + os.linesep)]


def _write_long_row(fh: IO[str], row: Sequence[Any], quote_all: bool) -> None:
    """A row with a long text cell, written without a copy of the whole line: long cells go out in
    :data:`BIG_CELL` pieces (quoted when the csv module would quote them, ``"`` doubled)."""
    for i, c in enumerate(row):
        if i:
            fh.write(",")
        if type(c) is not str or len(c) <= BIG_CELL:
            fh.write(_cell_text(c, quote_all))
            continue
        quote = quote_all or any(ch in c for ch in _SPECIAL)
        if quote:
            fh.write('"')
        for at in range(0, len(c), BIG_CELL):
            piece = c[at : at + BIG_CELL]
            fh.write(piece.replace('"', '""') if quote else piece)
        if quote:
            fh.write('"')
    fh.write(os.linesep)


def write_dicts(fh: IO[str], columns: Sequence[str], items: Iterable[dict[str, Any]]) -> None:
    """Dicts as rows of exactly ``columns`` (missing keys empty), cells made printable."""
    write_rows(fh, columns, (tuple(csv_cell(d.get(c)) for c in columns) for d in items))
