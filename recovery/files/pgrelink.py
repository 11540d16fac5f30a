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

Round trips. The planner asks the target one bound question per file record (its record by key;
whether the row a record or a row's file key names is there, with its unique values). Here those
questions are asked together before the planner needs the answers: the record keys as it
announces them (``load_records``), and the row checks of the entity links and of the rows with a
file key found by asking the planner's own :meth:`Matcher.target_key` once in a recording pass
(:meth:`DualReader.recording`). Each group is ONE statement per :data:`BATCH` questions: the
bound values go up as text arrays, ``unnest … WITH ORDINALITY``, each cast to its column's type
without its length or precision (as ``col = %s`` coerces an untyped parameter: a value is never
truncated into a match), and the planner's own statement runs ``LATERAL`` once per question
inside the server. The answers are kept by (statement, values); the planner then reads them as if
asked one by one, and a question not answered in advance (or a batch the server refused, e.g. a
value that does not cast) is asked on its own as before. The fixes are written the same way: one
``UPDATE … FROM unnest(…)`` per column of the files table.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import sqlglot
from sqlglot import exp

from recovery.bundle.store import Bundle
from recovery.engine.postgres import PostgresEngine, connect, ident
from recovery.errors import ExitCode, RecoveryError
from recovery.files.filestable import detect_files_config
from recovery.files.relink import REPORT_LISTS, RelinkPlan, build_plan
from recovery.files.relink_match import Matcher
from recovery.files.relink_sql import BUNDLE, KIND, record_sql
from recovery.files.uploads import FilesConfig, UploadsIndex, sane_mode, write_under
from recovery.model.kinds import RowKind

log = logging.getLogger(__name__)

SCHEMA = "public"
BATCH = 5000
"""Questions (or fixes) per statement: a bounded number of round trips whatever the records."""
KEYS = "_recovery_keys"
"""The alias of the bound values in a batched statement (no application table is named so: an
inner table of that name would hide it, and the batch would fall back to one by one)."""


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


class _Answer:
    """A question answered in advance, read as its own cursor would be."""

    def __init__(self, description: list[tuple[str]], rows: list[tuple[Any, ...]]):
        self.description, self.rows = description, rows

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return list(self.rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


_FOUND = _Answer([("found",)], [(1,)])


class DualReader:
    """The one connection the relink planner reads through: bundle questions to ``lite`` (the
    bundle's rows.db attached as :data:`BUNDLE`), target questions to ``pg`` — answered from
    :meth:`prefetch` when they were asked in advance."""

    def __init__(self, lite: sqlite3.Connection, pg: psycopg.Connection[Any]):
        self.lite, self.pg = lite, pg
        self._n = 0
        self.answers: dict[tuple[str, tuple[Any, ...]], _Answer] = {}
        self.asked: list[tuple[str, tuple[Any, ...]]] | None = None
        self.round_trips = 0
        self._types: dict[str, dict[str, str | None]] = {}

    def execute(self, text: str, params: Sequence[Any] | Iterable[Any] = ()) -> Any:
        """``text`` (the same few statements, parsed once each) with ``params``: a statement with
        no parameter (a whole table) through a server cursor, streamed; a bound lookup (a key, a
        path, a list of keys: a few rows) from the answers asked in advance, else in one round
        trip. While :meth:`recording`, a bound lookup is only noted and answers "found"."""
        bound = tuple(params)
        if _about_bundle(text):
            return self.lite.execute(text, bound)
        if bound:
            if self.asked is not None:
                self.asked.append((text, bound))
                return _FOUND
            known = self.answers.get((text, bound))
            if known is not None:
                return known
            cur = self.pg.cursor()
        else:
            self._n += 1
            cur = self.pg.cursor(name=f"recovery_relink_{self._n}")  # not all in memory
        self.round_trips += 1
        cur.execute(to_postgres(text), bound or None)
        return _Cursor(cur)

    @contextmanager
    def recording(self) -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
        """Inside the block, bound target questions are noted (and answered "found", so a caller
        asks exactly its first question) instead of sent; :meth:`prefetch_asked` sends them."""
        self.asked = []
        try:
            yield self.asked
        finally:
            self.asked = None

    def prefetch_asked(self, asked: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        """Answer the noted questions, one batched statement per statement text and BATCH."""
        by_text: dict[str, list[tuple[Any, ...]]] = {}
        for text, bound in asked:
            by_text.setdefault(text, []).append(bound)
        for text, params in by_text.items():
            self.prefetch(text, params)

    def prefetch(self, text: str, params: Iterable[tuple[Any, ...]]) -> None:
        """Answer ``text`` for every tuple of ``params`` (not yet answered) in advance, in
        statements of :data:`BATCH` (module docstring). A statement whose values cannot be sent
        as typed text arrays, or that the server refuses, is left to be asked one by one."""
        todo = [b for b in dict.fromkeys(params) if (text, b) not in self.answers]
        if not todo:
            return
        shaped = self._batched(text, len(todo[0]))
        if shaped is None:
            return
        query, columns = shaped
        for i in range(0, len(todo), BATCH):
            part = todo[i : i + BATCH]
            arrays = [[_as_text(b[j]) for b in part] for j in range(len(columns))]
            try:
                with self.pg.transaction(), self.pg.cursor() as cur:  # a savepoint
                    self.round_trips += 1
                    cur.execute(query, arrays)
                    description = [(c.name,) for c in (cur.description or [])[1:]]
                    found: dict[int, list[tuple[Any, ...]]] = {}
                    for n, *row in cur.fetchall():
                        found.setdefault(int(n), []).append(tuple(row))
            except (psycopg.DataError, psycopg.ProgrammingError):
                return  # e.g. a REAL bound against an integer key: asked one by one
            for n, b in enumerate(part, start=1):
                self.answers[(text, b)] = _Answer(description, found.get(n, []))

    def _batched(self, text: str, width: int) -> tuple[str, list[str]] | None:
        """``text`` asked for many bound tuples at once: ``SELECT k.n, s.* FROM unnest(%s::text[],
        …) WITH ORDINALITY AS k(…, n) CROSS JOIN LATERAL (text, each placeholder i replaced by
        CAST(k.vi AS the type of the column it is compared with)) AS s``; None when a
        placeholder is not compared with a column of a target table whose type casts safely."""
        tree = sqlglot.parse_one(text, read="sqlite")
        holders = list(tree.find_all(exp.Placeholder))
        tables = [t for t in tree.find_all(exp.Table)]
        if len(holders) != width or len(tables) != 1 or not tables[0].name:
            return None
        types = self._column_types(tables[0].name)
        columns: list[str] = []
        for i, ph in enumerate(holders):
            parent = ph.parent
            other = parent.this if isinstance(parent, (exp.EQ, exp.NullSafeEQ)) else None
            if not isinstance(other, exp.Column) or parent.expression is not ph:
                return None
            cast_to = types.get(other.name)
            if cast_to is None:
                return None
            columns.append(cast_to)
            ph.replace(
                exp.Cast(
                    this=exp.column(f"v{i}", table=KEYS, quoted=True),
                    to=exp.DataType(this=exp.DataType.Type.USERDEFINED, kind=cast_to),
                )
            )
        for t in tree.find_all(exp.Table):
            if isinstance(t.args.get("db"), exp.Identifier) and t.args["db"].this == "main":
                t.set("db", exp.to_identifier(SCHEMA, quoted=True))
        keys = exp.Unnest(
            expressions=[
                exp.Cast(this=exp.Placeholder(), to=exp.DataType.build("TEXT[]"))
                for _ in range(width)
            ],
            alias=exp.TableAlias(
                this=exp.to_identifier(KEYS, quoted=True),
                columns=[exp.to_identifier(f"v{i}", quoted=True) for i in range(width)],
            ),
            offset=exp.to_identifier("n", quoted=True),  # WITH ORDINALITY
        )
        lateral = exp.Lateral(
            this=tree.subquery(), alias=exp.TableAlias(this=exp.to_identifier("s"))
        )
        q = exp.select(
            exp.column("n", table=KEYS, quoted=True),
            exp.Column(this=exp.Star(), table=exp.to_identifier("s")),
        )
        rendered = q.from_(keys).join(lateral, join_type="CROSS").sql("postgres")
        return rendered, columns

    def _column_types(self, name: str) -> dict[str, str | None]:
        if name not in self._types:
            self.round_trips += 1
            self._types[name] = cast_types(self.pg, name)
        return self._types[name]


def cast_types(conn: psycopg.Connection[Any], name: str) -> dict[str, str | None]:
    """{column: the type to cast a bound text to} of the target table ``name``: its type
    without length or precision (``character varying``, ``numeric``, ``bpchar``: a value is never
    cut or rounded into another), None for a type whose bare name means a fixed length
    (``bit``), which is then bound one value at a time."""
    cur = conn.execute(
        "SELECT a.attname, pg_catalog.format_type(a.atttypid, NULL), t.typname "
        "FROM pg_catalog.pg_attribute AS a "
        "JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid "
        "WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 "
        "AND NOT a.attisdropped",
        (f"{ident(SCHEMA)}.{ident(name)}",),
    )
    return {
        str(c): ("bpchar" if typname == "bpchar" else None if typname == "bit" else str(typ))
        for c, typ, typname in cur.fetchall()
    }


def _cast(e: exp.Expression, type_text: str) -> exp.Cast:
    return exp.Cast(this=e, to=exp.DataType(this=exp.DataType.Type.USERDEFINED, kind=type_text))


def _as_text(v: Any) -> str | None:
    """A bound value as the text its column's input function reads back (None stays NULL)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    if isinstance(v, float):
        return repr(v)
    return str(v)


class _PgMatcher(Matcher):
    """The SQLite matcher, its target questions asked in batches before it needs the answers
    (module docstring): a PostgreSQL bundle carries keys as text, which ``pk = %s`` casts to the
    key's type but a ``VALUES`` list does not, so the batches cast each value in SQL."""

    reader: DualReader

    def load_records(self, keys: Iterable[Any], chunk: int = 500) -> None:
        wanted = list(dict.fromkeys(k for k in keys if k is not None))
        self.reader.prefetch(record_sql(self.cfg.table, self.pk), [(k,) for k in wanted])
        for k in wanted:
            self.target_record(k)

    def load_entity_rows(self, records: list[dict[str, Any]]) -> None:
        """The bundle rows the records' entity links name (as the SQLite matcher), then the
        target checks :func:`~recovery.files.relink_links.follow_entity` will make of them."""
        super().load_entity_rows(records)
        rows: list[tuple[str, dict[str, Any]]] = []
        for b in records:
            ref = self.entity_ref(b)
            if ref is None:
                continue
            row = next(iter(self.bundle_row(*ref)), None)
            if row is not None and row.get(KIND) == RowKind.INSERTED:
                rows.append((ref[0], row))
        self._prefetch_target_keys(rows)

    def fk_rows(self, table: str, fk_column: str) -> list[dict[str, Any]]:
        """The rows naming a file (as the SQLite matcher), their target checks asked in advance."""
        rows = super().fk_rows(table, fk_column)
        self._prefetch_target_keys([(table, r) for r in rows])
        return rows

    def _prefetch_target_keys(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Ask :meth:`target_key`'s first question for every row in a recording pass, then send
        them batched; its later questions (a key taken by another row, without remaps) and any
        the batch could not answer go one by one."""
        with self.reader.recording() as asked:
            for table, row in rows:
                self.target_key(table, row)
        self.reader.prefetch_asked(asked)


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
        m.reader = reader
        plan = build_plan(bundle, m, root, UploadsIndex(root))
        log.debug("relink plan: %d statements to the server", reader.round_trips)
        return plan
    finally:
        lite.close()


def apply_relink_postgres(plan: RelinkPlan, db: PostgresEngine) -> None:
    """Write the planned files (each atomic, never over an existing file, never through a
    symbolic link), then every fix of the files table in one server transaction."""
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
    with connect(db.url, "target database", autocommit=False) as conn:
        try:
            _write_fixes(conn, plan)
            conn.commit()
        except psycopg.Error as exc:
            conn.rollback()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RecoveryError(
                f"relinking the files table of {db.spec} failed and was rolled back: {first}",
                "the files written are in place; run the relink again",
                ExitCode.FAILED,
            ) from None


def _write_fixes(conn: psycopg.Connection[Any], plan: RelinkPlan) -> None:
    """Every fix of the plan, inside the caller's transaction: per column of the files table,
    ``UPDATE … SET col = CAST(v.new AS type) FROM unnest(keys, news) AS v WHERE pk = CAST(v.key
    AS type)`` for :data:`BATCH` fixes at a time (a plan holds one fix per key and column, so
    the order of the rows does not matter); a column or key whose type cannot be cast from text
    safely, or a batch the server refuses (a value that does not cast), one UPDATE per fix."""
    from recovery.engine.postgres import render

    assert plan.cfg is not None
    types = cast_types(conn, plan.cfg.table)
    table = exp.Table(
        this=exp.to_identifier(plan.cfg.table, quoted=True),
        db=exp.to_identifier(SCHEMA, quoted=True),
    )
    by_column: dict[str, list[Any]] = {}
    for f in plan.fixes:
        by_column.setdefault(f.column, []).append(f)
    for column, fixes in by_column.items():
        key_type, new_type = types.get(plan.pk), types.get(column)
        for i in range(0, len(fixes), BATCH):
            part = fixes[i : i + BATCH]
            if key_type is not None and new_type is not None:
                stmt = exp.Update(
                    this=table.copy().as_("t"),
                    expressions=[
                        exp.EQ(
                            this=exp.column(column, quoted=True),
                            expression=_cast(exp.column("new", table="v", quoted=True), new_type),
                        )
                    ],
                    from_=exp.From(
                        this=exp.Unnest(
                            expressions=[
                                exp.Cast(this=exp.Placeholder(), to=exp.DataType.build("TEXT[]")),
                                exp.Cast(this=exp.Placeholder(), to=exp.DataType.build("TEXT[]")),
                            ],
                            alias=exp.TableAlias(
                                this=exp.to_identifier("v"),
                                columns=[
                                    exp.to_identifier("key", quoted=True),
                                    exp.to_identifier("new", quoted=True),
                                ],
                            ),
                        )
                    ),
                    where=exp.Where(
                        this=exp.EQ(
                            this=exp.column(plan.pk, table="t", quoted=True),
                            expression=_cast(exp.column("key", table="v", quoted=True), key_type),
                        )
                    ),
                )
                keys = [_as_text(f.key) for f in part]
                news = [_as_text(f.new) for f in part]
                try:
                    with conn.transaction():  # a savepoint
                        conn.execute(render(stmt), (keys, news))
                    continue
                except psycopg.DataError:
                    pass  # e.g. a REAL for an integer column: one by one, as assigned
            for f in part:
                one = exp.Update(
                    this=table.copy(),
                    expressions=[
                        exp.EQ(this=exp.column(column, quoted=True), expression=exp.Placeholder())
                    ],
                    where=exp.Where(
                        this=exp.EQ(
                            this=exp.column(plan.pk, quoted=True), expression=exp.Placeholder()
                        )
                    ),
                )
                conn.execute(render(one), (f.new, f.key))


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
