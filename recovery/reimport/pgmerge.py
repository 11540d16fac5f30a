"""Re-importing a bundle into a PostgreSQL database: the three-way merge in ONE server transaction.

The same contract as the SQLite re-import (:mod:`recovery.reimport.merge`), built for the server:

1. stage — the plan's SELECTs (:mod:`recovery.transpile.passes`) run over the bundle's own SQLite
   files (``rows.db``/``base.db``, read-only); their rows are streamed with ``COPY … FROM STDIN``
   into TEMP tables of text (``_recovery_r<kind>_<i>``), then cast in SQL to the target column
   types (``format_type`` of each column: numeric, timestamptz, jsonb, arrays, enums, bytea, uuid)
   into ``_recovery_ins_<i>`` (rows to insert) and ``_recovery_upd_<i>`` (key, theirs_j, base_j).
   A bundle written by the PostgreSQL extract holds PostgreSQL's own text output of each value,
   so the cast gives back the identical value; one written by the SQLite extract holds SQLite
   values, sent as text (blobs as bytea hex).
2. detect — set-based queries on the server, with the SQLite re-import's kinds: ``primary_key``
   (the very same row already there is a no-op), ``unique`` (target rows and staged twins),
   ``constraint`` (NOT NULL, the target's CHECK constraints evaluated over the typed rows),
   ``missing_parent``, ``update_deleted``, ``update_update`` (cell by cell, or by row).
3. resolve — ``--on-conflict remap`` gives a taken integer key the next keys of the table's
   sequence/identity (above every key in use and the live database's counter) and carries them
   to every staged reference (foreign keys, updated rows, polymorphic entity links); skipped
   units are propagated (children of a skipped parent; a skipped child of an ``ON DELETE
   CASCADE`` parent skips the parent).
4. apply — deferrable constraints deferred (``SET CONSTRAINTS ALL DEFERRED``), each enabled user
   trigger of a written table disabled by name and enabled again before the COMMIT (so a
   rollback restores it too), inserts parents first, the column-wise three-way UPDATE, deletes
   only with ``--apply-deletes`` and only of rows unchanged since the backup that nothing
   references (an ``ON DELETE CASCADE`` never fires), every sequence set past every carried id
   (``setval``, skipped under ``--dry-run``: sequences are not transactional), and the
   ``_recovery_applied`` row with the outcome, so a second run is a no-op.

Every statement that writes is a sqlglot tree rendered for ``postgres`` (DDL sqlglot has no node
for is assembled from identifiers and literals sqlglot renders) and is kept, in order, by
:class:`PgScript`: ``run_dir/reimport.sql`` is the transaction as executed, values as literals and
the staged rows as ``COPY … FROM STDIN`` data, so ``psql -f reimport.sql`` on a copy of the target
taken before gives the same database. Any server error rolls everything back (exit 3).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import psycopg
import sqlglot
from sqlglot import exp

from recovery.bundle.store import Bundle
from recovery.engine.postgres import PostgresEngine, command, connect, ident, render
from recovery.engine.schema import APPLIED_TABLE, Schema, Table
from recovery.engine.sqlbuild import and_all, col, is_distinct, is_same, or_all, rendering_for
from recovery.errors import ExitCode, RecoveryError
from recovery.files.uploads import FilesConfig
from recovery.model.kinds import KIND_COLUMN, ConflictKind, Resolution, RowKind
from recovery.model.labels import label_column
from recovery.model.outcome import (
    Conflict,
    ConflictMode,
    ConflictPolicy,
    Outcome,
    Prefer,
    Remap,
    TableOutcome,
)
from recovery.options import MergeOptions
from recovery.reimport.applied import OUTCOME_COLUMN, check_target_schema
from recovery.reimport.context import KILL_ENV, Counter
from recovery.reimport.sequences import live_from_manifest
from recovery.transpile.passes import BASE_DB, Plan, TablePlan
from recovery.transpile.passes import plan as make_plan

__all__ = ["KILL_ENV", "PgScript", "reimport_postgres"]

SCHEMA = "public"
_DO_NOTHING = exp.OnConflict(action=exp.var("DO NOTHING"))
RID = "_recovery_rid"
"""The staged row's ordinal in every TEMP table (a name no application column takes)."""
NTH = "_recovery_nth"
"""A staged row's rank among the staged rows with the same unique values (``_unique``)."""


# ---- the plan as executed ----------------------------------------------------------------------


def copy_field(value: Any) -> str:
    """``value`` in ``COPY … FROM STDIN`` text format: SQLite/PostgreSQL values as their text
    (blobs as bytea hex, reals as their shortest exact decimal), ``\\N`` for NULL, backslash,
    tab, newline and carriage return escaped."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (bytes, bytearray, memoryview)):
        text = "\\x" + bytes(value).hex()
    elif isinstance(value, float):
        text = (
            repr(value)
            if math.isfinite(value)
            else ("NaN" if value != value else ("Infinity" if value > 0 else "-Infinity"))
        )
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@dataclass
class _Copy:
    """A ``COPY … FROM STDIN`` step: its header and the spool file holding its data lines (an
    unlinked temporary file: nothing is left on disk once the process ends, even killed)."""

    header: str
    data: IO[str]


@dataclass
class PgScript:
    """Executes the re-import's writes on ``conn`` and keeps them, in order: SQL text, or a COPY
    whose data is spooled to a private temporary file (never a whole table in memory)."""

    conn: psycopg.Connection[Any]
    counter: Counter = field(default_factory=Counter)
    steps: list[str | _Copy] = field(default_factory=list)
    last: str = ""
    """The statement executed last (the one that failed, when one did)."""

    def execute(self, stmt: exp.Expression) -> Any:
        """Run a writing statement; recorded once the server accepted it."""
        self.counter.tick()
        text = render(stmt)
        self.last = text
        cur = self.conn.execute(text)
        self.steps.append(text)
        return cur

    def read(self, stmt: exp.Expression, params: Sequence[Any] | None = None) -> list[Any]:
        """Rows of a reading statement (not a step: it changes nothing)."""
        self.counter.tick()
        self.last = render(stmt)
        return list(self.conn.execute(self.last, params).fetchall())

    def copy(self, target: exp.Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """``COPY target (columns) FROM STDIN`` with ``rows``, streamed in batches."""
        self.counter.tick()
        cols = ", ".join(exp.to_identifier(c, quoted=True).sql("postgres") for c in columns)
        header = f"COPY {target.sql('postgres')} ({cols}) FROM STDIN"
        n = 0
        fh = tempfile.TemporaryFile(
            "w+", encoding="utf-8", newline="\n", prefix="recovery-pgimport-"
        )
        with self.conn.cursor() as cur:
            with cur.copy(header) as cp:
                batch: list[str] = []
                for row in rows:
                    batch.append("\t".join(copy_field(v) for v in row) + "\n")
                    n += 1
                    if len(batch) >= 2000:
                        chunk = "".join(batch)
                        cp.write(chunk.encode("utf-8"))
                        fh.write(chunk)
                        batch = []
                chunk = "".join(batch)
                if chunk:
                    cp.write(chunk.encode("utf-8"))
                    fh.write(chunk)
        self.steps.append(_Copy(header, fh))
        return n

    def lines(self, head: Sequence[str], foot: Sequence[str], comment: str) -> Iterator[str]:
        yield from (f"-- {ln}".rstrip() for ln in comment.splitlines())
        yield from (f"{h};" for h in head)
        for step in self.steps:
            if isinstance(step, _Copy):
                yield f"{step.header};"
                step.data.flush()
                step.data.seek(0)
                for line in step.data:
                    yield line.rstrip("\n")
                yield "\\."
            else:
                yield step.rstrip().rstrip(";") + ";"
        yield from (f"{f};" for f in foot)

    def write(self, path: Path, committed: bool, note: str) -> Path:
        """Write the script to ``path`` (0600 via a temporary file renamed over it)."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        comment = (
            f"{note}\nThe re-import exactly as executed, in order, with its values as literals and the "
            "staged rows as COPY data:\napplied with psql to a copy of the target taken before the "
            "re-import (psql -v ON_ERROR_STOP=1 -f reimport.sql) it gives the same database."
        )
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        with open(fd, "w", encoding="utf-8", newline="\n") as fh:
            for line in self.lines(
                ["BEGIN", "SET CONSTRAINTS ALL DEFERRED"],
                ["COMMIT" if committed else "ROLLBACK"],
                comment,
            ):
                fh.write(line + "\n")
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        for step in self.steps:
            if isinstance(step, _Copy):
                step.data.close()


# ---- small builders ----------------------------------------------------------------------------


def _t(name: str, alias: str | None = None) -> exp.Table:
    """The target's table ``public.name``."""
    t = exp.Table(
        this=exp.to_identifier(name, quoted=True), db=exp.to_identifier(SCHEMA, quoted=True)
    )
    if alias:
        t.set("alias", exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))
    return t


def _tmp(kind: str, i: int, alias: str | None = None) -> exp.Table:
    """The TEMP table ``_recovery_<kind>_<i>`` (``i``: the staged table's index)."""
    t = exp.Table(this=exp.to_identifier(f"_recovery_{kind}_{i}", quoted=True))
    if alias:
        t.set("alias", exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))
    return t


def _pgtype(text: str) -> exp.DataType:
    """A column type as the server's own ``format_type`` text (user types stay quoted)."""
    return exp.DataType(this=exp.DataType.Type.USERDEFINED, kind=text)


def _cast(e: exp.Expression, type_text: str) -> exp.Cast:
    return exp.Cast(this=e, to=_pgtype(type_text))


def _num(n: int) -> exp.Literal:
    return exp.Literal.number(n)


def _not_in(rid: exp.Expression, skip: exp.Table) -> exp.Expression:
    return exp.Not(this=exp.In(this=rid, query=exp.select(col(RID)).from_(skip).subquery()))


def _in(rid: exp.Expression, skip: exp.Table) -> exp.Expression:
    return exp.In(this=rid, query=exp.select(col(RID)).from_(skip).subquery())


def _create_temp(name: exp.Table, query: exp.Select) -> exp.Create:
    return exp.Create(
        kind="TABLE",
        this=name,
        expression=query,
        properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
    )


def _rid_table(name: exp.Table) -> exp.Create:
    return exp.Create(
        kind="TABLE",
        this=exp.Schema(
            this=name,
            expressions=[
                exp.ColumnDef(
                    this=exp.to_identifier(RID, quoted=True),
                    kind=exp.DataType.build("BIGINT"),
                    constraints=[exp.ColumnConstraint(kind=exp.PrimaryKeyColumnConstraint())],
                )
            ],
        ),
        properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
    )


def _plain(v: Any) -> Any:
    """A value read from the server as outcome.json can hold it (numbers, text, bytes)."""
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return v
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() and abs(v) < 2**63 else str(v)
    if isinstance(v, memoryview):
        return bytes(v)
    if isinstance(v, datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


# ---- the target's catalog ----------------------------------------------------------------------


@dataclass(frozen=True)
class PgColumn:
    name: str
    type: str
    not_null: bool
    generated: bool
    identity: str
    """``a`` (GENERATED ALWAYS), ``d`` (BY DEFAULT) or empty."""


_COLUMNS = (
    "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, "
    "a.attgenerated <> '', a.attidentity FROM pg_catalog.pg_attribute AS a "
    "JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)
_CHECKS = (
    "SELECT k.conname, pg_catalog.pg_get_constraintdef(k.oid) FROM pg_catalog.pg_constraint AS k "
    "JOIN pg_catalog.pg_class AS c ON c.oid = k.conrelid "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relname = %s AND k.contype = 'c' ORDER BY k.conname"
)
_TRIGGERS = (
    "SELECT t.tgname FROM pg_catalog.pg_trigger AS t JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %s AND c.relname = %s AND NOT t.tgisinternal AND t.tgenabled <> 'D' "
    "ORDER BY t.tgname"
)
_SEQUENCE = "SELECT pg_catalog.pg_get_serial_sequence(%s, %s)"
_LAST_VALUE = "SELECT pg_catalog.pg_sequence_last_value(CAST(%s AS regclass))"
_APPLIED_EXISTS = "SELECT pg_catalog.to_regclass(%s) IS NOT NULL"


def _qualified(name: str) -> str:
    """``"public"."name"`` as text, for catalog functions that take a relation name."""
    return f"{ident(SCHEMA)}.{ident(name)}"


class Catalog:
    """What the merge needs of the target's catalog, read once per table on this connection."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn
        self._cols: dict[str, dict[str, PgColumn]] = {}
        self._seq: dict[tuple[str, str], str | None] = {}

    def columns(self, name: str) -> dict[str, PgColumn]:
        if name not in self._cols:
            rows = self.conn.execute(_COLUMNS, (SCHEMA, name)).fetchall()
            self._cols[name] = {
                r[0]: PgColumn(r[0], r[1], bool(r[2]), bool(r[3]), r[4] or "") for r in rows
            }
        return self._cols[name]

    def type_of(self, name: str, column: str) -> str:
        c = self.columns(name).get(column)
        return c.type if c is not None else "text"

    def writable(self, name: str, columns: Sequence[str]) -> list[str]:
        cols = self.columns(name)
        return [c for c in columns if c in cols and not cols[c].generated]

    def checks(self, name: str) -> list[tuple[str, str]]:
        return [(str(a), str(b)) for a, b in self.conn.execute(_CHECKS, (SCHEMA, name)).fetchall()]

    def triggers(self, name: str) -> list[str]:
        return [str(r[0]) for r in self.conn.execute(_TRIGGERS, (SCHEMA, name)).fetchall()]

    def sequence(self, name: str, column: str) -> str | None:
        """The sequence behind ``name.column`` (serial or identity), as regclass text, or None."""
        if (name, column) not in self._seq:
            row = self.conn.execute(_SEQUENCE, (_qualified(name), column)).fetchone()
            self._seq[(name, column)] = row[0] if row else None
        return self._seq[(name, column)]

    def last_value(self, seq: str) -> int:
        row = self.conn.execute(_LAST_VALUE, (seq,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


# ---- one run -----------------------------------------------------------------------------------


@dataclass
class _Staged:
    i: int
    tp: TablePlan
    columns: list[str]
    """The staged insert's columns (the old schema's, as the plan selects them)."""


@dataclass
class PgMerge:
    """One re-import on ``conn`` (transaction open): the passes share these attributes."""

    conn: psycopg.Connection[Any]
    script: PgScript
    bundle: Bundle
    plan: Plan
    target: Schema
    merge: MergeOptions
    files: FilesConfig
    outcome: Outcome
    dry_run: bool
    cat: Catalog = field(init=False)
    staged: list[_Staged] = field(default_factory=list)
    present: set[tuple[str, int]] = field(default_factory=set)
    remapped: dict[tuple[str, int], int] = field(default_factory=dict)
    """(table, staged rid) → index in outcome.conflicts of its primary_key conflict."""
    unremapped: set[tuple[str, int]] = field(default_factory=set)
    """Remapped rows skipped after all (reported as skipped, their remaps dropped)."""
    lite: sqlite3.Connection | None = None
    """The bundle's rows.db and base.db (attached read-only), where the plan's SELECTs run."""
    deferred: list[str] = field(default_factory=list)
    """The DELETEs ``--apply-deletes`` would run, not run (``deletes.sql``, for review)."""

    def __post_init__(self) -> None:
        self.cat = Catalog(self.conn)

    # -- helpers
    def run(self, stmt: exp.Expression) -> Any:
        return self.script.execute(stmt)

    def rows(self, stmt: exp.Expression) -> list[Any]:
        return self.script.read(stmt)

    def table(self, name: str) -> Table:
        return self.target.tables[name]

    def by_name(self, name: str) -> _Staged | None:
        return next((s for s in self.staged if s.tp.table == name), None)

    def label(self, name: str, alias: str) -> exp.Expression:
        c = label_column(self.table(name))
        return exp.Cast(this=col(c, alias), to=exp.DataType.build("TEXT")) if c else exp.Null()

    def skip(self, s: _Staged, rids: exp.Select, kind: str = "skip") -> int:
        stmt = exp.Insert(
            this=_tmp(kind, s.i),
            expression=rids,
            conflict=_DO_NOTHING.copy(),
        )
        return int(self.run(stmt).rowcount or 0)

    def skip_rids(self, s: _Staged, rids: list[int], kind: str = "skip") -> None:
        if rids:
            values = exp.Values(expressions=[exp.Tuple(expressions=[_num(r)]) for r in rids])
            self.run(
                exp.Insert(this=_tmp(kind, s.i), expression=values, conflict=_DO_NOTHING.copy())
            )

    def conflict(self, c: Conflict) -> None:
        self.outcome.conflicts.append(c)

    def bundle_key(self, name: str, rid: int, key: Sequence[Any]) -> tuple[Any, ...]:
        """The key staged row ``rid`` of ``name`` has in the bundle (its remap is undone)."""
        at = self.remapped.get((name, rid))
        return self.outcome.conflicts[at].key if at is not None else tuple(_plain(v) for v in key)


# ---- 1. stage ----------------------------------------------------------------------------------


def _stage(m: PgMerge, lite: sqlite3.Connection) -> None:
    """Stream each staged table's plan SELECTs into TEMP tables and cast them to the target types."""
    from recovery.engine.sqlbuild import sql

    for i, tp in enumerate(t for t in m.plan.tables if t.insert_select is not None):
        assert tp.insert_select is not None and tp.update_select is not None
        name, t = tp.table, m.table(tp.table)
        for kind, select in (("ins", tp.insert_select), ("upd", tp.update_select)):
            cur = lite.execute(sql(select, "sqlite"))
            names = [d[0] for d in cur.description]
            raw = _tmp(f"r{kind}", i)
            m.run(
                exp.Create(
                    kind="TABLE",
                    this=exp.Schema(
                        this=raw,
                        expressions=[
                            exp.ColumnDef(
                                this=exp.to_identifier(c, quoted=True), kind=exp.DataType.build(t_)
                            )
                            for c, t_ in [(RID, "BIGINT"), *[(n, "TEXT") for n in names]]
                        ],
                    ),
                    properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
                )
            )
            m.script.copy(raw, [RID, *names], ((n, *r) for n, r in enumerate(_batches(cur), 1)))
            if kind == "ins":
                types = {n: m.cat.type_of(name, n) for n in names}
                m.staged.append(_Staged(i, tp, names))
            else:
                types = {f"key_{j}": m.cat.type_of(name, k) for j, k in enumerate(t.key)}
                for j, u in enumerate(tp.updatable):
                    types[f"theirs_{j}"] = types[f"base_{j}"] = m.cat.type_of(name, u)
            m.run(
                _create_temp(
                    _tmp(kind, i),
                    exp.select(
                        col(RID, "r"),
                        *[
                            exp.alias_(_cast(col(n, "r"), types.get(n, "text")), n, quoted=True)
                            for n in names
                        ],
                    ).from_(_tmp(f"r{kind}", i, "r")),
                )
            )
            m.run(
                exp.Drop(kind="TABLE", tables=[_tmp(f"r{kind}", i)])
            )  # the text copy is no longer needed
        for kind in ("ins", "upd"):  # row counts for the planner: the joins below stay hash joins
            m.run(command(f"ANALYZE {_tmp(kind, i).sql('postgres')}"))
        for kind in ("skip", "uskip", "present"):
            m.run(_rid_table(_tmp(kind, i)))
        to = m.outcome.tables.setdefault(name, TableOutcome(name))
        to.bundle_inserted = _count(m, _tmp("ins", i))
        to.bundle_updated = _count(m, _tmp("upd", i))


def _batches(cur: sqlite3.Cursor) -> Iterator[tuple[Any, ...]]:
    while True:
        rows = cur.fetchmany(2000)
        if not rows:
            return
        yield from rows


def _count(m: PgMerge, t: exp.Table, where: exp.Expression | None = None) -> int:
    q = exp.select(exp.Count(this=exp.Star())).from_(t)
    if where is not None:
        q = q.where(where)
    return int(m.rows(q)[0][0])


# ---- 2. detect ---------------------------------------------------------------------------------


def _key_eq(
    key: Sequence[str], a: str, b: str, b_names: Sequence[str] | None = None
) -> exp.Expression:
    return and_all(
        exp.EQ(this=col(k, a), expression=col((b_names or key)[j], b)) for j, k in enumerate(key)
    )


def _primary_key(m: PgMerge, s: _Staged) -> None:
    """Staged rows whose key the target holds: the same row is a no-op; a different one is a
    ``primary_key`` conflict, remapped (an integer key under remap) or skipped."""
    t = m.table(s.tp.table)
    key = t.primary_key
    if not key:
        return
    same_key = _key_eq(key, "t", "s")
    identical = and_all(
        is_same(col(c, "t"), col(c, "s")) for c in m.cat.writable(t.name, s.columns)
    )
    q = (
        exp.select(
            col(RID, "s"),
            *[col(k, "s") for k in key],
            m.label(t.name, "s"),
            exp.Exists(
                this=exp.select("1").from_(_t(t.name, "t")).where(and_all([same_key, identical]))
            ),
        )
        .from_(_tmp("ins", s.i, "s"))
        .where(exp.Exists(this=exp.select("1").from_(_t(t.name, "t")).where(same_key.copy())))
        .order_by(col(RID, "s"))
    )
    taken, present = [], []
    for rid, *rest in m.rows(q):
        k, label, same = (
            tuple(_plain(v) for v in rest[: len(key)]),
            rest[len(key)],
            rest[len(key) + 1],
        )
        if same:
            present.append(rid)
            continue
        taken.append((rid, k, label))
    m.outcome.tables[t.name].already_present += len(present)
    m.present |= {(t.name, r) for r in present}
    m.skip_rids(s, present)
    m.skip_rids(s, present, "present")
    kcol = m.cat.columns(t.name).get(key[0]) if len(key) == 1 else None
    remappable = (
        m.merge.on_conflict is ConflictPolicy.REMAP
        and kcol is not None
        and kcol.type in ("integer", "bigint", "smallint")
    )
    for rid, k, label in taken:
        if remappable:
            m.remapped[(t.name, rid)] = len(m.outcome.conflicts)
        m.conflict(
            Conflict(
                ConflictKind.PRIMARY_KEY,
                t.name,
                k,
                Resolution.REMAPPED if remappable else Resolution.SKIPPED,
                label=label,
                detail="the key is taken in the target by a different row",
            )
        )
    if not taken:
        return
    if remappable:
        _remap(m, s, [rid for rid, _, _ in taken])
    else:
        m.skip_rids(s, [rid for rid, _, _ in taken])


def _remap(m: PgMerge, s: _Staged, rids: list[int]) -> None:
    """Fresh keys for rows ``rids``: the next values of the table's sequence/identity above every
    key in use (target, staged) and the live database's counter; every staged reference follows."""
    name = s.tp.table
    k = m.table(name).primary_key[0]
    live = {n.lower(): v for n, v in live_from_manifest(m.bundle.manifest).items()}
    seq = m.cat.sequence(name, k)
    floor = [
        exp.select(exp.func("max", col(k))).from_(_t(name)).subquery(),
        exp.select(exp.func("max", col(k))).from_(_tmp("ins", s.i)).subquery(),
        _num(int(live.get(name.lower(), 0))),
    ]
    if seq is not None:
        floor.append(
            exp.func(
                "pg_sequence_last_value",
                exp.Cast(this=exp.Literal.string(seq), to=_pgtype("regclass")),
            )
        )
    base = exp.func("coalesce", exp.func("greatest", *floor), _num(0))
    remap = _tmp("remap", s.i)
    m.run(
        _create_temp(
            remap,
            exp.select(
                exp.alias_(col(RID, "s"), RID, quoted=True),
                exp.alias_(col(k, "s"), "old_key", quoted=True),
                exp.alias_(
                    exp.Add(
                        this=exp.Paren(this=base),
                        expression=exp.Window(
                            this=exp.RowNumber(),
                            order=exp.Order(expressions=[exp.Ordered(this=col(k, "s"))]),
                        ),
                    ),
                    "new_key",
                    quoted=True,
                ),
            )
            .from_(_tmp("ins", s.i, "s"))
            .where(exp.In(this=col(RID, "s"), expressions=[_num(r) for r in rids])),
        )
    )
    pairs = m.rows(exp.select(col("old_key"), col("new_key")).from_(remap).order_by(col("old_key")))
    m.outcome.remaps += [Remap(name, _plain(o), _plain(n)) for o, n in pairs]
    m.outcome.tables[name].remapped += len(pairs)
    _rewrite(m, _tmp("ins", s.i), k, remap, by_rid=True)
    for child in m.staged:
        ct = m.table(child.tp.table)
        for fk in ct.foreign_keys:
            if fk.ref_table == name and len(fk.columns) == 1 and fk.ref_columns[0] == k:
                _rewrite(m, _tmp("ins", child.i), fk.columns[0], remap)
                if fk.columns[0] in child.tp.updatable:
                    j = child.tp.updatable.index(fk.columns[0])
                    _rewrite(m, _tmp("upd", child.i), f"theirs_{j}", remap)
        if (
            child.tp.table == m.files.table
            and m.files.entity_id in child.columns
            and (m.files.entity_type in child.columns)
        ):
            kinds = [exp.Literal.string(name), exp.Literal.string(name.rstrip("s"))]
            _rewrite(
                m,
                _tmp("ins", child.i),
                m.files.entity_id,
                remap,
                extra=exp.In(this=col(m.files.entity_type, "c"), expressions=kinds),
            )


def _rewrite(
    m: PgMerge,
    target: exp.Table,
    column: str,
    remap: exp.Table,
    by_rid: bool = False,
    extra: exp.Expression | None = None,
) -> None:
    """``UPDATE target SET column = new_key`` where it names a remapped old key (``by_rid``: the
    remapped rows themselves)."""
    c = target.copy()
    c.set("alias", exp.TableAlias(this=exp.to_identifier("c", quoted=True)))
    cond: list[exp.Expression] = [
        exp.EQ(
            this=col(RID if by_rid else column, "c"),
            expression=col(RID if by_rid else "old_key", "r"),
        )
    ]
    if extra is not None:
        cond.append(extra)
    m.run(
        exp.Update(
            this=c,
            expressions=[exp.EQ(this=col(column), expression=col("new_key", "r"))],
            from_=exp.From(this=_alias(remap, "r")),
            where=exp.Where(this=and_all(cond)),
        )
    )


def _alias(t: exp.Table, alias: str) -> exp.Table:
    c = t.copy()
    c.set("alias", exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))
    return c


def _unique(m: PgMerge, s: _Staged) -> None:
    """Staged rows whose unique columns the target holds in another row, or that a staged row
    with a smaller ordinal already takes: ``unique`` conflicts, skipped."""
    t = m.table(s.tp.table)
    for u in t.unique_sets:
        if not u or tuple(u) == tuple(t.primary_key) or not set(u) <= set(s.columns):
            continue
        notnull = [exp.Not(this=exp.Is(this=col(c), expression=exp.Null())) for c in u]
        same = _key_eq(u, "t", "s")
        in_target = exp.Exists(this=exp.select("1").from_(_t(t.name, "t")).where(same))
        # a staged row is a twin when a non-skipped staged row with a smaller ordinal carries the
        # same values: its rank among them, one window pass (a correlated EXISTS over the staged
        # table would scan it once per staged row: quadratic, minutes at 1M)
        nth = exp.Window(
            this=exp.RowNumber(),
            partition_by=[col(c) for c in u],
            order=exp.Order(expressions=[exp.Ordered(this=col(RID))]),
        )
        ranked = (
            exp.select(exp.Star(), exp.alias_(nth, NTH, quoted=True))
            .from_(_tmp("ins", s.i))
            .where(and_all([*notnull, _not_in(col(RID), _tmp("skip", s.i))]))
        )
        twin = exp.GT(this=col(NTH, "s"), expression=exp.Literal.number(1))
        q = (
            exp.select(
                col(RID, "s"),
                *[col(k, "s") for k in t.key],
                m.label(t.name, "s"),
                *[exp.Cast(this=col(c, "s"), to=exp.DataType.build("TEXT")) for c in u],
                in_target,
            )
            .from_(ranked.subquery("s"))
            .where(or_all([in_target.copy(), twin]))
            .order_by(col(RID, "s"))
        )
        nk = len(t.key)
        hits = m.rows(q)
        for rid, *rest in hits:
            values = rest[nk + 1 : nk + 1 + len(u)]
            m.conflict(
                Conflict(
                    ConflictKind.UNIQUE,
                    t.name,
                    m.bundle_key(t.name, rid, rest[:nk]),
                    Resolution.SKIPPED,
                    column=",".join(u),
                    bundle_value=values[0] if len(values) == 1 else json.dumps(values),
                    label=rest[nk],
                    detail=f"({', '.join(u)}) is taken in the target"
                    if rest[-1]
                    else f"({', '.join(u)}) is taken by another bundle row",
                )
            )
        m.skip_rids(s, [r[0] for r in hits])


def _constraint(m: PgMerge, s: _Staged) -> None:
    """Staged rows the target's own DDL refuses: a NULL in a NOT NULL column, a CHECK that is
    false; ``constraint`` conflicts, skipped."""
    t = m.table(s.tp.table)
    rules: list[tuple[str, str, exp.Expression]] = []
    cols = m.cat.columns(t.name)
    for c in m.cat.writable(t.name, s.columns):
        if cols[c].not_null:
            rules.append(
                (
                    c,
                    f"{c} is NULL; NOT NULL in the target",
                    exp.Is(this=col(c, "s"), expression=exp.Null()),
                )
            )
    for cname, definition in m.cat.checks(t.name):
        body = definition.strip()
        if not body.upper().startswith("CHECK"):
            continue
        body = body[5:].strip()
        if body.upper().endswith("NOT VALID"):
            body = body[: -len("NOT VALID")].strip()
        try:
            tree = sqlglot.parse_one(body, read="postgres")
        except sqlglot.errors.ParseError:
            continue  # the server still refuses the row: the apply fails and rolls back
        for c_ in tree.find_all(exp.Column):
            c_.set("table", exp.to_identifier("s", quoted=True))
        rules.append(
            (
                cname,
                f"CHECK {cname} fails",
                exp.Is(this=exp.Paren(this=tree), expression=exp.false()),
            )
        )
    nk = len(t.key)
    for column, detail, bad in rules:
        q = (
            exp.select(col(RID, "s"), *[col(k, "s") for k in t.key], m.label(t.name, "s"))
            .from_(_tmp("ins", s.i, "s"))
            .where(and_all([bad, _not_in(col(RID, "s"), _tmp("skip", s.i))]))
            .order_by(col(RID, "s"))
        )
        hits = m.rows(q)
        for rid, *rest in hits:
            m.conflict(
                Conflict(
                    ConflictKind.CONSTRAINT,
                    t.name,
                    m.bundle_key(t.name, rid, rest[:nk]),
                    Resolution.SKIPPED,
                    column=column,
                    label=rest[nk],
                    detail=detail,
                )
            )
        m.skip_rids(s, [r[0] for r in hits])


def _missing_parent(m: PgMerge, s: _Staged) -> None:
    """Staged rows whose parent is in neither the target nor the bundle: skipped."""
    t = m.table(s.tp.table)
    nk = len(t.key)
    for fk in t.foreign_keys:
        if fk.ref_table not in m.target.tables or not set(fk.columns) <= set(s.columns):
            continue
        link = and_all(
            exp.EQ(this=col(pc, "p"), expression=col(cc, "s"))
            for pc, cc in zip(fk.ref_columns, fk.columns, strict=True)
        )
        present = [exp.Exists(this=exp.select("1").from_(_t(fk.ref_table, "p")).where(link))]
        parent = m.by_name(fk.ref_table)
        if parent is not None and set(fk.ref_columns) <= set(parent.columns):
            present.append(
                exp.Exists(
                    this=exp.select("1").from_(_tmp("ins", parent.i, "p")).where(link.copy())
                )
            )
        q = (
            exp.select(
                col(RID, "s"),
                *[col(k, "s") for k in t.key],
                m.label(t.name, "s"),
                *[exp.Cast(this=col(c, "s"), to=exp.DataType.build("TEXT")) for c in fk.columns],
            )
            .from_(_tmp("ins", s.i, "s"))
            .where(
                and_all(
                    [
                        *[
                            exp.Not(this=exp.Is(this=col(c, "s"), expression=exp.Null()))
                            for c in fk.columns
                        ],
                        exp.Not(this=or_all(present)),
                        _not_in(col(RID, "s"), _tmp("skip", s.i)),
                    ]
                )
            )
            .order_by(col(RID, "s"))
        )
        hits = m.rows(q)
        for rid, *rest in hits:
            value = rest[nk + 1] if len(fk.columns) == 1 else json.dumps(rest[nk + 1 :])
            m.conflict(
                Conflict(
                    ConflictKind.MISSING_PARENT,
                    t.name,
                    m.bundle_key(t.name, rid, rest[:nk]),
                    Resolution.SKIPPED,
                    column=",".join(fk.columns),
                    bundle_value=value,
                    label=rest[nk],
                    detail=f"{fk.ref_table} row {value} is not in the target",
                )
            )
        m.skip_rids(s, [r[0] for r in hits])


def _moving(m: PgMerge, s: _Staged) -> list[int]:
    """Indexes of the updatable columns some staged update changes (theirs differs from base)."""
    tp = s.tp
    if not tp.updatable:
        return []
    q = exp.select(
        *[
            exp.func("bool_or", is_distinct(col(f"theirs_{j}"), col(f"base_{j}")))
            for j in range(len(tp.updatable))
        ]
    ).from_(_tmp("upd", s.i))
    flags = m.rows(q)[0]
    writable = set(m.cat.writable(tp.table, tp.updatable))
    return [j for j, f in enumerate(flags) if f and tp.updatable[j] in writable]


def _update(m: PgMerge, s: _Staged) -> list[int]:
    """``update_deleted`` (skipped) and ``update_update`` conflicts of the staged updates; the
    moving columns for the apply. ``--conflicts row``: one conflict per row changed on both sides."""
    tp, t = s.tp, m.table(s.tp.table)
    nk = len(t.key)
    key_match = and_all(
        exp.EQ(this=col(k, "t"), expression=col(f"key_{j}", "u")) for j, k in enumerate(t.key)
    )
    gone = (
        exp.select(col(RID, "u"), *[col(f"key_{j}", "u") for j in range(nk)])
        .from_(_tmp("upd", s.i, "u"))
        .where(
            exp.Not(this=exp.Exists(this=exp.select("1").from_(_t(t.name, "t")).where(key_match)))
        )
        .order_by(col(RID, "u"))
    )
    hits = m.rows(gone)
    for _rid, *k in hits:
        m.conflict(
            Conflict(
                ConflictKind.UPDATE_DELETED,
                t.name,
                tuple(_plain(v) for v in k),
                Resolution.SKIPPED,
                detail="changed after the deploy but deleted in the target since",
            )
        )
    m.skip_rids(s, [r[0] for r in hits], "uskip")
    moving = _moving(m, s)
    if not moving:
        return moving
    resolution = Resolution.KEPT_TARGET if m.merge.prefer is Prefer.DB else Resolution.APPLIED
    th = lambda j: col(f"theirs_{j}", "u")  # noqa: E731
    ba = lambda j: col(f"base_{j}", "u")  # noqa: E731
    ou = lambda j: col(tp.updatable[j], "t")  # noqa: E731
    txt = lambda e: exp.Cast(this=e, to=exp.DataType.build("TEXT"))  # noqa: E731
    if m.merge.conflicts is ConflictMode.ROW:
        every = [j for j, n in enumerate(tp.updatable) if n in m.cat.writable(t.name, [n])]
        cond = and_all(
            [
                or_all(is_distinct(th(j), ba(j)) for j in moving),
                or_all(is_distinct(ou(j), ba(j)) for j in every),
                or_all(is_distinct(ou(j), th(j)) for j in every),
            ]
        )
        cells = [
            e
            for j in every
            for e in (
                is_distinct(th(j), ba(j)),
                is_distinct(ou(j), ba(j)),
                txt(th(j)),
                txt(ou(j)),
                txt(ba(j)),
            )
        ]
        q = (
            exp.select(
                col(RID, "u"),
                *[col(f"key_{j}", "u") for j in range(nk)],
                m.label(t.name, "t"),
                *cells,
            )
            .from_(_tmp("upd", s.i, "u"))
            .join(_t(t.name, "t"), on=key_match.copy())
            .where(and_all([cond, _not_in(col(RID, "u"), _tmp("uskip", s.i))]))
            .order_by(col(RID, "u"))
        )
        rowc = _tmp("rowc", s.i)
        m.run(_rid_table(rowc))
        hit_rids = []
        for rid, *row in m.rows(q):
            hit_rids.append(rid)
            changed_b, changed_t, th_d, ou_d, ba_d = [], [], {}, {}, {}
            for n, j in enumerate(every):
                bm, tm, tv, ov, bv = row[nk + 1 + 5 * n : nk + 6 + 5 * n]
                name = tp.updatable[j]
                if bm or tm:
                    th_d[name], ou_d[name], ba_d[name] = tv, ov, bv
                    (changed_b.append(name) if bm else None)
                    (changed_t.append(name) if tm else None)
            m.conflict(
                Conflict(
                    ConflictKind.UPDATE_UPDATE,
                    t.name,
                    tuple(_plain(v) for v in row[:nk]),
                    resolution,
                    column=",".join(th_d),
                    bundle_value=json.dumps(th_d, sort_keys=True),
                    target_value=json.dumps(ou_d, sort_keys=True),
                    base_value=json.dumps(ba_d, sort_keys=True),
                    label=row[nk],
                    detail=f"row changed after the deploy ({', '.join(changed_b)}) and in the target "
                    f"since ({', '.join(changed_t)}); --conflicts row",
                )
            )
        if hit_rids:
            values = exp.Values(expressions=[exp.Tuple(expressions=[_num(r)]) for r in hit_rids])
            m.run(exp.Insert(this=rowc, expression=values))
        return moving
    cols = m.cat.columns(t.name)
    for j in moving:
        name = tp.updatable[j]
        clash = and_all(
            [is_distinct(th(j), ba(j)), is_distinct(ou(j), ba(j)), is_distinct(ou(j), th(j))]
        )
        nulled: exp.Expression = exp.false()
        if cols[name].not_null:  # a NULL the target cannot hold: the target's value is kept
            clash = and_all([clash, exp.Not(this=exp.Is(this=th(j), expression=exp.Null()))])
            nulled = and_all([exp.Is(this=th(j), expression=exp.Null()), is_distinct(th(j), ba(j))])
        q = (
            exp.select(
                *[col(f"key_{k}", "u") for k in range(nk)],
                m.label(t.name, "t"),
                txt(th(j)),
                txt(ou(j)),
                txt(ba(j)),
                nulled.copy(),
            )
            .from_(_tmp("upd", s.i, "u"))
            .join(_t(t.name, "t"), on=key_match.copy())
            .where(and_all([or_all([clash, nulled]), _not_in(col(RID, "u"), _tmp("uskip", s.i))]))
            .order_by(col(RID, "u"))
        )
        for row in m.rows(q):
            key = tuple(_plain(v) for v in row[:nk])
            if row[nk + 4]:
                m.conflict(
                    Conflict(
                        ConflictKind.CONSTRAINT,
                        t.name,
                        key,
                        Resolution.KEPT_TARGET,
                        column=name,
                        target_value=row[nk + 2],
                        base_value=row[nk + 3],
                        label=row[nk],
                        detail=f"{name} became NULL after the deploy; NOT NULL in the target",
                    )
                )
                continue
            m.conflict(
                Conflict(
                    ConflictKind.UPDATE_UPDATE,
                    t.name,
                    key,
                    resolution,
                    column=name,
                    bundle_value=row[nk + 1],
                    target_value=row[nk + 2],
                    base_value=row[nk + 3],
                    label=row[nk],
                    detail="changed after the deploy and, differently, in the target since",
                )
            )
    return moving


def _propagate(m: PgMerge) -> None:
    """Skip whole units: staged children of skipped staged parents (inserts, and updates pointing
    at them), the parents of skipped children they own by ``ON DELETE CASCADE``, and the file
    records of skipped entities; until nothing changes."""
    for _ in range(len(m.staged) * 2 + 2):
        changed = 0
        for child in m.staged:
            ct = m.table(child.tp.table)
            for fk in ct.foreign_keys:
                parent = m.by_name(fk.ref_table)
                if parent is None or not set(fk.columns) <= set(child.columns):
                    continue
                if not set(fk.ref_columns) <= set(parent.columns):
                    continue
                link = and_all(
                    exp.EQ(this=col(pc, "p"), expression=col(cc, "c"))
                    for pc, cc in zip(fk.ref_columns, fk.columns, strict=True)
                )
                q = (
                    exp.select(col(RID, "c"))
                    .from_(_tmp("ins", child.i, "c"))
                    .join(_tmp("ins", parent.i, "p"), on=link)
                    .where(
                        and_all(
                            [
                                _in(col(RID, "p"), _tmp("skip", parent.i)),
                                # a parent skipped as already in the target is there
                                _not_in(col(RID, "p"), _tmp("present", parent.i)),
                                _not_in(col(RID, "c"), _tmp("skip", child.i)),
                            ]
                        )
                    )
                )
                changed += m.skip(child, q)
                if len(fk.columns) == 1 and fk.columns[0] in child.tp.updatable:
                    j = child.tp.updatable.index(fk.columns[0])
                    uq = (
                        exp.select(col(RID, "c"))
                        .from_(_tmp("upd", child.i, "c"))
                        .join(
                            _tmp("ins", parent.i, "p"),
                            on=exp.EQ(
                                this=col(fk.ref_columns[0], "p"), expression=col(f"theirs_{j}", "c")
                            ),
                        )
                        .where(
                            and_all(
                                [
                                    _in(col(RID, "p"), _tmp("skip", parent.i)),
                                    _not_in(col(RID, "p"), _tmp("present", parent.i)),
                                    _not_in(col(RID, "c"), _tmp("uskip", child.i)),
                                    # a parent the target holds is still there
                                    exp.Not(
                                        this=exp.Exists(
                                            this=exp.select("1")
                                            .from_(_t(fk.ref_table, "q"))
                                            .where(
                                                exp.EQ(
                                                    this=col(fk.ref_columns[0], "q"),
                                                    expression=col(f"theirs_{j}", "c"),
                                                )
                                            )
                                        )
                                    ),
                                ]
                            )
                        )
                    )
                    changed += m.skip(child, uq, "uskip")
                if (fk.on_delete or "").upper() == "CASCADE":
                    pq = (
                        exp.select(col(RID, "p"))
                        .from_(_tmp("ins", parent.i, "p"))
                        .join(_tmp("ins", child.i, "c"), on=link.copy())
                        .where(
                            and_all(
                                [
                                    _in(col(RID, "c"), _tmp("skip", child.i)),
                                    _not_in(col(RID, "p"), _tmp("skip", parent.i)),
                                    _not_in(col(RID, "c"), _tmp("present", child.i)),
                                ]
                            )
                        )
                    )
                    changed += m.skip(parent, pq)
            changed += _skip_entity_links(m, child)
        if not changed:
            return


def _skip_entity_links(m: PgMerge, s: _Staged) -> int:
    """File records whose entity (``entity_type``/``entity_id``) is a skipped staged row."""
    f = m.files
    files = m.by_name(f.table)
    if files is None or files is s or not {f.entity_type, f.entity_id} <= set(files.columns):
        return 0
    t = m.table(s.tp.table)
    if len(t.primary_key) != 1:
        return 0
    k = t.primary_key[0]
    kinds = [exp.Literal.string(s.tp.table), exp.Literal.string(s.tp.table.rstrip("s"))]
    q = (
        exp.select(col(RID, "c"))
        .from_(_tmp("ins", files.i, "c"))
        .join(
            _tmp("ins", s.i, "p"),
            on=exp.EQ(
                this=exp.Cast(this=col(k, "p"), to=exp.DataType.build("TEXT")),
                expression=exp.Cast(this=col(f.entity_id, "c"), to=exp.DataType.build("TEXT")),
            ),
        )
        .where(
            and_all(
                [
                    exp.In(this=col(f.entity_type, "c"), expressions=kinds),
                    _in(col(RID, "p"), _tmp("skip", s.i)),
                    _not_in(col(RID, "c"), _tmp("skip", files.i)),
                    exp.Not(
                        this=exp.Exists(
                            this=exp.select("1")
                            .from_(_t(s.tp.table, "q"))
                            .where(exp.EQ(this=col(k, "q"), expression=col(k, "p")))
                        )
                    ),
                ]
            )
        )
    )
    return m.skip(files, q)


def _settle(m: PgMerge) -> None:
    """Remapped rows skipped after all are reported as skipped; rows skipped only because their
    unit was are listed in ``skipped_rows``."""
    for s in m.staged:
        t = m.table(s.tp.table)
        skipped = {r[0] for r in m.rows(exp.select(col(RID)).from_(_tmp("skip", s.i)))}
        for (name, rid), at in list(m.remapped.items()):
            if name == t.name and rid in skipped and (name, rid) not in m.unremapped:
                c = m.outcome.conflicts[at]
                m.outcome.conflicts[at] = Conflict(
                    c.kind,
                    c.table,
                    c.key,
                    Resolution.SKIPPED,
                    c.column,
                    c.bundle_value,
                    c.target_value,
                    c.base_value,
                    c.label,
                    c.detail + "; not remapped: the row was skipped",
                )
                m.outcome.tables[name].remapped -= 1
                m.unremapped.add((name, rid))
        own = {(c.table, tuple(c.key)) for c in m.outcome.conflicts}
        q = (
            exp.select(col(RID, "s"), *[col(k, "s") for k in t.key], m.label(t.name, "s"))
            .from_(_tmp("ins", s.i, "s"))
            .where(_in(col(RID, "s"), _tmp("skip", s.i)))
            .order_by(col(RID, "s"))
        )
        for rid, *rest in m.rows(q):
            k = list(m.bundle_key(t.name, rid, rest[: len(t.key)]))
            if (t.name, tuple(k)) in own or (t.name, rid) in m.present:
                continue
            m.outcome.skipped_rows.append(
                {
                    "table": t.name,
                    "key": k,
                    "label": rest[-1],
                    "kind": "insert",
                    "reason": "its unit was skipped (see conflicts)",
                }
            )
        uq = (
            exp.select(*[col(f"key_{j}", "u") for j in range(len(t.key))])
            .from_(_tmp("upd", s.i, "u"))
            .where(_in(col(RID, "u"), _tmp("uskip", s.i)))
            .order_by(col(RID, "u"))
        )
        for row in m.rows(uq):
            k = [_plain(v) for v in row]
            if (t.name, tuple(k)) in own:
                continue
            m.outcome.skipped_rows.append(
                {
                    "table": t.name,
                    "key": k,
                    "label": None,
                    "kind": "update",
                    "reason": "it points at a skipped new row",
                }
            )
    remapped = {(name, rid) for name, rid in m.remapped if (name, rid) not in m.unremapped}
    kept: list[Remap] = []  # the remaps of the rows still carried
    if remapped:
        for s in m.staged:
            rids = [rid for name, rid in remapped if name == s.tp.table]
            if not rids:
                continue
            q = (
                exp.select(col("old_key"), col("new_key"))
                .from_(_tmp("remap", s.i))
                .where(exp.In(this=col(RID), expressions=[_num(r) for r in rids]))
                .order_by(col("old_key"))
            )
            kept += [Remap(s.tp.table, _plain(o), _plain(n)) for o, n in m.rows(q)]
    m.outcome.remaps = kept


# ---- 4. apply ----------------------------------------------------------------------------------


def _alter(name: str, action: str) -> exp.Command:
    return command(f"ALTER TABLE {ident(SCHEMA)}.{ident(name)} {action}")


def _apply(m: PgMerge, moving: dict[str, list[int]]) -> None:
    written = [s.tp.table for s in m.staged]
    if m.merge.apply_deletes:
        written += sorted(set(m.bundle.tables_with_deletes()) - set(written))
    suspended: list[tuple[str, str]] = []
    for name in written:
        if name not in m.target.tables:
            continue
        for tg in m.cat.triggers(name):
            m.run(_alter(name, f"DISABLE TRIGGER {ident(tg)}"))
            suspended.append((name, tg))
    m.outcome.triggers_suspended = [tg for _, tg in suspended]
    m.outcome.sequences = _sequences(m)
    for s in m.staged:
        _insert(m, s)
    for s in m.staged:
        _update_rows(m, s, moving.get(s.tp.table, []))
    _deletes(m)
    for name, tg in suspended:
        m.run(_alter(name, f"ENABLE TRIGGER {ident(tg)}"))


def _insert(m: PgMerge, s: _Staged) -> None:
    name = s.tp.table
    cols = m.cat.writable(name, s.columns)
    select = (
        exp.select(*[col(c, "s") for c in cols])
        .from_(_tmp("ins", s.i, "s"))
        .where(_not_in(col(RID, "s"), _tmp("skip", s.i)))
        .order_by(col(RID, "s"))
    )
    ins = exp.Insert(
        this=exp.Schema(
            this=_t(name), expressions=[exp.to_identifier(c, quoted=True) for c in cols]
        ),
        expression=select,
    )
    always = any(m.cat.columns(name)[c].identity == "a" for c in cols)
    if always:  # an identity GENERATED ALWAYS column takes the carried key only when told so
        head, _, tail = render(ins).partition(" SELECT ")
        stmt: exp.Expression = command(f"{head} OVERRIDING SYSTEM VALUE SELECT {tail}")
    else:
        stmt = ins
    n = int(m.run(stmt).rowcount or 0)
    m.outcome.tables[name].inserted += n
    m.outcome.tables[name].skipped += _count(m, _tmp("skip", s.i)) - sum(
        1 for t, _ in m.present if t == name
    )


def _written_columns(m: PgMerge, s: _Staged, moving: list[int]) -> list[int]:
    """The updatable columns the UPDATE may set: those some bundle row changed, and with
    ``--conflicts row --prefer bundle`` every writable one (a conflicting row is taken whole)."""
    if not moving:
        return []
    if m.merge.conflicts is ConflictMode.ROW and m.merge.prefer is Prefer.BUNDLE:
        writable = set(m.cat.writable(s.tp.table, s.tp.updatable))
        return [j for j, n in enumerate(s.tp.updatable) if n in writable]
    return moving


def _take(m: PgMerge, s: _Staged, j: int) -> exp.Expression:
    """Staged update ``u`` writes the bundle's value of column ``j`` into target row ``t``: the
    bundle changed it and the target did not (or ``--prefer bundle``); never a NULL into NOT NULL;
    ``--conflicts row``: a row changed on both sides is kept whole (``db``) or taken whole
    (``bundle``)."""
    tp, t = s.tp, m.table(s.tp.table)
    th, ba, ou = col(f"theirs_{j}", "u"), col(f"base_{j}", "u"), col(tp.updatable[j], "t")
    bundle_wins = m.merge.prefer is Prefer.BUNDLE
    row_mode = m.merge.conflicts is ConflictMode.ROW
    if bundle_wins:
        take = is_distinct(th, ba)
    else:
        take = and_all([is_distinct(th, ba), is_same(ou, ba.copy())])
    if row_mode and bundle_wins:
        take = or_all([take, _in(col(RID, "u"), _tmp("rowc", s.i))])
    if not t.has(tp.updatable[j]).nullable or m.cat.columns(t.name)[tp.updatable[j]].not_null:
        take = and_all([take, exp.Not(this=exp.Is(this=th.copy(), expression=exp.Null()))])
    if row_mode and not bundle_wins:
        take = and_all([take, _not_in(col(RID, "u"), _tmp("rowc", s.i))])
    return take


def _key_match(t: Table) -> exp.Expression:
    return and_all(
        exp.EQ(this=col(k, "t"), expression=col(f"key_{j}", "u")) for j, k in enumerate(t.key)
    )


def _update_unique(m: PgMerge, s: _Staged, moving: list[int]) -> None:
    """Staged updates whose merged row would take unique values another target row holds: the
    server would refuse the UPDATE; each is a ``constraint`` conflict, not carried."""
    tp, t = s.tp, m.table(s.tp.table)
    cols = _written_columns(m, s, moving)
    written = {tp.updatable[j]: j for j in cols}
    nk = len(t.key)
    for u in t.unique_sets:
        if not u or tuple(u) == tuple(t.primary_key) or not set(u) & set(written):
            continue
        merged = {
            c: exp.Case(
                ifs=[exp.If(this=_take(m, s, written[c]), true=col(f"theirs_{written[c]}", "u"))],
                default=col(c, "t"),
            )
            if c in written
            else col(c, "t")
            for c in u
        }
        other = exp.Exists(
            this=exp.select("1")
            .from_(_t(t.name, "o"))
            .where(
                and_all(
                    [
                        *[exp.EQ(this=col(c, "o"), expression=merged[c].copy()) for c in u],
                        exp.Not(
                            this=and_all(
                                exp.EQ(this=col(k, "o"), expression=col(k, "t")) for k in t.key
                            )
                        ),
                    ]
                )
            )
        )
        q = (
            exp.select(
                col(RID, "u"), *[col(f"key_{j}", "u") for j in range(nk)], m.label(t.name, "t")
            )
            .from_(_tmp("upd", s.i, "u"))
            .join(_t(t.name, "t"), on=_key_match(t))
            .where(and_all([other, _not_in(col(RID, "u"), _tmp("uskip", s.i))]))
            .order_by(col(RID, "u"))
        )
        hits = m.rows(q)
        for _rid, *rest in hits:
            m.conflict(
                Conflict(
                    ConflictKind.CONSTRAINT,
                    t.name,
                    tuple(_plain(v) for v in rest[:nk]),
                    Resolution.SKIPPED,
                    column=",".join(u),
                    label=rest[nk],
                    detail=f"the update would take ({', '.join(u)}) held by another row of the target",
                )
            )
        m.skip_rids(s, [r[0] for r in hits], "uskip")


def _update_rows(m: PgMerge, s: _Staged, moving: list[int]) -> None:
    """The column-wise three-way UPDATE (:func:`_take` says which value each cell gets); only rows
    where some cell changes are written."""
    tp, t = s.tp, m.table(s.tp.table)
    cols = _written_columns(m, s, moving)
    if not cols:
        return
    sets, changes = [], []
    for j in cols:
        take = _take(m, s, j)
        th, ou = col(f"theirs_{j}", "u"), col(tp.updatable[j], "t")
        sets.append(
            exp.EQ(
                this=col(tp.updatable[j]),
                expression=exp.Case(ifs=[exp.If(this=take, true=th)], default=ou),
            )
        )
        changes.append(and_all([take.copy(), is_distinct(th.copy(), ou.copy())]))
    stmt = exp.Update(
        this=_t(t.name, "t"),
        expressions=sets,
        from_=exp.From(this=_tmp("upd", s.i, "u")),
        where=exp.Where(
            this=and_all(
                [_key_match(t), _not_in(col(RID, "u"), _tmp("uskip", s.i)), or_all(changes)]
            )
        ),
    )
    m.outcome.tables[t.name].updated += int(m.run(stmt).rowcount or 0)


def _deletes(m: PgMerge) -> None:
    """Rows deleted after the deploy came back with the restore: each is listed for review
    (``unchanged_since_backup``: the target still holds it as the backup had it); with
    ``--apply-deletes`` those unchanged rows that no row references are deleted, children's
    tables first (no ``ON DELETE CASCADE`` can fire: nothing references what is deleted)."""
    from recovery.engine.sqlbuild import sql

    lite = m.lite
    assert lite is not None
    order = [n for n in reversed(m.bundle.old.fk_order()) if n in m.target.tables]
    for n_del, name in enumerate(order):
        if m.bundle.counts.get(name, {}).get("deleted", 0) == 0:
            continue
        t = m.table(name)
        cols = [c for c in m.bundle.old.tables[name].column_names if c in m.cat.columns(name)]
        q = (
            exp.select(*[col(c, "d") for c in cols])
            .from_(
                exp.Table(
                    this=exp.to_identifier(name, quoted=True),
                    db=exp.to_identifier(BASE_DB),
                    alias=exp.TableAlias(this=exp.to_identifier("d")),
                )
            )
            .where(
                exp.EQ(
                    this=col(KIND_COLUMN, "d"),
                    expression=exp.Literal.string(RowKind.DELETED.value),
                )
            )
        )
        cur = lite.execute(sql(q, "sqlite"))
        raw, d = _tmp("rdel", n_del), _tmp("del", n_del)
        m.run(
            exp.Create(
                kind="TABLE",
                this=exp.Schema(
                    this=raw,
                    expressions=[
                        exp.ColumnDef(
                            this=exp.to_identifier(c, quoted=True),
                            kind=exp.DataType.build(t_),
                        )
                        for c, t_ in [(RID, "BIGINT"), *[(c, "TEXT") for c in cols]]
                    ],
                ),
                properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
            )
        )
        m.script.copy(raw, [RID, *cols], ((i, *r) for i, r in enumerate(_batches(cur), 1)))
        m.run(
            _create_temp(
                d,
                exp.select(
                    col(RID, "r"),
                    *[
                        exp.alias_(_cast(col(c, "r"), m.cat.type_of(name, c)), c, quoted=True)
                        for c in cols
                    ],
                ).from_(_tmp("rdel", n_del, "r")),
            )
        )
        # the key by plain equality (the target's key index finds the row), the rest NULL-safe
        keyed = bool(t.primary_key) and set(t.primary_key) <= set(cols)
        same = and_all(
            [
                *([_key_eq(t.primary_key, "t", "d")] if keyed else []),
                *[
                    is_same(col(c, "t"), col(c, "d"))
                    for c in cols
                    if not (keyed and c in t.primary_key)
                ],
            ]
        )
        listed = (
            exp.select(
                *[col(k, "d") for k in t.key],
                m.label(name, "d"),
                exp.Exists(this=exp.select("1").from_(_t(name, "t")).where(same)),
            )
            .from_(_alias(d, "d"))
            .order_by(col(RID, "d"))
        )
        nk = len(t.key)
        for row in m.rows(listed):
            m.outcome.deletes_for_review.append(
                {
                    "table": name,
                    "key": [_plain(v) for v in row[:nk]],
                    "label": row[nk],
                    "unchanged_since_backup": bool(row[nk + 1]),
                }
            )
        refs = []
        for child in m.target.tables.values():
            for fk in child.foreign_keys:
                if fk.ref_table == name:
                    refs.append(
                        exp.Exists(
                            this=exp.select("1")
                            .from_(_t(child.name, "c"))
                            .where(
                                and_all(
                                    exp.EQ(this=col(cc, "c"), expression=col(pc, "t"))
                                    for cc, pc in zip(fk.columns, fk.ref_columns, strict=True)
                                )
                            )
                        )
                    )
        matched = exp.Exists(this=exp.select("1").from_(_alias(d, "d")).where(same.copy()))
        where = and_all([matched, *[exp.Not(this=r) for r in refs]])
        delete = exp.Delete(this=_t(name, "t"), where=exp.Where(this=where))
        if not m.merge.apply_deletes:
            m.deferred.append(render(delete))
            continue
        n = int(m.run(delete).rowcount or 0)
        m.outcome.tables[name].deleted = n


def _sequences(m: PgMerge) -> list[dict[str, Any]]:
    """Every sequence/identity of a written table set past every key it holds and every key
    about to be carried (remapped ones included) and past the live database's counter. Done
    before the first insert, so an application session drawing keys meanwhile never gets one
    the re-import carries (``setval`` is not transactional: a rolled-back run leaves only a gap;
    not under ``--dry-run``)."""
    live = {n.lower(): v for n, v in live_from_manifest(m.bundle.manifest).items()}
    out: list[dict[str, Any]] = []
    for s in m.staged:
        name = s.tp.table
        for c in m.cat.columns(name).values():
            seq = m.cat.sequence(name, c.name)
            if seq is None:
                continue
            before = m.cat.last_value(seq)
            tops: list[exp.Expression] = [
                exp.select(exp.func("max", col(c.name))).from_(_t(name)).subquery()
            ]
            if c.name in s.columns:  # the keys about to be carried
                tops.append(
                    exp.select(exp.func("max", col(c.name)))
                    .from_(_tmp("ins", s.i, "s"))
                    .where(_not_in(col(RID, "s"), _tmp("skip", s.i)))
                    .subquery()
                )
            top = m.rows(exp.select(exp.func("greatest", *tops)))[0][0]
            top = int(top) if top is not None else 0
            want = max(top, int(live.get(name.lower(), 0)))
            entry = {
                "table": name,
                "backup": before,
                "live": live.get(name.lower()),
                "max_id": top,
                "seq": max(before, want),
            }
            if want > before and not m.dry_run:
                m.run(
                    exp.select(
                        exp.func(
                            "setval",
                            exp.Cast(this=exp.Literal.string(seq), to=_pgtype("regclass")),
                            _num(want),
                        )
                    )
                )
            out.append(entry)
    return out


# ---- bookkeeping -------------------------------------------------------------------------------


def _applied_table() -> exp.Table:
    return _t(APPLIED_TABLE)


def _already_applied(conn: psycopg.Connection[Any], bundle_id: str) -> bool:
    """``bundle_id`` was re-imported into this database already (its ``_recovery_applied`` row)."""
    row = conn.execute(_APPLIED_EXISTS, (_qualified(APPLIED_TABLE),)).fetchone()
    if not row or not row[0]:
        return False
    q = (
        exp.select("1")
        .from_(_applied_table())
        .where(exp.EQ(this=col("bundle_id"), expression=exp.Literal.string(bundle_id)))
    )
    return conn.execute(render(q)).fetchone() is not None


def _record_applied(m: PgMerge) -> None:
    from recovery import __version__

    m.run(
        exp.Create(
            kind="TABLE",
            exists=True,
            this=exp.Schema(
                this=_applied_table(),
                expressions=[
                    exp.ColumnDef(
                        this=exp.to_identifier(c, quoted=True), kind=exp.DataType.build("TEXT")
                    )
                    for c in ("bundle_id", "applied_at", "tool_version", "policy", OUTCOME_COLUMN)
                ],
            ),
        )
    )
    m.run(
        command(
            f"ALTER TABLE {ident(SCHEMA)}.{ident(APPLIED_TABLE)} ADD COLUMN IF NOT EXISTS "
            f"{ident(OUTCOME_COLUMN)} text"
        )
    )
    values = [
        m.bundle.bundle_id,
        datetime.now().isoformat(timespec="seconds"),
        __version__,
        m.merge.on_conflict.value,
    ]
    m.run(
        exp.Insert(
            this=exp.Schema(
                this=_applied_table(),
                expressions=[
                    exp.to_identifier(c, quoted=True)
                    for c in ("bundle_id", "applied_at", "tool_version", "policy")
                ],
            ),
            expression=exp.Values(
                expressions=[exp.Tuple(expressions=[exp.Literal.string(v) for v in values])]
            ),
        )
    )


def _record_outcome(m: PgMerge) -> None:
    m.run(
        exp.update(
            _applied_table(),
            {OUTCOME_COLUMN: exp.Literal.string(m.outcome.to_json())},
            where=exp.EQ(this=col("bundle_id"), expression=exp.Literal.string(m.bundle.bundle_id)),
        )
    )


# ---- the entry point ---------------------------------------------------------------------------


def reimport_postgres(
    target: str,
    bundle: Bundle,
    merge: MergeOptions,
    *,
    dry_run: bool = False,
    run_dir: Path | None = None,
    files: FilesConfig | None = None,
    busy_timeout: float = 10.0,
) -> Outcome:
    """Apply ``bundle`` to the PostgreSQL database ``target`` (a URL) in one transaction, as
    ``merge`` says (see the module docstring); ``dry_run``: the same work, rolled back. Writes
    ``run_dir/reimport.sql`` (the transaction as executed) when given. A server error, or a
    refusal by the target's own constraints at the end, rolls back and raises exit 3."""
    from recovery.compare.pgdiff import reflect_pg
    from recovery.engine.timebound import statement_time_limit
    from recovery.reimport.merge import attach_bundle, load_lost

    db = PostgresEngine(target)
    schema = reflect_pg(db)
    check_target_schema(bundle, schema)
    outcome = Outcome(
        bundle.bundle_id,
        db.spec,
        merge.on_conflict.value,
        dry_run,
        conflicts_mode=merge.conflicts.value,
    )
    lite = sqlite3.connect(":memory:")
    try:
        attach_bundle(lite, bundle)
        outcome.lost = load_lost(lite)
        conn = connect(db.url, "target database", timeout=busy_timeout)
        script = PgScript(conn)
        try:
            with rendering_for("postgres"), statement_time_limit(lite):
                _transaction(
                    conn,
                    script,
                    db,
                    bundle,
                    merge,
                    files or FilesConfig(),
                    outcome,
                    dry_run,
                    schema,
                    lite,
                    run_dir,
                )
        finally:
            conn.close()
            script.close()
    finally:
        lite.close()
    return outcome


def _transaction(
    conn: psycopg.Connection[Any],
    script: PgScript,
    db: PostgresEngine,
    bundle: Bundle,
    merge: MergeOptions,
    files: FilesConfig,
    outcome: Outcome,
    dry_run: bool,
    schema: Schema,
    lite: sqlite3.Connection,
    run_dir: Path | None,
) -> None:
    from recovery.engine.timebound import limit_seconds

    limit = limit_seconds()
    note = f"recovery reimport of bundle {bundle.bundle_id} into {db.spec}" + (
        " (dry run)" if dry_run else ""
    )
    committed = False
    m: PgMerge | None = None
    try:
        conn.execute("BEGIN")
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        # every statement bounded (the bundle is untrusted input): the server cancels one that
        # runs longer, and the transaction rolls back (exit 3)
        conn.execute(render(command(f"SET LOCAL statement_timeout = {max(1, int(limit * 1000))}")))
        if _already_applied(conn, bundle.bundle_id):
            outcome.already_applied = True
            conn.execute("ROLLBACK")
            return
        with rendering_for("sqlite"):  # the plan's SELECTs run over the bundle's SQLite files
            p = make_plan(bundle.old, bundle.new, bundle.mapping, bundle.tables_with_rows())
        if p.errors:
            raise RecoveryError(
                "the plan has errors, nothing was changed: " + "; ".join(p.errors),
                "add the missing columns to a mapping file and extract again",
            )
        m = PgMerge(conn, script, bundle, p, schema, merge, files, outcome, dry_run, lite=lite)
        for name in bundle.old.data_tables:
            outcome.tables.setdefault(name, TableOutcome(name)).rows_before = _count(m, _t(name))
        _stage(m, lite)
        for s in m.staged:
            _primary_key(m, s)
        for s in m.staged:
            _unique(m, s)
            _constraint(m, s)
        moving: dict[str, list[int]] = {}
        for s in m.staged:
            _missing_parent(m, s)
            moving[s.tp.table] = _update(m, s)
            _update_unique(m, s, moving[s.tp.table])
        _propagate(m)
        _settle(m)
        if merge.on_conflict is ConflictPolicy.ABORT and outcome.conflicts:
            outcome.aborted = True
            conn.execute("ROLLBACK")
            if run_dir is not None:
                script.write(run_dir / "reimport.sql", False, note)
            return
        _apply(m, moving)
        for name, c in bundle.counts.items():
            if name in outcome.tables:
                outcome.tables[name].bundle_deleted = c.get("deleted", 0)
                outcome.tables[name].lost = c.get("lost", 0)
        _record_applied(m)
        for name in bundle.old.data_tables:
            outcome.tables[name].rows_after = _count(m, _t(name))
        _record_outcome(m)
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the target's own check, before COMMIT
        if dry_run:
            conn.execute("ROLLBACK")
        else:
            conn.execute("COMMIT")
            committed = True
    except psycopg.errors.QueryCanceled:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        if run_dir is not None:
            script.write(run_dir / "reimport.sql", False, note + "\nFAILED (statement timeout)")
        raise RecoveryError(
            f"statement ran longer than {limit:g} s; nothing was applied",
            "the bundle may be forged or the data far larger than expected; raise the limit "
            "with --statement-timeout if it is genuine",
            ExitCode.FAILED,
        ) from None
    except psycopg.Error as exc:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if run_dir is not None:
            script.write(
                run_dir / "reimport.sql", False, note + f"\nFAILED and rolled back: {first}"
            )
        raise RecoveryError(
            f"re-import into {db.spec} failed and was rolled back: {first}",
            "nothing was changed; report this with the bundle",
            ExitCode.FAILED,
        ) from None
    except BaseException:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        raise
    if run_dir is not None:
        script.write(run_dir / "reimport.sql", committed, note)
        if m is not None and m.deferred:
            write_deletes_sql(run_dir / "deletes.sql", m.deferred)


DELETES_HEAD = (
    "Deletes listed for review and NOT applied (recovery reimport --apply-deletes applies them).",
    "Every statement is commented out; each deletes only rows unchanged since the backup that no",
    "row references. They read the temporary tables _recovery_del_N (the rows users deleted after",
    "the deploy), which reimport.sql loads inside its transaction: to run one by hand, put it",
    "(uncommented) before that script's COMMIT and run the script on a copy of the target taken",
    "before the re-import.",
)


def write_deletes_sql(path: Path, statements: Sequence[str]) -> Path:
    """``deletes.sql``: the DELETEs ``--apply-deletes`` would have run, each line commented out
    (as the SQLite run's), written 0600 through a temporary file renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with open(fd, "w", encoding="utf-8", newline="\n") as fh:
        for line in DELETES_HEAD:
            fh.write(f"-- {line}\n")
        for stmt in statements:
            for line in (stmt.rstrip().rstrip(";") + ";").splitlines():
                fh.write(f"-- {line}\n")
    os.replace(tmp, path)
    return path


# ---- the command's run -------------------------------------------------------------------------


def run_reimport_postgres(
    bundle: Bundle,
    db: str,
    out: str | os.PathLike[str] | None,
    options: Any,
    uploads: str | os.PathLike[str] | None = None,
    files: FilesConfig | None = None,
) -> Any:
    """``recovery reimport postgresql://… BUNDLE``: a ``pg_dump`` safety copy of the target into
    ``RUN/safety/`` (not for ``--dry-run``), the re-import in one transaction, its verification,
    the relink of uploads (:mod:`recovery.files.pgrelink`) and the run's report files; the
    :class:`recovery.pipeline.RunResult` the SQLite re-import returns."""
    from recovery.compare.pgdiff import reflect_pg
    from recovery.pipeline import RunResult, check_uploads, check_writable
    from recovery.report import write_run_files

    check_uploads(uploads)
    target = PostgresEngine(db)
    check_target_schema(bundle, reflect_pg(target))  # refused before any copy or write
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    dry_run = bool(getattr(options, "dry_run", False))
    run_dir = Path(out) if out else bundle.path / f"reimport-{stamp}{'-dry-run' if dry_run else ''}"
    check_writable(run_dir, "run folder (--out)")
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not dry_run:
        safety = run_dir / "safety"
        safety.mkdir(mode=0o700, exist_ok=True)
        target.snapshot(safety / f"{target.database}.dump", "target database")
    outcome = reimport_postgres(db, bundle, options, dry_run=dry_run, run_dir=run_dir, files=files)
    if not (dry_run or outcome.aborted or outcome.already_applied):
        from recovery.verify.pgchecks import verify_postgres

        outcome.verification = verify_postgres(target, outcome, bundle.old.alembic_revision)
    if uploads and not outcome.aborted:
        from recovery.files.pgrelink import relink_postgres

        outcome.files = relink_postgres(
            bundle, db, Path(uploads), files, dry_run=dry_run, remaps=outcome.remaps
        )
    return RunResult(run_dir, outcome, write_run_files(run_dir, outcome, bundle))
