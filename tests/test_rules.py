"""Column rules checked against the data, rules inferred from it, and values at risk in `diff`.

Every case builds a real backup and a real live SQLite file: the backup as the old release left
it at the deploy (``DEPLOY``), the live file as the new schema holds the same rows (plus whatever a
case's users changed after the deploy, dated by ``updated_at`` where the case says so).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery.compare.diff import analyse
from recovery.errors import RecoveryError
from recovery.compare.evidence import MIN_INFER
from recovery.engine.sqlbuild import qualify_columns, sql
from tests.clirun import invoke

DEPLOY = "2026-11-20T14:00:00"
BEFORE, AFTER = "2026-11-19 10:00:00", "2026-11-20 15:00:00"


def build(path: Path, ddl: str, rows: list[tuple], table: str = "t") -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(ddl)
    if rows:
        conn.executemany(f'INSERT INTO "{table}" VALUES ({",".join("?" * len(rows[0]))})', rows)
    conn.commit()
    conn.close()
    return path


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command, in this process (:mod:`tests.clirun`)."""
    return invoke(*args)


def rule(a: Any, table: str, column: str) -> Any:
    return a.mapping.tables[table].rule(column)


def on_live(r: Any) -> str:
    """The rule's expression over the live row aliased ``n``."""
    return sql(qualify_columns(r.expression, "n"))


# ---------------------------------------------------------------------------------------------
# table-driven: one world per case, one rule judged


PRICE_OLD = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, price REAL, updated_at TEXT);"
PRICE_NEW = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, price_cents INTEGER, updated_at TEXT);"
)
NAME_OLD = "CREATE TABLE t (id INTEGER PRIMARY KEY, full_name TEXT, updated_at TEXT);"
NAME_NEW = "CREATE TABLE t (id INTEGER PRIMARY KEY, first TEXT, last TEXT, updated_at TEXT);"
FIRSTS = ("Jana", "Petr", "Eva", "Karel", "Olga", "Tomas", "Lucie")
LASTS = ("Novak", "Svoboda", "Dvorak", "Cerny", "Kral")


def price_rows(n: int) -> tuple[list[tuple], list[tuple]]:
    cents = [1500 + 37 * i for i in range(1, n + 1)]
    return (
        [(i, f"p{i}", c / 100, BEFORE) for i, c in enumerate(cents, 1)],
        [(i, f"p{i}", c, BEFORE) for i, c in enumerate(cents, 1)],
    )


def edited_after_deploy(n: int) -> tuple[list[tuple], list[tuple]]:
    """Most rows re-priced by users after the deploy (dated): the correct rule still agrees on
    the rows nobody touched."""
    old, new = price_rows(n)
    new = [(i, name, c * 3 + 1, AFTER) if i % 4 else (i, name, c, ts) for i, name, c, ts in new]
    return old, new


def name_rows(n: int) -> tuple[list[tuple], list[tuple]]:
    people = [(FIRSTS[i % len(FIRSTS)], LASTS[(i * 3) % len(LASTS)] + str(i)) for i in range(n)]
    return (
        [(i, f"{f} {last}", BEFORE) for i, (f, last) in enumerate(people, 1)],
        [(i, f, last, BEFORE) for i, (f, last) in enumerate(people, 1)],
    )


def split_rows(n: int) -> tuple[list[tuple], list[tuple]]:
    new, old = name_rows(n)
    return old, new


@dataclass(frozen=True)
class Case:
    name: str
    ddl: tuple[str, str]
    rows: Callable[[int], tuple[list[tuple], list[tuple]]]
    n: int
    mapping: str | None
    column: str
    want_source: str
    want_verdict: str
    want_sql: str | None = None
    refused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case(
        "correct rule",
        (PRICE_OLD, PRICE_NEW),
        price_rows,
        40,
        'price = "price_cents / 100.0"',
        "price",
        "user-mapping",
        "agrees",
        '"price_cents" / 100.0',
    ),
    Case(
        "wrong scale /10 vs /100",
        (PRICE_OLD, PRICE_NEW),
        price_rows,
        40,
        'price = "price_cents / 10.0"',
        "price",
        "user-mapping",
        "disagrees",
        refused=True,
    ),
    Case(
        "wrong rename",
        (PRICE_OLD, PRICE_NEW),
        price_rows,
        40,
        'price = "price_cents"',
        "price",
        "user-mapping",
        "disagrees",
        refused=True,
    ),
    Case(
        "inferred scale",
        (PRICE_OLD, PRICE_NEW),
        price_rows,
        40,
        None,
        "price",
        "inferred",
        "agrees",
        '"price_cents" / 100.0',
    ),
    Case(
        "inferred concatenation",
        (NAME_OLD, NAME_NEW),
        name_rows,
        30,
        None,
        "full_name",
        "inferred",
        "agrees",
        '"first" || \' \' || "last"',
    ),
    Case(
        "inferred split", (NAME_NEW, NAME_OLD), split_rows, 30, None, "last", "inferred", "agrees"
    ),
    Case(
        "same name, new unit: the contradicted same-name rule gives way to an inferred one",
        (PRICE_OLD, PRICE_OLD.replace("price REAL", "price INTEGER")),
        price_rows,
        40,
        None,
        "price",
        "inferred",
        "agrees",
        '"price" / 100.0',
    ),
    Case(
        "too few rows: not inferred",
        (PRICE_OLD, PRICE_NEW),
        price_rows,
        MIN_INFER - 1,
        None,
        "price",
        "none",
        "not inferred",
    ),
    Case(
        "disagrees only on rows edited after the deploy",
        (PRICE_OLD, PRICE_NEW),
        edited_after_deploy,
        60,
        'price = "price_cents / 100.0"',
        "price",
        "user-mapping",
        "agrees",
        '"price_cents" / 100.0',
        extra={"rows_checked": 15},
    ),
]


def _case_files(case: Case, tmp_path: Path) -> tuple[Path, Path, Path | None]:
    """The case's backup and live files (and its mapping file, if it has one) in ``tmp_path``."""
    old_rows, new_rows = case.rows(case.n)
    backup = build(tmp_path / "app.db.bak", case.ddl[0], old_rows)
    live = build(tmp_path / "app.db", case.ddl[1], new_rows)
    mapping = None
    if case.mapping:
        mapping = tmp_path / "map.toml"
        mapping.write_text(f"[tables.t.columns]\n{case.mapping}\n")
    return backup, live, mapping


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule_judged_by_the_data(case: Case, tmp_path: Path) -> None:
    backup, live, mapping = _case_files(case, tmp_path)
    if case.refused:
        with pytest.raises(RecoveryError) as err:
            analyse(backup, live, DEPLOY, mapping)
        assert err.value.exit_code == 2
        assert f"t.{case.column}" in err.value.message and "disagrees" in err.value.message
        assert f"0 of {case.n} unchanged rows agree" in err.value.message
        assert "e.g. key [1]" in err.value.message and "--trust-mapping" in err.value.hint
    with analyse(backup, live, DEPLOY, mapping, trust_mapping=case.refused) as a:
        r = rule(a, "t", case.column)
        assert r.source == case.want_source
        assert r.check is not None and r.check["verdict"] == case.want_verdict
        if case.want_sql is not None:
            assert r.sql.replace('"', "") == case.want_sql.replace('"', "")
        if case.want_verdict == "agrees":
            assert (
                r.check["rows_agreeing"]
                == r.check["rows_checked"]
                >= case.extra.get("rows_checked", MIN_INFER)
            )
            # the rule applied to the live rows gives every backup value of the rows nobody touched
            cur = a.pair.execute(
                f"SELECT count(*) FROM old.t o JOIN new.t n USING (id) "
                f'WHERE julianday(n.updated_at) <= julianday(?) AND o."{case.column}" IS NOT ({on_live(r)})',
                (DEPLOY,),
            )
            assert cur.fetchone()[0] == 0
        if case.refused:
            first = r.check["first_disagreement"]
            assert first["key"] == [1] and first["backup"] != first["live"]
            assert r.check["trusted"] is True
        if case.want_source == "none":
            assert str(MIN_INFER) in r.check["reason"]


def test_split_infers_both_halves(tmp_path: Path) -> None:
    old_rows, new_rows = split_rows(30)
    backup = build(tmp_path / "app.db.bak", NAME_NEW, old_rows)
    live = build(tmp_path / "app.db", NAME_OLD, new_rows)
    with analyse(backup, live, DEPLOY) as a:
        first, last = rule(a, "t", "first"), rule(a, "t", "last")
        assert (first.source, last.source) == ("inferred", "inferred")
        got = a.pair.execute(
            f"SELECT count(*) FROM old.t o JOIN new.t n USING (id) WHERE o.first IS ({on_live(first)}) "
            f"AND o.last IS ({on_live(last)})"
        ).fetchone()[0]
        assert got == 30


def test_two_wrong_rules_in_one_table_are_both_refused(tmp_path: Path) -> None:
    """No row has all *other* columns agreeing, so the per-rule check has no rows: the rules are
    still refused, on the shared rows they contradict."""
    ddl_old = "CREATE TABLE t (id INTEGER PRIMARY KEY, a REAL, b REAL);"
    ddl_new = "CREATE TABLE t (id INTEGER PRIMARY KEY, a2 INTEGER, b2 INTEGER);"
    backup = build(tmp_path / "o.db", ddl_old, [(i, i / 100, i / 10) for i in range(1, 31)])
    live = build(tmp_path / "n.db", ddl_new, [(i, i, i) for i in range(1, 31)])
    mp = tmp_path / "m.toml"
    mp.write_text('[tables.t.columns]\na = "a2 / 10.0"\nb = "b2 / 100.0"\n')
    with pytest.raises(RecoveryError, match=r"and 1 more rule"):
        analyse(backup, live, None, mp)


def test_undated_edits_of_a_minority_do_not_refuse_a_correct_rule(tmp_path: Path) -> None:
    """Without an updated-at column, rows users edited after the deploy look like disagreements;
    a minority of them does not refuse a rule (AGREE_SHARE_UNDATED)."""
    ddl_old = "CREATE TABLE t (id INTEGER PRIMARY KEY, price REAL);"
    ddl_new = "CREATE TABLE t (id INTEGER PRIMARY KEY, price_cents INTEGER);"
    backup = build(tmp_path / "o.db", ddl_old, [(i, i * 7 / 100) for i in range(1, 41)])
    live = build(
        tmp_path / "n.db", ddl_new, [(i, i * 7 + (500 if i % 5 == 0 else 0)) for i in range(1, 41)]
    )
    mp = tmp_path / "m.toml"
    mp.write_text('[tables.t.columns]\nprice = "price_cents / 100.0"\n')
    with analyse(backup, live, DEPLOY, mp) as a:
        ev = rule(a, "t", "price").check
        assert (ev["verdict"], ev["rows_checked"], ev["rows_agreeing"]) == ("agrees", 40, 32)
        assert ev["first_disagreement"] == {"key": [5], "backup": 0.35, "live": 5.35}


def test_concatenation_found_among_many_text_columns(tmp_path: Path) -> None:
    """Ten dropped and ten added text columns: the one concatenation is still found (splits and
    concatenations are pruned by prefix/suffix fits, candidates judged in batches)."""
    k = 10
    old_cols = ", ".join(f'"o{i}" TEXT' for i in range(k))
    new_cols = ", ".join(f'"n{i}" TEXT' for i in range(k))
    old, new = [], []
    for r in range(1, 31):
        nv = [f"v{r}.{i}" for i in range(k)]
        ov = [f"w{r}.{i}" for i in range(k)]
        ov[4] = f"{nv[1]}, {nv[8]}"
        old.append((r, *ov))
        new.append((r, *nv))
    backup = build(tmp_path / "o.db", f"CREATE TABLE t (id INTEGER PRIMARY KEY, {old_cols});", old)
    live = build(tmp_path / "n.db", f"CREATE TABLE t (id INTEGER PRIMARY KEY, {new_cols});", new)
    with analyse(backup, live) as a:
        inferred = {r.column: r.sql for r in a.mapping.tables["t"].rules if r.source == "inferred"}
    assert inferred == {"o4": '"n1" || \', \' || "n8"'}


def test_rename_detected_despite_dated_edits_of_the_renamed_column(tmp_path: Path) -> None:
    """A quarter of the rows had the renamed column edited after the deploy (dated): the rename
    is still found on the rows nobody touched (without the dates it would be 75% < 90%)."""
    old = [(i, f"cust{i}", BEFORE) for i in range(1, 21)]
    new = [(i, f"edited{i}", AFTER) if i % 4 == 0 else (i, c, ts) for i, c, ts in old]
    backup = build(
        tmp_path / "o.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, customer TEXT, updated_at TEXT);",
        old,
    )
    live = build(
        tmp_path / "n.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, customer_name TEXT, updated_at TEXT);",
        new,
    )
    with analyse(backup, live, DEPLOY) as a:
        (ren,) = a.schema_diff.renames
        assert (ren.old, ren.new, ren.share, ren.rows_compared) == (
            "customer",
            "customer_name",
            1.0,
            15,
        )
        assert "not updated after the deploy" in ren.evidence
    with analyse(backup, live) as a:  # no deploy time known: the edits count against it
        assert a.schema_diff.renames == ()


# ---------------------------------------------------------------------------------------------
# inference as a property: inferred iff the data agree

SCALES = [10.0**k for k in range(-4, 5) if k] + [2.0, 0.5, 25.4]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    scale=st.sampled_from(SCALES),
    values=st.lists(
        st.integers(min_value=-(10**6), max_value=10**6),
        min_size=MIN_INFER,
        max_size=45,
        unique=True,
    ),
    spoil=st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)),
)
def test_scale_inferred_iff_every_unchanged_row_agrees(
    tmp_path_factory: pytest.TempPathFactory, scale: float, values: list[int], spoil: int | None
) -> None:
    d = tmp_path_factory.mktemp("scale")
    old_vals: list[Any] = [
        v * int(scale) if scale >= 1 and scale == int(scale) else v * scale for v in values
    ]
    if spoil is not None:  # one unchanged row whose backup value the rule would not give
        i = spoil % len(values)
        old_vals[i] = old_vals[i] + 1
    old_type = "INTEGER" if scale >= 1 and scale == int(scale) else "REAL"
    backup = build(
        d / "o.db",
        f"CREATE TABLE t (id INTEGER PRIMARY KEY, x {old_type}, tag TEXT);",
        [(i, o, "k") for i, o in enumerate(old_vals, 1)],
    )
    live = build(
        d / "n.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, y INTEGER, tag TEXT);",
        [(i, v, "k") for i, v in enumerate(values, 1)],
    )
    with analyse(backup, live) as a:
        r = rule(a, "t", "x")
        if spoil is None:
            assert r.source == "inferred", r.check
            wrong = a.pair.execute(
                f"SELECT count(*) FROM old.t o JOIN new.t n USING (id) WHERE o.x IS NOT ({on_live(r)})"
            )
            assert wrong.fetchone()[0] == 0
        else:
            assert r.source == "none" and r.check["verdict"] == "not inferred"


# ---------------------------------------------------------------------------------------------
# the command line: refusal, --trust-mapping, rehearse


def test_cli_refuses_a_wrong_mapping_and_trust_mapping_keeps_it(tmp_path: Path) -> None:
    old_rows, new_rows = price_rows(30)
    backup = build(tmp_path / "app.db.bak", PRICE_OLD, old_rows)
    live = build(tmp_path / "app.db", PRICE_NEW, new_rows)
    mp = tmp_path / "map.toml"
    mp.write_text('[tables.t.columns]\nprice = "price_cents / 10.0"\n')
    res = cli("diff", backup, live, "--mapping", mp, "--since", DEPLOY)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert (
        "t.price" in res.stderr
        and "0 of 30 unchanged rows agree" in res.stderr
        and "Traceback" not in res.stderr
    )
    res = cli("extract", backup, live, "--out", tmp_path / "b", "--mapping", mp, "--since", DEPLOY)
    assert res.returncode == 2 and not (tmp_path / "b").exists()
    res = cli("diff", backup, live, "--mapping", mp, "--since", DEPLOY, "--trust-mapping", "--json")
    assert res.returncode == 1, res.stderr
    col = next(
        c for c in json.loads(res.stdout)["mapping"]["t"]["columns"] if c["column"] == "price"
    )
    assert (col["verdict"], col["trusted"], col["rows_checked"], col["rows_agreeing"]) == (
        "disagrees",
        True,
        30,
        0,
    )
    assert col["first_disagreement"]["key"] == [1]
    res = cli(
        "extract",
        backup,
        live,
        "--out",
        tmp_path / "b2",
        "--mapping",
        mp,
        "--since",
        DEPLOY,
        "--trust-mapping",
    )
    assert res.returncode in (0, 1), res.stderr
    manifest = json.loads((tmp_path / "b2" / "manifest.json").read_text())
    assert (
        next(c for c in manifest["mapping"]["t"]["columns"] if c["column"] == "price")["verdict"]
        == "disagrees"
    )
    assert "disagrees, kept by --trust-mapping" in (tmp_path / "b2" / "reimport.sql").read_text()


def test_rollback_refuses_a_wrong_mapping_and_changes_nothing(tmp_path: Path) -> None:
    import hashlib

    old_rows, new_rows = price_rows(30)
    backup = build(tmp_path / "app.db.bak", PRICE_OLD, old_rows)
    live = build(tmp_path / "app.db", PRICE_NEW, [*new_rows, (31, "p31", 9999, AFTER)])
    mp = tmp_path / "map.toml"
    mp.write_text('[tables.t.columns]\nprice = "price_cents / 10.0"\n')
    before = hashlib.sha256(live.read_bytes()).hexdigest()
    res = cli(
        "rollback",
        live,
        "--backup",
        backup,
        "--mapping",
        mp,
        "--since",
        DEPLOY,
        "--out",
        tmp_path / "run",
        "--yes",
    )
    assert res.returncode == 2 and "t.price" in res.stderr and "--trust-mapping" in res.stderr, (
        res.stderr
    )
    assert hashlib.sha256(live.read_bytes()).hexdigest() == before
    res = cli(
        "rollback",
        live,
        "--backup",
        backup,
        "--mapping",
        mp,
        "--since",
        DEPLOY,
        "--out",
        tmp_path / "run2",
        "--yes",
        "--trust-mapping",
    )
    assert res.returncode in (0, 1), res.stdout + res.stderr
    with sqlite3.connect(f"file:{live}?mode=ro", uri=True) as conn:
        assert (
            conn.execute("SELECT price FROM t WHERE id = 31").fetchone()[0] == 999.9
        )  # the trusted rule's value
    conn.close()


def test_rehearse_fails_on_a_wrong_mapping(world_copy: Path, tmp_path: Path) -> None:
    backup = next(world_copy.glob("gestima.db.bak.*"))
    mp = tmp_path / "map.toml"
    mp.write_text('[tables.parts.columns]\nprice = "price_cents / 10.0"\n')
    res = cli(
        "rehearse",
        world_copy / "gestima.db",
        "--backup",
        backup,
        "--mapping",
        mp,
        "--out",
        tmp_path / "r",
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL" in res.stdout and "parts.price" in res.stdout


# ---------------------------------------------------------------------------------------------
# the sample world: parts.price from price_cents with neither --alembic-ini nor a mapping


def test_price_cents_rolls_back_without_alembic_or_mapping(
    world_copy: Path, tmp_path: Path
) -> None:
    from recovery.sample.ledger import PROJECTION

    truth = json.loads((world_copy / "world.json").read_text())
    backup = next(world_copy.glob("gestima.db.bak.*"))
    db = world_copy / "gestima.db"
    post = [
        k for (k,) in truth["tables"]["parts"]["inserted"] + truth["tables"]["parts"]["updated"]
    ]
    repriced = [int(k) for k, cols in truth["updated_columns"]["parts"].items() if "price" in cols]
    assert post and repriced
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        want = {
            r["id"]: PROJECTION["parts"]["price"](dict(r))
            for r in conn.execute("SELECT * FROM parts")
        }
    conn.close()
    res = cli("rollback", db, "--backup", backup, "--out", tmp_path / "run", "--yes")
    assert res.returncode in (0, 1), res.stdout + res.stderr
    manifest = json.loads((tmp_path / "run" / "bundle" / "manifest.json").read_text())
    price = next(c for c in manifest["mapping"]["parts"]["columns"] if c["column"] == "price")
    assert (price["source"], price["expression"], price["verdict"]) == (
        "inferred",
        '"price_cents" / 100.0',
        "agrees",
    )
    assert price["rows_checked"] == price["rows_agreeing"] >= MIN_INFER
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        got = dict(conn.execute("SELECT id, price FROM parts"))
        cols = [r[1] for r in conn.execute("PRAGMA table_info(parts)")]
    conn.close()
    assert "price" in cols and "price_cents" not in cols  # the old schema
    for pid in post:
        assert got[pid] == want[pid], pid
    with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as conn:
        before = dict(conn.execute("SELECT id, price FROM parts"))
    conn.close()
    assert all(got[pid] != before[pid] for pid in repriced)  # carried, not the backup's value


def test_diff_reads_lineage_rules_with_alembic_ini(world: Path) -> None:
    """`diff --alembic-ini` takes parts.price from the migrations, and the data confirm it."""
    from recovery.sample import app_dir

    backup = next(world.glob("gestima.db.bak.*"))
    res = cli(
        "diff", backup, world / "gestima.db", "--alembic-ini", app_dir() / "alembic.ini", "--json"
    )
    assert res.returncode == 1, res.stderr
    cols = {c["column"]: c for c in json.loads(res.stdout)["mapping"]["parts"]["columns"]}
    assert (cols["price"]["source"], cols["price"]["verdict"]) == ("migration-lineage", "agrees")
    assert cols["price"]["rows_checked"] == cols["price"]["rows_agreeing"] >= MIN_INFER


# ---------------------------------------------------------------------------------------------
# diff: a value only the new schema can hold is at risk


AT_RISK_OLD = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);"
AT_RISK_NEW = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, discount REAL NOT NULL DEFAULT 0, note TEXT);"


AT_RISK_NEW_TS = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, discount REAL NOT NULL DEFAULT 0, note TEXT, "
    "updated_at TEXT);"
)


def test_diff_reports_values_at_risk_and_agrees_with_extract(tmp_path: Path) -> None:
    """The table has an updated-at column: a row updated after the deploy whose only change is a
    non-default value in a column only the new schema has is at risk (extract carries the row and
    lists the values as lost); ``diff`` and ``extract`` count with the same definition."""
    old = [(i, f"n{i}") for i in range(1, 26)]
    backup = build(tmp_path / "app.db.bak", AT_RISK_OLD, old)
    live = build(
        tmp_path / "app.db",
        AT_RISK_NEW_TS,
        [(i, n, 0.0, None, "2026-11-01T10:00:00") for i, n in old],
    )
    res = cli("diff", backup, live, "--since", DEPLOY, "--json")
    data = json.loads(res.stdout)
    assert (
        res.returncode == 1 and data["tables"]["t"]["changed_only_in_new_columns"] == 0
    )  # schema differs
    assert data["totals"] == {"inserted": 0, "updated": 0, "deleted": 0}
    # a user fills the new-only columns of a pre-existing row
    with closing(sqlite3.connect(live)) as conn, conn:
        conn.execute(
            "UPDATE t SET discount = 5, note = 'vip', updated_at = '2026-11-21T09:00:00' WHERE id = 7"
        )
        conn.execute(
            "UPDATE t SET note = 'filled' WHERE id = 8"
        )  # not after the deploy: the upgrade's
    res = cli("diff", backup, live, "--since", DEPLOY, "--json")
    assert res.returncode == 1, res.stderr
    data = json.loads(res.stdout)
    t = data["tables"]["t"]
    assert (t["inserted"], t["updated"], t["deleted"]) == (0, 1, 0)  # changed only in new columns
    # discount, note and the new-only updated_at itself
    assert (t["changed_only_in_new_columns"], t["values_at_risk"], t["filled_by_upgrade"]) == (
        1,
        3,
        0,
    )
    assert data["at_risk"] == {"changed_only_in_new_columns": 1, "values_at_risk": 3}
    res = cli("diff", backup, live, "--since", DEPLOY, "--csv")
    assert res.returncode == 1 and "\nt,updated,[7]," in res.stdout and "vip" in res.stdout
    res = cli("diff", backup, live, "--since", DEPLOY)
    assert res.returncode == 1 and "value(s) at risk" in res.stdout
    res = cli("extract", backup, live, "--since", DEPLOY, "--out", tmp_path / "b", "--json")
    summary = json.loads(res.stdout)
    assert summary["counts"]["t"]["updated"] == t["updated"]  # one definition of changed
    assert summary["lost"] == t["values_at_risk"] and summary["filled_by_upgrade"] == 0


def test_undated_new_column_values_are_filled_by_upgrade_not_lost(tmp_path: Path) -> None:
    """No updated-at time and no migrations: a non-default value in a column only the new schema
    has, in a row unchanged in the old projection, cannot be told from what the upgrade filled in.
    It is listed as "filled by the upgrade, not verified" (diff, extract, the run folder's
    filled_by_upgrade.csv and report.json), not lost, and changes no exit code; the same value in a
    row a user changed in the old projection is lost."""
    old = [(i, f"n{i}") for i in range(1, 26)]
    backup = build(tmp_path / "app.db.bak", AT_RISK_OLD, old)
    live = build(tmp_path / "app.db", AT_RISK_NEW, [(i, n, 0.0, None) for i, n in old])
    with closing(sqlite3.connect(live)) as conn, conn:
        conn.execute("UPDATE t SET discount = 5, note = 'vip' WHERE id = 7")
        conn.execute("UPDATE t SET name = 'edited', note = 'mine' WHERE id = 9")
    res = cli("diff", backup, live, "--since", DEPLOY, "--json")
    data = json.loads(res.stdout)
    t = data["tables"]["t"]
    assert (
        t["updated"],
        t["changed_only_in_new_columns"],
        t["values_at_risk"],
        t["filled_by_upgrade"],
    ) == (1, 0, 0, 2)
    assert data["filled_by_upgrade"] == 2
    res = cli("extract", backup, live, "--since", DEPLOY, "--out", tmp_path / "b", "--json")
    summary = json.loads(res.stdout)
    assert (summary["counts"]["t"]["updated"], summary["lost"], summary["filled_by_upgrade"]) == (
        1,
        1,
        2,
    )
    run = tmp_path / "run"
    res = cli("rollback", live, "--backup", backup, "--since", DEPLOY, "--out", run, "--yes")
    assert res.returncode in (0, 1), res.stderr
    filled = (run / "filled_by_upgrade.csv").read_text(encoding="utf-8")
    assert (
        "vip" in filled and "filled by the upgrade, not verified" in filled and "mine" not in filled
    )
    lost_csv = (run / "lost_values.csv").read_text(encoding="utf-8")
    assert "mine" in lost_csv and "vip" not in lost_csv
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert report["filled_by_upgrade"]["total"] == 2
    assert "filled_by_upgrade.csv" in (run / "report.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# table renames


def _renamed_world(d: Path) -> tuple[Path, Path]:
    """customers (backup) is clients (live); two other tables unchanged. After the deploy one row
    was deleted, one edited and one added (dated)."""
    old = [(i, f"c{i}", i * 3, BEFORE) for i in range(1, 31)]
    live_rows = [*old[:28], (29, "c29 edited", 87, AFTER), (31, "c31", 1, AFTER)]
    paths = []
    for path, name, rows in (
        (d / "app.db.bak", "customers", old),
        (d / "app.db", "clients", live_rows),
    ):
        build(
            path,
            f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name TEXT, score INTEGER, updated_at TEXT);"
            "CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT);",
            rows,
            name,
        )
        paths.append(path)
    return paths[0], paths[1]


def test_renamed_table_is_detected_compared_and_carried(tmp_path: Path) -> None:
    backup, live = _renamed_world(tmp_path)
    res = cli("diff", backup, live, "--since", DEPLOY, "--json")
    data = json.loads(res.stdout)
    (ren,) = data["schema"]["table_renames"]
    assert (ren["old"], ren["new"], ren["rows_matched"], ren["rows_compared"]) == (
        "customers",
        "clients",
        29,
        30,
    )
    t = data["tables"]["customers"]
    assert t["renamed_to"] == "clients" and (t["inserted"], t["updated"], t["deleted"]) == (1, 1, 1)
    assert "clients" not in data["tables"]
    assert data["mapping"]["customers"]["new_table"] == "clients"
    res = cli(
        "rollback", live, "--backup", backup, "--since", DEPLOY, "--out", tmp_path / "run", "--yes"
    )
    assert res.returncode in (0, 1), res.stdout + res.stderr
    with sqlite3.connect(f"file:{live}?mode=ro", uri=True) as conn:
        rows = dict(
            (r[0], r[1:])
            for r in conn.execute("SELECT id, name, score FROM customers WHERE id >= 29")
        )
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert "clients" not in tables
    # the edit and the new row are carried under the old name, the deleted row is back for review
    assert rows == {29: ("c29 edited", 87), 30: ("c30", 90), 31: ("c31", 1)}


def test_a_bundle_with_a_renamed_table_is_reimported_on_its_own(tmp_path: Path) -> None:
    """rows.db keeps a renamed table's rows under the old name: opening the bundle on its own (the
    stand-alone ``reimport``, a rollback resumed after its extract) accepts it and carries them."""
    from click.testing import CliRunner

    from recovery.cli import main

    backup, live = _renamed_world(tmp_path)
    target = tmp_path / "target.db"
    shutil.copyfile(backup, target)
    run = CliRunner().invoke(
        main, ["extract", str(backup), str(live), "--since", DEPLOY, "--out", str(tmp_path / "b")]
    )
    assert run.exit_code in (0, 1), run.output
    run = CliRunner().invoke(
        main, ["reimport", str(tmp_path / "b"), str(target), "--out", str(tmp_path / "r"), "--yes"]
    )
    assert run.exit_code in (0, 1), run.output
    with sqlite3.connect(f"file:{target}?mode=ro", uri=True) as conn:
        rows = dict(
            (r[0], r[1:])
            for r in conn.execute("SELECT id, name, score FROM customers WHERE id >= 29")
        )
    conn.close()
    assert rows == {29: ("c29 edited", 87), 30: ("c30", 90), 31: ("c31", 1)}


class _Wrapped:
    """A pair connection that is not a ``sqlite3.Connection``: the checks then run their
    aggregate as written (no ``LIMIT -1`` co-routine), as on another engine."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, *args: Any) -> Any:
        return self._conn.execute(*args)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_streamed_check_counts_what_the_flattened_one_does(case: Case, tmp_path: Path) -> None:
    """``check_table``'s aggregate over a co-routine (each flag computed once per row) gives
    every rule the same evidence, counts, verdict and first disagreement as the same aggregate
    SQLite flattens."""
    from recovery.compare.evidence import check_table

    backup, live, mapping = _case_files(case, tmp_path)
    with analyse(backup, live, DEPLOY, mapping, trust_mapping=True) as a:
        assert isinstance(a.pair, sqlite3.Connection)
        tm = a.mapping.tables["t"]
        old_t, new_t = a.old.table("t"), a.new.table(tm.source_table)
        assert old_t is not None and new_t is not None
        streamed = check_table(a.pair, old_t, new_t, tm, a.since_jd)
        flattened = check_table(_Wrapped(a.pair), old_t, new_t, tm, a.since_jd)  # type: ignore[arg-type]
        assert streamed and streamed == flattened
