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
    assert re.search(rf"`recovery {re.escape(name)}\b", README), (
        f"recovery {name} is missing from README.md"
    )


def test_readme_test_command_is_what_ci_runs() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd.strip() in ci


def _exit_code_rows() -> dict[int, str]:
    section = README.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    return {
        int(code): meaning
        for code, meaning in re.findall(r"^\| (\d+) \| (.*) \|$", section, flags=re.M)
    }


def test_readme_exit_code_table_is_what_the_cli_returns(tmp_path: Path) -> None:
    """The README's exit-code table lists exactly the codes real runs end with, each row saying
    what that run was: no difference (0), differences to review (1), refused input (2), an
    aborted re-import (3)."""
    import shutil
    import sqlite3
    from contextlib import closing

    def make(path: Path, script: str) -> Path:
        with closing(sqlite3.connect(path)) as c:
            c.executescript(script)
        return path

    backup = make(
        tmp_path / "app.db.bak.20261120_140000",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT);INSERT INTO t VALUES (1, 'x');",
    )
    live = tmp_path / "app.db"
    shutil.copyfile(backup, live)
    make(live, "INSERT INTO t VALUES (2, 'made after the deploy');")
    target = tmp_path / "target.db"
    shutil.copyfile(backup, target)
    make(target, "INSERT INTO t VALUES (2, 'made by the old release since');")

    def run(*args: object) -> int:
        return CliRunner().invoke(main, ["--quiet", *map(str, args)]).exit_code

    assert run("extract", backup, live, "--out", tmp_path / "bundle") == 0
    observed = {
        run("diff", backup, backup): "no difference",
        run("diff", backup, live): "differences",
        run("diff", tmp_path / "missing.db", live): "refused",
        run(
            "reimport",
            tmp_path / "bundle",
            target,
            "--out",
            tmp_path / "run",
            "--on-conflict",
            "abort",
            "--yes",
        ): "--on-conflict abort",
    }
    from recovery.errors import ExitCode

    rows = _exit_code_rows()
    assert sorted(observed) == sorted(rows) == sorted(int(c) for c in ExitCode)
    for code, words in observed.items():
        assert words in rows[code], (
            f"README exit code {code} ({rows[code]!r}) does not mention {words!r}"
        )


@pytest.mark.parametrize("name", commands())
def test_help_examples_survive_80_columns(name: str) -> None:
    """Each line of a command's Example block is printed verbatim at 80 columns (click would
    otherwise re-wrap it, leaving a stray backslash or an option apart from its value)."""
    doc = main.commands[name].help or ""
    example = [
        ln.strip()
        for ln in doc.split("Example:", 1)[1].splitlines()
        if ln.strip() and ln.strip() != "\b"
    ]
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

    proc = subprocess.run(
        [sys.executable, "-c", readme_api_example()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"rows changed since the deploy: [1-9]\d* - diff exits 1", lines[0]), (
        proc.stdout
    )
    assert lines[1].startswith("review needed - rollback exits 1 - report: "), proc.stdout
    assert (tmp_path / "run" / "report.html").is_file() and (
        tmp_path / "run" / "journal.json"
    ).is_file()
    assert proc.stderr == "", "the API printed diagnostics without being asked to"
