"""The re-import into PostgreSQL on a real server (issue 19): :func:`recovery.reimport.pgmerge.reimport_postgres`.

One small sample world per module (--parts 60): built in SQLite (its bundle, its SQLite re-import)
and on the server by ``recovery sample --url`` (conftest's session-wide ``pg_world``: its pg_dump
backup restored once into ``pg_world.backup``; every test works on a ``CREATE DATABASE … TEMPLATE``
copy of it).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url
from sqlglot import exp

from recovery.bundle.store import open_bundle
from recovery.engine.postgres import (
    PostgresEngine,
    command,
    conninfo,
    connect,
    create_database_sql,
    drop_database_sql,
    find_tool,
    ident,
    run,
)
from recovery.errors import RecoveryError
from recovery.model.kinds import ConflictKind, Resolution
from recovery.options import MergeOptions
from recovery.reimport.pgmerge import KILL_ENV, reimport_postgres
from tests.pgcluster import PgWorld

PARTS, SEED = 60, 42


def _admin(server: str) -> psycopg.Connection[Any]:
    return connect(make_url(server), "server")


def _copy_db(server: str, template: str) -> str:
    """A new database copied from ``template``; its URL."""
    name = f"pgimp_{uuid.uuid4().hex[:10]}"
    with _admin(server) as a:
        run(a, create_database_sql(name, template))
    return make_url(server).set(database=name).render_as_string(False)


def _drop(server: str, url: str) -> None:
    with _admin(server) as a:
        run(a, drop_database_sql(str(make_url(url).database)))


@pytest.fixture(scope="module")
def lite_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recovery.sample import generate

    return generate(tmp_path_factory.mktemp("pgimp_lite") / "world", parts=PARTS, seed=SEED)


@pytest.fixture(scope="module")
def lite_bundle(lite_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recovery.bundle.extract import extract
    from recovery.sample import app_dir

    out = tmp_path_factory.mktemp("pgimp_bundle") / "bundle"
    extract(
        lite_world / "gestima.db.bak.20261120_140000",
        lite_world / "gestima.db",
        out,
        alembic_ini=app_dir() / "alembic.ini",
        uploads=lite_world / "uploads",
    )
    return out


@pytest.fixture(scope="module")
def lite_reimported(
    lite_world: Path, lite_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The SQLite re-import of the same bundle into the restored SQLite backup."""
    from recovery.pipeline import reimport

    d = tmp_path_factory.mktemp("pgimp_litere")
    db = d / "gestima.db"
    shutil.copyfile(lite_world / "gestima.db.bak.20261120_140000", db)
    reimport(lite_bundle, db, d / "run")
    return db


@pytest.fixture(scope="module")
def template_db(pg_world: PgWorld) -> str:
    """The name of a database holding the PostgreSQL sample world's backup (pg_restore of its
    dump): conftest's session-wide ``pg_world.backup``, only ever copied here."""
    return pg_world.backup


@pytest.fixture
def target(pg_server: str, template_db: str) -> Iterator[str]:
    url = _copy_db(pg_server, template_db)
    yield url
    _drop(pg_server, url)


def _q(url: str, text: str) -> list[tuple[Any, ...]]:
    with connect(make_url(url), "test") as c:
        return list(run(c, text).fetchall())


def _exec(url: str, *statements: str) -> None:
    with connect(make_url(url), "test") as c:
        for s in statements:
            run(c, command(s))


def _normal(v: Any) -> Any:
    from decimal import Decimal

    if isinstance(v, bool):
        return int(v)
    if isinstance(v, Decimal):
        return float(v)
    return v


def _table_rows(url: str, name: str, cols: list[str]) -> list[tuple[Any, ...]]:
    q = (
        exp.select(*[exp.column(c, quoted=True) for c in cols])
        .from_(exp.Table(this=exp.to_identifier(name, quoted=True)))
        .order_by(*[exp.column(c, quoted=True) for c in cols])
    )
    return [tuple(_normal(v) for v in r) for r in _q(url, q.sql("postgres"))]


def _lite_rows(path: Path, name: str, cols: list[str]) -> list[tuple[Any, ...]]:
    q = (
        exp.select(*[exp.column(c, quoted=True) for c in cols])
        .from_(exp.Table(this=exp.to_identifier(name, quoted=True)))
        .order_by(*[exp.column(c, quoted=True) for c in cols])
    )
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(q.sql("sqlite")).fetchall())
    finally:
        conn.close()


def _fingerprint(url: str) -> dict[str, Any]:
    return PostgresEngine(url).fingerprint()


def test_sample_world_reimport_gives_the_sqlite_rows(
    target: str, lite_bundle: Path, lite_reimported: Path, tmp_path: Path
) -> None:
    """The sample world's bundle re-imported into the restored PostgreSQL backup gives, table by
    table, the rows the SQLite re-import of the same bundle gives; the same counts and lost values."""
    from recovery.engine.schema import reflect
    from recovery.engine.sqlite_io import readonly
    from recovery.model.outcome import Outcome

    b = open_bundle(lite_bundle)
    o = reimport_postgres(target, b, MergeOptions(), run_dir=tmp_path / "run")
    assert not o.aborted and not o.conflicts
    with readonly(lite_reimported, "db") as c:
        schema = reflect(c)
    for name in schema.data_tables:
        cols = list(schema.tables[name].column_names)
        assert _table_rows(target, name, cols) == _lite_rows(lite_reimported, name, cols), name
    with sqlite3.connect(lite_reimported) as c:
        lite_outcome = Outcome.from_json(
            c.execute("SELECT outcome FROM _recovery_applied").fetchone()[0]
        )
    for name, to in lite_outcome.tables.items():
        got = o.tables[name]
        assert (got.inserted, got.updated, got.rows_after) == (
            to.inserted,
            to.updated,
            to.rows_after,
        ), name
    assert o.lost_total == lite_outcome.lost_total > 0
    assert [(d["table"], d["key"]) for d in o.deletes_for_review] == [
        (d["table"], d["key"]) for d in lite_outcome.deletes_for_review
    ]
    # every sequence is past every carried id: the old app's next insert takes a fresh key
    for name in ("quotes", "parts", "quote_items", "file_records"):
        (top,) = _q(target, f"SELECT max(id) FROM {ident(name)}")[0]
        (seq,) = _q(
            target, f"SELECT last_value FROM pg_sequences WHERE sequencename = '{name}_id_seq'"
        )[0]
        assert seq >= top, name
    # the same bundle again: a no-op
    before = _fingerprint(target)
    again = reimport_postgres(target, b, MergeOptions())
    assert again.already_applied and _fingerprint(target) == before


def test_reimport_sql_applied_with_psql_gives_the_same_database(
    pg_server: str, target: str, lite_bundle: Path, tmp_path: Path
) -> None:
    """run_dir/reimport.sql, applied with psql to a copy of the target taken before, gives the
    same database (remaps, deletes and the bookkeeping row included)."""
    _exec(
        target,
        "INSERT INTO quotes (quote_number, customer, status, created_at, updated_at, created_by) "
        "VALUES ('Q-OLD-1', 'Old app', 'draft', '2026-11-21 09:00:00', '2026-11-21 09:00:00', 1)",
    )
    copy = _copy_db(pg_server, str(make_url(target).database))
    try:
        o = reimport_postgres(
            target, open_bundle(lite_bundle), MergeOptions(apply_deletes=True), run_dir=tmp_path
        )
        assert o.remaps and sum(t.deleted for t in o.tables.values()) > 0
        psql = find_tool("psql", 15)
        r = subprocess.run(
            [
                psql,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                conninfo(make_url(copy)),
                "-f",
                str(tmp_path / "reimport.sql"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert _fingerprint(copy) == _fingerprint(target)
    finally:
        _drop(pg_server, copy)


def _old_app_writes(url: str) -> None:
    """What the old app did after the restore, before the re-import: two new quotes (taking the
    keys the bundle's new quotes have), a new part, an edit of a quote the bundle also changed."""
    _exec(
        url,
        "INSERT INTO quotes (quote_number, customer, status, created_at, updated_at, created_by) VALUES "
        "('Q-OLD-1', 'Old app', 'draft', '2026-11-21 09:00:00', '2026-11-21 09:00:00', 1), "
        "('Q-OLD-2', 'Old app', 'draft', '2026-11-21 09:05:00', '2026-11-21 09:05:00', 1)",
    )


def test_old_app_writes_then_remap_takes_keys_from_the_sequence(
    target: str, lite_bundle: Path
) -> None:
    b = open_bundle(lite_bundle)
    _old_app_writes(target)
    new_quotes = _q(target, "SELECT max(id) FROM quotes")[0][0]
    o = reimport_postgres(target, b, MergeOptions())
    pk = [c for c in o.conflicts if c.kind is ConflictKind.PRIMARY_KEY]
    assert pk and all(c.resolution is Resolution.REMAPPED for c in pk)
    remapped = {(r.old_key, r.new_key) for r in o.remaps if r.table == "quotes"}
    assert remapped and all(n > new_quotes for _, n in remapped)
    for old, new in remapped:
        # the remapped quote is there under its new key with the bundle's number, and its items follow it
        bundle_items = (
            sqlite3.connect(b.rows_db)
            .execute(
                'SELECT count(*) FROM quote_items WHERE quote_id = ? AND "_recovery_kind" = ?',
                (old, "inserted"),
            )
            .fetchone()[0]
        )
        assert (
            _q(target, f"SELECT count(*) FROM quote_items WHERE quote_id = {int(new)}")[0][0]
            == bundle_items
        )
    assert {
        r[0] for r in _q(target, "SELECT quote_number FROM quotes WHERE customer = 'Old app'")
    } == {
        "Q-OLD-1",
        "Q-OLD-2",
    }
    # the sequence is past every carried id: the old app's next quote gets a fresh key
    _exec(
        target,
        "INSERT INTO quotes (quote_number, customer, status, created_at, updated_at, created_by) "
        "VALUES ('Q-OLD-3', 'Old app', 'draft', '2026-11-21 10:00:00', '2026-11-21 10:00:00', 1)",
    )
    top = max(n for _, n in remapped)
    assert _q(target, "SELECT id FROM quotes WHERE quote_number = 'Q-OLD-3'")[0][0] > top


def test_skip_and_abort_policies(pg_server: str, template_db: str, lite_bundle: Path) -> None:
    b = open_bundle(lite_bundle)
    skip_db, abort_db = _copy_db(pg_server, template_db), _copy_db(pg_server, template_db)
    try:
        for url in (skip_db, abort_db):
            _old_app_writes(url)
            _exec(
                url,
                "UPDATE quotes SET status = 'old-app' WHERE id IN "
                "(SELECT id FROM quotes ORDER BY id LIMIT 30)",
            )
        o = reimport_postgres(skip_db, b, MergeOptions(on_conflict="skip"))
        kinds = {c.kind for c in o.conflicts}
        assert ConflictKind.PRIMARY_KEY in kinds
        assert all(
            c.resolution is Resolution.SKIPPED
            for c in o.conflicts
            if c.kind is ConflictKind.PRIMARY_KEY
        )
        # the quotes' items were skipped with them (a unit lands whole or not at all)
        assert any(r["table"] == "quote_items" for r in o.skipped_rows)
        assert _q(skip_db, "SELECT count(*) FROM quotes WHERE customer = 'Old app'")[0][0] == 2
        # the old app's edit of a cell the bundle also changed: reported, the target's value kept
        (qid,) = _status_changed(b)
        upd = [c for c in o.conflicts if c.kind is ConflictKind.UPDATE_UPDATE]
        assert [(c.key, c.column, c.target_value) for c in upd] == [((qid,), "status", "old-app")]
        assert upd[0].resolution is Resolution.KEPT_TARGET
        assert _q(skip_db, f"SELECT status FROM quotes WHERE id = {qid}")[0][0] == "old-app"
        before = _fingerprint(abort_db)
        a = reimport_postgres(abort_db, b, MergeOptions(on_conflict="abort"))
        assert a.aborted and a.conflicts
        assert _fingerprint(abort_db) == before
    finally:
        _drop(pg_server, skip_db)
        _drop(pg_server, abort_db)


def _status_changed(b: Any) -> list[int]:
    """Ids of the quotes whose status the bundle changed after the deploy."""
    c = sqlite3.connect(b.rows_db)
    try:
        c.execute("ATTACH DATABASE ? AS base", (str(b.base_db),))
        q = (
            "SELECT n.id FROM quotes AS n JOIN base.quotes AS o ON o.id = n.id "
            "WHERE n._recovery_kind = 'updated' AND n.status IS NOT o.status ORDER BY n.id"
        )
        return [r[0] for r in c.execute(q)]
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["cell", "row"])
def test_prefer_bundle_takes_the_bundle_value_and_reports_it(
    target: str, lite_bundle: Path, mode: str
) -> None:
    """A cell changed on both sides: --prefer bundle writes the bundle's value, the conflict is
    reported (cell by cell, or once for the row with --conflicts row); --prefer db keeps the target's."""
    b = open_bundle(lite_bundle)
    (qid,) = _status_changed(b)
    want = (
        sqlite3.connect(b.rows_db)
        .execute("SELECT status FROM quotes WHERE id = ?", (qid,))
        .fetchone()[0]
    )
    _exec(target, f"UPDATE quotes SET status = 'old-app' WHERE id = {qid}")
    o = reimport_postgres(target, b, MergeOptions(prefer="bundle", conflicts=mode))
    hit = [c for c in o.conflicts if c.kind is ConflictKind.UPDATE_UPDATE]
    assert [(c.key, c.resolution) for c in hit] == [((qid,), Resolution.APPLIED)]
    assert "status" in (hit[0].column or "")
    assert _q(target, f"SELECT status FROM quotes WHERE id = {qid}")[0][0] == want


def test_triggers_are_suspended_and_back_after_commit_and_after_rollback(
    target: str, lite_bundle: Path
) -> None:
    _exec(
        target,
        "CREATE SCHEMA side",
        "CREATE TABLE side.audit (n integer)",
        "CREATE FUNCTION side.audit_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO side.audit VALUES (1); RETURN NEW; END $$",
        "CREATE TRIGGER quotes_audit AFTER INSERT OR UPDATE ON quotes FOR EACH ROW "
        "EXECUTE FUNCTION side.audit_it()",
    )
    b = open_bundle(lite_bundle)
    o = reimport_postgres(target, b, MergeOptions(), dry_run=True)  # rolled back: trigger back too
    assert o.triggers_suspended == ["quotes_audit"]
    assert _q(target, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'quotes_audit'")[0][0] == "O"
    o = reimport_postgres(target, b, MergeOptions())
    assert o.triggers_suspended == ["quotes_audit"] and o.tables["quotes"].inserted > 0
    assert _q(target, "SELECT count(*) FROM side.audit")[0][0] == 0
    assert _q(target, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'quotes_audit'")[0][0] == "O"
    _exec(target, "UPDATE quotes SET status = status WHERE id = 1")
    assert _q(target, "SELECT count(*) FROM side.audit")[0][0] == 1


def test_a_target_with_another_schema_is_refused(target: str, lite_bundle: Path) -> None:
    _exec(target, "CREATE TABLE extra (n integer)")
    before = _fingerprint(target)
    with pytest.raises(RecoveryError) as err:
        reimport_postgres(target, open_bundle(lite_bundle), MergeOptions())
    assert err.value.exit_code == 2 and "extra" in str(err.value)
    assert _fingerprint(target) == before


def test_a_kill_mid_transaction_leaves_the_target_unchanged(target: str, lite_bundle: Path) -> None:
    before = _fingerprint(target)
    code = (
        "import sys\n"
        "from recovery.bundle.store import open_bundle\n"
        "from recovery.options import MergeOptions\n"
        "from recovery.reimport.pgmerge import reimport_postgres\n"
        "reimport_postgres(sys.argv[1], open_bundle(sys.argv[2]), MergeOptions(apply_deletes=True))\n"
    )
    for after in (12, 60):
        r = subprocess.run(
            [sys.executable, "-c", code, target, str(lite_bundle)],
            env={**os.environ, KILL_ENV: str(after)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == -9, r.stderr
        assert _fingerprint(target) == before
    o = reimport_postgres(target, open_bundle(lite_bundle), MergeOptions())
    assert not o.already_applied and sum(t.inserted for t in o.tables.values()) > 0


def test_a_failure_rolls_back_with_exit_3(target: str, lite_bundle: Path) -> None:
    """A rule the detectors do not model (a partial unique index on an expression: at most one
    quote item newer than the backup) makes the server refuse the insert: everything is rolled
    back, the triggers included, exit 3."""
    top = _q(target, "SELECT max(id) FROM quote_items")[0][0]
    _exec(
        target,
        f"CREATE UNIQUE INDEX one_new_item ON quote_items ((1)) WHERE id > {int(top)}",
        "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER items_noop BEFORE INSERT ON quote_items FOR EACH ROW EXECUTE FUNCTION noop()",
    )
    before = _fingerprint(target)
    with pytest.raises(RecoveryError) as err:
        reimport_postgres(target, open_bundle(lite_bundle), MergeOptions())
    assert err.value.exit_code == 3 and "rolled back" in str(err.value)
    assert _fingerprint(target) == before
    assert _q(target, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'items_noop'")[0][0] == "O"


# ---- hostile identifiers -----------------------------------------------------------------------

PARENT, CHILD = 'pa"rent ä', "ch;ild'); DROP TABLE x; --"


def _hostile_lite(path: Path, extra: bool) -> None:
    conn = sqlite3.connect(path)
    p, c = ident(PARENT), ident(CHILD)
    conn.executescript(
        f'CREATE TABLE {p} ("i d" INTEGER PRIMARY KEY, "sel ect" TEXT NOT NULL UNIQUE, "Gr""oup" TEXT);'
        f'CREATE TABLE {c} ("i d" INTEGER PRIMARY KEY, "pa rent" INTEGER REFERENCES {p}("i d"), '
        f'"v\'al" TEXT);'
        f"INSERT INTO {p} VALUES (1, 'one', 'a'), (2, 'two', 'b');"
        f"INSERT INTO {c} VALUES (1, 1, 'x');"
    )
    if extra:
        conn.executescript(
            f"INSERT INTO {p} VALUES (3, 'three''s \\ tab\there', 'c'), (4, 'four', NULL);"
            f"INSERT INTO {c} VALUES (2, 3, 'new line\nhere'), (3, 4, 'y');"
            f'UPDATE {p} SET "Gr""oup" = \'changed\' WHERE "i d" = 2;'
        )
    conn.commit()
    conn.close()


def test_hostile_identifiers_and_values(pg_url: str, tmp_path: Path) -> None:
    from recovery.bundle.extract import extract

    _hostile_lite(tmp_path / "backup.db", False)
    _hostile_lite(tmp_path / "live.db", True)
    extract(tmp_path / "backup.db", tmp_path / "live.db", tmp_path / "bundle")
    p, c = ident(PARENT), ident(CHILD)
    _exec(
        pg_url,
        f'CREATE TABLE {p} ("i d" integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, '
        f'"sel ect" text NOT NULL UNIQUE, "Gr""oup" text)',
        f'CREATE TABLE {c} ("i d" integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, '
        f'"pa rent" integer REFERENCES {p}("i d") DEFERRABLE, "v\'al" text)',
        f"INSERT INTO {p} (\"sel ect\", \"Gr\"\"oup\") VALUES ('one', 'a'), ('two', 'b')",
        f'INSERT INTO {c} ("pa rent", "v\'al") VALUES (1, \'x\')',
        # the old app wrote a parent after the restore: it takes key 3
        f'INSERT INTO {p} ("sel ect", "Gr""oup") VALUES (\'old app\', \'z\')',
    )
    o = reimport_postgres(
        pg_url, open_bundle(tmp_path / "bundle"), MergeOptions(), run_dir=tmp_path / "run"
    )
    assert [(r.table, r.old_key) for r in o.remaps] == [(PARENT, 3)]
    new3 = o.remaps[0].new_key
    rows = _q(pg_url, f'SELECT "i d", "sel ect", "Gr""oup" FROM {p} ORDER BY 1')
    assert rows == [
        (1, "one", "a"),
        (2, "two", "changed"),
        (3, "old app", "z"),
        (4, "four", None),
        (new3, "three's \\ tab\there", "c"),
    ] or sorted(rows) == sorted(
        [
            (1, "one", "a"),
            (2, "two", "changed"),
            (3, "old app", "z"),
            (4, "four", None),
            (new3, "three's \\ tab\there", "c"),
        ]
    )
    kids = _q(pg_url, f'SELECT "i d", "pa rent", "v\'al" FROM {c} ORDER BY 1')
    assert kids == [(1, 1, "x"), (2, new3, "new line\nhere"), (3, 4, "y")]
    # the identity (GENERATED ALWAYS) is past every carried id
    _exec(pg_url, f"INSERT INTO {p} (\"sel ect\") VALUES ('next')")
    assert _q(pg_url, f'SELECT "i d" FROM {p} WHERE "sel ect" = \'next\'')[0][0] > new3
    assert (tmp_path / "run" / "reimport.sql").stat().st_mode & 0o777 == 0o600


def test_cli_reimport_into_a_postgres_url(
    target: str, lite_world: Path, lite_bundle: Path, tmp_path: Path
) -> None:
    """``recovery reimport BUNDLE postgresql://…``: a pg_dump safety copy first, the run's files,
    exit 1 (lost values to review); the bundle is then recorded as applied."""
    cmd = [
        sys.executable,
        "-m",
        "recovery",
        "reimport",
        str(lite_bundle),
        target,
        "--yes",
        "--quiet",
    ]
    r = subprocess.run(
        [*cmd, "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 1, r.stderr
    run_dir = tmp_path / "run"
    assert (run_dir / "safety" / f"{make_url(target).database}.dump").stat().st_size > 0
    assert {"report.json", "reimport.sql", "conflicts.csv", "lost_values.csv"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert reimport_postgres(target, open_bundle(lite_bundle), MergeOptions()).already_applied
    # recovery relink on the URL: the dry run names the upload it would restore from the bundle
    up = tmp_path / "uploads"
    shutil.copytree(lite_world / "uploads", up)
    missing = (
        sqlite3.connect(open_bundle(lite_bundle).rows_db)
        .execute("SELECT path FROM file_records WHERE _recovery_kind = 'inserted' ORDER BY id")
        .fetchone()[0]
    )
    (up / missing).unlink()
    r = subprocess.run(
        [sys.executable, "-m", "recovery", "relink", str(lite_bundle), target, "--uploads", str(up)]
        + ["--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert [e["path"] for e in json.loads(r.stdout)["restored_from_bundle"]] == [missing]
    assert not (up / missing).exists()


OLD_APP_FILE = (
    "INSERT INTO file_records (filename, path, sha256, size, mime_type, entity_type, entity_id, "
    "created_at, uploaded_by) VALUES ('old.pdf', 'old/old.pdf', '{sha}', 3, 'application/pdf', "
    "'part', 1, '2026-11-21 09:00:00', 1)"
)


def test_relink_in_postgres_reports_what_the_sqlite_relink_reports(
    target: str, lite_world: Path, lite_bundle: Path, tmp_path: Path
) -> None:
    """The old app stored a file after the restore (its record takes a key the bundle's records
    have: remapped), and a carried upload is missing from the folder: relink on PostgreSQL
    restores it from the bundle, finds the remapped records and reports exactly what the SQLite
    relink of the same scenario reports."""
    import hashlib

    from recovery.files.pgrelink import relink_postgres
    from recovery.files.relink import relink
    from recovery.pipeline import reimport

    b = open_bundle(lite_bundle)
    sha = hashlib.sha256(b"old").hexdigest()
    lite_db = tmp_path / "gestima.db"
    shutil.copyfile(lite_world / "gestima.db.bak.20261120_140000", lite_db)
    with sqlite3.connect(lite_db) as c:
        c.execute(OLD_APP_FILE.format(sha=sha))
    c.close()
    _exec(target, OLD_APP_FILE.format(sha=sha))
    carried = (
        sqlite3.connect(b.rows_db)
        .execute("SELECT path FROM file_records WHERE _recovery_kind = 'inserted' ORDER BY id")
        .fetchall()
    )
    reports = []
    for side in ("lite", "pg"):
        up = tmp_path / f"uploads-{side}"
        shutil.copytree(lite_world / "uploads", up)
        (up / "old").mkdir()
        (up / "old" / "old.pdf").write_bytes(b"old")
        (up / carried[0][0]).unlink()
        if side == "lite":
            o = reimport(b, lite_db, tmp_path / "lite-run").outcome
            assert o is not None
            reports.append(relink(b, lite_db, up, remaps=o.remaps))
        else:
            o = reimport_postgres(target, b, MergeOptions())
            assert [r for r in o.remaps if r.table == "file_records"]
            assert relink_postgres(b, target, up, dry_run=True, remaps=o.remaps)["dry_run"]
            assert not (up / carried[0][0]).exists()  # a dry run writes nothing
            reports.append(relink_postgres(b, target, up, remaps=o.remaps))
        assert (up / carried[0][0]).read_bytes() == (
            lite_world / "uploads" / carried[0][0]
        ).read_bytes()
    lite_r, pg_r = reports
    assert pg_r["counts"]["restored_from_bundle"] == 1
    for key in (
        "counts",
        "restored_from_bundle",
        "relinked",
        "missing",
        "orphans",
        "unsafe",
        "kept_both",
        "links_fixed",
        "records_not_imported",
        "records_without_file",
    ):
        assert pg_r[key] == lite_r[key], key


@pytest.fixture(scope="module")
def roundtrip_conn(pg_server: str) -> Iterator[psycopg.Connection[Any]]:
    name = f"pgimp_rt_{uuid.uuid4().hex[:8]}"
    with _admin(pg_server) as a:
        run(a, create_database_sql(name))
    url = make_url(pg_server).set(database=name)
    conn = connect(url, "test")
    run(conn, command("CREATE TEMP TABLE raw (t text, f text, b text, i text)"))
    yield conn
    conn.close()
    with _admin(pg_server) as a:
        run(a, drop_database_sql(name))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    t=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    f=st.floats(allow_nan=False),
    b=st.binary(max_size=64),
    i=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_staged_values_come_back_identical(
    roundtrip_conn: psycopg.Connection[Any], t: str, f: float, b: bytes, i: int
) -> None:
    """What the staging sends through COPY (a SQLite bundle's text, real, blob and integer values
    in COPY text format) and casts in SQL to the target types is the identical value: tabs,
    newlines, backslashes and any unicode in text; every double bit for bit; every byte."""
    from recovery.reimport.pgmerge import PgScript

    conn = roundtrip_conn
    run(conn, command("TRUNCATE raw"))
    script = PgScript(conn)
    try:
        script.copy(exp.Table(this=exp.to_identifier("raw")), ["t", "f", "b", "i"], [(t, f, b, i)])
    finally:
        script.close()
    got = conn.execute(
        "SELECT t, CAST(f AS double precision), CAST(b AS bytea), CAST(i AS bigint) FROM raw"
    ).fetchone()
    assert got == (t, f, b, i)


def test_a_statement_over_the_time_limit_is_cancelled_and_nothing_applied(
    target: str, lite_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement is bounded: one that runs longer than the limit (here the target's own
    CHECK calling a slow function, evaluated over the staged rows) is cancelled by the server,
    the transaction rolls back, exit 3 with one line."""
    _exec(
        target,
        "CREATE FUNCTION slow_ok(n integer) RETURNS boolean LANGUAGE sql AS "
        "$$ SELECT pg_sleep(0.4) IS NOT NULL $$",
        "ALTER TABLE quote_items ADD CONSTRAINT slow CHECK (slow_ok(qty)) NOT VALID",
    )
    before = _fingerprint(target)
    monkeypatch.setenv("RECOVERY_STATEMENT_TIMEOUT", "0.5")
    with pytest.raises(RecoveryError) as err:
        reimport_postgres(target, open_bundle(lite_bundle), MergeOptions())
    assert err.value.exit_code == 3 and "longer than 0.5 s" in str(err.value)
    assert _fingerprint(target) == before


def test_unique_clashes_of_inserts_and_updates_are_conflicts_not_failures(
    pg_url: str, tmp_path: Path
) -> None:
    """The old app took, after the restore, a unique value a bundle update sets and one a bundle
    insert carries (whose key it took too): the update is a ``constraint`` conflict and the
    insert a ``unique`` one (its remap settled as skipped); a NULL the target's NOT NULL column
    cannot hold keeps the target's value (``constraint``, kept_target); everything else lands."""
    from recovery.bundle.extract import extract

    ddl = 'CREATE TABLE "t" ("id" INTEGER PRIMARY KEY, "code" TEXT NOT NULL UNIQUE, "v" TEXT)'
    for name, extra in (
        ("backup", ""),
        (
            "live",
            (
                "UPDATE t SET code = 'c' WHERE id = 1; UPDATE t SET v = NULL WHERE id = 2; "
                "INSERT INTO t VALUES (3, 'd', 'new'), (4, 'f', 'ok');"
            ),
        ),
    ):
        with sqlite3.connect(tmp_path / f"{name}.db") as c:
            c.executescript(f"{ddl}; INSERT INTO t VALUES (1, 'a', 'x'), (2, 'b', 'y'); {extra}")
        c.close()
    extract(tmp_path / "backup.db", tmp_path / "live.db", tmp_path / "bundle")
    _exec(
        pg_url,
        'CREATE TABLE "t" ("id" serial PRIMARY KEY, "code" text NOT NULL UNIQUE, "v" text NOT NULL)',
        "INSERT INTO t (code, v) VALUES ('a', 'x'), ('b', 'y')",
        # the old app: row 2 takes 'c', a new row takes key 3 and another 'd'
        "UPDATE t SET code = 'c' WHERE id = 2",
        "INSERT INTO t (code, v) VALUES ('e', 'old app'), ('d', 'old app')",
    )
    o = reimport_postgres(pg_url, open_bundle(tmp_path / "bundle"), MergeOptions())
    got = sorted((c.kind.value, c.key, c.resolution.value) for c in o.conflicts)
    assert got == [
        ("constraint", (1,), "skipped"),
        ("constraint", (2,), "kept_target"),
        ("primary_key", (3,), "skipped"),
        ("primary_key", (4,), "remapped"),
        ("unique", (3,), "skipped"),
    ]
    rows = _q(pg_url, "SELECT code, v FROM t ORDER BY code")
    assert rows == [("a", "x"), ("c", "y"), ("d", "old app"), ("e", "old app"), ("f", "ok")]
    assert [(r.old_key, r.new_key) for r in o.remaps] == [(4, 6)]


def test_bundle_rows_sharing_a_value_the_old_schema_keeps_unique(
    pg_url: str, tmp_path: Path
) -> None:
    """The new release dropped a UNIQUE the old schema has, and users then typed the same code
    into several new rows: the first of each (by key) lands, every later one is a ``unique``
    conflict "taken by another bundle row"; one whose code the target holds is one "taken in the
    target". Found set-based (a window rank), not by a per-row scan of the staged rows."""
    from recovery.bundle.extract import extract

    rows = "INSERT INTO t VALUES (1, 'a'), (2, 'b')"
    with sqlite3.connect(tmp_path / "backup.db") as c:
        c.executescript(
            f'CREATE TABLE "t" ("id" INTEGER PRIMARY KEY, "code" TEXT NOT NULL UNIQUE); {rows}'
        )
    c.close()
    with sqlite3.connect(tmp_path / "live.db") as c:
        c.executescript(
            f'CREATE TABLE "t" ("id" INTEGER PRIMARY KEY, "code" TEXT NOT NULL); {rows}; '
            "INSERT INTO t VALUES (3, 'd'), (4, 'd'), (5, 'a'), (6, 'e'), (7, 'd'), (8, 'e')"
        )
    c.close()
    extract(tmp_path / "backup.db", tmp_path / "live.db", tmp_path / "bundle")
    _exec(
        pg_url,
        'CREATE TABLE "t" ("id" integer PRIMARY KEY, "code" text NOT NULL UNIQUE)',
        "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    )
    o = reimport_postgres(pg_url, open_bundle(tmp_path / "bundle"), MergeOptions())
    got = sorted((c.kind.value, c.key, c.resolution.value, c.detail) for c in o.conflicts)
    bundle, target = "(code) is taken by another bundle row", "(code) is taken in the target"
    assert got == [
        ("unique", (4,), "skipped", bundle),
        ("unique", (5,), "skipped", target),
        ("unique", (7,), "skipped", bundle),
        ("unique", (8,), "skipped", bundle),
    ]
    assert _q(pg_url, "SELECT id, code FROM t ORDER BY id") == [
        (1, "a"),
        (2, "b"),
        (3, "d"),
        (6, "e"),
    ]


def test_a_row_already_in_the_target_is_a_no_op_and_its_children_still_land(
    target: str, lite_bundle: Path
) -> None:
    """A bundle row the target already holds as the very same record (e.g. typed in again by
    hand) is not a conflict: it is counted as already present, and the rows that reference it
    are carried."""
    b = open_bundle(lite_bundle)
    lite = sqlite3.connect(b.rows_db)
    cols = [
        "id",
        "quote_number",
        "customer_name",
        "status",
        "created_at",
        "updated_at",
        "created_by",
    ]
    row = lite.execute(
        f"SELECT {', '.join(cols)} FROM quotes WHERE _recovery_kind = 'inserted' ORDER BY id"
    ).fetchone()
    items = lite.execute(
        "SELECT count(*) FROM quote_items WHERE quote_id = ? AND _recovery_kind = 'inserted'",
        (row[0],),
    ).fetchone()[0]
    assert items > 0
    with connect(make_url(target), "test") as c:
        c.execute(
            "INSERT INTO quotes (id, quote_number, customer, status, created_at, updated_at, "
            "created_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            row,
        )
    o = reimport_postgres(target, b, MergeOptions())
    assert not o.conflicts and not o.skipped_rows
    assert o.tables["quotes"].already_present == 1
    assert (
        _q(target, f"SELECT count(*) FROM quote_items WHERE quote_id = {int(row[0])}")[0][0]
        == items
    )


def test_apply_deletes_never_fires_a_cascade(target: str, lite_bundle: Path) -> None:
    """--apply-deletes deletes the rows deleted after the deploy that are unchanged and that no
    row references; a quote the old app gave a new item since stays (its ON DELETE CASCADE items
    would otherwise go with it), and so does the item."""
    b = open_bundle(lite_bundle)
    base = sqlite3.connect(b.base_db)
    (quote,) = base.execute("SELECT id FROM quotes WHERE _recovery_kind = 'deleted'").fetchone()
    deleted_items = [
        r[0] for r in base.execute("SELECT id FROM quote_items WHERE _recovery_kind = 'deleted'")
    ]
    _exec(
        target,
        "INSERT INTO quote_items (quote_id, part_id, qty, unit_price) "
        f"VALUES ({int(quote)}, 1, 7, 1.5)",
    )
    before = _q(target, f"SELECT count(*) FROM quote_items WHERE quote_id = {int(quote)}")[0][0]
    o = reimport_postgres(target, b, MergeOptions(apply_deletes=True))
    assert _q(target, f"SELECT count(*) FROM quotes WHERE id = {int(quote)}")[0][0] == 1
    assert o.tables["quotes"].deleted == 0
    left = _q(target, f"SELECT count(*) FROM quote_items WHERE quote_id = {int(quote)}")[0][0]
    gone = [
        i for i in deleted_items if not _q(target, f"SELECT 1 FROM quote_items WHERE id = {int(i)}")
    ]
    assert o.tables["quote_items"].deleted == len(gone) > 0
    assert left == before - sum(1 for i in gone if i in _items_of(b, quote))
    assert (
        _q(target, "SELECT count(*) FROM quote_items WHERE qty = 7 AND unit_price = 1.5")[0][0] == 1
    )


def _items_of(b: Any, quote: int) -> set[int]:
    base = sqlite3.connect(b.base_db)
    return {r[0] for r in base.execute("SELECT id FROM quote_items WHERE quote_id = ?", (quote,))}


OLD_APP_PARTS = "".join(
    "INSERT INTO parts (part_number, name, material_id, price, created_at, updated_at, "
    f"created_by) VALUES ('OLD-{i}', 'old app part', 1, 1.5, '2026-11-21 09:00:00', "
    "'2026-11-21 09:00:00', 1);\n"
    for i in range(20)
)


def test_relink_asks_the_server_a_bounded_number_of_times_and_writes_what_sqlite_does(
    target: str,
    lite_world: Path,
    lite_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relink's plan asks the server its per-record questions (each record by key, each
    linked row by key and unique values) in batched statements, and writes its fixes with one
    UPDATE per column: the statements sent do not grow with the records (here a few dozen
    records and links; at 100k parts 69 statements instead of 8,903, bench/RESULTS.md). The
    files table ends exactly as the SQLite relink of the same bundle leaves it."""
    from recovery.files.pgrelink import relink_postgres
    from recovery.files.relink import relink
    from recovery.pipeline import reimport

    b = open_bundle(lite_bundle)
    lite_db = tmp_path / "gestima.db"
    shutil.copyfile(lite_world / "gestima.db.bak.20261120_140000", lite_db)
    with sqlite3.connect(lite_db) as c:  # the old app's new parts take the bundle's part keys
        c.executescript(OLD_APP_PARTS)
    c.close()
    _exec(target, *OLD_APP_PARTS.split(";\n")[:-1])
    o_lite = reimport(b, lite_db, tmp_path / "lite-run").outcome
    assert o_lite is not None
    o = reimport_postgres(target, b, MergeOptions())
    unlink = "UPDATE file_records SET entity_type = 'quote', entity_id = 0 WHERE id <= 12"
    with sqlite3.connect(lite_db) as c:  # links the relink must set again from parts.file_id
        c.execute(unlink)
    c.close()
    _exec(target, unlink)
    lite_up = shutil.copytree(lite_world / "uploads", tmp_path / "up-lite")
    lite_r = relink(b, lite_db, lite_up, remaps=o_lite.remaps)

    sent: list[str] = []
    for cls in (psycopg.Cursor, psycopg.Connection):
        real = cls.execute

        def counting(self: Any, query: Any, *a: Any, _real: Any = real, **k: Any) -> Any:
            sent.append(str(query))
            return _real(self, query, *a, **k)

        monkeypatch.setattr(cls, "execute", counting)
    up = shutil.copytree(lite_world / "uploads", tmp_path / "up-pg")
    pg_r = relink_postgres(b, target, up, remaps=o.remaps)
    monkeypatch.undo()

    records = pg_r["counts"]["relinked"] + pg_r["counts"]["restored_from_bundle"]
    assert records >= 3 and pg_r["counts"]["links_fixed"] >= 6, pg_r["counts"]
    batch = "UNNEST(CAST(%s AS TEXT[])"
    one_by_one = [s for s in sent if "%s" in s and batch not in s and "pg_catalog" not in s]
    assert one_by_one == [], sorted({x[:90] for x in one_by_one})
    batched = [s for s in sent if batch in s]
    assert 3 <= len(batched) <= 12, batched  # one per question shape and per UPDATEd column
    assert pg_r["links_fixed"] == lite_r["links_fixed"]
    cols = ["id", "path", "sha256", "entity_type", "entity_id"]
    assert _table_rows(target, "file_records", cols) == _lite_rows(lite_db, "file_records", cols)
