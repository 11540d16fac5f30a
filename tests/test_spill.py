"""The lists that grow with a run's rows are held in bounded memory without changing a byte of the
run's files: ``SpillList`` behaves as a list at any in-memory size, the outcome's JSON is the same
text whether its lists are spilled or not, and the re-import script renders a spilled step as it
would have rendered it at the end. (The whole run under a tiny threshold: the ``conflict-spilled``
case of ``tests/test_rollback_outputs.py``.)"""

from __future__ import annotations

import io
import json
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from recovery.model.kinds import ConflictKind, Resolution
from recovery.model.outcome import Conflict, Outcome, encode_value
from recovery.model.spill import SpillList
from recovery.reimport.script import Script, SpilledStep, Step

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=4),
)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), values),
        st.tuples(st.just("extend"), st.lists(values, max_size=5)),
        st.tuples(st.just("set"), st.integers(-20, 20), values),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(head=st.integers(0, 6), steps=ops)
def test_a_spill_list_is_the_list_it_was_given(head: int, steps: list[tuple]) -> None:
    """Appends, extends and item assignments, then every read a list has, equal a plain list's."""
    s: SpillList = SpillList(
        encode=lambda v: json.dumps(encode_value(v)), decode=_decode, head=head
    )
    ref: list = []
    for op in steps:
        if op[0] == "append":
            s.append(op[1])
            ref.append(op[1])
        elif op[0] == "extend":
            s += op[1]
            ref += op[1]
        elif ref and -len(ref) <= op[1] < len(ref):
            s[op[1]] = op[2]
            ref[op[1]] = op[2]
    assert len(s) == len(ref) and bool(s) == bool(ref) and list(s) == ref and s == ref
    assert s.spilled == max(0, len(ref) - head)
    assert [s[i] for i in range(-len(ref), len(ref))] == ref + ref
    for a in range(-len(ref) - 1, len(ref) + 2, 2):
        assert s[a:] == ref[a:] and s[:a] == ref[:a] and s[a : a + 3] == ref[a : a + 3]
    assert list(reversed(s)) == ref[::-1] and s[::2] == ref[::2]
    out = io.StringIO()
    json.dump({"s": s}, out, indent=1, default=repr)  # the report's writer iterates the list
    assert out.getvalue() == json.dumps({"s": ref}, indent=1, default=repr)


def _decode(text: str) -> object:
    from recovery.model.outcome import decode_value

    return decode_value(json.loads(text))


def _outcome() -> Outcome:
    o = Outcome("b1", "/db", "remap", False)
    for i in range(7):
        o.deletes_for_review.append(
            {
                "table": "parts",
                "key": [i],
                "label": f"P-{i} ✓",
                "unchanged_since_backup": i % 2 == 0,
            }
        )
        o.skipped_rows.append({"table": "quote_items", "key": [i, b"\x01"], "reason": "unit"})
        o.conflicts.append(
            Conflict(
                ConflictKind.UNIQUE,
                "quotes",
                (i,),
                Resolution.SKIPPED,
                column="number",
                bundle_value=float(i) / 3,
                target_value=b"\xff",
                label="Q",
            )
        )
    return o


def _reference_json(o: Outcome) -> str:
    """outcome.json as the format was written with plain lists (one ``json.dumps``)."""
    from recovery.model import outcome as m

    data = m._outcome_to_data(o)
    for name in ("conflicts", "deletes_for_review", "skipped_rows"):
        data[name] = list(data[name])
    return json.dumps(data, ensure_ascii=False, allow_nan=False, sort_keys=True)


def test_outcome_json_is_the_same_text_spilled_or_not(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RECOVERY_SPILL_AFTER", "100")
    whole = _outcome()
    monkeypatch.setenv("RECOVERY_SPILL_AFTER", "2")
    spilled = _outcome()
    assert spilled.deletes_for_review.spilled == 5 and spilled.conflicts.spilled == 5  # type: ignore[attr-defined]
    text = whole.to_json()
    assert text == _reference_json(whole) == spilled.to_json()
    fh = io.StringIO()
    spilled.write_json(fh)
    assert fh.getvalue() == text
    back = Outcome.from_json(text)  # read back under the small threshold: spilled again
    assert back == whole and back.to_json() == text
    assert back.deletes_for_review.spilled == 5  # type: ignore[attr-defined]
    assert back.not_carried() == whole.not_carried() and back.verdict() == whole.verdict()
    back.skipped_rows = [{"table": "t", "key": [1]}] * 4  # an assigned list is held spilled too
    assert isinstance(back.skipped_rows, SpillList) and back.skipped_rows.spilled == 2


def test_a_spilled_script_step_renders_as_it_would_have(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Heavy steps go to the temporary file when they run; a ROLLBACK TO drops them from the
    script (and the file); the rendered script is the same as with every step in memory."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (a, b)")
    ins = exp.insert(exp.values([(exp.Placeholder(), exp.Placeholder())]), "t")
    kept = Script(conn)
    kept.execute_rows(ins, [(i, "x" * i) for i in range(3)])
    monkeypatch.setenv("RECOVERY_SPILL_AFTER", "1")
    spilled = Script(conn)
    spilled.execute_rows(ins, [(i, "x" * i) for i in range(3)])
    spilled.savepoint("sp")
    spilled.execute_rows(ins, [(9, "undone"), (8, "too")])
    size = spilled.spill_file.seek(0, 2)  # type: ignore[union-attr]
    spilled.rollback("sp")
    assert spilled.spill_file.seek(0, 2) < size  # type: ignore[union-attr]
    assert isinstance(spilled.steps[0], SpilledStep) and not isinstance(kept.steps[0], SpilledStep)
    assert list(spilled.lines([], [])) == list(kept.lines([], []))
    assert isinstance(kept.steps[0], Step) and "'xx'" in spilled.steps[0].render()
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 6


def test_apply_deletes_selects_the_reviewed_rows_spilled_or_not(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``recovery apply-deletes --only``: the reviewed CSV's rows, in its order, once each, looked
    up among the candidates in a temporary file; a row that is not a candidate is refused."""
    import pytest

    from recovery.errors import RecoveryError
    from recovery.reimport.deletes import DeleteItem, DeletesResult, select

    monkeypatch.setenv("RECOVERY_SPILL_AFTER", "1")
    candidates = {"parts": [(1,), (2,), (3,)], "quote_items": [(7, 0.5), (8, "a")]}
    reviewed = tmp_path / "reviewed.csv"
    reviewed.write_text('table,key\nquote_items,"[8, ""a""]"\nparts,3\nparts,1\nparts,3\n')
    assert select(candidates, None) == [
        DeleteItem(t, k) for t, ks in candidates.items() for k in ks
    ]
    assert select(candidates, reviewed) == [
        DeleteItem("quote_items", (8, "a")),
        DeleteItem("parts", (3,)),
        DeleteItem("parts", (1,)),
    ]
    reviewed.write_text("table,key\nparts,4\n")
    with pytest.raises(RecoveryError, match="line 2: parts '4' is not a row deleted"):
        select(candidates, reviewed)
    r = DeletesResult(tmp_path, tmp_path / "db", "b", False)
    r.deleted += [DeleteItem("parts", (i,)) for i in range(4)]
    assert r.deleted.spilled == 3  # type: ignore[attr-defined]
    assert json.loads(json.dumps(r.to_dict(), indent=2))["deleted"][3] == {
        "table": "parts",
        "key": [3],
    }


def test_a_long_outcome_json_is_read_item_by_item_as_json_loads_reads_it(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Past ``STREAM_LOAD_OVER`` the long lists are parsed item by item into spilled lists: the
    same outcome as the whole-text parse, and for broken text the same error."""
    import pytest

    from recovery.model import outcome as m

    monkeypatch.setenv("RECOVERY_SPILL_AFTER", "2")
    o = _outcome()
    text = o.to_json()
    spaced = json.dumps(json.loads(text), indent=3, ensure_ascii=False)
    broken = [text[:-1], text + "x", text[:200], "\ufeff" + text, text.replace("[", "[,", 1)]
    broken += [text.replace('"key": [0]', '"key": [NaN]'), "[1, 2]", "{}", '{"a": 1,}']
    whole = {}
    monkeypatch.setattr(m, "STREAM_LOAD_OVER", 1 << 40)
    for t in broken:
        with pytest.raises(m.OutcomeFormatError) as exc:
            Outcome.from_json(t)
        whole[t] = str(exc.value)
    expected = [
        Outcome.from_json(t) for t in (text, spaced, text.encode(), spaced.encode("utf-16"))
    ]
    monkeypatch.setattr(m, "STREAM_LOAD_OVER", 0)
    got = [Outcome.from_json(t) for t in (text, spaced, text.encode(), spaced.encode("utf-16"))]
    assert got == expected and all(g.to_json() == text for g in got)
    assert got[0].deletes_for_review.spilled == 5  # type: ignore[attr-defined]
    for t in broken:
        with pytest.raises(m.OutcomeFormatError) as exc:
            Outcome.from_json(t)
        assert str(exc.value) == whole[t]
    twice = text[:-1] + ', "skipped_rows": []}'  # a key given twice: the last one, as json.loads
    assert Outcome.from_json(twice).skipped_rows == []


cells = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=12),  # control characters
    st.binary(max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(cells, min_size=1, max_size=3),
    label=cells,
    name=st.text(min_size=1, max_size=10),
    unchanged=st.booleans(),
    head=st.integers(0, 2),
)
def test_the_deletes_for_review_text_sqlite_writes_is_the_items_encoding(
    keys: list[object], label: object, name: str, unchanged: bool, head: int
) -> None:
    """``review_deletes.item_text`` (SQLite writes a spilled deletes-for-review item's text) gives
    exactly :func:`recovery.model.outcome.encode_item` of the item, or NULL (a real or a blob:
    Python encodes it); ``SpillList.extend_rows`` then stores items equal to ``extend``'s."""
    from recovery.engine.sqlbuild import col, sql
    from recovery.model.outcome import _spill_list, encode_item
    from recovery.reimport.review_deletes import item_text

    conn = sqlite3.connect(":memory:")
    names = [f"k{i}" for i in range(len(keys))]
    conn.execute(f"CREATE TABLE d ({', '.join(names)}, lab)")
    conn.execute(f"INSERT INTO d VALUES ({', '.join('?' * (len(keys) + 1))})", [*keys, label])
    q = exp.select(item_text(name, [col(n, "d") for n in names], col("lab", "d"))).from_("d")
    (made,) = conn.execute(sql(q)).fetchone()
    row = conn.execute("SELECT * FROM d").fetchone()  # the values as SQLite gives them back
    item = {
        "table": name,
        "key": list(row[:-1]),
        "label": row[-1],
        "unchanged_since_backup": unchanged,
    }
    if made is None:
        assert any(isinstance(v, (float, bytes)) for v in row)
    else:
        assert made + ("true}" if unchanged else "false}") == encode_item(item)
    spilled = _spill_list("deletes_for_review", [])
    spilled._limit = head
    rows = [row] * 3
    spilled.extend_rows(
        rows,
        lambda r: {
            "table": name,
            "key": list(r[:-1]),
            "label": r[-1],
            "unchanged_since_backup": unchanged,
        },
        lambda r: None if made is None else made + ("true}" if unchanged else "false}"),
    )
    assert list(spilled) == [item] * 3


def test_stored_keys_and_types_are_read_once_and_again_after_a_write() -> None:
    """``stored_object_keys`` / ``stored_json_types`` answer from the spilled text as it is now:
    asked twice, the same answer (read once); after an append, an item assignment or a clear,
    the new text's."""
    items = SpillList([{"a": 1, "key": [1]}], head=0)
    assert items.stored_object_keys() == {"a", "key"}
    items.stored_object_keys().add("mutated")  # a copy: the answer kept is not changed
    assert items.stored_object_keys() == {"a", "key"}
    assert items.stored_json_types("$.key") == {"array"}
    items.append({"b": 2, "key": "x"})
    assert items.stored_object_keys() == {"a", "b", "key"}
    assert items.stored_json_types("$.key") == {"array", "text"}
    items[1] = {"c": 3, "key": [2]}
    assert items.stored_object_keys() == {"a", "c", "key"}
    assert items.stored_json_types("$.key") == {"array"}
    items.clear()
    assert items.stored_object_keys() == set()
    assert items.stored_json_types("$.key") == set()
