"""The run folder's CSV files, written with the csv module — byte for byte what
``report.tables.frame(rows, columns).to_csv(index=False)`` (pandas) writes, without building a
DataFrame: pandas hands object cells to the same csv writer (``QUOTE_MINIMAL``, ``"`` doubled,
``os.linesep``), after making NULL/NaN an empty cell; :func:`recovery.lost.csv_cell` does the rest
of ``tables.cell`` (bytes as 0x-hex, lists and dicts as JSON, one-column keys unwrapped).
``tests/test_report.py`` compares the two on awkward values.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from typing import IO, Any

from recovery.lost import csv_cell


def writer(fh: IO[str]) -> Any:
    return csv.writer(fh, lineterminator=os.linesep, quoting=csv.QUOTE_MINIMAL, quotechar='"', doublequote=True)


def write_rows(fh: IO[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """``columns`` then ``rows`` — tuples whose cells are already CSV cells (None = empty)."""
    w = writer(fh)
    w.writerow(columns)
    w.writerows(rows)


def write_dicts(fh: IO[str], columns: Sequence[str], items: Iterable[dict[str, Any]]) -> None:
    """Dicts as rows of exactly ``columns`` (missing keys empty), cells made printable."""
    write_rows(fh, columns, (tuple(csv_cell(d.get(c)) for c in columns) for d in items))