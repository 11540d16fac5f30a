"""``report.json``'s text, written faster than ``json.dump(..., indent=2)`` and byte for byte the same.

With ``indent`` set, the standard library encodes in pure Python: a generator per container and
one ``write`` per token (about a million of them for the 1M-part world's 8 MB report). :func:`dump`
walks the document once with the same rules and the same C helpers (``encode_basestring``,
``int.__repr__``, ``float.__repr__``), collects the pieces in a list and writes them in batches: the
same text, in bounded memory, in about half the time. ``tests/test_report_jsonout.py`` holds it
to ``json.dump`` on random documents.
"""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import INFINITY, encode_basestring
from typing import Any, Protocol

_FLUSH = 16384
"""Pieces collected before one ``write`` (a few hundred kB: bounded memory at any size)."""


def _float(o: float) -> str:
    if o != o:
        return "NaN"
    if o == INFINITY:
        return "Infinity"
    if o == -INFINITY:
        return "-Infinity"
    return float.__repr__(o)


def _key(k: Any) -> str:
    """A dict key as ``json`` turns it into text (``skipkeys`` off: other types raise)."""
    if isinstance(k, str):
        return k
    if isinstance(k, float):
        return _float(k)
    if k is True:
        return "true"
    if k is False:
        return "false"
    if k is None:
        return "null"
    if isinstance(k, int):
        return int.__repr__(k)
    raise TypeError(f"keys must be str, int, float, bool or None, not {k.__class__.__name__}")


REPEAT_MIN = 1000
"""A list this long that the document holds twice (report.json: the outcome's deletes for
review, and the report section's, are one list) is encoded once: its text is kept and written
again where it recurs at the same depth …"""
REPEAT_MAX = 100_000
"""… unless it is longer than this (its text is then not kept: memory stays bounded)."""


def _repeated(obj: Any) -> set[int]:
    """``id`` of each list of :data:`REPEAT_MIN` to :data:`REPEAT_MAX` items reached more than
    once through the document's dicts and shorter lists (long lists are not walked into)."""
    seen: set[int] = set()
    twice: set[int] = set()
    stack = [obj]
    walked: set[int] = set()
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if id(o) not in walked:
                walked.add(id(o))
                stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            if len(o) >= REPEAT_MIN:
                if len(o) <= REPEAT_MAX and isinstance(o, list):
                    (twice if id(o) in seen else seen).add(id(o))
            elif id(o) not in walked:
                walked.add(id(o))
                stack.extend(o)
    return twice


class Writer(Protocol):
    """Where :func:`dump` writes: a text file, or anything with its ``write``."""

    def write(self, text: str, /) -> Any: ...


Known = dict[int, tuple[Any, int, list[str]]]
"""Texts of lists written before the document (:func:`list_texts`): ``id`` -> (the list, the
depth it is met at, its text there in the pieces :func:`dump` wrote it in — kept apart, a
piece with no character past Latin-1 stays one byte a character)."""


TEXTS_MAX = 8 << 20
"""Characters of list texts :func:`list_texts` keeps in all (memory stays bounded; a list past
it is written by :func:`dump` as it meets it)."""


def list_texts(
    roots: list[tuple[Any, int]], default: Callable[[Any], Any], indent: int = 2
) -> Known:
    """The text :func:`dump` writes for each list of :data:`REPEAT_MIN` to :data:`REPEAT_MAX`
    items found through the dicts (and shorter lists) of each ``(root, depth)``, where the root
    is met at that depth of the document (up to :data:`TEXTS_MAX` characters in all): made
    before the document is complete (a rollback makes them while its verification finishes),
    handed to :func:`dump` as ``known``. The lists must not change until then."""
    found: Known = {}
    kept = 0
    stack = list(roots)
    walked: set[int] = set()
    while stack:
        o, level = stack.pop()
        if isinstance(o, dict):
            if id(o) not in walked:
                walked.add(id(o))
                stack.extend((v, level + 1) for v in o.values())
        elif isinstance(o, list) and REPEAT_MIN <= len(o) <= REPEAT_MAX:
            if id(o) not in found and kept < TEXTS_MAX:
                parts: list[str] = []
                dump(o, _Collect(parts), default, indent, level=level)
                found[id(o)] = (o, level, parts)
                kept += sum(map(len, parts))
        elif isinstance(o, (list, tuple)) and len(o) < REPEAT_MIN and id(o) not in walked:
            walked.add(id(o))
            stack.extend((v, level + 1) for v in o)
    return found


class _Collect:
    """A writer that keeps what is written as a list of pieces."""

    def __init__(self, parts: list[str]) -> None:
        self.write = parts.append


def dump(
    obj: Any,
    fh: Writer,
    default: Callable[[Any], Any],
    indent: int = 2,
    known: Known | None = None,
    level: int = 0,
) -> None:
    """Write ``json.dump(obj, fh, indent=indent, ensure_ascii=False, default=default)``'s exact
    text to ``fh`` (no trailing newline, like it). Lists are read by iterating them (a
    :class:`recovery.model.spill.SpillList` gives every item) and tested by truth, as ``json``
    does; a circular reference raises ``ValueError``. ``known``: texts of lists made before
    (:func:`list_texts`, same ``default`` and ``indent``), written where the same list is met
    at the same depth. ``level``: the depth ``obj`` is met at in the document it is part of
    (0: it is the document)."""
    out: list[str] = []
    put = out.append
    seen: set[int] = set()
    pad = " " * indent
    repeated = _repeated(obj)
    texts: dict[tuple[int, int], str] = {}
    keeping = False
    kept: list[str] = []  # a repeated list's text so far, in joined batches

    def flush() -> None:
        (kept.append if keeping else fh.write)("".join(out))
        out.clear()

    def enter(o: Any) -> None:
        if id(o) in seen:
            raise ValueError("Circular reference detected")
        seen.add(id(o))

    def value(o: Any, level: int) -> None:
        if isinstance(o, str):
            put(encode_basestring(o))
        elif o is None:
            put("null")
        elif o is True:
            put("true")
        elif o is False:
            put("false")
        elif isinstance(o, int):
            put(int.__repr__(o))
        elif isinstance(o, float):
            put(_float(o))
        elif isinstance(o, (list, tuple)):
            array(o, level)
        elif isinstance(o, dict):
            mapping(o, level)
        else:
            enter(o)
            value(default(o), level)
            seen.discard(id(o))

    def array(items: Any, level: int) -> None:
        nonlocal keeping
        if not items:
            put("[]")
            return
        made = known.get(id(items)) if known else None
        if made is not None and made[0] is items and made[1] == level:
            enter(items)  # a list inside itself is still refused
            seen.discard(id(items))
            flush()
            for piece in made[2]:
                (kept.append if keeping else fh.write)(piece)
            return
        if id(items) in repeated and not keeping:
            text = texts.get((id(items), level))
            if text is None:
                flush()
                keeping = True
                try:
                    array_items(items, level)
                    flush()  # into ``kept``
                finally:
                    keeping = False
                text = texts[(id(items), level)] = "".join(kept)
                kept.clear()
            else:
                enter(items)  # a list inside itself is still refused
                seen.discard(id(items))
            put(text)
            flush()
            return
        array_items(items, level)

    def array_items(items: Any, level: int) -> None:
        enter(items)
        inner = "\n" + pad * (level + 1)
        put("[" + inner)
        first = True
        for item in items:
            if not first:
                put("," + inner)
            first = False
            value(item, level + 1)
            if len(out) > _FLUSH:
                flush()
        put("\n" + pad * level + "]")
        seen.discard(id(items))

    def mapping(d: dict[Any, Any], level: int) -> None:
        if not d:
            put("{}")
            return
        enter(d)
        inner = "\n" + pad * (level + 1)
        put("{" + inner)
        first = True
        for k, v in d.items():
            if not first:
                put("," + inner)
            first = False
            put(encode_basestring(_key(k)) + ": ")
            value(v, level + 1)
            if len(out) > _FLUSH:
                flush()
        put("\n" + pad * level + "}")
        seen.discard(id(d))

    value(obj, level)
    flush()
