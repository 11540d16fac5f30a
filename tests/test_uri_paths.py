"""Paths that are legal file names but mean something in a URI (``?``, ``#``, ``%41``, spaces).

SQLite's ``file:`` URIs and SQLAlchemy's ``sqlite:///`` URLs read ``?`` as the start of the query,
``#`` as a fragment and ``%41`` as ``A``: a path glued into one unescaped opens (or creates) some
other file. Every command must treat such a folder as just a folder.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from recovery.cli import main
from recovery.engine.sqlite_io import file_uri
from recovery.sample import app_dir

INI = app_dir() / "alembic.ini"
WEIRD = "we?ird #dir %41"


def _cli(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res.exit_code, res.output


def test_file_uri_names_exactly_the_file(tmp_path: Path) -> None:
    folder = tmp_path / WEIRD
    folder.mkdir()
    real = folder / "x?y#z%41.db"
    with sqlite3.connect(real) as c:
        c.execute("CREATE TABLE t (v)")
        c.execute("INSERT INTO t VALUES (7)")
    c.close()
    conn = sqlite3.connect(file_uri(real, mode="ro"), uri=True)
    try:
        assert conn.execute("SELECT v FROM t").fetchall() == [(7,)]
    finally:
        conn.close()
    assert sorted(p.name for p in folder.iterdir()) == ["x?y#z%41.db"]  # nothing created beside it


def test_sample_rehearse_and_rollback_in_a_folder_named_like_a_uri(tmp_path: Path) -> None:
    w = tmp_path / WEIRD
    code, out = _cli("sample", w, "--parts", "40", "--seed", "3")
    assert code == 0, out
    backup = next(w.glob("gestima.db.bak.*"))
    before = {p.name for p in tmp_path.iterdir()}

    rehearsal = tmp_path / "rehearse?#%41"
    code, out = _cli(
        "rehearse", w / "gestima.db", "--backup", backup, "--alembic-ini", INI,
        "--uploads", w / "uploads", "--out", rehearsal,
    )  # fmt: skip
    assert code == 0, out
    assert "PASS" in out

    run = tmp_path / "run?#%41"
    code, out = _cli(
        "rollback", w / "gestima.db", "--backup", backup, "--alembic-ini", INI,
        "--uploads", w / "uploads", "--out", run, "--yes",
    )  # fmt: skip
    assert code == 1, out  # the sample world always has lost values to review
    report = json.loads((run / "report.json").read_text())
    assert report["summary"]["verified"] is True
    assert report["summary"]["rows_inserted"] > 0
    # nothing appeared beside the folders under a truncated name ("we", "run", "rehearse")
    assert {p.name for p in tmp_path.iterdir()} - before == {rehearsal.name, run.name}


def test_no_file_uri_is_glued_from_a_path() -> None:
    """Every ``file:`` URI comes from ``engine.sqlite_io.file_uri`` (a path glued into an
    f-string opened, or created, the file named by its text up to the first ``?`` or ``#``)."""
    import re

    import recovery

    root = Path(recovery.__file__).parent
    glued = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted(root.rglob("*.py"))
        if p.name != "sqlite_io.py"
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"""f["']file:\{""", line)
    ]
    assert glued == []
