"""The application's Alembic project: revisions, stub downgrades, and column lineage.

Lineage comes from the migrations themselves: the downgrade from the live DB's revision to the
backup's is run, one revision at a time, on a scratch database built with the live schema, in a
child process that cannot reach the real databases (:mod:`recovery.migrate.sandbox`); every SQL statement
it executes is captured (SQLAlchemy cursor events) and read with sqlglot, tracking for every column the
expression over the new schema's columns that produces it (``RENAME COLUMN``, batch-mode
``INSERT INTO _alembic_tmp_x (…) SELECT …``, ``UPDATE … SET``, ``ADD``/``DROP COLUMN``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from recovery.errors import RecoveryError
from recovery.migrate.sandbox_child import is_bookkeeping_sql  # noqa: F401 - re-exported
from recovery.engine.schema import alembic_revision
from recovery.engine import open_engine
from recovery.engine.sqlite_io import file_uri

Env = dict[str, dict[str, exp.Expression]]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RevisionInfo:
    revision: str
    down_revision: str | None
    doc: str
    downgrade_stub: bool
    path: str


def revisions_between(
    alembic_ini: str | os.PathLike[str], upper: str, lower: str
) -> list[RevisionInfo]:
    """The revisions a downgrade from ``upper`` to ``lower`` runs, newest first (the revision
    files read as text, never run here: :mod:`recovery.migrate.scriptfiles`)."""
    from alembic.util.exc import CommandError

    from recovery.migrate.scriptfiles import revision_files, static_revisions

    script = revision_files(alembic_ini)
    try:
        revs = static_revisions(script, upper, lower)
    except CommandError as exc:
        raise RecoveryError(
            f"revisions {lower} and {upper} are not on one Alembic history: {exc}",
            "is the backup from this application?",
        ) from None
    out = []
    for r in revs:
        down = (
            r.down_revision
            if isinstance(r.down_revision, str) or r.down_revision is None
            else ",".join(r.down_revision)
        )
        out.append(RevisionInfo(r.revision, down, (r.doc or "").strip(), r.downgrade_stub, r.path))
    return out


def _scratch_from(live: Path, dst: Path, role: str = "live database") -> None:
    """An empty database with the live schema (tables, indexes, views, triggers) and revision."""
    with open_engine(live).readonly(role) as src:
        ddl = src.execute(
            "SELECT type, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
            "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, rowid"
        ).fetchall()
        rev = alembic_revision(src)
    conn = sqlite3.connect(str(dst), isolation_level=None)
    try:
        for _, stmt in ddl:
            conn.execute(stmt)  # the live database's own DDL, replayed verbatim
        if rev is not None:
            conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (rev,))
    finally:
        conn.close()


@dataclass(frozen=True)
class DowngradeCapture:
    """The SQL of each revision's downgrade (newest first) and the revisions whose downgrade failed."""

    steps: list[tuple[str, list[str] | None]]
    """(revision, its statements), None for a revision whose downgrade failed."""
    failed: list[dict[str, Any]]
    """{revision, error, refused, columns (the columns left without lineage), rebuilt}."""


def _columns(db: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(file_uri(Path(db), mode="ro"), uri=True)
    try:
        return {
            r[0]: [c[1] for c in conn.execute("SELECT * FROM pragma_table_info(?)", (r[0],))]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        }
    finally:
        conn.close()


def _remove_db(path: Path) -> None:
    for p in (path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))):
        p.unlink(missing_ok=True)


def capture_downgrade(
    alembic_ini: str | os.PathLike[str],
    live: Path,
    backup: Path,
    revs: list[RevisionInfo],
    target: str,
    keep: bool = False,
) -> DowngradeCapture:
    """Run the app's downgrade one revision at a time, in the sandbox (:mod:`recovery.migrate.sandbox`), on
    a scratch database with the live schema; capture each revision's SQL.

    A revision whose downgrade fails (the application's bug, or code the sandbox refused) is
    recorded and skipped: the scratch is rebuilt at the revision below it from the backup's
    schema with the app's upgrades, and the capture goes on from there.

    ``keep``: when every downgrade succeeded, the child is parked for the upgrade replay that
    follows (:attr:`recovery.migrate.sandbox.Sandbox.keep`); and a child started ahead for this
    ini (:func:`recovery.migrate.sandbox.prestart`, no application code run in it yet) is taken
    instead of starting one."""
    from recovery.migrate.sandbox import MigrationFailed, Sandbox

    steps: list[tuple[str, list[str] | None]] = []
    failed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="recovery-lineage-") as tmp:
        scratch = Path(tmp) / "scratch.db"
        _scratch_from(live, scratch)
        with Sandbox(
            Path(alembic_ini), scratch, [Path(live), Path(backup)], keep=keep, adopt=keep
        ) as sb:
            for label, step_target in _steps(revs, target):
                before = _columns(scratch)
                try:
                    steps.append((label, sb.migrate("downgrade", step_target)))
                    continue
                except MigrationFailed as exc:
                    entry: dict[str, Any] = {
                        "revision": label,
                        "error": exc.error,
                        "refused": exc.refused,
                    }
                steps.append((label, None))
                failed.append(entry)
                _remove_db(scratch)
                _scratch_from(backup, scratch, "backup")
                try:
                    if step_target != target:
                        sb.migrate("upgrade", step_target)
                except MigrationFailed as exc:
                    entry["rebuilt"] = False
                    entry["rebuild_error"] = exc.error
                    entry["columns"] = []
                    break
                after = _columns(scratch)
                entry["rebuilt"] = True
                entry["columns"] = sorted(
                    {
                        f"{t}.{c}"
                        for t in set(before) | set(after)
                        if t != "alembic_version"
                        for c in set(before.get(t, [])) ^ set(after.get(t, []))
                    }
                )
                entry["_after"] = after
    return DowngradeCapture(steps, failed)


def _steps(revs: list[RevisionInfo], target: str) -> list[tuple[str, str]]:
    """(revision, the target that undoes just it), newest first. A history with branches or merges
    in the range is run as one step labelled ``NEWEST..TARGET``: Alembic's one-revision targets
    are only well defined on a straight line."""
    if not revs:
        return []
    chain = [r.revision for r in revs[1:]] + [target]
    if all(r.down_revision == nxt for r, nxt in zip(revs, chain, strict=True)):
        return list(zip((r.revision for r in revs), chain, strict=True))
    return [(f"{revs[0].revision}..{target}", target)]


def run_downgrade_capture(
    alembic_ini: str | os.PathLike[str], live: Path, target: str, backup: Path | None = None
) -> list[str]:
    """Run the app's downgrade to ``target`` in the sandbox on a scratch copy of the live schema;
    return the SQL. Raises RecoveryError naming the first revision whose downgrade failed."""
    with open_engine(live).readonly("live database") as n:
        upper = alembic_revision(n)
    if upper is None:
        raise RecoveryError(
            f"{live} has no alembic_version", "pass a mapping file instead of --alembic-ini"
        )
    revs = revisions_between(alembic_ini, upper, target)
    cap = capture_downgrade(alembic_ini, live, backup or live, revs, target)
    if cap.failed:
        f = cap.failed[0]
        raise RecoveryError(
            f"the application's downgrade of {f['revision']} failed on a scratch copy in the "
            f"sandbox (nothing else was touched): {f['error']}",
            "fix the migration or pass a mapping file instead of --alembic-ini",
        )
    return [s for _, stmts in cap.steps for s in stmts or []]


def _substitute(e: exp.Expression, env: dict[str, exp.Expression]) -> exp.Expression:
    def repl(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column):
            src = env.get(node.name)
            return (
                exp.Paren(this=src.copy())
                if src is not None and not isinstance(src, (exp.Column, exp.Literal, exp.Null))
                else (src.copy() if src is not None else exp.Null())
            )
        return node

    return e.copy().transform(repl)


def _table_name(t: exp.Expression) -> str:
    return (
        t.name if isinstance(t, exp.Table) else t.this.name if isinstance(t, exp.Schema) else str(t)
    )


def _drop_targets(node: exp.Drop) -> list[exp.Expression]:
    """What a DROP names: sqlglot ≥ 26 keeps it in ``tables``, older versions in ``this``/``expressions``."""
    found = list(node.args.get("tables") or node.expressions or [])
    return found or ([node.this] if node.this is not None else [])


def track(statements: list[str], env: Env) -> Env:
    """Follow every captured statement, keeping each column's expression over the starting columns."""
    for text in statements:
        try:
            tree = sqlglot.parse_one(text, read="sqlite")
        except sqlglot.errors.ParseError:
            continue
        if isinstance(tree, exp.Alter):
            name = _table_name(tree.this)
            cols = env.setdefault(name, {})
            for action in tree.args.get("actions") or []:
                if isinstance(action, exp.RenameColumn):
                    old, new = action.this.name, action.args["to"].name
                    if old in cols:
                        cols[new] = cols.pop(old)
                elif isinstance(action, exp.AlterRename):
                    env[action.this.name] = env.pop(name, {})
                elif isinstance(action, exp.ColumnDef):
                    cols[action.name] = exp.Null()
                elif isinstance(action, exp.Drop) and action.args.get("kind") == "COLUMN":
                    for target in _drop_targets(action):
                        cols.pop(target.name, None)
        elif isinstance(tree, exp.Create) and tree.args.get("kind") == "TABLE":
            schema = tree.this
            if isinstance(schema, exp.Schema):
                env[_table_name(schema)] = {
                    c.name: exp.Null() for c in schema.expressions if isinstance(c, exp.ColumnDef)
                }
        elif (
            isinstance(tree, exp.Insert)
            and isinstance(tree.this, exp.Schema)
            and isinstance(tree.expression, exp.Select)
        ):
            target = _table_name(tree.this)
            sel = tree.expression
            src_table = sel.args.get("from_") or sel.args.get("from")
            src = _table_name(src_table.this) if src_table is not None else None
            if src is None or src not in env:
                continue
            names = [c.name for c in tree.this.expressions]
            exprs = [e.unalias() if isinstance(e, exp.Alias) else e for e in sel.expressions]
            env.setdefault(target, {})
            for c, e in zip(names, exprs, strict=False):
                env[target][c] = _substitute(e, env[src])
        elif isinstance(tree, exp.Update):
            name = _table_name(tree.this)
            if name not in env:
                continue
            before = dict(env[name])
            where = tree.args.get("where")
            for eq in tree.expressions:
                new_val = _substitute(eq.expression, before)
                if where is not None:
                    new_val = exp.Case(
                        ifs=[exp.If(this=_substitute(where.this, before), true=new_val)],
                        default=before.get(eq.this.name, exp.Null()).copy(),
                    )
                env[name][eq.this.name] = new_val
        elif isinstance(tree, exp.Drop) and tree.args.get("kind") == "TABLE":
            for t in _drop_targets(tree):
                env.pop(_table_name(t), None)
    return env


def derive_lineage(
    alembic_ini: str | os.PathLike[str],
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    keep_child: bool = False,
) -> tuple[dict[str, dict[str, exp.Expression]], dict[str, Any]]:
    """Mapping rules read from the app's own downgrade: old table → old column → expression over
    the new table's columns (renames and real data migrations only), plus a report for the manifest.

    ``keep_child``: the caller replays the upgrade next (:mod:`recovery.migrate.replay`), in the
    sandbox child the downgrades ran in (parked until then: :attr:`Sandbox.keep`); the caller
    ends it with :func:`recovery.migrate.sandbox.release_spare` if it never replays."""
    from recovery.migrate.sandbox import keeping

    with keeping(alembic_ini) if keep_child else contextlib.nullcontext():
        return _derive_lineage(alembic_ini, backup, live, keep_child)


def _derive_lineage(
    alembic_ini: str | os.PathLike[str],
    backup: str | os.PathLike[str],
    live: str | os.PathLike[str],
    keep_child: bool,
) -> tuple[dict[str, dict[str, exp.Expression]], dict[str, Any]]:
    live_p = Path(live)
    with open_engine(backup).readonly("backup") as b:
        old_rev = alembic_revision(b)
        old_tables = {
            r[0]: [c[1] for c in b.execute("SELECT * FROM pragma_table_info(?)", (r[0],))]
            for r in b.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    with open_engine(live_p).readonly("live database") as n:
        new_rev = alembic_revision(n)
        env: Env = {
            r[0]: {
                c[1]: exp.column(c[1], quoted=True)
                for c in n.execute("SELECT * FROM pragma_table_info(?)", (r[0],))
            }
            for r in n.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    if old_rev is None or new_rev is None:
        raise RecoveryError(
            "--alembic-ini needs both databases to have an alembic_version",
            "pass a mapping file instead",
        )
    revs = revisions_between(alembic_ini, new_rev, old_rev) if old_rev != new_rev else []
    cap = (
        capture_downgrade(alembic_ini, live_p, Path(backup), revs, old_rev, keep=keep_child)
        if revs
        else DowngradeCapture([], [])
    )
    return lineage_from_capture(cap, env, old_tables, revs, old_rev, new_rev)


def lineage_from_capture(
    cap: DowngradeCapture,
    env: Env,
    old_tables: dict[str, list[str]],
    revs: list[RevisionInfo],
    old_rev: str,
    new_rev: str,
) -> tuple[dict[str, dict[str, exp.Expression]], dict[str, Any]]:
    """The mapping rules a captured downgrade gives (``env``: the live tables' columns, each its
    own expression; ``old_tables``: the backup's tables and columns), and the manifest's report
    (:func:`derive_lineage`, whatever engine the capture ran on)."""
    env, statements, failed, notes = _follow(cap, env)
    lineage: dict[str, dict[str, exp.Expression]] = {}
    for t, cols in old_tables.items():
        if t == "alembic_version":
            continue  # the downgrade rewrites the revision itself: bookkeeping, not a mapping rule
        for c in cols:
            e = env.get(t, {}).get(c)
            if e is None or isinstance(e, exp.Null):
                continue
            if isinstance(e, exp.Column) and e.name == c:
                continue  # same name: nothing learned
            if any(isinstance(x, (exp.Query, exp.Subquery)) for x in e.walk()):
                continue  # not a per-row mapping
            lineage.setdefault(t, {})[c] = _unquote_parens(e)
    report = {
        "from": new_rev,
        "to": old_rev,
        "revisions": [
            {"revision": r.revision, "downgrade_stub": r.downgrade_stub, "doc": r.doc} for r in revs
        ],
        "stubs": [r.revision for r in revs if r.downgrade_stub],
        "statements": statements,
        "rules": {
            t: {c: e.sql(dialect="sqlite") for c, e in cols.items()} for t, cols in lineage.items()
        },
        "failed": failed,
        "notes": notes,
    }
    return lineage, report


def _follow(cap: DowngradeCapture, env: Env) -> tuple[Env, int, list[dict[str, Any]], list[str]]:
    """Track each captured revision; across a revision whose downgrade failed, keep the lineage of
    the columns it leaves as they are and none for the columns it adds or removes. Returns the
    env, the number of statements, the failures (for the manifest) and one note per failure
    (also printed on stderr)."""

    from recovery.migrate.sandbox import refusal_note

    by_rev = {f["revision"]: f for f in cap.failed}
    failed: list[dict[str, Any]] = []
    notes: list[str] = []
    count = 0
    for rev, stmts in cap.steps:
        if stmts is not None:
            env = track(stmts, env)
            count += len(stmts)
            continue
        f = by_rev[rev]
        after = f.get("_after")
        failed.append({k: v for k, v in f.items() if k != "_after"})
        refused = refusal_note(f["error"], f.get("refused") or [])
        if after is None:
            notes.append(
                f"the application's downgrade of {rev} failed: {f['error']}{refused}; the scratch could not "
                f"be rebuilt below it ({f.get('rebuild_error')}), so no rule is taken from the migrations: "
                "same-name and rename rules and the mapping file still apply"
            )
            env = {}
            break
        cols = ", ".join(f["columns"]) or "no column"
        notes.append(
            f"the application's downgrade of {rev} failed: {f['error']}{refused}; continuing without "
            f"migration lineage for the columns it changes ({cols}): same-name and rename rules and "
            "the mapping file still apply"
        )
        env = {
            t: {c: env.get(t, {}).get(c, exp.Null()) for c in cols_after}
            for t, cols_after in after.items()
            if t != "alembic_version"
        }
    for note in notes:
        log.warning(f"recovery: {note}")
    return env, count, failed, notes


def _unquote_parens(e: exp.Expression) -> exp.Expression:
    """Strip every outer parenthesis (nested substitutions can wrap a rule more than once)."""
    while isinstance(e, exp.Paren):
        e = e.this
    return e


def migrate_capture(
    alembic_ini: str | os.PathLike[str],
    db: str | os.PathLike[str],
    direction: str,
    target: str,
    protect: list[Path] | None = None,
) -> list[str]:
    """Run the app's ``upgrade``/``downgrade`` to ``target`` on the SQLite file ``db`` (a scratch
    file: it is changed) in the sandbox (:mod:`recovery.migrate.sandbox`) and return the SQL it executed,
    reads and ``alembic_version`` left out.

    Raises RecoveryError (with the migration's own error) when the migration fails."""
    from recovery.migrate.sandbox import migrate_once
    from recovery.migrate.scriptfiles import config_from_ini

    if direction not in ("upgrade", "downgrade"):
        raise ValueError(direction)
    config_from_ini(alembic_ini)
    return migrate_once(alembic_ini, db, direction, target, protect)
