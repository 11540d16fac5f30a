"""Output that works anywhere: full plain tables into pipes and logs, progress bars only on a
terminal (stderr), ``--quiet``, and ``recovery check``'s default range and summary line.

Every test runs the real ``recovery`` command in a subprocess, with stdout a pipe and stderr a
pipe or a pseudo-terminal."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.forkrun import forked
from tests.test_check import tiny_project

ROOT = Path(__file__).resolve().parents[1]
APP_INI = ROOT / "sample_dbs" / "app" / "alembic.ini"
RECOVERY = [sys.executable, "-m", "recovery"]
ANSI = re.compile(r"\x1b\[")


def piped(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command with stdout and stderr both files (no terminal), stdin ``/dev/null``: a
    process of its own, forked from a server that has the package imported (:mod:`tests.forkrun`)."""
    return forked(*args, cwd=cwd, timeout=120)


def stderr_on_terminal(*args: str | Path, cwd: Path | None = None) -> tuple[int, str, str]:
    """The command with stderr a pseudo-terminal (80 columns) and stdout a pipe:
    (exit code, stdout, what the terminal received)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*RECOVERY, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )
    os.close(slave)
    seen = bytearray()
    with contextlib.closing(proc.stdout):
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            if not ready:
                proc.kill()
                raise AssertionError("no output for 120 s")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        out = proc.stdout.read().decode()
    os.close(master)
    return proc.wait(timeout=60), out, seen.decode(errors="replace")


LONG = "quote_items_with_a_deliberately_very_long_table_name_that_a_terminal_would_cut_" + "x" * 40


def long_name_db(path: Path) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f'CREATE TABLE "{LONG}" (id INTEGER PRIMARY KEY, v TEXT)')
        conn.executemany(f'INSERT INTO "{LONG}" (v) VALUES (?)', [("a",)] * 1234)
        conn.execute('CREATE TABLE "evil\x1b[31mred" (id INTEGER PRIMARY KEY)')
        conn.commit()
    return path


def test_piped_tables_are_full_width_plain_and_escaped(tmp_path: Path) -> None:
    db = long_name_db(tmp_path / "app.db")
    res = piped("snapshot", db, "--out", tmp_path / "snap")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = next(line for line in lines if line.startswith("table"))
    assert header.split() == ["table", "rows"]  # whole header, no border
    row = next(line for line in lines if LONG in line)
    assert row.split() == [LONG, "1,234"]  # the name whole, and its count, on one line
    assert "…" not in res.stdout and not ANSI.search(res.stdout)
    assert any(line.split()[0] == r"evil\x1b[31mred" for line in lines if line.startswith("evil"))

    # the diff's wider table: every header whole, the long name and its counts on one line
    copy = tmp_path / "live.db"
    shutil.copy(db, copy)
    with contextlib.closing(sqlite3.connect(copy)) as conn:
        conn.execute(f"INSERT INTO \"{LONG}\" (v) VALUES ('b')")
        conn.commit()
    res = piped("diff", db, copy)
    assert res.returncode == 1, res.stderr
    header = next(line for line in res.stdout.splitlines() if line.startswith("table"))
    for name in ("key", "inserted", "updated", "deleted", "after deploy", "note"):
        assert name in header
    row = next(line for line in res.stdout.splitlines() if line.startswith(LONG))
    assert row.split()[:5] == [LONG, "id", "1", "0", "0"], row


def test_progress_bar_only_on_a_terminal_and_never_with_quiet(world: Path, tmp_path: Path) -> None:
    ini = APP_INI
    args = ["--backup", next(world.glob("gestima.db.bak.*")), "--alembic-ini", ini, "--yes"]

    def fresh(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(world, folder)
        return folder / "gestima.db"

    db = fresh("tty")
    code, out, term = stderr_on_terminal("rollback", db, *args, "--out", db.parent / "run")
    assert code in (0, 1), term
    assert "━" in term and "extract" in term and "reimport" in term  # the bar, drawn on stderr
    assert re.search(r"[\r\n]time: .*extract \d+\.\d\d s .*total \d+\.\d\d s", term)
    assert "━" not in out and not ANSI.search(out)
    assert "inserted" in out  # the results are on stdout, plain

    db = fresh("quiet")
    code, out, term = stderr_on_terminal(
        "--quiet", "rollback", db, *args, "--out", db.parent / "run"
    )
    assert code in (0, 1)
    assert "━" not in term and "time:" not in term and "· extracting" not in term
    assert "inserted" in out

    db = fresh("pipe")
    res = piped("rollback", db, *args, "--out", db.parent / "run")
    assert res.returncode in (0, 1)
    assert "━" not in res.stderr and not ANSI.search(res.stderr) and not ANSI.search(res.stdout)
    assert "time: " in res.stderr  # the timing line is a result of the run, on stderr

    # --json: stdout is the JSON alone, with the bar on the terminal
    live = world / "gestima.db"
    code, out, term = stderr_on_terminal(
        "extract",
        next(world.glob("gestima.db.bak.*")),
        live,
        "--out",
        tmp_path / "bundle",
        "--alembic-ini",
        ini,
        "--json",
    )
    assert code in (0, 1) and json.loads(out)["bundle_id"]
    assert "━" in term and "time:" not in term
    code, out, term = stderr_on_terminal(
        "extract",
        next(world.glob("gestima.db.bak.*")),
        live,
        "--out",
        tmp_path / "bundle2",
        "--alembic-ini",
        ini,
        "--json",
        "--quiet",
    )
    assert code in (0, 1) and json.loads(out)["bundle_id"] and term.strip() == ""


def test_sample_shows_a_bar_on_a_terminal(tmp_path: Path) -> None:
    code, out, term = stderr_on_terminal("sample", tmp_path / "w", "--parts", "60")
    assert code == 0 and out == ""
    assert "sample" in term and "/5" in term and "eta" in term and "time: sample" in term
    code, out, term = stderr_on_terminal("sample", tmp_path / "w2", "--parts", "60", "--quiet")
    assert code == 0 and "━" not in term and "time:" not in term


def test_check_starts_at_the_newest_manifest_and_says_so(tmp_path: Path) -> None:
    ini = tiny_project(tmp_path / "app")
    res = piped("check", "--alembic-ini", ini, cwd=tmp_path)
    first = res.stdout.splitlines()[0]
    assert first.startswith("base → r3: does NOT roll back"), first
    assert "no snapshot manifest" in first
    for name, created, rev in (
        ("a.db.bak.20261101_000000", "2026-11-01T00:00:00", "r1"),
        ("a.db.bak.20261120_000000", "2026-11-20T00:00:00", "r2"),
    ):
        (tmp_path / f"{name}.manifest.json").write_text(
            json.dumps({"created_at": created, "alembic_revision": rev}), encoding="utf-8"
        )
    (tmp_path / "broken.db.bak.1.manifest.json").write_text("{not json", encoding="utf-8")
    res = piped("check", "--alembic-ini", ini, cwd=tmp_path)
    first = res.stdout.splitlines()[0]
    assert res.returncode == 0 and first.startswith("r2 → r3: rolls back without loss"), first
    assert "a.db.bak.20261120_000000.manifest.json" in first
    res = piped("check", "--alembic-ini", ini, "--json", cwd=tmp_path)
    data = json.loads(res.stdout)
    assert (
        data["from"] == "r2" and "manifest" in data["from_reason"] and len(data["revisions"]) == 1
    )
    res = piped("check", "--alembic-ini", ini, "--from", "r1", "--json", cwd=tmp_path)
    data = json.loads(res.stdout)
    assert data["from"] == "r1" and data["from_reason"] == "--from" and len(data["revisions"]) == 2


def test_check_refuses_a_manifest_of_another_history_and_names_it(tmp_path: Path) -> None:
    ini = tiny_project(tmp_path / "app")
    (tmp_path / "other.db.bak.20261120_000000.manifest.json").write_text(
        json.dumps({"created_at": "2026-11-20T00:00:00", "alembic_revision": "zz999_other_app"}),
        encoding="utf-8",
    )
    res = piped("check", "--alembic-ini", ini, cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert (
        "zz999_other_app" in res.stderr
        and "other.db.bak.20261120_000000.manifest.json" in res.stderr
    )
    assert "Traceback" not in res.stderr
