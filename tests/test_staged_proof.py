"""The staged proof of a backup without a snapshot manifest (:class:`recovery.verify.checks.
BackupChecks`): ``integrity_check`` and ``foreign_key_check`` run on the backup file itself while
its copy is staged (and while the extract and the re-import go on), and count for the staged copy
only when that copy holds the very bytes checked and the backup kept them to the checks' end;
otherwise the staged copy is checked itself, or the proof is void."""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.engine import open_engine
from recovery.verify import checks as checks_module
from recovery.engine.sqlite_io import consistent_copy, sha256_file
from recovery.verify.checks import (
    PROOF_NICE,
    PROOF_NICE_ENV,
    PROOF_SPLIT_ENV,
    BackupChecks,
    StagedProof,
    _proof_parts,
    _priority,
    _proof_nice,
    _set_priority,
    ordered_foreign_key_problems,
)


def _backup(path: Path, damage: str | None = None) -> Path:
    """A small backup: parents, children with an index and a foreign key; ``damage``:
    ``"dangling"`` (a child whose parent is missing) or ``"index"`` (an index whose entries no
    longer match its definition: what only ``integrity_check`` finds)."""
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT);"
            "CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id), note TEXT);"
            "CREATE INDEX ix_c_p ON c (p_id);"
            "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 300) "
            "INSERT INTO p SELECT v, 'part ' || v FROM n;"
            "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 600) "
            "INSERT INTO c SELECT v, 1 + v % 300, 'n' || v FROM n;"
        )
        if damage == "dangling":
            conn.execute("INSERT INTO c VALUES (9001, 99999, 'orphan')")
        if damage == "index":
            conn.execute("PRAGMA writable_schema = ON")
            conn.execute(
                "UPDATE sqlite_master SET sql = 'CREATE INDEX ix_c_p ON c (note)' "
                "WHERE name = 'ix_c_p'"
            )
    conn.close()
    return path


def _stage(tmp: Path, then: str | None = None):  # type: ignore[no-untyped-def]
    """A stage function like ``stage_restore``: a consistent copy, then ``then`` run on it."""

    def stage(backup: Path) -> tuple[Path, str]:
        consistent_copy(backup, tmp, "backup")
        if then is not None:
            with sqlite3.connect(tmp) as conn:
                conn.execute(then)
            conn.close()
        return tmp, sha256_file(tmp)

    return stage


@pytest.mark.parametrize(
    ("damage", "integrity_ok", "dangling"),
    [(None, True, False), ("dangling", True, True), ("index", False, False)],
    ids=["sound", "dangling-key", "index-damage"],
)
def test_a_bare_backup_is_checked_in_place_and_counts_for_its_copy(
    tmp_path: Path, damage: str | None, integrity_ok: bool, dangling: bool
) -> None:
    backup = _backup(tmp_path / "b.db", damage)
    proof = StagedProof()
    _, digest = proof.staging(_stage(tmp_path / "staged.db"), backup=backup)(backup)
    assert proof.pending is not None  # the checks ran on the backup, beside the copy
    assert proof.basis == {"integrity_check": "checked", "foreign_key_check": "checked"}
    assert proof.sound is (integrity_ok and not dangling)
    assert proof.pending is None and proof.sha256 == digest
    assert (proof.integrity == ["ok"]) is integrity_ok
    assert bool(proof.foreign_keys) is dangling
    if dangling:
        assert proof.foreign_keys[0]["table"] == "c" and proof.foreign_keys[0]["rowid"] == 9001


def test_a_copy_that_differs_from_the_backup_is_checked_itself(tmp_path: Path) -> None:
    """The backup's checks say nothing of other bytes: a copy with a row the backup lacks (here a
    dangling key) gets both checks of its own, which find it."""
    backup = _backup(tmp_path / "b.db")
    proof = StagedProof()
    stage = _stage(tmp_path / "staged.db", "INSERT INTO c VALUES (9001, 99999, 'orphan')")
    proof.staging(stage, backup=backup)(backup)
    assert proof.pending is None and proof.basis["foreign_key_check"] == "checked"
    assert proof.foreign_keys and not proof.sound


def test_a_backup_written_before_its_checks_end_voids_the_proof(tmp_path: Path) -> None:
    """The checks are of the backup's bytes from before they began to their end: a write into
    the backup after the copy (a dangling key the copy does not hold) leaves them proving
    nothing: the proof is void, so the verification after the re-import runs in full."""
    backup = _backup(tmp_path / "b.db")
    proof = StagedProof()
    proof.staging(_stage(tmp_path / "staged.db"), backup=backup)(backup)
    assert proof.pending is not None
    with sqlite3.connect(backup) as conn:
        conn.execute("INSERT INTO c VALUES (9001, 99999, 'orphan')")
    conn.close()
    assert not proof.sound and proof.sha256 is None


def test_a_backup_someone_has_open_is_not_read_in_place(tmp_path: Path) -> None:
    """A WAL-mode backup with commits in its ``-wal`` (and ``-shm``: a connection holds it) is
    not read as its bytes alone: the copy, which folds the ``-wal`` in, is checked itself and its
    dangling key (committed only in the ``-wal``) is found."""
    backup = _backup(tmp_path / "b.db")
    holder = sqlite3.connect(backup, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode = WAL")
        holder.execute("PRAGMA wal_autocheckpoint = 0")
        holder.execute("INSERT INTO c VALUES (9001, 99999, 'orphan')")
        assert BackupChecks.start(backup) is None
        proof = StagedProof()
        proof.staging(_stage(tmp_path / "staged.db"), backup=backup)(backup)
        assert proof.pending is None and proof.foreign_keys and not proof.sound
    finally:
        holder.close()


@pytest.mark.parametrize("damage", [None, "dangling"])
def test_the_reimports_fk_check_takes_the_verdict_only_once_it_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str | None
) -> None:
    """The re-import's FK check asks ``clean_if_decided``: while the backup's checks still run it
    answers False at once (every key of the updated rows is then read, as with no proof) and
    leaves them running; once they have ended, their verdict. Here ``integrity_check`` is held
    until the answer is in; at 10M parts the re-import waited 20-25 s for it (round 14)."""
    backup = _backup(tmp_path / "b.db", damage)
    monkeypatch.setenv(PROOF_SPLIT_ENV, "0")
    go = threading.Event()
    real = checks_module._integrity_with_cache

    def held(conn: sqlite3.Connection) -> list[str]:
        go.wait(60)
        return real(conn)

    monkeypatch.setattr(checks_module, "_integrity_with_cache", held)
    proof = StagedProof()
    proof.staging(_stage(tmp_path / "staged.db"), backup=backup)(backup)
    try:
        assert proof.pending is not None and not proof.pending.decided()
        assert proof.clean_if_decided() is False  # answered while integrity_check is held
        assert proof.pending is not None and not go.is_set()  # not waited for, not stopped
    finally:
        go.set()
    assert proof.sound is (damage is None)  # the swap's wait: the verdict
    assert proof.pending is None
    assert proof.clean_if_decided() is (damage is None)


def test_a_bare_rollback_commits_its_reimport_before_the_backups_checks_end(
    world_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rollback of a bare backup: the backup's ``integrity_check`` is held until the
    re-import has committed and saved its outcome, which it can only do if its FK check did not
    wait for the checks' verdict (before round 14 it waited there: 20-25 s at 10M parts, one
    core idle). The swap then waits for the verdict, and the run verifies as before."""
    from recovery import pipeline
    from tests.clirun import invoke

    monkeypatch.setenv(PROOF_SPLIT_ENV, "0")
    saved, go = threading.Event(), threading.Event()
    real_check, real_save = checks_module._integrity_with_cache, pipeline._save_outcome

    released_by: list[bool] = []

    def held(conn: sqlite3.Connection) -> list[str]:
        go.wait(60)  # (a timeout only so that a re-import that waits fails instead of hanging)
        released_by.append(saved.is_set())
        return real_check(conn)

    def save(*args: object) -> None:
        real_save(*args)  # type: ignore[arg-type]
        saved.set()
        go.set()

    monkeypatch.setattr(checks_module, "_integrity_with_cache", held)
    monkeypatch.setattr(pipeline, "_save_outcome", save)
    backup = next(world_copy.glob("gestima.db.bak.*[0-9]"))
    app_ini = Path(__file__).resolve().parents[1] / "sample_dbs" / "app" / "alembic.ini"
    res = invoke(
        "rollback",
        world_copy / "gestima.db",
        "--backup",
        backup,
        "--alembic-ini",
        app_ini,
        "--out",
        world_copy / "run",
        "--yes",
    )
    assert res.returncode in (0, 1), res.stderr
    assert released_by == [True]  # the re-import's outcome was saved while the check was held
    report = json.loads((world_copy / "run" / "report.json").read_text(encoding="utf-8"))
    assert report["outcome"]["verification"]["ok"] is True


def test_a_run_that_stops_early_stops_the_checks(tmp_path: Path) -> None:
    backup = _backup(tmp_path / "b.db")
    proof = StagedProof()
    proof.staging(_stage(tmp_path / "staged.db"), backup=backup)(backup)
    proof.abandon()
    assert proof.pending is None and not proof.sound
    assert not [t for t in threading.enumerate() if t.name.startswith("staged-proof")]


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_only_the_checking_thread_is_niced() -> None:
    seen: list[int] = []

    def work() -> None:
        _set_priority(threading.get_native_id(), PROOF_NICE)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [PROOF_NICE] and before != PROOF_NICE
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


PARENTS = {
    # name: (DDL, whether its key is the rowid)
    "p_ipk": ("CREATE TABLE p_ipk (id INTEGER PRIMARY KEY, u TEXT UNIQUE)", True),
    "p_tc": ("CREATE TABLE p_tc (id INTEGER NOT NULL, u TEXT, PRIMARY KEY (id))", True),
    "p_desc": ("CREATE TABLE p_desc (id INTEGER PRIMARY KEY DESC, u TEXT)", False),
    "p_text": ("CREATE TABLE p_text (id TEXT PRIMARY KEY, u TEXT)", False),
    "p_wr": ("CREATE TABLE p_wr (id INTEGER PRIMARY KEY, u TEXT) WITHOUT ROWID", False),
}
VALUES = st.one_of(
    st.none(),
    st.integers(-2, 9),
    st.sampled_from([2.0, 2.5, -1.0, 1e300]),
    st.sampled_from(["3", " 4 ", "4.0", "x", "", "0x5", "9223372036854775808"]),
    st.sampled_from([b"\x01", b"3", b""]),
)


@st.composite
def fk_worlds(draw: st.DrawFn) -> list[str]:
    """Statements making parents (rowid keys and others) and children whose foreign keys, of any
    declared type, hold any kind of value."""
    out = [ddl for ddl, _ in PARENTS.values()]
    for name in PARENTS:
        ids = draw(st.lists(st.integers(-2, 9), unique=True, max_size=8))
        out += [f"INSERT INTO {name} (id, u) VALUES ({i!r}, 'u{i}')" for i in ids]
    for n in range(draw(st.integers(1, 3))):
        coltype = draw(st.sampled_from(["INTEGER", "TEXT", "BLOB", "REAL", "NUMERIC", ""]))
        refs = draw(
            st.lists(
                st.sampled_from(
                    [
                        "REFERENCES p_ipk",
                        "REFERENCES p_ipk (id)",
                        "REFERENCES p_tc (id)",
                        "REFERENCES p_desc (id)",
                        "REFERENCES p_text (id)",
                        "REFERENCES p_wr (id)",
                        "REFERENCES p_ipk (u)",
                        "REFERENCES gone (id)",
                        "REFERENCES {self} (id)",
                    ]
                ),
                min_size=1,
                max_size=2,
            )
        )
        cols = ", ".join(f"k{j} {coltype} {ref.format(self=f'c{n}')}" for j, ref in enumerate(refs))
        wr = draw(st.booleans()) and n == 0
        out.append(
            f"CREATE TABLE c{n} (id INTEGER PRIMARY KEY, {cols}){' WITHOUT ROWID' if wr else ''}"
        )
        if draw(st.booleans()):
            out.append(f"CREATE INDEX ix_c{n} ON c{n} (k0)")
        for rid in range(draw(st.integers(0, 12))):
            vals = [draw(VALUES) for _ in refs]
            marks = ", ".join("?" for _ in refs)
            out.append((f"INSERT INTO c{n} VALUES ({rid}, {marks})", vals))  # type: ignore[arg-type]
    return out


@settings(max_examples=80, deadline=None)
@given(fk_worlds())
def test_the_ordered_fk_check_finds_what_the_pragma_finds(statements: list) -> None:  # type: ignore[type-arg]
    """:func:`ordered_foreign_key_problems` (anti-joins for keys to a parent's rowid, the pragma per
    table otherwise) lists the rows ``PRAGMA foreign_key_check`` lists, for any declared type and
    value (NULL, integers, integral and other reals, numeric-looking and other text, blobs), and is
    empty exactly when it is."""
    conn = sqlite3.connect(":memory:")
    for stmt in statements:
        if isinstance(stmt, tuple):
            conn.execute(*stmt)
        else:
            conn.execute(stmt)
    want = Counter(conn.execute("PRAGMA main.foreign_key_check").fetchall())
    got = ordered_foreign_key_problems(conn, limit=10**6)
    assert Counter((g["table"], g["rowid"], g["parent"], g["fk"]) for g in got) == want
    assert (ordered_foreign_key_problems(conn) == []) is (not want)
    assert len(ordered_foreign_key_problems(conn, limit=3)) == min(3, sum(want.values()))
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for limit in (3, 10**6):  # table by table, joined and cut: the whole check's very list
        per_table = [
            p for name in names for p in ordered_foreign_key_problems(conn, limit, tables=[name])
        ]
        assert per_table[:limit] == ordered_foreign_key_problems(conn, limit)
    conn.close()


def test_the_niceness_is_set_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for text, want in (
        ("0", 0),
        ("19", 19),
        ("20", PROOF_NICE),
        ("-5", PROOF_NICE),
        ("x", PROOF_NICE),
    ):
        monkeypatch.setenv(PROOF_NICE_ENV, text)
        assert _proof_nice() == want
    monkeypatch.delenv(PROOF_NICE_ENV)
    assert _proof_nice() == PROOF_NICE


@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="raising a thread's priority needs root"
)
def test_a_waiter_gives_the_checks_back_the_niceness_they_had(tmp_path: Path) -> None:
    """A checking thread runs at PROOF_NICE, or at the niceness it inherited when that is higher
    (the user's `nice`); whoever waits for the checks gives it back what it had, never more, and
    a checking thread that begins after that is not niced at all."""
    backup = _backup(tmp_path / "b.db")
    seen: list[int] = []
    started, go = threading.Event(), threading.Event()

    def work(conn: sqlite3.Connection) -> None:
        seen.append(_priority(threading.get_native_id()))
        started.set()
        go.wait(5)
        seen.append(_priority(threading.get_native_id()))

    for inherited, niced in ((3, PROOF_NICE), (PROOF_NICE + 4, PROOF_NICE + 4)):
        checks = BackupChecks.start(backup)
        assert checks is not None
        seen.clear()
        started.clear()
        go.clear()

        def run(inherited: int = inherited, checks: BackupChecks = checks) -> None:
            _set_priority(threading.get_native_id(), inherited)
            checks._check(open_engine(backup), work)

        t = threading.Thread(target=run)
        t.start()
        assert started.wait(5)
        checks.hurry()
        go.set()
        t.join()
        assert seen == [niced, inherited]
        go.set()
        seen.clear()
        t = threading.Thread(target=run)  # after the hurry: at the niceness it has
        t.start()
        t.join()
        assert seen == [inherited, inherited]
        assert checks.result()[0] == ["ok"]


DAMAGES = {
    # what only the whole-file accounting finds: a table's pages no table owns any more
    "pages-never-used": [
        "CREATE TABLE z (a, b)",
        "INSERT INTO z SELECT id, name FROM p",
        "PRAGMA writable_schema = ON",
        "DELETE FROM sqlite_master WHERE name = 'z'",
    ],
    # what only a table's index cross-check finds (quick_check skips it)
    "not-unique": [
        "PRAGMA writable_schema = ON",
        (
            "UPDATE sqlite_master SET sql = 'CREATE UNIQUE INDEX ix_c_p ON c (p_id)' "
            "WHERE name = 'ix_c_p'"
        ),
    ],
    "index-entries": [
        "PRAGMA writable_schema = ON",
        "UPDATE sqlite_master SET sql = 'CREATE INDEX ix_c_p ON c (note)' WHERE name = 'ix_c_p'",
    ],
    # what both find
    "null-in-not-null": [
        "INSERT INTO p VALUES (1000, NULL)",
        "PRAGMA writable_schema = ON",
        (
            "UPDATE sqlite_master SET sql = "
            "'CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT NOT NULL)' WHERE name = 'p'"
        ),
    ],
}


@pytest.mark.parametrize("damage", [None, *DAMAGES], ids=["sound", *DAMAGES])
def test_the_split_integrity_check_says_what_the_full_check_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str | None
) -> None:
    """The backup's ``integrity_check`` runs as parts on both threads (``quick_check`` of the
    whole file + ``integrity_check(table)`` per table): "ok" exactly when the full check says
    "ok", and when a part finds anything the full check runs and its very lines are the result.
    The damages are each found by one kind of part only (pages no table owns: the whole-file
    accounting; a duplicate in a UNIQUE index, index entries that do not match their rows: the
    per-table cross-check), so neither kind alone would do."""
    backup = _backup(tmp_path / "b.db")
    with sqlite3.connect(backup) as conn:
        for stmt in DAMAGES.get(damage or "", []):
            conn.execute(stmt)
    conn.close()
    with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as conn:
        want = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    conn.close()
    assert (want == ["ok"]) is (damage is None)
    split = _proof_parts(open_engine(backup))
    assert split is not None  # integrity_check: quick_check, p, c; the FK check: c
    parts, order = split
    assert [is_integrity for _, is_integrity, _ in parts].count(True) == 3 and len(parts) == 4
    assert order == {"p": 0, "c": 1}
    full_runs: list[int] = []
    real_full = checks_module._integrity_with_cache

    def full(conn: sqlite3.Connection) -> list[str]:
        full_runs.append(1)
        return real_full(conn)

    monkeypatch.setattr(checks_module, "_integrity_with_cache", full)
    for split in ("1", "0"):
        monkeypatch.setenv(PROOF_SPLIT_ENV, split)
        full_runs.clear()
        checks = BackupChecks.start(backup)
        assert checks is not None
        lines, _, held = checks.result()
        assert lines == want and held
        assert len(full_runs) == (0 if split == "1" and damage is None else 1)


def test_a_schema_the_parts_cannot_name_gets_the_full_check(tmp_path: Path) -> None:
    """A table ``integrity_check(name)`` would read as its error limit (a name of digits), a
    table without rowid or a virtual table: the whole ``integrity_check`` runs, unsplit."""
    for i, ddl in enumerate(
        [
            'CREATE TABLE "42" (a)',
            'CREATE TABLE "-7 rows" (a)',
            "CREATE TABLE w (a PRIMARY KEY) WITHOUT ROWID",
            "CREATE VIRTUAL TABLE v USING rtree(id, x0, x1)",
        ]
    ):
        backup = _backup(tmp_path / f"b{i}.db")
        with sqlite3.connect(backup) as conn:
            conn.execute(ddl)
        conn.close()
        assert _proof_parts(open_engine(backup)) is None
        checks = BackupChecks.start(backup)
        assert checks is not None and checks.result()[0] == ["ok"]


def test_the_split_fk_check_lists_what_the_whole_check_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More tables with dangling keys than there are parts (tables grouped, each group's list
    cut at the limit): joined in table order and cut, the whole check's very list."""
    backup = _backup(tmp_path / "b.db")
    with sqlite3.connect(backup) as conn:
        for n in range(12):
            conn.execute(f"CREATE TABLE k{n} (id INTEGER PRIMARY KEY, p_id REFERENCES p (id))")
            conn.executemany(
                f"INSERT INTO k{n} VALUES (?, ?)",
                [(i, 1000 + i * (n % 3)) for i in range(n % 4 + 1)],
            )
    conn.close()
    lists = []
    for split in ("1", "0"):
        monkeypatch.setenv(PROOF_SPLIT_ENV, split)
        checks = BackupChecks.start(backup)
        assert checks is not None
        lists.append(checks.result()[1])
    assert lists[0] == lists[1] and len(lists[0]) == 20  # of 30
    assert lists[0] == ordered_foreign_key_problems(sqlite3.connect(backup))


@pytest.mark.parametrize("damage", [None, "index"])
def test_a_large_backup_is_proven_in_parts_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str | None
) -> None:
    """Unset ``RECOVERY_PROOF_SPLIT``: a backup below ``PROOF_SPLIT_BYTES`` gets the whole
    checks, one at or above it the parts (here the threshold is lowered to the file's size);
    either way the same verdict, a damaged index found."""
    backup = _backup(tmp_path / "b.db", damage)
    monkeypatch.delenv(PROOF_SPLIT_ENV, raising=False)
    size = backup.stat().st_size
    verdicts = []
    for threshold, split in ((size + 1, False), (size, True)):
        monkeypatch.setattr(checks_module, "PROOF_SPLIT_BYTES", threshold)
        checks = BackupChecks.start(backup)
        assert checks is not None and checks._split is split
        lines, fks, held = checks.result()
        verdicts.append((lines == ["ok"], fks, held))
    assert verdicts[0] == verdicts[1] and verdicts[0][0] is (damage is None)
