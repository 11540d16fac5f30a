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
