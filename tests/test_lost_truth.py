"""Lost values are values a user made after the deploy (issue 16, item 2).

An upgrade that fills a new NOT NULL column writes values into backup rows nobody touched; the
rollback restores those rows exactly, so those values are not lost. With the application's
migrations the upgrade is replayed in the sandbox on a copy of the backup and compared in SQL;
without them, such values are listed as "filled by the upgrade, not verified".
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from alembic_apps import write_app

from tests.clirun import invoke

DEPLOY = "2026-11-20T14:00:00"


R2_UP = """with op.batch_alter_table("items") as b:
    b.add_column(sa.Column("code", sa.String(20), nullable=False, server_default=""))
op.execute("UPDATE items SET code = 'C-' || id")"""
R2_DOWN = """with op.batch_alter_table("items") as b:
    b.drop_column("code")"""


def app(folder: Path) -> Path:
    """A tiny application: r1 makes ``items``, r2 adds NOT NULL ``code`` with a server default and
    fills it from the id (values that differ from the default in every existing row)."""
    r1 = 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(50)))'
    return write_app(
        folder, [("r1", None, r1, 'op.drop_table("items")'), ("r2", "r1", R2_UP, R2_DOWN)]
    )


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command, in this process (:mod:`tests.clirun`)."""
    return invoke(*args)


def world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(alembic.ini, backup at r1 with 30 items, live upgraded to r2 by the app's own migration
    where a user then set one existing item's code and added item 31)."""
    from recovery.migrate.sandbox import migrate_once

    ini = app(tmp_path / "app")
    backup = tmp_path / "app.db.bak"
    migrate_once(ini, backup, "upgrade", "r1")
    with closing(sqlite3.connect(backup)) as conn, conn:
        conn.executemany(
            "INSERT INTO items (id, name) VALUES (?, ?)", [(i, f"item {i}") for i in range(1, 31)]
        )
    live = tmp_path / "app.db"
    shutil.copyfile(backup, live)
    migrate_once(ini, live, "upgrade", "r2")
    with closing(sqlite3.connect(live)) as conn, conn:
        conn.execute("UPDATE items SET code = 'USER-5' WHERE id = 5")
        conn.execute("INSERT INTO items (id, name, code) VALUES (31, 'new', 'NEW-31')")
    return ini, backup, live


def lost_of(bundle: Path, table: str = "_recovery_lost") -> list[tuple[str, str]]:
    with closing(sqlite3.connect(f"file:{bundle / 'rows.db'}?mode=ro", uri=True)) as conn:
        return sorted(conn.execute(f'SELECT "key", "value" FROM "{table}"').fetchall())


def test_replayed_upgrade_tells_the_migrations_values_from_a_users(tmp_path: Path) -> None:
    """With --alembic-ini the values the migration itself wrote are neither lost nor listed; the
    user's post-deploy value in that column (an existing row) and the new row's are lost — and
    ``diff`` counts the same."""
    ini, backup, live = world(tmp_path)
    res = cli("diff", backup, live, "--since", DEPLOY, "--alembic-ini", ini, "--json")
    t = json.loads(res.stdout)["tables"]["items"]
    assert (
        t["inserted"],
        t["changed_only_in_new_columns"],
        t["values_at_risk"],
        t["filled_by_upgrade"],
    ) == (1, 1, 1, 0)
    res = cli(
        "extract",
        backup,
        live,
        "--since",
        DEPLOY,
        "--alembic-ini",
        ini,
        "--out",
        tmp_path / "b",
        "--json",
    )
    summary = json.loads(res.stdout)
    assert (summary["lost"], summary["filled_by_upgrade"]) == (2, 0), res.stderr
    assert lost_of(tmp_path / "b") == [("[31]", "NEW-31"), ("[5]", "USER-5")]
    assert lost_of(tmp_path / "b", "_recovery_filled") == []


def test_without_migrations_the_upgrades_values_are_listed_not_lost(tmp_path: Path) -> None:
    """Without migrations nothing tells C-7 (the upgrade's) from USER-5 (a user's) in rows whose
    old columns are unchanged: all 30 are "filled by the upgrade, not verified"; only the new
    row's value is lost, and the exit code is the one without them."""
    _ini, backup, live = world(tmp_path)
    res = cli("diff", backup, live, "--since", DEPLOY, "--json")
    t = json.loads(res.stdout)["tables"]["items"]
    assert (t["changed_only_in_new_columns"], t["values_at_risk"], t["filled_by_upgrade"]) == (
        0,
        0,
        30,
    )
    res = cli("extract", backup, live, "--since", DEPLOY, "--out", tmp_path / "b", "--json")
    summary = json.loads(res.stdout)
    assert (summary["lost"], summary["filled_by_upgrade"]) == (1, 30), res.stderr
    assert lost_of(tmp_path / "b") == [("[31]", "NEW-31")]
    filled = lost_of(tmp_path / "b", "_recovery_filled")
    assert ("[7]", "C-7") in filled and ("[5]", "USER-5") in filled and len(filled) == 30


def test_sample_world_lost_values_agree_with_and_without_migrations(tmp_path: Path) -> None:
    """The sample world (bb001 fills parts.file_id, bb003 adds quotes.discount_pct): the file ids
    the upgrade wrote are never lost; the discount a user set after the deploy is, either way."""
    from recovery.sample import app_dir

    assert cli("sample", tmp_path / "w", "--parts", "60").returncode == 0
    w = tmp_path / "w"
    backup = next(w.glob("gestima.db.bak.*"))
    out = {}
    for name, extra in (("plain", ()), ("replayed", ("--alembic-ini", app_dir() / "alembic.ini"))):
        res = cli("extract", backup, w / "gestima.db", "--out", tmp_path / name, "--json", *extra)
        assert res.returncode in (0, 1), res.stderr
        out[name] = json.loads(res.stdout)
        assert out[name]["counts"]["parts"].get("lost", 0) == 0
        assert out[name]["counts"]["quotes"]["lost"] >= 1
    assert out["plain"]["lost"] == out["replayed"]["lost"]
