"""The run folder's ``reimport.sql`` is the plan exactly as the re-import executed it: applied by
hand with the ``sqlite3`` shell to a copy of the target taken before the re-import, it gives the
same database as the tool (every table's rows, ``sqlite_sequence`` and the schema incl. triggers),
with remaps, skips, updates, the refused-row guard, trigger suspension, AUTOINCREMENT carry-forward
and the ``_recovery_applied`` bookkeeping. Deletes that were not applied are only in
``deletes.sql``, commented out."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from click.testing import CliRunner

from recovery.bundle.extract import extract
from recovery.cli import main

SQLITE3 = shutil.which("sqlite3")
OLD_APP_TIME = "2026-11-21 09:00:00"


def cli(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def run_sql(db: Path, script: str, foreign_keys: bool = False) -> None:
    c = sqlite3.connect(db, isolation_level=None)
    if foreign_keys:
        c.execute("PRAGMA foreign_keys=ON")
    c.executescript(script)
    c.close()


def dump(db: Path) -> dict[str, list[tuple]]:
    """Every table's rows as a sorted list (set-based: row order on disk does not matter), and
    the schema (``sqlite_master`` without rootpages)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        master = sorted(
            c.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"),
            key=lambda r: tuple(str(v) for v in r),
        )
        out: dict[str, list[tuple]] = {"sqlite_master": master}
        for (name,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            rows = c.execute(f'SELECT * FROM "{name}"').fetchall()
            out[name] = sorted(
                rows, key=lambda r: tuple((v is None, type(v).__name__, str(v)) for v in r)
            )
    return out


def replay(script: Path, before: Path) -> None:
    """Apply ``script`` with the sqlite3 shell, stopping at the first error."""
    if SQLITE3 is None:
        pytest.skip("the sqlite3 shell is not installed")
    res = subprocess.run(
        [SQLITE3, "-bail", str(before)], stdin=script.open("rb"), capture_output=True
    )
    assert res.returncode == 0, res.stderr.decode()


def assert_replays(run: Path, before: Path, after: Path, skip: tuple[str, ...] = ()) -> None:
    replay(run / "reimport.sql", before)
    replayed, tool = dump(before), dump(after)
    for name in skip:
        replayed.pop(name), tool.pop(name)
    assert replayed == tool


def new_part(pid: int | None, number: str) -> str:
    cols = "part_number, name, material_id, price, created_at, updated_at, created_by"
    vals = f"'{number}', 'old app part', 1, 9.5, '{OLD_APP_TIME}', '{OLD_APP_TIME}', 1"
    if pid is not None:
        cols, vals = "id, " + cols, f"{pid}, " + vals
    return f"INSERT INTO parts ({cols}) VALUES ({vals});\n"


# the old release writes before the re-import: primary-key clashes (remapped), a unique clash, an
# update/update conflict, an update of a row deleted since and a new item whose part is gone
COLLISIONS = (
    new_part(None, "OLD-0")
    + new_part(None, "OLD-1")
    + new_part(None, "OLD-2")
    + new_part(1000, "GS-10125")
    + "UPDATE parts SET price = 1.23 WHERE id = 79;\n"
    + "DELETE FROM quotes WHERE id = 40;\n"
    + "DELETE FROM parts WHERE id = 112;\n"
)


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--on-conflict", "skip", "--prefer", "bundle"),
        ("--apply-deletes",),
        ("--conflicts", "row"),
    ],
    ids=["remap", "skip-bundle", "deletes", "row"],
)
def test_reimport_sql_replays_to_the_same_database(
    bundle: Path, restored: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    run_sql(restored, COLLISIONS, foreign_keys=True)
    before = tmp_path / "before.db"
    with sqlite3.connect(restored) as src, sqlite3.connect(before) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    res = cli("reimport", bundle, restored, "--out", tmp_path / "run", "--yes", *extra)
    assert res.exit_code == 1, res.output
    text = (tmp_path / "run" / "reimport.sql").read_text()
    assert text != (bundle / "reimport.sql").read_text()
    assert_replays(tmp_path / "run", before, restored)


def test_dry_run_script_is_what_the_run_executes(
    bundle: Path, restored: Path, tmp_path: Path
) -> None:
    run_sql(restored, COLLISIONS, foreign_keys=True)
    before = tmp_path / "before.db"
    shutil.copyfile(restored, before)
    assert (
        cli("reimport", bundle, restored, "--out", tmp_path / "dry", "--yes", "--dry-run").exit_code
        == 1
    )
    assert dump(before) == dump(restored)  # the dry run changed nothing
    assert cli("reimport", bundle, restored, "--out", tmp_path / "run", "--yes").exit_code == 1
    # the bookkeeping row differs only by the time and the dry-run flag
    assert_replays(tmp_path / "dry", before, restored, skip=("_recovery_applied",))


def test_deletes_not_applied_are_only_in_deletes_sql_commented_out(
    bundle: Path, restored: Path, tmp_path: Path
) -> None:
    """On a clean restore the bundle's six deletes are listed, not applied: replaying
    ``reimport.sql`` keeps those rows, and ``deletes.sql`` holds the DELETEs, each commented out."""
    before = tmp_path / "before.db"
    shutil.copyfile(restored, before)
    assert cli("reimport", bundle, restored, "--out", tmp_path / "run", "--yes").exit_code in (0, 1)
    assert_replays(tmp_path / "run", before, restored)
    script = (tmp_path / "run" / "reimport.sql").read_text()
    assert "DELETE FROM" not in script.upper().replace('"', "")
    deletes = (tmp_path / "run" / "deletes.sql").read_text()
    live = [ln for ln in deletes.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
    assert live == []
    assert "DELETE FROM" in deletes.upper().replace('"', "")


def test_deletes_applied_are_in_reimport_sql(bundle: Path, restored: Path, tmp_path: Path) -> None:
    before = tmp_path / "before.db"
    shutil.copyfile(restored, before)
    assert cli(
        "reimport", bundle, restored, "--out", tmp_path / "run", "--yes", "--apply-deletes"
    ).exit_code in (0, 1)
    assert_replays(tmp_path / "run", before, restored)


def make_pair(
    tmp: Path, old_ddl: str, new_ddl: str, base_rows: str, post_deploy: str
) -> tuple[Path, Path]:
    backup, live = tmp / "app.db.bak.20261120_140000", tmp / "app.db"
    run_sql(backup, old_ddl + base_rows)
    run_sql(live, new_ddl + base_rows + post_deploy)
    extract(backup, live, tmp / "bundle")
    target = tmp / "t" / "app.db"
    target.parent.mkdir()
    shutil.copyfile(backup, target)
    return tmp / "bundle", target


AUDITED = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, "
    "n INTEGER NOT NULL ON CONFLICT ABORT CHECK (n > 0));"
    "CREATE TABLE audit (id INTEGER PRIMARY KEY, item_id INT, what TEXT);"
    "CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, item_id INTEGER REFERENCES items(id) ON DELETE CASCADE);"
    "CREATE TRIGGER trg_audit_ins AFTER INSERT ON items\n  BEGIN INSERT INTO audit (item_id, what)"
    " VALUES (new.id, 'insert'); END;"
)
RELAXED = AUDITED.replace("NOT NULL ON CONFLICT ABORT CHECK (n > 0)", "NOT NULL")


def test_refused_rows_triggers_and_counters_replay(tmp_path: Path) -> None:
    """A CHECK the detection cannot read (found by the SAVEPOINT halving), a trigger suspended and
    re-created, remapped AUTOINCREMENT keys and the counter carried forward."""
    bundle, target = make_pair(
        tmp_path,
        AUDITED,
        RELAXED,
        "INSERT INTO items (name, n) VALUES ('a', 1), ('b', 2);",
        "INSERT INTO items (name, n) VALUES ('c', 5), ('d', -1), ('e', 6), ('f', 7);"
        "INSERT INTO notes VALUES (1, 4), (2, 5), (3, 6); DELETE FROM notes WHERE id = 3; UPDATE items SET name = 'B' WHERE id = 2;",
    )
    run_sql(target, "INSERT INTO items (name, n) VALUES ('old app', 9);")  # takes id 3: remapped
    before = tmp_path / "before.db"
    shutil.copyfile(target, before)
    res = cli("reimport", bundle, target, "--out", tmp_path / "run", "--yes")
    assert res.exit_code == 1, res.output
    script = (tmp_path / "run" / "reimport.sql").read_text()
    assert "CHECK constraint failed" in (tmp_path / "run" / "conflicts.csv").read_text()
    assert 'DROP TRIGGER "main"."trg_audit_ins"' in script and '"main"."sqlite_sequence"' in script
    assert_replays(tmp_path / "run", before, target)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False),
            st.text(
                alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
            ),
            st.binary(),
        ),
        min_size=1,
        max_size=5,
    )
)
@example([7.443360559731655e-298])  # SQLite reads every decimal text of this double one ulp off
def test_bound_values_render_as_literals_sqlite_reads_back(values: list) -> None:
    """A step's values rendered as literals read back as exactly the values bound (type included)."""
    from sqlglot import exp

    from recovery.reimport.script import Step

    stmt = exp.select(*[exp.Placeholder() for _ in values])
    c = sqlite3.connect(":memory:")
    bound = c.execute(Step(stmt, tuple(values)).text(), values).fetchone()
    rendered = c.execute(Step(stmt, tuple(values)).render()).fetchone()
    assert [(type(v), v) for v in rendered] == [(type(v), v) for v in bound]


def test_script_attaches_the_bundle_by_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle named by a relative path: ``reimport.sql`` and ``deletes.sql`` still attach the
    bundle's files wherever the script is applied from (a relative ATTACH would create empty files
    there and fail)."""
    bundle, target = make_pair(
        tmp_path,
        AUDITED,
        RELAXED,
        "INSERT INTO items (name, n) VALUES ('a', 1);",
        "INSERT INTO items (name, n) VALUES ('c', 5); DELETE FROM items WHERE id = 1;",
    )
    before = tmp_path / "before.db"
    shutil.copyfile(target, before)
    monkeypatch.chdir(tmp_path)
    assert cli("reimport", "bundle", target, "--out", tmp_path / "run", "--yes").exit_code in (0, 1)
    elsewhere = tmp_path / "elsewhere" / "bundle"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere.parent)
    assert_replays(tmp_path / "run", before, target)
    assert list(elsewhere.iterdir()) == []
    assert f"ATTACH '{bundle / 'base.db'}'" in (tmp_path / "run" / "deletes.sql").read_text()
