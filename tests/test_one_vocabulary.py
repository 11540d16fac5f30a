"""One vocabulary (issue 13): one definition of "changed" shared by diff, extract, report and
rehearse, and the model's typed values round-trip through their JSON forms unchanged."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from tests.clirun import invoke

DEPLOY = "2026-11-20T14:00:00"
OLD = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);"
NEW = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, note TEXT, updated_at TEXT);"


def build(path: Path, ddl: str, rows: list[tuple[object, ...]]) -> Path:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(ddl)
        conn.executemany(f"INSERT INTO t VALUES ({','.join('?' * len(rows[0]))})", rows)
    return path


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command, in this process (:mod:`tests.clirun`)."""
    return invoke(*args)


def test_diff_and_extract_count_the_same_updated_rows(tmp_path: Path) -> None:
    """A pair where a user changed one row in the old schema's projection (id 3: name) and another
    only in a column the old release lacks, after the deploy (id 7: note, updated_at). Both rows
    are changed: extract carries both as ``updated`` (id 7's note is a lost value), and
    ``diff --json`` counts the same two — ``changed_only_in_new_columns`` says how many of them
    changed only in new columns."""
    old = [(i, f"n{i}") for i in range(1, 26)]
    backup = build(tmp_path / "app.db.bak", OLD, old)
    live = build(tmp_path / "app.db", NEW, [(i, n, None, "2026-11-01T10:00:00") for i, n in old])
    with closing(sqlite3.connect(live)) as conn, conn:
        conn.execute(
            "UPDATE t SET name = 'edited', updated_at = '2026-11-21T09:00:00' WHERE id = 3"
        )
        conn.execute("UPDATE t SET note = 'vip', updated_at = '2026-11-21T09:00:00' WHERE id = 7")
    res = cli("diff", backup, live, "--since", DEPLOY, "--json")
    assert res.returncode == 1, res.stderr
    diffed = json.loads(res.stdout)
    res = cli("extract", backup, live, "--since", DEPLOY, "--out", tmp_path / "b", "--json")
    assert res.returncode == 1, res.stderr  # id 7's note has no place in the old release: review
    extracted = json.loads(res.stdout)
    with closing(sqlite3.connect(tmp_path / "b" / "rows.db")) as conn:
        kinds = sorted(conn.execute('SELECT id, "_recovery_kind" FROM t').fetchall())
    assert kinds == [(3, "updated"), (7, "updated")]
    assert extracted["counts"]["t"]["updated"] == 2
    assert diffed["tables"]["t"]["updated"] == extracted["counts"]["t"]["updated"]
    assert diffed["totals"]["updated"] == 2
    assert diffed["tables"]["t"]["changed_only_in_new_columns"] == 1
    assert diffed["tables"]["t"]["after_deploy"]["updated"] == 2
    res = cli("diff", backup, live, "--since", DEPLOY, "--csv")
    assert res.returncode == 1
    rows = [line for line in res.stdout.splitlines() if line.startswith("t,")]
    assert len(rows) == 2 and all(line.startswith("t,updated,") for line in rows), rows


# ---------------------------------------------------------------------------------------------
# the model package: values only, typed, the files' keys unchanged

import ast  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from recovery.model.kinds import (  # noqa: E402
    CARRIED_KINDS,
    CHANGED_KINDS,
    INSERT_KINDS,
    KIND_COLUMN,
    ConflictKind,
    Resolution,
    RowKind,
)
from recovery.model.outcome import Conflict, Outcome  # noqa: E402
from recovery.model.values import COUNT_KEYS, LostValues, TableCounts, Verification  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "recovery" / "model"


def test_the_model_imports_nothing_of_ours_but_itself() -> None:
    """Every ``recovery`` import in ``recovery/model`` (at any depth of the module) names
    ``recovery.model``: the stages import the model, never the other way round."""
    found = []
    for path in sorted(MODEL.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [(path.name, n) for n in names if n.split(".")[0] == "recovery"]
    assert found and all(n.startswith("recovery.model") for _, n in found), found


def test_vocabulary_values_are_the_strings_the_files_hold() -> None:
    assert [k.value for k in RowKind] == ["inserted", "updated", "deleted", "closure"]
    assert [k.value for k in ConflictKind] == [
        "primary_key",
        "unique",
        "missing_parent",
        "constraint",
        "update_update",
        "update_deleted",
    ]
    assert [r.value for r in Resolution] == ["applied", "remapped", "skipped", "kept_target"]
    assert KIND_COLUMN == "_recovery_kind"
    assert (
        set(INSERT_KINDS) | set(CHANGED_KINDS)
        == set(CARRIED_KINDS)
        == set(RowKind) - {RowKind.DELETED}
    )
    assert json.dumps({RowKind.UPDATED: ConflictKind.UNIQUE}) == '{"updated": "unique"}'
    assert f"{Resolution.KEPT_TARGET}" == "kept_target"


def test_a_conflict_given_text_holds_the_enum_and_refuses_unknown_text() -> None:
    c = Conflict("primary_key", "parts", (1,), "remapped")
    assert c.kind is ConflictKind.PRIMARY_KEY and c.resolution is Resolution.REMAPPED
    assert json.dumps(c.to_dict()["kind"]) == '"primary_key"'
    try:
        Conflict("primary-key", "parts", (1,), "remapped")
    except ValueError:
        pass
    else:
        raise AssertionError("an unknown conflict kind was accepted")


counts_st = st.builds(
    TableCounts,
    *(st.integers(0, 10**12) for _ in range(6)),
    status=st.sampled_from([None, "compared", "new table", "skipped by mapping"]),
)


@given(counts_st)
def test_table_counts_round_trip_through_the_manifest_form(c: TableCounts) -> None:
    d = c.to_dict()
    assert TableCounts.from_dict(json.loads(json.dumps(d))) == c
    assert all(type(d[k]) is int for k in COUNT_KEYS if k in d)
    assert c.carried == c.inserted + c.updated + c.closure


def test_table_counts_write_the_keys_extract_writes_in_its_order() -> None:
    """The manifest's counts are byte-identical: closure and filled_by_upgrade only when non-zero."""
    assert json.dumps(TableCounts(3, 2, 1, status="compared").to_dict()) == (
        '{"inserted": 3, "updated": 2, "deleted": 1, "status": "compared", "lost": 0}'
    )
    assert list(TableCounts(1, 0, 0, 4, 2, 5, "new table").to_dict()) == [
        "inserted",
        "updated",
        "deleted",
        "status",
        "closure",
        "lost",
        "filled_by_upgrade",
    ]
    for bad in ({"inserted": -1}, {"updated": "2"}, {"deleted": True}, {"status": 3}):
        try:
            TableCounts.from_dict(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")


def test_outcome_lost_is_lost_values_and_saves_as_before() -> None:
    o = Outcome(
        "b",
        "t.db",
        "remap",
        False,
        lost=[
            {
                "table": "t",
                "key": [1],
                "label": None,
                "column": "c",
                "value": 5,
                "reason": "column not in the old schema",
            }
        ],
    )
    assert isinstance(o.lost, LostValues) and o.lost_total == 1 and not o.lost_truncated
    assert [v.column for v in o.lost.values()] == ["c"]
    back = Outcome.from_json(o.to_json())
    assert back.to_json() == o.to_json() and back.lost == o.lost


def test_verification_reads_and_writes_the_verify_dict() -> None:
    d = {
        "integrity_check": "ok",
        "foreign_key_check": [],
        "alembic_revision": {"expected": "a1", "actual": "a1", "ok": True},
        "row_counts": {
            "t": {"before": 3, "inserted": 2, "deleted": 1, "expected": 4, "actual": 4, "ok": True}
        },
        "ok": True,
    }
    v = Verification.from_dict(d)
    assert v.ok and v.to_dict() == d
    bad = Verification.from_dict(
        {**d, "alembic_revision": {"expected": "a1", "actual": "b2", "ok": False}}
    )
    assert not bad.ok and bad.to_dict()["ok"] is False
