"""``recovery extract`` end to end on the sample world (issue 4): the bundle holds exactly what
world.json says users did after the deploy, its plan re-imports into a copy of the backup within
every old-schema constraint, lost values are listed exactly, inputs are never written, and a
tampered bundle is refused."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from bundle_helpers import apply_to_copy, check_constraints, ro, rows_by_key, sha256
from click.testing import CliRunner

from recovery.bundle.store import open_bundle
from recovery.cli import main
from recovery.errors import RecoveryError
from recovery.bundle.extract import ExtractResult, extract

ALEMBIC_INI = Path(__file__).resolve().parents[1] / "sample_dbs" / "app" / "alembic.ini"
MAPPING = """\
[tables.parts.columns]
price = "price_cents / 100.0"
[tables.quotes.columns]
customer = "customer_name"
"""


def _inputs(world: Path) -> tuple[Path, Path, dict[str, Any]]:
    truth = json.loads((world / "world.json").read_text())
    return world / truth["backup"], world / truth["live"], truth


def _input_hashes(world: Path) -> dict[str, str]:
    names = ["gestima.db", "gestima.db-wal", "gestima.db.bak.20261120_140000"]
    return {n: sha256(world / n) for n in names if (world / n).exists()}


@pytest.fixture(scope="module")
def full(
    world: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExtractResult, dict[str, str], dict[str, str]]:
    """The full extract (lineage from the app's migrations, uploads copied) and the inputs' hashes
    before and after it."""
    backup, live, _ = _inputs(world)
    before = _input_hashes(world)
    out = tmp_path_factory.mktemp("extract") / "bundle"
    result = extract(backup, live, out, alembic_ini=ALEMBIC_INI, uploads=world / "uploads")
    return result, before, _input_hashes(world)


@pytest.fixture(scope="module")
def applied(full, world: Path, tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    result, _, _ = full
    backup, _, _ = _inputs(world)
    conn = apply_to_copy(
        result.bundle.path,
        backup,
        tmp_path_factory.mktemp("apply") / "target.db",
        apply_deletes=True,
    )
    yield conn
    conn.close()


def _keys(conn: sqlite3.Connection, table: str, kinds: tuple[str, ...]) -> set[int]:
    marks = ",".join("?" * len(kinds))
    return {
        r[0]
        for r in conn.execute(f'SELECT id FROM "{table}" WHERE _recovery_kind IN ({marks})', kinds)
    }


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# ---------------------------------------------------------------- bundle content


def test_bundle_holds_exactly_the_post_deploy_changes(full, world: Path) -> None:
    result, _, _ = full
    _, _, truth = _inputs(world)
    rows, base = ro(result.bundle.rows_db), ro(result.bundle.base_db)
    try:
        for table in _tables(rows) - {"_recovery_lost", "_recovery_filled"}:
            want = truth["tables"].get(table, {"inserted": [], "updated": [], "deleted": []})
            assert _keys(rows, table, ("inserted",)) == {k[0] for k in want["inserted"]}, table
            assert _keys(rows, table, ("updated",)) == {k[0] for k in want["updated"]}, table
            if table in _tables(base):
                assert _keys(base, table, ("deleted",)) == {k[0] for k in want["deleted"]}, table
                # every updated row has its backup image
                assert _keys(base, table, ("updated",)) == {k[0] for k in want["updated"]}, table
            else:
                assert not want["deleted"], table
        assert set(truth["tables"]) <= _tables(rows)
        # a full extract needs no FK closure: every new parent is itself an inserted row
        for table in _tables(rows) - {"_recovery_lost", "_recovery_filled"}:
            assert _keys(rows, table, ("closure",)) == set(), table
        # a parent that exists in the backup (part 10, made before the deploy) is referenced, not copied
        pr_parts = {r[0] for r in rows.execute("SELECT part_id FROM production_records")}
        bundled_parts = _keys(rows, "parts", ("inserted", "updated", "closure"))
        old_parents = {p for p in pr_parts if p <= truth["generator"]["parts"]} - bundled_parts
        assert old_parents, "the world should have production records of pre-deploy parts"
        # rows.db is in the new schema, base.db in the old one
        assert "price_cents" in [r[1] for r in rows.execute("PRAGMA table_info(parts)")]
        assert "price" in [r[1] for r in base.execute("PRAGMA table_info(parts)")]
        assert "customer_name" in [r[1] for r in rows.execute("PRAGMA table_info(quotes)")]
    finally:
        rows.close()
        base.close()


def test_manifest_records_schemas_sources_and_counts(full, world: Path) -> None:
    result, _, _ = full
    backup, live, truth = _inputs(world)
    m = result.bundle.manifest
    assert m["format"] == "recovery-bundle/1"
    assert m["tool_version"]
    assert m["deploy_time"] == truth["deploy_time"]
    assert m["sources"]["backup"]["sha256"] == sha256(backup)
    assert m["sources"]["live"]["sha256"] == sha256(live)
    assert m["sources"]["live"]["wal_sha256"] == sha256(live.with_name(live.name + "-wal"))
    assert m["sources"]["backup"]["alembic_revision"] == truth["revisions"]["old"]
    assert m["sources"]["live"]["alembic_revision"] == truth["revisions"]["new"]
    assert "price" in [c["name"] for c in m["schemas"]["old"]["tables"]["parts"]["columns"]]
    assert "price_cents" in [c["name"] for c in m["schemas"]["new"]["tables"]["parts"]["columns"]]
    assert set(m["schemas"]["new"]["tables"]) >= {"production_records", "parts"}
    for table, change in truth["tables"].items():
        c = m["counts"][table]
        assert (c["inserted"], c["updated"], c["deleted"]) == tuple(
            len(change[k]) for k in ("inserted", "updated", "deleted")
        )
    assert sum(c.get("lost", 0) for c in m["counts"].values()) == len(truth["lost"])
    assert {"rows.db", "base.db", "reimport.sql"} <= set(m["hashes"])


def test_lineage_from_alembic_with_stub_reported(full) -> None:
    result, _, _ = full
    m = result.bundle.manifest
    assert m["lineage"]["stubs"] == ["bb003_quote_discount_pct"]
    sources = {
        t: {c["column"]: (c["source"], c["expression"]) for c in v["columns"]}
        for t, v in m["mapping"].items()
    }
    assert sources["parts"]["price"] == ("migration-lineage", '"price_cents" / 100.0')
    assert sources["quotes"]["customer"] == ("migration-lineage", '"customer_name"')
    assert sources["parts"]["notes"][0] == "none"
    tp = result.plan.table("parts")
    assert {c.column: c.source for c in tp.columns}["price"] == "migration-lineage"


# ---------------------------------------------------------------- re-import into a backup copy


def test_reimport_satisfies_old_schema_constraints(applied: sqlite3.Connection) -> None:
    check_constraints(applied)


def _projected(table: str, live_row: dict[str, Any], old_cols: list[str]) -> dict[str, Any]:
    out = {}
    for c in old_cols:
        if table == "parts" and c == "price":
            out[c] = live_row["price_cents"] / 100.0
        elif table == "quotes" and c == "customer":
            out[c] = live_row["customer_name"]
        elif table == "parts" and c == "notes":
            continue  # dropped by bb006: no source
        else:
            out[c] = live_row[c]
    return out


def test_reimport_carries_every_change_in_the_old_projection(
    applied: sqlite3.Connection, world: Path
) -> None:
    backup, live, truth = _inputs(world)
    lconn, bconn = ro(live), ro(backup)
    try:
        for table, change in truth["tables"].items():
            if table == "production_records":
                assert "production_records" not in _tables(applied)
                continue
            old_cols = [r[1] for r in applied.execute(f'PRAGMA main.table_info("{table}")')]
            target = rows_by_key(applied, f'main"."{table}')
            lrows, brows = rows_by_key(lconn, table), rows_by_key(bconn, table)
            for k in [tuple(k) for k in change["inserted"] + change["updated"]]:
                got = {
                    c: v for c, v in target[k].items() if not (table == "parts" and c == "notes")
                }
                assert got == _projected(table, lrows[k], old_cols), (table, k)
            for k in [tuple(k) for k in change["updated"]]:
                if table == "parts":
                    assert target[k]["notes"] == brows[k]["notes"], (
                        k
                    )  # the old-only column keeps the backup value
                unchanged = set(old_cols) - set(truth["updated_columns"][table][str(k[0])])
                for c in unchanged:
                    assert target[k][c] == brows[k][c], (table, k, c)
            for k in [tuple(k) for k in change["inserted"]]:
                if table == "parts":
                    assert target[k]["notes"] is None
            for k in [tuple(k) for k in change["deleted"]]:
                assert k not in target, (table, k)
            touched = {
                tuple(k)
                for v in change.values()
                if isinstance(v, list) and v and isinstance(v[0], list)
                for k in v
            }
            for k, row in brows.items():
                if k not in touched:
                    assert target[k] == row, (table, k)
    finally:
        lconn.close()
        bconn.close()


def test_price_cents_carries_back_to_the_original_real_price(
    applied: sqlite3.Connection, world: Path
) -> None:
    backup, live, truth = _inputs(world)
    edited = {int(k) for k, cols in truth["updated_columns"]["parts"].items() if "price" in cols}
    lconn, bconn = ro(live), ro(backup)
    try:
        bprice = dict(bconn.execute("SELECT id, price FROM parts"))
        lcents = dict(lconn.execute("SELECT id, price_cents FROM parts"))
        tprice = dict(applied.execute("SELECT id, price FROM main.parts"))
    finally:
        lconn.close()
        bconn.close()
    assert edited
    for pid, price in bprice.items():
        if pid in edited:
            assert tprice[pid] == lcents[pid] / 100.0
            assert tprice[pid] != price
        else:
            assert (
                lcents[pid] / 100.0 == price
            )  # the mapping expression is exact on 2-decimal prices
            assert tprice[pid] == price and type(tprice[pid]) is float


def test_lost_values_equal_world_json(full, world: Path) -> None:
    result, _, _ = full
    _, _, truth = _inputs(world)
    conn = ro(result.bundle.rows_db)
    try:
        got = sorted(
            (t, json.loads(k)[0], c, v, label)
            for t, k, label, c, v in conn.execute(
                'SELECT "table", "key", label, "column", value FROM _recovery_lost'
            )
        )
    finally:
        conn.close()
    want = sorted(
        (v["table"], v["key"]["id"], v["column"], v["value"], v["label"]) for v in truth["lost"]
    )
    assert got == want


def test_reimport_sql_is_written_and_parses(full) -> None:
    result, _, _ = full
    text = (result.bundle.path / "reimport.sql").read_text()
    assert text == result.plan.to_sql("sqlite")
    trees = [t for t in sqlglot.parse(text, read="sqlite") if t is not None]
    kinds = {type(t).__name__ for t in trees}
    assert {"Insert", "Update"} <= kinds
    # the deletes are there for review, commented out: the file never deletes when run as it is
    assert "Delete" not in kinds and "\n-- DELETE FROM" in text
    assert '"price_cents" / 100.0' in text and "[migration-lineage]" in text


def test_plan_renders_valid_postgres(full) -> None:
    result, _, _ = full
    stmts = result.plan.statements(apply_deletes=True)
    assert stmts
    for stmt in stmts:
        text = stmt.sql(dialect="postgres")
        parsed = [t for t in sqlglot.parse(text, read="postgres") if t is not None]
        assert len(parsed) == 1 and type(parsed[0]) is type(stmt), text
        assert " IS NOT " not in text.upper().replace(
            "IS NOT DISTINCT", ""
        )  # SQLite-only IS / IS NOT
    whole = result.plan.to_sql("postgres")
    live = [s for s in stmts if not isinstance(s, sqlglot.exp.Delete)]  # deletes are commented out
    assert (
        len([t for t in sqlglot.parse(whole, read="postgres") if t is not None]) == len(live) + 2
    )  # BEGIN, COMMIT


def test_reimport_sql_runs_as_a_script(full, world: Path, tmp_path: Path) -> None:
    """The reviewable SQL is also runnable: sqlite3 with the bundle attached applies it cleanly."""
    result, _, _ = full
    backup, _, truth = _inputs(world)
    target = tmp_path / "t.db"
    shutil.copyfile(backup, target)
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("ATTACH ? AS bundle", (str(result.bundle.rows_db),))
        conn.execute("ATTACH ? AS base", (str(result.bundle.base_db),))
        conn.executescript((result.bundle.path / "reimport.sql").read_text())
        check_constraints(conn)
        n = conn.execute("SELECT COUNT(*) FROM main.parts").fetchone()[0]
        assert n == truth["counts"]["live"]["parts"]
    finally:
        conn.close()
    open_bundle(result.bundle.path)  # attaching and reading did not alter the bundle


# ---------------------------------------------------------------- inputs, output folder, mapping errors


def test_extract_never_writes_its_inputs(full) -> None:
    _, before, after = full
    assert "gestima.db-wal" in before
    assert before == after


def test_rename_source_order_of_trust(world: Path, tmp_path: Path) -> None:
    backup, live, _ = _inputs(world)
    plain = extract(backup, live, tmp_path / "plain")
    src = {c.column: c.source for c in plain.plan.table("quotes").columns}
    assert src["customer"] == "rename-detected"
    # parts.price has no declared source without a mapping: inferred from the unchanged rows
    assert {c.column: c.source for c in plain.plan.table("parts").columns}["price"] == "inferred"
    assert not any("parts.price" in e for e in plain.plan.errors)
    assert plain.bundle.manifest["planning_errors"] == list(plain.plan.errors)
    assert "parts.price <- " in (plain.bundle.path / "reimport.sql").read_text()

    mp = tmp_path / "mapping.toml"
    mp.write_text(MAPPING)
    user = extract(backup, live, tmp_path / "user", mapping=mp, alembic_ini=ALEMBIC_INI)
    assert not user.plan.errors
    for t, c in (("quotes", "customer"), ("parts", "price")):
        assert {x.column: x.source for x in user.plan.table(t).columns}[c] == "user-mapping"


def test_mapping_with_unknown_column_is_refused(world: Path, tmp_path: Path) -> None:
    backup, live, _ = _inputs(world)
    mp = tmp_path / "bad.toml"
    mp.write_text('[tables.parts.columns]\nprice = "price_cent / 100.0"\n')
    with pytest.raises(RecoveryError) as err:
        extract(backup, live, tmp_path / "b", mapping=mp)
    msg = err.value.message
    assert "[tables.parts.columns] price" in msg and "price_cent" in msg and str(mp) in msg
    assert err.value.exit_code == 2
    assert not (tmp_path / "b").exists()
    res = CliRunner().invoke(
        main,
        ["extract", str(backup), str(live), "--out", str(tmp_path / "c"), "--mapping", str(mp)],
    )
    assert res.exit_code == 2, res.output
    assert "price_cent" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "c").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.toml"]  # no partial folders left behind


def test_out_folder_not_empty_is_refused(world: Path, tmp_path: Path) -> None:
    backup, live, _ = _inputs(world)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = CliRunner().invoke(main, ["extract", str(backup), str(live), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "not empty" in res.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (
        out / "keep.txt"
    ).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_extract_json_exit_1_when_values_are_lost(world: Path, tmp_path: Path) -> None:
    backup, live, truth = _inputs(world)
    res = CliRunner().invoke(
        main,
        [
            "extract",
            str(backup),
            str(live),
            "--out",
            str(tmp_path / "b"),
            "--alembic-ini",
            str(ALEMBIC_INI),
            "--json",
        ],
    )
    assert res.exit_code == 1, res.output
    summary = json.loads(res.output)
    assert summary["lost"] == len(truth["lost"]) and summary["planning_errors"] == []
    open_bundle(tmp_path / "b")


# ---------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "victim",
    ["rows.db", "base.db", "manifest.json", "file", "reimport.sql", "missing file", "added file"],
)
def test_tampered_bundle_is_refused(full, tmp_path: Path, victim: str) -> None:
    result, _, _ = full
    b = shutil.copytree(result.bundle.path, tmp_path / "b")
    open_bundle(b)  # an untouched copy opens
    if victim in ("rows.db", "base.db"):
        conn = sqlite3.connect(b / victim)
        table = "quotes"
        conn.execute(
            f"UPDATE {table} SET status = 'tampered' WHERE rowid = (SELECT min(rowid) FROM {table})"
        )
        conn.commit()
        conn.close()
    elif victim == "manifest.json":
        m = json.loads((b / "manifest.json").read_text())
        m["counts"]["parts"]["inserted"] += 1
        (b / "manifest.json").write_text(json.dumps(m, indent=2))
    elif victim == "reimport.sql":
        with (b / "reimport.sql").open("a") as fh:
            fh.write("DELETE FROM parts;\n")
    elif victim == "added file":
        (b / "files" / "planted.pdf").write_bytes(b"%PDF-1.4 not from the live uploads")
    else:
        f = next(p for p in sorted((b / "files").rglob("*")) if p.is_file())
        if victim == "missing file":
            f.unlink()
        else:
            f.write_bytes(f.read_bytes() + b"x")
    with pytest.raises(RecoveryError) as err:
        open_bundle(b)
    assert err.value.exit_code == 2


def test_manifest_edit_with_matching_sha_file_is_still_refused(full, tmp_path: Path) -> None:
    """Rewriting manifest.sha256 to match an edited manifest does not hide an edited rows.db."""
    result, _, _ = full
    b = shutil.copytree(result.bundle.path, tmp_path / "b")
    conn = sqlite3.connect(b / "rows.db")
    conn.execute("DELETE FROM parts WHERE rowid = (SELECT min(rowid) FROM parts)")
    conn.commit()
    conn.close()
    with pytest.raises(RecoveryError, match=r"rows\.db"):
        open_bundle(b)


# ---------------------------------------------------------------- files


def test_post_deploy_files_are_copied_with_matching_hashes(full, world: Path) -> None:
    result, truth = full[0], _inputs(world)[2]
    report = result.bundle.manifest["files"]
    assert truth["files"]
    by_key = {r["record_key"]: r for r in report["records"]}
    for f in truth["files"]:
        copy = result.bundle.files_dir / f["path"]
        assert copy.is_file(), f["path"]
        assert sha256(copy) == f["sha256"] == sha256(world / "uploads" / f["path"])
        assert by_key[f["record_id"]]["status"] == "copied"
        assert result.bundle.manifest["hashes"]["files/" + f["path"]] == f["sha256"]
    assert report["unsafe"] == []


def test_unsafe_stored_paths_are_reported_never_read(world_copy: Path, tmp_path: Path) -> None:
    backup, live, truth = _inputs(world_copy)
    secret = world_copy.parent / "secret.txt"  # what ../secret.txt from uploads/ would reach
    secret.write_text("TOP SECRET")
    abs_secret = tmp_path / "abs-secret.txt"
    abs_secret.write_text("ABSOLUTE SECRET")
    r1, r2 = truth["files"][0]["record_id"], truth["files"][1]["record_id"]
    # a stored path that is relative and clean but whose file is a symlink leading outside uploads/
    r3, link = truth["files"][2]["record_id"], world_copy / "uploads" / truth["files"][2]["path"]
    link.unlink()
    link.symlink_to(secret)
    conn = sqlite3.connect(live)
    conn.execute("UPDATE file_records SET path = ? WHERE id = ?", ("../secret.txt", r1))
    conn.execute("UPDATE file_records SET path = ? WHERE id = ?", (str(abs_secret), r2))
    conn.commit()
    conn.close()
    res = extract(
        backup, live, tmp_path / "b", alembic_ini=ALEMBIC_INI, uploads=world_copy / "uploads"
    )
    report = res.bundle.manifest["files"]
    unsafe = {u["record_key"]: u for u in report["unsafe"]}
    assert set(unsafe) == {r1, r2, r3}
    assert all(u["status"] == "unsafe" for u in unsafe.values())
    assert not (res.bundle.files_dir / truth["files"][2]["path"]).exists()
    for p in res.bundle.path.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert b"TOP SECRET" not in data and b"ABSOLUTE SECRET" not in data, p
    # the other post-deploy files are still copied
    for f in truth["files"][3:]:
        assert sha256(res.bundle.files_dir / f["path"]) == f["sha256"]
