"""The extract's faster paths give the bundle the slower ones gave (issue 18).

* The updated, base and deleted rows of a rowid-keyed table come from one read of the backup
  table (a temporary key list): ``rows.db`` and ``base.db`` hold the same rows, in the same
  order, as with the separate join and anti-join.
* The seal takes the upload copies' digests from the copy (taken of the bytes written): the
  manifest's hashes are the files' real hashes, and the bundle opens with every hash verified.
* The bundle's file listing (one ``scandir`` per folder) lists what ``rglob`` listed.
* The bounded replay's thread keeps the caller's ``protecting`` files.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from recovery.bundle import extract as extract_mod
from recovery.bundle.store import _content_files, open_bundle


def _inputs(world: Path) -> tuple[Path, Path]:
    return next(world.glob("gestima.db.bak.*[0-9]")), world / "gestima.db"


def _rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows with their rowids, in rowid order (the order the extract wrote them)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            n: conn.execute(f'SELECT rowid, * FROM "{n}" ORDER BY rowid').fetchall() for n in names
        }
    finally:
        conn.close()


def test_one_read_of_the_backup_table_gives_the_rows_the_join_and_anti_join_gave(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup, live = _inputs(world)
    used: list[str] = []
    real = extract_mod._rest_on_rowid
    monkeypatch.setattr(
        extract_mod, "_rest_on_rowid", lambda c, a, s, *r: used.append(s.name) or real(c, a, s, *r)
    )
    fast = extract_mod.extract(backup, live, tmp_path / "fast")
    assert {"parts", "quotes", "quote_items"} <= set(used)  # the one-read path was taken
    monkeypatch.setattr(extract_mod, "sides_on_rowid", lambda conn, s: False)
    slow = extract_mod.extract(backup, live, tmp_path / "slow")
    counts = fast.bundle.counts
    assert sum(c.get("updated", 0) for c in counts.values()) > 0
    assert sum(c.get("deleted", 0) for c in counts.values()) > 0
    assert counts == slow.bundle.counts
    for name in ("rows.db", "base.db"):
        assert _rows(tmp_path / "fast" / name) == _rows(tmp_path / "slow" / name), name


def test_the_seal_records_the_real_hash_of_every_copied_upload(world: Path, tmp_path: Path) -> None:
    backup, live = _inputs(world)
    res = extract_mod.extract(backup, live, tmp_path / "b", uploads=world / "uploads")
    hashes = res.bundle.manifest["hashes"]
    copied = [rel for rel in hashes if rel.startswith("files/")]
    assert copied  # the world has uploads to carry
    for rel in copied:
        assert hashes[rel] == hashlib.sha256((tmp_path / "b" / rel).read_bytes()).hexdigest()
    open_bundle(tmp_path / "b")  # every hash verified


def test_the_bundle_listing_is_what_rglob_listed(tmp_path: Path) -> None:
    b = tmp_path / "b"
    (b / "files" / "a" / "deep").mkdir(parents=True)
    (b / "manifest.json").write_text("{}")
    (b / "files" / "top.txt").write_text("x")
    (b / "files" / "a" / "deep" / "f.bin").write_bytes(b"y")
    (b / "files" / "a" / "to_file").symlink_to(b / "files" / "top.txt")
    (b / "files" / "a" / "to_dir").symlink_to(b / "files" / "a" / "deep")
    (b / "files" / "a" / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(b / "files" / "a" / "fifo")
    (b / "files" / "empty").mkdir()
    for d in ("b/x", "b/y/z", "c"):
        (b / "files" / d).mkdir(parents=True)
        (b / "files" / d / "f").write_text(d)
    old = [p.name for p in b.iterdir() if p.is_file() or p.is_symlink()] + [
        p.relative_to(b).as_posix()
        for p in (b / "files").rglob("*")
        if p.is_file() or p.is_symlink()
    ]
    assert _content_files(b) == old  # the same entries, in the same order


def test_the_replay_thread_keeps_the_callers_protected_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recovery.compare import diff
    from recovery.migrate import sandbox

    class _A:
        backup, live = tmp_path / "b.db", tmp_path / "l.db"

    monkeypatch.setattr(diff, "replayed_upgrade", lambda *a: sandbox._ALSO_PROTECTED.get())
    real = tmp_path / "real.db"
    with sandbox.protecting(real):
        pending = diff.start_replayed_upgrade("alembic.ini", _A(), tmp_path)  # type: ignore[arg-type]
        assert real in pending.result()  # type: ignore[operator]


def _keyed_pair(folder: Path, old_ids: set[int], live: dict[int, str]) -> tuple[Path, Path]:
    """A backup and a live file with one rowid-keyed table: ``old_ids`` with value "v", the live
    rows as given (a key in both is updated when its value is no longer "v")."""
    paths = []
    for name, rows in (("old.db", {k: "v" for k in old_ids}), ("live.db", live)):
        p = folder / name
        conn = sqlite3.connect(p)
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", sorted(rows.items()))
        conn.commit()
        conn.close()
        paths.append(p)
    return paths[0], paths[1]


KEY_CASES = [
    ({1, 2, 4, 5}, {1: "v", 2: "v", 4: "v", 5: "w", 6: "n", 9: "n"}),  # all new above the top
    ({1, 2, 4, 5}, {1: "v", 3: "n", 4: "v", 5: "v", 7: "n"}),  # 2 deleted, 3 new in the gap
    ({1, 2, 3, 4}, {1: "v", 3: "w", 5: "n", 6: "n"}),  # keys without gaps, some deleted
    ({2, 3}, {1: "n", 2: "v", 3: "v"}),  # a new key below the backup's smallest
    (set(), {1: "n", 2: "n"}),  # an empty backup table
    ({1, 2, 3}, {}),  # an empty live table
]


@pytest.mark.parametrize(("old_ids", "live"), KEY_CASES)
def test_inserted_rows_by_key_range_are_the_anti_joins(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    old_ids: set[int],
    live: dict[int, str],
) -> None:
    """The inserted rows of a rowid-keyed table taken as the live rows above the backup's largest
    key (when the counts prove no live key below it is new) are, in the same order, what the
    anti-join gives; where a key below it is new, the anti-join is used."""
    old, new = _keyed_pair(tmp_path, old_ids, live)
    anti: list[str] = []
    real = extract_mod.inserted_query
    monkeypatch.setattr(
        extract_mod, "inserted_query", lambda s, sel: anti.append(s.name) or real(s, sel)
    )
    fast = extract_mod.extract(old, new, tmp_path / "fast")
    below = [k for k in live if k not in old_ids and old_ids and k <= max(old_ids)]
    assert anti == (["t"] if below else [])  # the range only where the counts prove it
    monkeypatch.setattr(extract_mod, "sides_on_rowid", lambda conn, s: False)
    slow = extract_mod.extract(old, new, tmp_path / "slow")
    assert fast.bundle.counts == slow.bundle.counts
    inserted = sorted(set(live) - old_ids)
    assert fast.bundle.counts["t"]["inserted"] == len(inserted)
    for name in ("rows.db", "base.db"):
        assert _rows(tmp_path / "fast" / name) == _rows(tmp_path / "slow" / name), name
    got = _rows(tmp_path / "fast" / "rows.db")["t"]
    assert [r[1] for r in got if r[-1] == "inserted"] == inserted


@pytest.mark.parametrize(("old_ids", "live"), KEY_CASES)
def test_inserted_rows_before_the_list_are_the_anti_joins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old_ids: set[int], live: dict[int, str]
) -> None:
    """The inserted rows a table waiting for the replay takes first (no key list yet: proven by
    the backup's keys alone, or by anti-join) are, in order, the live keys the backup lacks."""
    from recovery.compare.diff import analyse

    old, new = _keyed_pair(tmp_path, old_ids, live)
    anti: list[str] = []
    real = extract_mod.inserted_query
    monkeypatch.setattr(
        extract_mod, "inserted_query", lambda s, sel: anti.append(s.name) or real(s, sel)
    )
    gapless = not old_ids or (
        len(old_ids) == max(old_ids) - min(old_ids) + 1 and min(live, default=1) >= min(old_ids)
    )
    inserted = sorted(set(live) - old_ids)
    with analyse(old, new) as a:
        conn = a.pair
        conn.execute("PRAGMA query_only = OFF")
        conn.execute("ATTACH DATABASE ? AS bnew", (str(tmp_path / "rows.db"),))
        conn.execute("ATTACH DATABASE ? AS bbase", (str(tmp_path / "base.db"),))
        conn.execute("BEGIN")
        counts: dict[str, dict[str, object]] = {}
        extract_mod.extract_table(conn, a, "t", counts, "inserted")
        got = conn.execute("SELECT id, _recovery_kind FROM bnew.t ORDER BY rowid").fetchall()
        conn.execute("COMMIT")
    assert got == [(k, "inserted") for k in inserted]
    assert counts["t"]["inserted"] == len(inserted)
    assert anti == ([] if gapless else ["t"])  # the range where the backup's keys prove it


def test_uploads_copied_early_are_copied_again_when_the_closure_changes_the_files_table(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The uploads are copied as soon as the files table is extracted; when the rows that copy
    was made from are not the final ones (here one record taken out after the FK closure), it is
    thrown away and made again from the final rows: the bundle holds the copies its report
    lists, no more, each with its real hash."""
    from recovery.files.uploads import UNRECORDED_DIR

    backup, live = _inputs(world)
    real = extract_mod.close_foreign_keys
    starts: list[int] = []
    real_start = extract_mod._start_copy

    def fewer(conn, a, counts):  # type: ignore[no-untyped-def]
        real(conn, a, counts)
        conn.execute(
            "DELETE FROM bnew.file_records WHERE rowid = (SELECT min(rowid) FROM bnew.file_records)"
        )

    def start(*args):  # type: ignore[no-untyped-def]
        starts.append(len(args[5]))
        return real_start(*args)

    monkeypatch.setattr(extract_mod, "close_foreign_keys", fewer)
    monkeypatch.setattr(extract_mod, "_start_copy", start)
    res = extract_mod.extract(backup, live, tmp_path / "b", uploads=world / "uploads")
    assert len(starts) == 2 and starts[1] == starts[0] - 1  # copied early, then again
    report = res.bundle.manifest["files"]
    assert len(report["records"]) == starts[1]
    b = tmp_path / "b"
    on_disk = {p.relative_to(b).as_posix() for p in (b / "files").rglob("*") if p.is_file()}
    listed = {
        f"files/{r['path']}" for r in report["records"] if str(r["status"]).startswith("copied")
    } | {f"files/{UNRECORDED_DIR}/{u['path']}" for u in report["unrecorded"]}
    assert on_disk == listed
    open_bundle(b)  # every hash verified


def test_the_closure_is_skipped_only_for_parents_the_bundle_holds_in_full(tmp_path: Path) -> None:
    """A foreign key into a compared table's own key needs no closure statement (a parent the
    backup lacks is an inserted row, in the bundle); one into another column, or into a table
    whose rows the bundle does not hold in full, still gets one."""
    from recovery.compare.diff import analyse
    from recovery.engine.schema import ForeignKey

    old, new = _keyed_pair(tmp_path, {1, 2}, {1: "v", 2: "w", 3: "n"})
    with analyse(old, new) as a:
        by_key = ForeignKey(("t_id",), "t", ("id",))
        by_value = ForeignKey(("t_v",), "t", ("v",))
        compared = {"t": {"status": "compared"}}
        assert extract_mod._holds_every_new_parent(a, compared, by_key)
        assert not extract_mod._holds_every_new_parent(a, compared, by_value)
        assert not extract_mod._holds_every_new_parent(a, {"t": {}}, by_key)  # not extracted whole
        assert extract_mod._holds_every_new_parent(a, {"t": {"status": "new table"}}, by_value)


def test_the_changed_lists_made_while_the_replay_runs_give_the_rows_made_after_it(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tables waiting for the replay list their candidates (changed, deleted, or a new-only
    column not at its default) before it ends; narrowed by the replay's answers, each list is,
    row for row and in order, the one read after the replay lists (the rows fetched from it are
    then the same). The world has candidates the replay drops (the upgrade's own value)."""
    from recovery.sample import app_dir

    backup, live = _inputs(world)
    sizes: dict[str, tuple[int, int]] = {}  # table -> (candidates, kept)
    real_narrow = extract_mod._narrow_early_list

    def narrow(conn: sqlite3.Connection, s: Any, cond: Any, name: str) -> None:
        def rows(t: str) -> list[tuple[object, ...]]:
            return conn.execute(f'SELECT k, d FROM temp."{t}" ORDER BY rowid').fetchall()

        before = len(rows(name))
        real_narrow(conn, s, cond, name)
        extract_mod._list_changed_on_rowid(conn, s, cond, "_check")  # the read after the replay
        assert rows(name) == rows("_check"), s.name
        conn.execute('DROP TABLE temp."_check"')
        sizes[s.name] = (before, len(rows(name)))

    monkeypatch.setattr(extract_mod, "_narrow_early_list", narrow)
    res = extract_mod.extract(
        backup,
        live,
        tmp_path / "b",
        alembic_ini=app_dir() / "alembic.ini",
        derived_lineage=lambda: ({}, None),  # (no lineage child: the replay is what is tested)
    )
    assert res.bundle.manifest["upgrade_replayed"]
    assert {"parts", "quotes"} <= set(sizes)  # both waiting tables took the early list
    assert all(kept > 0 for _, kept in sizes.values())
    assert any(kept < before for before, kept in sizes.values())  # the replay dropped some


def test_labels_looked_up_once_per_row_give_the_lost_list_each_statement_gave(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table whose rows take their label from a parent (production_records: the part's number)
    has each label looked up once for all its lost columns: ``_recovery_lost`` is, row for row and
    in order, the list the per-statement lookups wrote."""
    backup, live = _inputs(world)
    used: list[str] = []
    real = extract_mod._labels_listed

    def labels(conn: sqlite3.Connection, a: Any, name: str) -> Any:
        out = real(conn, a, name)
        if out is not None:
            used.append(name)
        return out

    monkeypatch.setattr(extract_mod, "_labels_listed", labels)
    extract_mod.extract(backup, live, tmp_path / "once")
    assert "production_records" in used
    monkeypatch.setattr(extract_mod, "_labels_listed", lambda *a: None)
    extract_mod.extract(backup, live, tmp_path / "each")
    once, each = _rows(tmp_path / "once" / "rows.db"), _rows(tmp_path / "each" / "rows.db")
    lost = once["_recovery_lost"]
    assert any(r[1] == "production_records" and r[3] is not None for r in lost)  # labelled
    assert once == each


def test_the_replay_runs_in_the_child_started_before_the_analysis(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay's sandbox child is started when the extract begins (warm by the time the
    upgrade is asked for); the replay runs in that very child, and the child is ended with it."""
    from recovery.migrate import replay
    from recovery.sample import app_dir

    backup, live = _inputs(world)
    started: list[Any] = []
    pids: list[int] = []
    asked: list[Any] = []
    real_start, real_upgrade = extract_mod.start_sandbox, replay._upgrade

    def start(*a: Any) -> Any:
        sb = real_start(*a)
        started.append(sb)
        pids.append(sb._proc.pid)
        return sb

    def upgrade(sb: Any, *a: Any, **k: Any) -> Any:
        asked.append((sb, sb._proc.pid))  # the process, not only the object: one child
        return real_upgrade(sb, *a, **k)

    monkeypatch.setattr(extract_mod, "start_sandbox", start)
    monkeypatch.setattr(replay, "_upgrade", upgrade)
    res = extract_mod.extract(
        backup,
        live,
        tmp_path / "b",
        alembic_ini=app_dir() / "alembic.ini",
        derived_lineage=lambda: ({}, None),
    )
    assert res.bundle.manifest["upgrade_replayed"]
    assert len(started) == 1 and started[0] is not None
    assert asked and all(sb is started[0] and pid == pids[0] for sb, pid in asked)
    assert started[0]._proc is None  # ended
    assert _sandbox_children() == []  # and no other child left running


def test_a_child_started_for_a_replay_that_never_runs_is_ended(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extract refused before its replay starts (a mapping naming an unknown column) leaves
    no child behind: the early sandbox is closed with the refusal."""
    from recovery.errors import RecoveryError
    from recovery.sample import app_dir

    backup, live = _inputs(world)
    started: list[Any] = []
    real_start = extract_mod.start_sandbox
    monkeypatch.setattr(
        extract_mod, "start_sandbox", lambda *a: started.append(real_start(*a)) or started[-1]
    )
    mp = tmp_path / "mapping.toml"
    mp.write_text('[tables.parts.columns]\nprice = "no_such_column * 2"\n')
    with pytest.raises(RecoveryError):
        extract_mod.extract(
            backup,
            live,
            tmp_path / "b",
            mapping=mp,
            alembic_ini=app_dir() / "alembic.ini",
            derived_lineage=lambda: ({}, None),
        )
    assert len(started) == 1 and started[0] is not None
    assert started[0]._proc is None and started[0]._dir is None  # ended, its folder removed
    assert _sandbox_children() == []
    assert not (tmp_path / "b").exists()


def _sandbox_children() -> list[int]:
    """This process's sandbox children still running."""
    out = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and stat[0] != "Z" and b"sandbox_child" in cmd:
            out.append(int(pid))
    return out
