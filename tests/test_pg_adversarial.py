"""Adversarial cases for ``recovery rollback`` / ``recovery undo`` on a real PostgreSQL server:
the ways production differs from the trust-authenticated test cluster. Fixtures and helpers are
those of :mod:`tests.test_pg_rollback` (a sample world of 60 parts in a template database, each
test rolling back its own hostile-named copy)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from recovery.engine.postgres import connect, drop_database_sql, run
from recovery.errors import RecoveryError
from tests.pgcluster import password_checked_role
from tests.test_pg_rollback import (  # noqa: F401
    _alembic_ini,
    _app_fingerprint,
    _databases,
    _dump,
    _revision,
    _rollback,
    _url,
    cli,
    live,
    pg_template,
)


@pytest.fixture
def password_role(pg_server: str) -> Iterator[tuple[str, str]]:
    """(role, password): a superuser role the server authenticates by password (scram), through
    a ``pg_hba.conf`` line for that role alone put first and taken out after the test."""
    password = f"s3cr3t-{uuid.uuid4().hex}"
    with password_checked_role(
        pg_server,
        "recovery_pw_",
        password,
        lambda role: f"local all {role} scram-sha-256\nhost all {role} all scram-sha-256\n",
        superuser=True,
    ) as role:
        yield role, password


def test_a_password_in_the_url_is_never_written_and_undo_reaches_the_server(
    pg_server: str,
    password_role: tuple[str, str],  # first: its role is dropped after the databases it made
    pg_template: tuple[Path, str],  # noqa: F811
    live: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The journal keeps the URL without its password (``***``); ``recovery undo RUN`` must still
    reach a server that checks passwords, taking it from libpq's own places (``PGPASSWORD``,
    ``~/.pgpass``), and no file the run writes holds the password."""
    role, password = password_role
    url = make_url(live).set(username=role, password=password).render_as_string(False)
    with pytest.raises(RecoveryError, match="password"):  # the rule bites: a wrong one is refused
        connect(make_url(url).set(password="x"), "live").close()
    dry = _rollback(url, pg_template[0], tmp_path / "dry", "--dry-run")
    assert dry.returncode in (0, 1), dry.stderr
    r = _rollback(url, pg_template[0], tmp_path / "run")
    assert r.returncode in (0, 1), r.stderr
    assert password not in r.stdout + r.stderr + dry.stdout + dry.stderr
    for f in [*(tmp_path / "run").rglob("*"), *(tmp_path / "dry").rglob("*")]:
        if f.is_file():
            assert password.encode() not in f.read_bytes(), f
    assert _revision(live) == "aa001_add_drawing_number_drop_drawings"
    # a process of its own: nothing the rollback left in this one can lend it the password
    u = cli("undo", str(tmp_path / "run"), "--yes", env={"PGPASSWORD": password}, process=True)
    assert u.returncode == 0, u.stderr
    assert password not in u.stdout + u.stderr
    assert _revision(live) == "bb006_drop_parts_notes"
    steps = json.loads((tmp_path / "run" / "journal.json").read_text())["steps"]
    assert steps["undo"]["state"] == "done"


def test_a_dump_of_another_installation_is_refused_and_nothing_changes(
    pg_server: str,
    pg_template: tuple[Path, str],  # noqa: F811
    live: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The same application's dump from another installation (the sample world of another seed:
    same tables and revisions, other rows) would swap another installation's data in: refused as
    the SQLite rollback refuses it (exit 2, "another database"), the live database unchanged, no
    staged or scratch database left; ``--same-installation`` is the operator's way past."""
    other = f"gestima_other_{uuid.uuid4().hex[:8]}"
    world = tmp_path / "other"
    made = cli("sample", str(world), "--url", _url(pg_server, other), "--parts", "60",
               "--seed", "7", "--quiet")  # fmt: skip
    assert made.returncode == 0, made.stderr
    try:
        before = _app_fingerprint(live)
        scratch = _databases(pg_server, "recovery\\_%")
        dry = _rollback(live, world, tmp_path / "dry", "--alembic-ini", _alembic_ini(),
                        "--trust-mapping", "--dry-run")  # fmt: skip
        assert dry.returncode == 2 and "another database" in dry.stderr, dry.stdout + dry.stderr
        r = _rollback(
            live, world, tmp_path / "run", "--alembic-ini", _alembic_ini(), "--trust-mapping"
        )
        assert r.returncode == 2, r.stdout + r.stderr
        assert "another database" in r.stderr and "Traceback" not in r.stderr
        assert _app_fingerprint(live) == before
        assert _revision(live) == "bb006_drop_parts_notes"
        assert _databases(pg_server, "recovery\\_%") <= scratch
        name = str(make_url(live).database)
        assert _databases(pg_server, f"{name}%") == {name}
        vouched = _rollback(live, world, tmp_path / "run2", "--alembic-ini", _alembic_ini(),
                            "--trust-mapping", "--same-installation")  # fmt: skip
        assert vouched.returncode == 1, vouched.stderr
    finally:
        with connect(make_url(pg_server), "server") as a:
            run(a, drop_database_sql(other))


def _sequences(url: str) -> dict[str, tuple[int, int]]:
    """{table.column: (the next value the app draws without consuming it, the column's max)} for
    every serial/identity column."""
    out: dict[str, tuple[int, int]] = {}
    with connect(make_url(url), "db") as c:
        owned = run(
            c,
            "SELECT t.relname, a.attname, s.last_value, s.start_value, s.increment_by "
            "FROM pg_catalog.pg_depend AS d "
            "JOIN pg_catalog.pg_class AS sc ON sc.oid = d.objid AND sc.relkind = 'S' "
            "JOIN pg_catalog.pg_sequences AS s ON s.sequencename = sc.relname "
            "JOIN pg_catalog.pg_class AS t ON t.oid = d.refobjid "
            "JOIN pg_catalog.pg_attribute AS a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid "
            "WHERE d.deptype IN ('a', 'i')",
        ).fetchall()
        for table, column, last, start, step in owned:
            top = run(c, f'SELECT coalesce(max("{column}"), 0) FROM "{table}"').fetchone()[0]
            nxt = int(start) if last is None else int(last) + int(step)
            out[f"{table}.{column}"] = (nxt, int(top))
    return out


def test_after_the_rollback_the_app_draws_no_id_in_use_nor_one_the_failed_release_drew(
    pg_server: str,
    pg_template: tuple[Path, str],  # noqa: F811
    live: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Every serial/identity column of the rolled-back database: its next value is above every
    key it holds and above every key the failed release had drawn (the safety database's next
    value): an id the failed release handed out (in a URL, an e-mail, a log) never names another
    row after the rollback."""
    with connect(make_url(live), "live") as c:  # ids drawn by inserts that were rolled back
        for _ in range(5):
            run(c, "SELECT nextval(pg_get_serial_sequence('parts', 'id'))")
    failed = _sequences(live)
    assert failed["parts.id"][0] > failed["parts.id"][1] + 5
    r = _rollback(live, pg_template[0], tmp_path / "run")
    assert r.returncode in (0, 1), r.stderr
    after = _sequences(live)
    for col, (nxt, top) in after.items():
        assert nxt > top, (col, nxt, top)
        if col in failed:
            assert nxt >= failed[col][0], (col, nxt, failed[col])


def _allows_connections(server: str, name: str) -> bool:
    with connect(make_url(server), "server") as a:
        q = "SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = %s"
        return bool(run(a, q, (name,)).fetchone()[0])


def test_an_undo_killed_inside_its_swap_is_finished_by_running_it_again(
    pg_server: str,
    pg_template: tuple[Path, str],  # noqa: F811
    live: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """SIGKILL with new connections to the live database refused and the renaming transaction
    not begun: the app must not be left locked out, and the same ``recovery undo`` finishes."""
    name = str(make_url(live).database)
    r = _rollback(live, pg_template[0], tmp_path / "run")
    assert r.returncode in (0, 1), r.stderr
    killed = cli(
        "undo", str(tmp_path / "run"), "--yes", env={"RECOVERY_TEST_KILL_AT_STEP": "undo:blocked"}
    )
    assert killed.returncode == -9, killed.stderr
    assert not _allows_connections(pg_server, name)  # killed inside the window
    u = cli("undo", str(tmp_path / "run"), "--yes")
    assert u.returncode == 0, u.stderr
    assert _allows_connections(pg_server, name)
    assert _revision(live) == "bb006_drop_parts_notes"
    kept = json.loads((tmp_path / "run" / "journal.json").read_text())["steps"]["undo"]["kept"]
    assert _allows_connections(pg_server, kept)


@pytest.mark.parametrize("damage", ["truncated", "garbage after the magic", "plain SQL"])
def test_a_damaged_dump_is_refused_in_one_line_and_leaves_nothing_on_the_server(
    pg_server: str,
    pg_template: tuple[Path, str],  # noqa: F811
    live: str,  # noqa: F811
    tmp_path: Path,
    damage: str,
) -> None:
    data = _dump(pg_template[0]).read_bytes()
    bad = {
        "truncated": data[: len(data) // 2],
        "garbage after the magic": b"PGDMP" + b"\x00garbage" * 1000,
        "plain SQL": b"-- PostgreSQL database dump\nCREATE TABLE t (id int);\n",
    }[damage]
    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"backup": "bad.dump"}))
    (world / "bad.dump").write_bytes(bad)
    before = _app_fingerprint(live)
    theirs = _databases(pg_server, "recovery\\_%")
    r = _rollback(live, world, tmp_path / "run")
    assert r.returncode in (2, 3), r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _app_fingerprint(live) == before
    assert _databases(pg_server, "recovery\\_%") <= theirs
    name = str(make_url(live).database)
    assert _databases(pg_server, f"{name}%") == {name}
    assert _allows_connections(pg_server, name)


MOOD = '"Mood ""x"""'
HOSTILE_SCHEMA = (
    f"CREATE TYPE {MOOD} AS ENUM ('ok', 'sad ''one''', 'é')",
    (
        'CREATE TABLE "Ord ers" ("ID" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, '
        '"select" text NOT NULL, amount numeric(30, 10), at timestamptz, doc jsonb, tags int[], '
        f"blob bytea, uid uuid, mood {MOOD})"
    ),
    (
        'CREATE TABLE "line Items" (id serial PRIMARY KEY, "order" bigint NOT NULL '
        'REFERENCES "Ord ers" ("ID") ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED, qty int NOT NULL)'
    ),
    "CREATE TABLE audit (id serial PRIMARY KEY, what text NOT NULL)",
    (
        "CREATE FUNCTION log_order() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO audit (what) VALUES ('order ' || NEW.\"ID\"); RETURN NEW; END $$"
    ),
    'CREATE TRIGGER "On Insert" AFTER INSERT ON "Ord ers" FOR EACH ROW EXECUTE FUNCTION log_order()',
)

ORDER = (
    'INSERT INTO "Ord ers" ("select", amount, at, doc, tags, blob, uid, mood) VALUES '
    '(%s, %s, %s, %s, %s, %s, %s, %s) RETURNING "ID"'
)


def _texts(url: str, table: str) -> list[tuple[str, ...]]:
    with connect(make_url(url), "db") as c:
        return [
            tuple(r)
            for r in c.execute(
                f'SELECT CAST(t AS TEXT) FROM "{table}" AS t ORDER BY CAST(t AS TEXT)'
            ).fetchall()
        ]


def test_identity_always_deferrable_cascade_trigger_enum_and_every_type_survive_the_rollback(
    pg_server: str, pg_url: str, tmp_path: Path
) -> None:
    """Hostile table/column/enum names, an identity GENERATED ALWAYS key, a deferrable ON DELETE
    CASCADE foreign key and an audit trigger: the post-deploy rows (numeric, timestamptz, jsonb,
    int[], bytea, uuid, enum) come back byte-identical in their text form, the trigger is enabled
    again and fired no second time, and the identity's next value is above every key."""
    from decimal import Decimal

    from psycopg.types.json import Jsonb

    from recovery.engine.postgres import dump_to, find_tool, server_version

    with connect(make_url(pg_url), "db") as c:
        for stmt in HOSTILE_SCHEMA:
            c.execute(stmt)
        c.execute(ORDER, ("before", Decimal("1.5"), "2026-01-01T00:00:00Z", Jsonb({"a": 1}),
                       [1, 2], b"\x00", "00000000-0000-0000-0000-000000000001", "ok"))  # fmt: skip
        major, _ = server_version(c)
    dump = tmp_path / "backup.dump"
    dump_to(make_url(pg_url), dump, find_tool("pg_dump", major))
    with connect(make_url(pg_url), "db") as c:  # the failed release's users at work
        new = c.execute(ORDER, ("new \"one\"; x", Decimal("12345678901234567890.0123456789"),
                             "2026-11-21T10:00:00.123456+05:30", Jsonb({"k": [1, None, "é"]}),
                             [[1, None], [3, 4]], b"\x00\xff", "6f1c0b1e-0000-4000-8000-0000000000ff",
                             "sad 'one'")).fetchone()[0]  # fmt: skip
        c.execute('INSERT INTO "line Items" ("order", qty) VALUES (%s, 2), (1, 5)', (new,))
        c.execute("""UPDATE "Ord ers" SET mood = 'é', amount = 'NaN' WHERE "ID" = 1""")
    want = {t: _texts(pg_url, t) for t in ("Ord ers", "line Items", "audit")}
    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"backup": str(dump)}))
    r = _rollback(pg_url, world, tmp_path / "run")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    got = {t: _texts(pg_url, t) for t in ("Ord ers", "line Items", "audit")}
    assert got == want
    with connect(make_url(pg_url), "db") as c:
        enabled = c.execute(
            "SELECT tgenabled FROM pg_catalog.pg_trigger WHERE tgname = 'On Insert'"
        ).fetchone()[0]
        assert enabled == "O"
        drawn = c.execute(ORDER, ("after", None, None, None, None, None, None, None)).fetchone()[0]
        assert drawn > new
        c.execute('INSERT INTO "line Items" ("order", qty) VALUES (%s, 1)', (drawn,))


def test_a_63_byte_multibyte_name_rolls_back_and_undoes(
    pg_server: str,
    pg_template: tuple[Path, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """A live database name at PostgreSQL's limit, in two-byte characters: the safety and undone
    names are cut at a character boundary, differ from each other and from the live name, and
    the rollback and its undo both go through."""
    from recovery.engine.postgres import create_database_sql

    name = uuid.uuid4().hex[:7] + "Ü" * 28  # 7 + 56 = 63 bytes
    assert len(name.encode()) == 63
    prefix = name[:20]
    with connect(make_url(pg_server), "server") as a:
        run(a, create_database_sql(name, template=pg_template[1]))
    url = _url(pg_server, name)
    try:
        r = _rollback(url, pg_template[0], tmp_path / "run")
        assert r.returncode in (0, 1), r.stderr
        assert _revision(url) == "aa001_add_drawing_number_drop_drawings"
        u = cli("undo", str(tmp_path / "run"), "--yes")
        assert u.returncode == 0, u.stderr
        assert _revision(url) == "bb006_drop_parts_notes"
        steps = json.loads((tmp_path / "run" / "journal.json").read_text())["steps"]
        kept = steps["undo"]["kept"]
        assert len(kept.encode()) <= 63 and kept != name
        assert _databases(pg_server, f"{prefix}%") == {name, kept}
    finally:
        with connect(make_url(pg_server), "server") as a:
            for db in _databases(pg_server, f"{prefix}%"):
                run(a, drop_database_sql(db))


def test_a_commit_after_the_extract_is_carried_by_the_resumed_run_never_lost(
    pg_server: str,
    pg_template: tuple[Path, str],  # noqa: F811
    live: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A run killed with the re-import written into the staged database, then a user's commit on
    the live database (the extract did not see it): the resumed run must not swap in the staged
    database that lacks it; the rolled-back database holds the late edit."""
    killed = _rollback(
        live, pg_template[0], tmp_path / "run", env={"RECOVERY_TEST_KILL_AT_STEP": "reimport:done"}
    )
    assert killed.returncode == -9, killed.stderr
    with connect(make_url(live), "live") as c:
        pid, late = c.execute(
            "UPDATE parts SET name = name || ' (late edit)' "
            "WHERE id = (SELECT max(id) FROM parts) RETURNING id, name"
        ).fetchone()
    r = _rollback(live, pg_template[0], tmp_path / "run")
    assert r.returncode in (0, 1), r.stderr
    with connect(make_url(live), "live") as c:
        assert c.execute("SELECT name FROM parts WHERE id = %s", (pid,)).fetchone()[0] == late
