"""The run folder's CSV files, written with the csv module — byte for byte what
``report.tables.frame(rows, columns).to_csv(index=False)`` (pandas) writes, without building a
DataFrame: pandas hands object cells to the same csv writer (``QUOTE_MINIMAL``, ``"`` doubled,
``os.linesep``), after making NULL/NaN an empty cell; :func:`recovery.lost.csv_cell` does the rest
of ``lost.cell`` (bytes as 0x-hex, lists and dicts as JSON, one-column keys unwrapped).
``tests/test_report.py`` compares the two on awkward values. Every cell then goes through
:func:`recovery.escape.csv_safe` (a leading ``'`` for text a spreadsheet would run as a formula).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import IO, Any

from recovery.escape import csv_safe_row
from recovery.lost import csv_cell
from recovery.render import has_bare_cr


CHUNK = 10_000


def writer(fh: IO[str], quoting: int = csv.QUOTE_MINIMAL) -> Any:
    return csv.writer(fh, lineterminator=os.linesep, quoting=quoting, quotechar='"', doublequote=True)


def write_rows(fh: IO[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """``columns`` then ``rows`` — tuples whose cells are already CSV cells (None = empty), each
    through :func:`recovery.escape.csv_safe` here (no spreadsheet formulas from the data).

    Python 3.11's ``QUOTE_MINIMAL`` leaves a bare carriage return unquoted when the line ends in
    ``\n`` (pandas too), and a CSV reader then splits the row there: a row with ``\r`` in a cell
    is written with every cell quoted instead (the only difference from pandas' bytes)."""
    w = writer(fh)
    w.writerow(csv_safe_row(columns))
    quoted = None
    it = map(csv_safe_row, rows)
    while chunk := list(islice(it, CHUNK)):
        if not any(map(has_bare_cr, chunk)):
            w.writerows(chunk)
            continue
        quoted = quoted or writer(fh, csv.QUOTE_ALL)
        for row in chunk:
            (quoted if has_bare_cr(row) else w).writerow(row)


def write_dicts(fh: IO[str], columns: Sequence[str], items: Iterable[dict[str, Any]]) -> None:
    """Dicts as rows of exactly ``columns`` (missing keys empty), cells made printable."""
    write_rows(fh, columns, (tuple(csv_cell(d.get(c)) for c in columns) for d in items))