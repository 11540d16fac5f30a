"""The shared context of the re-import's passes (:mod:`recovery.reimport.merge` runs them in order):
one :class:`Context` per run, plus the small SQL builders every pass uses for the TEMP tables.

TEMP tables, by pass: ``ins:<t>``/``upd:<t>`` (staging), ``skip:<t>``/``uskip:<t>`` (rowids of
staged inserts/updates not carried), ``remap:<t>`` (old_key → new_key), ``typed:<t>`` (the staged
inserts in the target's affinities, for its rules), ``rowc:<t>``/``json:<t>`` (row conflicts, merged
JSON cells), ``chk:<t>`` (rowids whose foreign keys the check reads), ``del:<t>`` (rows deleted on
request), ``present:<t>`` (rowids of staged inserts already in the target, created on first
use). Every write goes through :attr:`Context.script`: the plan as executed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from recovery.bundle.store import Bundle
from recovery.engine.schema import Schema, Table
from recovery.engine.sqlbuild import col, is_distinct, sql, table
from recovery.engine.timebound import interrupted
from recovery.files.uploads import FilesConfig
from recovery.model.labels import label_column
from recovery.model.outcome import Conflict, ConflictMode, ConflictPolicy, Outcome, Prefer
from recovery.reimport.constraints import Rules, read_rules
from recovery.reimport.script import Script
from recovery.reimport.target_fks import TargetFk, target_foreign_keys
from recovery.transpile.passes import Plan, TablePlan

KILL_ENV = "RECOVERY_TEST_KILL_AFTER_STATEMENTS"
"""Test-only fault injection: SIGKILL this process after N statements of the re-import transaction."""


class Counter:
    """Counts the re-import's statements; test-only fault injection (:data:`KILL_ENV`)."""

    def __init__(self) -> None:
        limit = os.environ.get(KILL_ENV)
        self.limit = int(limit) if limit and limit.isdigit() else None
        self.n = 0

    def tick(self) -> None:
        self.n += 1
        if self.limit is not None and self.n >= self.limit:
            os.kill(os.getpid(), signal.SIGKILL)


def temp_table(kind: str, name: str) -> exp.Table:
    """The TEMP table ``<kind>:<name>`` (see the module docstring for the kinds)."""
    return table(f"{kind}:{name}", "temp")


def lit(v: str) -> exp.Literal:
    """A string literal."""
    return exp.Literal.string(v)


def in_query(value: exp.Expression, query: exp.Select) -> exp.Expression:
    """``value IN (SELECT …)``."""
    return exp.In(this=value, query=query.subquery())


def rowid(alias: str) -> exp.Column:
    """``"alias".rowid``."""
    return exp.Column(this=exp.to_identifier("rowid"), table=exp.to_identifier(alias, quoted=True))


LARGE_PARENT = 50_000
"""Rows of a parent table from which a probe per row in the rows' own order reads one of its
pages from the file for nearly every row (SQLite's page cache, 2 MB by default, holds a few
thousand pages, a quarter of them B-tree interior pages at 1M rows). A check of many rows' keys
into the largest such parent probes it in key order instead (:func:`in_key_order`,
:meth:`Context.sorted_key`)."""


def in_key_order(rows: exp.Select, columns: list[str], alias: str) -> exp.Select:
    """``SELECT 1`` over the ``columns`` of the rows ``rows`` selects (its table ``alias``'s),
    materialized in the order of their values and read back as columns of ``alias``: a
    condition on ``alias`` added with ``.where`` then probes what it probes in key order — one
    read of each page it needs, not one per row. The same condition decides on the same
    values: SQLite gives a materialized subquery's columns the affinity and collation of the
    expressions they come from. ``LIMIT -1`` keeps SQLite from dropping the ORDER BY."""
    values = rows.copy()
    values.set(
        "expressions",
        [exp.alias_(col(c, alias), exp.to_identifier(c, quoted=True)) for c in columns],
    )
    values = values.order_by(*[col(c, alias) for c in columns]).limit(-1)
    name = exp.to_identifier(f"{alias}_in_key_order", quoted=True)
    return (
        exp.select("1")
        .from_(exp.alias_(exp.Table(this=name), exp.to_identifier(alias, quoted=True), table=True))
        .with_(name, as_=values, materialized=True)
    )


def rid_table(name: exp.Table) -> exp.Create:
    """``CREATE TABLE name (rid INTEGER PRIMARY KEY)``: a set of rowids."""
    return exp.Create(
        kind="TABLE",
        this=exp.Schema(
            this=name,
            expressions=[
                exp.ColumnDef(
                    this=exp.to_identifier("rid"),
                    kind=exp.DataType.build("INTEGER"),
                    constraints=[exp.ColumnConstraint(kind=exp.PrimaryKeyColumnConstraint())],
                )
            ],
        ),
    )


@dataclass
class Context:
    """What every pass of one re-import shares: the target connection (inside its transaction) and
    the plan as executed (:attr:`script`), the bundle and its plan, the target's schema and rules
    (read once), the policy, the outcome being filled, and the watch lists of the foreign-key
    check. Passes read and extend it only through these attributes and methods."""

    conn: sqlite3.Connection
    bundle: Bundle
    plan: Plan
    target: Schema
    policy: ConflictPolicy
    prefer: Prefer
    files: FilesConfig
    outcome: Outcome
    counter: Counter
    in_place: bool = False
    """The target already holds the post-deploy rows (``rollback --downgrade-to``): a bundle row
    whose key is present is the same record, transpiled by the app's own downgrade. Rows deleted
    after the deploy are back in it as after a restore (:mod:`recovery.restore.downgrade`), so deletes are
    listed and applied the same way."""
    present: set[tuple[str, int]] = field(default_factory=set)
    """(table, staged rowid) of bundle rows already in the target, skipped as no-ops."""
    fks: dict[str, tuple[TargetFk, ...]] | None = None
    """The target's own foreign keys by child table (read on first use)."""
    watched: set[str] = field(default_factory=set)
    """Tables with a ``chk:<t>`` TEMP table: rowids of rows whose foreign keys the check reads."""
    full: set[tuple[str, int]] = field(default_factory=set)
    """(child table, fk id) the check reads over the whole table (a WITHOUT ROWID table is involved)."""
    rowid_tables: dict[str, bool] = field(default_factory=dict)
    """Table name → has a rowid (False: WITHOUT ROWID)."""
    moving: dict[str, list[int]] = field(default_factory=dict)
    """Table name → :meth:`moving_columns` (the staged updates do not change once staged)."""
    rules_of: dict[str, Rules] = field(default_factory=dict)
    """Table name → the target's own row rules (read on first use)."""
    quiet: bool = False
    """Every trigger on a table the re-import writes was suspended while it wrote: none fired."""
    mode: ConflictMode = ConflictMode.CELL
    """``--conflicts``: compare rows changed on both sides cell by cell or as whole rows."""
    json_tables: set[str] = field(default_factory=set)
    """Tables with a ``json:<t>`` TEMP table: (rid, ci, merged) — the merged text of JSON cells
    both sides changed (``rid``: the staged update's rowid, ``ci``: the updatable column's index)."""
    row_tables: set[str] = field(default_factory=set)
    """Tables with a ``rowc:<t>`` TEMP table: rids of staged updates that are row conflicts (``row``)."""
    script: Script | None = None
    """Every write of the re-import goes through it: the plan as executed (``reimport.sql``); the
    DELETEs not applied are its :attr:`Script.deferred` (``deletes.sql``)."""
    fk_clean: bool | Callable[[], bool] = False
    """The target passed a full ``foreign_key_check`` with no problems right before this
    transaction (the rollback's staged file under a sound
    :class:`~recovery.verify.checks.StagedProof`): every foreign key of every row resolved then.
    A callable is asked when the check needs the answer (:meth:`StagedProof.clean_if_decided`:
    the checks of the file as it was before this transaction may still be running; False until
    they have ended).
    The check of what the re-import wrote (:func:`recovery.reimport.fkcheck.fk_problems`) then
    reads, of an updated row, only the keys on columns the UPDATE set."""
    set_columns: dict[str, set[str]] = field(default_factory=dict)
    """Table name → lower-cased names of the columns an UPDATE of the re-import set (any
    attempt's: a superset of what the committed one set)."""

    def __post_init__(self) -> None:
        if self.script is None:
            self.script = Script(self.conn)

    # ---- helpers -------------------------------------------------------------------------
    def run(self, stmt: exp.Expression, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Execute ``stmt``: a read directly, a write through :attr:`script` (so it is in the plan)."""
        self.counter.tick()
        if isinstance(stmt, (exp.Select, exp.Pragma)):
            return self.conn.execute(sql(stmt), params)
        assert self.script is not None
        return self.script.execute(stmt, params)

    def rows(self, stmt: exp.Expression) -> list[tuple[Any, ...]]:
        return self.run(stmt).fetchall()

    def rows_if_runs(self, stmt: exp.Expression) -> list[tuple[Any, ...]] | None:
        """:meth:`rows`, or None when SQLite cannot run ``stmt`` (a query standing for others the
        caller runs instead); the statement time limit's interrupt is re-raised: the run fails."""
        try:
            return self.rows(stmt)
        except sqlite3.OperationalError as exc:
            if interrupted(exc):
                raise
            return None

    def finds_row(self, query: exp.Select) -> bool:
        """Whether ``query`` (a pre-check standing for narrower queries) finds a row; True when
        SQLite cannot run it, so the narrower queries run (and handle that)."""
        rows = self.rows_if_runs(query.limit(1))
        return rows is None or bool(rows)

    def old(self, name: str) -> Table:
        return self.bundle.old.tables[name]

    def staged(self) -> list[TablePlan]:
        return [tp for tp in self.plan.tables if tp.insert_select is not None]

    def label(self, t: Table, alias: str) -> exp.Expression:
        """The column naming a row of ``t`` to a person, as ``alias``'s (NULL when none)."""
        name = label_column(t)
        return col(name, alias) if name else exp.Null()

    def skip(self, name: str, rid_query: exp.Select) -> int:
        stmt = exp.Insert(this=temp_table("skip", name), expression=rid_query, alternative="IGNORE")
        return self.run(stmt).rowcount

    def mark_present(self, name: str, rid: int) -> None:
        """Staged insert ``rid`` of ``name`` is already in the target, the very same record: it is
        not inserted (``skip:<t>``) and, unlike a skipped row, its unit still lands — its
        ``present:<t>`` row keeps :mod:`..skips` from skipping its children (created on first use,
        so a run with no such row writes the same ``reimport.sql`` as before)."""
        if not any(t == name for t, _ in self.present):
            self.run(
                exp.Create(
                    kind="TABLE",
                    this=exp.Schema(
                        this=temp_table("present", name),
                        expressions=[
                            exp.ColumnDef(
                                this=exp.to_identifier("rid"),
                                kind=exp.DataType.build("INTEGER"),
                                constraints=[
                                    exp.ColumnConstraint(kind=exp.PrimaryKeyColumnConstraint())
                                ],
                            )
                        ],
                    ),
                )
            )
        self.present.add((name, rid))
        rid_query = exp.select(exp.Literal.number(rid))
        self.run(
            exp.Insert(this=temp_table("present", name), expression=rid_query, alternative="IGNORE")
        )
        self.skip(name, rid_query.copy())

    def skipped_unit(self, name: str, alias: str) -> exp.Expression:
        """Row ``alias`` of ``ins:<name>`` is skipped and not merely already present: its unit
        (children, cascade parents, file records) does not land."""
        skipped = in_query(
            exp.column("rowid", alias), exp.select("rid").from_(temp_table("skip", name))
        )
        if not any(t == name for t, _ in self.present):
            return skipped
        present = in_query(
            exp.column("rowid", alias), exp.select("rid").from_(temp_table("present", name))
        )
        return exp.and_(skipped, exp.Not(this=present))

    def rules(self, name: str) -> Rules:
        """The target's CHECK/NOT NULL/STRICT/unique-index rules and generated columns of ``name``."""
        if name not in self.rules_of:
            self.rules_of[name] = read_rules(self.conn, name)
        return self.rules_of[name]

    def generated(self, name: str) -> set[str]:
        """Lower-cased names of ``name``'s generated columns: never written, never compared."""
        return {g.lower() for g in self.rules(name).generated}

    def writable(self, name: str) -> list[str]:
        """The old schema's columns of ``name`` an INSERT or UPDATE may set (not generated)."""
        gen = self.generated(name)
        return [c for c in self.old(name).column_names if c.lower() not in gen]

    def live(self, alias: str, name: str, kind: str = "skip") -> exp.Expression:
        """Row ``alias`` of a staged table of ``name`` is not in its ``skip`` (or ``uskip``) set."""
        return exp.Not(
            this=in_query(
                exp.column("rowid", alias), exp.select("rid").from_(temp_table(kind, name))
            )
        )

    def sorted_key(self, parents: list[str]) -> int | None:
        """Of keys into the tables ``parents`` (in order), the index of the one a check probes in
        key order (:func:`in_key_order`): the key into the largest parent, when that held
        :data:`LARGE_PARENT` rows or more before the re-import (counted for every data table of
        the bundle); None when none did (probing in the rows' order reads few pages)."""
        sizes = {n.lower(): t.rows_before for n, t in self.outcome.tables.items()}
        rows = [sizes.get(p.lower(), 0) for p in parents]
        if not rows or max(rows) < LARGE_PARENT:
            return None
        return rows.index(max(rows))

    # ---- foreign keys of what the re-import writes ------------------------------------------
    def target_fks(self) -> dict[str, tuple[TargetFk, ...]]:
        if self.fks is None:
            self.fks = target_foreign_keys(self.conn)
        return self.fks

    def fks_into(self, parent: str) -> list[TargetFk]:
        return [
            fk
            for fks in self.target_fks().values()
            for fk in fks
            if fk.parent_exists and fk.parent.lower() == parent.lower()
        ]

    def has_rowid(self, name: str) -> bool:
        if name not in self.rowid_tables:
            try:
                self.conn.execute(
                    sql(exp.select(rowid("t")).from_(table(name, "main", "t")).limit(0))
                )
                self.rowid_tables[name] = True
            except sqlite3.OperationalError:  # WITHOUT ROWID
                self.rowid_tables[name] = False
        return self.rowid_tables[name]

    def watch(self, name: str, rowids: exp.Select) -> None:
        """Add the rowids ``rowids`` selects to the rows of ``name`` whose foreign keys are checked."""
        if name not in self.watched:
            self.run(rid_table(temp_table("chk", name)))
            self.watched.add(name)
        self.run(exp.Insert(this=temp_table("chk", name), expression=rowids, alternative="IGNORE"))

    def watch_children(
        self, parent: str, parent_rowids: exp.Select, columns: set[str] | None = None
    ) -> None:
        """Before rows of ``parent`` (``parent_rowids``) are deleted, or their ``columns`` changed:
        remember every row referencing one of them through a key on those columns, so the check
        proves it still has a parent afterwards (the delete's own guard is thereby checked too)."""
        for fk in self.fks_into(parent):
            if columns is not None and not {c.lower() for c in fk.ref_columns} & columns:
                continue
            if not (self.has_rowid(parent) and self.has_rowid(fk.table)):
                self.full.add((fk.table, fk.id))
                continue
            self.watch(
                fk.table,
                exp.select(rowid("c"))
                .from_(table(parent, "main", "p"))
                .join(table(fk.table, "main", "c"), on=fk.link("c", "p"))
                .where(in_query(rowid("p"), parent_rowids)),
            )

    def moving_columns(self, tp: TablePlan) -> list[int]:
        """Indexes of the updatable columns some bundle row changed (theirs differs from base): only
        those can take a new value, so only they are SET — SQLite then leaves alone every index
        on the others (a SET column is re-indexed in every updated row, changed or not)."""
        if not tp.updatable:
            return []
        if tp.table not in self.moving:  # detection, apply and the FK check all ask: one scan
            q = exp.select(
                *[
                    exp.func("max", is_distinct(col(f"theirs_{i}"), col(f"base_{i}")))
                    for i in range(len(tp.updatable))
                ]
            ).from_(temp_table("upd", tp.table))
            gen = self.generated(tp.table)  # a generated column is never written
            self.moving[tp.table] = [
                i
                for i, moved in enumerate(self.rows(q)[0])
                if moved and tp.updatable[i].lower() not in gen
            ]
        return self.moving[tp.table]

    def row_columns(self, tp: TablePlan) -> list[int]:
        """Indexes of every updatable column that may be written (generated ones never are)."""
        gen = self.generated(tp.table)
        return [i for i, n in enumerate(tp.updatable) if n.lower() not in gen]

    def tp(self, name: str) -> TablePlan:
        tp = self.plan.table(name)
        assert tp is not None
        return tp

    def conflict(self, c: Conflict) -> None:
        self.outcome.conflicts.append(c)
