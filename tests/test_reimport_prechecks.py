"""The re-import's one-pass questions must never skip what they guard: ``constraint.detect`` asks
once whether any staged insert holds a NULL in any NOT NULL column before it runs the query of
each column, and ``update.detect`` asks once whether any staged update has a cell changed on both
sides or a NULL from after the deploy before it runs ``json_merge`` and its cell query. Each test
puts the one row that must be found where a narrower question would miss it (the last column
only, a NULL without a clash, a row NULL in two columns) and checks the conflicts and the rows
that land. Small pairs on disk, a real bundle, the CLI."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from recovery.bundle.extract import extract
from recovery.cli import main

PEOPLE_OLD = (
    "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, nick TEXT NOT NULL, "
    "city TEXT, score INTEGER NOT NULL);"
)
PEOPLE_NEW = (
    "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, nick TEXT, city TEXT, score INTEGER);"
)
BASE = "INSERT INTO people VALUES (1, 'a', 'aa', 'x', 1), (2, 'b', 'bb', 'y', 2), (3, 'c', 'cc', 'z', 3);"


def _run_sql(db: Path, script: str) -> None:
    c = sqlite3.connect(db, isolation_level=None)
    c.executescript(script)
    c.close()


def _reimport(tmp: Path, post_deploy: str, target_since: str = "") -> tuple[int, dict[str, Any]]:
    """Backup (old schema) + live (relaxed schema, ``post_deploy`` applied), a bundle, and its
    re-import into a copy of the backup to which ``target_since`` was applied."""
    backup, live = tmp / "app.db.bak.20261120_140000", tmp / "app.db"
    _run_sql(backup, PEOPLE_OLD + BASE)
    _run_sql(live, PEOPLE_NEW + BASE + post_deploy)
    extract(backup, live, tmp / "bundle")
    target = tmp / "t" / "app.db"
    target.parent.mkdir()
    shutil.copyfile(backup, target)
    if target_since:
        _run_sql(target, target_since)
    run = tmp / "run"
    res = CliRunner().invoke(
        main, ["reimport", str(tmp / "bundle"), str(target), "--out", str(run), "--yes"]
    )
    outcome = json.loads((run / "report.json").read_text())["outcome"]
    rows = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    outcome["rows"] = rows.execute("SELECT * FROM people ORDER BY id").fetchall()
    rows.close()
    return res.exit_code, outcome


def _conflicts(outcome: dict[str, Any]) -> list[tuple[str, list[Any], str | None]]:
    return [(c["kind"], c["key"], c["column"]) for c in outcome["conflicts"]]


def test_a_null_in_the_last_column_only_and_a_null_without_a_clash_are_found(
    tmp_path: Path,
) -> None:
    """Inserts: only the last NOT NULL column holds a NULL. Updates: no cell changed on both
    sides, only a NULL the old schema cannot hold, in the last updatable column (the target's
    value is kept). The two questions read different staged tables: each has one row to find."""
    code, outcome = _reimport(
        tmp_path,
        "INSERT INTO people VALUES (4, 'd', 'dd', NULL, NULL), (5, 'e', 'ee', NULL, 5);"
        "UPDATE people SET score = NULL, city = 'w' WHERE id = 2;",
    )
    assert code == 1
    assert sorted(_conflicts(outcome)) == [
        ("constraint", [2], "score"),
        ("constraint", [4], "score"),
    ]
    assert [r[0] for r in outcome["rows"]] == [1, 2, 3, 5]
    assert outcome["rows"][1] == (2, "b", "bb", "w", 2)


def test_a_row_null_in_two_columns_and_a_clash_in_the_last_column_are_found(tmp_path: Path) -> None:
    """A row NULL in two columns is reported once, for the first; an update whose last column
    changed on both sides is an ``update_update`` conflict, the target's value kept."""
    code, outcome = _reimport(
        tmp_path,
        "INSERT INTO people VALUES (4, NULL, NULL, 'q', 4), (5, 'e', NULL, 'r', 5), (6, 'f', 'ff', NULL, 6);"
        "UPDATE people SET city = 'w', score = 20 WHERE id = 3;",
        target_since="UPDATE people SET score = 30 WHERE id = 3;",
    )
    assert code == 1
    assert sorted(_conflicts(outcome)) == [
        ("constraint", [4], "name"),
        ("constraint", [5], "nick"),
        ("update_update", [3], "score"),
    ]
    assert [r[0] for r in outcome["rows"]] == [1, 2, 3, 6]
    assert outcome["rows"][2] == (3, "c", "cc", "w", 30)


def test_nothing_to_find_lands_every_row(tmp_path: Path) -> None:
    code, outcome = _reimport(
        tmp_path,
        "INSERT INTO people VALUES (4, 'd', 'dd', NULL, 4); UPDATE people SET city = NULL WHERE id = 1;",
        target_since="UPDATE people SET score = 20 WHERE id = 1;",
    )
    assert code == 0
    assert _conflicts(outcome) == []
    assert outcome["rows"][0] == (1, "a", "aa", None, 20) and len(outcome["rows"]) == 4
