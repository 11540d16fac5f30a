"""Docs are tested: every command has --help text ending in a runnable example, appears in the
README, and the README's test command is exactly what CI runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from recovery.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def commands() -> list[str]:
    return sorted(main.commands)


@pytest.mark.parametrize("name", commands())
def test_command_has_help_with_example(name: str) -> None:
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output, f"`recovery {name} --help` lacks an Example block"
    assert "Exit codes" in result.output
    example = result.output.split("Example:", 1)[1]
    assert f"recovery {name}" in example


@pytest.mark.parametrize("name", commands())
def test_command_is_in_readme(name: str) -> None:
    assert re.search(rf"`recovery {re.escape(name)}\b", README), f"recovery {name} is missing from README.md"


def test_readme_test_command_is_what_ci_runs() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd.strip() in ci


def test_readme_documents_every_exit_code() -> None:
    """The README's exit-code table lists exactly the codes the tool can exit with."""
    from recovery.errors import ExitCode

    section = README.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert documented == {int(c) for c in ExitCode}


@pytest.mark.parametrize("name", commands())
def test_help_examples_survive_80_columns(name: str) -> None:
    """Each line of a command's Example block is printed verbatim at 80 columns (click would
    otherwise re-wrap it, leaving a stray backslash or an option apart from its value)."""
    doc = main.commands[name].help or ""
    example = [ln.strip() for ln in doc.split("Example:", 1)[1].splitlines() if ln.strip() and ln.strip() != "\b"]
    assert example, f"{name}: no example lines"
    out = CliRunner().invoke(main, [name, "--help"], terminal_width=80).output
    shown = [ln.strip() for ln in out.split("Example:", 1)[1].splitlines()]
    for line in example:
        assert line in shown, f"`recovery {name} --help` re-wraps the example line {line!r}"


def readme_api_example() -> str:
    """The README's Python API example: the first ```python block of its "### Python API" section."""
    section = README.split("### Python API", 1)[1].split("\n#", 1)[0]
    blocks = re.findall(r"```python\n(.*?)\n```", section, flags=re.S)
    assert blocks, "the Python API section has no ```python example"
    return blocks[0]


def test_readme_api_example_runs(tmp_path: Path) -> None:
    """The README's API example runs as written on a small sample world, in a fresh process, and
    its results are those of the CLI (diff finds the world's changes; the rollback ends with the
    sample world's expected "review needed", exit 1, and writes its report)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", readme_api_example()], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"rows changed since the deploy: [1-9]\d* - diff exits 1", lines[0]), proc.stdout
    assert lines[1].startswith("review needed - rollback exits 1 - report: "), proc.stdout
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "journal.json").is_file()
    assert proc.stderr == "", "the API printed diagnostics without being asked to"
