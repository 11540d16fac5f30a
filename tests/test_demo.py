"""`recovery demo` — the README's main job — builds the world, rolls it back and verifies."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from recovery.cli import main


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
