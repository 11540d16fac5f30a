"""Hostile input corpus: every case is refused (or carried) with one clear line, the documented exit
code, no traceback, and every input file byte-identical afterwards.

Refusal cases run the CLI in-process (click's CliRunner) on a private copy of the sample world and
hash every file of the folder before and after (the run/bundle output goes outside that folder).
Two carry cases (awkward identifiers; NUL bytes and a 5 MB blob) go diff → extract → reimport and
check the values byte-exact.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recovery.cli import main

ROOT = Path(__file__).resolve().parents[1]
ALEMBIC_INI = ROOT / "sample_dbs" / "app" / "alembic.ini"
BACKUP = "gestima.db.bak.20261120_140000"


# ---------------------------------------------------------------------------------------------
# helpers


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (``-shm`` is SQLite's shared-memory index, not data)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[p.relative_to(folder).as_posix()] = "link:" + os.readlink(p)
        elif p.is_file() and not p.name.endswith("-shm"):
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def invoke(args: list[str], cwd: Path) -> tuple[int, str, str, Any]:
    runner = CliRunner()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        res = runner.invoke(main, args, catch_exceptions=True)
    finally:
        os.chdir(old)
    try:
        stderr = res.stderr
    except (ValueError, AttributeError):  # click < 8.2 with mix_stderr=True
        stderr = res.output
    stdout = res.stdout if hasattr(res, "stdout") else res.output
    return res.exit_code, stdout, stderr, res


def assert_refused(
    args: list[str],
    folder: Path,
    expect_code: int = 2,
    match: str | None = None,
    also_unchanged: list[Path] = (),
) -> str:
    before = hashes(folder)
    extra = {p: hashes(p) for p in also_unchanged}
    code, stdout, stderr, res = invoke(args, folder)
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"a bug escaped as {type(res.exception).__name__}: {res.exception}"
    )
    assert "Traceback" not in stderr and "Traceback" not in stdout
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, f"want exactly one error line, got stderr={stderr!r}"
    assert code == expect_code, f"exit {code}, want {expect_code}: {errors[0]}"
    if match:
        assert match.lower() in errors[0].lower(), errors[0]
    assert hashes(folder) == before, "an input file changed"
    for p, h in extra.items():
        assert hashes(p) == h, f"{p} changed"
    return errors[0]


@pytest.fixture
def w(world_copy: Path) -> Path:
    return world_copy


@pytest.fixture(scope="module")
def bundle(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the sample world (extracted read-only from the shared world), extracted once for
    the module: the tests that tamper with a bundle tamper with a copy, the others prove it unchanged."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    code, _, err, _ = invoke(
        [
            "extract",
            str(world / BACKUP),
            str(world / "gestima.db"),
            "--out",
            str(out),
            "--alembic-ini",
            str(ALEMBIC_INI),
            "--uploads",
            str(world / "uploads"),
        ],
        world,
    )
    assert code in (0, 1), err
    return out


def target_from_backup(world: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with (
        sqlite3.connect(f"file:{world / BACKUP}?mode=ro", uri=True) as b,
        sqlite3.connect(dst) as t,
    ):
        b.backup(t)
    b.close()
    t.close()
    return dst


def rollback(w: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "rollback",
        "gestima.db",
        "--backup",
        BACKUP,
        "--out",
        str(tmp / "run"),
        "--yes",
        "--alembic-ini",
        str(ALEMBIC_INI),
        *extra,
    ]


# ---------------------------------------------------------------------------------------------
# damaged or wrong database files


def _zero(p: Path) -> None:
    p.write_bytes(b"")


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _garble_pages(p: Path) -> None:
    data = bytearray(p.read_bytes())
    for i in range(4096, len(data), 7):
        data[i] = (data[i] * 31 + 17) % 256
    p.write_bytes(bytes(data))


def _text(p: Path) -> None:
    p.write_text("id,name\n1,this is a CSV file named .db\n", encoding="utf-8")


def _bad_header(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[16:18] = b"\x01\x03"  # page size 259: not a power of two
    p.write_bytes(bytes(data))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "zero-byte": _zero,
    "truncated": _truncate,
    "corrupt-pages": _garble_pages,
    "text-file": _text,
    "bad-page-size": _bad_header,
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", ["diff", "extract", "rollback"])
def test_damaged_backup_is_refused(damage: str, command: str, w: Path, tmp_path: Path) -> None:
    DAMAGE[damage](w / BACKUP)
    args = {
        "diff": ["diff", BACKUP, "gestima.db"],
        "extract": ["extract", BACKUP, "gestima.db", "--out", str(tmp_path / "b")],
        "rollback": rollback(w, tmp_path),
    }[command]
    assert_refused(args, w)
    assert not (tmp_path / "b").exists()
    assert (
        not (tmp_path / "run" / "safety").exists()
        or command != "rollback"
        or damage == "corrupt-pages"
    )


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "text-file"])
def test_damaged_target_of_reimport_is_refused(
    damage: str, bundle: Path, world: Path, tmp_path: Path
) -> None:
    t = target_from_backup(world, tmp_path / "t" / "target.db")
    DAMAGE[damage](t)
    assert_refused(
        ["reimport", str(bundle), "target.db", "--yes", "--out", str(tmp_path / "rr")],
        t.parent,
        also_unchanged=[bundle],
    )


def test_text_file_named_db_as_live(w: Path, tmp_path: Path) -> None:
    (w / "notes.db").write_text("just text\n", encoding="utf-8")
    assert_refused(["diff", BACKUP, "notes.db"], w, match="not a SQLite database")


def test_missing_and_directory_paths(w: Path, tmp_path: Path) -> None:
    assert_refused(["diff", BACKUP, "nope.db"], w, match="does not exist")
    assert_refused(["diff", BACKUP, "uploads"], w, match="directory")


# ---------------------------------------------------------------------------------------------
# wrong pairing, wrong state


def test_live_db_locked_by_another_writer(w: Path, tmp_path: Path) -> None:
    holder = sqlite3.connect(str(w / "gestima.db"), isolation_level=None, timeout=5)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert_refused(rollback(w, tmp_path), w, match="locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()  # (our holder, closing last, may checkpoint: compared inside assert_refused)
    assert not (tmp_path / "run" / "safety").exists()


def test_backup_of_a_different_application(w: Path, tmp_path: Path) -> None:
    other = w / "other.db"
    with sqlite3.connect(other) as c:
        c.executescript(
            "CREATE TABLE recipes (id INTEGER PRIMARY KEY, title TEXT);"
            "CREATE TABLE ingredients (id INTEGER PRIMARY KEY, recipe_id INTEGER REFERENCES recipes(id));"
            "INSERT INTO recipes VALUES (1, 'soup');"
        )
    c.close()
    os.utime(other, (1_000_000_000, 1_000_000_000))
    assert_refused(
        ["rollback", "gestima.db", "--backup", "other.db", "--out", str(tmp_path / "run"), "--yes"],
        w,
        match="does not look like a backup",
    )


def test_backup_newer_than_live(w: Path, tmp_path: Path) -> None:
    future = (w / "gestima.db-wal").stat().st_mtime + 86400
    os.utime(w / BACKUP, (future, future))
    assert_refused(
        ["rollback", "gestima.db", "--backup", BACKUP, "--out", str(tmp_path / "run"), "--yes"],
        w,
        match="newer",
    )


def test_backup_and_live_swapped(w: Path, tmp_path: Path) -> None:
    """The live DB passed as the backup: its revision is not an ancestor (or it is newer)."""
    assert_refused(
        [
            "rollback",
            BACKUP,
            "--backup",
            "gestima.db",
            "--out",
            str(tmp_path / "run"),
            "--yes",
            "--alembic-ini",
            str(ALEMBIC_INI),
        ],
        w,
    )


@pytest.mark.parametrize(
    "since", ["yesterday", "2026-13-45T99:00", "1e400", "", "2026-11-20 14:00:00; DROP TABLE parts"]
)
@pytest.mark.parametrize("command", ["diff", "extract", "rollback"])
def test_malformed_since(since: str, command: str, w: Path, tmp_path: Path) -> None:
    args = {
        "diff": ["diff", BACKUP, "gestima.db"],
        "extract": ["extract", BACKUP, "gestima.db", "--out", str(tmp_path / "b")],
        "rollback": rollback(w, tmp_path),
    }[command]
    assert_refused([*args, "--since", since], w, match="--since")
    assert not (tmp_path / "run").exists(), "bad input is refused before a run folder is written"


# ---------------------------------------------------------------------------------------------
# mapping files

MAPPINGS = {
    "toml-syntax": ("[tables.parts.columns\nprice = 'x'\n", "TOML"),
    "unknown-column": ('[tables.parts.columns]\nprice = "no_such_column * 2"\n', "no_such_column"),
    "unknown-table-column": (
        '[tables.parts.columns]\nnot_a_column = "price_cents / 100.0"\n',
        None,
    ),
    "statement-injection": ('[tables.parts.columns]\nprice = "1); DROP TABLE parts; --"\n', None),
    "stacked-statement": (
        '[tables.parts.columns]\nprice = "price_cents; DELETE FROM parts"\n',
        None,
    ),
    "subquery": ('[tables.parts.columns]\nprice = "(SELECT sum(id) FROM users)"\n', None),
    "other-table": ('[tables.parts.columns]\nprice = "users.id"\n', None),
    "load-extension": (
        "[tables.parts.columns]\nprice = \"load_extension('/tmp/evil.so')\"\n",
        "load_extension",
    ),
    "unknown-function": ('[tables.parts.columns]\nprice = "evil_udf(price_cents)"\n', None),
    "attach": ("[tables.parts.columns]\nprice = \"0\\n;ATTACH DATABASE '/tmp/x.db' AS x\"\n", None),
    "wrong-type": ("[tables.parts]\ncolumns = 5\n", None),
    "skip-not-bool": ('[tables.parts]\nskip = "yes"\n', None),
    "empty-expression": ('[tables.parts.columns]\nprice = ""\n', None),
    "unknown-section": ("[settings]\nx = 1\n", None),
    "binary": (None, None),
}


@pytest.mark.parametrize("case", MAPPINGS)
@pytest.mark.parametrize("command", ["extract", "rollback"])
def test_hostile_mapping_file(case: str, command: str, w: Path, tmp_path: Path) -> None:
    text, match = MAPPINGS[case]
    m = tmp_path / "mapping.toml"  # outside the hashed folder: it is ours
    if text is None:
        m.write_bytes(b"\xff\xfe\x00garbage\x00")
    else:
        m.write_text(text, encoding="utf-8")
    args = {
        "extract": [
            "extract",
            BACKUP,
            "gestima.db",
            "--out",
            str(tmp_path / "b"),
            "--alembic-ini",
            str(ALEMBIC_INI),
        ],
        "rollback": rollback(w, tmp_path),
    }[command]
    assert_refused([*args, "--mapping", str(m)], w, match=match)
    assert not (tmp_path / "b").exists()
    with sqlite3.connect(f"file:{w / 'gestima.db'}?mode=ro", uri=True) as c:
        assert c.execute("SELECT count(*) FROM parts").fetchone()[0] > 0
    c.close()


# ---------------------------------------------------------------------------------------------
# bundles edited after extraction


def _edit_row(b: Path) -> None:
    with sqlite3.connect(b / "rows.db") as c:
        c.execute(
            "UPDATE quotes SET customer_name = 'tampered' WHERE rowid = (SELECT min(rowid) FROM quotes)"
        )
    c.close()


def _edit_file(b: Path) -> None:
    f = next(p for p in (b / "files").rglob("*") if p.is_file())
    f.write_bytes(f.read_bytes() + b"tampered")


def _edit_manifest(b: Path) -> None:
    m = b / "manifest.json"
    m.write_text(
        m.read_text(encoding="utf-8").replace('"inserted": ', '"inserted": 1', 1), encoding="utf-8"
    )


def _edit_manifest_and_hash(b: Path) -> None:
    """A careful forger re-hashes manifest.json — the per-file hashes still catch rows.db."""
    _edit_row(b)
    m = b / "manifest.json"
    (b / "manifest.sha256").write_text(
        hashlib.sha256(m.read_bytes()).hexdigest() + "  manifest.json\n"
    )


def _edit_sql(b: Path) -> None:
    (b / "reimport.sql").write_text("DROP TABLE parts;\n", encoding="utf-8")


def _add_file(b: Path) -> None:
    (b / "evil.sql").write_text("DROP TABLE parts;\n", encoding="utf-8")


def _remove_base(b: Path) -> None:
    (b / "base.db").unlink()


def _symlink_rows(b: Path) -> None:
    (b / "rows.db").unlink()
    (b / "rows.db").symlink_to("/etc/hostname")


TAMPER: dict[str, Callable[[Path], None]] = {
    "row-edited": _edit_row,
    "file-edited": _edit_file,
    "manifest-edited": _edit_manifest,
    "manifest-rehashed": _edit_manifest_and_hash,
    "sql-edited": _edit_sql,
    "file-added": _add_file,
    "base-removed": _remove_base,
    "rows-symlinked": _symlink_rows,
}


@pytest.mark.parametrize("tamper", TAMPER)
def test_tampered_bundle_is_refused(tamper: str, bundle: Path, world: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, symlinks=True)
    if tamper == "file-edited":
        assert any(p.is_file() for p in (copy / "files").rglob("*")), (
            "the sample bundle carries files"
        )
    TAMPER[tamper](copy)
    t = target_from_backup(world, tmp_path / "t" / "target.db")
    line = assert_refused(
        ["reimport", str(copy), "target.db", "--yes", "--out", str(tmp_path / "rr")],
        t.parent,
        also_unchanged=[copy],
    )
    assert "bundle" in line


def test_reimport_into_a_db_of_the_wrong_schema(bundle: Path, w: Path, tmp_path: Path) -> None:
    """The live (new-schema) DB instead of the restored backup."""
    assert_refused(
        ["reimport", str(bundle), "gestima.db", "--yes", "--out", str(tmp_path / "rr")],
        w,
        match="schema",
        also_unchanged=[bundle],
    )


def test_not_a_bundle(w: Path, tmp_path: Path) -> None:
    assert_refused(
        ["reimport", "uploads", "gestima.db", "--yes", "--out", str(tmp_path / "rr")],
        w,
        match="not a recovery bundle",
    )


# ---------------------------------------------------------------------------------------------
# file_records paths that escape the uploads root


def test_unsafe_upload_paths_are_reported_never_read(w: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("TOP SECRET\n", encoding="utf-8")
    (w / "uploads" / "parts" / "escape.pdf").symlink_to(secret)
    (w / "uploads" / "parts" / "dir-escape").symlink_to(outside, target_is_directory=True)
    evil = [
        "../outside/secret.txt",
        str(secret),
        "parts/escape.pdf",
        "parts/dir-escape/secret.txt",
        "parts/../../outside/secret.txt",
        "~/secret.txt",
        "parts\\..\\..\\secret.txt",
    ]
    with sqlite3.connect(str(w / "gestima.db")) as c:
        c.execute("PRAGMA journal_mode")  # keep WAL as it is
        top = c.execute("SELECT max(id) FROM file_records").fetchone()[0]
        for i, path in enumerate(evil, start=1):
            c.execute(
                "INSERT INTO file_records (id, filename, path, sha256, size, mime_type, entity_type, entity_id,"
                " created_at, uploaded_by) VALUES (?, 'secret.txt', ?, ?, 11, 'text/plain', 'part', 1,"
                " '2026-11-20 15:00:00', 1)",
                (top + i, path, "0" * 64),
            )
    c.close()
    before = hashes(w)
    out = tmp_path / "b"
    code, _stdout, stderr, res = invoke(
        [
            "extract",
            BACKUP,
            "gestima.db",
            "--out",
            str(out),
            "--alembic-ini",
            str(ALEMBIC_INI),
            "--uploads",
            "uploads",
            "--json",
        ],
        w,
    )
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert code in (0, 1), stderr
    assert "Traceback" not in stderr
    assert hashes(w) == before
    copied = (
        [p for p in (out / "files").rglob("*") if p.is_file()] if (out / "files").exists() else []
    )
    assert all(p.read_bytes() != b"TOP SECRET\n" for p in copied), (
        "a file outside the uploads root was copied"
    )
    import json

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    unsafe = {e["path"] for e in manifest["files"]["unsafe"]}
    assert unsafe == set(evil), unsafe


# ---------------------------------------------------------------------------------------------
# awkward identifiers and values that must be carried, not refused

WEIRD_OLD = """
CREATE TABLE "order" ("select" INTEGER PRIMARY KEY, "group" TEXT NOT NULL, "a b" REAL, "qu""ote" TEXT);
CREATE TABLE "Ünïcødé tåble" ("id" INTEGER PRIMARY KEY, "order_ref" INTEGER REFERENCES "order"("select"),
                               "naïve col" TEXT, "[bracket]" TEXT, "`tick`" INTEGER);
INSERT INTO "order" VALUES (1, 'g1', 1.5, 'it''s'), (2, 'g2', NULL, '"dq"');
INSERT INTO "Ünïcødé tåble" VALUES (1, 1, 'café', '[x]', 7);
"""
WEIRD_MIGRATE = """
ALTER TABLE "order" ADD COLUMN "where" TEXT DEFAULT 'x';
ALTER TABLE "Ünïcødé tåble" RENAME COLUMN "naïve col" TO "naïve column";
CREATE TABLE "new table; DROP TABLE x" ("id" INTEGER PRIMARY KEY, "v" TEXT);
"""
WEIRD_ACTIVITY = """
INSERT INTO "order" ("select", "group", "a b", "qu""ote", "where") VALUES (3, 'g3', 2.25, 'Robert''); DROP TABLE "order";--', 'lost');
UPDATE "order" SET "group" = 'g1*' WHERE "select" = 1;
INSERT INTO "Ünïcødé tåble" VALUES (2, 3, '日本語 ✓', '[y]', 8);
UPDATE "Ünïcødé tåble" SET "naïve column" = 'crème' WHERE id = 1;
INSERT INTO "new table; DROP TABLE x" VALUES (1, 'gone');
"""


def _two_db_world(
    folder: Path, old_sql: str, migrate: str, activity: str, blob_params: list[Any] = ()
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    backup = folder / "app.db.bak.20261120_140000"
    with sqlite3.connect(backup) as c:
        c.executescript(old_sql)
    c.close()
    live = folder / "app.db"
    shutil.copyfile(backup, live)
    with sqlite3.connect(live) as c:
        c.executescript(migrate)
        c.executescript(activity)
        for stmt, params in blob_params:
            c.execute(stmt, params)
    c.close()
    os.utime(backup, (1_700_000_000, 1_700_000_000))


def _carry(folder: Path, tmp: Path, mapping: str | None = None) -> Path:
    """diff → extract → reimport into a copy of the backup; returns the target."""
    backup, live = "app.db.bak.20261120_140000", "app.db"
    before = hashes(folder)
    code, _out, err, res = invoke(["diff", backup, live, "--json"], folder)
    assert code == 1 and "Traceback" not in err, (err, res.exception)
    args = ["extract", backup, live, "--out", str(tmp / "b")]
    if mapping:
        (tmp / "m.toml").write_text(mapping, encoding="utf-8")
        args += ["--mapping", str(tmp / "m.toml")]
    code, _out, err, res = invoke(args, folder)
    assert code in (0, 1) and "Traceback" not in err, (err, res.exception)
    target = tmp / "t" / "target.db"
    target.parent.mkdir()
    shutil.copyfile(folder / backup, target)
    code, _out, err, res = invoke(
        ["reimport", str(tmp / "b"), "target.db", "--yes", "--out", str(tmp / "rr")], target.parent
    )
    assert code in (0, 1) and "Traceback" not in err, (err, res.exception)
    assert hashes(folder) == before, "diff/extract changed an input"
    return target


def test_identifiers_with_quotes_spaces_unicode_and_reserved_words(tmp_path: Path) -> None:
    folder = tmp_path / "weird"
    _two_db_world(folder, WEIRD_OLD, WEIRD_MIGRATE, WEIRD_ACTIVITY)
    mapping = '[tables."Ünïcødé tåble".columns]\n"naïve col" = \'"naïve column"\'\n'
    target = _carry(folder, tmp_path, mapping)
    with sqlite3.connect(f"file:{target}?mode=ro", uri=True) as c:
        assert c.execute('SELECT * FROM "order" ORDER BY "select"').fetchall() == [
            (1, "g1*", 1.5, "it's"),
            (2, "g2", None, '"dq"'),
            (3, "g3", 2.25, 'Robert\'); DROP TABLE "order";--'),
        ]
        assert c.execute('SELECT * FROM "Ünïcødé tåble" ORDER BY id').fetchall() == [
            (1, 1, "crème", "[x]", 7),
            (2, 3, "日本語 ✓", "[y]", 8),
        ]
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "new table; DROP TABLE x" not in names
    c.close()


BIG = os.urandom(5 * 1024 * 1024)
NUL_TEXT = "before\x00after\x00\x00end ✓"


def test_nul_bytes_and_a_5mb_blob_are_carried_byte_exact(tmp_path: Path) -> None:
    folder = tmp_path / "blobs"
    old = (
        "CREATE TABLE doc (id INTEGER PRIMARY KEY, body BLOB, note TEXT, n INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO doc VALUES (1, x'00ff00', 'plain', 1);"
    )
    migrate = "ALTER TABLE doc ADD COLUMN extra TEXT;"
    params = [
        ("INSERT INTO doc (id, body, note, n, extra) VALUES (2, ?, ?, 2, NULL)", (BIG, NUL_TEXT)),
        ("UPDATE doc SET body = ?, note = ? WHERE id = 1", (b"\x00" * 1000 + b"\x01", "x\x00y")),
        ("INSERT INTO doc (id, body, note, n) VALUES (3, ?, ?, 3)", (b"", "")),
    ]
    _two_db_world(folder, old, migrate, "", params)
    target = _carry(folder, tmp_path)
    with sqlite3.connect(f"file:{target}?mode=ro", uri=True) as c:
        rows = {
            r[0]: r[1:]
            for r in c.execute(
                "SELECT id, body, typeof(body), note, typeof(note), length(CAST(note AS BLOB)) FROM doc"
            )
        }
    c.close()
    assert rows[2][0] == BIG and rows[2][1] == "blob"
    assert rows[2][2] == NUL_TEXT and rows[2][3] == "text" and rows[2][4] == len(NUL_TEXT.encode())
    assert rows[1][0] == b"\x00" * 1000 + b"\x01" and rows[1][2] == "x\x00y"
    assert rows[3][0] == b"" and rows[3][1] == "blob" and rows[3][2] == "" and rows[3][3] == "text"


def test_corpus_size() -> None:
    """Counted in docs/RELIABILITY.md."""
    n = len(DAMAGE) * 3 + 3 + 2 + 4 + 5 * 3 + len(MAPPINGS) * 2 + len(TAMPER) + 2 + 1 + 2
    assert n >= 60
