"""Values from the data, made safe for the reader of each output format — the one place every
writer takes them from.

* CSV (:func:`csv_safe`): a text cell that a spreadsheet would run as a formula (it starts with
  ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) gets a leading ``'``, unless it is a plain
  number (``-12.5`` stays a number). Idempotent: a neutralised cell starts with ``'``.
* Terminal (:func:`plain`, :func:`term_text`, :func:`term_markup`): control characters (C0, DEL,
  C1, bidirectional overrides) are shown as ``\\x1b``-style escapes, so no data value can move the
  cursor, set a title, open an OSC-8 hyperlink or reorder what the operator reads; rich markup in a
  value (``[/bold]``, ``[link=…]``) is text.
* Markdown (:func:`md_text`): inline markup characters are backslash-escaped, so a value shows as
  itself — no link, image, HTML, emphasis, table cell break or new line.
* Everywhere a value is *shown* (terminal, HTML, Markdown, report.json's samples) it is cut to
  :data:`SHOW_LIMIT` characters (:func:`cut`); the CSV files and the bundle keep the exact value.
"""

from __future__ import annotations

import re
from typing import Any

SHOW_LIMIT = 300
"""Shown values are cut to this many characters (the CSVs and the bundle keep them whole)."""
ELLIPSIS = "…"

FORMULA_START = frozenset("=+-@\t\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def csv_safe(v: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula: text starting with ``= + - @``, tab or
    carriage return gets a leading ``'`` unless it is a plain decimal number; other cells unchanged."""
    if type(v) is str and v[:1] in FORMULA_START and not _NUMBER.fullmatch(v):
        return "'" + v
    return v


def csv_safe_row(row: Any, _start: frozenset[str] = FORMULA_START) -> Any:
    """:func:`csv_safe` of every cell; a row with no cell to change is returned as it is (the
    common case, checked without a call per cell: lost_values.csv streams through here)."""
    if type(row) is not tuple:
        row = tuple(row)
    for c in row:
        if type(c) is str and c[:1] in _start:
            return tuple(map(csv_safe, row))
    return row


def cut(v: Any, limit: int = SHOW_LIMIT) -> Any:
    """Text longer than ``limit`` characters cut to ``limit`` and marked with ``…``; else unchanged."""
    if isinstance(v, str) and len(v) > limit:
        return v[:limit] + ELLIPSIS
    return v


def short_repr(v: Any) -> str:
    """``repr`` of a value cut to :data:`SHOW_LIMIT` characters (bytes to as many bytes)."""
    if isinstance(v, (bytes, bytearray)) and len(v) > SHOW_LIMIT:
        return repr(bytes(v[:SHOW_LIMIT])) + "…"
    return cut(repr(cut(v)), SHOW_LIMIT + 2)


# C0 controls, DEL, C1 controls, and the Unicode format characters that reorder or hide text
# (bidi embeddings/overrides/isolates, marks, zero-width joiners, line/paragraph separators).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escaped(m: re.Match[str]) -> str:
    o = ord(m.group())
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def plain(v: Any, limit: int | None = SHOW_LIMIT) -> str:
    """A value as one line of plain terminal text: cut to ``limit`` characters (None: whole), and
    every control character shown as an escape (ESC as ``\\x1b``, a new line as ``\\x0a``)."""
    s = "" if v is None else v if isinstance(v, str) else str(v)
    if limit is not None:
        s = cut(s, limit)
    return _CONTROL.sub(_escaped, s)


# inside a JSON text these can only be in strings (json.dumps escapes C0 itself): \u escapes keep it JSON
_JSON_CONTROL = re.compile("[\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def json_for_terminal(text: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``) with the control and bidi characters
    that json leaves raw written as ``\\u`` escapes — the same JSON, safe to print on a terminal."""
    return _JSON_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def term_text(v: Any, limit: int | None = SHOW_LIMIT) -> Any:
    """A rich ``Text`` of :func:`plain` — never parsed as markup (for table cells and prints)."""
    from rich.text import Text

    return Text(plain(v, limit))


def term_markup(v: Any, limit: int | None = SHOW_LIMIT) -> str:
    """:func:`plain` with rich markup escaped, to embed a value in a markup string."""
    from rich.markup import escape

    return escape(plain(v, limit))


# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones that start inline
# markup: code, emphasis, links and images (``[``), autolinks and HTML (``<``), entities (``&``),
# GFM tables and strikethrough, math (``$``). Block markup (``#``, ``-``, ``1.``) needs a line start,
# which a value never gets (line breaks become spaces; every value follows a marker or a ``|``).
# ``_`` between two letters or digits (``production_records``) cannot start emphasis: left alone.
_MD = re.compile(r"([\\`*\[\]<>|~&$]|(?<![^\W_])_|_(?![^\W_]))")
_BARE_LINK = re.compile(r"(?i)(?<![\w\\])(?:[a-z][a-z0-9+.-]*:(?=//)|www\.)")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def md_text(v: Any, limit: int | None = SHOW_LIMIT) -> str:
    """A value as inline Markdown text that renders as itself: cut, line breaks made spaces, other
    control characters escaped, markup characters backslash-escaped, ``www.`` defused."""
    if v is None:
        return ""
    s = v if isinstance(v, str) else str(v)
    if limit is not None:
        s = cut(s, limit)
    s = _LINE_BREAKS.sub(" ", s)
    s = _CONTROL.sub(_escaped, s)
    s = _MD.sub(r"\\\1", s)
    # GFM links bare ``http://…`` and ``www.…`` text: an escaped ``:`` / ``.`` stops that
    return _BARE_LINK.sub(lambda m: m.group()[:-1] + "\\" + m.group()[-1], s)
