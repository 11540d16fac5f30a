"""The re-import's merge as a case table (like Dolt's merge case tables): every conflict kind ×
``--on-conflict`` remap|skip|abort × ``--prefer`` db|bundle × ``--conflicts`` cell|row, each with
the conflicts it must report and the rows the target must hold; then JSON cells merged key by key.

One hand-made world: a backup, the live DB after the deploy (the new schema lets ``item.c`` be
NULL) and a target restored from the backup that the old release wrote to since. Every scenario
has its own rows, so all twelve merges run on the same target and each scenario is judged on its
rows and its conflicts only. Each merge runs the way the pipeline runs it (one transaction, the
bundle attached, :func:`merge_and_check`) and is rolled back after the rows are read.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery.options import MergeOptions
from recovery.bundle.store import Bundle, open_bundle
from recovery.bundle.extract import extract
from recovery.files.uploads import FilesConfig
from recovery.reimport.jsonmerge import merge_documents, merge_texts
from recovery.model.outcome import ConflictMode, ConflictPolicy, Outcome, Prefer
from recovery.reimport.merge import attach_bundle, merge_and_check, open_target
from recovery.engine.schema import reflect
from recovery.engine.sqlite_io import readonly, wait_for_write_lock

OLD = """
CREATE TABLE item (id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, a TEXT, b TEXT, c INTEGER NOT NULL, doc TEXT);
CREATE TABLE line (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES item(id), qty INTEGER NOT NULL);
INSERT INTO item VALUES (1, 's1', 'a1', 'b1', 1, NULL), (2, 's2', 'a2', 'b2', 2, NULL), (3, 's3', 'a3', 'b3', 3, NULL),
                        (4, 's4', 'a4', 'b4', 4, NULL), (5, 's5', 'a5', 'b5', 5, NULL), (6, 's6', 'a6', 'b6', 6, NULL);
INSERT INTO line VALUES (1, 2, 5);
INSERT INTO item (id, sku, c, doc) VALUES
  (30, 'j30', 0, '{"x":1,"y":1}'), (31, 'j31', 0, '{"x":1,"y":1}'), (32, 'j32', 0, '{"a":{"b":1,"c":1},"d":[1]}'),
  (33, 'j33', 0, '[1,2,3]'), (34, 'j34', 0, '{"l":[1,2],"m":0}'), (35, 'j35', 0, '{"x":1}'),
  (36, 'j36', 0, '{"x": 1, "y": 1}'), (37, 'j37', 0, '{"é":"ü","n":1}'), (38, 'j38', 0, '{"x":1,"y":1}');
"""
NEW = """
CREATE TABLE item2 (id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, a TEXT, b TEXT, c INTEGER, doc TEXT);
INSERT INTO item2 SELECT * FROM item; DROP TABLE item; ALTER TABLE item2 RENAME TO item;
"""
USERS = """
INSERT INTO item VALUES (10, 's10', 'n10', 'n10', 10, NULL);
INSERT INTO item VALUES (11, 'dup', 'n11', 'n11', 11, NULL);
INSERT INTO line VALUES (100, 2, 7);
INSERT INTO item VALUES (12, 's12', 'n12', 'n12', NULL, NULL);
UPDATE item SET a = 'A1' WHERE id = 1;
UPDATE item SET a = 'A3' WHERE id = 3;
UPDATE item SET b = 'B4' WHERE id = 4;
UPDATE item SET a = 'A5', b = 'B5' WHERE id = 5;
UPDATE item SET a = 'A6' WHERE id = 6;
UPDATE item SET doc = '{"x":2,"y":1}' WHERE id = 30;
UPDATE item SET doc = '{"x":2,"y":1,"z":1}' WHERE id = 31;
UPDATE item SET doc = '{"a":{"b":2,"c":1},"d":[1]}' WHERE id = 32;
UPDATE item SET doc = '[1,9,3]' WHERE id = 33;
UPDATE item SET doc = '{"l":[1,2,3],"m":0}' WHERE id = 34;
UPDATE item SET doc = '{"x":2}' WHERE id = 35;
UPDATE item SET doc = '{"x": 2, "y": 1}' WHERE id = 36;
UPDATE item SET doc = '{"é":"ö","n":1}' WHERE id = 37;
UPDATE item SET doc = '{"x":2,"y":1}', a = 'A38' WHERE id = 38;
"""
OLD_APP = """
INSERT INTO item VALUES (10, 's10t', 'o10', 'o10', 10, NULL);
INSERT INTO item VALUES (20, 'dup', 'o20', 'o20', 20, NULL);
DELETE FROM line WHERE item_id = 2; DELETE FROM item WHERE id = 2;
UPDATE item SET a = 'x1' WHERE id = 1;
UPDATE item SET b = 'y3' WHERE id = 3;
DELETE FROM item WHERE id = 4;
UPDATE item SET a = 'A5', b = 'B5' WHERE id = 5;
UPDATE item SET doc = '{"x":1,"y":3}' WHERE id = 30;
UPDATE item SET doc = '{"x":3,"y":5}' WHERE id = 31;
UPDATE item SET doc = '{"a":{"b":1,"c":2},"d":[1]}' WHERE id = 32;
UPDATE item SET doc = '[1,2,4]' WHERE id = 33;
UPDATE item SET doc = '{"l":[0,2],"m":1}' WHERE id = 34;
UPDATE item SET doc = 'not json {' WHERE id = 35;
UPDATE item SET doc = '{"y": 3, "x": 1}' WHERE id = 36;
UPDATE item SET doc = '{"é":"ü","n":2}' WHERE id = 37;
UPDATE item SET doc = '{"x":1,"y":3}' WHERE id = 38;
"""
"""The old release since the restore. Item 5: both sides made the same edit (never a conflict);
item 6: only the bundle changed it (always carried, except on abort)."""

Row = tuple[Any, ...]


def make(db: Path, script: str, foreign_keys: bool = True) -> None:
    with closing(sqlite3.connect(db, isolation_level=None)) as c:
        c.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        c.executescript(script)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    d = tmp_path_factory.mktemp("merge-modes")
    backup, live = d / "app.db.bak.20261120_140000", d / "app.db"
    make(backup, OLD)
    make(live, OLD + NEW, foreign_keys=False)  # the new release's migration rebuilds the table
    make(live, USERS)
    extract(
        backup, live, d / "bundle", trust_mapping=True
    )  # most rows change: too few to judge rules by
    target = d / "target" / "app.db"
    target.parent.mkdir()
    shutil.copyfile(backup, target)
    make(target, OLD_APP)
    return open_bundle(d / "bundle"), target


def merge(
    bundle: Bundle, target: Path, policy: ConflictPolicy, prefer: Prefer, mode: ConflictMode
) -> tuple[Outcome, dict[str, list[Row]]]:
    """Merge as the pipeline does; the outcome and every row of the target inside the
    transaction, which is then rolled back (the target file is unchanged)."""
    with readonly(target) as r:
        schema = reflect(r)
    conn = open_target(target, 5.0)
    try:
        attach_bundle(conn, bundle)
        wait_for_write_lock(conn, 5.0)
        try:
            outcome, problems = merge_and_check(
                conn,
                bundle,
                MergeOptions(on_conflict=policy, prefer=prefer, conflicts=mode),
                FilesConfig(),
                str(target),
                False,
                schema,
            )
            assert problems == []
            rows = {
                t: conn.execute(f"SELECT * FROM main.{t} ORDER BY id").fetchall()
                for t in ("item", "line")
            }
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()
    return outcome, rows


# ---- the case table ---------------------------------------------------------------------------
# scenario → (item ids, line ids) it owns; conflicts are (kind, table, key, column, resolution);
# rows are the scenario's item rows (id, sku, a, b, c) and line rows (id, item_id, qty).
# A case's policy/prefer/mode "*" matches any value; for each scenario every one of the 12
# combinations must match exactly one case.

OWNS = {
    "primary_key": ({10, 39}, set()),
    "unique": ({11, 20}, set()),
    "missing_parent": ({2}, {100}),
    "constraint": ({12}, set()),
    "update_update": ({1}, set()),
    "row_only": ({3}, set()),
    "update_deleted": ({4}, set()),
    "same_edit": ({5}, set()),
    "bundle_only": ({6}, set()),
}

I10T = (10, "s10t", "o10", "o10", 10)
I20 = (20, "dup", "o20", "o20", 20)

CASES: list[tuple[str, str, str, str, list[tuple[Any, ...]], list[Row], list[Row]]] = [
    # scenario, --on-conflict, --prefer, --conflicts, conflicts, item rows, line rows
    (
        "primary_key",
        "remap",
        "*",
        "*",
        [("primary_key", "item", (10,), None, "remapped")],
        [I10T, (39, "s10", "n10", "n10", 10)],
        [],
    ),
    (
        "primary_key",
        "skip",
        "*",
        "*",
        [("primary_key", "item", (10,), None, "skipped")],
        [I10T],
        [],
    ),
    (
        "primary_key",
        "abort",
        "*",
        "*",
        [("primary_key", "item", (10,), None, "skipped")],
        [I10T],
        [],
    ),
    ("unique", "remap", "*", "*", [("unique", "item", (11,), "sku", "skipped")], [I20], []),
    ("unique", "skip", "*", "*", [("unique", "item", (11,), "sku", "skipped")], [I20], []),
    ("unique", "abort", "*", "*", [("unique", "item", (11,), "sku", "skipped")], [I20], []),
    (
        "missing_parent",
        "*",
        "*",
        "*",
        [("missing_parent", "line", (100,), "item_id", "skipped")],
        [],
        [],
    ),
    ("constraint", "*", "*", "*", [("constraint", "item", (12,), "c", "skipped")], [], []),
    # one column changed differently on both sides: a cell conflict and a row conflict alike
    # (abort: the resolution --prefer would have taken; nothing is applied)
    (
        "update_update",
        "abort",
        "db",
        "*",
        [("update_update", "item", (1,), "a", "kept_target")],
        [(1, "s1", "x1", "b1", 1)],
        [],
    ),
    (
        "update_update",
        "abort",
        "bundle",
        "*",
        [("update_update", "item", (1,), "a", "applied")],
        [(1, "s1", "x1", "b1", 1)],
        [],
    ),
    (
        "update_update",
        "remap|skip",
        "db",
        "*",
        [("update_update", "item", (1,), "a", "kept_target")],
        [(1, "s1", "x1", "b1", 1)],
        [],
    ),
    (
        "update_update",
        "remap|skip",
        "bundle",
        "*",
        [("update_update", "item", (1,), "a", "applied")],
        [(1, "s1", "A1", "b1", 1)],
        [],
    ),
    # different columns of one row: merged cell by cell; one conflict as a row
    ("row_only", "remap|skip", "*", "cell", [], [(3, "s3", "A3", "y3", 3)], []),
    ("row_only", "abort", "*", "cell", [], [(3, "s3", "a3", "y3", 3)], []),
    (
        "row_only",
        "remap|skip",
        "db",
        "row",
        [("update_update", "item", (3,), "a,b", "kept_target")],
        [(3, "s3", "a3", "y3", 3)],
        [],
    ),
    (
        "row_only",
        "remap|skip",
        "bundle",
        "row",
        [("update_update", "item", (3,), "a,b", "applied")],
        [(3, "s3", "A3", "b3", 3)],
        [],
    ),
    (
        "row_only",
        "abort",
        "db",
        "row",
        [("update_update", "item", (3,), "a,b", "kept_target")],
        [(3, "s3", "a3", "y3", 3)],
        [],
    ),
    (
        "row_only",
        "abort",
        "bundle",
        "row",
        [("update_update", "item", (3,), "a,b", "applied")],
        [(3, "s3", "a3", "y3", 3)],
        [],
    ),
    ("update_deleted", "*", "*", "*", [("update_deleted", "item", (4,), None, "skipped")], [], []),
    ("same_edit", "*", "*", "*", [], [(5, "s5", "A5", "B5", 5)], []),
    ("bundle_only", "remap|skip", "*", "*", [], [(6, "s6", "A6", "b6", 6)], []),
    ("bundle_only", "abort", "*", "*", [], [(6, "s6", "a6", "b6", 6)], []),
]


def _matches(pattern: str, value: str) -> bool:
    return pattern == "*" or value in pattern.split("|")


def expected(
    scenario: str, policy: str, prefer: str, mode: str
) -> tuple[list[Any], list[Row], list[Row]]:
    hits = [
        c
        for c in CASES
        if c[0] == scenario
        and _matches(c[1], policy)
        and _matches(c[2], prefer)
        and _matches(c[3], mode)
    ]
    assert len(hits) == 1, (
        f"the case table must hold exactly one case for {scenario}/{policy}/{prefer}/{mode}"
    )
    return hits[0][4], hits[0][5], hits[0][6]


COMBOS = list(itertools.product(("remap", "skip", "abort"), ("db", "bundle"), ("cell", "row")))


@pytest.fixture(scope="module")
def merges(
    world: tuple[Bundle, Path],
) -> Iterator[dict[tuple[str, str, str], tuple[Outcome, dict[str, list[Row]]]]]:
    bundle, target = world
    yield {
        (p, f, m): merge(bundle, target, ConflictPolicy(p), Prefer(f), ConflictMode(m))
        for p, f, m in COMBOS
    }


@pytest.mark.parametrize(("policy", "prefer", "mode"), COMBOS)
@pytest.mark.parametrize("scenario", list(OWNS))
def test_merge_case_table(
    merges: dict[tuple[str, str, str], tuple[Outcome, dict[str, list[Row]]]],
    scenario: str,
    policy: str,
    prefer: str,
    mode: str,
) -> None:
    outcome, rows = merges[(policy, prefer, mode)]
    want_conflicts, want_items, want_lines = expected(scenario, policy, prefer, mode)
    items, lines = OWNS[scenario]
    got = [
        (c.kind, c.table, tuple(c.key), c.column, c.resolution)
        for c in outcome.conflicts
        if c.key and c.key[0] in (items if c.table == "item" else lines)
    ]
    assert outcome.aborted is (policy == "abort")
    assert sorted(got, key=repr) == sorted(want_conflicts, key=repr)
    assert [
        r[:5]
        for r in rows["item"]
        if r[0] in items or (scenario == "primary_key" and r[1] == "s10")
    ] == want_items
    assert [r for r in rows["line"] if r[0] in lines] == want_lines
    assert outcome.conflicts_mode == mode


def test_row_conflict_names_each_sides_columns_and_values(merges: dict[Any, Any]) -> None:
    outcome, _ = merges[("skip", "db", "row")]
    (c,) = [c for c in outcome.conflicts if c.table == "item" and c.key == (3,)]
    assert json.loads(c.bundle_value) == {"a": "A3", "b": "b3"}
    assert json.loads(c.target_value) == {"a": "a3", "b": "y3"}
    assert json.loads(c.base_value) == {"a": "a3", "b": "b3"}
    assert "(a)" in c.detail and "(b)" in c.detail


def test_conflicts_mode_is_saved_and_read_back(merges: dict[Any, Any]) -> None:
    outcome, _ = merges[("skip", "bundle", "row")]
    back = Outcome.from_json(outcome.to_json())
    assert back.conflicts_mode == "row" and back.to_dict()["conflicts_mode"] == "row"
    data = json.loads(outcome.to_json())
    del data["conflicts_mode"]  # an outcome.json written before the option existed
    assert Outcome.from_json(json.dumps(data)).conflicts_mode == "cell"
    data["conflicts_mode"] = "column"
    with pytest.raises(ValueError, match="conflicts_mode"):
        Outcome.from_json(json.dumps(data))


# ---- JSON cells -------------------------------------------------------------------------------
# id → (doc with --prefer db, doc with --prefer bundle, [(bundle paths, target paths)] of its conflict)
JSON_CASES: dict[int, tuple[str, str, list[tuple[str, str]]]] = {
    30: ('{"x":2,"y":3}', '{"x":2,"y":3}', []),  # different keys merge
    31: (
        '{"x":3,"y":5,"z":1}',
        '{"x":2,"y":5,"z":1}',
        [("$.x", "$.x")],
    ),  # same key: --prefer decides it only
    32: ('{"a":{"b":2,"c":2},"d":[1]}', '{"a":{"b":2,"c":2},"d":[1]}', []),  # nested keys merge
    33: ("[1,9,4]", "[1,9,4]", []),  # items of an array of unchanged length merge
    34: (
        '{"l":[0,2],"m":1}',
        '{"l":[1,2,3],"m":1}',
        [("$.l", "$.l[0]")],
    ),  # a length change owns the array
    36: ('{"y": 3, "x": 2}', '{"y": 3, "x": 2}', []),  # the target's key order and style are kept
    37: ('{"é":"ö","n":2}', '{"é":"ö","n":2}', []),  # non-ASCII kept as is
}


@pytest.mark.parametrize("prefer", ["db", "bundle"])
def test_json_cells_merge_key_by_key(merges: dict[Any, Any], prefer: str) -> None:
    outcome, rows = merges[("skip", prefer, "cell")]
    docs = {r[0]: r[5] for r in rows["item"]}
    for iid, (db_doc, bundle_doc, clashes) in JSON_CASES.items():
        assert docs[iid] == (db_doc if prefer == "db" else bundle_doc), iid
        got = [c for c in outcome.conflicts if c.table == "item" and c.key == (iid,)]
        assert len(got) == len(clashes), (iid, got)
        for c, (b, t) in zip(got, clashes, strict=True):
            assert (c.kind, c.column, c.resolution) == (
                "update_update",
                "doc",
                "kept_target" if prefer == "db" else "applied",
            )
            assert f"bundle: {b};" in c.detail and f"target: {t};" in c.detail


@pytest.mark.parametrize("prefer", ["db", "bundle"])
def test_invalid_json_on_one_side_falls_back_to_the_cell_rule(
    merges: dict[Any, Any], prefer: str
) -> None:
    outcome, rows = merges[("skip", prefer, "cell")]
    (c,) = [c for c in outcome.conflicts if c.table == "item" and c.key == (35,)]
    assert (c.column, c.bundle_value, c.target_value) == ("doc", '{"x":2}', "not json {")
    assert "JSON" not in c.detail
    assert {r[0]: r[5] for r in rows["item"]}[35] == ("not json {" if prefer == "db" else '{"x":2}')


def test_json_cell_beside_a_merged_column_and_in_row_mode(merges: dict[Any, Any]) -> None:
    # item 38: the bundle changed a and doc.x, the target doc.y — cell mode merges all three
    _, rows = merges[("skip", "db", "cell")]
    assert [r[2:6:3] for r in rows["item"] if r[0] == 38] == [("A38", '{"x":2,"y":3}')]
    # row mode compares whole rows: one conflict, the target's row kept
    outcome, rows = merges[("skip", "db", "row")]
    assert [(c.column, c.resolution) for c in outcome.conflicts if c.key == (38,)] == [
        ("a,doc", "kept_target")
    ]
    assert [r[2:6:3] for r in rows["item"] if r[0] == 38] == [(None, '{"x":1,"y":3}')]


def test_an_aborted_merge_writes_no_json(
    merges: dict[Any, Any], world: tuple[Bundle, Path]
) -> None:
    _, rows = merges[("abort", "bundle", "cell")]
    with closing(sqlite3.connect(f"file:{world[1]}?mode=ro", uri=True)) as c:
        assert rows["item"] == c.execute("SELECT * FROM item ORDER BY id").fetchall()


keys = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
scalars = st.one_of(st.integers(-5, 5), st.booleans(), st.none(), st.text(max_size=3))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=6,
)


@given(base=st.dictionaries(keys, values, max_size=6), data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_disjoint_dict_edits_merge_as_both_applied(
    base: dict[str, Any], data: st.DataObject
) -> None:
    """For random edits of the two sides on disjoint sets of top-level keys (set, add or remove),
    the merge equals applying both edits, and no conflict is reported — whatever --prefer says."""
    universe = sorted(set(base) | set(data.draw(st.lists(keys, max_size=4))))
    mine = data.draw(st.sets(st.sampled_from(universe))) if universe else set()
    theirs_keys = [k for k in universe if k not in mine]
    ours_keys = data.draw(st.sets(st.sampled_from(theirs_keys))) if theirs_keys else set()

    def edit(doc: dict[str, Any], on: set[str]) -> dict[str, Any]:
        out = dict(doc)
        for k in sorted(on):
            if data.draw(st.booleans()) and k in out:
                del out[k]
            else:
                out[k] = data.draw(values)
        return out

    theirs, ours = edit(base, mine), edit(base, ours_keys)
    both = dict(ours)
    for k in mine:
        if k in theirs:
            both[k] = theirs[k]
        else:
            both.pop(k, None)
    for prefer_bundle in (False, True):
        m = merge_documents(base, theirs, ours, prefer_bundle)
        assert not m.conflicted
        assert m.merged == both
        text, _ = merge_texts(json.dumps(base), json.dumps(theirs), json.dumps(ours), prefer_bundle)
        assert json.loads(text) == both


def test_reimport_cli_takes_conflicts_row_and_reports_it(
    world: tuple[Bundle, Path], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from recovery.cli import main

    bundle, target = world
    t = tmp_path / "app.db"
    shutil.copyfile(target, t)
    res = CliRunner().invoke(
        main,
        [
            "reimport",
            str(bundle.path),
            str(t),
            "--out",
            str(tmp_path / "run"),
            "--conflicts",
            "row",
            "--on-conflict",
            "skip",
            "--yes",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 1, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    assert report["outcome"]["conflicts_mode"] == "row"
    for page in ("report.md", "report.html"):  # the pages say how conflicts were judged
        assert "judged by row" in (tmp_path / "run" / page).read_text(encoding="utf-8"), page
    rows = list(
        csv.DictReader(open(tmp_path / "run" / "conflicts.csv", newline="", encoding="utf-8"))
    )
    assert {(r["key"], r["column"]) for r in rows if r["kind"] == "update_update"} >= {
        ("3", "a,b"),
        ("1", "a"),
    }
    with closing(sqlite3.connect(f"file:{t}?mode=ro", uri=True)) as c:
        assert c.execute("SELECT a, b FROM item WHERE id = 3").fetchone() == ("a3", "y3")


def test_rollback_journals_and_reports_conflicts_row(
    world: tuple[Bundle, Path], tmp_path: Path
) -> None:
    from recovery.pipeline import rollback

    src = world[0].path.parent
    backup, live = tmp_path / "app.db.bak.20261120_140000", tmp_path / "app.db"
    shutil.copyfile(src / backup.name, backup)
    shutil.copyfile(src / live.name, live)
    res = rollback(
        live, backup, tmp_path / "run", confirm=None, trust_mapping=True, conflicts=ConflictMode.ROW
    )
    assert res.outcome is not None and res.outcome.conflicts_mode == "row"
    journal = json.loads((tmp_path / "run" / "journal.json").read_text(encoding="utf-8"))
    assert journal["args"]["conflicts"] == "row"
    report = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    assert report["outcome"]["conflicts_mode"] == "row"
    with closing(
        sqlite3.connect(f"file:{live}?mode=ro", uri=True)
    ) as c:  # nothing changed since the restore
        assert c.execute("SELECT a, b FROM item WHERE id = 3").fetchone() == ("A3", "b3")


def test_documents_a_merge_could_not_keep_are_left_to_the_cell_rule() -> None:
    from recovery.reimport.jsonmerge import JsonMergeError

    with pytest.raises(JsonMergeError, match="duplicate key"):  # the first "a" would be dropped
        merge_texts('{"a":1,"a":2}', '{"a":1,"a":2,"b":1}', '{"a":1,"a":2,"c":1}', False)
    deep = "[" * 990 + "]" * 990  # valid for SQLite, too deep for Python's parser
    with pytest.raises(JsonMergeError, match="deep"):
        merge_texts(deep, deep.replace("[]", "[1]"), deep.replace("[]", "[2]"), False)


def test_json_cells_in_small_batches_give_the_same_merge(
    merges: dict[Any, Any], world: tuple[Bundle, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import recovery.reimport.detect.update

    monkeypatch.setattr(recovery.reimport.detect.update, "JSON_BATCH", 2)
    outcome, rows = merge(*world, ConflictPolicy.SKIP, Prefer.BUNDLE, ConflictMode.CELL)
    want_outcome, want_rows = merges[("skip", "bundle", "cell")]
    assert rows == want_rows
    assert sorted(map(repr, outcome.conflicts)) == sorted(map(repr, want_outcome.conflicts))
