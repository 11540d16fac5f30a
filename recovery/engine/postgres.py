"""The PostgreSQL engine: a database on a server, named by a SQLAlchemy URL, reached with psycopg 3.

What differs from SQLite and lives here: URL parsing (SQLAlchemy ``make_url``), read-only and
write connections, the sessions holding the database (``pg_stat_activity``), consistent copies
(``pg_dump`` custom format, from a snapshot other readers can share), restoring a dump into a
scratch database, and the comparison workspace: a scratch database in which the backup and the
live database are reachable as the foreign schemas ``old`` and ``new`` (``postgres_fdw``), so a
diff is a join inside the server, never a loop over rows in Python.

Every statement is a sqlglot tree rendered for ``postgres`` with quoted identifiers; values are
bound parameters. DDL sqlglot cannot express (``IMPORT FOREIGN SCHEMA``, ``CREATE SERVER``) is an
``exp.Command`` whose identifiers and literals are still rendered by sqlglot.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

import psycopg
import sqlglot
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlglot import exp

from recovery.engine.base import Connection, Engine, Holder, Staged, is_postgres_url
from recovery.errors import RecoveryError

DIALECT = "postgres"
SCRATCH_PREFIX = "recovery_scratch_"
"""Every database the tool creates for its own work starts with this; they are dropped after use."""
TOOL_TIMEOUT = 3600
STAGED_PREFIX = "recovery_staged_"
"""The restored (or undo) database waits under this prefix until the swap renames it."""
NAME_BYTES = 63
"""PostgreSQL's longest identifier (NAMEDATALEN - 1), in bytes."""


# ---- statements ---------------------------------------------------------------------------------

FINGERPRINT_STATEMENT = (
    "SELECT count(*), coalesce(sum(hashtextextended(CAST(t AS TEXT), 0)), 0) FROM x AS t"
)
"""The fingerprint of one table (:meth:`PostgresEngine.fingerprint`, :func:`fingerprint_statement`
puts the table in): ``count(*)`` and the sum, over the rows, of a 64-bit hash of the row's text
(``CAST(t AS TEXT)``, the row as the server prints it; ``hashtextextended``, the server's own
64-bit hash of a text — Bob Jenkins' lookup3, as hash indexes and hash partitions use it).

Bounded: the sum is ``numeric`` (exact, no wrap-around) and aggregates row by row — a sequential
scan, no sort, no value that grows with the table, parallel workers when the server uses them.
(An ``md5`` of a ``string_agg`` of the sorted rows would build one value per table, and a value
cannot pass 1 GB: about 10M rows of the sample world; it also sorts every row, and takes about
twice as long at 1M.) The settings that change how a value prints are pinned for the
transaction (:data:`FINGERPRINT_SETTINGS`), so a role's or database's own settings (``ALTER
DATABASE … SET DateStyle``) do not move it.

What equal fingerprints prove. A sum does not depend on order: this is the fingerprint of the
table's *multiset* of rows, which is what "the rows did not change" means (``VACUUM FULL``,
``CLUSTER`` or an update writing the same values change nothing). Unlike an XOR, a sum counts
multiplicity: a second copy of a row in a table without a key changes it (an XOR would cancel
the pair). For a change to go unseen, the rows added and the rows removed (a non-empty
difference ``D``, with multiplicities) must keep the count and the sum: ``sum over D of ±h(r) =
0`` exactly, as integers. With ``h`` taken as a random function of rows nobody chose to defeat it,
for any fixed ``D`` with a row ``r`` of net multiplicity ``m ≠ 0``, ``m·h(r)`` must hit one
integer given the rest of ``D``, which at most one of the 2**64 values of ``h(r)`` does: a change
goes unseen with probability at most 2**-64 (about 5e-20), per table and per check. That is the
threat the check is for: the application or a person committing ordinary rows between two steps.
It is no defence against someone who crafts rows to hide a change (lookup3 is not a cryptographic
hash: a row that cancels another's hash can be computed); what keeps such a writer out is the
swap itself, which refuses new connections first and then refuses while any other session is
connected. One 64-bit hash rather than two or md5: the check at the swap runs while new
connections are refused, and a second hash (or md5's hex turned into integers) costs 60-200 %
more time there for odds that are already below those of a hardware fault."""

FINGERPRINT_SETTINGS = (
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
)
"""The settings that change a value's text, fixed (``SET LOCAL``) for the fingerprint's read."""


def fingerprint_statement(schema: str, name: str) -> exp.Expression:
    """:data:`FINGERPRINT_STATEMENT` over the table ``schema.name`` (quoted identifiers)."""
    q = sqlglot.parse_one(FINGERPRINT_STATEMENT, read=DIALECT)
    q.find(exp.Table).replace(
        exp.Table(
            this=exp.Identifier(this=name, quoted=True),
            db=exp.Identifier(this=schema, quoted=True),
            alias=exp.TableAlias(this=exp.to_identifier("t")),
        )
    )
    return q


def ident(name: str) -> str:
    """``name`` as a quoted PostgreSQL identifier (rendered by sqlglot)."""
    return exp.Identifier(this=name, quoted=True).sql(DIALECT)


def literal(value: str) -> str:
    """``value`` as a PostgreSQL string literal (rendered by sqlglot), for DDL options that cannot
    be bound parameters."""
    return exp.Literal.string(value).sql(DIALECT)


def command(text: str) -> exp.Command:
    """A DDL statement sqlglot has no node for, assembled from pieces rendered by :func:`ident`
    and :func:`literal`."""
    head, _, rest = text.partition(" ")
    return exp.Command(this=head, expression=exp.Literal.string(" " + rest) if rest else None)


def render(statement: exp.Expression | str) -> str:
    """The SQL text of a statement tree (a constant query given as text is parsed and rendered, so
    it goes through the same dialect as the rest)."""
    if isinstance(statement, exp.Command):
        rest = statement.expression
        return statement.this + (rest.this if isinstance(rest, exp.Literal) else "")
    tree = sqlglot.parse_one(statement, read=DIALECT) if isinstance(statement, str) else statement
    return tree.sql(DIALECT)


def run(conn: Any, statement: exp.Expression | str, params: Sequence[Any] | None = None) -> Any:
    """Execute one statement (a sqlglot tree rendered for PostgreSQL, or constant SQL text) with
    bound ``params`` on a psycopg connection; the cursor (typed ``Any``: rows are tuples)."""
    return conn.execute(render(statement), params)


def create_database_sql(name: str, template: str | None = None) -> exp.Command:
    tail = f" TEMPLATE {ident(template)}" if template else ""
    return command(f"CREATE DATABASE {ident(name)}{tail}")


def drop_database_sql(name: str) -> exp.Command:
    return command(f"DROP DATABASE IF EXISTS {ident(name)} WITH (FORCE)")


# ---- URLs ---------------------------------------------------------------------------------------


def parse_url(spec: str) -> URL:
    """A PostgreSQL URL (``postgresql://``, ``postgresql+psycopg://``, ``postgres://``) with a
    database name, or a one-line refusal."""
    if not is_postgres_url(spec):
        raise RecoveryError(
            f"{spec!r} is not a postgresql:// URL", "use postgresql://user@host:port/dbname"
        )
    scheme = spec.split(":", 1)[0].lower()
    if "+" in scheme and scheme.split("+", 1)[1] not in ("psycopg", "psycopg2"):
        raise RecoveryError(
            f"the driver {scheme.split('+', 1)[1]!r} of {scheme}:// is not supported",
            "use postgresql:// or postgresql+psycopg:// (recovery connects with psycopg 3)",
        )
    text = (
        "postgresql" + spec[spec.index("://") :] if spec.lower().startswith("postgres://") else spec
    )
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise RecoveryError(
            f"cannot parse the database URL: {exc}", "use postgresql://user@host:port/dbname"
        ) from None
    if not url.database:
        raise RecoveryError(f"{safe(url)} names no database", "add /dbname at the end of the URL")
    return url


def safe(url: URL) -> str:
    """The URL for messages and journals: no password."""
    return url.set(drivername="postgresql").render_as_string(hide_password=True)


def conninfo(url: URL) -> str:
    """A libpq ``key=value`` connection string for psycopg and the pg_* tools, every value quoted by
    libpq's rules (a database name with spaces or quotes is safe; a URI would need encoding)."""
    from psycopg.conninfo import make_conninfo

    params: dict[str, Any] = {k: v for k, v in url.query.items() if isinstance(v, str)}
    for key, value in (
        ("host", url.host),
        ("port", url.port),
        ("user", url.username),
        ("password", url.password),
        ("dbname", url.database),
    ):
        if value is not None:
            params[key] = str(value)
    return make_conninfo(**params)


def _tool_env(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq URI without the password, and the environment carrying it (``PGPASSWORD``): a
    password on a command line is visible to every user in ``ps``."""
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return conninfo(url.set(password=None)), env


def connect(
    url: URL,
    role: str = "database",
    readonly: bool = False,
    autocommit: bool = True,
    timeout: float = 10.0,
) -> psycopg.Connection[Any]:
    """A psycopg connection (autocommit unless asked); ``readonly`` sets
    ``default_transaction_read_only`` so nothing can be written through it."""
    options = f"-c lock_timeout={int(timeout * 1000)}"
    if readonly:
        options += " -c default_transaction_read_only=on"
    try:
        return psycopg.connect(
            conninfo(url),
            autocommit=autocommit,
            connect_timeout=max(1, int(timeout)),
            options=options,
            application_name="recovery",
        )
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecoveryError(
            f"{role} {safe(url)} cannot be opened: {first}",
            "check host, port, user, password and database name",
        ) from None


# ---- server facts -------------------------------------------------------------------------------


def server_version(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    """(major version, full version text), e.g. ``(15, "15.18 (Debian 15.18-0+deb12u1)")``."""
    num = int(run(conn, "SELECT current_setting('server_version_num')").fetchone()[0])
    text = str(run(conn, "SELECT current_setting('server_version')").fetchone()[0])
    return num // 10000, text


def find_tool(name: str, major: int) -> str:
    """The ``pg_dump``/``pg_restore`` that can handle a server of version ``major``: the same
    major (Debian's ``/usr/lib/postgresql/<N>/bin``, then PATH), else the oldest newer one (a newer
    pg_dump reads older servers; an older one refuses newer servers)."""
    found: dict[int, str] = {}
    for path in glob.glob(f"/usr/lib/postgresql/*/bin/{name}"):
        part = Path(path).parts[-3]
        if part.isdigit():
            found.setdefault(int(part), path)
    on_path = shutil.which(name)
    if on_path:
        v = _tool_major(on_path)
        if v is not None:
            found.setdefault(v, on_path)
    usable = sorted(v for v in found if v >= major)
    if not usable:
        have = ", ".join(f"{v}" for v in sorted(found)) or "none"
        raise RecoveryError(
            f"no {name} for PostgreSQL {major} (found versions: {have})",
            f"install the PostgreSQL {major} client tools (Debian: postgresql-client-{major})",
        )
    return found[usable[0]]


def _tool_major(path: str) -> int | None:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Session:
    """A row of ``pg_stat_activity`` for the database."""

    pid: int
    user: str | None
    application: str | None
    client: str | None
    state: str | None


def sessions(conn: psycopg.Connection[Any], database: str) -> list[Session]:
    """The other sessions connected to ``database`` (never the one asking)."""
    q = (
        exp.select("pid", "usename", "application_name", "client_addr::text", "state")
        .from_(exp.to_table("pg_catalog.pg_stat_activity"))
        .where(
            exp.and_(
                exp.column("datname").eq(exp.Placeholder()),
                exp.column("pid").neq(exp.func("pg_backend_pid")),
            )
        )
        .order_by("pid")
    )
    return [
        Session(int(r[0]), r[1], r[2], r[3], r[4]) for r in run(conn, q, (database,)).fetchall()
    ]


def database_exists(admin: psycopg.Connection[Any], name: str) -> bool:
    q = (
        exp.select(exp.Literal.number(1))
        .from_(exp.to_table("pg_catalog.pg_database"))
        .where(exp.column("datname").eq(exp.Placeholder()))
    )
    return run(admin, q, (name,)).fetchone() is not None


def user_tables(conn: Any) -> list[tuple[str, str]]:
    """(schema, table) of every ordinary or partitioned table outside the system schemas."""
    q = (
        exp.select("n.nspname", "c.relname")
        .from_(exp.to_table("pg_catalog.pg_class").as_("c"))
        .join(exp.to_table("pg_catalog.pg_namespace").as_("n"), on="n.oid = c.relnamespace")
        .where(
            "c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_%'"
        )
        .order_by("n.nspname", "c.relname")
    )
    return [(r[0], r[1]) for r in run(conn, q).fetchall()]


def count_rows(conn: psycopg.Connection[Any], schema: str, name: str) -> int:
    q = exp.select(exp.Count(this=exp.Star())).from_(
        exp.Table(
            this=exp.Identifier(this=name, quoted=True), db=exp.Identifier(this=schema, quoted=True)
        )
    )
    return int(run(conn, q).fetchone()[0])


# ---- the engine ---------------------------------------------------------------------------------


class PostgresEngine(Engine):
    """One PostgreSQL database, named by its URL."""

    kind = "postgresql"
    dialect = DIALECT

    def __init__(self, spec: str):
        self.url = parse_url(spec)

    @property
    def spec(self) -> str:
        return safe(self.url)

    @property
    def database(self) -> str:
        return str(self.url.database)

    def admin_url(self) -> URL:
        """The same server and user on its ``postgres`` database (to create and drop databases)."""
        return self.url.set(database="postgres")

    def with_database(self, name: str) -> PostgresEngine:
        other = PostgresEngine.__new__(PostgresEngine)
        other.url = self.url.set(database=name)
        return other

    # -- locating and checking
    def check(self, role: str = "database") -> None:
        self.connect_readonly(role).close()

    def exists(self) -> bool:
        with connect(self.admin_url(), "server") as admin:
            return database_exists(admin, self.database)

    # -- connections
    def connect_readonly(self, role: str = "database") -> psycopg.Connection[Any]:
        return connect(self.url, role, readonly=True)

    def connect_write(
        self, role: str = "database", timeout: float = 5.0
    ) -> psycopg.Connection[Any]:
        return connect(self.url, role, timeout=timeout)

    @contextmanager
    def write_transaction(
        self, conn: Connection, busy_timeout: float = 10.0
    ) -> Iterator[Connection]:
        assert isinstance(conn, psycopg.Connection)
        run(conn, command("BEGIN"))
        run(conn, command(f"SET LOCAL lock_timeout = {literal(f'{int(busy_timeout * 1000)}ms')}"))
        run(conn, command("SET CONSTRAINTS ALL DEFERRED"))
        try:
            yield conn
        except BaseException:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            raise
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            run(conn, command("COMMIT"))

    def sqlalchemy_url(self, readonly: bool = True) -> str:
        url = self.url.set(drivername="postgresql+psycopg")
        if readonly:
            url = url.update_query_dict({"options": "-c default_transaction_read_only=on"})
        return url.render_as_string(hide_password=False)

    # -- copies and comparison
    def snapshot(self, dst: Path, role: str = "database") -> Path:
        """``pg_dump -Fc`` of the whole database into ``dst`` (written as ``dst.tmp`` then renamed)."""
        with self.readonly(role) as conn:
            major, _ = server_version(conn)  # type: ignore[arg-type]
        dump_to(self.url, dst, find_tool("pg_dump", major))
        return dst

    def open_pair(self, backup: Engine) -> Connection:
        """A connection to a new scratch database holding the foreign schemas ``old`` (``backup``)
        and ``new`` (this database); closing it through :func:`pair_workspace` drops it."""
        raise NotImplementedError("use recovery.engine.postgres.pair_workspace (a context manager)")

    def fingerprint(self, conn: Any = None) -> dict[str, Any]:
        """Per ``schema.table``: ``{"rows": n, "hash_sum": "…"}``, every table read in ONE
        repeatable-read snapshot, in memory bounded whatever the table's size; equal
        fingerprints mean no row was committed, changed or removed in between (what that
        proves, and against whom: :data:`FINGERPRINT_STATEMENT`). ``conn``: an open read-only
        connection to this database to use, autocommit and outside a transaction (else one is
        opened)."""
        out: dict[str, Any] = {}
        with self._readonly_or(conn) as conn:
            run(conn, command("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            try:
                for setting, value in FINGERPRINT_SETTINGS:
                    run(conn, command(f"SET LOCAL {setting} = {literal(value)}"))
                for schema, name in user_tables(conn):
                    n, total = run(conn, fingerprint_statement(schema, name)).fetchone()
                    out[f"{schema}.{name}"] = {"rows": int(n), "hash_sum": str(total)}
            except BaseException:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                raise
            run(conn, command("COMMIT"))
        return out

    @contextmanager
    def _readonly_or(self, conn: Any) -> Iterator[Any]:
        if conn is not None:
            yield conn
        else:
            with self.readonly("database") as own:
                yield own

    # -- who else is there
    def holders(self, ignore_own_guard: bool = False) -> list[Holder]:
        """The other sessions on this database; a session that ends within a second (a connection
        just closed, whose backend is still exiting) is not one."""
        with connect(self.admin_url(), "server") as admin:
            found = _wait_gone(admin, self.database, set(), timeout=1.0)
        return self._as_holders(found)

    def terminate_holders(self) -> list[Holder]:
        """End every other session connected to this database (``pg_terminate_backend``) and wait
        until they are gone; returns them. Only on the operator's explicit request
        (``--terminate-sessions``)."""
        with connect(self.admin_url(), "server") as admin:
            found = sessions(admin, self.database)
            terminate_sessions(admin, self.database, [s.pid for s in found], set())
        return self._as_holders(found)

    def write_lock_held(self) -> bool:
        """A session of another backend holds a lock stronger than reading on a table here."""
        with self.readonly("database") as conn:
            q = (
                exp.select(exp.Count(this=exp.Star()))
                .from_(exp.to_table("pg_catalog.pg_locks").as_("l"))
                .where(
                    "l.granted AND l.pid <> pg_backend_pid() AND l.database = "
                    "(SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) "
                    "AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', "
                    "'AccessExclusiveLock')"
                )
            )
            return int(run(conn, q).fetchone()[0]) > 0

    # -- restore: a new database beside the live one, then one renaming transaction
    def staging_name(self, purpose: str = "restore") -> str:
        """The staged database's name for ``purpose`` (``"restore"``, ``"undo"``): derived from the
        live database's name, so a resumed run finds its own leftover and two runs on one database
        cannot stage at once (CREATE DATABASE refuses the second)."""
        return f"{STAGED_PREFIX}{purpose}_{_name_token(self.database)}"

    def kept_name(self, label: str, token: str) -> str:
        """The name the replaced database keeps (``<live>_<label>_<token>``, cut to fit PostgreSQL's
        63-byte names), e.g. the rollback's safety copy ``gestima_safety_1a2b3c4d``."""
        return _fit_name(self.database, f"_{label}_{token}")

    def facts(self) -> DatabaseFacts:
        """Owner, encoding, locale, connection limit, privileges, settings and extensions of this
        database: what a database restored in its place must keep."""
        with connect(self.admin_url(), "server") as admin:
            row = run(admin, _FACTS_SQL, (self.database,)).fetchone()
            if row is None:
                raise RecoveryError(
                    f"database {self.spec} does not exist", "check the database name in the URL"
                )
            settings = [
                (r[0], sorted(r[1] or []))
                for r in run(admin, _SETTINGS_SQL, (self.database,)).fetchall()
            ]
            grants = sorted(
                (r[0], r[1], bool(r[2]))
                for r in run(admin, _GRANTS_SQL, (self.database,)).fetchall()
            )
        with self.readonly("live database") as conn:
            extensions = [
                (r[0], r[1])
                for r in run(
                    conn,
                    "SELECT e.extname, n.nspname FROM pg_catalog.pg_extension AS e "
                    "JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace ORDER BY e.extname",
                ).fetchall()
            ]
        return DatabaseFacts(
            owner=row[0],
            encoding=row[1],
            collate=row[2],
            ctype=row[3],
            provider=row[4],
            icu_locale=row[5],
            connlimit=int(row[6]),
            acl=sorted(row[7]) if row[7] is not None else None,
            allow_connections=bool(row[8]),
            settings=sorted(settings),
            extensions=extensions,
            grants=grants,
        )

    def stage_restore(
        self, backup: Path, prepare: Callable[[Path], None] | None = None, purpose: str = "restore"
    ) -> Staged:
        """A new database ``recovery_staged_<purpose>_<token>`` restored from the pg_dump file
        ``backup`` with ``pg_restore`` (the tool matching the server's version; the objects'
        owners and privileges as dumped), created with this database's owner, encoding and locale,
        then given its connection limit, database-level privileges (``datacl``), per-database
        settings (``pg_db_role_setting``) and extensions. Checked against this database's facts
        before it is returned. This database is not touched; a failed staging leaves nothing."""
        if prepare is not None:
            raise RecoveryError(
                "--downgrade-to is not supported on PostgreSQL",
                "restore from the backup instead (omit --downgrade-to)",
            )
        if not is_dump_file(backup):
            raise RecoveryError(
                f"backup {backup} is not a pg_dump custom-format file",
                "pass the .dump written by recovery snapshot/sample",
            )
        name = self.staging_name(purpose)
        facts = self.facts()
        with self.readonly("live database") as conn:
            major, _ = server_version(conn)  # type: ignore[arg-type]
        from recovery.engine import pgclaims

        with (
            connect(self.admin_url(), "server") as admin,
            pgclaims.creating(admin, lambda: connect(self.admin_url(), "server")),
        ):
            run(admin, drop_database_sql(name))  # our own leftover (never the live database)
            try:
                run(admin, _create_like_sql(name, facts))
            except psycopg.Error as exc:
                raise RecoveryError(
                    f"cannot create the staged database {name} on {self.spec}: "
                    f"{_first_line(str(exc))}; nothing was changed",
                    "the user needs the CREATEDB privilege (and membership in the owner's role)",
                ) from None
            pgclaims.claim(admin, "database", name, f"staged {purpose} of {self.database}")
        staged = self.with_database(name)
        try:
            pgclaims.kill_point(f"staged:{purpose}")
            restore_into(backup, staged.url, find_tool("pg_restore", major), keep_owners=True)
            _give_facts(staged, facts)
            got = staged.facts()
            differs = facts.differences(got)
            if differs:
                raise RecoveryError(
                    f"the staged database {name} could not be given the live database's "
                    f"{', '.join(differs)}; nothing was changed",
                    "restore as a superuser or as the database owner",
                )
        except BaseException:
            self.discard(Staged(name, ""))
            raise
        return Staged(name, sha256_file(backup))

    def swap_in(
        self,
        staged: Staged,
        window: Any = None,
        *,
        keep_as: str | None = None,
        terminate: bool = False,
        check: Callable[[Connection], None] | None = None,
        drop_on_refusal: bool = True,
    ) -> None:
        """Rename this database to ``keep_as`` and ``staged`` to this database's name in ONE
        transaction (PostgreSQL renames databases transactionally), so every connection made by
        name reaches either the old database or the complete staged one.

        Before it, new connections to this database are refused (``ALLOW_CONNECTIONS false``), the
        sessions still connected are terminated when ``terminate`` (else the swap is refused,
        naming them), and ``check(conn)`` runs on a connection opened before the block (e.g. "the
        live data is still what was extracted"; raising refuses the swap). The renaming
        transaction also gives ``keep_as`` back its ``ALLOW_CONNECTIONS``. Refused or failed
        before the commit: this database is as it was (connections allowed again) and the staged
        database is dropped unless ``drop_on_refusal`` is False (an undo swapping the safety
        database back never drops it)."""
        keep = keep_as or self.kept_name("safety", _name_token(staged.location))
        if keep == self.database or staged.location == self.database:
            raise RecoveryError(f"cannot swap {self.spec} with itself", "nothing was changed")
        swapped = False
        blocked = False
        facts: DatabaseFacts | None = None
        try:
            with connect(self.admin_url(), "server") as admin:
                if database_exists(admin, keep):
                    raise RecoveryError(
                        f"a database named {keep} already exists on the server; nothing was changed",
                        "rename or drop it, then run the same command again",
                    )
                if not database_exists(admin, staged.location):
                    raise RecoveryError(
                        f"the staged database {staged.location} is gone; nothing was changed",
                        "run the same command again (it stages the restore anew)",
                    )
                facts = self.facts()
                probe = self.connect_readonly("live database") if check is not None else None
                try:
                    run(admin, _allow_connections_sql(self.database, False))
                    blocked = True
                    mine = {int(probe.info.backend_pid)} if probe is not None else set()
                    others = _wait_gone(admin, self.database, mine, timeout=1.0)
                    if others and terminate:
                        terminate_sessions(admin, self.database, [s.pid for s in others], mine)
                    elif others:
                        raise RecoveryError(
                            self.describe_holders(self._as_holders(others))
                            + "; they would keep writing into the replaced database; nothing was changed",
                            "stop the application, or pass --terminate-sessions to end them",
                        )
                    if probe is not None and check is not None:
                        check(probe)
                finally:
                    if probe is not None:
                        probe.close()
                _wait_gone(admin, self.database, set())
                comment = _database_comment(admin, self.database)
                try:
                    run(admin, command("BEGIN"))
                    run(admin, _rename_sql(self.database, keep))
                    run(admin, _rename_sql(staged.location, self.database))
                    run(admin, _comment_sql(self.database, comment))
                    if facts.allow_connections:
                        run(admin, _allow_connections_sql(keep, True))
                    run(admin, command("COMMIT"))
                    swapped = True
                except psycopg.Error as exc:
                    admin.rollback()
                    raise RecoveryError(
                        f"swapping {staged.location} in as {self.database} failed: "
                        f"{_first_line(str(exc))}; nothing was changed",
                        "stop every session on the database, then run the same command again",
                    ) from None
        finally:
            if not swapped:
                if blocked and (facts is None or facts.allow_connections):
                    with connect(self.admin_url(), "server") as admin:
                        run(admin, _allow_connections_sql(self.database, True))
                if drop_on_refusal:
                    self.discard(staged)

    def allow_connections(self, allow: bool = True) -> None:
        """Let connections to this database in again (after a swap killed before its commit)."""
        with connect(self.admin_url(), "server") as admin:
            run(admin, _allow_connections_sql(self.database, allow))

    def discard(self, staged: Staged) -> None:
        if staged.location == self.database:
            raise RecoveryError(f"refusing to drop the live database {self.spec}")
        with connect(self.admin_url(), "server") as admin:
            run(admin, drop_database_sql(staged.location))

    def _as_holders(self, found: list[Session]) -> list[Holder]:
        return [
            Holder(
                s.pid,
                ", ".join(
                    x
                    for x in (
                        f"user {s.user}" if s.user else "",
                        f"application {s.application!r}" if s.application else "",
                        f"client {s.client}" if s.client else "local socket",
                    )
                    if x
                ),
                [f"session ({s.state or 'unknown state'})"],
            )
            for s in found
        ]

    # -- re-import hooks
    def read_sequences(self, conn: Connection, schema: str = "public") -> dict[str, int]:
        """{table: last value} of the sequences owned by a column of each table in ``schema``."""
        q = (
            "SELECT t.relname, s.last_value FROM pg_catalog.pg_sequences AS s "
            "JOIN pg_catalog.pg_class AS sc ON sc.relname = s.sequencename "
            "JOIN pg_catalog.pg_namespace AS sn ON sn.oid = sc.relnamespace AND sn.nspname = s.schemaname "
            "JOIN pg_catalog.pg_depend AS d ON d.objid = sc.oid AND d.deptype IN ('a', 'i') "
            "JOIN pg_catalog.pg_class AS t ON t.oid = d.refobjid "
            "WHERE s.schemaname = %s"
        )
        out: dict[str, int] = {}
        for name, last in run(conn, q, (schema,)).fetchall():
            out[name] = max(out.get(name, 0), int(last or 0))
        return out

    def raise_sequences(
        self, conn: Connection, live: dict[str, int], before: dict[str, int]
    ) -> list[dict[str, Any]]:
        raise RecoveryError("re-importing into PostgreSQL is not built yet", "nothing was changed")

    def suspend_triggers(self, conn: Connection, tables: set[str]) -> list[Any]:
        raise RecoveryError("re-importing into PostgreSQL is not built yet", "nothing was changed")

    def restore_triggers(self, conn: Connection, suspended: list[Any]) -> None:
        raise RecoveryError("re-importing into PostgreSQL is not built yet", "nothing was changed")


# ---- dump, restore, scratch databases -----------------------------------------------------------


def dump_to(url: URL, dst: Path, pg_dump: str, snapshot_id: str | None = None) -> None:
    """``pg_dump --format=custom`` of ``url`` into ``dst``, atomically (a ``.tmp`` renamed after
    fsync). ``snapshot_id``: dump exactly what an open exported snapshot sees."""
    uri, env = _tool_env(url)
    tmp = dst.with_name(dst.name + ".tmp")
    args = [pg_dump, "--format=custom", "--no-password", f"--file={tmp}", f"--dbname={uri}"]
    if snapshot_id:
        args.append(f"--snapshot={snapshot_id}")
    try:
        r = subprocess.run(
            args, capture_output=True, text=True, env=env, timeout=TOOL_TIMEOUT, check=False
        )
        if r.returncode != 0:
            raise RecoveryError(
                f"pg_dump of {safe(url)} failed: {_first_line(r.stderr)}",
                "check that the user may read every table; no backup was kept",
            )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def restore_into(dump: Path, url: URL, pg_restore: str, keep_owners: bool = False) -> None:
    """``pg_restore`` of ``dump`` into the (new, empty) database ``url``, stopping at the first
    error. Owners and privileges are replayed only when ``keep_owners`` (the restore that becomes
    the live database); a scratch copy belongs to whoever made it."""
    uri, env = _tool_env(url)
    keep = [] if keep_owners else ["--no-owner", "--no-privileges"]
    r = subprocess.run(
        [pg_restore, "--no-password", "--exit-on-error", *keep, f"--dbname={uri}", str(dump)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    if r.returncode != 0:
        raise RecoveryError(
            f"pg_restore of {dump} failed: {_first_line(r.stderr)}",
            "is it a pg_dump custom-format file of a compatible server?",
        )


# ---- restoring in place of the live database -----------------------------------------------------


@dataclass(frozen=True)
class DatabaseFacts:
    """What a database restored in place of another must keep of it (:meth:`PostgresEngine.facts`)."""

    owner: str
    encoding: str
    collate: str
    ctype: str
    provider: str
    icu_locale: str | None
    connlimit: int
    acl: list[str] | None
    """``datacl`` as text items (None: the defaults, PUBLIC may connect and create temp tables)."""
    allow_connections: bool
    settings: list[tuple[str, list[str]]]
    """``pg_db_role_setting`` of the database: (role name or "" for every role, ["key=value", …])."""
    extensions: list[tuple[str, str]]
    """(extension, schema) installed in the database."""
    grants: list[tuple[str, str, bool]]
    """``datacl`` exploded: (grantee or "" for PUBLIC, privilege, with grant option)."""

    def differences(self, other: DatabaseFacts) -> list[str]:
        """What ``other`` (a staged database) lacks of these facts, in words; the staged database
        may have more extensions (those its backup brings)."""
        out = []
        if other.owner != self.owner:
            out.append(f"owner {self.owner}")
        if (other.encoding, other.collate, other.ctype, other.provider, other.icu_locale) != (
            self.encoding,
            self.collate,
            self.ctype,
            self.provider,
            self.icu_locale,
        ):
            out.append("encoding and locale")
        if other.connlimit != self.connlimit:
            out.append("connection limit")
        if other.acl != self.acl:
            out.append("privileges (datacl)")
        if other.settings != self.settings:
            out.append("settings (ALTER DATABASE … SET)")
        missing = sorted(set(self.extensions) - set(other.extensions))
        if missing:
            out.append("extensions " + ", ".join(f"{e} (schema {s})" for e, s in missing))
        return out


_FACTS_SQL = (
    "SELECT pg_catalog.pg_get_userbyid(d.datdba), pg_catalog.pg_encoding_to_char(d.encoding), "
    "d.datcollate, d.datctype, CAST(d.datlocprovider AS TEXT), d.daticulocale, d.datconnlimit, "
    "CAST(d.datacl AS TEXT[]), d.datallowconn FROM pg_catalog.pg_database AS d WHERE d.datname = %s"
)
_SETTINGS_SQL = (
    "SELECT CASE WHEN s.setrole = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(s.setrole) END, "
    "s.setconfig FROM pg_catalog.pg_db_role_setting AS s "
    "JOIN pg_catalog.pg_database AS d ON d.oid = s.setdatabase WHERE d.datname = %s"
)
_GRANTS_SQL = (
    "SELECT CASE WHEN a.grantee = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(a.grantee) END, "
    "a.privilege_type, a.is_grantable FROM pg_catalog.pg_database AS d "
    "CROSS JOIN LATERAL pg_catalog.aclexplode(d.datacl) AS a WHERE d.datname = %s"
)
_LIST_QUOTED = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "shared_preload_libraries",
    "local_preload_libraries",
    "unix_socket_directories",
}
"""The settings PostgreSQL stores as a list of quoted names (``GUC_LIST_QUOTE``)."""


def _name_token(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def _fit_name(base: str, suffix: str) -> str:
    """``base + suffix`` within :data:`NAME_BYTES` bytes, ``base`` cut at a character boundary."""
    room = NAME_BYTES - len(suffix.encode("utf-8"))
    cut = base.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return cut + suffix


def _create_like_sql(name: str, facts: DatabaseFacts) -> exp.Command:
    locale = f" LC_COLLATE {literal(facts.collate)} LC_CTYPE {literal(facts.ctype)}"
    if facts.provider == "i":
        locale += f" LOCALE_PROVIDER icu ICU_LOCALE {literal(facts.icu_locale or '')}"
    return command(
        f"CREATE DATABASE {ident(name)} OWNER {ident(facts.owner)} TEMPLATE template0 "
        f"ENCODING {literal(facts.encoding)}{locale}"
    )


def _database_comment(admin: psycopg.Connection[Any], name: str) -> str | None:
    row = run(
        admin,
        "SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database "
        "WHERE datname = %s",
        (name,),
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def _comment_sql(name: str, comment: str | None) -> exp.Command:
    """The database under the live name gets the live database's comment (the operator's; never
    the claim the tool put on the staged database, :mod:`recovery.engine.pgclaims`)."""
    text = "NULL" if comment is None else literal(comment)
    return command(f"COMMENT ON DATABASE {ident(name)} IS {text}")


def _allow_connections_sql(name: str, allow: bool) -> exp.Command:
    return command(f"ALTER DATABASE {ident(name)} WITH ALLOW_CONNECTIONS {str(allow).lower()}")


def _rename_sql(old: str, new: str) -> exp.Command:
    return command(f"ALTER DATABASE {ident(old)} RENAME TO {ident(new)}")


def _setting_values(key: str, value: str) -> str:
    """The ``TO …`` list that stores ``key=value`` back as PostgreSQL flattened it."""
    if key not in _LIST_QUOTED:
        return literal(value)
    items, cur, quoted, i = [], "", False, 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == '"' and value[i + 1 : i + 2] == '"':
                cur += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur += ch
        elif ch == '"':
            quoted = True
        elif ch == ",":
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    items.append(cur.strip())
    return ", ".join(literal(x) for x in items)


def _give_facts(staged: PostgresEngine, facts: DatabaseFacts) -> None:
    """Give the staged database the live one's connection limit, privileges, settings and
    extensions (owner, encoding and locale were given by CREATE DATABASE)."""
    name = ident(staged.database)
    with connect(staged.admin_url(), "server") as admin:
        if facts.connlimit != -1:
            run(admin, command(f"ALTER DATABASE {name} CONNECTION LIMIT {int(facts.connlimit)}"))
        if facts.acl is not None:
            run(admin, command(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC"))
            run(admin, command(f"REVOKE ALL ON DATABASE {name} FROM {ident(facts.owner)}"))
            for grantee, privilege, grantable in facts.grants:
                who = ident(grantee) if grantee else "PUBLIC"
                option = " WITH GRANT OPTION" if grantable else ""
                run(
                    admin,
                    command(f"GRANT {privilege} ON DATABASE {name} TO {who}{option}"),
                )
        for role, items in facts.settings:
            target = f"ROLE {ident(role)} IN DATABASE {name}" if role else f"DATABASE {name}"
            for item in items:
                key, _, value = item.partition("=")
                run(
                    admin,
                    command(f"ALTER {target} SET {ident(key)} TO {_setting_values(key, value)}"),
                )
    if facts.extensions:
        with connect(staged.url, "staged database") as conn:
            for extension, schema in facts.extensions:
                run(
                    conn,
                    command(
                        f"CREATE EXTENSION IF NOT EXISTS {ident(extension)} SCHEMA {ident(schema)}"
                    ),
                )


def terminate_sessions(
    admin: psycopg.Connection[Any], database: str, pids: list[int], keep: set[int]
) -> None:
    """``pg_terminate_backend`` each of ``pids`` (sessions on ``database``), then wait until only
    ``keep`` are left; refused (exit 2) when they do not go within 10 seconds."""
    q = exp.select(exp.func("pg_terminate_backend", exp.Placeholder()))
    for pid in pids:
        run(admin, q, (pid,))
    left = _wait_gone(admin, database, keep)
    if left:
        raise RecoveryError(
            f"{len(left)} session(s) on {database} did not end when terminated "
            f"(pids {', '.join(str(s.pid) for s in left)}); nothing was changed",
            "stop the application, then run the same command again",
        )


def _wait_gone(
    admin: psycopg.Connection[Any], database: str, keep: set[int], timeout: float = 10.0
) -> list[Session]:
    """Poll ``pg_stat_activity`` until only ``keep`` are connected to ``database`` (at most
    ``timeout`` seconds); the sessions still there."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        left = [s for s in sessions(admin, database) if s.pid not in keep]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def is_dump_file(path: str | os.PathLike[str]) -> bool:
    """A pg_dump custom-format archive (its magic bytes ``PGDMP``)."""
    try:
        with open(path, "rb") as fp:
            return fp.read(5) == b"PGDMP"
    except OSError:
        return False


def _first_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[0] if lines else "no message"


@contextmanager
def scratch_database(server: PostgresEngine, purpose: str) -> Iterator[PostgresEngine]:
    """A new empty database on ``server``'s server, named ``recovery_scratch_<purpose>_<random>``,
    dropped (its sessions ended) when the block ends, whatever happens."""
    from recovery.engine import pgclaims

    name = f"{SCRATCH_PREFIX}{purpose}_{pgclaims.tag()}"
    made = False
    try:
        with (
            connect(server.admin_url(), "server") as admin,
            pgclaims.creating(admin, lambda: connect(server.admin_url(), "server")),
        ):
            try:
                run(admin, create_database_sql(name))
            except psycopg.Error as exc:
                raise RecoveryError(
                    f"cannot create a scratch database on {server.spec}: {_first_line(str(exc))}",
                    "the user needs the CREATEDB privilege",
                ) from None
            made = True
            pgclaims.claim(admin, "database", name, purpose)
        pgclaims.kill_point(f"scratch:{purpose}")
        yield server.with_database(name)
    finally:
        if made:
            with connect(server.admin_url(), "server") as admin:
                run(admin, drop_database_sql(name))


@contextmanager
def backup_database(
    backup: str | os.PathLike[str], server: PostgresEngine
) -> Iterator[PostgresEngine]:
    """The backup as a database: a URL as it is; a pg_dump file restored into a scratch database
    on ``server`` that is dropped after the block."""
    text = os.fspath(backup)
    if is_postgres_url(text):
        yield PostgresEngine(text)
        return
    if not Path(text).is_file():
        raise RecoveryError(
            f"backup {text} does not exist or is not a file",
            "pass the pg_dump file written by recovery snapshot/sample, or a postgresql:// URL",
        )
    if not is_dump_file(text):
        raise RecoveryError(
            f"backup {text} is not a pg_dump custom-format file",
            "pass the .dump written by recovery snapshot/sample, or a postgresql:// URL",
        )
    with server.readonly("live database") as conn:
        major, _ = server_version(conn)  # type: ignore[arg-type]
    with scratch_database(server, "backup") as scratch:
        restore_into(Path(text), scratch.url, find_tool("pg_restore", major))
        yield scratch


def _server_options(url: URL) -> str:
    opts = [("dbname", str(url.database))]
    if url.host:
        opts.append(("host", str(url.host)))
    if url.port:
        opts.append(("port", str(url.port)))
    for key in ("host", "port", "sslmode"):
        value = url.query.get(key)
        if isinstance(value, str) and key not in dict(opts):
            opts.append((key, value))
    return ", ".join(f"{k} {literal(v)}" for k, v in opts)


def _mapping_options(url: URL) -> str:
    opts = [("user", str(url.username))] if url.username else []
    if url.password is not None:
        opts.append(("password", str(url.password)))
    return ", ".join(f"{k} {literal(v)}" for k, v in opts)


def attach_foreign(
    conn: psycopg.Connection[Any],
    source: PostgresEngine,
    schema: str,
    remote_schema: str = "public",
) -> None:
    """Make ``source``'s ``remote_schema`` tables reachable as foreign tables in ``schema`` of the
    connected (scratch) database, read through ``postgres_fdw``."""
    server = f"recovery_{schema}"
    run(conn, command("CREATE EXTENSION IF NOT EXISTS postgres_fdw"))
    run(
        conn,
        command(
            f"CREATE SERVER {ident(server)} FOREIGN DATA WRAPPER postgres_fdw "
            f"OPTIONS ({_server_options(source.url)}, fetch_size '10000')"
        ),
    )
    mapping = _mapping_options(source.url)
    if mapping:
        run(
            conn,
            command(
                f"CREATE USER MAPPING FOR CURRENT_USER SERVER {ident(server)} OPTIONS ({mapping})"
            ),
        )
    else:
        run(conn, command(f"CREATE USER MAPPING FOR CURRENT_USER SERVER {ident(server)}"))
    run(conn, command(f"CREATE SCHEMA {ident(schema)}"))
    run(
        conn,
        command(
            f"IMPORT FOREIGN SCHEMA {ident(remote_schema)} FROM SERVER {ident(server)} "
            f"INTO {ident(schema)}"
        ),
    )


@contextmanager
def pair_workspace(
    backup: PostgresEngine, live: PostgresEngine
) -> Iterator[psycopg.Connection[Any]]:
    """A connection to a scratch database on the live server in which ``backup`` is the schema
    ``old`` and ``live`` the schema ``new`` (foreign tables), inside one REPEATABLE READ READ ONLY
    transaction (postgres_fdw reads each remote side in one snapshot for the whole transaction).
    Nothing is written to either database; the scratch database is dropped afterwards."""
    with scratch_database(live, "pair") as ws:
        conn = connect(ws.url, "scratch database")
        try:
            try:
                attach_foreign(conn, backup, "old")
                attach_foreign(conn, live, "new")
                install_sqlite_compat(conn)
            except psycopg.Error as exc:
                raise RecoveryError(
                    f"cannot reach the databases through postgres_fdw: {_first_line(str(exc))}",
                    "the user needs to create the postgres_fdw extension (PostgreSQL contrib) "
                    "in a new database",
                ) from None
            run(conn, command("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            yield conn
        finally:
            conn.close()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- the comparison workspace speaks the SQLite functions the compare trees use ---------------

_COMPAT = (
    """CREATE FUNCTION public.typeof(v anyelement) RETURNS text LANGUAGE sql IMMUTABLE AS $$
SELECT CASE WHEN v IS NULL THEN 'null'
 WHEN pg_typeof(v) IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype, 'boolean'::regtype)
 THEN 'integer'
 WHEN pg_typeof(v) IN ('real'::regtype, 'double precision'::regtype, 'numeric'::regtype) THEN 'real'
 WHEN pg_typeof(v) = 'bytea'::regtype THEN 'blob' ELSE 'text' END $$""",
    """CREATE FUNCTION public.julianday(v text) RETURNS double precision LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN RETURN (extract(epoch FROM v::timestamptz) / 86400.0 + 2440587.5)::double precision;
EXCEPTION WHEN others THEN RETURN NULL; END $$""",
    """CREATE FUNCTION public.julianday(v timestamptz) RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
SELECT (extract(epoch FROM v) / 86400.0 + 2440587.5)::double precision $$""",
    """CREATE FUNCTION public.julianday(v timestamp) RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
SELECT (extract(epoch FROM v) / 86400.0 + 2440587.5)::double precision $$""",
    """CREATE FUNCTION public.julianday(v double precision) RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
SELECT (CASE WHEN v > 100000000000 THEN v / 1000.0 ELSE v END) / 86400.0 + 2440587.5 $$""",
)


def install_sqlite_compat(conn: psycopg.Connection[Any]) -> None:
    """Define, in the scratch workspace only, SQLite's ``typeof(x)`` and a ``julianday(x)``
    overloaded for text (ISO, read as UTC), timestamp(tz) and epoch numbers, so the comparison
    trees the stages build (unit inference, the deploy-time test) mean the same on both engines.
    The session's time zone is UTC, as SQLite's date functions are."""
    run(conn, command("SET TIME ZONE 'UTC'"))
    for ddl in _COMPAT:
        run(conn, command(ddl))


class PgPair:
    """The comparison workspace behind the small part of ``sqlite3.Connection`` the compare stage
    uses (``execute(sql, params)`` returning a cursor). Each statement runs under a savepoint, and
    a server error becomes ``sqlite3.OperationalError`` after rolling back to it, so a candidate
    rule the server cannot evaluate is skipped exactly as on SQLite and the snapshot transaction
    stays usable."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn

    def execute(self, text: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        import sqlite3

        cur = self.conn.cursor()
        run(self.conn, command("SAVEPOINT recovery_statement"))
        try:
            cur.execute(text, tuple(params) if params else None)
        except psycopg.Error as exc:
            run(self.conn, command("ROLLBACK TO SAVEPOINT recovery_statement"))
            raise sqlite3.OperationalError(f"{_first_line(str(exc))} in: {text}") from exc
        run(self.conn, command("RELEASE SAVEPOINT recovery_statement"))
        return cur

    def close(self) -> None:
        """The workspace is closed by :func:`pair_workspace`."""
