"""Every loose end of a rollback has a command: the "Next steps" block it prints, and
``recovery apply-deletes`` — the reviewed post-deploy deletes, applied once, after a rollback of
the sample world — with the application's rows changed since, still referenced, audited by a
trigger, and a hand-edited review list."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from recovery.cli import main
from recovery.pipeline import rollback
from recovery.sample import app_dir


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _review(run: Path) -> list[dict[str, str]]:
    with (run / "deletes_for_review.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _count(db: Path, q: str, args: tuple = ()) -> int:  # type: ignore[type-arg]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return int(c.execute(q, args).fetchone()[0])


@pytest.fixture(scope="module")
def rolled_back_once(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the world rolled back once for the module (never written to by the tests)."""
    folder = tmp_path_factory.mktemp("loose-ends") / "world"
    shutil.copytree(world, folder)
    rollback(
        folder / "gestima.db",
        next(folder.glob("gestima.db.bak.*")),
        out=folder / "run",
        uploads=folder / "uploads",
        alembic_ini=app_dir() / "alembic.ini",
    )
    return folder


@pytest.fixture
def rolled_back(rolled_back_once: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The world rolled back: (live DB, run folder); its deletes listed for review. A private copy
    of :func:`rolled_back_once` (copying is cheaper than rolling back again), the run folder's
    files naming the copy's paths as they would had the rollback run there."""
    folder = tmp_path / "world"
    shutil.copytree(rolled_back_once, folder)
    for f in (folder / "run").glob("*.json"):
        f.write_text(
            f.read_text(encoding="utf-8").replace(str(rolled_back_once), str(folder)),
            encoding="utf-8",
        )
    db, run = folder / "gestima.db", folder / "run"
    assert json.loads((run / "journal.json").read_text(encoding="utf-8"))["args"]["db"] == str(db)
    assert _review(run), "the sample world has deletes after the deploy"
    shared = _sha(rolled_back_once / "gestima.db")
    yield db, run
    assert _sha(rolled_back_once / "gestima.db") == shared, (
        "a test wrote to the shared rolled-back world"
    )


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["apply-deletes", *args], catch_exceptions=False)
    return res.exit_code, res.output


def test_dry_run_changes_nothing_then_apply_then_no_op(rolled_back: tuple[Path, Path]) -> None:
    db, run = rolled_back
    review = _review(run)
    before = _sha(db)
    code, out = _invoke(str(run), "--dry-run", "--json")
    assert code == 0, out
    plan = json.loads(out)
    assert len(plan["deleted"]) == len(review) and plan["dry_run"] is True
    assert _sha(db) == before

    code, out = _invoke(str(run), "--yes", "--json")
    assert code == 0, out
    done = json.loads(out)
    assert len(done["deleted"]) == len(review)
    for item in done["deleted"]:
        assert (
            _count(db, f'SELECT count(*) FROM "{item["table"]}" WHERE id = ?', tuple(item["key"]))
            == 0
        )
    assert Path(done["safety_copy"]).is_file()
    assert _count(db, "SELECT count(*) FROM _recovery_deletes_applied") == len(review)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []

    after = _sha(db)
    code, out = _invoke(str(run), "--yes", "--json")
    again = json.loads(out)
    assert code == 0 and again["deleted"] == [] and len(again["already_applied"]) == len(review)
    assert _count(db, "SELECT count(*) FROM _recovery_deletes_applied") == len(review)
    assert after  # (the second run wrote nothing but its own record-keeping)


def test_only_the_reviewed_subset_and_conflicts(
    rolled_back: tuple[Path, Path], tmp_path: Path
) -> None:
    db, run = rolled_back
    review = _review(run)
    items = [r for r in review if r["table"] == "quote_items"]
    assert len(items) >= 3
    keep_changed, keep_untouched, delete_me = items[0], items[1], items[2]
    with sqlite3.connect(db) as c:  # the old release edited one of them since the rollback
        c.execute(
            "UPDATE quote_items SET qty = qty + 1000 WHERE id = ?", (int(keep_changed["key"]),)
        )
    c.close()
    reviewed = tmp_path / "reviewed.csv"
    with reviewed.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(review[0]))
        w.writeheader()
        w.writerows([keep_changed, delete_me])
    code, out = _invoke(str(run), "--only", str(reviewed), "--yes", "--json")
    res = json.loads(out)
    assert code == 1, out  # a conflict to review
    assert [i["key"] for i in res["deleted"]] == [[int(delete_me["key"])]]
    assert [(c["kind"], c["key"]) for c in res["conflicts"]] == [
        ("update_deleted", [int(keep_changed["key"])])
    ]
    ids = (int(keep_changed["key"]), int(keep_untouched["key"]), int(delete_me["key"]))
    assert _count(db, "SELECT count(*) FROM quote_items WHERE id IN (?, ?, ?)", ids) == 2


def test_a_parent_still_referenced_is_kept(rolled_back: tuple[Path, Path], tmp_path: Path) -> None:
    db, run = rolled_back
    quotes = [r for r in _review(run) if r["table"] == "quotes"]
    if not quotes:
        pytest.skip("this world deleted no quote after the deploy")
    qid = int(quotes[0]["key"])
    assert _count(db, "SELECT count(*) FROM quote_items WHERE quote_id = ?", (qid,)) > 0
    reviewed = tmp_path / "reviewed.csv"
    with reviewed.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(quotes[0]))
        w.writeheader()
        w.writerow(quotes[0])
    code, out = _invoke(str(run), "--only", str(reviewed), "--yes", "--json")
    res = json.loads(out)
    assert code == 1 and [c["kind"] for c in res["conflicts"]] == ["constraint"], out
    assert _count(db, "SELECT count(*) FROM quotes WHERE id = ?", (qid,)) == 1
    # with its items in the same review, children go first and the quote goes too
    all_code, all_out = _invoke(str(run), "--yes", "--json")
    assert all_code in (0, 1), all_out
    assert _count(db, "SELECT count(*) FROM quotes WHERE id = ?", (qid,)) == 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []


def test_triggers_do_not_fire_and_come_back_identical(rolled_back: tuple[Path, Path]) -> None:
    db, run = rolled_back
    ddl = (
        'CREATE TRIGGER "audit delete" AFTER DELETE ON quote_items BEGIN '
        "INSERT INTO audit(what) VALUES ('deleted ' || old.id); END"
    )
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE audit (what TEXT)")
        c.execute(ddl)
    c.close()
    code, out = _invoke(str(run), "--yes", "--json")
    assert code == 0, out
    assert json.loads(out)["triggers_suspended"] == ["audit delete"]
    assert _count(db, "SELECT count(*) FROM audit") == 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        assert (
            c.execute("SELECT sql FROM sqlite_master WHERE name = 'audit delete'").fetchone()[0]
            == ddl
        )


@pytest.mark.parametrize("edit", ["unknown row", "no key column", "missing run"])
def test_bad_input_changes_nothing(
    rolled_back: tuple[Path, Path], tmp_path: Path, edit: str
) -> None:
    db, run = rolled_back
    before = _sha(db)
    reviewed = tmp_path / "reviewed.csv"
    if edit == "unknown row":
        reviewed.write_text("table,key,label\nquote_items,999999999,\n", encoding="utf-8")
    elif edit == "no key column":
        reviewed.write_text("table,id\nquote_items,1\n", encoding="utf-8")
    target = str(tmp_path / "nowhere") if edit == "missing run" else str(run)
    code, out = _invoke(target, "--only", str(reviewed), "--yes")
    assert code == 2, out
    assert "Traceback" not in out and out.count("error:") == 1
    assert _sha(db) == before


def test_waits_for_the_running_application_then_refuses(rolled_back: tuple[Path, Path]) -> None:
    """The old release writing right now holds the lock: the command waits, then refuses with
    nothing changed rather than failing half-way."""
    db, run = rolled_back
    app = sqlite3.connect(db, isolation_level=None)
    try:
        app.execute("BEGIN IMMEDIATE")
        before = _count(db, "SELECT count(*) FROM quote_items")
        from recovery.reimport.deletes import apply_deletes
        from recovery.errors import RecoveryError

        with pytest.raises(RecoveryError, match="locked"):
            apply_deletes(run, busy_timeout=0.5)
        assert _count(db, "SELECT count(*) FROM quote_items") == before
    finally:
        app.execute("ROLLBACK")
        app.close()
    assert apply_deletes(run).deleted


def test_rollback_ends_with_next_steps_naming_this_run(world_copy: Path) -> None:
    db, run = world_copy / "gestima.db", world_copy / "run"
    res = CliRunner().invoke(
        main,
        [
            "rollback",
            str(db),
            "--backup",
            str(next(world_copy.glob("gestima.db.bak.*"))),
            "--uploads",
            str(world_copy / "uploads"),
            "--alembic-ini",
            str(app_dir() / "alembic.ini"),
            "--out",
            str(run),
            "--yes",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 1, res.output  # the sample world loses values by design
    block = res.stderr.split("Next steps:", 1)[1]
    assert "aa001_add_drawing_number_drop_drawings" in block
    assert f"recovery undo {run}" in block
    assert f"recovery apply-deletes {run}" in block
    assert str(run / "report.html") in block
    assert "Next steps:" not in res.stdout  # stdout keeps only results


def test_next_steps_name_the_release_tag_of_the_backup(tmp_path: Path) -> None:
    from recovery.report.nextsteps import next_steps

    backup = tmp_path / "app.db.bak.20261120_140000"
    backup.write_bytes(b"")
    (tmp_path / (backup.name + ".manifest.json")).write_text(
        json.dumps({"git": {"tag": "v2.0.0"}}), encoding="utf-8"
    )
    lines = next_steps(
        tmp_path / "run",
        tmp_path / "app.db",
        backup,
        "aa001",
        dry_run=False,
        deletes_for_review=0,
        needs_review=False,
    )
    assert lines[0].startswith("1. Deploy release v2.0.0 (Alembic revision aa001) now")
    assert not any("apply-deletes" in ln for ln in lines)  # nothing to review: no such step
    dry = next_steps(
        tmp_path / "run",
        tmp_path / "app.db",
        backup,
        "aa001",
        dry_run=True,
        deletes_for_review=3,
        needs_review=True,
    )
    assert "Nothing was changed" in dry[0] and not any("undo" in ln for ln in dry)


def test_apply_deletes_refuses_a_run_that_was_undone(rolled_back: tuple[Path, Path]) -> None:
    from recovery.pipeline import undo

    db, run = rolled_back
    undo(run)
    before = _sha(db)
    code, out = _invoke(str(run), "--yes")
    assert code == 2 and "undone" in out, out
    assert _sha(db) == before


# a run folder others could write names the database root replaces: refused (recovery/runfolder.py)

NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def _tamper(run: Path, how: str) -> None:
    safety = next((run / "safety").iterdir())
    if how == "folder-world-writable":
        run.chmod(0o777)
    elif how == "parent-world-writable":
        run.parent.chmod(0o777)
    elif how == "folder-owned-by-nobody":
        os.chown(run, NOBODY, NOBODY)
    elif how == "journal-owned-by-nobody":
        os.chown(run / "journal.json", NOBODY, os.getegid())
    elif how == "safety-group-writable-by-nogroup":
        os.chown(safety, os.geteuid(), NOBODY)
        safety.chmod(0o664)
    elif how == "safety-is-a-symlink":
        moved = run.parent / "elsewhere.db"
        safety.rename(moved)
        safety.symlink_to(moved)


@pytest.mark.parametrize("command", ["undo", "apply-deletes"])
@pytest.mark.parametrize(
    "how",
    [
        "folder-world-writable",
        "parent-world-writable",
        pytest.param("folder-owned-by-nobody", marks=ROOT_ONLY),
        pytest.param("journal-owned-by-nobody", marks=ROOT_ONLY),
        pytest.param("safety-group-writable-by-nogroup", marks=ROOT_ONLY),
        "safety-is-a-symlink",
    ],
)
def test_a_run_folder_others_could_write_is_refused(
    rolled_back: tuple[Path, Path], command: str, how: str
) -> None:
    db, run = rolled_back
    _tamper(run, how)
    before = _sha(db)
    res = CliRunner().invoke(main, [command, str(run), "--yes"])
    assert res.exit_code == 2, res.output
    assert "run folder" in res.output and "nothing was changed" in res.output, res.output
    assert "Traceback" not in res.output
    assert _sha(db) == before


def test_a_run_folder_in_a_sticky_shared_folder_is_trusted(
    rolled_back: tuple[Path, Path], tmp_path: Path
) -> None:
    db, run = rolled_back
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: others cannot rename or remove what they do not own
    moved = shared / "run"
    run.rename(moved)
    safety = next((moved / "safety").iterdir())
    res = CliRunner().invoke(main, ["undo", str(moved), "--yes"])
    assert res.exit_code == 0, res.output
    revision = (
        "SELECT count(*) FROM alembic_version WHERE version_num = (SELECT version_num FROM {})"
    )
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        c.execute("ATTACH DATABASE ? AS s", (f"file:{safety}?mode=ro",))
        assert c.execute(revision.format("s.alembic_version")).fetchone()[0] == 1
        assert (
            c.execute("SELECT count(*) FROM parts").fetchone()[0]
            == c.execute("SELECT count(*) FROM s.parts").fetchone()[0]
        )
    c.close()


def test_apply_deletes_on_a_postgresql_run_is_refused_saying_what_to_do(
    rolled_back: tuple[Path, Path],
) -> None:
    _db, run = rolled_back
    journal = json.loads((run / "journal.json").read_text(encoding="utf-8"))
    journal["args"]["db"] = "postgresql://app@127.0.0.1:1/gestima"
    (run / "journal.json").write_text(json.dumps(journal), encoding="utf-8")
    code, out = _invoke(str(run), "--yes")
    assert code == 2, out
    assert "not built for PostgreSQL" in out and "deletes_for_review.csv" in out


def test_only_finds_rows_by_a_composite_key_with_a_blob_part(tmp_path: Path) -> None:
    """A table keyed by (BLOB, INTEGER): the rollback lists its post-deploy deletes with their key
    as JSON whose bytes part is tagged (``{"$bytes": hex}``), and ``--only`` with such a line
    deletes exactly that row; a text key that spells the blob's hex is another row. A one-column
    key whose text names two rows (5 and '5' in a column without affinity) is refused."""
    backup, live = tmp_path / "app.db.bak", tmp_path / "app.db"
    keys = [(bytes([i, 0, 255]), i) for i in range(6)] + [("0x0200ff", 2)]
    with sqlite3.connect(backup) as c:
        c.execute("CREATE TABLE tags (owner BLOB, n INTEGER, label TEXT, PRIMARY KEY (owner, n))")
        c.executemany("INSERT INTO tags VALUES (?, ?, ?)", [(*k, f"t{k[1]}") for k in keys])
        c.execute("CREATE TABLE codes (h PRIMARY KEY, note TEXT)")
        c.executemany("INSERT INTO codes VALUES (?, ?)", [(5, "int"), ("5", "text"), (6, "six")])
    c.close()
    shutil.copy(backup, live)
    with sqlite3.connect(live) as c:
        c.execute("DELETE FROM tags WHERE n IN (2, 3)")  # both (x'0200ff', 2) and ('0x0200ff', 2)
        c.execute("DELETE FROM codes WHERE h IN (5, '5')")
    c.close()
    run = tmp_path / "run"
    rollback(live, backup, out=run)
    review = _review(run)
    assert sorted(r["key"] for r in review if r["table"] == "tags") == [
        '["0x0200ff", 2]',
        '[{"$bytes": "0200ff"}, 2]',
        '[{"$bytes": "0300ff"}, 3]',
    ]

    def only(keep: Callable[[dict[str, str]], bool]) -> tuple[int, str]:
        reviewed = tmp_path / "reviewed.csv"
        with reviewed.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(review[0]))
            w.writeheader()
            w.writerows(r for r in review if keep(r))
        return _invoke(str(run), "--only", str(reviewed), "--yes", "--json")

    before = _sha(live)
    code, out = only(lambda r: r["table"] == "codes")
    assert code == 2 and "names more than one row" in out and "Traceback" not in out, out
    assert _sha(live) == before

    code, out = only(lambda r: r["key"] == '[{"$bytes": "0200ff"}, 2]')
    assert code == 0, out
    assert [i["key"] for i in json.loads(out)["deleted"]] == [[{"$bytes": "0200ff"}, 2]]
    with sqlite3.connect(f"file:{live}?mode=ro", uri=True) as c:
        left = c.execute("SELECT owner, n FROM tags WHERE n IN (2, 3)").fetchall()
        assert c.execute("SELECT key_json FROM _recovery_deletes_applied").fetchall() == [
            ('[{"$bytes": "0200ff"}, 2]',)
        ]
    c.close()
    assert sorted(left, key=repr) == [("0x0200ff", 2), (b"\x03\x00\xff", 3)]
