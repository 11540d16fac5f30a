"""report.json's writer (``recovery/report/jsonout.py``) writes exactly ``json.dump(...,
indent=2, ensure_ascii=False, default=...)``'s text, for any document report.json can hold."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.model.spill import SpillList
from recovery.report.jsonout import dump

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and the infinities too: json writes NaN, Infinity, -Infinity
    st.text(max_size=12),  # control characters, quotes, backslashes, non-ASCII, surrogates
    st.binary(max_size=4),  # through default
    st.builds(Path, st.text(alphabet="abc/", max_size=6)),  # through default
)
keys = st.one_of(
    st.text(max_size=6),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(keys, inner, max_size=5),
    ),
    max_leaves=40,
)


def _default(v: object) -> object:
    return "0x" + v.hex() if isinstance(v, bytes) else str(v)


def _both(doc: object) -> tuple[str, str]:
    want, got = io.StringIO(), io.StringIO()
    json.dump(doc, want, indent=2, ensure_ascii=False, default=_default)
    dump(doc, got, _default)
    return want.getvalue(), got.getvalue()


@settings(max_examples=40, deadline=None)
@given(documents)
def test_the_text_is_json_dumps(doc: object) -> None:
    want, got = _both(doc)
    assert got == want


def test_spilled_lists_enums_and_nesting() -> None:
    """A SpillList's spilled items, str/int subclasses and deep nesting come out as json writes them."""
    from recovery.model.kinds import ConflictKind

    spilled = SpillList([{"key": [i], "label": None} for i in range(7)], head=2)
    assert spilled.spilled == 5
    doc = {
        "list": spilled,
        "empty": SpillList([], head=0),
        "kind": ConflictKind.UNIQUE,
        "deep": [[[{"a": [1.5, math.inf, {}, []]}]]],
        1: "int key",
        2.5: "float key",
    }
    want, got = _both(doc)
    assert got == want


def test_a_circular_document_is_refused() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        dump({"x": loop}, io.StringIO(), _default)


@settings(max_examples=40, deadline=None)
@given(documents, st.integers(min_value=0, max_value=3))
def test_texts_made_before_give_the_same_text(doc: object, shift: int) -> None:
    """Lists written ahead of the document (``list_texts``: a rollback's report.json while its
    verification finishes) come out as json writes them, met at the depth they were made for or
    at another one (then written afresh); ``shift`` nests the document that deep."""
    from recovery.report import jsonout

    saved = jsonout.REPEAT_MIN
    jsonout.REPEAT_MIN = 1  # every non-empty list is made ahead
    try:
        shared = [doc, {"x": doc}]
        outer: object = {"a": shared, "b": [shared, doc]}
        for _ in range(shift):
            outer = {"n": outer}
        known = jsonout.list_texts([(outer, 0)], _default)
        want, got = io.StringIO(), io.StringIO()
        json.dump(outer, want, indent=2, ensure_ascii=False, default=_default)
        dump(outer, got, _default, known=known)
    finally:
        jsonout.REPEAT_MIN = saved
    assert got.getvalue() == want.getvalue()
    assert known  # "shared" at least


def test_texts_made_before_stop_at_their_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """``list_texts`` keeps at most ``TEXTS_MAX`` characters (here: the first list's); the
    lists past it are written by the dump as it meets them, the same text."""
    from recovery.report import jsonout

    monkeypatch.setattr(jsonout, "REPEAT_MIN", 2)
    monkeypatch.setattr(jsonout, "TEXTS_MAX", 1)
    doc = {"a": [{"k": i} for i in range(5)], "b": {"c": list(range(7))}, "d": ["x", "y"]}
    known = jsonout.list_texts([(doc, 0)], _default)
    assert len(known) == 1
    want, got = io.StringIO(), io.StringIO()
    json.dump(doc, want, indent=2, ensure_ascii=False, default=_default)
    dump(doc, got, _default, known=known)
    assert got.getvalue() == want.getvalue()
