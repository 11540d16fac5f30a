"""The recovery report (issue 7): numbers equal the world's ground truth, every format agrees,
dry run and rollback agree on what is lost, data is escaped, and the HTML renders in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from recovery.cli import main
from recovery.report import report
from recovery.sample import app_dir

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
PAYLOAD = "<script>alert(1)</script>"
MD_EXTRA = " | `x`"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _copy(world: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    target = tmp_path_factory.mktemp(name) / "world"
    shutil.copytree(world, target)
    return target


def _rollback(folder: Path, dry_run: bool) -> Path:
    from recovery.pipeline import rollback

    backup = next(folder.glob("gestima.db.bak.*"))
    run = folder / ("dry" if dry_run else "run")
    rollback(
        folder / "gestima.db",
        backup,
        run,
        uploads=folder / "uploads",
        alembic_ini=app_dir() / "alembic.ini",
        dry_run=dry_run,
        confirm=lambda _plan: True,
    )
    return run


@pytest.fixture(scope="module")
def payload_world(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world with markup in the data: a post-deploy part named ``<script>…`` and a lost value
    (a production record's machine) holding it too, so the report must show both as text."""
    folder = _copy(world, tmp_path_factory, "payload")
    truth = json.loads((folder / "world.json").read_text(encoding="utf-8"))
    part_id = truth["tables"]["parts"]["inserted"][0][0]
    conn = sqlite3.connect(folder / "gestima.db")
    conn.execute("UPDATE parts SET name = ? WHERE id = ?", (PAYLOAD, part_id))
    record = conn.execute("SELECT min(id) FROM production_records").fetchone()[0]
    conn.execute(
        "UPDATE production_records SET machine = ? WHERE id = ?", (PAYLOAD + MD_EXTRA, record)
    )
    conn.commit()
    conn.close()
    for item in truth["lost"]:  # keep the ground truth true
        if (
            item["table"] == "production_records"
            and item["key"] == {"id": record}
            and item["column"] == "machine"
        ):
            item["value"] = PAYLOAD + MD_EXTRA
    (folder / "world.json").write_text(json.dumps(truth), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def rolled(payload_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished rollback of a copy of the (payload) world: the run folder."""
    return _rollback(_copy(payload_world, tmp_path_factory, "rolled"), dry_run=False)


@pytest.fixture(scope="module")
def truth(payload_world: Path) -> dict:
    return json.loads((payload_world / "world.json").read_text(encoding="utf-8"))


def _lost_set(items: list[dict]) -> set[tuple]:
    def key(k: object) -> tuple:
        return tuple(k.values()) if isinstance(k, dict) else tuple(k)  # type: ignore[arg-type]

    return {(x["table"], key(x["key"]), x["label"], x["column"], x["value"]) for x in items}


def test_numbers_equal_ground_truth(rolled: Path, truth: dict) -> None:
    doc = json.loads((rolled / "report.json").read_text(encoding="utf-8"))
    section, h = doc["report"], doc["report"]["headline"]
    tables = truth["tables"]
    assert h["records_created"] == sum(len(t["inserted"]) for t in tables.values())
    assert h["records_changed"] == sum(len(t["updated"]) for t in tables.values())
    assert h["records_deleted"] == sum(len(t["deleted"]) for t in tables.values())
    assert h["lost_values"] == len(truth["lost"]) == doc["summary"]["lost_values"]
    assert _lost_set(section["lost"]) == _lost_set(truth["lost"])
    assert len(section["lost"]) == len(truth["lost"])
    for row in section["tables"]:
        t = tables[row["table"]]
        assert (row["created"], row["changed"], row["deleted"]) == (
            len(t["inserted"]),
            len(t["updated"]),
            len(t["deleted"]),
        )
    # carried = what the re-import applied; the new table is the one not carried, and why
    totals = doc["outcome"]["totals"]
    assert h["carried"] == totals["inserted"] + totals["updated"]
    new_tables = set(truth["counts"]["live"]) - set(truth["counts"]["backup"])
    assert h["not_carried"] == sum(
        len(tables[t]["inserted"]) + len(tables[t]["updated"]) for t in new_tables
    )
    assert {t for r in h["not_carried_reasons"] for t in r["tables"]} == new_tables
    assert h["files_affected"] == sum(1 for f in truth["files"] if f["uploaded_after_deploy"])
    assert h["verdict"] == "review needed" and h["verified"] is True
    # per user: every record attributed once, names from the users table
    assert sum(u["created"] for u in section["users"]) == h["records_created"]
    assert sum(u["changed"] for u in section["users"]) == h["records_changed"]
    assert sum(u["lost_values"] for u in section["users"]) == h["lost_values"]
    assert sum(u["carried"] for u in section["users"]) == h["carried"]
    assert any(
        u["user_id"] is not None and not u["user"].startswith("user #") for u in section["users"]
    )
    # activity: every timed record is in a bin after the deploy
    act = section["activity"]
    binned = sum(b["created"] + b["changed"] for b in act["bins"]) + sum(act["untimed"].values())
    assert binned == h["records_total"]
    assert min(b["start"] for b in act["bins"]) >= truth["deploy_time"]
    # summary keeps its keys and agrees with the section
    s = doc["summary"]
    assert (
        s["records_created_after_deploy"],
        s["records_changed_after_deploy"],
        s["records_carried"],
        s["files_affected"],
        s["verdict"],
    ) == (
        h["records_created"],
        h["records_changed"],
        h["carried"],
        h["files_affected"],
        h["verdict"],
    )


def test_formats_agree(rolled: Path, truth: dict) -> None:
    h = json.loads((rolled / "report.json").read_text(encoding="utf-8"))["report"]["headline"]
    md = (rolled / "report.md").read_text(encoding="utf-8")
    for label, n in (
        ("created after the deploy", h["records_created"]),
        ("changed after the deploy", h["records_changed"]),
        ("Carried back", h["carried"]),
        ("Not carried back", h["not_carried"]),
        ("Lost values", h["lost_values"]),
        ("Files affected", h["files_affected"]),
    ):
        assert re.search(rf"{label}: \*\*{n}\*\*", md), label
    lost_csv = (rolled / "lost_values.csv").read_text(encoding="utf-8").splitlines()
    assert len(lost_csv) == 1 + len(truth["lost"])
    html = (rolled / "report.html").read_text(encoding="utf-8")
    assert f'data-metric="records created after the deploy">{h["records_created"]:d}<' in html
    assert (
        "<script" not in html and "http://" not in html and "https://" not in html
    )  # self-contained, no scripts
    assert html.count('src="data:image/svg+xml;base64,') == 2


def test_dry_run_and_bundle_agree_with_rollback(
    rolled: Path, payload_world: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    after = json.loads((rolled / "report.json").read_text(encoding="utf-8"))["report"]
    dry_run = _rollback(_copy(payload_world, tmp_path_factory, "dry"), dry_run=True)
    dry = json.loads((dry_run / "report.json").read_text(encoding="utf-8"))["report"]
    assert dry["headline"]["mode"] == "dry-run" and after["headline"]["mode"] == "rollback"
    assert dry["lost"] == after["lost"]
    assert (dry_run / "report.html").is_file()
    bundle = report(rolled / "bundle", "json").document["report"]
    assert bundle["headline"]["mode"] == "bundle" and bundle["lost"] == after["lost"]
    for k in (
        "records_created",
        "records_changed",
        "carried",
        "not_carried",
        "lost_values",
        "files_affected",
    ):
        assert dry["headline"][k] == after["headline"][k] == bundle["headline"][k], k


def test_cli_report_regenerates_every_format(rolled: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(
        rolled, run, ignore=shutil.ignore_patterns("safety", "bundle")
    )  # report.json alone suffices
    (run / "report.html").unlink()
    r = CliRunner().invoke(main, ["report", str(run)])
    assert r.exit_code == 1, r.output  # review needed
    assert (run / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    md = CliRunner().invoke(main, ["report", str(run), "--format", "md"])
    assert md.output.startswith("# Rollback recovery report") and "## Lost values" in md.output
    js = CliRunner().invoke(main, ["report", str(run), "--format", "json"])
    assert (
        json.loads(js.output)["report"]
        == json.loads((run / "report.json").read_text(encoding="utf-8"))["report"]
    )
    out = tmp_path / "lost.csv"
    assert (
        CliRunner()
        .invoke(main, ["report", str(run), "--format", "csv", "--out", str(out)])
        .exit_code
        == 1
    )
    assert out.read_text(encoding="utf-8") == (run / "lost_values.csv").read_text(encoding="utf-8")
    b = CliRunner().invoke(
        main, ["report", str(rolled / "bundle"), "--out", str(tmp_path / "b.html")]
    )
    assert b.exit_code == 1 and "Recovery bundle report" in (tmp_path / "b.html").read_text(
        encoding="utf-8"
    )
    bad = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and bad.output.startswith("error:")
    assert "Example:" in CliRunner().invoke(main, ["report", "--help"]).output


def test_data_is_escaped(rolled: Path, truth: dict) -> None:
    part_id = truth["tables"]["parts"]["inserted"][0][0]
    with sqlite3.connect(
        f"file:{rolled.parent / 'gestima.db'}?mode=ro", uri=True
    ) as ro:  # really carried as data
        assert (
            ro.execute("SELECT name FROM parts WHERE id = ?", (part_id,)).fetchone()[0] == PAYLOAD
        )
    html = (rolled / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | `x`" in html  # the lost value, shown as text
    md = (rolled / "report.md").read_text(encoding="utf-8")
    assert PAYLOAD not in md and r"\<script\>alert(1)\</script\> \| \`x\`" in md
    csv = (rolled / "lost_values.csv").read_text(encoding="utf-8")
    assert (
        PAYLOAD + MD_EXTRA in csv
    )  # CSV keeps the value verbatim: it is the list to re-enter from


def _chromium() -> str | None:
    return next(
        (
            p
            for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome"))
            if p
        ),
        None,
    )


def test_html_renders_in_headless_chromium(rolled: Path) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary found (.ci/run installs Debian's `chromium`)")
    h = json.loads((rolled / "report.json").read_text(encoding="utf-8"))["report"]["headline"]
    url = (rolled / "report.html").resolve().as_uri()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="recovery-chromium-") as profile:
        dom = subprocess.run(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}/a",
                "--enable-logging=stderr",
                "--v=0",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        subprocess.run(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}/b",
                f"--screenshot={shot}",
                "--window-size=1280,2000",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [
        line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Refused to" in line
    ]
    assert not console, console
    metrics = dict((m, int(n)) for m, n in re.findall(r'data-metric="([^"]+)">(\d+)<', dom.stdout))
    assert metrics["records created after the deploy"] == h["records_created"]
    assert metrics["records changed after the deploy"] == h["records_changed"]
    assert metrics["carried back"] == h["carried"]
    assert metrics["not carried back"] == h["not_carried"]
    assert metrics["values lost (listed below)"] == h["lost_values"]
    assert metrics["files affected"] == h["files_affected"]
    assert "Review needed" in dom.stdout
    assert shot.is_file() and shot.stat().st_size > 20_000


# ---------------------------------------------------------------------------------------------
# The fast paths equal the straightforward ones: set-based aggregation (SQL) vs a row-by-row
# Python read, csv-module CSVs vs pandas, the streaming JSON writer vs json.dumps.

import copy  # noqa: E402
import csv as csv_module  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
from recovery.model.outcome import Outcome  # noqa: E402
import random  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from recovery.bundle.store import open_bundle  # noqa: E402
from recovery.report.lost import LostValues, csv_rows, parse_key  # noqa: E402
from recovery.model.outcome import Conflict  # noqa: E402
from recovery.report import aggregate, csvout, model  # noqa: E402
from recovery.report.html import render_html  # noqa: E402
from recovery.report.markdown import render_markdown  # noqa: E402
from recovery.report.runfiles import write_lost_csv  # noqa: E402
from recovery.report.tables import CONFLICT_COLUMNS, LIST_LIMIT, LOST_COLUMNS, frame  # noqa: E402
from recovery.engine.schema import Column  # noqa: E402


def _pandas_csv(items: list[dict[str, Any]], columns: list[str]) -> str:
    """What every CSV of the run folder was before: ``frame(rows).to_csv(index=False)`` — except that
    a row with a bare carriage return in a cell is now written with every cell quoted (pandas left
    the ``\r`` unquoted, and a CSV reader split the row there) and that formula cells get a ``'``."""
    import csv

    import pandas as pd

    from recovery.escape import csv_safe

    df = frame(items, columns)
    df = pd.DataFrame(
        [[csv_safe(v) for v in row] for row in df.itertuples(index=False)],
        columns=df.columns,
        dtype=object,
    )
    if not any(isinstance(v, str) and "\r" in v for v in df.to_numpy().ravel()):
        return df.to_csv(index=False)
    parts = [df.iloc[:0].to_csv(index=False)]
    for i in range(len(df)):
        row = df.iloc[i : i + 1]
        cr = any(isinstance(v, str) and "\r" in v for v in row.to_numpy().ravel())
        parts.append(
            row.to_csv(
                index=False, header=False, quoting=csv.QUOTE_ALL if cr else csv.QUOTE_MINIMAL
            )
        )
    return "".join(parts)


def test_a_carriage_return_in_a_lost_value_survives_a_csv_reader(tmp_path: Path) -> None:
    """A value holding a bare \r (old Mac line ends pasted into a form) reads back whole."""
    import csv

    conn = sqlite3.connect(":memory:")
    conn.execute(
        'CREATE TABLE _recovery_lost ("table", "key", "label", "column", "value", "reason")'
    )
    values = ["one\rtwo", "plain", "both\r\nends", 'q"uote\r']
    conn.executemany(
        "INSERT INTO _recovery_lost VALUES ('parts', json_array(?), 'L', 'notes', ?, 'r')",
        [(i, v) for i, v in enumerate(values)],
    )
    out = io.StringIO(newline="")
    csvout.write_rows(out, LOST_COLUMNS, csv_rows(conn))
    got = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert [r["value"] for r in got] == values
    assert [r["key"] for r in got] == ["0", "1", "2", "3"]


def _reference_users_activity(
    bundle: Any, outcome: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The per-user and activity sections read row by row in Python (one object per row), as the
    report computed them before the SQL aggregation."""
    users_table = model._users_table(bundle)
    deploy = (
        model.parse_time(bundle.manifest.get("deploy_time"))
        if bundle.manifest.get("deploy_time")
        else None
    )
    conn = sqlite3.connect(f"file:{bundle.rows_db}?mode=ro", uri=True)
    complete = outcome is not None and not outcome.lost_truncated
    lost_keys = (
        Counter((x["table"], tuple(model._key(x.get("key")))) for x in outcome.lost)
        if complete
        else Counter(
            (t, tuple(parse_key(k)))
            for t, k in conn.execute('SELECT "table", "key" FROM _recovery_lost')
        )
    )
    conflicts = [c.to_dict() for c in outcome.conflicts] if outcome is not None else []
    # not carried: a skipped conflict's own row and every row skipped with its unit
    skipped = (
        {(r["table"], tuple(r["key"])) for r in outcome.not_carried()}
        if outcome is not None
        else set()
    )
    conflict_keys = Counter((c["table"], tuple(c["key"])) for c in conflicts)
    rows = []  # (table, kind, key, user, when)
    for name in sorted(bundle.new.data_tables):
        t = bundle.new.table(name)
        creator, changer = model._user_columns(t, users_table)
        times = {
            "created": model._time_column(t, "created"),
            "changed": model._time_column(t, "changed"),
        }
        for rec in conn.execute(
            f"SELECT * FROM \"{name}\" WHERE _recovery_kind IN ('inserted', 'updated')"
        ):
            d = dict(
                zip(
                    [c[0] for c in conn.execute(f'SELECT * FROM "{name}" LIMIT 0').description],
                    rec,
                    strict=True,
                )
            )
            kind = "created" if d["_recovery_kind"] == "inserted" else "changed"
            user_col = creator if kind == "created" else changer
            user = d[user_col] if user_col else ("no column", name)
            when = model.parse_time(d[times[kind]]) if times[kind] else None
            rows.append((name, kind, tuple(d[k] for k in t.key), user, when))
    conn.close()
    old_tables, aborted = set(bundle.old.tables), bool(outcome and outcome.aborted)
    per_user: dict[Any, Counter[str]] = defaultdict(Counter)
    for name, kind, key, user, _ in rows:
        carried = (
            not aborted
            and name in old_tables
            and (outcome is None or not outcome.tables or name in outcome.tables)
        )
        u = per_user[user]
        u[kind] += 1
        u["carried"] += carried and (name, key) not in skipped
        u["conflicts"] += conflict_keys.get((name, key), 0)
        u["lost_values"] += lost_keys.get((name, key), 0)
    ids = {u for u in per_user if u is not None and not isinstance(u, tuple)}
    names, _ = model._user_names(bundle, users_table, ids)

    def label(u: Any) -> str:
        if isinstance(u, tuple):
            return f"(no user column in {u[1]})"
        return "(not recorded)" if u is None else names.get(u) or f"user #{u}"

    users = sorted(
        (
            {
                "user_id": None if isinstance(uid, tuple) else uid,
                "user": label(uid),
                "created": c["created"],
                "changed": c["changed"],
                "carried": c["carried"],
                "conflicts": c["conflicts"],
                "lost_values": c["lost_values"],
            }
            for uid, c in per_user.items()
        ),
        key=lambda d: (-(d["created"] + d["changed"]), d["user"]),
    )
    timed = [r for r in rows if r[4] is not None and (deploy is None or r[4] >= deploy)]
    untimed = dict(sorted(Counter(r[0] for r in rows if r not in timed).items()))
    if not timed:
        return users, {
            "bin_minutes": 5,
            "start": model._iso(deploy),
            "bins": [],
            "untimed": untimed,
        }
    start = deploy or min(r[4] for r in timed)
    span = (max(r[4] for r in timed) - start).total_seconds() / 60
    minutes = next(
        (m for m in model.BIN_CHOICES if span / m < model.MAX_BINS), model.BIN_CHOICES[-1]
    )
    counts: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
    for name, kind, _, _, when in timed:
        counts[(int((when - start).total_seconds() // (minutes * 60)), name)][kind] += 1
    bins = [
        {
            "start": model._iso(start + timedelta(minutes=minutes * i)),
            "table": t,
            "created": c["created"],
            "changed": c["changed"],
        }
        for (i, t), c in sorted(counts.items())
    ]
    return users, {
        "bin_minutes": minutes,
        "start": model._iso(start),
        "bins": bins,
        "untimed": untimed,
    }


TIME_TEXTS = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).flatmap(
        lambda d: st.sampled_from(
            [
                d.isoformat(sep=" ", timespec="seconds"),
                d.isoformat(timespec="seconds"),
                d.isoformat(),
                d.isoformat(timespec="milliseconds"),
                d.date().isoformat(),
                d.isoformat(timespec="minutes"),
                d.isoformat(timespec="seconds") + "Z",
                d.isoformat(timespec="seconds") + "+02:00",
                " " + d.isoformat(sep=" ", timespec="seconds"),
                d.strftime("%Y%m%dT%H%M%S"),
                d.isoformat(sep="x", timespec="seconds"),
                d.isoformat(sep=" ", timespec="seconds")[:-2] + "60",
                d.isoformat(timespec="seconds")[:11] + "24:00:00",
                d.isoformat(timespec="seconds")[:8] + "30T10:00:00",
                d.isoformat(timespec="seconds")[:5] + "13" + d.isoformat(timespec="seconds")[7:],
                d.isoformat(sep=" ") + "9",
                d.isoformat(timespec="seconds").replace("-", "/"),
                d.isoformat(sep="t", timespec="seconds"),
                d.isoformat(sep=" ", timespec="seconds").replace("0", "٠", 1),
                d.isoformat(sep=" ", timespec="seconds")[:15] + " 1:00",
                d.isoformat(sep=" ", timespec="seconds")[:17] + "+1",
                "-" + d.isoformat(sep=" ", timespec="seconds")[1:],
                d.isoformat(sep=" ", timespec="seconds")[:8] + "00 00:00:00",
            ]
        )
    ),
    st.text(max_size=30),
)
TIME_VALUES = st.one_of(
    st.none(),
    TIME_TEXTS,
    st.binary(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=0, max_value=2 * 10**13),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e13, max_value=1e13),
)


@settings(max_examples=400, deadline=None)
@given(values=st.lists(TIME_VALUES, min_size=1, max_size=40))
def test_sql_time_equals_parse_time(values: list[Any]) -> None:
    """``aggregate.time_us`` (SQL, with Python only for unusual values) reads every stored value as
    ``parse_time`` does — ISO text in all its forms, epoch seconds and milliseconds, garbage."""
    conn = sqlite3.connect(":memory:")
    aggregate.register(conn)
    conn.execute("CREATE TABLE t (v)")
    conn.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
    from recovery.engine.sqlbuild import col, sql

    got = [
        r[0]
        for r in conn.execute(f"SELECT {sql(aggregate.time_us(col('v')))} FROM t ORDER BY rowid")
    ]
    stored = [
        r[0] for r in conn.execute("SELECT v FROM t ORDER BY rowid")
    ]  # what SQLite kept (NaN → NULL …)
    assert got == [aggregate.to_us(model.parse_time(v)) for v in stored]


USER_VALUES = st.sampled_from([1, 2, 3, 3.0, "3", "x", None, 7, 10, -1])
BIN_EDGES = [60 * model.MAX_BINS * m + d for m in model.BIN_CHOICES for d in (-1, 0)]
"""Seconds after the deploy where the activity span needs the next bin width."""


@pytest.fixture(scope="module")
def rolled_inputs(rolled: Path) -> tuple[Any, Any]:
    return open_bundle(rolled / "bundle"), Outcome.from_json((rolled / "outcome.json").read_bytes())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    times=st.lists(TIME_VALUES, min_size=1, max_size=12),
    seconds=st.lists(
        st.one_of(st.integers(0, 60 * 24 * 60 * 60), st.sampled_from(BIN_EDGES)),
        min_size=1,
        max_size=8,
    ),
    users=st.lists(USER_VALUES, min_size=1, max_size=6),
    changer=st.booleans(),
    deploy=st.booleans(),
    lost_from=st.sampled_from(["list", "db", "bundle"]),
    n_conflicts=st.integers(0, 12),
)
def test_sql_aggregation_equals_row_by_row(
    rolled_inputs: tuple[Any, Any],
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    times: list[Any],
    seconds: list[int],
    users: list[Any],
    changer: bool,
    deploy: bool,
    lost_from: str,
    n_conflicts: int,
) -> None:
    """Per-user and activity numbers from the SQL aggregation equal a row-by-row Python read of
    the same bundle: random users (ints, text, 3 vs 3.0, NULL), a separate changer column, random
    timestamps in every format (before the deploy too, and spread over days: wider bins), random
    conflicts (some skipped), lost values from the outcome's list or from rows.db, no deploy time."""
    bundle, outcome = rolled_inputs
    rng = random.Random(seed)
    folder = tmp_path_factory.mktemp("agg")
    shutil.copyfile(bundle.rows_db, folder / "rows.db")
    dep = model.parse_time(bundle.manifest["deploy_time"])
    pool = times + [(dep + timedelta(seconds=sec)).isoformat(sep=" ") for sec in seconds]
    new = bundle.new
    conn = sqlite3.connect(folder / "rows.db")
    if changer:  # parts gets updated_by: changed rows belong to it, created rows to created_by
        conn.execute('ALTER TABLE parts ADD COLUMN "updated_by"')
        parts = new.tables["parts"]
        new = dataclasses.replace(
            new,
            tables={
                **new.tables,
                "parts": dataclasses.replace(
                    parts, columns=parts.columns + (Column("updated_by", "INTEGER"),)
                ),
            },
        )
    keys = []
    for name in sorted(new.data_tables):
        t = new.table(name)
        cols = {c.name for c in t.columns}
        for rowid, *key in conn.execute(
            f'SELECT rowid, {", ".join(chr(34) + k + chr(34) for k in t.key)} FROM "{name}"'
        ).fetchall():
            sets = {
                c: rng.choice(pool) for c in ("created_at", "updated_at", "started_at") if c in cols
            }
            sets.update(
                {
                    c: rng.choice(users)
                    for c in ("created_by", "uploaded_by", "updated_by")
                    if c in cols
                }
            )
            if sets:
                conn.execute(
                    f'UPDATE "{name}" SET {", ".join(chr(34) + c + chr(34) + " = ?" for c in sets)} WHERE rowid = ?',
                    (*sets.values(), rowid),
                )
            keys.append((name, tuple(key)))
    conn.commit()
    conn.close()
    manifest = dict(bundle.manifest) if deploy else {**bundle.manifest, "deploy_time": None}
    b = dataclasses.replace(bundle, path=folder, new=new, manifest=manifest)
    o = None
    if lost_from != "bundle":
        o = copy.copy(outcome)
        o.conflicts = [
            Conflict(
                rng.choice(["unique", "update_update"]),
                t,
                k,
                rng.choice(["skipped", "kept_target"]),
            )
            for t, k in rng.sample(keys, min(n_conflicts, len(keys)))
        ]
        if lost_from == "db":  # only a sample in memory: counts come from rows.db
            o.lost = LostValues(list(outcome.lost)[:3], total=len(outcome.lost) + 1)
    section = model.build(b, o, "X")
    want_users, want_activity = _reference_users_activity(b, o)
    assert section["users"] == want_users
    assert section["activity"] == want_activity


# ---- CSV: csv module == pandas on awkward values

AWKWARD = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.sampled_from([0.1, 1e16, 1e-7, -0.0, 5.0, 1.5e300, 123456789.123456789]),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "a,b",
            'say "hi"',
            "line\nbreak",
            "cr\rlf",
            "Žluťoučký kůň",
            "\\",
            "[1]",
            "0012",
            " padded ",
            "tab\there",
            "<script>",
            "€",
            "😀",
        ]
    ),
    st.binary(max_size=6),
)
KEY_PARTS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=8),
    st.sampled_from(['a"b', "back\\slash", "ctl\x01", "x]", ""]),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["parts", "quotes", "a b", "ü"]),
            st.lists(KEY_PARTS, min_size=1, max_size=3),
            AWKWARD,
            st.sampled_from(["c", "d", "x,y"]),
            AWKWARD,
            st.sampled_from(["r", None, 'why, "so"']),
        ),
        max_size=25,
    ),
    raw_keys=st.lists(
        st.sampled_from(
            [
                "[1]",
                "[ 1]",
                "[01]",
                "[-0]",
                "[1e3]",
                "[true]",
                '["a\\u0041"]',
                "nope",
                "[[1]]",
                '[{"a": 1}]',
                "[null]",
                "[1,2]",
                "[1.50]",
                "[]",
                '[""]',
                '["x"]',
                "[99999999999999999999]",
                "[NaN]",
            ]
        ),
        max_size=6,
    ),
)
def test_lost_csv_equals_pandas(rows: list[tuple[Any, ...]], raw_keys: list[str]) -> None:
    """lost_values.csv shaped by SQLite and written by the csv module is byte-identical to the
    pandas path (every value parsed as a dict, ``frame().to_csv()``) — NULL, bytes, floats,
    unicode, composite keys, commas, quotes and newlines, odd hand-written keys."""
    conn = sqlite3.connect(":memory:")
    conn.execute(
        'CREATE TABLE _recovery_lost ("table", "key", "label", "column", "value", "reason")'
    )
    for t, key, label, c, v, r in rows:
        placeholders = ", ".join("?" * len(key))
        conn.execute(
            f"INSERT INTO _recovery_lost SELECT ?, json_array({placeholders}), ?, ?, ?, ?",
            (t, *key, label, c, v, r),
        )
    conn.executemany(
        "INSERT INTO _recovery_lost VALUES ('parts', ?, 'L', 'c', 1, 'r')", [(k,) for k in raw_keys]
    )
    conn.execute(
        "INSERT INTO _recovery_lost VALUES ('parts', 7, x'00ff', 'c', x'', 'r')"
    )  # a non-text key
    from recovery.report.lost import iter_lost

    items = list(iter_lost(conn))
    want = _pandas_csv(items, LOST_COLUMNS)
    fast = io.StringIO(newline="")
    csvout.write_rows(fast, LOST_COLUMNS, csv_rows(conn))
    assert fast.getvalue() == want
    from_dicts = io.StringIO(newline="")
    write_lost_csv(from_dicts, items)
    assert from_dicts.getvalue() == want


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(
        st.dictionaries(
            st.sampled_from(CONFLICT_COLUMNS + ["extra"]),
            st.one_of(
                AWKWARD,
                st.lists(AWKWARD.filter(lambda v: not isinstance(v, bytes)), max_size=3),
                st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
                st.just(math.nan),
                st.booleans(),
            ),
        ),
        max_size=12,
    )
)
def test_csv_dicts_equal_pandas(items: list[dict[str, Any]]) -> None:
    """conflicts.csv, deletes_for_review.csv and files.csv (dicts → rows) equal pandas too."""
    out = io.StringIO(newline="")
    csvout.write_dicts(out, CONFLICT_COLUMNS, items)
    assert out.getvalue() == _pandas_csv(items, CONFLICT_COLUMNS)


def test_long_lists_are_cut_in_html_and_md_and_complete_in_csv(rolled: Path) -> None:
    """deletes_for_review and the files list: the page shows the first LIST_LIMIT and says where
    the rest is; the run folder's CSVs (and report.json) hold every one."""
    doc = json.loads((rolled / "report.json").read_text(encoding="utf-8"))
    section = doc["report"]
    for name, rows, header in (
        ("deletes_for_review.csv", section["deletes_for_review"], "table,key,label"),
        ("files.csv", section["files"]["list"], "path,record,size,status"),
    ):
        lines = list(csv_module.reader((rolled / name).open(encoding="utf-8", newline="")))
        assert ",".join(lines[0]).startswith(header) and len(lines) == 1 + len(rows)
    big = copy.deepcopy(section)
    big["deletes_for_review"] = [
        {"table": "quote_items", "key": [i], "label": f"D-{i}"} for i in range(2500)
    ]
    big["files"]["list"] = [
        {"path": f"f/{i}.pdf", "record": i, "size": 1, "status": "copied"}
        for i in range(LIST_LIMIT + 7)
    ]
    big["files"]["affected"] = LIST_LIMIT + 7
    html = render_html(big)
    assert (
        "D-999<" in html
        and "D-1000<" not in html
        and "… and 1,500 more in deletes_for_review.csv" in html
    )
    assert "f/999.pdf" in html and "f/1000.pdf" not in html and "… and 7 more in files.csv" in html
    md = render_markdown(big)
    assert (
        "D-999 " in md
        and "D-1000 " not in md
        and "… and 1,500 more in deletes_for_review.csv" in md
    )
    small = render_html(section)
    assert "more in deletes_for_review.csv" not in small and "more in files.csv" not in small


@settings(max_examples=80, deadline=None)
@given(
    cells=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from(["[1]", "[2]", '["x"]', "[1,2]"]),
            st.sampled_from(["r1", "r2", None]),
        ),
        max_size=30,
    )
)
def test_lost_counts_equal_python(cells: list[tuple[str, str, Any]]) -> None:
    """Per-table, per-reason and per-record lost counts — also when one record's cells have
    different reasons (or none)."""
    conn = sqlite3.connect(":memory:")
    conn.execute(
        'CREATE TABLE _recovery_lost ("table", "key", "label", "column", "value", "reason")'
    )
    conn.executemany("INSERT INTO _recovery_lost VALUES (?, ?, NULL, 'c', 1, ?)", cells)
    counts, records = aggregate.lost_counts(conn)
    assert Counter({(t, r): n for t, r, n in counts}) == Counter((t, r) for t, _, r in cells)
    assert records == len({(t, k) for t, k, _ in cells})
    per_key = dict(
        ((t, k), n)
        for t, k, n in conn.execute('SELECT "table", "key", n FROM temp.recovery_report_lost')
    )
    assert per_key == Counter((t, k) for t, k, _ in cells)


def test_terminal_csv_quotes_a_carriage_return_too() -> None:
    """``--csv`` output (render.write_csv) reads back whole when a cell holds a bare \\r."""
    from recovery.report.render import write_csv

    rows = [{"a": "x\ry", "b": 1}, {"a": "plain", "b": None}]
    out = io.StringIO(newline="")
    write_csv(out, rows)
    back = list(csv_module.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert [r["a"] for r in back] == ["x\ry", "plain"]
    assert out.getvalue().split("\n")[2] == "plain,"


# ---------------------------------------------------------------------------------------------
# One verdict (issue 17): the terminal, the exit code, report.json, report.md, report.html (as
# headless Chromium shows it) and `recovery report RUN` say the same, for a clean run, a run with
# lost values, a run with conflicts and a run whose only loose end is rows restored for review.

from contextlib import closing  # noqa: E402

from recovery.model.outcome import VERDICT_EXIT, judge  # noqa: E402


def _small_world(folder: Path, mode: str) -> Path:
    """The sample app's backup (20 parts) and its live DB upgraded to the new release, with one
    post-deploy user; ``lost``: a production record (a table the old release lacks), the backup's
    manifest naming release v1.4.0; ``conflict``: a pre-deploy quote deleted and a new quote with
    its number and two items; ``deletes``: a pre-deploy quote item deleted."""
    import random

    from recovery.sample.app import NEW_HEAD, OLD_HEAD, migrate
    from recovery.sample.backup import fill_backup
    from recovery.sample.generator import BACKUP_NAME, DEPLOY_TIME, LIVE_NAME

    folder.mkdir(parents=True)
    (folder / "uploads").mkdir()
    backup, live = folder / BACKUP_NAME, folder / LIVE_NAME
    migrate(backup, OLD_HEAD, fast=True)
    fill_backup(
        backup, folder / "uploads", parts=20, rng=random.Random("small"), deploy=DEPLOY_TIME
    )
    shutil.copyfile(backup, live)
    migrate(live, NEW_HEAD, fast=True)
    if mode == "lost":
        backup.with_name(backup.name + ".manifest.json").write_text(
            '{"git": {"tag": "v1.4.0"}}', encoding="utf-8"
        )
    with closing(sqlite3.connect(live)) as c:
        c.execute(
            "INSERT INTO users (id, username, full_name, email, role, created_at, is_active) "
            "VALUES (900, 'nova', 'Nova Uzivatelka', 'n@example.com', 'staff', '2026-11-20 14:30:00', 1)"
        )
        if mode == "lost":
            c.execute(
                "INSERT INTO production_records (part_id, quantity, machine, started_at, finished_at, "
                "created_by) VALUES (1, 5, 'DMG', '2026-11-20 14:40:00', '2026-11-20 14:50:00', 900)"
            )
        if mode == "conflict":
            number = c.execute("SELECT quote_number FROM quotes WHERE id = 1").fetchone()[0]
            c.execute("DELETE FROM quote_items WHERE quote_id = 1")
            c.execute("DELETE FROM quotes WHERE id = 1")
            c.execute(
                "INSERT INTO quotes (id, quote_number, customer_name, status, created_at, updated_at, "
                "created_by, discount_pct) VALUES (500, ?, '=HYPERLINK(\"x\")', 'draft', "
                "'2026-11-20 14:35:00', '2026-11-20 14:35:00', 900, 0)",
                (number,),
            )
            c.execute(
                "INSERT INTO quote_items (id, quote_id, part_id, qty, unit_price) "
                "VALUES (5000, 500, 1, 3, 10.5), (5001, 500, 2, 4, 7.25)"
            )
        if mode == "deletes":
            c.execute("DELETE FROM quote_items WHERE id = 1")
        c.commit()
    return folder


def _chromium_headline(html: Path, shot: Path) -> tuple[str, str]:
    """(data-verdict, the banner's visible title) of ``html`` as headless Chromium renders it; a
    PNG screenshot of the page is saved as ``shot``."""
    binary = _chromium()
    assert binary is not None
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="recovery-chromium-") as profile:
        dom = subprocess.run(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}/a",
                "--dump-dom",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        subprocess.run(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}/b",
                f"--screenshot={shot}",
                "--window-size=1280,1600",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000, "no screenshot"
    found = re.search(r'data-verdict="([^"]*)".*?<h2 id="verdict">([^<]*)</h2>', dom.stdout, re.S)
    assert found, dom.stdout[:2000]
    return found.group(1), found.group(2)


@pytest.mark.parametrize(
    "mode, verdict",
    [
        ("clean", "all recovered"),
        ("lost", "review needed"),
        ("conflict", "review needed"),
        ("deletes", "review needed"),
    ],
)
def test_one_verdict_in_terminal_exit_code_json_markdown_html_and_chromium(
    tmp_path: Path, mode: str, verdict: str
) -> None:
    w = _small_world(tmp_path / "w", mode)
    backup = next(w.glob("gestima.db.bak.*[0-9]"))
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "rollback",
            str(w / "gestima.db"),
            "--backup",
            str(backup),
            "--uploads",
            str(w / "uploads"),
            "--alembic-ini",
            str(app_dir() / "alembic.ini"),
            "--out",
            str(w / "run"),
            "--yes",
        ],
    )
    run = w / "run"
    doc = json.loads((run / "report.json").read_text(encoding="utf-8"))
    h = doc["report"]["headline"]
    assert h["verdict"] == doc["summary"]["verdict"] == verdict
    assert res.exit_code == h["exit_code"] == VERDICT_EXIT[verdict], res.output
    assert f"{verdict}: " in res.output
    assert (not h["verdict_reasons"]) == (verdict == "all recovered")
    for reason in h["verdict_reasons"]:  # the terminal lists the same reasons
        assert reason.split(",")[0] in " ".join(res.output.split())
    md = (run / "report.md").read_text(encoding="utf-8")
    assert f"- Verdict: **{verdict}**" in md and f"**{verdict.upper()}**" in md
    again = runner.invoke(main, ["report", str(run)])
    assert again.exit_code == res.exit_code, again.output
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "see below" not in html.lower()
    for repr_text in (">True<", ">False<", "unchanged_since_backup", "&#x27;", "{&#x27;"):
        assert repr_text not in html, repr_text
    rows = list(csv_module.reader((run / "not_carried.csv").open(encoding="utf-8", newline="")))
    assert rows[0] == ["table", "key", "label", "reason", "column", "value"]
    if mode == "conflict":
        # the new quote (a unique conflict) and both its items, whole; the carried count excludes them
        assert {(r[0], r[1]) for r in rows[1:]} == {
            ("quotes", "500"),
            ("quote_items", "5000"),
            ("quote_items", "5001"),
        }
        assert [
            "quote_items",
            "5001",
            "",
            "its unit was skipped (see conflicts)",
            "unit_price",
            "7.25",
        ] in rows
        assert ["quotes", "500"] == rows[-1][:2] or any(r[4] == "customer_name" for r in rows)
        assert any(
            r[4] == "customer_name" and r[5] == '\'=HYPERLINK("x")' for r in rows
        )  # formula-safe
        assert (
            h["carried"] == 1 and h["not_carried"] == 3 and doc["report"]["not_carried_total"] == 3
        )
        assert "Q-" in html and "Not carried back (3)" in html
    else:
        assert rows[1:] == []
    if mode == "lost":
        lost = doc["report"]["lost"]
        assert lost and {x["user"] for x in lost} == {"Nova Uzivatelka"}
        assert "(release v1.4.0)" in html and "(release v1.4.0)" in md
    assert str((w / "gestima.db").resolve()) in html
    if mode == "deletes":
        assert (
            h["deletes_for_review"] == 1
            and h["lost_values"] == h["conflicts"] == h["not_carried"] == 0
        )
    if _chromium() is None:
        pytest.skip(
            "no chromium binary found (.ci/run installs Debian's `chromium`): the verdict was checked "
            "in the HTML text only"
        )
    ARTIFACTS.mkdir(exist_ok=True)
    shown, title = _chromium_headline(run / "report.html", ARTIFACTS / f"report-{mode}.png")
    assert shown == h["verdict"] and title.lower() == h["verdict"]


def test_verdict_files_with_nothing_missing_is_all_recovered() -> None:
    """The relink's empty lists are no problem; any count of a real one is."""
    from recovery.model.outcome import Outcome

    o = Outcome(
        "b", "t", "remap", False, files={"missing": [], "unsafe": [], "counts": {"missing": 0}}
    )
    assert o.verdict().verdict == "all recovered" and o.exit_code == 0
    o.files = {"missing": [{"path": "a.pdf"}], "unsafe": []}
    assert o.verdict().verdict == "review needed" and o.exit_code == 1


from hypothesis import given, strategies as st  # noqa: E402


@given(
    st.booleans(),
    st.booleans(),
    *[st.integers(0, 3)] * 6,
    st.sampled_from([None, {}, {"needs_review": True}, {"needs_review": False}]),
)
def test_judge_is_all_recovered_exactly_when_nothing_is_left(
    aborted: bool,
    failed: bool,
    lost: int,
    conflicts: int,
    not_carried: int,
    deletes: int,
    missing: int,
    unsafe: int,
    late: dict | None,
) -> None:
    v = judge(
        aborted=aborted,
        verification_failed=failed,
        lost=lost,
        conflicts=conflicts,
        not_carried=not_carried,
        deletes_for_review=deletes,
        files_missing=missing,
        files_unsafe=unsafe,
        late=late,
    )
    loose = (
        lost
        + conflicts
        + not_carried
        + deletes
        + missing
        + unsafe
        + bool(late and late.get("needs_review"))
    )
    assert v.exit_code == VERDICT_EXIT[v.verdict]
    assert (v.verdict == "failed") == (aborted or failed)
    assert (
        (v.verdict == "all recovered")
        == (not loose and not aborted and not failed)
        == (not v.reasons)
    )
    assert all("True" not in r and "'" not in r for r in v.reasons)
