"""A throwaway PostgreSQL cluster for the tests: ``initdb`` in a temporary folder, loopback only.

The tests use a real server, never a mock. ``server_url()`` answers, in this order:
``RECOVERY_TEST_PG_URL`` (set by ``.ci/run``, which starts one cluster for the whole run), else a
cluster this process starts itself when ``initdb`` and ``pg_ctl`` can be found (on PATH or under
``/usr/lib/postgresql/<N>/bin``), else None with the reason, which the tests print when they skip.

PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` system
user when there is one, else ``nobody``; its folder is a fresh ``mkdtemp`` handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_URL = "RECOVERY_TEST_PG_URL"
HOW_TO = (
    "install PostgreSQL (Debian: apt-get install postgresql postgresql-contrib) so initdb/pg_ctl can "
    f"be found, or set {ENV_URL}=postgresql://user@host:port/postgres (a superuser, CREATEDB)"
)


def find_bin(name: str) -> str | None:
    """``name`` on PATH, else the newest ``/usr/lib/postgresql/<N>/bin/name`` (Debian's layout)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged owner of the cluster when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


@dataclass
class Cluster:
    """A started cluster; ``stop()`` shuts it down and removes its folder."""

    folder: Path
    port: int
    pg_ctl: str
    user: pwd.struct_passwd | None
    started_in: float

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(
            [self.pg_ctl, "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
            **_as(self.user),
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def _as(user: pwd.struct_passwd | None) -> dict[str, object]:
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def start() -> Cluster:
    """initdb + start a cluster listening on 127.0.0.1 only (a free port, its unix socket inside
    its own folder), trust authentication, fsync off (a test cluster holds nothing worth keeping)."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("initdb/pg_ctl not found")
    t0 = time.perf_counter()
    user = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="recovery-pg-"))
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(
        [
            initdb,
            "-D",
            str(folder / "data"),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        capture_output=True,
        check=True,
        timeout=120,
        env=env,
        cwd=folder,
        **_as(user),
    )
    last = ""
    for _ in range(5):  # another process may take the free port between the probe and the start
        port = free_port()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        r = subprocess.run(
            [
                pg_ctl,
                "-D",
                str(folder / "data"),
                "-l",
                str(folder / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                opts,
                "start",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
            cwd=folder,
            **_as(user),
        )
        if r.returncode == 0:
            return Cluster(folder, port, pg_ctl, user, time.perf_counter() - t0)
        last = (
            (folder / "server.log").read_text(errors="replace")[-2000:]
            if (folder / "server.log").exists()
            else r.stderr
        )
    shutil.rmtree(folder, ignore_errors=True)
    raise RuntimeError(f"pg_ctl start failed: {last}")


# ---- the shared sample world (conftest.py: pg_world, pg_world_copy) ----------------------------


def admin_run(server: str, *statements: Any) -> None:
    from sqlalchemy.engine import make_url

    from recovery.engine.postgres import connect, run

    with connect(make_url(server), "server") as admin:
        for statement in statements:
            run(admin, statement)


@contextmanager
def password_checked_role(
    server: str,
    prefix: str,
    password: str,
    hba_lines: Callable[[str], str],
    superuser: bool = False,
) -> Iterator[str]:
    """A login role ``<prefix><6 hex>`` (a superuser when ``superuser``) with ``password`` that
    the server checks: ``hba_lines(role)``
    (pg_hba.conf lines for that role alone) go before the file's own lines; both the lines and
    the role are removed after. Skips the test when the server's pg_hba.conf is not ours to edit."""
    import uuid

    import psycopg
    import pytest
    from psycopg import sql as pgsql
    from sqlalchemy.engine import make_url

    admin_url = make_url(server).set(database="postgres").render_as_string(False)
    role = f"{prefix}{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_url, autocommit=True) as a:
        hba = Path(str(a.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
        if not os.access(hba, os.W_OK):
            pytest.skip(
                f"{hba} is not writable here: a role with a checked password cannot be made"
            )
        a.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                pgsql.Identifier(role),
                pgsql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"),
                pgsql.Literal(password),
            )
        )
        original = hba.read_text()
        hba.write_text(hba_lines(role) + original)
        a.execute("SELECT pg_reload_conf()")
    try:
        yield role
    finally:
        hba.write_text(original)
        with psycopg.connect(admin_url, autocommit=True) as a:
            a.execute("SELECT pg_reload_conf()")
            a.execute(pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(role)))


def drop_family(server: str, name: str) -> None:
    """Drop the database ``name`` and every database a rollback, undo or rehearsal of it may have
    left on ``server``: ``<name>…`` (safety, kept), its staged databases."""
    from sqlalchemy.engine import make_url

    from recovery.engine.postgres import PostgresEngine, connect, drop_database_sql, run

    engine = PostgresEngine(make_url(server).set(database=name).render_as_string(False))
    with connect(make_url(server), "server") as admin:
        like = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        found = run(
            admin, "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE %s", (like,)
        ).fetchall()
        for db in {name, *(r[0] for r in found)} | {
            engine.staging_name(p) for p in ("restore", "undo")
        }:
            run(admin, drop_database_sql(db))


@dataclass(frozen=True)
class PgWorld:
    """The sample world (parts=60, seed=42, the SQLite ``sample`` world of the same seed row for
    row) built ONCE per test session (per xdist worker) by ``recovery sample --url`` on
    ``pg_server``. Everything here is shared: READ it, never write it (use ``pg_world_copy`` or
    :meth:`copy` to get a database of your own).

    - ``server``: the admin URL (a superuser on the ``postgres`` database);
    - ``folder``: what ``recovery sample`` wrote: ``dump`` (pg_dump custom format, the backup, with
      its ``.manifest.json``), ``uploads/``, ``world.json`` (loaded as ``world``);
    - ``live``: the database ``recovery sample`` built (the live world after the hour of users),
      read-only for tests; ``template``: a copy of it that only ever serves as
      ``CREATE DATABASE … TEMPLATE`` (nobody connects to it, so copies never wait);
    - ``backup``: a database the dump was restored into (the backup given as a URL, and the
      template of "restored backup" copies: ``copy(template=pg_world.backup)``).
    """

    server: str
    folder: Path
    dump: Path
    world: dict[str, Any]
    live: str
    template: str
    backup: str

    def url(self, database: str) -> str:
        """The URL of ``database`` on this world's server."""
        from sqlalchemy.engine import make_url

        return make_url(self.server).set(database=database).render_as_string(False)

    @property
    def live_url(self) -> str:
        return self.url(self.live)

    @property
    def backup_url(self) -> str:
        return self.url(self.backup)

    def copy(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` as a copy of ``template`` (default: the live world); its URL.
        The caller drops it (:func:`drop_family`)."""
        from recovery.engine.postgres import create_database_sql

        admin_run(self.server, create_database_sql(name, template or self.template))
        return self.url(name)


@dataclass(frozen=True)
class PgWorldCopy:
    """A fresh, writable copy of the PostgreSQL sample world for one test (``pg_world_copy``).

    - ``url``: the live URL of the copy (database ``name``): roll it back, write to it, break it;
    - ``dump``: the backup (pg_dump file of the shared world, read it only);
    - ``uploads``: a private copy of the world's uploads folder (write it freely);
    - ``world``: world.json (dict); ``folder``: the shared world folder (read-only);
    - ``pg_world``: the shared :class:`PgWorld` (``backup_url``, ``copy(...)``, ``server``).

    The copy and everything a rollback of it left (safety, kept, staged databases) are dropped
    after the test."""

    url: str
    name: str
    dump: Path
    uploads: Path
    world: dict[str, Any]
    folder: Path
    pg_world: PgWorld
