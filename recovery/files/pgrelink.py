"""Relink in a PostgreSQL database: the SQLite relink's contract (:mod:`recovery.files.relink`) with
the target's files table on a server.

The plan is the SQLite relink's own (:func:`recovery.files.relink.build_plan`: records matched,
entity links followed, files placed from the bundle, never over a different file, unsafe paths
refused, the survey of orphans and records without a file). Only where it reads changes: its
questions go to a :class:`DualReader`, which answers those about the bundle from the bundle's
``rows.db`` (attached read-only to a private SQLite connection, as the SQLite relink attaches it)
and those about the target from the server — the same sqlglot statements, rendered for
``postgres`` with ``public`` for the target's schema, values bound. The target is read through a
read-only transaction (one snapshot); the files are written first (each atomic), then every
cell fix of the files table in one server transaction, so a run killed in between is finished by
running it again.
"""

from __future__ import annotations

import functools

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import sqlglot
from sqlglot import exp

from recovery.bundle.store import Bundle
from recovery.engine.postgres import PostgresEngine, connect
from recovery.errors import ExitCode, RecoveryError
from recovery.files.filestable import detect_files_config
from recovery.files.relink import REPORT_LISTS, RelinkPlan, build_plan
from recovery.files.relink_match import Matcher
from recovery.files.relink_sql import BUNDLE
from recovery.files.uploads import FilesConfig, UploadsIndex, sane_mode, write_under

SCHEMA = "public"


@functools.lru_cache(maxsize=256)
def to_postgres(text: str) -> str:
    """A relink statement (sqlglot-rendered for SQLite, ``main`` the target) rendered for
    PostgreSQL with the target's schema ``public`` and ``%s`` placeholders."""
    tree = sqlglot.parse_one(text, read="sqlite")
    for t in tree.find_all(exp.Table):
        db = t.args.get("db")
        if isinstance(db, exp.Identifier) and db.this == "main":
            t.set("db", exp.to_identifier(SCHEMA, quoted=True))
    return tree.sql("postgres")


@functools.lru_cache(maxsize=256)
def _about_bundle(text: str) -> bool:
    """The statement reads the bundle (or SQLite's catalog of it), not the target."""
    tree = sqlglot.parse_one(text, read="sqlite")
    return any(
        isinstance(t.args.get("db"), exp.Identifier) and t.args["db"].this == BUNDLE
        for t in tree.find_all(exp.Table)
    )


class _Cursor:
    """A server cursor in the shape the planner reads: ``description``, ``fetchone``, iteration."""

    def __init__(self, cur: psycopg.Cursor[Any]):
        self.cur = cur
        self.description = [(c.name,) for c in cur.description or []]

    def fetchone(self) -> Any:
        return self.cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self.cur.fetchall())

    def __iter__(self) -> Iterator[Any]:
        while True:
            rows = self.cur.fetchmany(1000)
            if not rows:
                return
            yield from rows


class DualReader:
    """The one connection the relink planner reads through: bundle questions to ``lite`` (the
    bundle's rows.db attached as :data:`BUNDLE`), target questions to ``pg``."""

    def __init__(self, lite: sqlite3.Connection, pg: psycopg.Connection[Any]):
        self.lite, self.pg = lite, pg
        self._n = 0

    def execute(self, text: str, params: Sequence[Any] | Iterable[Any] = ()) -> Any:
        """``text`` (the same few statements, parsed once each) with ``params``: a statement with
        no parameter (a whole table) through a server cursor, streamed; a bound lookup (a key, a
        path, a list of keys: a few rows) in one round trip."""
        bound = tuple(params)
        if _about_bundle(text):
            return self.lite.execute(text, bound)
        if bound:
            cur = self.pg.cursor()
        else:
            self._n += 1
            cur = self.pg.cursor(name=f"recovery_relink_{self._n}")  # not all in memory
        cur.execute(to_postgres(text), bound or None)
        return _Cursor(cur)


class _PgMatcher(Matcher):
    """The SQLite matcher, target records read one bound key at a time: a PostgreSQL bundle
    carries keys as text, which ``pk = %s`` casts to the key's type but a ``VALUES`` list does not."""

    def load_records(self, keys: Iterable[Any], chunk: int = 500) -> None:
        for k in dict.fromkeys(k for k in keys if k is not None):
            self.target_record(k)


def plan_relink_postgres(
    bundle: Bundle,
    pg: psycopg.Connection[Any],
    schema: Any,
    root: Path,
    files: FilesConfig | None = None,
    remaps: Iterable[Any] | None = None,
) -> RelinkPlan:
    """What relink would do in the target ``pg`` (a read-only transaction), reading only."""
    from recovery.engine.sqlite_io import file_uri

    if not root.is_dir():
        raise RecoveryError(
            f"uploads folder {root} does not exist or is not a folder", "check --uploads"
        )
    cfg = detect_files_config(schema, files or FilesConfig())
    if cfg is None:
        return RelinkPlan(root, None, report={k: [] for k in REPORT_LISTS})
    rmap = None if remaps is None else {(r.table, r.old_key): r.new_key for r in remaps}
    lite = sqlite3.connect(":memory:")
    try:
        lite.execute(f"ATTACH DATABASE ? AS {BUNDLE}", (file_uri(bundle.rows_db, mode="ro"),))
        reader = DualReader(lite, pg)
        m = _PgMatcher(bundle, reader, schema, cfg, rmap)  # type: ignore[arg-type]
        return build_plan(bundle, m, root, UploadsIndex(root))
    finally:
        lite.close()


def apply_relink_postgres(plan: RelinkPlan, db: PostgresEngine) -> None:
    """Write the planned files (each atomic, never over an existing file, never through a
    symbolic link), then every fix of the files table in one server transaction."""
    from recovery.engine.postgres import render

    root = plan.index.real if plan.index is not None else os.path.realpath(plan.root)
    prefix = root.rstrip("/") + "/"
    for w in plan.writes:
        target = os.fspath(w.target)
        if not target.startswith(prefix):
            raise RecoveryError(
                f"uploads path {w.rel} leads outside {root}",
                "check the uploads folder for new symlinks; nothing was overwritten",
            )
        write_under(root, target[len(prefix) :], w.source, w.sha256, sane_mode(w.mode))
    if not plan.fixes or plan.cfg is None:
        return
    table = exp.Table(
        this=exp.to_identifier(plan.cfg.table, quoted=True),
        db=exp.to_identifier(SCHEMA, quoted=True),
    )
    with connect(db.url, "target database", autocommit=False) as conn:
        try:
            for f in plan.fixes:
                stmt = exp.Update(
                    this=table.copy(),
                    expressions=[
                        exp.EQ(this=exp.column(f.column, quoted=True), expression=exp.Placeholder())
                    ],
                    where=exp.Where(
                        this=exp.EQ(
                            this=exp.column(plan.pk, quoted=True), expression=exp.Placeholder()
                        )
                    ),
                )
                conn.execute(render(stmt), (f.new, f.key))
            conn.commit()
        except psycopg.Error as exc:
            conn.rollback()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RecoveryError(
                f"relinking the files table of {db.spec} failed and was rolled back: {first}",
                "the files written are in place; run the relink again",
                ExitCode.FAILED,
            ) from None


def relink_postgres(
    bundle: Bundle,
    db: str,
    uploads: Path,
    files: FilesConfig | None = None,
    *,
    dry_run: bool = False,
    remaps: Iterable[Any] | None = None,
) -> dict[str, Any]:
    """Relink the bundle's files into ``uploads`` for the records of the PostgreSQL database ``db``
    (a URL); the SQLite relink's report (relinked, restored_from_bundle, missing, orphans,
    records_without_file, unsafe, kept_both, hash_mismatch, links_fixed, links_unresolved,
    records_not_imported, counts). ``uploads_state`` is None: the backup is a dump, not a file
    the uploads' manifest can be read from."""
    from recovery.compare.pgdiff import reflect_pg

    target = PostgresEngine(db)
    schema = reflect_pg(target)
    with connect(target.url, "target database", readonly=True, autocommit=False) as pg:
        plan = plan_relink_postgres(bundle, pg, schema, Path(uploads), files, remaps)
        pg.rollback()
    if not dry_run:
        apply_relink_postgres(plan, target)
    report = dict(plan.report)
    report["root"] = str(Path(uploads).resolve())
    report["dry_run"] = dry_run
    report["files_table"] = (
        None
        if plan.cfg is None
        else {
            "table": plan.cfg.table,
            "path": plan.cfg.path,
            "sha256": plan.cfg.sha256 or None,
            "entity_type": plan.cfg.entity_type or None,
            "entity_id": plan.cfg.entity_id or None,
        }
    )
    report["counts"] = {k: len(report[k]) for k in REPORT_LISTS}
    report["uploads_state"] = None
    return report
