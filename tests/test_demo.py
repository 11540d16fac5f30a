"""`recovery demo` — the README's main job — builds the world, rolls it back and verifies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from recovery.cli import main
from tests.clirun import invoke

ROOT = Path(__file__).resolve().parents[1]


def test_demo_rolls_back_the_sample_world_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", str(out), "--parts", "40"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "run" / "report.json").read_text(encoding="utf-8"))
    world = json.loads((out / "world.json").read_text(encoding="utf-8"))
    assert report["outcome"]["verification"]["ok"] is True
    assert report["outcome"]["lost_total"] == len(world["lost"])
    assert (out / "run" / "report.html").is_file()


def test_demo_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me", encoding="utf-8")
    result = CliRunner().invoke(main, ["demo", str(tmp_path)])
    assert result.exit_code == 2
    assert (tmp_path / "x").read_text(encoding="utf-8") == "keep me"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recovery", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_non_editable_install_builds_the_sample_world(tmp_path: Path) -> None:
    """`pip install .` (not -e) ships the sample app as package data: `recovery sample` works from
    any folder, with nothing of the checkout on the path."""
    target = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if pip.returncode != 0:
        pytest.skip(f"pip could not build the project here: {pip.stderr.strip().splitlines()[-1:]}")
    env = {k: v for k, v in os.environ.items() if k != "RECOVERY_SAMPLE_APP"}
    env["PYTHONPATH"] = str(target)
    out = tmp_path / "world"
    res = _run(["sample", str(out), "--parts", "20"], cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert (out / "world.json").is_file() and (out / "gestima.db").is_file()
    where = subprocess.run(
        [sys.executable, "-c", "import recovery.sample as s; print(s.app_dir())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(target), where


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_sample_removes_what_it_created(tmp_path: Path, existed: bool) -> None:
    """A migration that fails half-way through building the world leaves no half-built folder:
    the same command then simply works."""
    broken = tmp_path / "app"
    shutil.copytree(ROOT / "recovery" / "sample" / "gestima_app", broken)
    rev = broken / "versions" / "bb002_rename_quote_customer.py"
    rev.write_text(
        rev.read_text(encoding="utf-8").replace(
            "def upgrade() -> None:\n",
            "def upgrade() -> None:\n    raise RuntimeError('broken migration')\n",
            1,
        ),
        encoding="utf-8",
    )
    assert "broken migration" in rev.read_text(encoding="utf-8")
    out = tmp_path / "world"
    if existed:
        out.mkdir()
    # in this process (tests/clirun.py): RECOVERY_SAMPLE_APP is read when the world is built
    res = invoke("sample", out, "--parts", "20", env={"RECOVERY_SAMPLE_APP": str(broken)})
    assert res.returncode != 0
    assert "broken migration" in res.stderr
    if existed:
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert not out.exists()
    env = {"RECOVERY_SAMPLE_APP": None}
    assert invoke("sample", out, "--parts", "20", env=env).returncode == 0
    assert (out / "world.json").is_file()
