"""``extract_postgres`` on a real server (issue 19): the bundle of the PostgreSQL sample world is
the SQLite world's bundle row for row; every type round-trips exactly through the bundle's text;
hostile identifiers; neither source is written.

The server is ``RECOVERY_TEST_PG_URL`` or the throwaway cluster of the ``pg_server`` fixture; the
worlds are small (--parts 60): the PostgreSQL one is conftest's session-wide ``pg_world``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from recovery.bundle.extract import ExtractResult, extract, label_parent
from recovery.bundle.pgextract import extract_postgres
from recovery.bundle.store import FILLED_TABLE, LOST_TABLE, open_bundle
from recovery.engine.postgres import (
    PostgresEngine,
    connect,
    create_database_sql,
    drop_database_sql,
    run,
)
from recovery.compare.pgdiff import reflect_pg
from recovery.errors import RecoveryError
from recovery.model.labels import label_column
from tests.clirun import invoke
from tests.pgcluster import PgWorld

PARTS, SEED = 60, 42


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (:mod:`tests.clirun`)."""
    return invoke(*args)


def _url(server: str, database: str) -> str:
    return make_url(server).set(database=database).render_as_string(False)


def _drop(server: str, *urls: str) -> None:
    with connect(make_url(server), "server") as admin:
        for url in urls:
            run(admin, drop_database_sql(str(make_url(url).database)))


@pytest.fixture(scope="module")
def worlds(pg_world: PgWorld, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """(PostgreSQL world folder, its live URL, SQLite world folder), same parts and seed; the
    PostgreSQL world is conftest's session-wide ``pg_world`` (read only here)."""
    from recovery.sample import generate

    lite = generate(tmp_path_factory.mktemp("liteworld") / "world", parts=PARTS, seed=SEED)
    return pg_world.folder, pg_world.live_url, lite


@pytest.fixture(scope="module")
def bundles(
    worlds: tuple[Path, str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExtractResult, ExtractResult]:
    """(PostgreSQL bundle, SQLite bundle) of the two worlds, uploads included."""
    out, url, lite = worlds
    dump = out / json.loads((out / "world.json").read_text())["backup"]
    folder = tmp_path_factory.mktemp("bundles")
    before = PostgresEngine(url).fingerprint()
    pg = extract_postgres(str(dump), url, folder / "pg", uploads=out / "uploads")
    assert PostgresEngine(url).fingerprint() == before  # the live database was only read
    sq = extract(
        lite / "gestima.db.bak.20261120_140000",
        lite / "gestima.db",
        folder / "lite",
        uploads=lite / "uploads",
    )
    return pg, sq


def _norm(v: Any) -> Any:
    """A value modulo its text form: numbers by value (SQLite 0.0 / PostgreSQL '0'), booleans as
    numbers (SQLite 1 / PostgreSQL 'true'), text as text, NULL as None."""
    if v is None or isinstance(v, (int, float)):
        return None if v is None else float(v)
    if v in ("true", "false"):
        return 1.0 if v == "true" else 0.0
    try:
        return float(v)
    except ValueError:
        return str(v)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_rows(db: Path, table: str, skip: set[str] = frozenset()) -> list[tuple[Any, ...]]:  # type: ignore[assignment]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cur = conn.execute(f"SELECT * FROM {_q(table)}")
        names = [d[0] for d in cur.description]
        rows = [
            tuple(_norm(v) for n, v in zip(names, r, strict=True) if n not in skip) for r in cur
        ]
        return sorted(rows, key=repr)
    finally:
        conn.close()


def _tables(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_the_postgres_bundle_carries_the_sqlite_bundles_rows(
    bundles: tuple[ExtractResult, ExtractResult],
) -> None:
    pg, sq = bundles
    a, b = pg.bundle, sq.bundle
    assert a.manifest["engine"] == "postgresql" and "engine" not in b.manifest
    assert a.manifest["counts"] == b.manifest["counts"]
    assert pg.summary()["lost"] == sq.summary()["lost"] > 0
    assert pg.summary()["filled_by_upgrade"] == sq.summary()["filled_by_upgrade"]
    assert a.manifest["mapping"] == b.manifest["mapping"]
    assert a.manifest["planning_errors"] == b.manifest["planning_errors"] == []
    for db in ("rows.db", "base.db"):
        assert _tables(a.path / db) == _tables(b.path / db), db
        for t in _tables(b.path / db):
            # the lost list's label is the first labelled parent's: engines list foreign keys in
            # different orders, so it is left out (every other column compared)
            skip = {"label"} if t in (LOST_TABLE, FILLED_TABLE) else set()
            assert _table_rows(a.path / db, t, skip) == _table_rows(b.path / db, t, skip), (db, t)
    assert sorted(a.manifest["pg_types"]) == sorted(a.manifest["counts"])
    assert a.manifest["pg_types"]["parts"]["id"] == "integer"
    assert a.manifest["pg_types"]["materials"]["density"] == "double precision"
    assert {e["path"] for e in a.manifest["files"]["records"]} == {
        e["path"] for e in b.manifest["files"]["records"]
    }
    assert sorted(p.relative_to(a.path) for p in (a.path / "files").rglob("*")) == sorted(
        p.relative_to(b.path) for p in (b.path / "files").rglob("*")
    )
    open_bundle(a.path)  # every hash, name and table checked as for any bundle


def test_the_lost_lists_labels_are_the_live_rows_labels(
    worlds: tuple[Path, str, Path], bundles: tuple[ExtractResult, ExtractResult]
) -> None:
    """Each listed value's label (looked up in the workspace's local copy of the labelled parent)
    is the label the live database gives that row: its own label column, else its labelled
    parent's, joined here directly on the live server; NULL where the row has no parent."""
    _, url, _ = worlds
    live = PostgresEngine(url)
    schema = reflect_pg(live)
    listed = _raw(bundles[0].bundle.rows_db, LOST_TABLE)
    by_parent = 0
    with live.readonly("live") as conn:
        for name in sorted({r[0] for r in listed}):
            t = schema.tables[name]
            (k,) = t.key
            found = label_parent(t, schema)
            if found is None:
                own = label_column(t)
                assert own is not None, name
                q = f"SELECT CAST({_q(k)} AS text), CAST({_q(own)} AS text) FROM {_q(name)}"
            else:
                fk, parent, pcol = found
                q = (
                    f"SELECT CAST(t.{_q(k)} AS text), CAST(p.{_q(pcol)} AS text) FROM {_q(name)} "
                    f"AS t LEFT JOIN {_q(parent.name)} AS p "
                    f"ON p.{_q(fk.ref_columns[0])} = t.{_q(fk.columns[0])}"
                )
            expected = dict(conn.execute(q).fetchall())
            for row in (r for r in listed if r[0] == name):
                assert row[2] == expected[str(json.loads(row[1])[0])], row
                by_parent += found is not None and row[2] is not None
    assert by_parent > 0  # some labels did come from a parent row


def test_report_and_cli_extract_on_postgres(
    worlds: tuple[Path, str, Path],
    bundles: tuple[ExtractResult, ExtractResult],
    tmp_path: Path,
) -> None:
    out, url, _ = worlds
    pg, _ = bundles
    r = cli("report", str(pg.bundle.path))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr  # lost values: review
    dump = out / json.loads((out / "world.json").read_text())["backup"]
    r = cli("extract", str(dump), url, "--out", str(tmp_path / "b"), "--json")
    assert r.returncode == 1, r.stderr  # values cannot be carried: review, as on SQLite
    data = json.loads(r.stdout)
    assert data["counts"] == pg.bundle.manifest["counts"] and data["lost"] == pg.summary()["lost"]
    r = cli("extract", str(dump), url, "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "not empty" in r.stderr and "Traceback" not in r.stderr


TYPES_DDL = [
    'CREATE TYPE "Odd ""Mood""" AS ENUM (\'calm\', \'a "quoted" one\', \'with, comma\')',
    "CREATE DOMAIN positive AS integer CHECK (VALUE > 0)",
    (
        'CREATE TABLE "Order Lines" (id integer PRIMARY KEY, "Amount" numeric(30, 12), '
        '"when" timestamptz, "select" jsonb, ints integer[], mood "Odd ""Mood""", '
        'moods "Odd ""Mood"""[], blob bytea, "U U" uuid, qty positive, big numeric, t text)'
    ),
]
ROWS = [
    (
        "(1, 1.5, '2026-11-20 14:00:00+00', '{\"a\": 1}', '{1,2}', 'calm', '{calm}', "
        "'\\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1, 'NaN', 'x')"
    ),
    (
        "(2, -0.000000000001, '-infinity', '[1, \"two\", null]', '{}', 'with, comma', "
        "'{\"a \\\"quoted\\\" one\",NULL}', '\\x', '00000000-0000-0000-0000-000000000000', 2, "
        "123456789012345678901234567890.123456789, E'tab\\there')"
    ),
    "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
]
CHANGES = [
    (
        'UPDATE "Order Lines" SET "Amount" = 1.500000000000, "when" = \'2026-11-20 15:30:00.123456+05:30\','
        ' "select" = \'{"a": 1, "b": [true, 1.0e3]}\', ints = \'{{1,2},{3,4}}\', mood = \'a "quoted" one\','
        " blob = '\\x000102', qty = 5 WHERE id = 1"
    ),
    "UPDATE \"Order Lines\" SET big = 'Infinity', t = 'Ünïcode ☃ \"q\" \\\\ back' WHERE id = 2",
    'DELETE FROM "Order Lines" WHERE id = 3',
    (
        "INSERT INTO \"Order Lines\" VALUES (4, 0.000000000001, '2000-01-01 00:00:00+00', '\"just text\"',"
        " '{-2147483648,NULL}', 'calm', '{}', '\\xdeadbeef', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 7,"
        " '-0.0', '')"
    ),
]


@pytest.fixture
def typed_pair(pg_server: str) -> Iterator[tuple[str, str]]:
    """(backup URL, live URL): a table of numeric, timestamptz, jsonb, int[], enum, enum[],
    bytea, uuid and domain columns with a hostile enum name; the live copy (made with
    ``CREATE DATABASE … TEMPLATE``, in another time zone) changed after the "deploy"."""
    tag = uuid.uuid4().hex[:6]
    old, new = _url(pg_server, f"types backup {tag}"), _url(pg_server, f'Types "Live" {tag}')
    with connect(make_url(pg_server), "server") as admin:
        run(admin, create_database_sql(str(make_url(old).database)))
    with connect(make_url(old), "database") as conn:
        for ddl in TYPES_DDL:
            conn.execute(ddl)
        conn.execute('INSERT INTO "Order Lines" VALUES ' + ", ".join(ROWS))
    with connect(make_url(pg_server), "server") as admin:
        run(
            admin,
            create_database_sql(str(make_url(new).database), str(make_url(old).database)),
        )
    with connect(make_url(new), "database") as conn:
        conn.execute("SET TIME ZONE 'Asia/Kathmandu'")
        for stmt in CHANGES:
            conn.execute(stmt)
    try:
        yield old, new
    finally:
        _drop(pg_server, old, new)


def _same_in_server(
    url: str, table: str, key: str, types: dict[str, str], rows: list[tuple[Any, ...]]
) -> None:
    """Each bundle row, cast back with its recorded type, is the server's row: the same value
    (``IS NOT DISTINCT FROM``) and the same text output (scale, precision, order, offset)."""
    cols = list(types)
    with connect(make_url(url), "database") as conn:
        for row in rows:
            values = dict(zip([*cols, "_recovery_kind"], row, strict=True))
            for c in cols:
                q = (
                    f'SELECT CAST(CAST(%s AS text) AS {types[c]}) IS NOT DISTINCT FROM t."{c}", '
                    f"CAST(CAST(CAST(%s AS text) AS {types[c]}) AS text) IS NOT DISTINCT FROM "
                    f'CAST(t."{c}" AS text) FROM "{table}" AS t WHERE t."{key}" = %s'
                )
                same, same_text = conn.execute(
                    q, (values[c], values[c], int(values[key]))
                ).fetchone()  # type: ignore[misc]
                assert same and same_text, (c, values[c])


def test_every_type_round_trips_exactly(typed_pair: tuple[str, str], tmp_path: Path) -> None:
    old, new = typed_pair
    before = (PostgresEngine(old).fingerprint(), PostgresEngine(new).fingerprint())
    res = extract_postgres(old, new, tmp_path / "b")  # the backup given as a database URL
    assert (PostgresEngine(old).fingerprint(), PostgresEngine(new).fingerprint()) == before
    m = res.bundle.manifest
    t = "Order Lines"
    assert {k: v for k, v in m["counts"][t].items() if k != "lost"} == {
        "inserted": 1,
        "updated": 2,
        "deleted": 1,
        "status": "compared",
    }
    types = m["pg_types"][t]
    assert types["Amount"] == "numeric(30,12)" and types["when"] == "timestamp with time zone"
    assert types["mood"] == '"Odd ""Mood"""' and types["moods"] == '"Odd ""Mood"""[]'
    assert types["qty"] == "positive" and types["ints"] == "integer[]"
    rows = _raw(res.bundle.rows_db, t)
    assert sorted(int(r[0]) for r in rows) == [1, 2, 4]
    by_id = {int(r[0]): r for r in rows}
    assert by_id[1][3] == '{"a": 1, "b": [true, 1.0e3]}'.replace("1.0e3", "1000")  # jsonb's text
    assert by_id[1][7] == "\\x000102" and by_id[2][10] == "Infinity"
    assert by_id[1][1] == "1.500000000000"  # numeric keeps its scale
    _same_in_server(new, t, "id", types, rows)
    base = _raw(res.bundle.base_db, t)
    assert sorted((int(r[0]), r[-1]) for r in base) == [
        (1, "updated"),
        (2, "updated"),
        (3, "deleted"),
    ]
    _same_in_server(old, t, "id", m["pg_types_base"][t], base)
    r = cli("diff", old, new, "--json")  # enum and domain columns compare in the workspace too
    assert r.returncode == 1, r.stderr
    c = json.loads(r.stdout)["tables"][t]
    assert (c["inserted"], c["updated"], c["deleted"]) == (1, 2, 1)


def _raw(db: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(f"SELECT * FROM {_q(table)}").fetchall()
        assert all(isinstance(v, (str, type(None))) for r in rows for v in r)  # text, NULL as NULL
        return rows
    finally:
        conn.close()


HOSTILE_TABLE = 'Odd "T" x'


def _hostile(server: str, name: str, stmts: list[str]) -> str:
    url = _url(server, name)
    with connect(make_url(server), "server") as admin:
        run(admin, create_database_sql(name))
    with connect(make_url(url), "database") as conn:
        conn.execute('CREATE TABLE "user" ("ID" integer PRIMARY KEY, "Full Name" text)')
        conn.execute(
            'CREATE TABLE "Odd ""T"" x" (id integer PRIMARY KEY, "Mixed Case" text, '
            '"we""ird" text, "select" int, "order" integer REFERENCES "user" ("ID"))'
        )
        for s in stmts:
            conn.execute(s)
    return url


def test_extract_with_hostile_names(pg_server: str, tmp_path: Path) -> None:
    """Quotes, spaces, mixed case and reserved words in database, table, column names; a
    new-only column that carries nothing back (lost) and a parent row brought by the closure."""
    tag = uuid.uuid4().hex[:6]
    base = [
        "INSERT INTO \"user\" VALUES (1, 'Ann'), (2, 'Bob')",
        (
            "INSERT INTO \"Odd \"\"T\"\" x\" VALUES (1, 'a', 'x', 1, 1), (2, 'b', 'y', 2, 1), "
            "(3, 'c', 'z', 3, 2)"
        ),
    ]
    old = _hostile(pg_server, f'Backup "{tag}" DB', base)
    new = _hostile(
        pg_server,
        f"Live Ω {tag}",
        [
            *base,
            'ALTER TABLE "Odd ""T"" x" ADD COLUMN "New ""Col""" text',
            "INSERT INTO \"user\" VALUES (3, 'Cy')",
            'UPDATE "Odd ""T"" x" SET "Mixed Case" = \'B\', "New ""Col""" = \'kept?\' WHERE id = 2',
            'DELETE FROM "Odd ""T"" x" WHERE id = 3',
            'INSERT INTO "Odd ""T"" x" VALUES (4, \'d\', \'w\', 4, 3, NULL)',
        ],
    )
    try:
        r = cli("extract", old, new, "--out", str(tmp_path / "b"), "--json")
        assert r.returncode == 1, r.stderr  # one value the old schema has no column for
        data = json.loads(r.stdout)
        t = data["counts"][HOSTILE_TABLE]
        assert (t["inserted"], t["updated"], t["deleted"], t["lost"]) == (1, 1, 1, 1)
        assert data["counts"]["user"]["inserted"] == 1  # the new parent of row 4
        b = open_bundle(tmp_path / "b")
        rows = {r[0]: r for r in _raw(b.rows_db, HOSTILE_TABLE)}
        assert rows["2"] == ("2", "B", "y", "2", "1", "kept?", "updated")
        assert rows["4"] == ("4", "d", "w", "4", "3", None, "inserted")
        (lost,) = _raw(b.rows_db, LOST_TABLE)
        assert lost[0] == HOSTILE_TABLE and lost[1] == "[2]" and lost[3:5] == ('New "Col"', "kept?")
        assert b.manifest["pg_types"][HOSTILE_TABLE]['we"ird'] == "text"
    finally:
        _drop(pg_server, old, new)


def test_refusals_are_one_line_and_leave_nothing(pg_server: str, tmp_path: Path) -> None:
    with pytest.raises(RecoveryError, match="cannot be opened"):
        extract_postgres(
            str(tmp_path / "x.dump"), "postgresql://nobody@127.0.0.1:1/g", tmp_path / "b"
        )
    live = _url(pg_server, "postgres")
    with pytest.raises(RecoveryError, match="not a pg_dump"):
        (tmp_path / "junk.dump").write_text("not a dump")
        extract_postgres(str(tmp_path / "junk.dump"), live, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".b.partial-*"))


GOOD_MAP = '[tables.quotes.columns]\ncustomer = "customer_name"\n'
BAD_MAP = "[tables.quotes.columns]\ncustomer = \"upper(customer_name) || 'x'\"\n"


def _diff(backup: str, db: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    from recovery import commands

    res = commands.diff(backup=backup, db=db, **kw)
    return res.exit_code, json.loads(json.dumps(res.diff.to_dict(), default=str))


def test_mapping_file_on_postgres_as_on_sqlite(
    worlds: tuple[Path, str, Path], tmp_path: Path
) -> None:
    """``diff --mapping`` and ``extract --mapping``: the same rules, verdicts and refusals on both
    engines (a rule the unchanged rows contradict: exit 2, one line, nothing written)."""
    out, url, lite = worlds
    dump = str(out / json.loads((out / "world.json").read_text())["backup"])
    lite_args = [str(lite / "gestima.db.bak.20261120_140000"), str(lite / "gestima.db")]
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(GOOD_MAP)
    bad.write_text(BAD_MAP)
    (c1, a), (c2, b) = _diff(dump, url, mapping=good), _diff(*lite_args, mapping=good)
    assert (c1, c2) == (1, 1) and a["mapping"] == b["mapping"] and a["totals"] == b["totals"]
    (rule,) = [c for c in a["mapping"]["quotes"]["columns"] if c["column"] == "customer"]
    assert rule["source"] == "user-mapping" and rule["verdict"] == "agrees"
    with pytest.raises(RecoveryError) as on_sqlite:
        _diff(*lite_args, mapping=bad)
    r = cli("diff", dump, url, "--mapping", str(bad), "--json")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert on_sqlite.value.message in r.stderr and "disagrees with the backup" in r.stderr
    with pytest.raises(RecoveryError, match="disagrees with the backup"):
        extract_postgres(dump, url, tmp_path / "b", mapping=bad)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.partial-*"))
    res = extract_postgres(dump, url, tmp_path / "g", mapping=good)
    assert res.bundle.manifest["mapping"] == a["mapping"]


ENV_PY = """
import json
import psycopg
import sqlalchemy as sa
from alembic import context

LIVE_URL = {live_url!r}
LIVE_DB = {live_db!r}
OUT = {out!r}
tries = {{}}


def attempt(name, fn):
    try:
        fn()
        tries[name] = "connected"
    except BaseException as exc:
        tries[name] = f"{{type(exc).__name__}}: {{exc}}"


def write_live(conn):
    conn.execute("INSERT INTO canary VALUES (1)")
    conn.commit()


U = sa.engine.make_url(LIVE_URL)
attempt("psycopg to live", lambda: write_live(psycopg.connect(host=U.host, port=U.port, user=U.username, dbname=U.database)))
attempt("sqlalchemy to live", lambda: sa.create_engine(LIVE_URL).connect())
attempt("the role to live", lambda: psycopg.connect(dbname=LIVE_DB))
attempt("a service", lambda: psycopg.connect(service="production"))
# below the guard: libpq itself, with the credentials the child was given
low = psycopg.pq.PGconn.connect(("dbname='" + LIVE_DB.replace("'", "\\\\'") + "'").encode())
tries["libpq to live"] = "connected" if low.status == psycopg.pq.ConnStatus.OK else str(low.get_error_message())
low.finish()
scratch = psycopg.pq.PGconn.connect(b"")
tries["libpq to scratch"] = "connected" if scratch.status == psycopg.pq.ConnStatus.OK else str(scratch.get_error_message())
scratch.finish()
with open(OUT, "w") as fh:
    json.dump(tries, fh)

engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""

REV1 = """revision = "r1"
down_revision = None
from alembic import op


def upgrade():
    op.execute("CREATE TABLE t (id integer PRIMARY KEY, a text)")


def downgrade():
    op.execute("DROP TABLE t")
"""

REV2 = """revision = "r2"
down_revision = "r1"
from alembic import op


def upgrade():
    op.execute("ALTER TABLE t ADD COLUMN b text")
    op.execute("UPDATE t SET b = 'mig-' || a")


def downgrade():
    op.execute("ALTER TABLE t DROP COLUMN b")
"""


def _app(folder: Path, live_url: str, out: Path) -> Path:
    """A small Alembic app whose env.py tries to reach the live database every way it can, then
    migrates the database its ini names; its ini names the live database."""
    (folder / "versions").mkdir(parents=True)
    (folder / "versions" / "r1.py").write_text(REV1)
    (folder / "versions" / "r2.py").write_text(REV2)
    live_db = str(make_url(live_url).database)
    (folder / "env.py").write_text(ENV_PY.format(live_url=live_url, live_db=live_db, out=str(out)))
    ini = folder / "alembic.ini"
    ini.write_text(
        f"[alembic]\nscript_location = %(here)s\nsqlalchemy.url = {live_url.replace('%', '%%')}\n"
    )
    return ini


@pytest.fixture
def migrated_pair(pg_server: str) -> Iterator[tuple[str, str]]:
    """(backup URL at r1, live URL at r2): the upgrade filled ``t.b`` from ``a``, then a user
    changed row 2's ``b``."""
    tag = uuid.uuid4().hex[:6]
    old, new = _url(pg_server, f"app backup {tag}"), _url(pg_server, f"app live {tag}")
    with connect(make_url(pg_server), "server") as admin:
        run(admin, create_database_sql(str(make_url(old).database)))
    with connect(make_url(old), "database") as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('r1')")
        conn.execute("CREATE TABLE t (id integer PRIMARY KEY, a text)")
        conn.execute("CREATE TABLE canary (x integer)")
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    with connect(make_url(pg_server), "server") as admin:
        run(admin, create_database_sql(str(make_url(new).database), str(make_url(old).database)))
    with connect(make_url(new), "database") as conn:
        conn.execute("ALTER TABLE t ADD COLUMN b text")
        conn.execute("UPDATE t SET b = 'mig-' || a")
        conn.execute("UPDATE alembic_version SET version_num = 'r2'")
        conn.execute("UPDATE t SET b = 'a user wrote this' WHERE id = 2")
    try:
        yield old, new
    finally:
        _drop(pg_server, old, new)


def test_app_migrations_reach_only_their_scratch_database(
    migrated_pair: tuple[str, str], tmp_path: Path, pg_server: str
) -> None:
    """--alembic-ini: the app's env.py runs in the sandbox child on a scratch copy of the backup
    as a role made for the run. Its attempts at the live database fail — by psycopg and
    SQLAlchemy with the live URL (refused in the child), and as the role, even through libpq
    itself below the guard (refused by the server) — while the scratch database works: the
    upgrade is replayed, so only the user's value is lost. The live database is unchanged, and
    the scratch databases and the role are gone afterwards."""
    old, new = migrated_pair
    out = tmp_path / "tries.json"
    ini = _app(tmp_path / "app", new, out)
    before = PostgresEngine(new).fingerprint()
    res = extract_postgres(old, new, tmp_path / "b", alembic_ini=ini)
    assert PostgresEngine(new).fingerprint() == before
    tries = json.loads(out.read_text())
    assert "refused by the recovery sandbox" in tries["psycopg to live"]
    assert "refused by the recovery sandbox" in tries["sqlalchemy to live"]
    assert "refused by the recovery sandbox" in tries["the role to live"]
    assert "refused by the recovery sandbox" in tries["a service"]
    assert (
        "recovery-sandbox-role-may-connect-to-its-scratch-database-only" in tries["libpq to live"]
    )
    assert tries["libpq to scratch"] == "connected"
    m = res.bundle.manifest
    assert m["upgrade_replayed"] is True
    assert m["counts"]["t"]["lost"] == 1 and res.summary()["filled_by_upgrade"] == 0
    (lost,) = _raw(res.bundle.rows_db, LOST_TABLE)
    assert lost[1] == "[2]" and lost[3:5] == ("b", "a user wrote this")
    with connect(make_url(pg_server), "server") as admin:
        left = admin.execute(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'recovery_sandbox_%'), "
            "(SELECT count(*) FROM pg_database WHERE datname LIKE 'recovery_scratch_replay_%')"
        ).fetchone()
    assert left == (0, 0)


def test_alembic_ini_on_postgres_gives_the_sqlite_rules_and_bundle(
    worlds: tuple[Path, str, Path], tmp_path: Path
) -> None:
    """The sample app's own migrations (upgrade replayed, downgrade followed for lineage), run in
    the sandbox on scratch copies: the same rules, lineage, counts and lost values as on SQLite,
    for ``extract`` and ``diff``."""
    from recovery.sample.app import app_dir

    out, url, lite = worlds
    ini = str(app_dir() / "alembic.ini")
    dump = str(out / json.loads((out / "world.json").read_text())["backup"])
    lite_args = [str(lite / "gestima.db.bak.20261120_140000"), str(lite / "gestima.db")]
    pg = extract_postgres(dump, url, tmp_path / "pg", alembic_ini=ini)
    sq = extract(*lite_args, tmp_path / "lite", alembic_ini=ini)
    a, b = pg.bundle.manifest, sq.bundle.manifest
    assert a["upgrade_replayed"] is b["upgrade_replayed"] is True
    assert a["lineage"]["rules"] == b["lineage"]["rules"] != {}
    assert a["lineage"]["failed"] == b["lineage"]["failed"] == []
    assert a["mapping"] == b["mapping"] and a["counts"] == b["counts"]
    assert pg.summary()["lost"] == sq.summary()["lost"]
    (c1, d1), (c2, d2) = _diff(dump, url, alembic_ini=ini), _diff(*lite_args, alembic_ini=ini)
    assert (c1, c2) == (1, 1)
    for key in ("tables", "schema", "mapping", "totals", "at_risk", "filled_by_upgrade"):
        assert d1[key] == d2[key], key
