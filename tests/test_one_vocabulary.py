"""One vocabulary (issue 13): one definition of "changed" shared by diff, extract, report and
rehearse, and the model's typed values round-trip through their JSON forms unchanged."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

DEPLOY = "2026-11-20T14:00:00"
OLD = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);"
NEW = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, note TEXT, updated_at TEXT);"


def build(path: Path, ddl: str, rows: list[tuple[object, ...]]) -> Path:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(ddl)
        conn.executemany(f"INSERT INTO t VALUES ({','.join('?' * len(rows[0]))})", rows)
    return path


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command in its own process."""
    return subprocess.run([sys.executable, "-m", "recovery", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


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
        conn.execute("UPDATE t SET name = 'edited', updated_at = '2026-11-21T09:00:00' WHERE id = 3")
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
