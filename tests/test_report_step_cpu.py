"""The report step's shortcuts give what the long way gives: a list report.json holds twice is
written twice with the same text (``jsonout.REPEAT_MIN``), and the deletes' columns and key
check read a spilled outcome list's stored JSON (``outcome.item_keys`` / ``keys_are_lists``)
instead of decoding it, falling back to decoding where the stored text is tagged."""

from __future__ import annotations

import io
import json

import pytest

from recovery.model import outcome as outcome_mod
from recovery.model.outcome import item_keys, keys_are_lists
from recovery.model.spill import SpillList
from recovery.report import jsonout
from recovery.report.tables import deletes_columns


def _default(v: object) -> object:
    return "0x" + v.hex() if isinstance(v, bytes) else str(v)


def _spilled(items: list[dict[object, object]]) -> SpillList[dict[object, object]]:
    return (
        outcome_mod._spill_list("deletes_for_review", [])
        if not items
        else SpillList(
            items, encode=outcome_mod._encode_item, decode=outcome_mod._decode_item, head=2
        )
    )


def test_a_list_held_twice_is_the_same_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonout, "REPEAT_MIN", 3)
    monkeypatch.setattr(jsonout, "_FLUSH", 4)  # batches written (and kept) inside the lists
    shared = [{"table": "t", "key": [i], "v": b"\x01" if i % 2 else "é\n"} for i in range(5)]
    spilled = SpillList([{**d, "v": str(d["v"])} for d in shared], head=1)
    doc = {
        "outcome": {"deletes": shared, "spilled": spilled, "deep": {"again": [shared]}},
        "report": {"deletes": shared, "spilled": spilled, "n": [shared, shared]},
    }
    want, got = io.StringIO(), io.StringIO()
    json.dump(doc, want, indent=2, ensure_ascii=False, default=_default)
    jsonout.dump(doc, got, _default)
    assert got.getvalue() == want.getvalue()
    assert jsonout._repeated(doc) == {id(shared), id(spilled)}
    circular: list[object] = [1, 2, 3]
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular"):
        jsonout.dump({"a": circular, "b": circular}, io.StringIO(), _default)


@pytest.mark.parametrize(
    "items",
    [
        [
            {"table": "t", "key": [1]},
            {"table": "t", "key": [2], "x": 1},
            {"table": "t", "key": [3], "y": None},
        ],
        [
            {"table": "t", "key": [1]},
            {"table": "t", "key": [2]},
            {"table": "t", "key": (3,), "$z": 1},
        ],
        [{"table": "t", "key": [1]}, {"table": "t", "key": [2]}, {"table": "t", 5: "int key"}],
        [{"table": "t", "key": [1]}, {"table": "t", "key": [2]}, {"table": "t", "key": (3, 4)}],
        [{"table": "t", "key": [1]}, {"table": "t", "key": [2]}, {"table": "t"}],
        [{"table": "t", "key": [1]}, {"table": "t", "key": (2,)}, {"table": "t", "key": [3]}],
    ],
)
def test_keys_of_spilled_items_are_the_decoded_ones(items: list[dict[object, object]]) -> None:
    spilled = _spilled(items)
    assert spilled.spilled == 1
    decoded = list(spilled)
    assert item_keys(spilled) == {k for d in decoded for k in d}
    assert keys_are_lists(spilled) == all(isinstance(d.get("key"), list) for d in decoded)
    if all(isinstance(k, str) for d in decoded for k in d):
        assert deletes_columns(spilled) == ["table", "key", "label"] + sorted(
            {k for d in decoded for k in d} - {"table", "key", "label"}
        )
