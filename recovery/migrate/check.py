"""``recovery check``: can this range of Alembic revisions be rolled back, and what would it lose?

Every revision is judged by running it, never by reading its Python: a scratch SQLite file is
upgraded from empty to the revision's parent with the application's own Alembic, then

1. the revision's ``upgrade`` runs on a copy while every statement is captured (SQLAlchemy
   ``before_cursor_execute``); the statements are read with sqlglot and folded with
   :func:`recovery.migrate.migrations.track` into "each column after = expression over the columns before".
   That is how a batch-mode rebuild (``CREATE TABLE _alembic_tmp_x`` / ``INSERT … SELECT`` / ``DROP``
   / ``RENAME``) reads as the column changes it makes instead of "table dropped"; reflecting the
   scratch file before and after cross-checks the result;
2. its ``downgrade`` runs on a copy of the upgraded file (unless :func:`~recovery.migrate.scriptfiles.stub_body`
   says it is empty), the schema is compared with the one before the upgrade (full / partial
   reverse), and the same tracking tells which columns the downgrade carries back and which it
   destroys;
3. a verdict: ``safe`` / ``loses data on downgrade`` / ``needs manual SQL``; for a stub downgrade a
   reverse built from the upgrade's changes (sqlglot trees and ``op.…`` code), verified on scratch.

The application's code runs in a child process that cannot reach the real databases
(:mod:`recovery.migrate.sandbox`). Nothing but temporary scratch files is ever written.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp

from recovery.errors import ExitCode, RecoveryError
from recovery.migrate.migrations import Env, migrate_capture, track
from recovery.migrate.sandbox import MigrationFailed, Sandbox
from recovery.engine.schema import BOOKKEEPING_TABLES, Schema, alembic_revision, reflect
from recovery.engine.sqlbuild import col, ident, table
from recovery.engine import open_engine

if TYPE_CHECKING:
    from recovery.migrate.scriptfiles import StaticScript

SAFE = "safe"
LOSES_DATA = "loses data on downgrade"
MANUAL = "needs manual SQL"
VERDICTS = (SAFE, LOSES_DATA, MANUAL)
TMP_PREFIX = "_alembic_tmp_"
FORMAT = "recovery-check/1"
SAMPLE_ROWS = 200
"""With ``--db``, at most this many rows of each table are copied to the scratch database (so
data-dependent upgrade steps run on real rows while the check stays quick on a large database)."""


@dataclass(frozen=True)
class Change:
    """One thing an upgrade does. ``kind``: table_added, table_dropped, table_renamed,
    table_rebuilt, column_added, column_dropped, column_renamed, type_changed, nullability_changed,
    data_migrated, index_added, index_dropped, view_added, view_dropped, view_changed."""

    kind: str
    table: str
    column: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "table": self.table,
            "column": self.column,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Loss:
    """Values a rollback of this revision cannot keep (``column`` None: the whole table)."""

    table: str
    column: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "column": self.column, "reason": self.reason}


@dataclass(frozen=True)
class Reverse:
    """A suggested downgrade: SQLite statements and the equivalent Alembic ``op`` code."""

    sql: tuple[str, ...]
    alembic: tuple[str, ...]
    mechanical: bool
    """Every change of the upgrade has a schema-only reverse (no data to bring back)."""
    verified: bool
    """The SQL, run on the upgraded scratch file, gives back the previous revision's schema."""
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sql": list(self.sql),
            "alembic": list(self.alembic),
            "mechanical": self.mechanical,
            "verified": self.verified,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class RevisionCheck:
    revision: str
    down_revision: str | None
    doc: str
    upgrade_statements: int
    changes: tuple[Change, ...]
    upgrade_lineage: dict[str, dict[str, str]]
    cross_check: tuple[str, ...]
    """Disagreements between the SQL reading and reflection of the scratch file (empty: agree)."""
    downgrade: str
    """``full`` | ``partial`` | ``stub`` | ``failed``."""
    downgrade_statements: int
    downgrade_differences: tuple[str, ...]
    downgrade_lineage: dict[str, dict[str, str]]
    downgrade_error: str | None
    losses: tuple[Loss, ...]
    verdict: str
    suggested_reverse: Reverse | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "down_revision": self.down_revision,
            "doc": self.doc,
            "verdict": self.verdict,
            "upgrade": {
                "statements": self.upgrade_statements,
                "changes": [c.to_dict() for c in self.changes],
                "lineage": self.upgrade_lineage,
                "cross_check": list(self.cross_check),
            },
            "downgrade": {
                "kind": self.downgrade,
                "statements": self.downgrade_statements,
                "differences": list(self.downgrade_differences),
                "lineage": self.downgrade_lineage,
                "error": self.downgrade_error,
            },
            "losses": [x.to_dict() for x in self.losses],
            "suggested_reverse": self.suggested_reverse.to_dict()
            if self.suggested_reverse
            else None,
        }


@dataclass(frozen=True)
class CheckResult:
    alembic_ini: str
    from_revision: str | None
    to_revision: str
    revisions: tuple[RevisionCheck, ...] = field(default_factory=tuple)
    from_reason: str = ""
    """Why the range starts at ``from_revision`` (``--from``, ``--db``'s revision, a manifest's, the base)."""

    @property
    def ok(self) -> bool:
        """The whole range rolls back with the app's own downgrades and loses nothing."""
        return all(r.verdict == SAFE for r in self.revisions)

    @property
    def exit_code(self) -> int:
        return ExitCode.OK if self.ok else ExitCode.REVIEW

    def to_dict(self) -> dict[str, Any]:
        """The documented ``--json`` shape (``format: recovery-check/1``)."""
        return {
            "format": FORMAT,
            "alembic_ini": self.alembic_ini,
            "from": self.from_revision,
            "to": self.to_revision,
            "ok": self.ok,
            "summary": {v: sum(r.verdict == v for r in self.revisions) for v in VERDICTS},
            "revisions": [r.to_dict() for r in self.revisions],
            "from_reason": self.from_reason,
        }

    def summary_line(self) -> str:
        """The verdict and the range judged, first thing the reader sees."""
        n = len(self.revisions)
        span = f"{self.from_revision or 'base'} → {self.to_revision}"
        if self.ok:
            verdict = f"rolls back without loss ({n} revision(s) safe)"
        else:
            counts = {v: sum(r.verdict == v for r in self.revisions) for v in VERDICTS}
            verdict = (
                "does NOT roll back without loss or manual SQL: "
                + ", ".join(f"{k} {counts[k]}" for k in VERDICTS if counts[k])
                + f" of {n} revision(s)"
            )
        return f"{span}: {verdict}. Start: {self.from_reason or 'the base'}."


# ---------------------------------------------------------------------------------------------
# the public function


def check(
    alembic_ini: str | os.PathLike[str],
    from_rev: str | None = None,
    to_rev: str | None = None,
    db: str | os.PathLike[str] | None = None,
) -> CheckResult:
    """Judge every revision after ``from_rev`` up to ``to_rev`` (default: ``db``'s revision, else
    the base; and the head). Only temporary scratch files are written."""
    from alembic.util.exc import CommandError

    from recovery.migrate.scriptfiles import revision_files, static_revisions

    script = revision_files(alembic_ini)  # read as text: the app's code runs only in the sandbox
    db_rev, db_has_schema = None, False
    server_rev = None if db is None or from_rev is not None else revision_on_server(db)
    if server_rev is not None:  # judged on SQLite scratch files upgraded from the base
        db_rev, db, from_rev = server_rev[0], None, server_rev[0] or "base"
    if db is not None:
        with open_engine(db).readonly("database") as conn:
            db_rev = alembic_revision(conn)
            db_has_schema = (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
                    "AND name != 'alembic_version'"
                ).fetchone()
                is not None
            )
    from_reason = "--from" if server_rev is None else server_rev[1]
    if from_rev is None and db is not None:
        from_rev = db_rev
        from_reason = (
            f"the revision of --db {db}"
            if from_rev
            else f"the base: --db {db} has no Alembic revision"
        )
    elif from_rev is None:
        from_rev, from_reason = default_from(alembic_ini)
    try:
        if to_rev is None or to_rev == "head":
            heads = script.get_heads()
            if len(heads) != 1:
                raise RecoveryError(
                    f"the Alembic history has {len(heads)} heads ({', '.join(heads)})",
                    "pass --to REV",
                )
            to_rev = heads[0]
        to_rev = script.get_revision(to_rev).revision
        if from_rev in ("base", ""):
            from_rev = None
        if from_rev is not None:
            from_rev = script.get_revision(from_rev).revision
        revs = list(reversed(static_revisions(script, to_rev, from_rev or "base")))
    except CommandError as exc:
        raise RecoveryError(
            f"cannot read the revisions from {from_rev or 'base'} to {to_rev}: {exc}"
            + ("" if from_reason == "--from" else f" (the range started at {from_reason})"),
            "check --from/--to (see `alembic history`)",
        ) from None
    except AttributeError:  # get_revision(...) returned None
        raise RecoveryError(
            f"unknown revision {from_rev or to_rev}"
            + ("" if from_reason == "--from" else f" (the range started at {from_reason})"),
            "see `alembic history`; choose the start with --from REV",
        ) from None
    if (
        from_rev is not None
        and to_rev != from_rev
        and from_rev not in {r for rev in revs for r in _parents(rev.down_revision)}
    ):
        raise RecoveryError(f"{from_rev} is not an ancestor of {to_rev}", "swap --from and --to?")
    results: list[RevisionCheck] = []
    with (
        tempfile.TemporaryDirectory(prefix="recovery-check-") as tmp,
        Sandbox(
            Path(alembic_ini), Path(tmp) / "work.db", [Path(db)] if db is not None else []
        ) as sb,
    ):
        folder = Path(tmp)
        # a database with tables of its own is the truth about the schema at its revision (the app
        # may have made them with its ORM); one with only alembic_version is rebuilt from the base
        seeded = db_has_schema and from_rev is not None and from_rev == db_rev
        try:
            if seeded:  # the app's own schema (create_all + stamp): start from a copy of it
                assert db is not None
                current, current_rev = seed_scratch(Path(db), folder / "start.db"), from_rev
            else:
                current, current_rev = _empty(folder / "start.db"), None
                if from_rev is not None:
                    _migrate(alembic_ini, current, "upgrade", from_rev, sandbox=sb)
                    current_rev = from_rev
            for i, rev in enumerate(revs):
                parents = _parents(rev.down_revision)
                if tuple(parents) != ((current_rev,) if current_rev else ()):
                    current = _empty(
                        folder / f"{i}.parent.db"
                    )  # a branch or merge: build its parent afresh
                    for p in parents:
                        _migrate(alembic_ini, current, "upgrade", p, sandbox=sb)
                results.append(
                    check_revision(alembic_ini, rev, current, folder / f"{i}", sandbox=sb)
                )
                current, current_rev = folder / f"{i}.up.db", rev.revision
        except RecoveryError as err:
            if seeded or "no such table" not in err.message:
                raise
            raise RecoveryError(
                f"{err.message.splitlines()[0]} — the scratch database is built by upgrading an empty file from the base, and this "
                "application's migrations assume tables no migration creates (its ORM creates them, e.g. "
                "create_all, and stamps a revision)",
                "pass --db with a database of the application (only read: its schema and a bounded sample of its "
                "rows are copied to a scratch file, and every revision after its revision is judged)",
                ExitCode.FAILED,
            ) from None
    return CheckResult(str(alembic_ini), from_rev, to_rev, tuple(results), from_reason)


def revision_on_server(db: str | os.PathLike[str]) -> tuple[str | None, str] | None:
    """For a ``--db`` that is a PostgreSQL URL or pg_dump file: (its Alembic revision, why the
    range starts there); None for a SQLite file. The database is only read (one query); a dump's
    revision comes from the manifest ``recovery snapshot`` wrote beside it. The revisions are then
    judged on SQLite scratch files upgraded from the base (the server is never written)."""
    from recovery.engine.base import is_postgres_url, normalise_spec

    text = normalise_spec(os.fspath(db))
    if is_postgres_url(text):
        from recovery.engine.postgres import PostgresEngine
        from recovery.verify.pgchecks import alembic_revision as pg_revision

        engine = PostgresEngine(text)
        with engine.readonly("database") as conn:
            rev = pg_revision(conn)
        label = engine.spec
    else:
        from recovery.engine.postgres import is_dump_file

        if not is_dump_file(text):
            return None
        from recovery.restore.pgbackup import dump_revision

        rev, label = dump_revision(text), text
    return rev, (
        f"the revision of --db {label}"
        if rev
        else f"the base: --db {label} has no Alembic revision"
    )


MANIFEST_GLOB = "*.bak.*.manifest.json"


def default_from(alembic_ini: str | os.PathLike[str]) -> tuple[str | None, str]:
    """Where a check without ``--from`` or ``--db`` starts: the Alembic revision of the newest
    snapshot manifest (``*.bak.*.manifest.json``, by its ``created_at``) in the current folder or
    the ini's folder — the release a rollback would return to — else the base. Returns the
    revision (None: the base) and the reason, said to the user. Unreadable manifests are skipped."""
    import json

    found: list[tuple[str, float, Path, str]] = []
    folders = {Path.cwd().resolve(), Path(alembic_ini).resolve().parent}
    for folder in sorted(folders):
        for m in folder.glob(MANIFEST_GLOB):
            try:
                data = json.loads(m.read_text(encoding="utf-8"))
                rev = data.get("alembic_revision") if isinstance(data, dict) else None
            except (OSError, ValueError):
                continue
            if isinstance(rev, str) and rev:
                found.append((str(data.get("created_at") or ""), m.stat().st_mtime, m, rev))
    if not found:
        return None, (
            "the base: no --from, no --db and no snapshot manifest ("
            + MANIFEST_GLOB
            + ") in the current folder or the ini's folder"
        )
    created, _mtime, path, rev = max(found)
    return rev, f"the newest snapshot manifest {path} (created {created or 'at an unknown time'})"


def seed_scratch(src: Path, dst: Path, limit: int = SAMPLE_ROWS) -> Path:
    """A scratch copy of ``src``'s schema (tables, then indexes, views and triggers, as ``src``
    declares them) with at most ``limit`` rows of each table (``alembic_version`` whole), made
    without the application's code. ``src`` is only read. Tables a virtual table makes for itself
    are left to it, and no rows are copied into virtual tables or theirs."""
    from contextlib import closing

    from recovery.engine.sqlbuild import sql
    from recovery.engine.sqlite_io import file_uri, readonly_uri

    order = {"table": 0, "index": 1, "view": 2, "trigger": 3}
    with open_engine(src).readonly("database") as s:
        entries = sorted(
            (
                (t, n, q)
                for t, n, q in s.execute(
                    "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
                )
                if not n.startswith("sqlite_")
            ),
            key=lambda e: order.get(e[0], 4),
        )
    with closing(sqlite3.connect(file_uri(Path(dst)), uri=True)) as c:
        filled: list[str] = []
        for kind, name, ddl in entries:
            if kind != "table":
                continue
            if c.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone():
                continue  # made by a virtual table created before it
            c.execute(ddl)
            if not ddl.lstrip().upper().startswith("CREATE VIRTUAL"):
                filled.append(name)
        c.execute("ATTACH DATABASE ? AS src", (readonly_uri(src),))
        c.execute("BEGIN")
        for name in filled:
            cols = [
                r[1]
                for r in c.execute("SELECT * FROM pragma_table_xinfo(?, 'main')", (name,))
                if r[6] == 0
            ]
            q = exp.select(*[col(x) for x in cols]).from_(table(name, "src"))
            if name != "alembic_version":
                q = q.limit(int(limit))
            c.execute(
                sql(
                    exp.Insert(
                        this=exp.Schema(
                            this=table(name, "main"), expressions=[ident(x) for x in cols]
                        ),
                        expression=q,
                    )
                )
            )
        c.execute("COMMIT")
        c.execute("DETACH DATABASE src")
        for kind, _name, ddl in entries:
            if kind != "table":
                c.execute(ddl)
    return dst


def check_revision(
    alembic_ini: str | os.PathLike[str],
    rev: StaticScript,
    before_db: Path,
    stem: Path,
    sandbox: Sandbox | None = None,
) -> RevisionCheck:
    """Run ``rev``'s upgrade (and downgrade) on copies of ``before_db`` (at its parent) and judge it.
    Leaves ``<stem>.up.db`` at ``rev`` for the next revision. The app's code runs in ``sandbox``
    (its scratch file in the same folder as ``stem``), else in a sandbox of its own per command."""
    before = _reflect(before_db)
    up_db, down_db = stem.with_name(stem.name + ".up.db"), stem.with_name(stem.name + ".down.db")
    shutil.copyfile(before_db, up_db)
    up_sql = _migrate(alembic_ini, up_db, "upgrade", rev.revision, sandbox=sandbox)
    after = _reflect(up_db)
    env_up = track(_parsed(up_sql), _identity(before))
    changes, cross = describe_upgrade(before, after, env_up, up_sql)
    parents = _parents(rev.down_revision)
    stub = rev.downgrade_stub
    down_sql: list[str] = []
    error: str | None = None
    kind = "stub" if stub else "full"
    differences: tuple[str, ...] = ()
    restored: Schema | None = after
    if not stub:
        shutil.copyfile(up_db, down_db)
        try:
            down_sql = _migrate(
                alembic_ini,
                down_db,
                "downgrade",
                parents[0] if len(parents) == 1 else f"{rev.revision}-1" if parents else "base",
                raise_=True,
                sandbox=sandbox,
            )
            restored = _reflect(down_db)
        except MigrationFailed as exc:
            kind, error, restored = "failed", exc.message, None
    if restored is not None:
        differences = tuple(schema_differences(before, restored))
        if kind == "full" and differences:
            kind = "partial"
    env_down = track(_parsed(down_sql), _identity(after))
    losses = tuple(find_losses(before, after, env_down, stub))
    schema_changed = bool(schema_differences(before, after))
    if kind in ("failed", "partial") or (
        kind == "stub" and (schema_changed or _migrates_data(changes))
    ):
        verdict = MANUAL
    elif losses:
        verdict = LOSES_DATA
    else:
        verdict = SAFE
    reverse = (
        suggest_reverse(before, after, changes, up_db)
        if kind == "stub" and verdict == MANUAL
        else None
    )
    return RevisionCheck(
        rev.revision,
        ",".join(parents) or None,
        (rev.doc or "").strip(),
        len(up_sql),
        tuple(changes),
        _lineage(env_up, before, after),
        tuple(cross),
        kind,
        len(down_sql),
        differences,
        _lineage(env_down, after, restored or after),
        error,
        losses,
        verdict,
        reverse,
    )


# ---------------------------------------------------------------------------------------------
# reading an upgrade


def describe_upgrade(
    before: Schema, after: Schema, env: Env, statements: list[str]
) -> tuple[list[Change], list[str]]:
    """The upgrade's changes: reflection says *what* differs, the tracked SQL says *how* (renames,
    values carried from dropped columns, data migrations, batch rebuilds)."""
    changes: list[Change] = []
    b_tables, a_tables = _tables(before), _tables(after)
    renamed_tables: dict[str, str] = {}
    for t in sorted(set(a_tables) - set(b_tables)):
        sources = {s for s in _sources(env.get(t, {}).values()) if s[0] in b_tables}
        src_tables = {s[0] for s in sources}
        if (
            len(src_tables) == 1
            and next(iter(src_tables)) not in a_tables
            and not _inserted_into(t, statements)
        ):
            renamed_tables[t] = next(iter(src_tables))
            changes.append(Change("table_renamed", t, detail=f"from {renamed_tables[t]}"))
        else:
            changes.append(
                Change("table_added", t, detail=", ".join(c.name for c in after.tables[t].columns))
            )
    for t in sorted(set(b_tables) - set(a_tables) - set(renamed_tables.values())):
        carried = sorted(
            {
                f"{t2}.{c2}"
                for t2, cols in env.items()
                if t2 in a_tables
                for c2, e in cols.items()
                if any(s[0] == t for s in _sources([e]))
            }
        )
        changes.append(
            Change(
                "table_dropped",
                t,
                detail=f"values carried into {', '.join(carried)}"
                if carried
                else "its rows are destroyed",
            )
        )
    for t in sorted(_rebuilt(statements)):
        if t in a_tables:
            changes.append(
                Change(
                    "table_rebuilt",
                    t,
                    detail="batch mode: copied into _alembic_tmp_"
                    f"{t}, dropped, renamed back; see the column changes",
                )
            )
    for t in sorted(set(a_tables)):
        src_t = renamed_tables.get(t, t)
        if src_t not in b_tables:
            continue
        bcols = {c.name: c for c in before.tables[src_t].columns}
        acols = {c.name: c for c in after.tables[t].columns}
        renamed_from: dict[str, str] = {}
        for c in acols:
            e = env.get(t, {}).get(c)
            if (
                c not in bcols
                and isinstance(e, exp.Column)
                and e.table == src_t
                and e.name in bcols
                and e.name not in acols
            ):
                renamed_from[c] = e.name
                changes.append(Change("column_renamed", t, c, f"from {e.name}"))
        for c in acols:
            if c not in bcols and c not in renamed_from:
                default = acols[c].default
                changes.append(
                    Change(
                        "column_added",
                        t,
                        c,
                        f"{acols[c].type}"
                        + ("" if acols[c].nullable else " NOT NULL")
                        + (f" DEFAULT {default}" if default is not None else ""),
                    )
                )
        for c in bcols:
            if c not in acols and c not in renamed_from.values():
                into = sorted(
                    f"{t2}.{c2}"
                    for t2, cols in env.items()
                    if t2 in a_tables
                    for c2, e in cols.items()
                    if (src_t, c) in _sources([e]) and not (t2 == t and c2 == c)
                )
                changes.append(
                    Change(
                        "column_dropped",
                        t,
                        c,
                        f"values carried into {', '.join(into)}"
                        if into
                        else "its values are destroyed",
                    )
                )
        for c, ac in acols.items():
            bc = bcols.get(renamed_from.get(c, c))
            if bc is None:
                continue
            if _norm_type(bc.type) != _norm_type(ac.type):
                changes.append(Change("type_changed", t, c, f"{bc.type} -> {ac.type}"))
            if bc.nullable != ac.nullable:
                changes.append(
                    Change(
                        "nullability_changed",
                        t,
                        c,
                        "NULL -> NOT NULL" if bc.nullable else "NOT NULL -> NULL",
                    )
                )
    changes += _data_migrations(statements)
    changes += _named_objects("index", before.indexes, after.indexes)
    changes += _named_objects("view", before.views, after.views)
    cross = []
    for t in sorted(
        set(a_tables)
        | {t for t in env if not t.startswith(TMP_PREFIX) and t not in BOOKKEEPING_TABLES}
    ):
        seen, real = set(env.get(t, {})), set(a_tables.get(t, ()))
        if seen != real:
            cross.append(
                f"{t}: the SQL reading gives columns {sorted(seen)}, reflection {sorted(real)}"
                " (reflection wins)"
            )
    return changes, cross


def _data_migrations(statements: list[str]) -> list[Change]:
    out = []
    for tree in _parsed_trees(statements):
        if isinstance(tree, exp.Update):
            t = tree.this.name
            if t.startswith(TMP_PREFIX):
                continue
            where = tree.args.get("where")
            for eq in tree.expressions:
                detail = f"{eq.this.name} = {eq.expression.sql(dialect='sqlite')}"
                if where is not None:
                    detail += f" WHERE {where.this.sql(dialect='sqlite')}"
                out.append(Change("data_migrated", t, eq.this.name, " ".join(detail.split())))
        elif isinstance(tree, exp.Insert) and isinstance(tree.expression, exp.Select):
            target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
            t = target.name
            if t.startswith(TMP_PREFIX):
                continue
            out.append(
                Change("data_migrated", t, None, " ".join(tree.sql(dialect="sqlite").split()))
            )
    return out


def _named_objects(kind: str, before: dict[str, str], after: dict[str, str]) -> list[Change]:
    out = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        if b is None:
            assert a is not None  # the name is in one of the two
            out.append(Change(f"{kind}_added", _on_table(a), name, " ".join(a.split())))
        elif a is None:
            out.append(Change(f"{kind}_dropped", _on_table(b), name, " ".join(b.split())))
        elif " ".join(a.split()) != " ".join(b.split()):
            out.append(Change(f"{kind}_changed", _on_table(a), name, " ".join(a.split())))
    return out


def _on_table(ddl: str | None) -> str:
    try:
        tree = sqlglot.parse_one(ddl or "", read="sqlite")
    except sqlglot.errors.ParseError:
        return ""
    if isinstance(tree, exp.Create) and tree.args.get("kind") == "INDEX":
        t = tree.this.args.get("table") if isinstance(tree.this, exp.Index) else None
        return t.name if t is not None else ""
    if isinstance(tree, exp.Create):
        t = tree.this
        return t.name if isinstance(t, exp.Table) else ""
    return ""


def _migrates_data(changes: Iterable[Change]) -> bool:
    return any(c.kind == "data_migrated" for c in changes)


# ---------------------------------------------------------------------------------------------
# judging a downgrade


def schema_differences(want: Schema, got: Schema) -> list[str]:
    """How ``got`` differs from ``want`` (tables, columns — order aside —, keys, indexes, views)."""
    out: list[str] = []
    wt, gt = _tables(want), _tables(got)
    out += [f"table {t} is missing" for t in sorted(set(wt) - set(gt))]
    out += [f"table {t} is left behind" for t in sorted(set(gt) - set(wt))]
    for t in sorted(set(wt) & set(gt)):
        w = {c.name: c for c in want.tables[t].columns}
        g = {c.name: c for c in got.tables[t].columns}
        out += [f"column {t}.{c} is missing" for c in sorted(set(w) - set(g))]
        out += [f"column {t}.{c} is left behind" for c in sorted(set(g) - set(w))]
        for c in sorted(set(w) & set(g)):
            if _norm_type(w[c].type) != _norm_type(g[c].type):
                out.append(f"column {t}.{c} is {g[c].type}, was {w[c].type}")
            if w[c].nullable != g[c].nullable:
                out.append(
                    f"column {t}.{c} is {'' if g[c].nullable else 'NOT '}NULL, was {'' if w[c].nullable else 'NOT '}NULL"
                )
        if set(want.tables[t].primary_key) != set(got.tables[t].primary_key):
            out.append(
                f"table {t}: primary key {got.tables[t].primary_key}, was {want.tables[t].primary_key}"
            )
        wf = {(f.columns, f.ref_table, f.ref_columns) for f in want.tables[t].foreign_keys}
        gf = {(f.columns, f.ref_table, f.ref_columns) for f in got.tables[t].foreign_keys}
        out += [f"table {t}: foreign key {fk[0]} -> {fk[1]} is missing" for fk in sorted(wf - gf)]
        out += [
            f"table {t}: foreign key {fk[0]} -> {fk[1]} is left behind" for fk in sorted(gf - wf)
        ]
    for kind, w_objs, g_objs in (
        ("index", want.indexes, got.indexes),
        ("view", want.views, got.views),
        ("trigger", want.triggers, got.triggers),
    ):
        for name in sorted(set(w_objs) | set(g_objs)):
            a, b = w_objs.get(name), g_objs.get(name)
            if b is None:
                out.append(f"{kind} {name} is missing")
            elif a is None:
                out.append(f"{kind} {name} is left behind")
            elif " ".join(a.split()) != " ".join(b.split()):
                out.append(f"{kind} {name} differs")
    return out


def find_losses(before: Schema, after: Schema, env_down: Env, stub: bool) -> list[Loss]:
    """Values a rollback over this revision cannot keep.

    * every column of the upgraded schema that the downgrade does not carry into a column of the
      previous schema (a new table, a new column, a column the downgrade drops without copying);
    * every column of the previous schema the downgrade brings back empty or as a constant (the
      upgrade destroyed it; its values come back only from the backup)."""
    losses: list[Loss] = []
    b_tables, a_tables = _tables(before), _tables(after)
    carried = _sources(
        e
        for t, cols in env_down.items()
        if t in b_tables
        for c, e in cols.items()
        if c in b_tables[t]
    )
    how = "is a stub: it leaves" if stub else "drops"
    for t, cols in a_tables.items():
        if t not in b_tables and not any(s[0] == t for s in carried):
            losses.append(
                Loss(
                    t,
                    None,
                    f"table is new in this revision; its rows have no place at the previous "
                    f"revision (the downgrade {'is a stub' if stub else 'drops it'})",
                )
            )
            continue
        for c in cols:
            if (t, c) in carried:
                continue
            new = t not in b_tables or c not in b_tables[t]
            losses.append(
                Loss(
                    t,
                    c,
                    f"column is new in this revision; the downgrade {how} it"
                    if new
                    else "the downgrade drops it without carrying its values",
                )
            )
    for t, cols in b_tables.items():
        pk = before.tables[t].primary_key
        for c in cols:
            e = env_down.get(t, {}).get(c)
            if e is None or isinstance(e, exp.Null):
                if t not in a_tables and len(pk) == 1 and pk[0] == c:
                    continue  # a re-created table's integer key: numbered afresh, no user data
                losses.append(
                    Loss(
                        t,
                        c,
                        "the upgrade removed it; the downgrade does not bring its values back "
                        "(they survive only in the backup)",
                    )
                )
            elif isinstance(e, exp.Literal) or (
                not _sources([e]) and not isinstance(e, exp.Column)
            ):
                losses.append(
                    Loss(
                        t, c, f"the downgrade fills it with the constant {e.sql(dialect='sqlite')}"
                    )
                )
    return losses


# ---------------------------------------------------------------------------------------------
# suggesting a reverse for a stub


def suggest_reverse(before: Schema, after: Schema, changes: list[Change], up_db: Path) -> Reverse:
    """The downgrade a stub should have been, from the upgrade's changes: SQL built as sqlglot trees
    and Alembic ``op`` code. ``mechanical`` is False when values would have to come back (dropped
    columns or tables, migrated data); ``verified`` runs the SQL on a copy of the upgraded file."""
    stmts: list[exp.Expression] = []
    ops: list[str] = []
    problems: list[str] = []
    touched_views = [c for c in changes if c.kind in ("view_added", "view_changed", "view_dropped")]
    for c in touched_views:  # views first: SQLite refuses to drop a column a view names
        if c.column is not None and c.column in after.views:
            stmts.append(_drop("VIEW", c.column))
            ops.append(f'op.execute("DROP VIEW IF EXISTS {c.column}")')
    for c in reversed(changes):
        name = c.column or ""  # set for every index and column change
        if c.kind == "index_added" and c.table in before.tables:
            stmts.append(_drop("INDEX", name))
            ops.append(f'op.drop_index("{c.column}", table_name="{c.table}")')
        elif c.kind == "column_added":
            stmts.append(
                exp.Alter(
                    this=table(c.table),
                    kind="TABLE",
                    actions=[exp.Drop(tables=[col(name)], kind="COLUMN")],
                )
            )
            ops.append(f'op.drop_column("{c.table}", "{c.column}")')
        elif c.kind == "column_renamed":
            old = c.detail.removeprefix("from ")
            stmts.append(
                exp.Alter(
                    this=table(c.table),
                    kind="TABLE",
                    actions=[exp.RenameColumn(this=col(name), to=col(old))],
                )
            )
            ops.append(f'op.alter_column("{c.table}", "{c.column}", new_column_name="{old}")')
        elif c.kind == "table_added":
            stmts.append(_drop("TABLE", c.table))
            ops.append(f'op.drop_table("{c.table}")')
        elif c.kind == "table_renamed":
            old = c.detail.removeprefix("from ")
            stmts.append(
                exp.Alter(
                    this=table(c.table), kind="TABLE", actions=[exp.AlterRename(this=table(old))]
                )
            )
            ops.append(f'op.rename_table("{c.table}", "{old}")')
        elif c.kind == "index_dropped" and c.column in before.indexes:
            stmts.append(sqlglot.parse_one(before.indexes[c.column], read="sqlite"))
            ops.append(f'op.execute("""{" ".join(before.indexes[c.column].split())}""")')
        elif c.kind in (
            "column_dropped",
            "table_dropped",
            "data_migrated",
            "type_changed",
            "nullability_changed",
        ):
            problems.append(
                f"{c.kind} {c.table}{'.' + c.column if c.column else ''}: not reversible by schema "
                "alone (values or types must come back by hand)"
            )
    for c in touched_views:
        if c.column in before.views:
            stmts.append(sqlglot.parse_one(before.views[c.column], read="sqlite"))
            ops.append(f'op.execute("""{" ".join(before.views[c.column].split())}""")')
    sql = tuple(s.sql(dialect="sqlite") for s in stmts)
    verified = False
    if sql:
        trial = up_db.with_name(up_db.name + ".reverse.db")
        shutil.copyfile(up_db, trial)
        conn = sqlite3.connect(str(trial), isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("BEGIN")
            for s in sql:
                conn.execute(s)
            conn.execute("COMMIT")
            left = schema_differences(before, reflect(conn))
            verified = not left
            problems += [f"after the suggested SQL: {d}" for d in left]
        except sqlite3.DatabaseError as exc:
            problems.append(f"the suggested SQL fails on the upgraded scratch copy: {exc}")
        finally:
            conn.close()
    return Reverse(
        sql, tuple(ops), not any("not reversible" in p for p in problems), verified, tuple(problems)
    )


# ---------------------------------------------------------------------------------------------
# helpers


def _drop(kind: str, name: str) -> exp.Drop:
    """``DROP <kind> IF EXISTS "name"`` (sqlglot ≥ 26 names the target in ``tables``)."""
    return exp.Drop(tables=[table(name)], kind=kind, exists=True)


def _parents(down: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if down is None:
        return []
    return [down] if isinstance(down, str) else list(down)


def _empty(path: Path) -> Path:
    sqlite3.connect(str(path)).close()
    return path


def _migrate(
    alembic_ini: str | os.PathLike[str],
    db: Path,
    direction: str,
    target: str,
    raise_: bool = False,
    sandbox: Sandbox | None = None,
) -> list[str]:
    """The app's ``direction`` to ``target`` on the scratch file ``db``, in the sandbox: ``db`` is
    moved to the session's scratch path for the command and back after it."""
    try:
        if sandbox is None:
            return migrate_capture(alembic_ini, db, direction, target)
        os.replace(db, sandbox.scratch)
        try:
            return sandbox.migrate(direction, target)
        finally:
            for suffix in ("", "-journal", "-wal"):
                moved = sandbox.scratch.with_name(sandbox.scratch.name + suffix)
                if moved.exists():
                    os.replace(moved, db.with_name(db.name + suffix))
    except MigrationFailed as exc:
        if raise_:
            raise
        raise RecoveryError(
            f"the application's {exc.message} on a scratch database",
            "fix the migration; `recovery check` needs every upgrade to run",
            ExitCode.FAILED,
        ) from None


def _reflect(db: Path) -> Schema:
    conn = sqlite3.connect(str(db))
    try:
        return reflect(conn)
    finally:
        conn.close()


def _tables(s: Schema) -> dict[str, tuple[str, ...]]:
    return {n: t.column_names for n, t in s.tables.items() if n not in BOOKKEEPING_TABLES}


def _identity(s: Schema) -> Env:
    """Every column as itself, qualified with its table, so lineage names its source table."""
    return {
        n: {c: exp.Column(this=ident(c), table=ident(n)) for c in cols}
        for n, cols in _tables(s).items()
    }


def _sources(exprs: Iterable[exp.Expression]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for e in exprs:
        for node in e.find_all(exp.Column):
            if node.table:
                out.add((node.table, node.name))
    return out


def _parsed(statements: list[str]) -> list[str]:
    return [s for s in statements if s.strip()]


def _parsed_trees(statements: list[str]) -> list[exp.Expression]:
    out = []
    for s in statements:
        try:
            tree = sqlglot.parse_one(s, read="sqlite")
        except sqlglot.errors.ParseError:
            continue
        if tree is not None:
            out.append(tree)
    return out


def _rebuilt(statements: list[str]) -> set[str]:
    """Tables a batch-mode rebuild copied: ``ALTER TABLE _alembic_tmp_x RENAME TO x``."""
    out = set()
    for tree in _parsed_trees(statements):
        if isinstance(tree, exp.Alter) and tree.this.name.startswith(TMP_PREFIX):
            for a in tree.args.get("actions") or []:
                if isinstance(a, exp.AlterRename):
                    out.add(a.this.name)
    return out


def _inserted_into(t: str, statements: list[str]) -> bool:
    return any(
        isinstance(x, exp.Insert)
        and x.this.find(exp.Table) is not None
        and x.this.find(exp.Table).name == t
        for x in _parsed_trees(statements)
    )


def _norm_type(t: str) -> str:
    return " ".join(t.upper().split())


def _lineage(env: Env, start: Schema, end: Schema) -> dict[str, dict[str, str]]:
    """Columns of ``end`` whose values are computed from ``start``'s columns other than themselves."""
    out: dict[str, dict[str, str]] = {}
    start_t = _tables(start)
    for t, cols in _tables(end).items():
        for c in cols:
            e = env.get(t, {}).get(c)
            if e is None or isinstance(e, (exp.Null, exp.Literal)):
                continue
            if isinstance(e, exp.Column) and e.table == t and e.name == c:
                continue
            if not any(s[0] in start_t for s in _sources([e])) or e.find(exp.Query) is not None:
                continue  # a subquery is not a per-row rule: the data_migrated change shows its SQL
            while isinstance(e, exp.Paren):
                e = e.this
            out.setdefault(t, {})[c] = e.sql(dialect="sqlite")
    return out


# ---------------------------------------------------------------------------------------------
# rendering


def render_check(result: CheckResult) -> None:
    """A rich table (one row per revision: what the upgrade does, the downgrade, the losses, the
    verdict), then the suggested reverse of every stub."""
    from rich.table import Table as RichTable

    from recovery.escape import term_text
    from recovery.report.render import console

    out = console()
    out.print(term_text(result.summary_line(), None), soft_wrap=True)
    colour = {SAFE: "green", LOSES_DATA: "yellow", MANUAL: "red"}
    t = RichTable(
        title=f"Rollback check {result.from_revision or 'base'} → {result.to_revision}",
        show_lines=True,
    )
    for h, ratio in (
        ("revision", 2),
        ("upgrade does", 4),
        ("downgrade", 2),
        ("lost on rollback", 3),
        ("verdict", 2),
    ):
        t.add_column(h, overflow="fold", ratio=ratio)
    for r in result.revisions:
        does = (
            "\n".join(_change_line(c) for c in r.changes if c.kind != "table_rebuilt")
            or "(no schema change)"
        )
        does += "".join(
            f"\n{tb}.{c} ← {e}" for tb, cols in r.upgrade_lineage.items() for c, e in cols.items()
        )
        down = r.downgrade + (f": {r.downgrade_error}" if r.downgrade_error else "")
        down += "".join(f"\n{d}" for d in r.downgrade_differences)
        losses = "\n".join(f"{x.table}.{x.column or '*'}" for x in r.losses) or "—"
        t.add_row(r.revision, does, down, losses, f"[{colour[r.verdict]}]{r.verdict}[/]")
    out.print(
        t
        if result.revisions
        else f"no revisions after {result.from_revision or 'base'} up to {result.to_revision}"
    )
    for r in result.revisions:
        if r.suggested_reverse:
            rv = r.suggested_reverse
            state = "verified on scratch" if rv.verified else "NOT verified"
            out.print(
                f"[bold]{r.revision}[/]: suggested downgrade ({state}"
                f"{'' if rv.mechanical else ', values must come back by hand'}):"
            )
            for line in rv.alembic:
                out.print(f"    {line}", markup=False, highlight=False)
            for problem in rv.problems:
                out.print(f"    [yellow]{problem}[/]")
    out.print(
        "[green]the range rolls back without loss[/]"
        if result.ok
        else "[yellow]the range does not roll back without loss or manual SQL[/]"
    )


def _change_line(c: Change) -> str:
    if c.kind.startswith(("index", "view")):
        return f"{c.kind.replace('_', ' ')}: {c.column}"
    detail = c.detail if len(c.detail) <= 60 else c.detail[:57] + "…"
    return f"{c.kind.replace('_', ' ')}: {c.table}{'.' + c.column if c.column else ''}" + (
        f" ({detail})" if detail else ""
    )
