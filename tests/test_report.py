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
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def _copy(world: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    target = tmp_path_factory.mktemp(name) / "world"
    shutil.copytree(world, target)
    return target


def _rollback(folder: Path, dry_run: bool) -> Path:
    from recovery.pipeline import rollback

    backup = next(folder.glob("gestima.db.bak.*"))
    run = folder / ("dry" if dry_run else "run")
    rollback(folder / "gestima.db", backup, run, uploads=folder / "uploads",
             alembic_ini=app_dir() / "alembic.ini", dry_run=dry_run, confirm=lambda _plan: True)
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
    conn.execute("UPDATE production_records SET machine = ? WHERE id = ?", (PAYLOAD + MD_EXTRA, record))
    conn.commit()
    conn.close()
    for item in truth["lost"]:  # keep the ground truth true
        if item["table"] == "production_records" and item["key"] == {"id": record} and item["column"] == "machine":
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
        assert (row["created"], row["changed"], row["deleted"]) == (len(t["inserted"]), len(t["updated"]), len(t["deleted"]))
    # carried = what the re-import applied; the new table is the one not carried, and why
    totals = doc["outcome"]["totals"]
    assert h["carried"] == totals["inserted"] + totals["updated"]
    new_tables = set(truth["counts"]["live"]) - set(truth["counts"]["backup"])
    assert h["not_carried"] == sum(len(tables[t]["inserted"]) + len(tables[t]["updated"]) for t in new_tables)
    assert {t for r in h["not_carried_reasons"] for t in r["tables"]} == new_tables
    assert h["files_affected"] == sum(1 for f in truth["files"] if f["uploaded_after_deploy"])
    assert h["verdict"] == "review needed" and h["verified"] is True
    # per user: every record attributed once, names from the users table
    assert sum(u["created"] for u in section["users"]) == h["records_created"]
    assert sum(u["changed"] for u in section["users"]) == h["records_changed"]
    assert sum(u["lost_values"] for u in section["users"]) == h["lost_values"]
    assert sum(u["carried"] for u in section["users"]) == h["carried"]
    assert any(u["user_id"] is not None and not u["user"].startswith("user #") for u in section["users"])
    # activity: every timed record is in a bin after the deploy
    act = section["activity"]
    binned = sum(b["created"] + b["changed"] for b in act["bins"]) + sum(act["untimed"].values())
    assert binned == h["records_total"]
    assert min(b["start"] for b in act["bins"]) >= truth["deploy_time"]
    # summary keeps its keys and agrees with the section
    s = doc["summary"]
    assert (s["records_created_after_deploy"], s["records_changed_after_deploy"], s["records_carried"],
            s["files_affected"], s["verdict"]) == (h["records_created"], h["records_changed"], h["carried"],
                                                   h["files_affected"], h["verdict"])


def test_formats_agree(rolled: Path, truth: dict) -> None:
    h = json.loads((rolled / "report.json").read_text(encoding="utf-8"))["report"]["headline"]
    md = (rolled / "report.md").read_text(encoding="utf-8")
    for label, n in (("created after the deploy", h["records_created"]), ("changed after the deploy", h["records_changed"]),
                     ("Carried back", h["carried"]), ("Not carried back", h["not_carried"]),
                     ("Lost values", h["lost_values"]), ("Files affected", h["files_affected"])):
        assert re.search(rf"{label}: \*\*{n}\*\*", md), label
    lost_csv = (rolled / "lost_values.csv").read_text(encoding="utf-8").splitlines()
    assert len(lost_csv) == 1 + len(truth["lost"])
    html = (rolled / "report.html").read_text(encoding="utf-8")
    assert 'data-metric="records created after the deploy">%d<' % h["records_created"] in html
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained, no scripts
    assert html.count('src="data:image/svg+xml;base64,') == 2


def test_dry_run_and_bundle_agree_with_rollback(rolled: Path, payload_world: Path,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    after = json.loads((rolled / "report.json").read_text(encoding="utf-8"))["report"]
    dry_run = _rollback(_copy(payload_world, tmp_path_factory, "dry"), dry_run=True)
    dry = json.loads((dry_run / "report.json").read_text(encoding="utf-8"))["report"]
    assert dry["headline"]["mode"] == "dry-run" and after["headline"]["mode"] == "rollback"
    assert dry["lost"] == after["lost"]
    assert (dry_run / "report.html").is_file()
    bundle = report(rolled / "bundle", "json").document["report"]
    assert bundle["headline"]["mode"] == "bundle" and bundle["lost"] == after["lost"]
    for k in ("records_created", "records_changed", "carried", "not_carried", "lost_values", "files_affected"):
        assert dry["headline"][k] == after["headline"][k] == bundle["headline"][k], k


def test_cli_report_regenerates_every_format(rolled: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(rolled, run, ignore=shutil.ignore_patterns("safety", "bundle"))  # report.json alone suffices
    (run / "report.html").unlink()
    r = CliRunner().invoke(main, ["report", str(run)])
    assert r.exit_code == 1, r.output  # review needed
    assert (run / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    md = CliRunner().invoke(main, ["report", str(run), "--format", "md"])
    assert md.output.startswith("# Rollback recovery report") and "## Lost values" in md.output
    js = CliRunner().invoke(main, ["report", str(run), "--format", "json"])
    assert json.loads(js.output)["report"] == json.loads((run / "report.json").read_text(encoding="utf-8"))["report"]
    out = tmp_path / "lost.csv"
    assert CliRunner().invoke(main, ["report", str(run), "--format", "csv", "--out", str(out)]).exit_code == 1
    assert out.read_text(encoding="utf-8") == (run / "lost_values.csv").read_text(encoding="utf-8")
    b = CliRunner().invoke(main, ["report", str(rolled / "bundle"), "--out", str(tmp_path / "b.html")])
    assert b.exit_code == 1 and "Recovery bundle report" in (tmp_path / "b.html").read_text(encoding="utf-8")
    bad = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and bad.output.startswith("error:")
    assert "Example:" in CliRunner().invoke(main, ["report", "--help"]).output


def test_data_is_escaped(rolled: Path, truth: dict) -> None:
    part_id = truth["tables"]["parts"]["inserted"][0][0]
    with sqlite3.connect(f"file:{rolled.parent / 'gestima.db'}?mode=ro", uri=True) as ro:  # really carried as data
        assert ro.execute("SELECT name FROM parts WHERE id = ?", (part_id,)).fetchone()[0] == PAYLOAD
    html = (rolled / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | `x`" in html  # the lost value, shown as text
    md = (rolled / "report.md").read_text(encoding="utf-8")
    assert PAYLOAD not in md and r"\<script\>alert(1)\</script\> \| \`x\`" in md
    csv = (rolled / "lost_values.csv").read_text(encoding="utf-8")
    assert PAYLOAD + MD_EXTRA in csv  # CSV keeps the value verbatim: it is the list to re-enter from


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)


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
        dom = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/a", "--enable-logging=stderr",
                              "--v=0", "--dump-dom", url], capture_output=True, text=True, timeout=60)
        subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/b", f"--screenshot={shot}",
                        "--window-size=1280,2000", url], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Refused to" in line]
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
