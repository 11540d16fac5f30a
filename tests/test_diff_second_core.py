"""The counting statements of ``recovery diff`` run on a thread connection and in a child process
(:class:`recovery.engine.childpair.ChildPair`): the counts are the ones a single connection gives,
the child only reads, and its failures surface as SQLite errors in the parent."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

import recovery.compare.diff as diff_mod
from recovery.compare.diff import diff
from recovery.engine.childpair import ChildPair
from recovery.engine.sqlite_io import readonly_uri


def _pair(world: Path) -> tuple[Path, Path]:
    backup = next(world.glob("gestima.db.bak.*"))
    return backup, world / "gestima.db"


def test_child_process_counts_equal_one_connection(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup, live = _pair(world)
    made: list[object] = []
    real = diff_mod._more_pairs

    def spy(a, replay, child=None):  # type: ignore[no-untyped-def]
        make = real(a, replay, child)

        def wrapped():  # type: ignore[no-untyped-def]
            made.append(c := make())
            return c

        return wrapped

    monkeypatch.setattr(diff_mod, "_more_pairs", spy)
    two = diff(backup, live).to_dict()
    assert any(isinstance(c, ChildPair) for c in made), "no statement ran in the child process"
    monkeypatch.setattr(
        diff_mod, "_more_pairs", lambda a, replay, child=None: None
    )  # every statement on one connection
    one = diff(backup, live).to_dict()
    assert two == one
    assert sum(two["totals"].values()) > 0


def test_child_reports_sqlite_errors_and_only_reads(world_copy: Path) -> None:
    backup, live = _pair(world_copy)
    before = hashlib.sha256(backup.read_bytes()).hexdigest()
    with ChildPair([("old", readonly_uri(backup)), ("new", readonly_uri(live))]) as child:
        assert child.execute('SELECT count(*) FROM "old"."parts"').fetchone()[0] > 0
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            child.execute('SELECT * FROM "old"."no_such_table"')
        with pytest.raises(sqlite3.OperationalError):
            child.execute('DELETE FROM "old"."parts"')
        assert child.execute('SELECT count(*) FROM "old"."parts"').fetchone()[0] > 0
    assert hashlib.sha256(backup.read_bytes()).hexdigest() == before


def test_a_dead_child_is_an_error_not_a_hang(world: Path) -> None:
    backup, live = _pair(world)
    child = ChildPair([("old", readonly_uri(backup)), ("new", readonly_uri(live))])
    child._proc.kill()
    child._proc.wait()
    with pytest.raises(sqlite3.OperationalError, match="ended"):
        child.execute("SELECT 1")
    child.close()


def test_a_child_crash_is_named_in_one_error_without_a_traceback(
    world: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    backup, live = _pair(world)
    with ChildPair([("old", readonly_uri(backup)), ("new", readonly_uri(live))]) as child:
        with pytest.raises(sqlite3.OperationalError, match=r"ended .*not JSON serializable"):
            child.execute("SELECT x'00'")  # a blob does not travel back: the child stops
    assert "Traceback" not in capfd.readouterr().err


def test_a_child_started_without_waiting_reports_its_attach_failure_when_used(
    world: Path, tmp_path: Path
) -> None:
    """``recovery diff`` starts the child before its analysis (``wait=False``): an ATTACH that
    fails there is raised by ``ready()`` (the diff then counts on a thread connection), and a
    good one answers like a child that was waited for."""
    backup, live = _pair(world)
    missing = f"file:{tmp_path / 'missing.db'}?mode=ro"
    with ChildPair([("old", missing)], wait=False) as bad:
        with pytest.raises(sqlite3.OperationalError, match="unable to open"):
            bad.ready()
    with ChildPair([("old", readonly_uri(backup)), ("new", readonly_uri(live))], wait=False) as ok:
        assert ok.execute('SELECT count(*) FROM "new"."parts"').fetchone()[0] > 0
