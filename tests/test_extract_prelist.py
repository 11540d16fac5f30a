"""The extract's changed-row lists made by worker processes (issue 18, recovery/bundle/prelist.py).

* Lists made by the workers (the tables extracted whole and the early lists of the tables that
  wait for the replay) give the bundle, byte for byte, that the extract's own connection gave.
* A commit into the live file (WAL) between the extract's snapshot and a worker's: the worker
  lists nothing, the extract lists those tables itself, from its own snapshot.
* A worker that fails: the extract lists those tables itself; the bundle is the same.
* An extract that fails while its workers run leaves no worker process and no folder behind.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from recovery.bundle import extract as extract_mod
from recovery.bundle import prelist


def _inputs(world: Path) -> tuple[Path, Path]:
    return next(world.glob("gestima.db.bak.*[0-9]")), world / "gestima.db"


def _taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every table whose list a worker handed to the extract."""
    taken: list[str] = []
    real = prelist.Prelists.source

    def source(self: prelist.Prelists, name: str) -> Any:
        got = real(self, name)
        if got is not None:
            taken.append(name)
        return got

    monkeypatch.setattr(prelist.Prelists, "source", source)
    return taken


def _bytes(bundle: Path) -> dict[str, bytes]:
    return {f: (bundle / f).read_bytes() for f in ("rows.db", "base.db", "reimport.sql")}


def test_lists_made_by_worker_processes_give_the_same_bundle_bytes(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recovery.sample import app_dir

    backup, live = _inputs(world)
    taken = _taken(monkeypatch)

    def run(out: str) -> Any:
        return extract_mod.extract(
            backup,
            live,
            tmp_path / out,
            alembic_ini=app_dir() / "alembic.ini",
            derived_lineage=lambda: ({}, None),
        )

    monkeypatch.setattr(prelist, "MIN_ROWS", 1)
    workers = run("workers")
    assert {"parts", "quotes", "quote_items"} <= set(taken)  # whole and early lists both
    monkeypatch.setattr(prelist, "MIN_ROWS", 10**12)
    taken.clear()
    alone = run("alone")
    assert taken == []
    assert workers.bundle.manifest["upgrade_replayed"]
    assert workers.bundle.counts == alone.bundle.counts
    assert _bytes(tmp_path / "workers") == _bytes(tmp_path / "alone")


def test_a_commit_between_the_snapshots_makes_the_extract_list_itself(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live file (WAL) takes a real commit after the extract fixed its snapshot and before
    the workers fix theirs: no worker list is used, and the bundle is the extract's instant."""
    before = tmp_path / "before"
    shutil.copytree(world, before)
    live_world = tmp_path / "live"
    shutil.copytree(world, live_world)
    backup, live = _inputs(live_world)
    assert sqlite3.connect(live).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    monkeypatch.setattr(prelist, "MIN_ROWS", 1)
    taken = _taken(monkeypatch)
    real_start = prelist.Prelists.start

    def start(self: prelist.Prelists, *args: Any) -> None:
        w = sqlite3.connect(live, isolation_level=None)
        try:  # another writer, as the application would be
            w.execute(
                "UPDATE parts SET name = 'changed meanwhile' WHERE id = (SELECT min(id) FROM parts)"
            )
            w.execute("DELETE FROM quote_items WHERE id = (SELECT max(id) FROM quote_items)")
        finally:
            w.close()
        real_start(self, *args)

    monkeypatch.setattr(prelist.Prelists, "start", start)
    moved = extract_mod.extract(backup, live, tmp_path / "moved")
    assert taken == []
    monkeypatch.setattr(prelist, "MIN_ROWS", 10**12)
    b_backup, b_live = _inputs(before)
    expected = extract_mod.extract(b_backup, b_live, tmp_path / "expected")
    assert moved.bundle.counts == expected.bundle.counts
    assert _bytes(tmp_path / "moved") == _bytes(tmp_path / "expected")


def test_a_failed_worker_makes_the_extract_list_itself(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup, live = _inputs(world)
    monkeypatch.setattr(prelist, "MIN_ROWS", 1)
    taken = _taken(monkeypatch)

    def broken(*_: Any) -> Any:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(prelist, "ChildPair", broken)
    failed = extract_mod.extract(backup, live, tmp_path / "failed")
    assert taken == []
    monkeypatch.setattr(prelist, "MIN_ROWS", 10**12)
    alone = extract_mod.extract(backup, live, tmp_path / "alone")
    assert failed.bundle.counts == alone.bundle.counts
    assert _bytes(tmp_path / "failed") == _bytes(tmp_path / "alone")


def _children() -> list[int]:
    """Live child processes of this process (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def test_an_extract_that_fails_while_the_workers_run_leaves_no_worker_behind(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup, live = _inputs(world)
    monkeypatch.setattr(prelist, "MIN_ROWS", 1)
    before = set(_children())

    def fail(*_: Any) -> None:
        raise RuntimeError("stopped right after the workers started")

    monkeypatch.setattr(extract_mod.progress, "set_total", fail)
    with pytest.raises(RuntimeError, match="right after the workers started"):
        extract_mod.extract(backup, live, tmp_path / "b")
    assert set(_children()) <= before  # every worker child ended (killed and reaped)
    assert list(tmp_path.iterdir()) == []  # no bundle, no partial folder
