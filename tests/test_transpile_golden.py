"""Golden files for the transpile passes: for every pass of :data:`recovery.transpile.passes.PASSES`,
``tests/golden/transpile/<pass>.sql`` holds the plan as it stands after that pass (the passes before
it run first), for each case of ``tests/fixtures/transpile/golden_cases.toml``. The text is compared
exactly, so any change in what a pass produces fails here until the golden file is regenerated and
the diff reviewed::

    python -m pytest tests/test_transpile_golden.py --update-golden   # or RECOVERY_UPDATE_GOLDEN=1

Each case is a tiny backup/live pair extracted into a bundle through the public ``extract``; the
plan is rebuilt pass by pass by :func:`recovery.transpile.passes.plan` with its list of passes cut
after the pass under test, from the schemas, mapping and row/delete tables the extract used.
"""

from __future__ import annotations

import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import pytest

import recovery.transpile.passes as passes
from recovery.bundle.extract import extract
from recovery.transpile.passes import PASSES, Plan

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "transpile"
CASES = tomllib.loads(
    (HERE / "fixtures" / "transpile" / "golden_cases.toml").read_text(encoding="utf-8")
)["case"]
PASS_NAMES = [p.__name__ for p in PASSES]


def _build(tmp: Path, case: dict[str, Any]) -> Plan:
    """Backup from ``old``, live from a copy + ``migrate`` + ``changes``; the extract's full plan."""
    backup, live = tmp / "app.db.bak", tmp / "app.db"
    with sqlite3.connect(backup) as b:
        b.executescript(case["old"])
        with sqlite3.connect(live) as lv:
            b.backup(lv)
            lv.executescript(case["migrate"] + "\n" + case["changes"])
        lv.close()
    b.close()
    mapping = None
    if case.get("mapping"):
        mapping = tmp / "mapping.toml"
        mapping.write_text(case["mapping"], encoding="utf-8")
    return extract(backup, live, tmp / "bundle", mapping=mapping).plan


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict[str, Any], Plan, Path]]:
    out = []
    for i, case in enumerate(CASES):
        tmp = tmp_path_factory.mktemp(f"golden-{i}")
        out.append((case, _build(tmp, case), tmp / "bundle"))
    return out


def _after(full: Plan, n_passes: int, monkeypatch: pytest.MonkeyPatch) -> Plan:
    """The plan after the first ``n_passes`` passes, rebuilt from the inputs of ``full``."""
    assert full.old is not None and full.new is not None and full.mapping is not None
    with monkeypatch.context() as m:
        m.setattr(passes, "PASSES", PASSES[:n_passes])
        return passes.plan(full.old, full.new, full.mapping, full.has_rows, full.has_deletes)


def _sql(e: Any) -> str:
    return "—" if e is None else e.sql(dialect="sqlite")


def _lost(bundle: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{bundle / 'rows.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            'SELECT "table", "key", "column", value FROM _recovery_lost ORDER BY 1, 2, 3'
        ).fetchall()
    finally:
        conn.close()
    return [f"{t}{k}.{c} = {v!r}" for t, k, c, v in rows]


def render(case: dict[str, Any], p: Plan, bundle: Path) -> str:
    """The plan as reviewable SQL text: per table its column sources and insert values, the new
    columns no old column reads (their values are the bundle's lost values), then the statements."""
    assert p.new is not None and p.mapping is not None
    lines = [f"-- ===== case: {case['title']}"]
    lines += [f"-- lost value (bundle): {x}" for x in _lost(bundle)]
    lines += [f"-- error: {e}" for e in p.errors]
    for tp in p.tables:
        tm = p.mapping.tables[tp.table]
        reads = f"  reads new table {tm.source_table}" if tm.source_table != tp.table else ""
        rows = "" if tp.table in p.has_rows else "  (no rows to carry)"
        lines.append(f"-- table {tp.table}  key ({', '.join(tp.key)}){reads}{rows}")
        for c in tp.columns:
            lines.append(
                f"--   {c.column} <- {_sql(c.expression)}  [{c.source}]  insert: {_sql(c.insert_value)}"
            )
        new_t = p.new.tables[tm.source_table]
        unread = [c for c in new_t.column_names if c not in tm.used_new_columns]
        if unread:
            lines.append(f"--   not read by any old column (lost): {', '.join(unread)}")
        if tp.updatable:
            lines.append(f"--   updatable: {', '.join(tp.updatable)}")
    skipped = sorted(t for t, tm in p.mapping.tables.items() if tm.skip)
    if skipped:
        lines.append(f"-- skipped by the mapping: {', '.join(skipped)}")
    for stmt in p.statements(apply_deletes=True):
        lines.append(stmt.sql(dialect="sqlite", pretty=True) + ";")
    return "\n".join(lines) + "\n"


def golden_text(
    name: str,
    index: int,
    plans: list[tuple[dict[str, Any], Plan, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    head = [
        f"-- Golden output of the transpile pass `{name}` (pass {index + 1} of {len(PASSES)} in",
        "-- recovery.transpile.passes.PASSES): the plan after it, per case of",
        "-- tests/fixtures/transpile/golden_cases.toml. Regenerate and review the diff:",
        "--   python -m pytest tests/test_transpile_golden.py --update-golden",
        "",
    ]
    body = [
        render(case, _after(full, index + 1, monkeypatch), bundle) for case, full, bundle in plans
    ]
    return "\n".join(head) + "\n" + "\n".join(body)


def update_requested(config: pytest.Config) -> bool:
    import os

    return (
        bool(config.getoption("--update-golden", default=False))
        or os.environ.get("RECOVERY_UPDATE_GOLDEN") == "1"
    )


@pytest.mark.parametrize("index", range(len(PASSES)), ids=PASS_NAMES)
def test_pass_output_matches_its_golden_file(
    index: int,
    plans: list[tuple[dict[str, Any], Plan, Path]],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    name = PASS_NAMES[index]
    path = GOLDEN / f"{name}.sql"
    got = golden_text(name, index, plans, monkeypatch)
    if update_requested(request.config):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got, encoding="utf-8")
        return
    assert path.is_file(), f"{path} is missing: run pytest with --update-golden and review it"
    want = path.read_text(encoding="utf-8")
    if got != want:
        import difflib

        diff = "".join(
            difflib.unified_diff(want.splitlines(True), got.splitlines(True), str(path), "now")
        )
        pytest.fail(f"pass {name} changed its output (review, then --update-golden):\n{diff}")


def test_golden_files_are_exactly_the_passes() -> None:
    """A renamed or removed pass leaves no stale golden file behind."""
    assert sorted(p.stem for p in GOLDEN.glob("*.sql")) == sorted(PASS_NAMES)


def test_all_passes_rebuild_the_plan_the_extract_made(
    plans: list[tuple[dict[str, Any], Plan, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The golden files show the real plan: cut after the last pass it equals the extract's."""
    for case, full, _ in plans:
        again = _after(full, len(PASSES), monkeypatch)
        assert [s.sql() for s in again.statements(True)] == [
            s.sql() for s in full.statements(True)
        ], case["title"]
        assert again.errors == full.errors
