"""``recovery check`` (revision verdicts from scratch runs) and ``recovery rehearse`` (a whole
rollback on scratch copies, checked round trip)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recovery.cli import main
from recovery.verify.rehearse import TERMINAL_LIMIT

ROOT = Path(__file__).resolve().parents[1]
APP_INI = ROOT / "sample_dbs" / "app" / "alembic.ini"


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.output


def backup_of(world: Path) -> Path:
    return next(world.glob("gestima.db.bak.*"))


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# check on the sample app


@pytest.fixture(scope="module")
def sample_check(request: pytest.FixtureRequest) -> tuple[int, dict]:
    """``check`` from the sample world's backup revision to head. The committed world's backup
    (opened read-only) spares a worker that runs no rehearsal from generating a world."""
    committed = ROOT / "sample_dbs" / "world"
    world = (
        committed if any(committed.glob("gestima.db.bak.*")) else request.getfixturevalue("world")
    )
    code, out = run("check", "--alembic-ini", APP_INI, "--db", backup_of(world), "--json")
    return code, json.loads(out)


def by_rev(data: dict, prefix: str) -> dict:
    return next(r for r in data["revisions"] if r["revision"].startswith(prefix))


def losses(rev: dict) -> set[tuple[str, str | None]]:
    return {(x["table"], x["column"]) for x in rev["losses"]}


def test_check_range_and_exit_code(sample_check: tuple[int, dict]) -> None:
    code, data = sample_check
    assert code == 1 and data["format"] == "recovery-check/1" and data["ok"] is False
    assert (
        data["from"] == "aa001_add_drawing_number_drop_drawings"
        and data["to"] == "bb006_drop_parts_notes"
    )
    assert [r["revision"][:5] for r in data["revisions"]] == [
        "bb001",
        "bb002",
        "bb003",
        "bb004",
        "bb005",
        "bb006",
    ]
    for r in data["revisions"]:
        # batch-mode rebuilds read as column changes: no table is "dropped" in this range
        assert not [c for c in r["upgrade"]["changes"] if c["kind"] == "table_dropped"], r[
            "revision"
        ]
        assert r["upgrade"]["cross_check"] == [], r["revision"]


def test_stub_downgrade_flagged_with_suggested_reverse(sample_check: tuple[int, dict]) -> None:
    bb003 = by_rev(sample_check[1], "bb003")
    assert bb003["downgrade"]["kind"] == "stub" and bb003["verdict"] == "needs manual SQL"
    assert "column quotes.discount_pct is left behind" in bb003["downgrade"]["differences"]
    rev = bb003["suggested_reverse"]
    assert 'ALTER TABLE "quotes" DROP COLUMN "discount_pct"' in rev["sql"]
    assert 'op.drop_column("quotes", "discount_pct")' in rev["alembic"]
    assert rev["mechanical"] and rev["verified"], rev["problems"]
    assert ("quotes", "discount_pct") in losses(bb003)


def test_rename_and_unit_change_show_lineage(sample_check: tuple[int, dict]) -> None:
    bb002 = by_rev(sample_check[1], "bb002")
    assert {
        "kind": "column_renamed",
        "table": "quotes",
        "column": "customer_name",
        "detail": "from customer",
    } in bb002["upgrade"]["changes"]
    assert bb002["upgrade"]["lineage"] == {"quotes": {"customer_name": '"quotes"."customer"'}}
    assert bb002["downgrade"]["lineage"] == {"quotes": {"customer": '"quotes"."customer_name"'}}
    assert bb002["verdict"] == "safe" and bb002["downgrade"]["kind"] == "full"

    bb004 = by_rev(sample_check[1], "bb004")
    kinds = {(c["kind"], c["column"]) for c in bb004["upgrade"]["changes"]}
    assert {
        ("data_migrated", "price_cents"),
        ("column_added", "price_cents"),
        ("column_dropped", "price"),
    } <= kinds
    assert (
        bb004["upgrade"]["lineage"]["parts"]["price_cents"]
        == 'CAST(ROUND("parts"."price" * 100) AS INTEGER)'
    )
    assert bb004["downgrade"]["lineage"]["parts"]["price"] == '"parts"."price_cents" / 100.0'
    assert bb004["verdict"] == "safe" and not bb004["losses"]


def test_new_and_dropped_columns_are_losses(sample_check: tuple[int, dict]) -> None:
    data = sample_check[1]
    assert ("parts", "file_id") in losses(by_rev(data, "bb001"))
    assert ("production_records", None) in losses(by_rev(data, "bb005"))
    assert ("parts", "notes") in losses(by_rev(data, "bb006"))
    for prefix in ("bb001", "bb005", "bb006"):
        assert by_rev(data, prefix)["verdict"] == "loses data on downgrade"


def test_check_table_output_and_bad_input() -> None:
    code, out = run(
        "check",
        "--alembic-ini",
        APP_INI,
        "--from",
        "bb002_rename_quote_customer",
        "--to",
        "bb003_quote_discount_pct",
    )
    assert (
        code == 1 and "bb003_quote_discount_pct: suggested downgrade (verified on scratch)" in out
    )
    assert 'op.drop_column("quotes", "discount_pct")' in out
    code, out = run("check", "--alembic-ini", APP_INI, "--from", "no_such_revision")
    assert code == 2 and "no_such_revision" in out


# ---------------------------------------------------------------------------------------------
# check on a migration written here


ENV_PY = """
from alembic import context
from sqlalchemy import create_engine, pool

config = context.config


def run():
    passed = config.attributes.get("connection")
    if passed is not None:
        context.configure(connection=passed, target_metadata=None, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=None, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
"""

REVISION = '''
"""{doc}"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''


def tiny_project(
    folder: Path, third_downgrade: str = 'op.drop_index("ix_items_name", table_name="items")'
) -> Path:
    (folder / "versions").mkdir(parents=True)
    (folder / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s\nsqlalchemy.url = sqlite:///app.db\n",
        encoding="utf-8",
    )
    (folder / "env.py").write_text(ENV_PY, encoding="utf-8")
    revs = [
        (
            "r1",
            None,
            "items",
            (
                'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), '
                'sa.Column("name", sa.String(50), nullable=False))'
            ),
            'op.drop_table("items")',
        ),
        (
            "r2",
            "r1",
            "items.notes",
            (
                'with op.batch_alter_table("items") as b:\n    b.add_column(sa.Column("notes", sa.Text))\n'
                'op.execute("UPDATE items SET notes = name")'
            ),
            'with op.batch_alter_table("items") as b:\n    b.drop_column("notes")',
        ),
        (
            "r3",
            "r2",
            "index on items.name",
            'op.create_index("ix_items_name", "items", ["name"])',
            third_downgrade,
        ),
    ]
    for rev, down, doc, up, dn in revs:
        (folder / "versions" / f"{rev}.py").write_text(
            REVISION.format(
                doc=doc,
                rev=rev,
                down=down,
                upgrade=textwrap.indent(up, "    "),
                downgrade=textwrap.indent(dn, "    "),
            ),
            encoding="utf-8",
        )
    return folder / "alembic.ini"


def test_check_names_a_populated_column_the_downgrade_drops(tmp_path: Path) -> None:
    ini = tiny_project(tmp_path / "app")
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY);"
        "INSERT INTO alembic_version VALUES ('r1');"
    )
    conn.close()
    code, out = run("check", "--alembic-ini", ini, "--db", db, "--json")
    data = json.loads(out)
    assert code == 1 and data["from"] == "r1" and data["to"] == "r3"
    r2 = by_rev(data, "r2")
    assert r2["verdict"] == "loses data on downgrade" and r2["downgrade"]["kind"] == "full"
    assert ("items", "notes") in losses(r2)
    assert {
        "kind": "data_migrated",
        "table": "items",
        "column": "notes",
        "detail": "notes = name",
    } in r2["upgrade"]["changes"]
    assert by_rev(data, "r3")["verdict"] == "safe"
    code, out = run("check", "--alembic-ini", ini, "--from", "r1", "--to", "r2")
    assert code == 1 and "items.notes" in out
    code, out = run("check", "--alembic-ini", ini, "--from", "r2")
    assert code == 0, out


def test_check_flags_a_not_implemented_downgrade(tmp_path: Path) -> None:
    ini = tiny_project(tmp_path / "app", third_downgrade='raise NotImplementedError("no way back")')
    code, out = run("check", "--alembic-ini", ini, "--from", "r2", "--json")
    r3 = by_rev(json.loads(out), "r3")
    assert code == 1 and r3["downgrade"]["kind"] == "stub" and r3["verdict"] == "needs manual SQL"
    assert r3["suggested_reverse"]["sql"] == ['DROP INDEX IF EXISTS "ix_items_name"']
    assert r3["suggested_reverse"]["verified"]


# ---------------------------------------------------------------------------------------------
# rehearse


def test_rehearse_passes_lists_the_losses_and_leaves_live_files_alone(
    world_copy: Path, tmp_path: Path
) -> None:
    before = tree_digest(world_copy)
    run_dir = tmp_path / "rehearsal"
    code, out = run(
        "rehearse",
        world_copy / "gestima.db",
        "--backup",
        backup_of(world_copy),
        "--alembic-ini",
        APP_INI,
        "--uploads",
        world_copy / "uploads",
        "--out",
        run_dir,
    )
    assert code == 0, out
    assert "Rollback test: PASS" in out
    assert tree_digest(world_copy) == before  # -wal and -shm included

    report = json.loads((run_dir / "rehearsal.json").read_text(encoding="utf-8"))
    assert report["result"] == "PASS" and report["reasons"] == []
    truth = json.loads((world_copy / "world.json").read_text(encoding="utf-8"))["lost"]

    def norm(x: dict) -> tuple:
        key = list(x["key"].values()) if isinstance(x["key"], dict) else x["key"]
        return x["table"], json.dumps(key), x["column"], json.dumps(x["value"])

    assert sorted(map(norm, report["losses"])) == sorted(map(norm, truth))
    assert report["losses_total"] == len(truth) and report["losses_truncated"] is False
    assert report["losses_by_table"] == dict(Counter(x["table"] for x in truth))
    assert sum(report["losses_by_reason"].values()) == len(truth)
    assert report["losses_file"] == str(run_dir / "lost_values.csv")
    assert report["checks"]["alembic_revision"]["ok"]
    for name in ("report.json", "lost_values.csv", "report.md", "rehearsal.md", "journal.json"):
        assert (run_dir / name).is_file(), name
    # the terminal shows the first 20 and says where the rest is; rehearsal.md has them all
    assert len(truth) > TERMINAL_LIMIT
    assert f"would-be losses ({len(truth)}, first {TERMINAL_LIMIT} shown)" in out
    assert (
        f"… and {len(truth) - TERMINAL_LIMIT} more would-be losses: {run_dir / 'lost_values.csv'}"
        in out
    )
    md = (run_dir / "rehearsal.md").read_text(encoding="utf-8")
    assert f"## Would-be losses ({len(truth)})" in md and "more in lost_values.csv" not in md
    assert sum(
        line.startswith("| production_records |") or line.startswith("| quotes |")
        for line in md.splitlines()
    ) == len(truth)


def rehearse_sabotaged(
    monkeypatch: pytest.MonkeyPatch,
    world_copy: Path,
    tmp_path: Path,
    *statements: tuple[str, tuple[Any, ...]],
) -> Any:
    """``rehearse`` on ``world_copy`` whose rollback is followed by ``statements`` (SQL, params) on
    the rolled-back copy: a broken rollback the rehearsal must catch."""
    import recovery.pipeline as pipeline
    from recovery.verify.rehearse import rehearse

    real = pipeline.rollback

    def sabotaged(db, *args, **kwargs):
        res = real(db, *args, **kwargs)
        conn = sqlite3.connect(db)
        for stmt, params in statements:
            conn.execute(stmt, params)
        conn.commit()
        conn.close()
        return res

    monkeypatch.setattr(pipeline, "rollback", sabotaged)
    return rehearse(
        world_copy / "gestima.db",
        backup_of(world_copy),
        APP_INI,
        tmp_path / "run",
        world_copy / "uploads",
    )


def test_rehearse_fails_when_a_backup_row_goes_missing(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = rehearse_sabotaged(
        monkeypatch,
        world_copy,
        tmp_path,
        ("DELETE FROM materials WHERE id = (SELECT min(id) FROM materials)", ()),
    )
    assert not result.passed and result.exit_code == 1
    assert any("materials: 1 backup row(s) missing" in r for r in result.reasons), result.reasons
    assert json.loads((tmp_path / "run" / "rehearsal.json").read_text())["result"] == "FAIL"


def test_rehearse_fails_when_an_untouched_backup_row_is_altered(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup row nobody changed after the deploy must come back identical; one updated after
    the deploy (its backup image is in the bundle's base.db) may differ."""
    parts = json.loads((world_copy / "world.json").read_text())["tables"]["parts"]
    updated = parts["updated"][0][0]
    touched = {k[0] for kind in ("inserted", "updated", "deleted") for k in parts[kind]}
    untouched = min(set(range(1, 200)) - touched)
    result = rehearse_sabotaged(
        monkeypatch,
        world_copy,
        tmp_path,
        ("UPDATE parts SET name = name || ' (sabotaged)' WHERE id IN (?, ?)", (updated, untouched)),
    )
    assert not result.passed
    assert result.checks["backup_rows"]["parts"] == {
        "rows": result.checks["backup_rows"]["parts"]["rows"],
        "missing": 0,
        "altered": 1,
    }
    assert (
        f"parts: 1 backup row(s) nobody changed after the deploy differ from the backup, e.g. keys "
        f"[[{untouched}]]" in result.reasons
    ), result.reasons


def test_rehearse_fails_when_post_deploy_changes_are_dropped_or_altered(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = json.loads((world_copy / "world.json").read_text())
    new_part = world["tables"]["parts"]["inserted"][0][0]
    new_quote = world["tables"]["quotes"]["inserted"][0][0]
    result = rehearse_sabotaged(
        monkeypatch,
        world_copy,
        tmp_path,
        ("DELETE FROM quote_items WHERE part_id = ?", (new_part,)),
        ("DELETE FROM file_records WHERE entity_type = 'part' AND entity_id = ?", (new_part,)),
        ("DELETE FROM parts WHERE id = ?", (new_part,)),
        ("UPDATE quotes SET status = 'sabotaged' WHERE id = ?", (new_quote,)),
    )
    assert not result.passed
    assert any(
        r.startswith("parts: 1 post-deploy row(s) neither carried") and f"[{new_part}]" in r
        for r in result.reasons
    ), result.reasons
    assert any(
        r.startswith("quotes: 1 post-deploy row(s) carried with other values") and "'status'" in r
        for r in result.reasons
    ), result.reasons


def lost_csv(run_dir: Path) -> list[dict]:
    with (run_dir / "lost_values.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_rehearse_holds_a_bounded_sample_with_exact_totals(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More losses than the sample: the first N (lost_values.csv's order) are listed, the totals
    are exact, the files say where the rest is — and the round-trip check, which no longer reads
    the list, still passes (a check against the sample would call the rest unlisted)."""
    import recovery.report.lost

    monkeypatch.setattr(
        recovery.report.lost, "SAMPLE_LIMIT", 5
    )  # the default limit, read at call time
    run_dir = tmp_path / "rehearsal"
    code, out = run(
        "rehearse",
        world_copy / "gestima.db",
        "--backup",
        backup_of(world_copy),
        "--alembic-ini",
        APP_INI,
        "--uploads",
        world_copy / "uploads",
        "--out",
        run_dir,
    )
    assert code == 0, out
    truth = json.loads((world_copy / "world.json").read_text(encoding="utf-8"))["lost"]
    report = json.loads((run_dir / "rehearsal.json").read_text(encoding="utf-8"))
    assert report["result"] == "PASS" and report["reasons"] == []
    assert report["losses_total"] == len(truth) == 27 and report["losses_truncated"] is True
    assert (
        report["losses_by_table"]
        == dict(Counter(x["table"] for x in truth))
        == {"production_records": 23, "quotes": 4}
    )
    assert report["losses_by_reason"] == {
        "table not in the old schema": 23,
        "column not in the old schema": 4,
    }
    assert report["checks"]["post_deploy_changes"]["production_records"]["unlisted"] == 0
    every = lost_csv(run_dir)
    assert len(every) == len(truth)
    assert len(report["losses"]) == 5
    assert [(x["table"], x["column"], str(x["value"])) for x in report["losses"]] == [
        (x["table"], x["column"], x["value"]) for x in every[:5]
    ]
    md = (run_dir / "rehearsal.md").read_text(encoding="utf-8")
    assert f"## Would-be losses ({len(truth)})" in md
    assert sum(line.startswith("| production_records |") for line in md.splitlines()) == 5
    assert f"… and {len(truth) - 5} more in lost_values.csv" in md
    assert "first 5 shown" in out and f"… and {len(truth) - 5} more would-be losses" in out
    code, out = run(
        "rehearse",
        world_copy / "gestima.db",
        "--backup",
        backup_of(world_copy),
        "--alembic-ini",
        APP_INI,
        "--out",
        tmp_path / "again",
        "--csv",
    )
    header = "table,key,label,column,value,reason\n"
    assert code == 0 and header in out  # (the progress lines on stderr come first)
    assert len(list(csv.DictReader(io.StringIO(header + out.split(header, 1)[1])))) == len(truth)


def test_rehearse_fails_when_a_row_of_a_new_only_table_is_not_listed_as_lost(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A production_records row (a table the old schema lacks) whose values vanish from the bundle's
    _recovery_lost before it is sealed: the rollback drops it silently; the rehearsal must say so,
    although that row is far outside the (tiny) sample of losses it holds."""
    import recovery.bundle.extract as extract
    from recovery.verify.rehearse import rehearse

    real = extract.record_lost
    gone: list[int] = []

    def forgetful(conn, a, files, counts):
        real(conn, a, files, counts)
        (key,) = conn.execute(
            "SELECT max(json_extract(\"key\", '$[0]')) FROM bnew._recovery_lost "
            "WHERE \"table\" = 'production_records'"
        ).fetchone()
        conn.execute(
            'DELETE FROM bnew._recovery_lost WHERE "table" = \'production_records\' AND "key" = ?',
            (json.dumps([key]),),
        )
        gone.append(key)

    monkeypatch.setattr(extract, "record_lost", forgetful)
    result = rehearse(
        world_copy / "gestima.db",
        backup_of(world_copy),
        APP_INI,
        tmp_path / "run",
        world_copy / "uploads",
        losses_limit=3,
    )
    assert not result.passed and result.exit_code == 1
    assert gone and all(
        x["table"] != "production_records" or x["key"] != [gone[0]] for x in result.losses
    )
    assert result.reasons == [
        (
            f"production_records: 1 post-deploy row(s) of a table the old schema lacks are "
            f"not listed as lost, e.g. keys [[{gone[0]}]]"
        )
    ], result.reasons
    counts = result.checks["post_deploy_changes"]["production_records"]
    assert counts["unlisted"] == 1 and counts["lost"] == counts["rows"] - 1
    assert len(result.losses) == 3 and result.losses_truncated
    assert result.losses_total == len(lost_csv(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "rehearsal.json").read_text())["result"] == "FAIL"
