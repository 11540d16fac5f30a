"""A rollback keeps the re-import's ``Outcome`` in memory (``as_read_back``) instead of reading back
the ``outcome.json`` it has just written; a resumed run reads the file. Both must give every
report the same outcome: the same values, the same types, the same dict key order. And the saved
text must not depend on whether a long list's items were spilled (their stored text is written as
is, not decoded and encoded again)."""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.model.kinds import ConflictKind, Resolution
from recovery.model.outcome import Conflict, Outcome, Remap, TableOutcome, as_read_back
from recovery.model.values import LostValues


class _Colour(str, Enum):
    RED = "red"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.binary(max_size=4),
    st.just(_Colour.RED),
    st.just(bytearray(b"\x00\xff")),
)
keys = st.text(alphabet="abz$_", min_size=1, max_size=4)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
        st.dictionaries(st.integers(0, 9), inner, max_size=3),
    ),
    max_leaves=8,
)
rows = st.dictionaries(keys, values, max_size=5)


def _shape(v: Any) -> Any:
    """``v`` with every type and every dict's key order made visible (NaN equal to itself)."""
    if isinstance(v, float) and math.isnan(v):
        return ("float", "nan")
    if isinstance(v, dict):
        return (type(v).__name__, [(_shape(k), _shape(x)) for k, x in v.items()])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [_shape(x) for x in v])
    return (type(v).__name__, v)


def _outcome_shape(o: Outcome) -> Any:
    return {
        "scalars": _shape(
            [o.bundle_id, o.target, o.policy, o.dry_run, o.already_applied, o.aborted]
        ),
        "mode": _shape(o.conflicts_mode),
        "tables": [(_shape(n), _shape(vars(t))) for n, t in o.tables.items()],
        "conflicts": [
            _shape({f: getattr(c, f) for f in Conflict.__dataclass_fields__}) for c in o.conflicts
        ],
        "remaps": [_shape((r.table, r.old_key, r.new_key)) for r in o.remaps],
        "lost": (_shape(list(o.lost)), o.lost_total, _shape(o.lost.counts), o.lost.source),
        "deletes": [_shape(d) for d in o.deletes_for_review],
        "skipped": [_shape(d) for d in o.skipped_rows],
        "files": _shape(o.files),
        "verification": _shape(o.verification),
        "triggers": _shape(o.triggers_suspended),
        "sequences": _shape(o.sequences),
    }


@st.composite
def outcomes(draw: Any) -> Outcome:
    o = Outcome(
        "b-1",
        "/srv/gestima.db",
        draw(st.sampled_from(["remap", "skip"])),
        False,
        conflicts_mode=draw(st.sampled_from(["cell", "row"])),
    )
    for name in draw(st.lists(st.sampled_from(["quotes", "parts", "b"]), unique=True)):
        o.tables[name] = TableOutcome(name, inserted=draw(st.integers(0, 9)))
    for _ in range(draw(st.integers(0, 5))):
        o.conflicts.append(
            Conflict(
                draw(st.sampled_from(list(ConflictKind))),
                "quotes",
                draw(st.lists(values, min_size=1, max_size=2).map(tuple)),
                draw(st.sampled_from(list(Resolution))),
                column=draw(st.none() | st.text(max_size=3)),
                bundle_value=draw(values),
                target_value=draw(values),
                label=draw(st.none() | st.text(max_size=3)),
            )
        )
    o.remaps = [Remap("parts", draw(values), draw(values)) for _ in range(draw(st.integers(0, 2)))]
    sample = draw(st.lists(rows, max_size=4))
    o.lost = LostValues(sample, len(sample) + 3, {"parts": {"z": 1, "a": 2}, "b": {}}, "rows.db")
    o.deletes_for_review.extend(draw(st.lists(rows, max_size=5)))
    o.skipped_rows.extend(draw(st.lists(rows, max_size=4)))
    o.files = draw(st.none() | rows)
    o.verification = draw(rows)
    o.triggers_suspended = [_Colour.RED, "t"]
    o.sequences = draw(st.lists(rows, max_size=2))
    return o


@settings(max_examples=25, deadline=None)
@given(data=st.data(), head=st.integers(0, 4))
def test_the_outcome_kept_in_memory_is_the_one_read_back(data: Any, head: int) -> None:
    import os

    old = os.environ.get("RECOVERY_SPILL_AFTER")
    os.environ["RECOVERY_SPILL_AFTER"] = str(head)  # some items spilled, some in memory
    try:
        o = data.draw(outcomes())
        text = o.to_json()
        back = Outcome.from_json(text)
        kept = as_read_back(o)
        assert kept is o
        assert _outcome_shape(kept) == _outcome_shape(back)
        assert kept.to_json() == text == back.to_json()
    finally:
        if old is None:
            os.environ.pop("RECOVERY_SPILL_AFTER", None)
        else:
            os.environ["RECOVERY_SPILL_AFTER"] = old


@settings(max_examples=20, deadline=None)
@given(data=st.data(), head=st.integers(0, 4))
def test_spilled_items_are_written_as_the_whole_document_would_be(data: Any, head: int) -> None:
    """outcome.json written item by item (spilled items as stored) is ``json.dumps`` of the
    whole document with sorted keys, byte for byte."""
    import os

    from recovery.model import outcome as m

    old = os.environ.get("RECOVERY_SPILL_AFTER")
    os.environ["RECOVERY_SPILL_AFTER"] = str(head)
    try:
        o = data.draw(outcomes())
        whole = m._outcome_to_data(o)
        for name in ("conflicts", "deletes_for_review", "skipped_rows"):
            whole[name] = list(whole[name])
        assert o.to_json() == json.dumps(whole, ensure_ascii=False, allow_nan=False, sort_keys=True)
    finally:
        if old is None:
            os.environ.pop("RECOVERY_SPILL_AFTER", None)
        else:
            os.environ["RECOVERY_SPILL_AFTER"] = old
