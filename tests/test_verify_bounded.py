"""The rollback's bounded verification (:func:`recovery.verify.checks.verify_written`): it proves
what the full ``integrity_check`` + ``foreign_key_check`` prove, given the staged file's proof, and
finds the damage those find in rows the re-import wrote; without a clean proof it defers to the
full check."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from recovery.bundle.store import open_bundle
from recovery.pipeline import rollback
from recovery.report.runfiles import read_outcome_file
from recovery.sample import app_dir
from recovery.verify.checks import EarlyWritten, StagedProof, verify_file, verify_written

INI = app_dir() / "alembic.ini"


@pytest.fixture(scope="module")
def rolled(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished rollback of the shared world (bounded verification), in a private folder."""
    w = tmp_path_factory.mktemp("rolled") / "w"
    shutil.copytree(world, w)
    rollback(w / "gestima.db", next(w.glob("gestima.db.bak.*")), w / "run", alembic_ini=INI)
    return w


def _inputs(w: Path) -> tuple:
    return read_outcome_file(w / "run" / "outcome.json"), open_bundle(
        w / "run" / "bundle", verify=False
    )


def test_rollback_verifies_bounded_and_agrees_with_the_full_check(rolled: Path) -> None:
    outcome, bundle = _inputs(rolled)
    recorded = json.loads((rolled / "run" / "outcome.json").read_text())["verification"]
    assert recorded["checked"] == "bounded" and recorded["ok"] is True
    journal = json.loads((rolled / "run" / "journal.json").read_text())
    assert journal["steps"]["restore"]["proof"] == {  # a bare backup: both checks were run
        "integrity_check": "checked",
        "foreign_key_check": "checked",
    }
    full = verify_file(rolled / "gestima.db", outcome, bundle.old.alembic_revision)
    assert {k: v for k, v in recorded.items() if k != "checked"} == full


def test_finds_an_index_that_disagrees_with_written_rows(rolled: Path, tmp_path: Path) -> None:
    outcome, bundle = _inputs(rolled)
    db = tmp_path / "gestima.db"
    shutil.copyfile(rolled / "gestima.db", db)
    with sqlite3.connect(db) as conn:  # the index keeps part_id values but now claims to index qty
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = 'CREATE INDEX ix_quote_items_part_id ON quote_items (qty)' "
            "WHERE name = 'ix_quote_items_part_id'"
        )
    conn.close()
    proof = StagedProof(sha256="checked", integrity=["ok"], foreign_keys=[])
    res = verify_written(db, outcome, bundle.old.alembic_revision, proof, bundle)
    assert res is not None and res["ok"] is False
    assert any("quote_items" in line for line in res["integrity_check"])
    assert (
        verify_file(db, outcome, bundle.old.alembic_revision)["ok"] is False
    )  # as the full check says


def test_without_a_clean_proof_the_full_check_runs(rolled: Path) -> None:
    outcome, bundle = _inputs(rolled)
    for proof in (
        StagedProof(),
        StagedProof("x", ["row 3 missing from index"], []),
        StagedProof("x", ["ok"], [{"table": "parts", "rowid": 1, "parent": "materials", "fk": 0}]),
    ):
        assert (
            verify_written(
                rolled / "gestima.db", outcome, bundle.old.alembic_revision, proof, bundle
            )
            is None
        )


def test_staging_checks_the_file_it_staged(tmp_path: Path) -> None:
    src = tmp_path / "b.db"
    with sqlite3.connect(src) as conn:
        conn.executescript(
            "PRAGMA foreign_keys=OFF; CREATE TABLE p (id INTEGER PRIMARY KEY);"
            "CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id));"
            "INSERT INTO c VALUES (1, 7);"
        )
    conn.close()
    proof = StagedProof()
    tmp, digest = proof.staging(lambda a: (a, "sha"))(src)
    assert (tmp, digest, proof.sha256, proof.integrity) == (src, "sha", "sha", ["ok"])
    assert proof.foreign_keys and not proof.sound  # the backup's own dangling row: full check later


def test_full_verify_runs_the_whole_file_checks(world_copy: Path) -> None:
    w = world_copy
    rollback(
        w / "gestima.db",
        next(w.glob("gestima.db.bak.*")),
        w / "run",
        alembic_ini=INI,
        full_verify=True,
    )
    recorded = json.loads((w / "run" / "outcome.json").read_text())["verification"]
    assert "checked" not in recorded and recorded["ok"] is True
    journal = json.loads((w / "run" / "journal.json").read_text())
    assert "proof" not in journal["steps"]["restore"]  # nothing spent on the staged copy


def test_a_staged_file_written_after_its_checks_voids_the_proof(tmp_path: Path) -> None:
    """The proof is of the staged file as checked: a write to it before the swap (here a row with
    a dangling foreign key, which the bounded checks would never look at) makes ``confirm`` void
    it, so the rollback verifies in full."""
    src = tmp_path / "b.db"
    with sqlite3.connect(src) as conn:
        conn.executescript(
            "CREATE TABLE p (id INTEGER PRIMARY KEY);"
            "CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id));"
            "INSERT INTO p VALUES (1); INSERT INTO c VALUES (1, 1);"
        )
    conn.close()
    untouched, touched = StagedProof(), StagedProof()
    untouched.staging(lambda a: (a, "sha"))(src)
    assert untouched.sound and untouched.confirm(src)
    touched.staging(lambda a: (a, "sha"))(src)
    with sqlite3.connect(src) as conn:
        conn.execute("INSERT INTO c VALUES (2, 99)")
    conn.close()
    assert not touched.confirm(src) and not touched.sound


def _wal_copy(rolled: Path, dest: Path) -> Path:
    """A WAL-mode copy of the rolled-back DB (the live DB's mode after a rollback)."""
    db = dest / "gestima.db"
    src = sqlite3.connect(rolled / "gestima.db")
    out = sqlite3.connect(db)
    src.backup(out)
    src.close()
    out.execute("PRAGMA journal_mode = WAL")
    out.close()
    return db


CLEAN = StagedProof(sha256="checked", integrity=["ok"], foreign_keys=[])


@pytest.mark.parametrize("held", [False, True], ids=["closed", "held-open"])
def test_early_reads_give_the_bounded_result_when_nothing_committed_since(
    rolled: Path, tmp_path: Path, held: bool
) -> None:
    """Closed (no -wal, no -shm: the file's identity is the mark, and nothing is created beside
    it) or held open by another process's connection (-shm there: ``data_version``)."""
    outcome, bundle = _inputs(rolled)
    db = _wal_copy(rolled, tmp_path)
    holder = sqlite3.connect(db) if held else None
    if holder is not None:
        holder.execute("SELECT count(*) FROM parts").fetchone()
    early = EarlyWritten(db, outcome, CLEAN, bundle)
    assert early.started
    res = early.result(outcome, bundle.old.alembic_revision)
    assert res is not None and res["ok"] is True and res["checked"] == "bounded"
    if holder is None:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["gestima.db"]
    else:
        holder.close()
    assert res == verify_written(db, outcome, bundle.old.alembic_revision, CLEAN, bundle)


@pytest.mark.parametrize("held", [False, True], ids=["closed", "held-open"])
def test_early_reads_are_dropped_after_any_commit_to_the_file(
    rolled: Path, tmp_path: Path, held: bool
) -> None:
    """A row with a dangling foreign key committed by another connection after the reads began
    (the bounded reads would never look at it): the early result is dropped, and the check on the
    file as it is then finds it. Closed: the commit's checkpoint moves the file; held open: the
    commit stays in -wal and ``data_version`` moves."""
    outcome, bundle = _inputs(rolled)
    db = _wal_copy(rolled, tmp_path)
    holder = sqlite3.connect(db) if held else None
    if holder is not None:
        holder.execute("SELECT count(*) FROM parts").fetchone()
    early = EarlyWritten(db, outcome, CLEAN, bundle)
    assert early.started
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO quote_items (quote_id, part_id, qty, unit_price) VALUES (987654, 987654, 1, 1.0)"
        )
    conn.close()
    assert early.result(outcome, bundle.old.alembic_revision) is None
    assert verify_file(db, outcome, bundle.old.alembic_revision)["ok"] is False
    if holder is not None:
        holder.close()


def test_early_reads_not_started_where_they_could_hold_a_writer_off(
    rolled: Path, tmp_path: Path
) -> None:
    """Rollback-journal mode (a reader's lock would delay the relink's commit), no clean proof,
    or a relink that fixed links in the files table: no early result."""
    outcome, bundle = _inputs(rolled)
    db = _wal_copy(rolled, tmp_path)
    journal = tmp_path / "journal.db"
    with sqlite3.connect(db) as src, sqlite3.connect(journal) as out:
        src.backup(out)
        out.execute("PRAGMA journal_mode = DELETE")
    src.close()
    out.close()
    assert not EarlyWritten(journal, outcome, CLEAN, bundle).started
    assert not EarlyWritten(db, outcome, StagedProof(), bundle).started
    early = EarlyWritten(db, outcome, CLEAN, bundle)
    fixed = read_outcome_file(rolled / "run" / "outcome.json")
    fixed.files = {"links_fixed": 1, "files_table": {"table": "file_records"}}
    assert early.result(fixed, bundle.old.alembic_revision) is None


def _stale_entry_in_an_updated_row(rolled: Path, db: Path, bundle: object) -> None:
    """``db``: the rolled-back file with one stale entry in ``ix_parts_material_id``, on a row the
    bundle updated (its material_id changed behind the index's back: the index is redefined on
    another column for the one UPDATE, then put back)."""
    shutil.copyfile(rolled / "gestima.db", db)
    rows = sqlite3.connect(f"file:{bundle.rows_db}?mode=ro", uri=True)  # type: ignore[attr-defined]
    (pid,) = rows.execute(
        "SELECT id FROM parts WHERE _recovery_kind = 'updated' LIMIT 1"
    ).fetchone()
    rows.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (real,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'ix_parts_material_id'"
    ).fetchone()
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "UPDATE sqlite_master SET sql = 'CREATE INDEX ix_parts_material_id ON parts (notes)' "
        "WHERE name = 'ix_parts_material_id'"
    )
    conn.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE parts SET material_id = material_id + 1000 WHERE id = ?", (pid,))
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'ix_parts_material_id'", (real,))
    conn.close()


def test_updated_rows_are_probed_unless_no_update_set_an_indexed_column(
    rolled: Path, tmp_path: Path
) -> None:
    """An updated row's index entries are probed when the re-import's UPDATEs set a column of an
    index of its table (or its rowid), or when that is not known; when they set none, the
    entries are the backup's (SQLite rewrites only the indexes whose columns it sets) and only
    the inserted rows are probed — so a stale entry put there from outside is then not seen:
    the bound this check rests on (part 1's proof covers the backup's entries)."""
    outcome, bundle = _inputs(rolled)
    db = tmp_path / "gestima.db"
    _stale_entry_in_an_updated_row(rolled, db, bundle)
    proof = StagedProof(sha256="checked", integrity=["ok"], foreign_keys=[])
    seen = {}
    for label, columns in {
        "unknown": None,
        "indexed column set": {"parts": frozenset({"material_id", "name"})},
        "rowid set": {"Parts": frozenset({"ID"})},
        "no indexed column set": {"parts": frozenset({"name", "price"})},
    }.items():
        outcome.set_columns = columns
        res = verify_written(db, outcome, bundle.old.alembic_revision, proof, bundle)
        assert res is not None
        seen[label] = res["ok"]
    assert seen == {
        "unknown": False,
        "indexed column set": False,
        "rowid set": False,
        "no indexed column set": True,
    }
    assert verify_file(db, outcome, bundle.old.alembic_revision)["ok"] is False
