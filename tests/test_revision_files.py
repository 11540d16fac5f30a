"""The application's revision files are read as text by the tool itself, never run in its process
(`recovery/migrate/scriptfiles.py`): their module-level code runs only in the sandbox child."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from recovery.errors import RecoveryError
from recovery.migrate.migrations import revisions_between
from recovery.migrate.scriptfiles import read_revision_file, revision_files
from recovery.sample import app_dir

ROOT = Path(__file__).resolve().parents[1]
HEAD, OLD = "bb006_drop_parts_notes", "aa001_add_drawing_number_drop_drawings"


def app_copy(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    shutil.copytree(app_dir(), app, ignore=shutil.ignore_patterns("__pycache__"))
    return app


def test_the_text_read_gives_alembics_own_revisions(tmp_path: Path) -> None:
    """Same ids, parents, docs, paths and order as Alembic's loader (which imports the files:
    run here on a copy, in this test only); the stub flags as the sample app's files say."""
    app = app_copy(tmp_path)
    loaded = ScriptDirectory.from_config(Config(str(app / "alembic.ini")))
    read = revision_files(app / "alembic.ini")
    assert read.get_heads() == loaded.get_heads() == [HEAD]
    pairs = list(
        zip(
            read.iterate_revisions(HEAD, "base"),
            loaded.iterate_revisions(HEAD, "base"),
            strict=True,
        )
    )
    assert len(pairs) == 9
    for a, b in pairs:
        assert (a.revision, a.down_revision, a.doc, a.path) == (
            b.revision,
            b.down_revision,
            b.doc,
            b.path,
        )
    stubs = {
        r.revision for r in revisions_between(app / "alembic.ini", HEAD, OLD) if r.downgrade_stub
    }
    assert stubs == {"bb003_quote_discount_pct"}


def test_module_level_code_of_a_revision_never_runs_in_the_tools_process(
    world_copy: Path, tmp_path: Path
) -> None:
    """A revision file that records the pid of every process that runs it (as an app's
    `from app.models import ...` would run the app's code at import): a rollback with its
    --alembic-ini runs it only in sandbox children, never in the `recovery` process itself."""
    app = app_copy(tmp_path)
    marker = tmp_path / "ran-in.txt"
    rev = app / "versions" / "bb004_price_cents.py"
    text = rev.read_text(encoding="utf-8")
    rev.write_text(
        text.replace(
            "from alembic import op\n",
            "from alembic import op\n\nimport os as _os\n"
            f"with open({str(marker)!r}, 'a') as _fh:\n"
            "    _fh.write(f'{_os.getpid()}\\n')\n",
            1,
        ),
        encoding="utf-8",
    )
    w = world_copy
    backup = next(w.glob("gestima.db.bak.*"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recovery", "rollback", str(w / "gestima.db"), "--backup",
         str(backup), "--alembic-ini", str(app / "alembic.ini"), "--out", str(tmp_path / "run"),
         "--yes"],
        cwd=w, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]  # finished, with values to review
    ran_in = {int(x) for x in marker.read_text(encoding="utf-8").split()}
    assert ran_in, "the sandbox ran the revision (its downgrade is captured)"
    assert proc.pid not in ran_in


def test_a_computed_revision_id_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "x1_computed.py"
    path.write_text('revision = "x" + "1"\ndown_revision = None\n', encoding="utf-8")
    with pytest.raises(RecoveryError, match=r"computes its revision .*cannot be known"):
        read_revision_file(path)
    annotated = tmp_path / "x2_annotated.py"
    annotated.write_text(
        '"""doc"""\nrevision: str = "x2"\ndown_revision: str | None = ("a", "b")\n'
        "def downgrade() -> None:\n    raise NotImplementedError()\n",
        encoding="utf-8",
    )
    script = read_revision_file(annotated)
    assert script is not None and script.revision == "x2"
    assert script.down_revision == ("a", "b") and script.downgrade_stub and script.doc == "doc"
