"""The application's migration code runs in a sandboxed child (``recovery.migrate.sandbox``): hostile
``env.py`` files on copies of the sample app — one that opens the ini's ``sqlalchemy.url`` (the
LIVE db, as operators write it), one that opens ``$DATABASE_URL``, one that calls
``sqlite3.connect(<live>)`` itself, one that writes the live file below the guard — and a
migration whose downgrade raises. The live DB and the backup stay byte-identical (db and -wal),
the hostile attempts are refused inside the child, and every outcome says what happened."""

from __future__ import annotations

import hashlib
import json
from contextlib import closing
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recovery.errors import RecoveryError
from recovery.sample import app_dir
from recovery.migrate.sandbox import (
    MigrationFailed,
    ProtectedChanged,
    Sandbox,
    child_environment,
    write_ini_copy,
)
from tests.clirun import invoke

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "aa001_add_drawing_number_drop_drawings"
NEW_REV = "bb006_drop_parts_notes"
EXPECTED_RULES = {
    "parts": {"price": '"price_cents" / 100.0'},
    "quotes": {"customer": '"customer_name"'},
}
"""What the sample app's own downgrades say, read from the SQL they run."""

PASSED = 'passed = config.attributes.get("connection")'
URL_FROM_X = '    return config.get_main_option("sqlalchemy.url")'


def digests(*paths: Path) -> dict[str, str | None]:
    """sha256 of each file and of its -wal (None: absent)."""
    out: dict[str, str | None] = {}
    for p in paths:
        for f in (p, p.with_name(p.name + "-wal")):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None
    return out


def backup_of(w: Path) -> Path:
    return next(w.glob("gestima.db.bak.*"))


def hostile_app(tmp: Path, variant: str, live: Path) -> Path:
    """A copy of the sample app whose env.py misbehaves as ``variant``; returns its alembic.ini,
    whose ``sqlalchemy.url`` is the live DB (absolute), as operators write it."""
    app = tmp / f"app-{variant}"
    shutil.copytree(app_dir(), app, ignore=shutil.ignore_patterns("__pycache__"))
    env = (app / "env.py").read_text()
    assert PASSED in env and URL_FROM_X in env
    if variant in ("ini", "environ", "direct", "below-guard", "sleep"):
        env = env.replace(PASSED, "passed = None  # ignores the connection it is given")
    if variant == "environ":
        env = env.replace(URL_FROM_X, '    import os\n    return os.environ["DATABASE_URL"]')
    if variant == "direct":
        env = env.replace(
            "def run_migrations_online() -> None:\n",
            (
                "def run_migrations_online() -> None:\n"
                "    import sqlite3\n"
                f"    audit = sqlite3.connect({str(live)!r})\n"
                "    audit.execute('CREATE TABLE IF NOT EXISTS migration_audit (at TEXT)')\n"
                "    audit.commit()\n"
            ),
        )
    if variant == "below-guard":  # libc's open/write: nothing Python can see
        env = env.replace(
            "def run_migrations_online() -> None:\n",
            (
                "def run_migrations_online() -> None:\n"
                "    import ctypes, os\n"
                "    libc = ctypes.CDLL(None)\n"
                f"    fd = libc.open({str(live).encode()!r}, os.O_WRONLY | os.O_APPEND)\n"
                "    libc.write(fd, b'x' * 512, 512)\n"
                "    libc.close(fd)\n"
            ),
        )
    if variant == "left-open":  # a connection kept open in a write transaction, never closed
        env = env.replace(
            "def run_migrations_online() -> None:\n",
            (
                "_KEPT = []\n\n\n"
                "def run_migrations_online() -> None:\n"
                "    _migrate_then_keep()\n"
                "    config.attributes['connection'].commit()\n"
                "    import sqlite3\n"
                "    path = config.get_main_option('sqlalchemy.url').removeprefix('sqlite:///')\n"
                "    kept = sqlite3.connect(path, isolation_level=None)\n"
                "    kept.execute('BEGIN IMMEDIATE')\n"
                "    kept.execute('CREATE TABLE left_open (x)')\n"
                "    _KEPT.append(kept)\n\n\n"
                "def _migrate_then_keep() -> None:\n"
            ),
        )
    if variant == "sleep":
        env = env.replace(
            "def run_migrations_online() -> None:\n",
            "def run_migrations_online() -> None:\n    import time\n    time.sleep(120)\n",
        )
    if variant == "crash":
        bb004 = app / "versions" / "bb004_price_cents.py"
        code = bb004.read_text()
        head = "def downgrade() -> None:\n"
        assert head in code
        bb004.write_text(
            code.replace(
                head,
                head + "    raise RuntimeError('bb004 cannot go back: its author never tried')\n",
            )
        )
    (app / "env.py").write_text(env)
    ini = app / "alembic.ini"
    text = ini.read_text()
    assert "sqlalchemy.url = sqlite:///gestima.db" in text
    ini.write_text(
        text.replace("sqlalchemy.url = sqlite:///gestima.db", f"sqlalchemy.url = sqlite:///{live}")
    )
    return ini


def recovery(
    *args: object, env: dict[str, str] | None = None, timeout: float = 180, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """The real CLI from a folder holding no database: in this process (:mod:`tests.clirun`; the
    app's code runs in the sandbox's child process either way), or in a process of its own when
    ``process`` is set."""
    if not process:
        return invoke(*args, env=env, cwd=ROOT / "tests")
    return subprocess.run(
        [sys.executable, "-m", "recovery", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT / "tests",
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def tables(db: Path) -> set[str]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# ---------------------------------------------------------------------------------------------
# the hostile env.py files really reach the live DB when run the old way


@pytest.mark.parametrize("variant", ["ini", "environ"])
def test_without_the_sandbox_the_hostile_env_downgrades_the_live_db(
    world_copy: Path, tmp_path: Path, variant: str
) -> None:
    """The old in-process call (a scratch connection in cfg.attributes): the hostile env.py ignores
    it and downgrades the live file. This is what the sandbox must prevent."""
    from alembic import command
    from alembic.config import Config

    live = world_copy / "gestima.db"
    ini = hostile_app(tmp_path, variant, live)
    scratch = tmp_path / "scratch.db"
    shutil.copyfile(live, scratch)
    old = dict(os.environ)
    os.environ["DATABASE_URL"] = f"sqlite:///{live}"
    try:
        cfg = Config(str(ini))
        import sqlalchemy as sa

        engine = sa.create_engine(f"sqlite:///{scratch}", poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "bb005_production_records")
        engine.dispose()
    finally:
        os.environ.clear()
        os.environ.update(old)
    with closing(sqlite3.connect(f"file:{live}?mode=ro", uri=True)) as c:
        assert (
            c.execute("SELECT version_num FROM alembic_version").fetchone()[0]
            == "bb005_production_records"
        )


# ---------------------------------------------------------------------------------------------
# extract and check with hostile env.py files


@pytest.mark.parametrize("variant", ["ini", "environ"])
def test_extract_runs_the_hostile_env_on_the_scratch_copy(
    world_copy: Path, tmp_path: Path, variant: str
) -> None:
    """The ini copy and $DATABASE_URL point at the scratch file: the app's downgrade runs there,
    gives the same lineage as the well-behaved env.py, and the live DB and backup are untouched."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = hostile_app(tmp_path, variant, live)
    before = digests(live, backup)
    res = recovery(
        "extract",
        backup,
        live,
        "--alembic-ini",
        ini,
        "--out",
        tmp_path / "bundle",
        "--json",
        env={"DATABASE_URL": f"sqlite:///{live}"},
        process=True,  # the environment a real process hands on to the sandbox
    )
    assert res.returncode in (0, 1), res.stderr
    assert digests(live, backup) == before
    lineage = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["lineage"]
    assert lineage["rules"] == EXPECTED_RULES and lineage["failed"] == []
    assert not any(t.startswith("_alembic_tmp_") for t in tables(live))


def test_extract_refuses_a_direct_sqlite_connect_to_the_live_db(
    world_copy: Path, tmp_path: Path
) -> None:
    """env.py opens the live file with sqlite3 itself: refused inside the child, named on stderr
    and in the manifest; no rule comes from the migrations, and the outcome says so."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = hostile_app(tmp_path, "direct", live)
    before = digests(live, backup)
    res = recovery(
        "extract", backup, live, "--alembic-ini", ini, "--out", tmp_path / "bundle", "--json"
    )
    assert digests(live, backup) == before
    assert "migration_audit" not in tables(live)
    assert "refused by the recovery sandbox" in res.stderr and str(live) in res.stderr, res.stderr
    assert "failed on a scratch copy" not in res.stderr
    lineage = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["lineage"]
    assert lineage["rules"] == {}
    assert lineage["failed"][0]["revision"] == NEW_REV
    assert any("sqlite3.connect" in r for r in lineage["failed"][0]["refused"])
    assert any("no rule is taken from the migrations" in n for n in lineage["notes"])
    summary = json.loads(res.stdout)
    # no rule from the migrations: parts.price is inferred from the unchanged rows instead, and says so
    mapping = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["mapping"]
    price = next(r for r in mapping["parts"]["columns"] if r["column"] == "price")
    assert (
        price["source"] == "inferred" and price["expression"] == EXPECTED_RULES["parts"]["price"]
    ), price
    assert res.returncode == 1 and not summary["planning_errors"], summary


@pytest.mark.parametrize("variant", ["ini", "direct"])
def test_check_never_touches_the_db_and_is_truthful(
    world_copy: Path, tmp_path: Path, variant: str
) -> None:
    """``check --db LIVE``: with the ini pointing at the live DB the judgement is the one the
    well-behaved app gets; with a direct connect every upgrade is refused and check says so (exit 3)."""
    live = world_copy / "gestima.db"
    before = digests(live, backup_of(world_copy))
    ini = hostile_app(tmp_path, variant, live)
    args = ("check", "--alembic-ini", ini, "--from", OLD_REV, "--db", live, "--json")
    res = recovery(*args)
    assert digests(live, backup_of(world_copy)) == before
    if variant == "ini":
        normal = recovery(
            "check", "--alembic-ini", app_dir() / "alembic.ini", "--from", OLD_REV, "--json"
        )
        got, want = json.loads(res.stdout), json.loads(normal.stdout)
        assert res.returncode == normal.returncode == 1
        assert got["revisions"] == want["revisions"] and got["summary"] == want["summary"]
    else:
        assert res.returncode == 3, res.stderr
        assert "refused by the recovery sandbox" in res.stderr and "sqlite3.connect" in res.stderr
        assert "migration_audit" not in tables(live)


# ---------------------------------------------------------------------------------------------
# rollback


def test_rollback_with_the_ini_pointing_at_the_live_db_rolls_back_correctly(
    world_copy: Path, tmp_path: Path
) -> None:
    """The issue's case: the app's own alembic.ini (sqlalchemy.url = the live DB) and an env.py
    that uses it. The lineage downgrade runs on the scratch copy: no column dropped from the live
    DB, no ``_alembic_tmp_`` table, prices carried back with the migration's own rule."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = hostile_app(tmp_path, "ini", live)
    with closing(sqlite3.connect(f"file:{live}?mode=ro", uri=True)) as c:
        cents = dict(c.execute("SELECT id, price_cents FROM parts"))
    backup_digest = digests(backup)
    res = recovery(
        "rollback",
        live,
        "--backup",
        backup,
        "--alembic-ini",
        ini,
        "--out",
        tmp_path / "run",
        "--yes",
    )
    assert res.returncode == 1, res.stderr  # the world's lost values are for review
    assert digests(backup) == backup_digest
    with closing(sqlite3.connect(f"file:{live}?mode=ro", uri=True)) as c:
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == OLD_REV
        assert not [
            t
            for (t,) in c.execute("SELECT name FROM sqlite_master")
            if t.startswith("_alembic_tmp_")
        ]
        prices = dict(c.execute("SELECT id, price FROM parts"))
    assert all(prices[k] == pytest.approx(v / 100.0) for k, v in cents.items())
    journal = json.loads((tmp_path / "run" / "journal.json").read_text())
    assert journal["steps"]["report"]["state"] == "done"


def test_downgrade_to_with_a_hostile_env_runs_on_the_staged_copy(
    world_copy: Path, tmp_path: Path
) -> None:
    """``--downgrade-to`` with the hostile ini: the downgrade runs in the sandbox on the staged copy
    (the guard lets it open that file only), the live file is replaced whole, the backup untouched."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = hostile_app(tmp_path, "ini", live)
    bb003 = (
        ini.parent / "versions" / "bb003_quote_discount_pct.py"
    )  # give the stub a real downgrade
    bb003.write_text(
        bb003.read_text().replace(
            "def downgrade() -> None:\n    pass\n",
            "def downgrade() -> None:\n    op.execute('DROP VIEW IF EXISTS v_quote_totals')\n"
            "    with op.batch_alter_table('quotes') as batch:\n        batch.drop_column('discount_pct')\n",
        )
    )
    backup_digest = digests(backup)
    res = recovery(
        "rollback",
        live,
        "--backup",
        backup,
        "--alembic-ini",
        ini,
        "--out",
        tmp_path / "run",
        "--downgrade-to",
        OLD_REV,
        "--yes",
    )
    assert res.returncode == 1, res.stderr
    assert digests(backup) == backup_digest
    with closing(sqlite3.connect(f"file:{live}?mode=ro", uri=True)) as c:
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == OLD_REV
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert "price" in {r[1] for r in c.execute("PRAGMA table_info(parts)")}
    assert (
        json.loads((tmp_path / "run" / "journal.json").read_text())["steps"]["restore"]["method"]
        == "downgrade"
    )


def test_a_crashing_downgrade_is_named_and_the_rest_of_the_plan_works(
    world_copy: Path, tmp_path: Path
) -> None:
    """bb004's downgrade raises (the app's bug): the rollback goes on without lineage for the
    columns bb004 changes, names bb004 and its error (stderr, manifest), keeps bb002's rename
    (below bb004) from the migrations, and with a mapping rule for the price rolls back."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = hostile_app(tmp_path, "crash", live)
    with closing(sqlite3.connect(f"file:{live}?mode=ro", uri=True)) as c:
        cents = dict(c.execute("SELECT id, price_cents FROM parts"))
    before = digests(live, backup)
    res = recovery(
        "extract", backup, live, "--alembic-ini", ini, "--out", tmp_path / "bundle", "--json"
    )
    assert digests(live, backup) == before
    assert "bb004_price_cents" in res.stderr and "its author never tried" in res.stderr, res.stderr
    lineage = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["lineage"]
    (failed,) = lineage["failed"]
    assert failed["revision"] == "bb004_price_cents" and failed["rebuilt"] is True
    assert "RuntimeError" in failed["error"] and {"parts.price", "parts.price_cents"} <= set(
        failed["columns"]
    )
    assert lineage["rules"] == {"quotes": {"customer": '"customer_name"'}}  # bb002, below the crash
    assert any("bb004_price_cents" in n for n in lineage["notes"])

    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[tables.parts.columns]\nprice = "price_cents / 100.0"\n')
    res = recovery(
        "rollback",
        live,
        "--backup",
        backup,
        "--alembic-ini",
        ini,
        "--mapping",
        mapping,
        "--out",
        tmp_path / "run",
        "--yes",
    )
    assert res.returncode == 1, res.stderr
    assert "bb004_price_cents" in res.stderr
    notes = json.loads((tmp_path / "run" / "report.json").read_text())["migration_notes"]
    assert any("bb004_price_cents" in n and "its author never tried" in n for n in notes), notes
    for page in ("report.md", "report.html"):  # the product owner's pages say it too
        text = (tmp_path / "run" / page).read_text()
        assert "Migration notes" in text and "bb004_price_cents" in text, page
    with closing(sqlite3.connect(f"file:{live}?mode=ro", uri=True)) as c:
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == OLD_REV
        prices = dict(c.execute("SELECT id, price FROM parts"))
    assert all(prices[k] == pytest.approx(v / 100.0) for k, v in cents.items())


# ---------------------------------------------------------------------------------------------
# what the guard refuses, and what it cannot see


GUARD_PROBE = """
def run_migrations_online() -> None:
    import os, sqlite3
    import sqlalchemy
    tries = {
        "connect": lambda: sqlite3.connect(LIVE),
        "connect-uri": lambda: sqlite3.connect("file:" + LIVE + "?mode=ro", uri=True),
        "relative": lambda: sqlite3.connect("gestima.db"),
        "symlink": lambda: (os.symlink(LIVE, "link.db"), sqlite3.connect("link.db")),
        "engine": lambda: sqlalchemy.create_engine("sqlite:///" + LIVE).connect(),
        "server": lambda: sqlalchemy.create_engine("postgresql://u:p@localhost/app"),
        "driver": lambda: __import__("psycopg2"),
        "open": lambda: open(LIVE, "r+b"),
        "remove": lambda: os.remove(LIVE + "-wal"),
        "program": lambda: os.system("true"),
        "attach": lambda: sqlite3.connect(SCRATCH).execute("ATTACH DATABASE ? AS live", (LIVE,)),
    }
    failed = []
    for name, attempt in tries.items():
        try:
            attempt()
        except Exception as exc:
            failed.append(name)
    assert set(failed) == set(tries), sorted(set(tries) - set(failed))
    passed = config.attributes.get("connection")
    _configure(passed)
    with context.begin_transaction():
        context.run_migrations()
"""


def test_the_guard_refuses_every_other_way_to_a_database(world_copy: Path, tmp_path: Path) -> None:
    """Inside the child, every attempt of the probe env.py fails (each swallowed by the app's own
    ``except``), each is recorded and reported, and the migration itself still runs on the scratch."""
    live = world_copy / "gestima.db"
    ini = hostile_app(tmp_path, "plain", live)
    scratch = tmp_path / "scratch.db"
    src = sqlite3.connect(f"file:{live}?mode=ro", uri=True)  # a consistent copy, WAL included
    dst = sqlite3.connect(scratch)
    src.backup(dst)
    src.close()
    dst.close()
    env = (ini.parent / "env.py").read_text()
    start = env.index("def run_migrations_online() -> None:")
    end = env.index("if context.is_offline_mode():")
    probe = GUARD_PROBE.replace("LIVE", repr(str(live))).replace("SCRATCH", repr(str(scratch)))
    (ini.parent / "env.py").write_text(env[:start] + probe.lstrip() + "\n\n" + env[end:])
    before = digests(live, backup_of(world_copy))
    with Sandbox(ini, scratch, [live]) as sb:
        sb.migrate("downgrade", "bb005_production_records")
        refused = list(sb.refused)
    assert digests(live, backup_of(world_copy)) == before
    text = "\n".join(refused)
    for needle in (
        "sqlite3.connect",
        "create_engine('sqlite:///",
        "postgresql://u:***@localhost/app",
        "psycopg2",
        "opening",
        "os.remove",
        "starting a program",
        "ATTACH",
        "os.symlink",
    ):
        assert needle in text, (needle, refused)
    with closing(
        sqlite3.connect(f"file:{scratch}?mode=ro", uri=True)
    ) as c:  # the real work happened on the scratch
        assert (
            c.execute("SELECT version_num FROM alembic_version").fetchone()[0]
            == "bb005_production_records"
        )


def test_a_change_below_the_guard_stops_the_run_with_the_truth(
    world_copy: Path, tmp_path: Path
) -> None:
    """env.py writes the live file through libc (nothing Python can intercept): the fingerprints
    after the command differ, and extract stops with exit 3 saying the app's migration code changed
    the live DB — never "failed on a scratch copy, nothing changed"."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = hostile_app(tmp_path, "below-guard", live)
    size = live.stat().st_size
    res = recovery("extract", backup, live, "--alembic-ini", ini, "--out", tmp_path / "bundle")
    assert live.stat().st_size == size + 512  # the hostile write really happened
    assert res.returncode == 3, res.stderr
    assert (
        "changed a real database" in res.stderr and str(live) in res.stderr and "size" in res.stderr
    )
    assert "nothing changed" not in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "bundle").exists()


def test_the_child_is_stopped_at_the_time_bound(world_copy: Path, tmp_path: Path) -> None:
    live = world_copy / "gestima.db"
    ini = hostile_app(tmp_path, "sleep", live)
    scratch = tmp_path / "scratch.db"
    sqlite3.connect(scratch).close()
    t0 = time.monotonic()
    with pytest.raises(RecoveryError, match="did not finish within 2 s") as info:
        with Sandbox(ini, scratch, [live], timeout=2) as sb:
            sb.migrate("upgrade", "head")
    assert time.monotonic() - t0 < 30
    assert info.value.exit_code == 3 and not isinstance(
        info.value, (MigrationFailed, ProtectedChanged)
    )


def test_a_connection_the_app_left_open_is_closed_when_the_child_ends(
    world_copy: Path, tmp_path: Path
) -> None:
    """The child skips the interpreter's teardown when it ends, except when the app's code may
    have left a connection open on the scratch file (a rollback journal or WAL is left): then it
    is closed as before, its transaction rolled back, and the copy reads cleanly read-only (a
    hot journal would make a read-only open fail)."""
    live = world_copy / "gestima.db"
    ini = hostile_app(tmp_path, "left-open", live)
    scratch = tmp_path / "scratch.db"
    shutil.copyfile(backup_of(world_copy), scratch)
    with Sandbox(ini, scratch, [live]) as sb:
        sb.migrate("upgrade", NEW_REV)
    assert not (tmp_path / "scratch.db-journal").exists()
    with closing(sqlite3.connect(f"file:{scratch}?mode=ro", uri=True)) as c:
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == NEW_REV
    assert "left_open" not in names


def test_the_child_sees_only_the_scratch_url(tmp_path: Path) -> None:
    """Every usual carrier of a database URL, and any variable naming a protected file, points at
    the scratch file; the ini copy's URL too, with the scripts still found through %(here)s."""
    import configparser

    live, scratch = tmp_path / "live.db", tmp_path / "work" / "scratch.db"
    live.touch()
    env = child_environment(
        scratch,
        [live],
        {
            "HOME": "/root",
            "APP_DB": "postgresql+psycopg://u:p@db/app",
            "SETTINGS_DB_PATH": str(live),
            "OTHER": "https://example.com",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{live}",
        },
    )
    url = f"sqlite:///{scratch}"
    assert (
        env["APP_DB"]
        == env["DATABASE_URL"]
        == env["DB_URL"]
        == env["SQLALCHEMY_DATABASE_URI"]
        == url
    )
    assert env["SQLALCHEMY_DATABASE_URL"] == url and env["SETTINGS_DB_PATH"] == str(scratch)
    assert env["HOME"] == "/root" and env["OTHER"] == "https://example.com"
    copy = write_ini_copy(app_dir() / "alembic.ini", tmp_path / "copy.ini", url)
    parser = configparser.ConfigParser()
    parser.read(copy)
    assert parser.get("alembic", "sqlalchemy.url") == url
    assert parser.get("alembic", "script_location") == str(app_dir().resolve())


def test_rehearse_protects_the_real_files_it_copied(world_copy: Path, tmp_path: Path) -> None:
    """``rehearse`` rolls back copies, but an env.py that writes the real live DB below the guard is
    still caught: the real file is fingerprinted too, the rehearsal fails saying the app's migration
    code changed it (not "is the application still running?")."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = hostile_app(tmp_path, "below-guard", live)
    ini.write_text(
        ini.read_text().replace(
            f"sqlalchemy.url = sqlite:///{live}", "sqlalchemy.url = sqlite:///app.db"
        )
    )
    backup_digest = digests(backup)
    res = recovery(
        "rehearse",
        live,
        "--backup",
        backup,
        "--alembic-ini",
        ini,
        "--out",
        tmp_path / "run",
        "--json",
    )
    assert res.returncode != 0
    assert digests(backup) == backup_digest
    reasons = " ".join(json.loads(res.stdout)["reasons"])
    assert "changed a real database" in reasons and str(live) in reasons, reasons


def test_the_child_dies_with_the_tool(world_copy: Path, tmp_path: Path) -> None:
    """A SIGKILLed tool (a killed rollback) leaves no migration running: the kernel kills the child."""
    import signal

    ini = hostile_app(tmp_path, "sleep", world_copy / "gestima.db")
    scratch = tmp_path / "scratch.db"
    sqlite3.connect(scratch).close()
    script = (
        f"from pathlib import Path\nfrom recovery.migrate.sandbox import Sandbox\n"
        f"with Sandbox(Path({str(ini)!r}), Path({str(scratch)!r})) as sb:\n"
        f"    print(sb._proc.pid, flush=True)\n    sb.migrate('upgrade', 'head')\n"
    )
    tool = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    child = int(tool.stdout.readline())
    time.sleep(1.0)  # the child is in env.py's sleep
    tool.send_signal(signal.SIGKILL)
    tool.wait()

    def running(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False
        return "\nState:\tZ" not in state

    deadline = time.monotonic() + 10
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(child)


def test_lineage_steps_one_revision_at_a_time_only_on_a_straight_line() -> None:
    """Each revision is undone alone on a straight history (so a crash names its revision); a range
    with a merge is run as one step, because Alembic's one-revision targets would undo a sibling
    branch with it and blame the wrong revision."""
    from recovery.migrate.migrations import RevisionInfo, _steps

    def rev(name: str, down: str | None) -> RevisionInfo:
        return RevisionInfo(name, down, "", False, f"{name}.py")

    line = [rev("c", "b"), rev("b", "a")]
    assert _steps(line, "a") == [("c", "b"), ("b", "a")]
    merged = [rev("m", "b1,b2"), rev("b2", "a"), rev("b1", "a")]
    assert _steps(merged, "a") == [("m..a", "a")]
    assert _steps([], "a") == []


def test_rollback_fingerprints_the_real_live_db_even_when_nothing_names_it(
    world_copy: Path, tmp_path: Path
) -> None:
    """The rollback extracts from its safety copy, so the real live DB is named neither by the
    ini nor by the environment; an env.py that writes it by a path of its own (below the guard)
    is still caught: exit 3 before the restore, naming the file, never "nothing changed"."""
    live, backup = world_copy / "gestima.db", backup_of(world_copy)
    ini = hostile_app(tmp_path, "below-guard", live)
    ini.write_text(
        ini.read_text().replace(
            f"sqlalchemy.url = sqlite:///{live}",
            f"sqlalchemy.url = sqlite:///{tmp_path / 'elsewhere.db'}",
        )
    )
    size = live.stat().st_size
    res = recovery(
        "rollback",
        live,
        "--backup",
        backup,
        "--alembic-ini",
        ini,
        "--out",
        tmp_path / "run",
        "--yes",
    )
    assert live.stat().st_size == size + 512  # the hostile write really happened
    assert res.returncode == 3, res.stderr
    assert "changed a real database" in res.stderr and str(live) in res.stderr, res.stderr
    assert "nothing changed" not in res.stderr and "Traceback" not in res.stderr
    journal = json.loads((tmp_path / "run" / "journal.json").read_text())
    assert "restore" not in journal["steps"]  # stopped before anything replaced the live file
