"""The public API (:mod:`recovery.commands`) and the CLI agree: every command of the click group
has its keyword-only function, and on the same inputs the function's ``exit_code`` (or the
``RecoveryError`` it raises) is what ``recovery <verb>`` exits with — for a success (0), a result
to review (1), a refusal (2) and a failure (3)."""

from __future__ import annotations

import inspect
import logging
import re
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recovery import commands
from recovery.cli import main
from recovery.errors import RecoveryError
from recovery.options import ReimportOptions, RollbackOptions

OLD = (
    "CREATE TABLE item (id INTEGER PRIMARY KEY, a TEXT NOT NULL, b TEXT, c INTEGER NOT NULL);"
    "INSERT INTO item VALUES (1, 'a1', 'b1', 1), (2, 'a2', 'b2', 2), (3, 'a3', 'b3', 3);"
)
AFTER_DEPLOY = "UPDATE item SET b = 'B1' WHERE id = 1; INSERT INTO item VALUES (4, 'a4', 'b4', 4);"
DELETE = "DELETE FROM item WHERE id = 3;"  # restored by a re-import and listed for review
SINCE_IN_TARGET = (
    "UPDATE item SET b = 'x1' WHERE id = 1;"  # the same cell, another value: update_update
)


def _db(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(script)
    finally:
        conn.close()
    return path


def _pair(folder: Path, delete: bool = True) -> tuple[Path, Path]:
    """A backup and the live DB a deploy later (one row updated, one inserted, one deleted)."""
    return (
        _db(folder / "app.db.bak.20261120_140000", OLD),
        _db(folder / "app.db", OLD + AFTER_DEPLOY + (DELETE if delete else "")),
    )


def _bundle_and_target(folder: Path, conflicting: bool) -> tuple[Path, Path]:
    """The pair's bundle and a copy of the backup to re-import into (the old release changed the
    post-deploy row's cell since, when ``conflicting``)."""
    backup, live = _pair(folder, delete=conflicting)
    commands.extract(backup=backup, db=live, out_dir=folder / "bundle")
    target = folder / "target" / "app.db"
    target.parent.mkdir()
    shutil.copyfile(backup, target)
    if conflicting:
        _db(target, SINCE_IN_TARGET)
    return folder / "bundle", target


Case = Callable[[Path], tuple[list[str], Callable[[], Any]]]
"""Builds the inputs in a fresh folder; returns the CLI arguments and the API call on them."""


def diff_differs(f: Path) -> tuple[list[str], Callable[[], Any]]:
    backup, live = _pair(f)
    return ["diff", str(backup), str(live)], lambda: commands.diff(backup=backup, db=live)


def diff_same(f: Path) -> tuple[list[str], Callable[[], Any]]:
    backup, _live = _pair(f)
    return ["diff", str(backup), str(backup)], lambda: commands.diff(backup=backup, db=backup)


def diff_missing_backup(f: Path) -> tuple[list[str], Callable[[], Any]]:
    _backup, live = _pair(f)
    return ["diff", str(f / "nope.db"), str(live)], lambda: commands.diff(
        backup=f / "nope.db", db=live
    )


def extract_ok(f: Path) -> tuple[list[str], Callable[[], Any]]:
    backup, live = _pair(f)
    return (
        ["extract", str(backup), str(live), "--out", str(f / "b")],
        lambda: commands.extract(backup=backup, db=live, out_dir=f / "b"),
    )


def extract_bad_since(f: Path) -> tuple[list[str], Callable[[], Any]]:
    backup, live = _pair(f)
    return (
        ["extract", str(backup), str(live), "--out", str(f / "b"), "--since", "yesterday-ish"],
        lambda: commands.extract(backup=backup, db=live, out_dir=f / "b", since="yesterday-ish"),
    )


def snapshot_ok(f: Path) -> tuple[list[str], Callable[[], Any]]:
    _backup, live = _pair(f)
    return (
        ["snapshot", str(live), "--out", str(f / "snap")],
        lambda: commands.snapshot(db=live, out_dir=f / "snap"),
    )


def reimport_clean(f: Path) -> tuple[list[str], Callable[[], Any]]:
    bundle, target = _bundle_and_target(f, conflicting=False)
    return (
        ["reimport", str(bundle), str(target), "--out", str(f / "run"), "--yes"],
        lambda: commands.reimport(bundle_dir=bundle, db=target, out_dir=f / "run"),
    )


def reimport_conflict_review(f: Path) -> tuple[list[str], Callable[[], Any]]:
    bundle, target = _bundle_and_target(f, conflicting=True)
    return (
        ["reimport", str(bundle), str(target), "--out", str(f / "run"), "--yes"],
        lambda: commands.reimport(bundle_dir=bundle, db=target, out_dir=f / "run"),
    )


def reimport_conflict_abort(f: Path) -> tuple[list[str], Callable[[], Any]]:
    bundle, target = _bundle_and_target(f, conflicting=True)
    return (
        [
            "reimport",
            str(bundle),
            str(target),
            "--out",
            str(f / "run"),
            "--yes",
            "--on-conflict",
            "abort",
        ],
        lambda: commands.reimport(
            bundle_dir=bundle,
            db=target,
            out_dir=f / "run",
            options=ReimportOptions(on_conflict="abort"),
        ),
    )


def reimport_wrong_bundle_id(f: Path) -> tuple[list[str], Callable[[], Any]]:
    bundle, target = _bundle_and_target(f, conflicting=False)
    return (
        ["reimport", str(bundle), str(target), "--yes", "--expect-bundle-id", "0" * 64],
        lambda: commands.reimport(bundle_dir=bundle, db=target, expect_bundle_id="0" * 64),
    )


def rollback_missing_backup(f: Path) -> tuple[list[str], Callable[[], Any]]:
    _backup, live = _pair(f)
    return (
        ["rollback", str(live), "--backup", str(f / "nope.db"), "--out", str(f / "run"), "--yes"],
        lambda: commands.rollback(db=live, backup=f / "nope.db", out_dir=f / "run"),
    )


def rollback_bad_since(f: Path) -> tuple[list[str], Callable[[], Any]]:
    backup, live = _pair(f)
    return (
        [
            "rollback",
            str(live),
            "--backup",
            str(backup),
            "--out",
            str(f / "run"),
            "--yes",
            "--since",
            "soon",
        ],
        lambda: commands.rollback(
            db=live, backup=backup, out_dir=f / "run", options=RollbackOptions(since="soon")
        ),
    )


def undo_not_a_run(f: Path) -> tuple[list[str], Callable[[], Any]]:
    (f / "run").mkdir(parents=True)
    return ["undo", str(f / "run"), "--yes"], lambda: commands.undo(run_dir=f / "run")


def apply_deletes_not_a_run(f: Path) -> tuple[list[str], Callable[[], Any]]:
    (f / "run").mkdir(parents=True)
    return ["apply-deletes", str(f / "run"), "--yes"], lambda: commands.apply_deletes(
        run_dir=f / "run"
    )


def relink_no_uploads(f: Path) -> tuple[list[str], Callable[[], Any]]:
    bundle, target = _bundle_and_target(f, conflicting=False)
    return (
        ["relink", str(bundle), str(target), "--uploads", str(f / "nope")],
        lambda: commands.relink(bundle_dir=bundle, db=target, uploads=f / "nope"),
    )


def report_of_a_bundle(f: Path) -> tuple[list[str], Callable[[], Any]]:
    bundle, _target = _bundle_and_target(f, conflicting=False)
    return (
        ["report", str(bundle), "--format", "json"],
        lambda: commands.report(folder=bundle, fmt="json"),
    )


def report_missing(f: Path) -> tuple[list[str], Callable[[], Any]]:
    return ["report", str(f / "nope")], lambda: commands.report(folder=f / "nope")


def check_missing_ini(f: Path) -> tuple[list[str], Callable[[], Any]]:
    return (
        ["check", "--alembic-ini", str(f / "alembic.ini")],
        lambda: commands.check(alembic_ini=f / "alembic.ini"),
    )


def rehearse_missing_db(f: Path) -> tuple[list[str], Callable[[], Any]]:
    backup, _live = _pair(f)
    return (
        ["rehearse", str(f / "nope.db"), "--backup", str(backup)],
        lambda: commands.rehearse(db=f / "nope.db", backup=backup),
    )


def sample_into_a_file(f: Path) -> tuple[list[str], Callable[[], Any]]:
    f.mkdir(parents=True)
    (f / "file").write_text("not a folder")
    return ["sample", str(f / "file" / "world"), "--parts", "10"], lambda: commands.sample(
        out_dir=f / "file" / "world", parts=10
    )


def clean_stale_not_a_url(f: Path) -> tuple[list[str], Callable[[], Any]]:
    return ["clean-stale", str(f / "app.db")], lambda: commands.clean_stale(db=str(f / "app.db"))


CASES: dict[str, tuple[Case, int]] = {
    "diff differs": (diff_differs, 1),
    "diff same file": (diff_same, 0),
    "diff missing backup": (diff_missing_backup, 2),
    "extract": (extract_ok, 0),
    "extract bad --since": (extract_bad_since, 2),
    "snapshot": (snapshot_ok, 0),
    "reimport clean": (reimport_clean, 0),
    "reimport conflict": (reimport_conflict_review, 1),
    "reimport --on-conflict abort": (reimport_conflict_abort, 3),
    "reimport wrong bundle id": (reimport_wrong_bundle_id, 2),
    "rollback missing backup": (rollback_missing_backup, 2),
    "rollback bad --since": (rollback_bad_since, 2),
    "undo not a run": (undo_not_a_run, 2),
    "apply-deletes not a run": (apply_deletes_not_a_run, 2),
    "relink no uploads": (relink_no_uploads, 2),
    "report of a bundle": (report_of_a_bundle, 0),
    "report missing": (report_missing, 2),
    "check missing ini": (check_missing_ini, 2),
    "rehearse missing db": (rehearse_missing_db, 2),
    "sample into a file": (sample_into_a_file, 2),
    "clean-stale not a url": (clean_stale_not_a_url, 2),
}


def _api_exit(call: Callable[[], Any], verb: str) -> tuple[int, str | None]:
    """The API's exit code: the result's, or the error's (as the CLI maps it), with its one line."""
    try:
        return int(call().exit_code), None
    except RecoveryError as err:
        return err.exit_code, err.one_line()
    except Exception as exc:  # noqa: BLE001 - mapped as the CLI maps it
        err = commands.error_for(exc, verb)
        return err.exit_code, err.one_line()


@pytest.mark.parametrize("name", sorted(CASES))
def test_api_and_cli_exit_alike(name: str, tmp_path: Path) -> None:
    case, expected = CASES[name]
    args, _ = case(tmp_path / "cli")
    cli = CliRunner().invoke(main, args)
    assert cli.exception is None or isinstance(cli.exception, SystemExit), cli.output
    _, call = case(tmp_path / "api")
    code, line = _api_exit(call, args[0])
    assert (cli.exit_code, code) == (expected, expected), cli.output
    if line is not None:  # the same one line, paths and ids aside

        def same(text: str, side: str) -> str:
            return re.sub(r"[0-9a-f]{32,}", "ID", text.replace(str(tmp_path / side), "F"))

        assert same(f"error: {line}", "api") in same(cli.output, "cli")


def test_every_cli_verb_has_its_keyword_only_function() -> None:
    assert set(commands.COMMANDS) == set(main.commands)
    for verb, fn in commands.COMMANDS.items():
        assert fn.__name__ == verb.replace("-", "_"), verb
        params = inspect.signature(fn).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), (
            f"{verb}: not keyword-only"
        )
        assert inspect.signature(fn).return_annotation not in (inspect.Signature.empty, "None"), (
            verb
        )


def test_every_verb_has_a_parity_case_or_is_slow() -> None:
    """Every verb but demo (a whole sample world and rollback; tests/test_demo.py) is exercised above."""
    verbs = {name.split(" ")[0] for name in CASES}
    assert verbs | {"demo"} == set(main.commands)


def test_api_is_the_old_name_of_commands() -> None:
    from recovery import api

    for name in api.__all__:
        assert getattr(api, name) is getattr(commands, name)


def test_options_refuse_unknown_values_and_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RollbackOptions(on_conflict="merge")
    with pytest.raises(TypeError, match="unexpected option"):
        from recovery.pipeline import rollback

        rollback(tmp_path / "a.db", tmp_path / "b.db", tmp_path / "run", on_conflcit="skip")
    assert RollbackOptions(prefer="bundle").prefer.value == "bundle"


def test_verbose_logs_steps_on_stderr_and_quiet_silences_them(tmp_path: Path) -> None:
    backup, live = _pair(tmp_path)
    out = CliRunner().invoke(
        main, ["-v", "extract", str(backup), str(live), "--out", str(tmp_path / "b")]
    )
    assert out.exit_code == 0, out.output
    assert "debug recovery.progress: step extract: start" in out.output
    assert "debug recovery.commands: extract: bundle" in out.output
    quiet = CliRunner().invoke(
        main, ["-v", "--quiet", "extract", str(backup), str(live), "--out", str(tmp_path / "c")]
    )
    assert quiet.exit_code == 0 and "debug" not in quiet.output and "time:" not in quiet.output
    plain = CliRunner().invoke(
        main, ["extract", str(backup), str(live), "--out", str(tmp_path / "d")]
    )
    assert plain.exit_code == 0 and "debug" not in plain.output
    assert not [h for h in logging.getLogger("recovery").handlers], (
        "the CLI's handler outlived the command"
    )
