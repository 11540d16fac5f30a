"""The extract's changed-row lists made by worker processes (issue 18, recovery/bundle/prelist.py).

* Lists made by the workers (the tables extracted whole and the early lists of the tables that
  wait for the replay) give the bundle, byte for byte, that the extract's own connection gave.
* A commit into the live file (WAL) between the extract's snapshot and a worker's: the worker
  lists nothing, the extract lists those tables itself, from its own snapshot.
* A worker that fails: the extract lists those tables itself; the bundle is the same.
* An extract that fails while its workers run leaves no worker process and no folder behind.
* The workers begin before the rules are checked: a list begun under a rule the checks then
  replace (an inferred rule) is dropped and made again with the checked rule, and the bundle is
  byte for byte the one made with no worker at all; a rule the checks refuse ends the extract
  (exit 2) with no worker and no folder left.
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
from recovery.engine.sqlbuild import sql
from recovery.errors import RecoveryError


def _inputs(world: Path) -> tuple[Path, Path]:
    return next(world.glob("gestima.db.bak.*[0-9]")), world / "gestima.db"


def _taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every table whose list a worker handed to the extract."""
    taken: list[str] = []
    real = prelist.Prelists.source

    def source(self: prelist.Prelists, name: str, conn: Any) -> Any:
        got = real(self, name, conn)
        if got is not None:
            taken.append(name)
        return got

    monkeypatch.setattr(prelist.Prelists, "source", source)
    return taken


def _bytes(bundle: Path) -> dict[str, bytes]:
    return {f: (bundle / f).read_bytes() for f in ("rows.db", "base.db", "reimport.sql")}


def _assert_as_without_workers(
    made: Any, folder: Path, backup: Path, live: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle ``made`` (in ``folder``) has the counts and bytes of the one the extract makes
    from ``backup`` and ``live`` with no worker."""
    monkeypatch.setattr(prelist, "MIN_ROWS", 10**12)
    alone = extract_mod.extract(backup, live, folder.with_name(folder.name + "-alone"))
    assert made.bundle.counts == alone.bundle.counts
    assert _bytes(folder) == _bytes(folder.with_name(folder.name + "-alone"))


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

    ran: list[str] = []
    begin = extract_mod._attach_and_begin

    def traced(pre: Any, *args: Any) -> None:
        pre.pair.set_trace_callback(ran.append)
        begin(pre, *args)

    monkeypatch.setattr(extract_mod, "_attach_and_begin", traced)
    monkeypatch.setattr(prelist, "MIN_ROWS", 1)
    workers = run("workers")
    assert {"parts", "quotes", "quote_items"} <= set(taken)  # whole and early lists both
    # the files other processes wrote are first read through their own schema alone
    # (changes.read_schema_of: the 10M world's "no such table: prelist0.l0", round 14)
    for schema in ("replayed", "prelist0", "prelist1"):
        first = next(s for s in ran if f'"{schema}".' in s)
        assert f'"{schema}"."sqlite_master"' in first, (schema, first)
    monkeypatch.setattr(extract_mod, "_attach_and_begin", begin)
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
    _assert_as_without_workers(moved, tmp_path / "moved", *_inputs(before), monkeypatch)


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
    _assert_as_without_workers(failed, tmp_path / "failed", backup, live, monkeypatch)


def test_a_list_the_extracts_connection_does_not_see_is_listed_by_the_extract(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker committed its lists, but the extract's connection does not find one ("no such
    table: prelist0.l0", seen on the 10M world): the extract lists that table itself, and the
    bundle is the one made without workers, never a failed extract."""
    backup, live = _inputs(world)
    monkeypatch.setattr(prelist, "MIN_ROWS", 1)
    real = prelist.Prelists.source
    hidden: set[int] = set()
    taken: list[str] = []

    def source(self: prelist.Prelists, name: str, conn: Any) -> Any:
        where = self._where.get(name)
        if where is not None and where[0] not in hidden:
            i = where[0]
            self._done[i].wait()
            hidden.add(i)
            other = sqlite3.connect(self.files[i], isolation_level=None)
            try:  # every list of the worker's file, out of the extract's sight
                for (t,) in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                    other.execute(f'ALTER TABLE "{t}" RENAME TO "{t}_out_of_sight"')
            finally:
                other.close()
        got = real(self, name, conn)
        if got is not None:
            taken.append(name)
        return got

    monkeypatch.setattr(prelist.Prelists, "source", source)
    made = extract_mod.extract(backup, live, tmp_path / "unseen")
    assert hidden and taken == []
    _assert_as_without_workers(made, tmp_path / "unseen", backup, live, monkeypatch)


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


def test_a_list_begun_before_the_checks_inferred_a_rule_is_made_again_with_it(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the migrations' rules, ``parts.price`` has none when the workers begin; the checks
    infer ``price_cents / 100.0``, which changes the parts list's condition (what counts as an
    updated part). The list begun without it is never read: the one the extract takes is made
    with the inferred rule, and the bundle is the extract's own, byte for byte."""
    backup, live = _inputs(world)
    monkeypatch.setattr(prelist, "MIN_ROWS", 1)
    begun: list[str] = []
    held: list[tuple[set[str], list[str]]] = []  # (dropped, [the parts list's query])
    real_start, real_hold = prelist.Prelists.start, prelist.Prelists.hold_to

    def start(self: prelist.Prelists, *args: Any) -> None:
        begun.extend(self._queries.values())
        real_start(self, *args)

    def hold_to(self: prelist.Prelists, jobs: list[prelist.ListJob]) -> None:
        real_hold(self, jobs)
        i, name = self._where["parts"]
        made = next(job for job, listed in self._groups[i] if listed == name)
        held.append((set(self._dropped), [sql(made.query())]))

    monkeypatch.setattr(prelist.Prelists, "start", start)
    monkeypatch.setattr(prelist.Prelists, "hold_to", hold_to)
    taken = _taken(monkeypatch)
    workers = extract_mod.extract(backup, live, tmp_path / "workers")
    assert not any('"price"' in q for q in begun)  # begun before the rule was known
    assert len(held) == 1 and held[0][0]  # the parts list begun so was dropped
    assert '"o"."price" IS NOT "n"."price_cents" / 100.0' in held[0][1][0]  # the rule's list
    assert "parts" in taken  # is the one the extract took
    price = next(
        c for c in workers.bundle.manifest["mapping"]["parts"]["columns"] if c["column"] == "price"
    )
    assert price["source"] == "inferred"
    _assert_as_without_workers(workers, tmp_path / "workers", backup, live, monkeypatch)


def test_a_rule_refused_while_the_workers_run_leaves_no_worker_and_no_folder(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup, live = _inputs(world)
    monkeypatch.setattr(prelist, "MIN_ROWS", 1)
    started: list[int] = []
    real_start = prelist.Prelists.start

    def start(self: prelist.Prelists, *args: Any) -> None:
        real_start(self, *args)
        started.append(len(self._threads))

    monkeypatch.setattr(prelist.Prelists, "start", start)
    mp = tmp_path / "map.toml"
    mp.write_text("[tables.parts.columns]\nname = \"upper(name) || '!'\"\n")
    before = set(_children())
    out = tmp_path / "out" / "b"
    with pytest.raises(RecoveryError, match=r"parts\.name") as err:
        extract_mod.extract(backup, live, out, mapping=mp)
    assert err.value.exit_code == 2
    assert started and started[0] > 0  # the workers ran while the rules were checked
    assert set(_children()) <= before
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_list_whose_file_is_locked_or_lacks_it_is_not_used(tmp_path: Path) -> None:
    """``Prelists.source`` hands out a worker's finished list only when the extract's connection
    can read it now: the list's table missing, or its file locked by someone else ("database is
    locked", seen on the 10M world right after the worker had ended), gives None — the extract
    lists the table itself — and any other error is raised."""
    import threading

    from recovery.engine.sqlbuild import table

    lists = prelist.Prelists(tmp_path, [])
    path = tmp_path / "changed-lists-0.db"
    worker = sqlite3.connect(path, isolation_level=None)
    worker.execute("CREATE TABLE l0 (k, d)")
    lists.files, lists.schemas = [path], ["prelist0"]
    lists._where = {"parts": (0, "l0"), "quotes": (0, "l1")}
    lists._done, lists._ok = [threading.Event()], [True]
    lists._done[0].set()
    conn = sqlite3.connect(":memory:", timeout=0.05, isolation_level=None)
    lists.attach(conn)
    conn.execute("BEGIN")
    assert lists.source("parts", conn) == table("l0", "prelist0")
    assert lists.source("quotes", conn) is None  # (no table l1 in the file)
    conn.execute("COMMIT")
    worker.execute("BEGIN EXCLUSIVE")  # another holder of the file
    try:
        assert lists.source("parts", conn) is None
    finally:
        worker.execute("ROLLBACK")
    assert lists.source("parts", conn) == table("l0", "prelist0")
    worker.close()
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError):  # an error that is no verdict on the list
        lists.source("parts", conn)


def _write(path: Path, *statements: str) -> None:
    """``statements`` run on ``path`` by another process, which then ends (a worker, a replay)."""
    import subprocess
    import sys

    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "for s in sys.argv[2:]: c.execute(s)\n"
        "c.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(path), *statements], check=True)


def _holder(path: Path, releasing: Path) -> Any:
    """Another process holding ``path`` write-locked (EXCLUSIVE), as the replayed upgrade's child
    holds its file while it writes; returns once the lock is taken. It lets go after 20 s, and
    makes ``releasing`` first: a caller that finds no ``releasing`` ran while the lock was held."""
    import subprocess
    import sys

    code = (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE'); c.execute('CREATE TABLE IF NOT EXISTS held (a)')\n"
        "print('held', flush=True); time.sleep(20)\n"
        "open(sys.argv[2], 'w').close(); c.execute('COMMIT'); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(releasing)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_list_is_read_while_another_process_holds_another_attached_file(
    tmp_path: Path,
) -> None:
    """The 10M world's cause (round 14): asked for directly, a worker's new list made SQLite check
    every attached file's schema, and it stopped at the replayed upgrade's file, which the
    replay's child held: "no such table: prelist0.l0" after the busy wait. Shown first with a
    short wait; then :meth:`Prelists.source` hands the list out while the other file is still
    held (the extract's connection here waits up to 30 s for a lock, the holder keeps it 20 s)."""
    import threading

    from recovery.engine.sqlbuild import table

    lists = prelist.Prelists(tmp_path, [])
    path, replayed = tmp_path / "changed-lists-0.db", tmp_path / "replayed-upgrade.db"
    lists.files, lists.schemas = [path], ["prelist0"]
    lists._where = {"parts": (0, "l0")}
    lists._done, lists._ok = [threading.Event()], [True]
    conn = sqlite3.connect(":memory:", timeout=0.05, isolation_level=None)
    replayed.touch()
    conn.execute("ATTACH DATABASE ? AS replayed", (str(replayed),))  # (attached first, as there)
    lists.attach(conn)
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # every schema read: empty
    _write(path, "CREATE TABLE l0 (k, d)", "INSERT INTO l0 VALUES (1, 'x')")
    lists._done[0].set()
    releasing = tmp_path / "releasing"
    holder = _holder(replayed, releasing)
    try:
        with pytest.raises(sqlite3.OperationalError, match=r"no such table: prelist0\.l0"):
            conn.execute("SELECT k FROM prelist0.l0").fetchall()  # SQLite's behaviour: the cause
        conn.execute("PRAGMA busy_timeout = 30000")
        assert lists.source("parts", conn) == table("l0", "prelist0")
        assert not releasing.exists()  # handed out while the replay's file was still held
        assert conn.execute("SELECT k, d FROM prelist0.l0").fetchall() == [(1, "x")]
    finally:
        holder.kill()
        holder.wait()
        conn.close()


def test_the_replayed_copy_is_read_while_a_worker_still_holds_its_list(tmp_path: Path) -> None:
    """The other way round: the replay's child has written its copy and ended while a worker
    still writes its list (a worker held its file for 26 s of a 10M extract): the extract's
    first read of the copy reads that file's schema alone
    (:func:`~recovery.compare.changes.read_schema_of`), so it neither fails nor waits for the
    worker."""
    from recovery.compare.changes import read_schema_of

    replayed, listed = tmp_path / "replayed-upgrade.db", tmp_path / "changed-lists-1.db"
    conn = sqlite3.connect(":memory:", timeout=30, isolation_level=None)
    replayed.touch()
    conn.execute("ATTACH DATABASE ? AS replayed", (str(replayed),))
    conn.execute("ATTACH DATABASE ? AS prelist1", (str(listed),))
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    _write(replayed, "CREATE TABLE parts (id, price)", "INSERT INTO parts VALUES (7, 1.5)")
    releasing = tmp_path / "releasing"
    worker = _holder(listed, releasing)
    try:
        read_schema_of(conn, "replayed")
        assert conn.execute("SELECT id, price FROM replayed.parts").fetchall() == [(7, 1.5)]
        assert not releasing.exists()  # read while the worker's file was still held
    finally:
        worker.kill()
        worker.wait()
        conn.close()
