"""Re-importing a bundle into the (restored) old-schema database: a three-way merge in ONE transaction.

Everything happens inside one ``BEGIN IMMEDIATE`` transaction on the target, with the bundle's
``rows.db`` attached read-only as ``bundle`` and ``base.db`` as ``base``:

1. stage — the plan's SELECTs fill TEMP tables: ``ins:<t>`` (rows to insert, old schema) and
   ``upd:<t>`` (key, theirs_i, base_i per updatable column);
2. detect — set-based queries find ``primary_key``, ``unique``, ``missing_parent``, ``constraint``,
   ``update_deleted`` and cell-level ``update_update`` conflicts; ``constraint`` covers every rule of
   the target's own DDL a row would break (:mod:`recovery.reimport.constraints`: NOT NULL, STRICT types,
   CHECK, unique indexes on expressions / partial / collated), evaluated over a typed copy;
3. resolve — by policy: remap integer keys (rewriting every bundle reference, entity links
   included) or skip whole units (a skipped parent skips its children; a skipped child of an
   ``ON DELETE CASCADE`` parent skips the parent: a quote never lands without its items);
4. apply — with the target's triggers on the written tables suspended (:mod:`recovery.reimport.triggers`):
   inserts parents first (generated columns never written), the column-wise three-way UPDATE,
   deletes only on request; a statement the target still refuses is narrowed to its rows (a
   SAVEPOINT each), whose units become ``constraint`` conflicts, and the apply runs again;
   AUTOINCREMENT counters are carried forward (:mod:`recovery.reimport.sequences`), the triggers re-created;
   ``_recovery_applied`` records the bundle id so a second run is a no-op;
5. check — :func:`merge_and_check`: every foreign key of every row the re-import wrote (inserted,
   updated, or a child of a row it deleted or whose referenced columns it changed) must resolve,
   checked set-based over the staged keys instead of a ``PRAGMA foreign_key_check`` of the whole
   file; any problem rolls everything back. The full pragma stays in :mod:`recovery.verify.checks`.
"""
from __future__ import annotations

import os
import signal
import sqlite3
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlglot import exp

from recovery.reimport import sequences, triggers
from recovery.reimport.script import Script, Step
from recovery.bundle.store import Bundle
from recovery.reimport.constraints import Rules, UniqueRule, read_rules, strict_violation, typed_copy
from recovery.errors import ExitCode, RecoveryError
from recovery.files.uploads import FilesConfig
from recovery.model.outcome import Conflict, ConflictMode, ConflictPolicy, Outcome, Prefer, Remap, TableOutcome
from recovery.engine.schema import Schema, Table
from recovery.engine.sqlbuild import and_all, col, is_distinct, is_same, or_all, sql, table
from recovery.transpile.passes import BASE_DB, BUNDLE_DB, KIND, Plan, TablePlan
from recovery.transpile.passes import plan as make_plan

APPLIED_TABLE = "_recovery_applied"
JSON_BATCH = 500
"""JSON cells changed on both sides are read into Python (:mod:`recovery.reimport.jsonmerge`) this many at a time."""
KILL_ENV = "RECOVERY_TEST_KILL_AFTER_STATEMENTS"
"""Test-only fault injection: SIGKILL this process after N statements of the re-import transaction."""


class _Counter:
    def __init__(self) -> None:
        limit = os.environ.get(KILL_ENV)
        self.limit = int(limit) if limit and limit.isdigit() else None
        self.n = 0

    def tick(self) -> None:
        self.n += 1
        if self.limit is not None and self.n >= self.limit:
            os.kill(os.getpid(), signal.SIGKILL)


def _t(kind: str, name: str) -> exp.Table:
    return table(f"{kind}:{name}", "temp")


def _lit(v: str) -> exp.Literal:
    return exp.Literal.string(v)


def _in(value: exp.Expression, query: exp.Select) -> exp.Expression:
    """``value IN (SELECT …)``."""
    return exp.In(this=value, query=query.subquery())


def _rowid(alias: str) -> exp.Column:
    return exp.Column(this=exp.to_identifier("rowid"), table=exp.to_identifier(alias, quoted=True))


def _rid_table(name: exp.Table) -> exp.Create:
    """``CREATE TABLE name (rid INTEGER PRIMARY KEY)``: a set of rowids."""
    return exp.Create(kind="TABLE", this=exp.Schema(this=name, expressions=[
        exp.ColumnDef(this=exp.to_identifier("rid"), kind=exp.DataType.build("INTEGER"),
                      constraints=[exp.ColumnConstraint(kind=exp.PrimaryKeyColumnConstraint())])]))


@dataclass(frozen=True)
class TargetFk:
    """One foreign key as the target database itself declares it (``PRAGMA foreign_key_list``), which
    is what ``PRAGMA foreign_key_check`` enforces: ``id`` is the number that pragma reports."""

    table: str
    id: int
    parent: str
    columns: tuple[str, ...]
    ref_columns: tuple[str, ...]
    parent_exists: bool
    """False also when the parent's key columns cannot be resolved: then every row setting the key
    is reported (where the pragma itself would fail with "foreign key mismatch")."""

    def link(self, child: str, parent: str) -> exp.Expression:
        """``parent.ref = child.col AND …`` — the parent column on the left, so its collation rules."""
        return and_all(exp.EQ(this=col(pc, parent), expression=col(cc, child))
                       for pc, cc in zip(self.ref_columns, self.columns, strict=True))

    def dangling(self, child: str) -> exp.Expression:
        """Row ``child`` violates this key: every key column set and no parent row has the values
        (every such row when the parent table does not exist, as the pragma reports it)."""
        notnull = [exp.Not(this=exp.Is(this=col(c, child), expression=exp.Null())) for c in self.columns]
        if not self.parent_exists:
            return and_all(notnull)
        orphan = exp.Not(this=exp.Exists(this=exp.select("1").from_(table(self.parent, "main", "p")).where(
            self.link(child, "p"))))
        return and_all([*notnull, orphan])


def target_foreign_keys(conn: sqlite3.Connection) -> dict[str, tuple[TargetFk, ...]]:
    """Every foreign key declared in ``main``, by child table (sorted), read from SQLite's catalog."""
    master = table("sqlite_master", "main")
    names = [r[0] for r in conn.execute(sql(exp.select(col("name")).from_(master).where(
        exp.EQ(this=col("type"), expression=_lit("table"))))) if not r[0].startswith("sqlite_")]
    lower = {n.lower() for n in names}
    fk_list = exp.select(col("id"), col("table"), col("from"), col("to")).from_(exp.Anonymous(
        this="pragma_foreign_key_list", expressions=[exp.Placeholder(), _lit("main")])).order_by(col("id"), col("seq"))
    pk_list = exp.select(col("name")).from_(exp.Anonymous(
        this="pragma_table_info", expressions=[exp.Placeholder(), _lit("main")])).where(
        exp.GT(this=col("pk"), expression=exp.Literal.number(0))).order_by(col("pk"))
    out: dict[str, tuple[TargetFk, ...]] = {}
    for name in sorted(names):
        groups: dict[int, list[tuple[str, str, str | None]]] = {}
        for fid, parent, frm, to in conn.execute(sql(fk_list), (name,)):
            groups.setdefault(fid, []).append((parent, frm, to))
        fks = []
        for fid, parts in sorted(groups.items()):
            parent = parts[0][0]
            exists = parent.lower() in lower
            refs = tuple(to for _, _, to in parts)
            if any(r is None for r in refs):  # the parent's primary key is meant
                refs = tuple(r[0] for r in conn.execute(sql(pk_list), (parent,))) if exists else ()
            # a key whose parent columns cannot be resolved (SQLite: "foreign key mismatch") is
            # treated like a missing parent table: every row that sets it is a problem
            usable = exists and len(refs) == len(parts)
            fks.append(TargetFk(name, fid, parent, tuple(f for _, f, _ in parts), refs if usable else (), usable))
        if fks:
            out[name] = tuple(fks)
    return out


@dataclass
class Merge:
    """One re-import in progress on an open target connection (inside its transaction)."""

    conn: sqlite3.Connection
    bundle: Bundle
    plan: Plan
    target: Schema
    policy: ConflictPolicy
    prefer: Prefer
    files: FilesConfig
    outcome: Outcome
    counter: _Counter
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

    def old(self, name: str) -> Table:
        return self.bundle.old.tables[name]

    def staged(self) -> list[TablePlan]:
        return [tp for tp in self.plan.tables if tp.insert_select is not None]

    def label(self, t: Table, alias: str) -> exp.Expression:
        from recovery.bundle.extract import label_column

        name = label_column(t)
        return col(name, alias) if name else exp.Null()

    def skip(self, name: str, rid_query: exp.Select) -> int:
        stmt = exp.Insert(this=_t("skip", name), expression=rid_query, alternative="IGNORE")
        return self.run(stmt).rowcount

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
        return exp.Not(this=_in(exp.column("rowid", alias), exp.select("rid").from_(_t(kind, name))))

    # ---- foreign keys of what the re-import writes ------------------------------------------
    def target_fks(self) -> dict[str, tuple[TargetFk, ...]]:
        if self.fks is None:
            self.fks = target_foreign_keys(self.conn)
        return self.fks

    def fks_into(self, parent: str) -> list[TargetFk]:
        return [fk for fks in self.target_fks().values() for fk in fks
                if fk.parent_exists and fk.parent.lower() == parent.lower()]

    def has_rowid(self, name: str) -> bool:
        if name not in self.rowid_tables:
            try:
                self.conn.execute(sql(exp.select(_rowid("t")).from_(table(name, "main", "t")).limit(0)))
                self.rowid_tables[name] = True
            except sqlite3.OperationalError:  # WITHOUT ROWID
                self.rowid_tables[name] = False
        return self.rowid_tables[name]

    def watch(self, name: str, rowids: exp.Select) -> None:
        """Add the rowids ``rowids`` selects to the rows of ``name`` whose foreign keys are checked."""
        if name not in self.watched:
            self.run(_rid_table(_t("chk", name)))
            self.watched.add(name)
        self.run(exp.Insert(this=_t("chk", name), expression=rowids, alternative="IGNORE"))

    def watch_children(self, parent: str, parent_rowids: exp.Select, columns: set[str] | None = None) -> None:
        """Before rows of ``parent`` (``parent_rowids``) are deleted, or their ``columns`` changed:
        remember every row referencing one of them through a key on those columns, so the check
        proves it still has a parent afterwards (the delete's own guard is thereby checked too)."""
        for fk in self.fks_into(parent):
            if columns is not None and not {c.lower() for c in fk.ref_columns} & columns:
                continue
            if not (self.has_rowid(parent) and self.has_rowid(fk.table)):
                self.full.add((fk.table, fk.id))
                continue
            self.watch(fk.table, exp.select(_rowid("c")).from_(table(parent, "main", "p")).join(
                table(fk.table, "main", "c"), on=fk.link("c", "p")).where(_in(_rowid("p"), parent_rowids)))

    def written(self, name: str) -> list[exp.Select]:
        """Queries selecting (as ``c``, rowid first) the rows of ``name`` the check must read: rows
        inserted (staged, not skipped), rows updated (staged, not skipped) and watched rows."""
        sources = []
        tp = self.plan.table(name)
        if tp is not None and tp.insert_select is not None:
            t = self.old(name)
            sources.append(exp.select(_rowid("c")).from_(exp.alias_(_t("ins", name), "s")).join(
                table(name, "main", "c"), on=and_all(is_same(col(k, "c"), col(k, "s")) for k in t.key)).where(
                exp.Not(this=_in(_rowid("s"), exp.select("rid").from_(_t("skip", name))))))
            if self.moving_columns(tp):
                sources.append(exp.select(_rowid("c")).from_(exp.alias_(_t("upd", name), "u")).join(
                    table(name, "main", "c"), on=and_all(exp.EQ(this=col(k, "c"), expression=col(f"key_{i}", "u"))
                                                         for i, k in enumerate(t.key))).where(
                    exp.Not(this=_in(_rowid("u"), exp.select("rid").from_(_t("uskip", name))))))
        if name in self.watched:
            sources.append(exp.select(_rowid("c")).from_(table(name, "main", "c")).where(
                _in(_rowid("c"), exp.select("rid").from_(_t("chk", name)))))
        return sources

    def target_has_triggers(self) -> bool:
        """The target DB defines a trigger that may have fired during the re-import (none did when
        the re-import suspended them while it wrote)."""
        if self.quiet:
            return False
        q = exp.select("1").from_(table("sqlite_master", "main")).where(
            exp.EQ(this=col("type"), expression=exp.Literal.string("trigger"))).limit(1)
        return self.conn.execute(sql(q)).fetchone() is not None

    def fk_problems(self, limit: int = 20) -> list[dict[str, Any]]:
        """What ``PRAGMA foreign_key_check`` reports for the rows this re-import wrote, in its shape:
        every foreign key (as the target declares it) of every inserted or updated row, and of every
        row referencing a row the re-import deleted or re-keyed. Call after :meth:`apply`.

        One pass per source of written rows reads all of a table's keys; each row's parents are
        probed by their key (a primary key or unique index), so the cost follows the rows written,
        not the size of the database."""
        found: set[tuple[str, Any, str, int]] = set()
        if self.target_has_triggers():  # a trigger may have written rows the merge never saw: all of them
            self.full.update((name, fk.id) for name, table_fks in self.target_fks().items() for fk in table_fks)
        for name, table_fks in self.target_fks().items():
            if not self.has_rowid(name) and self.written(name):
                self.full.update((name, fk.id) for fk in table_fks)
            for fk in table_fks:
                if (name, fk.id) in self.full:
                    rid: exp.Expression = _rowid("c") if self.has_rowid(name) else exp.Null()
                    q = exp.select(rid).from_(table(name, "main", "c")).where(fk.dangling("c")).limit(limit)
                    found.update((name, r, fk.parent, fk.id) for (r,) in self.rows(q))
            keys = [fk for fk in table_fks if (name, fk.id) not in self.full]
            if not keys or not self.has_rowid(name):
                continue
            for source in self.written(name):
                q = source.select(*[fk.dangling("c") for fk in keys]).where(
                    or_all(fk.dangling("c") for fk in keys)).limit(limit)
                for rid, *bad in self.rows(q):
                    found.update((name, rid, fk.parent, fk.id) for fk, b in zip(keys, bad, strict=True) if b)
        ordered = sorted(found, key=lambda p: (p[0], p[1] is None, p[1] or 0, p[3]))[:limit]
        return [{"table": t, "rowid": r, "parent": p, "fk": f} for t, r, p, f in ordered]

    # ---- 1. stage --------------------------------------------------------------------------
    def stage(self) -> None:
        for tp in self.staged():
            assert tp.insert_select is not None and tp.update_select is not None
            self.run(exp.Create(this=_t("ins", tp.table), kind="TABLE", expression=tp.insert_select.copy()))
            self.run(exp.Create(this=_t("upd", tp.table), kind="TABLE", expression=tp.update_select.copy()))
            for kind in ("skip", "uskip"):
                self.run(exp.Create(kind="TABLE", this=exp.Schema(this=_t(kind, tp.table), expressions=[
                    exp.ColumnDef(this=exp.to_identifier("rid"), kind=exp.DataType.build("INTEGER"),
                                  constraints=[exp.ColumnConstraint(kind=exp.PrimaryKeyColumnConstraint())])])))
            key = self.old(tp.table).primary_key
            if key:  # parents are probed by key per child row (missing parents, unit propagation)
                self.run(exp.Create(kind="INDEX", this=exp.Index(
                    this=table(f"ix_ins:{tp.table}", "temp"), table=table(f"ins:{tp.table}"),
                    params=exp.IndexParameters(columns=[col(k) for k in key]))))
            to = self.outcome.tables.setdefault(tp.table, TableOutcome(tp.table))
            to.bundle_inserted = self.rows(exp.select("count(*)").from_(_t("ins", tp.table)))[0][0]
            to.bundle_updated = self.rows(exp.select("count(*)").from_(_t("upd", tp.table)))[0][0]

    # ---- 2+3. detect and resolve -------------------------------------------------------------
    def conflict(self, c: Conflict) -> None:
        self.outcome.conflicts.append(c)

    def detect_primary_keys(self, tp: TablePlan) -> None:
        t = self.old(tp.table)
        key = t.primary_key
        if not key:
            return
        same_key = and_all(exp.EQ(this=col(k, "t"), expression=col(k, "s")) for k in key)
        identical = and_all(is_same(col(c, "t"), col(c, "s")) for c in self.writable(tp.table))
        hit = exp.select(exp.column("rowid", "s"), *[col(k, "s") for k in key], self.label(t, "s"),
                         exp.Exists(this=exp.select("1").from_(table(tp.table, "main", "t")).where(
                             and_all([same_key, identical])))).from_(exp.alias_(_t("ins", tp.table), "s")).where(
            exp.Exists(this=exp.select("1").from_(table(tp.table, "main", "t")).where(same_key)))
        taken = []
        for rid, *rest in self.rows(hit):
            k, label, same = tuple(rest[: len(key)]), rest[len(key)], rest[len(key) + 1]
            if same or self.in_place:  # the very same record is already there: nothing to insert
                self.outcome.tables[tp.table].already_present += 1
                self.present.add((tp.table, rid))
                self.skip(tp.table, exp.select(exp.Literal.number(rid)))
                continue
            taken.append((rid, k, label))
        if not taken:
            return
        remappable = (self.policy is ConflictPolicy.REMAP and len(key) == 1
                      and "INT" in (t.column(key[0]).type or "").upper())
        for rid, k, label in taken:
            resolution = "remapped" if remappable else "skipped"
            self.conflict(Conflict("primary_key", tp.table, k, resolution, label=label,
                                   detail="the key is taken in the target by a different row"))
            if not remappable:
                self.skip(tp.table, exp.select(exp.Literal.number(rid)))
        if remappable:
            self.remap(tp, [rid for rid, _, _ in taken])

    def remap(self, tp: TablePlan, rids: list[int]) -> None:
        """Give rows ``rids`` of ``ins:<t>`` fresh integer keys above every key in use, and rewrite
        every staged reference to them (FK columns, updated rows, polymorphic entity links)."""
        k = self.old(tp.table).primary_key[0]
        top = exp.select(exp.func("max", col(k))).from_(table(tp.table, "main"))
        top_s = exp.select(exp.func("max", col(k))).from_(_t("ins", tp.table))
        base = self.rows(exp.select(exp.func("max", exp.func("coalesce", top.subquery(), 0),
                                             exp.func("coalesce", top_s.subquery(), 0))))[0][0]
        # never a key the live DB's AUTOINCREMENT counter handed out after the deploy
        live_seq = {n.lower(): v for n, v in sequences.live_from_manifest(self.bundle.manifest).items()}
        base = max(base, live_seq.get(tp.table.lower(), 0))
        rid_list = exp.Tuple(expressions=[exp.Literal.number(r) for r in rids])
        self.run(exp.Create(kind="TABLE", this=_t("remap", tp.table), expression=exp.select(
            exp.alias_(col(k, "s"), "old_key"),
            exp.alias_(exp.Add(this=exp.Literal.number(base), expression=exp.Window(
                this=exp.RowNumber(), order=exp.Order(expressions=[exp.Ordered(this=col(k, "s"))]))), "new_key"),
        ).from_(exp.alias_(_t("ins", tp.table), "s")).where(exp.In(this=exp.column("rowid", "s"), expressions=rid_list.expressions))))
        pairs = self.rows(exp.select("old_key", "new_key").from_(_t("remap", tp.table)))
        self.outcome.remaps += [Remap(tp.table, o, n) for o, n in pairs]
        self.outcome.tables[tp.table].remapped += len(pairs)
        lookup = exp.select("new_key").from_(exp.alias_(_t("remap", tp.table), "r"))
        self._rewrite(_t("ins", tp.table), k, tp.table, lookup, rid_filter=rid_list)
        for child in self.staged():
            ct = self.old(child.table)
            for fk in ct.foreign_keys:
                if fk.ref_table == tp.table and len(fk.columns) == 1 and fk.ref_columns[0] == k:
                    self._rewrite(_t("ins", child.table), fk.columns[0], tp.table, lookup)
                    if fk.columns[0] in child.updatable:
                        i = child.updatable.index(fk.columns[0])
                        self._rewrite(_t("upd", child.table), f"theirs_{i}", tp.table, lookup)
            if child.table == self.files.table and ct.column(self.files.entity_id) is not None:
                kinds = exp.Tuple(expressions=[_lit(tp.table), _lit(tp.table.rstrip("s"))])
                self._rewrite(_t("ins", child.table), self.files.entity_id, tp.table, lookup,
                              extra=exp.In(this=col(self.files.entity_type), expressions=kinds.expressions))

    def _rewrite(self, target: exp.Table, column: str, remapped: str, lookup: exp.Select,
                 rid_filter: exp.Tuple | None = None, extra: exp.Expression | None = None) -> None:
        match = exp.EQ(this=col("old_key", "r"), expression=col(column, target.name))
        sub = lookup.copy().where(match)
        in_remap = _in(col(column, target.name), exp.select("old_key").from_(_t("remap", remapped)))
        conds = [in_remap]
        if rid_filter is not None:
            conds.append(exp.In(this=exp.column("rowid", target.name), expressions=rid_filter.expressions))
        if extra is not None:
            conds.append(extra)
        upd = exp.Update(this=target, expressions=[exp.EQ(this=col(column), expression=sub.subquery())],
                         where=exp.Where(this=and_all(conds)))
        self.run(upd)

    def detect_unique(self, tp: TablePlan) -> None:
        t = self.old(tp.table)
        plain = {tuple(c.lower() for c in u) for u in self.rules(tp.table).plain_unique}
        for uset in t.unique_sets:
            if tuple(uset) == t.primary_key or tuple(c.lower() for c in uset) not in plain:
                continue  # partial, expression or collated indexes: detect_constraints
            clash = and_all([*(is_same(col(c, "t"), col(c, "s")) for c in uset),
                             *(exp.Not(this=exp.Is(this=col(c, "s"), expression=exp.Null())) for c in uset),
                             *([or_all(is_distinct(col(k, "t"), col(k, "s")) for k in t.primary_key)]
                               if t.primary_key else [])])
            q = exp.select(exp.column("rowid", "s"), *[col(k, "s") for k in t.key], self.label(t, "s"),
                           *[col(c, "s") for c in uset]).from_(exp.alias_(_t("ins", tp.table), "s")).where(and_all([
                exp.Exists(this=exp.select("1").from_(table(tp.table, "main", "t")).where(clash)),
                exp.Not(this=_in(exp.column("rowid", "s"), exp.select("rid").from_(_t("skip", tp.table)))),
            ]))
            for rid, *rest in self.rows(q):
                nk = len(t.key)
                self.conflict(Conflict("unique", tp.table, tuple(rest[:nk]), "skipped", column=",".join(uset),
                                       bundle_value=rest[nk + 1] if len(uset) == 1 else list(rest[nk + 1:]),
                                       label=rest[nk], detail=f"{', '.join(uset)} is taken in the target by a different row"))
                self.skip(tp.table, exp.select(exp.Literal.number(rid)))

    def detect_constraints(self, tp: TablePlan) -> None:
        """Staged rows the target's own rules would refuse — NOT NULL, STRICT types, CHECK, unique
        indexes on expressions / partial / collated — each a ``constraint`` conflict whose unit is
        skipped. NOT NULL is read on the staged rows; the rest on a typed copy of them
        (``typed:<t>``: the target's affinities and collations, so values compare as stored)."""
        t, r = self.old(tp.table), self.rules(tp.table)
        for name in r.not_null:
            if t.column(name) is None:
                continue
            self.constraint_hits(tp, exp.Is(this=col(name, "s"), expression=exp.Null()), name,
                                 f"{name} is NOT NULL in the old schema")
        if not r.needs_rows:
            return
        typed = _t("typed", tp.table)
        cols = self.writable(tp.table)
        self.run(typed_copy(r, typed))
        self.run(exp.Insert(this=exp.Schema(this=typed, expressions=[exp.to_identifier(c, quoted=True)
                                                                      for c in ["rid", *cols]]),
                            expression=exp.select(exp.column("rowid", "s"), *[col(c, "s") for c in cols]).from_(
                                exp.alias_(_t("ins", tp.table), "s")).where(self.live("s", tp.table))))
        for name, storage in r.strict.items():
            self.constraint_hits(tp, strict_violation(r, name, "a"), name,
                                 f"{name} must hold {storage} values (STRICT table in the old schema)")
        for check in r.checks:
            text = sql(check)
            names = sorted({c.name for c in check.find_all(exp.Column)})
            self.constraint_hits(tp, exp.Not(this=exp.Paren(this=r.over(check, "a"))), ",".join(names),
                                 f"CHECK ({text}) fails in the old schema")
        for rule in r.unique:
            self.detect_unique_rule(tp, r, rule)

    def constraint_hits(self, tp: TablePlan, bad: exp.Expression, column: str, detail: str,
                        typed: bool = True) -> None:
        """Report and skip the live staged rows of ``tp`` matching ``bad`` (over ``s`` = ``ins:<t>``
        and, when the typed copy exists, ``a`` = its typed row). A rule SQLite cannot evaluate as
        rendered is left to the per-row guard of :meth:`apply`."""
        t = self.old(tp.table)
        src = exp.select(exp.column("rowid", "s"), *[col(k, "s") for k in t.key], self.label(t, "s")).from_(
            exp.alias_(_t("ins", tp.table), "s"))
        if typed and self.rules(tp.table).needs_rows and any(c.table == "a" for c in bad.find_all(exp.Column)):
            src = src.join(exp.alias_(_t("typed", tp.table), "a"),
                           on=exp.EQ(this=col("rid", "a"), expression=exp.column("rowid", "s")))
        try:
            found = self.rows(src.where(and_all([bad, self.live("s", tp.table)])))
        except sqlite3.OperationalError:
            return
        for rid, *rest in found:
            self.conflict(Conflict("constraint", tp.table, tuple(rest[:-1]), "skipped", column=column or None,
                                   label=rest[-1], detail=detail))
            self.skip(tp.table, exp.select(exp.Literal.number(rid)))

    def detect_unique_rule(self, tp: TablePlan, r: Rules, rule: UniqueRule) -> None:
        """A unique index the plain check cannot express: staged rows whose index terms equal a
        target row's (both inside the index's WHERE). Twins among the staged rows themselves are
        :meth:`detect_staged_duplicates`' (after every other skip is known)."""
        cond_a = [exp.Not(this=exp.Is(this=r.over(term, "a"), expression=exp.Null())) for term in rule.terms]
        if rule.where is not None:
            cond_a.append(exp.Paren(this=r.over(rule.where, "a")))
        match_t = [exp.EQ(this=r.over(term, "x"), expression=r.over(term, "a")) for term in rule.terms]
        if rule.where is not None:
            match_t.append(exp.Paren(this=r.over(rule.where, "x")))
        in_target = exp.Exists(this=exp.select("1").from_(table(tp.table, "main", "x")).where(and_all(match_t)))
        names = ",".join(sorted({c.name for term in rule.terms for c in term.find_all(exp.Column)}))
        self.constraint_hits(tp, and_all([*cond_a, in_target]), names,
                             f"{rule.text} is taken in the target by a different row")

    def detect_staged_duplicates(self) -> int:
        """Live staged rows whose unique-index terms (:meth:`detect_unique_rule`'s rules) equal an
        earlier live staged row's: run once every other skip is known, so a row is not skipped for
        a twin that does not land either. Returns the number of rows skipped."""
        before = len(self.outcome.conflicts)
        for tp in self.staged():
            r = self.rules(tp.table)
            for rule in r.unique:
                self.staged_twins(tp, r, rule)
        return len(self.outcome.conflicts) - before

    def staged_twins(self, tp: TablePlan, r: Rules, rule: UniqueRule) -> None:
        cond_a = [exp.Not(this=exp.Is(this=r.over(term, "a"), expression=exp.Null())) for term in rule.terms]
        if rule.where is not None:
            cond_a.append(exp.Paren(this=r.over(rule.where, "a")))
        names = ",".join(sorted({c.name for term in rule.terms for c in term.find_all(exp.Column)}))
        n = exp.Window(this=exp.RowNumber(), partition_by=[r.over(term, "a") for term in rule.terms],
                       order=exp.Order(expressions=[exp.Ordered(this=col("rid", "a"))]))
        ranked = exp.select(col("rid", "a"), exp.alias_(n, "n")).from_(exp.alias_(_t("typed", tp.table), "a")).join(
            exp.alias_(_t("ins", tp.table), "s"), on=exp.EQ(this=col("rid", "a"), expression=exp.column("rowid", "s"))
        ).where(and_all([*[c.copy() for c in cond_a], self.live("s", tp.table)]))
        later = exp.select(col("rid")).from_(ranked.subquery("d")).where(
            exp.GT(this=col("n"), expression=exp.Literal.number(1)))
        self.constraint_hits(tp, _in(exp.column("rowid", "s"), later), names,
                             f"{rule.text}: another new row has the same value", typed=False)

    def detect_missing_parents(self, tp: TablePlan) -> None:
        t = self.old(tp.table)
        staged = {s.table for s in self.staged()}
        for fk in t.foreign_keys:
            if fk.ref_table not in self.bundle.old.tables:
                continue
            present = [exp.Exists(this=exp.select("1").from_(table(fk.ref_table, "main", "p")).where(
                and_all(is_same(col(pc, "p"), col(cc, "s")) for pc, cc in zip(fk.ref_columns, fk.columns, strict=True))))]
            if fk.ref_table in staged:
                present.append(exp.Exists(this=exp.select("1").from_(exp.alias_(_t("ins", fk.ref_table), "p")).where(
                    and_all(is_same(col(pc, "p"), col(cc, "s")) for pc, cc in zip(fk.ref_columns, fk.columns, strict=True)))))
            notnull = [exp.Not(this=exp.Is(this=col(c, "s"), expression=exp.Null())) for c in fk.columns]
            q = exp.select(exp.column("rowid", "s"), *[col(k, "s") for k in t.key], self.label(t, "s"),
                           *[col(c, "s") for c in fk.columns]).from_(exp.alias_(_t("ins", tp.table), "s")).where(
                and_all([*notnull, exp.Not(this=or_all(present)),
                         exp.Not(this=_in(exp.column("rowid", "s"), exp.select("rid").from_(_t("skip", tp.table))))]))
            nk = len(t.key)
            for rid, *rest in self.rows(q):
                self.conflict(Conflict("missing_parent", tp.table, tuple(rest[:nk]), "skipped",
                                       column=",".join(fk.columns), bundle_value=rest[nk + 1], label=rest[nk],
                                       detail=f"{fk.ref_table} row {rest[nk + 1]} is not in the target"))
                self.skip(tp.table, exp.select(exp.Literal.number(rid)))

    def detect_updates(self, tp: TablePlan) -> None:
        t = self.old(tp.table)
        key_match = and_all(is_same(col(k, "t"), col(f"key_{i}", "u")) for i, k in enumerate(t.key))
        gone = exp.select(exp.column("rowid", "u"), *[col(f"key_{i}", "u") for i in range(len(t.key))]).from_(
            exp.alias_(_t("upd", tp.table), "u")).where(
            exp.Not(this=exp.Exists(this=exp.select("1").from_(table(tp.table, "main", "t")).where(key_match))))
        for rid, *k in self.rows(gone):
            self.conflict(Conflict("update_deleted", tp.table, tuple(k), "skipped",
                                   detail="changed after the deploy but deleted in the target since"))
            self.run(exp.Insert(this=_t("uskip", tp.table), expression=exp.select(exp.Literal.number(rid))))
        if self.mode is ConflictMode.ROW:
            self.detect_row_conflicts(tp)
        else:
            self.detect_json(tp)
        # every column in one pass over the updated rows; conflicts listed column by column as before
        nk, per_column, flags = len(t.key), [], []
        for i in self.moving_columns(tp):
            name = tp.updatable[i]
            theirs, base, ours = col(f"theirs_{i}", "u"), col(f"base_{i}", "u"), col(name, "t")
            clash = [is_distinct(theirs, base), is_distinct(ours, base.copy()), is_distinct(ours.copy(), theirs.copy())]
            if self.mode is ConflictMode.ROW:  # reported once per row by detect_row_conflicts
                clash.append(exp.false())
            elif tp.table in self.json_tables:  # merged key by key (detect_json)
                clash.append(exp.Not(this=self.json_cell(tp.table, i, exp.column("rowid", "u"))))
            if t.column(name).nullable:
                nulled = None
            else:  # a NULL the old schema cannot hold: keep the target's value
                clash.append(exp.Not(this=exp.Is(this=theirs.copy(), expression=exp.Null())))
                nulled = and_all([exp.Is(this=theirs.copy(), expression=exp.Null()),
                                  is_distinct(theirs.copy(), base.copy())])
            per_column.append((name, [theirs.copy(), ours.copy(), base.copy(), and_all(clash)]
                               + ([nulled] if nulled is not None else [])))
            flags += [and_all(clash).copy()] + ([nulled.copy()] if nulled is not None else [])
        if not per_column:
            return
        q = exp.select(*[col(f"key_{j}", "u") for j in range(nk)], self.label(t, "t"),
                       *[e for _, exprs in per_column for e in exprs]).from_(exp.alias_(_t("upd", tp.table), "u")).join(
            table(tp.table, "main", "t"), on=key_match.copy()).where(or_all(flags))
        found = self.rows(q)
        resolution = "kept_target" if self.prefer is Prefer.DB else "applied"
        at = nk + 1
        for name, exprs in per_column:
            if len(exprs) == 5:
                for row in found:
                    if row[at + 4]:
                        self.conflict(Conflict(
                            "constraint", tp.table, tuple(row[:nk]), "kept_target", column=name,
                            target_value=row[at + 1], base_value=row[at + 2], label=row[nk],
                            detail=f"{name} became NULL after the deploy; NOT NULL in the old schema"))
            for row in found:
                if row[at + 3]:
                    self.conflict(Conflict(
                        "update_update", tp.table, tuple(row[:nk]), resolution, column=name, bundle_value=row[at],
                        target_value=row[at + 1], base_value=row[at + 2], label=row[nk],
                        detail="changed after the deploy and, differently, in the target since"))
            at += len(exprs)

    # ---- --conflicts row ------------------------------------------------------------------
    def row_columns(self, tp: TablePlan) -> list[int]:
        """Indexes of every updatable column that may be written (generated ones never are)."""
        gen = self.generated(tp.table)
        return [i for i, n in enumerate(tp.updatable) if n.lower() not in gen]

    def detect_row_conflicts(self, tp: TablePlan) -> None:
        """``--conflicts row``: a staged update whose row the target also changed since the backup
        (some column differs from base on both sides) and that differs from the target's row is
        one ``update_update`` conflict; its rid goes to ``rowc:<t>`` for :meth:`apply_updates`."""
        moving, every = self.moving_columns(tp), self.row_columns(tp)
        if not moving:
            return
        t = self.old(tp.table)
        th = lambda i: col(f"theirs_{i}", "u")  # noqa: E731
        ba = lambda i: col(f"base_{i}", "u")  # noqa: E731
        ou = lambda i: col(tp.updatable[i], "t")  # noqa: E731
        cond = and_all([or_all(is_distinct(th(i), ba(i)) for i in moving),
                        or_all(is_distinct(ou(i), ba(i)) for i in every),
                        or_all(is_distinct(ou(i), th(i)) for i in every)])
        key_match = and_all(exp.EQ(this=col(k, "t"), expression=col(f"key_{j}", "u")) for j, k in enumerate(t.key))
        rowc = _t("rowc", tp.table)
        self.run(_rid_table(rowc))
        if not self.run(exp.Insert(this=rowc, expression=exp.select(_rowid("u")).from_(
                exp.alias_(_t("upd", tp.table), "u")).join(table(tp.table, "main", "t"), on=key_match).where(cond))).rowcount:
            return
        self.row_tables.add(tp.table)
        nk = len(t.key)
        cells = [e for i in every for e in (is_distinct(th(i), ba(i)), is_distinct(ou(i), ba(i)), th(i), ou(i), ba(i))]
        q = exp.select(*[col(f"key_{j}", "u") for j in range(nk)], self.label(t, "t"), *cells).from_(
            exp.alias_(_t("upd", tp.table), "u")).join(table(tp.table, "main", "t"), on=key_match.copy()).where(
            _in(_rowid("u"), exp.select("rid").from_(rowc)))
        resolution = "kept_target" if self.prefer is Prefer.DB else "applied"
        for row in self.rows(q):
            mine, theirs_d, ours_d, base_d = [], {}, {}, {}
            for n, i in enumerate(every):
                b_moved, t_moved, tv, ov, bv = row[nk + 1 + 5 * n: nk + 6 + 5 * n]
                name = tp.updatable[i]
                if b_moved or t_moved:
                    mine.append((name, bool(b_moved), bool(t_moved)))
                    theirs_d[name], ours_d[name], base_d[name] = tv, ov, bv
            changed_b = [n for n, b, _ in mine if b]
            changed_t = [n for n, _, tm in mine if tm]
            self.conflict(Conflict(
                "update_update", tp.table, tuple(row[:nk]), resolution, column=",".join(n for n, _, _ in mine),
                bundle_value=_json_text(theirs_d), target_value=_json_text(ours_d), base_value=_json_text(base_d),
                label=row[nk], detail=f"row changed after the deploy ({', '.join(changed_b)}) and in the target "
                                      f"since ({', '.join(changed_t)}); --conflicts row"))

    # ---- JSON cells (cell mode) -----------------------------------------------------------
    def json_cell(self, name: str, i: int, rid: exp.Expression) -> exp.Expression:
        """``EXISTS`` a merged JSON cell of column ``i`` for the staged update ``rid``."""
        return exp.Exists(this=exp.select("1").from_(exp.alias_(_t("json", name), "j")).where(and_all([
            exp.EQ(this=col("rid", "j"), expression=rid), exp.EQ(this=col("ci", "j"), expression=exp.Literal.number(i))])))

    def detect_json(self, tp: TablePlan) -> None:
        """Cells changed differently on both sides whose three values are all JSON objects/arrays
        (decided in SQL, one pass over the staged updates for every column) are merged key by key
        in Python, :data:`JSON_BATCH` rows at a time: the merged text goes to ``json:<t>``; the
        same JSON path changed differently on both sides is an ``update_update`` conflict naming
        the paths of each side, resolved by ``--prefer`` at those paths."""
        from recovery.reimport.jsonmerge import JsonMergeError, merge_texts

        moving = self.moving_columns(tp)
        if not moving:
            return
        t = self.old(tp.table)
        flags, values = [], []
        for i in moving:
            theirs, base, ours = col(f"theirs_{i}", "u"), col(f"base_{i}", "u"), col(tp.updatable[i], "t")
            flags.append(and_all([is_distinct(theirs, base), is_distinct(ours, base.copy()),
                                  is_distinct(ours.copy(), theirs.copy()), _json_container(theirs.copy()),
                                  _json_container(ours.copy()), _json_container(base.copy())]))
            values += [theirs.copy(), ours.copy(), base.copy()]
        key_match = and_all(exp.EQ(this=col(k, "t"), expression=col(f"key_{j}", "u")) for j, k in enumerate(t.key))
        nk = len(t.key)
        q = exp.select(_rowid("u"), *[col(f"key_{j}", "u") for j in range(nk)], self.label(t, "t"),
                       *[f.copy() for f in flags], *values).from_(exp.alias_(_t("upd", tp.table), "u")).join(
            table(tp.table, "main", "t"), on=key_match).where(and_all([
                or_all(flags), exp.GT(this=_rowid("u"), expression=exp.Placeholder())])).order_by(
            _rowid("u")).limit(JSON_BATCH)
        ins = exp.Insert(this=_t("json", tp.table), expression=exp.Values(expressions=[exp.Tuple(
            expressions=[exp.Placeholder()] * 3)]))
        bundle_wins = self.prefer is Prefer.BUNDLE
        last = -1
        while True:
            batch = self.run(q, (last,)).fetchall()
            if not batch:
                return
            last = batch[-1][0]
            if tp.table not in self.json_tables:
                self.run(exp.Create(kind="TABLE", this=exp.Schema(this=_t("json", tp.table), expressions=[
                    exp.ColumnDef(this=exp.to_identifier(c), kind=exp.DataType.build(k))
                    for c, k in (("rid", "INTEGER"), ("ci", "INTEGER"), ("merged", "TEXT"))])))
                self.run(exp.Create(kind="INDEX", this=exp.Index(
                    this=table(f"ix_json:{tp.table}", "temp"), table=table(f"json:{tp.table}"),
                    params=exp.IndexParameters(columns=[col("rid"), col("ci")]))))
                self.json_tables.add(tp.table)
            merged_rows = []
            for row in batch:
                rid, key, label = row[0], tuple(row[1:nk + 1]), row[nk + 1]
                at = nk + 2 + len(moving)
                for n, i in enumerate(moving):
                    if not row[nk + 2 + n]:
                        continue
                    tv, ov, bv = row[at + 3 * n: at + 3 * n + 3]
                    try:
                        text, m = merge_texts(bv, tv, ov, bundle_wins)
                    except JsonMergeError:  # not mergeable key by key: the cell rule decides it
                        continue
                    merged_rows.append((rid, i, text))
                    if m.conflicted:
                        kept = "the bundle's" if bundle_wins else "the target's"
                        self.conflict(Conflict(
                            "update_update", tp.table, key, "applied" if bundle_wins else "kept_target",
                            column=tp.updatable[i], bundle_value=tv, target_value=ov, base_value=bv, label=label,
                            detail=f"the same JSON path changed on both sides — bundle: "
                                   f"{', '.join(m.conflict_bundle)}; target: {', '.join(m.conflict_target)}; "
                                   f"{kept} value kept there, other keys merged"))
            self.counter.tick()
            assert self.script is not None
            self.script.execute_rows(ins, merged_rows)

    def propagate_skips(self) -> None:
        """Skip whole units: children of skipped parents; cascade-owned children's parents."""
        staged = {s.table for s in self.staged()}
        for _ in range(len(staged) * 2 + 2):
            changed = 0
            for child in staged:
                ct = self.old(child)
                for fk in ct.foreign_keys:
                    if fk.ref_table not in staged:
                        continue
                    link = and_all(is_same(col(pc, "p"), col(cc, "c")) for pc, cc in zip(fk.ref_columns, fk.columns, strict=True))
                    skipped_p = _in(exp.column("rowid", "p"), exp.select("rid").from_(_t("skip", fk.ref_table)))
                    q = exp.select(exp.column("rowid", "c")).from_(exp.alias_(_t("ins", child), "c")).join(
                        exp.alias_(_t("ins", fk.ref_table), "p"), on=link).where(skipped_p)
                    changed += self.skip(child, q)
                    i_fk = [c for c in fk.columns if c in self._tp(child).updatable]
                    if i_fk:  # updated rows pointing at a skipped new parent
                        i = self._tp(child).updatable.index(i_fk[0])
                        uq = exp.select(exp.column("rowid", "c")).from_(exp.alias_(_t("upd", child), "c")).join(
                            exp.alias_(_t("ins", fk.ref_table), "p"),
                            on=is_same(col(fk.ref_columns[0], "p"), col(f"theirs_{i}", "c"))).where(skipped_p.copy())
                        changed += self.run(exp.Insert(this=_t("uskip", child), expression=uq, alternative="IGNORE")).rowcount
                    if (fk.on_delete or "").upper() == "CASCADE":
                        skipped_c = _in(exp.column("rowid", "c"), exp.select("rid").from_(_t("skip", child)))
                        pq = exp.select(exp.column("rowid", "p")).from_(exp.alias_(_t("ins", fk.ref_table), "p")).join(
                            exp.alias_(_t("ins", child), "c"), on=link.copy()).where(skipped_c)
                        changed += self.skip(fk.ref_table, pq)
                changed += self._skip_entity_links(child)
            if not changed:
                return

    def _skip_entity_links(self, parent: str) -> int:
        """Skip staged file records whose polymorphic entity link names a skipped staged row of
        ``parent``: a file must not land attached to a row that did not (or to another row)."""
        ft = self.files.table
        if ft == parent or self.plan.table(ft) is None or self._tp(ft).insert_select is None:
            return 0
        pt, ct = self.old(parent), self.old(ft)
        if len(pt.primary_key) != 1 or ct.column(self.files.entity_id) is None or ct.column(self.files.entity_type) is None:
            return 0
        kinds = [_lit(parent), _lit(parent.rstrip("s"))]
        q = exp.select(exp.column("rowid", "c")).from_(exp.alias_(_t("ins", ft), "c")).join(
            exp.alias_(_t("ins", parent), "p"),
            on=exp.EQ(this=col(pt.primary_key[0], "p"), expression=col(self.files.entity_id, "c"))).where(and_all([
                exp.In(this=col(self.files.entity_type, "c"), expressions=kinds),
                _in(exp.column("rowid", "p"), exp.select("rid").from_(_t("skip", parent)))]))
        return self.skip(ft, q)

    def settle_remaps(self) -> None:
        """Once every skip is known: a remapped row that was skipped after all (e.g. its unique value
        is taken too) is reported as skipped, not remapped; conflicts name rows by their bundle key."""
        for name in sorted({r.table for r in self.outcome.remaps}):
            k = self.old(name).primary_key[0]
            q = exp.select(col("old_key", "r")).from_(exp.alias_(_t("remap", name), "r")).join(
                exp.alias_(_t("ins", name), "s"), on=exp.EQ(this=col(k, "s"), expression=col("new_key", "r"))).where(
                _in(exp.column("rowid", "s"), exp.select("rid").from_(_t("skip", name))))
            dropped = {row[0] for row in self.rows(q)} & {r.old_key for r in self.outcome.remaps if r.table == name}
            back = {r.new_key: r.old_key for r in self.outcome.remaps if r.table == name}
            fixed = []
            for c in self.outcome.conflicts:
                if c.table == name and len(c.key) == 1 and c.kind != "primary_key" and c.key[0] in back:
                    c = replace(c, key=(back[c.key[0]],))
                if c.table == name and c.kind == "primary_key" and c.resolution == "remapped" and c.key[0] in dropped:
                    c = replace(c, resolution="skipped", detail=c.detail + "; not remapped: the row was skipped")
                fixed.append(c)
            self.outcome.conflicts = fixed
            self.outcome.remaps = [r for r in self.outcome.remaps if not (r.table == name and r.old_key in dropped)]
            self.outcome.tables[name].remapped -= len(dropped)

    def _tp(self, name: str) -> TablePlan:
        tp = self.plan.table(name)
        assert tp is not None
        return tp

    def collect_skipped(self) -> None:
        """List bundle rows skipped only because their unit was (no conflict of their own)."""
        own = {(c.table, tuple(c.key)) for c in self.outcome.conflicts}
        for tp in self.staged():
            t = self.old(tp.table)
            q = exp.select(exp.column("rowid", "s"), *[col(k, "s") for k in t.key], self.label(t, "s")).from_(
                exp.alias_(_t("ins", tp.table), "s")).where(
                _in(exp.column("rowid", "s"), exp.select("rid").from_(_t("skip", tp.table))))
            for rid, *k, label in self.rows(q):
                if (tp.table, tuple(k)) in own or (tp.table, rid) in self.present:
                    continue
                self.outcome.skipped_rows.append({"table": tp.table, "key": k, "label": label, "kind": "insert",
                                                  "reason": "its unit was skipped (see conflicts)"})
            uq = exp.select(*[col(f"key_{i}", "u") for i in range(len(t.key))]).from_(
                exp.alias_(_t("upd", tp.table), "u")).where(
                _in(exp.column("rowid", "u"), exp.select("rid").from_(_t("uskip", tp.table))))
            for k in self.rows(uq):
                if (tp.table, tuple(k)) in own:
                    continue
                self.outcome.skipped_rows.append({"table": tp.table, "key": list(k), "label": None, "kind": "update",
                                                  "reason": "it points at a skipped new row"})

    # ---- 4. apply --------------------------------------------------------------------------
    def apply(self, apply_deletes: bool) -> None:
        """Insert (parents first) and update every live staged row. The detection predicts what the
        target refuses; should an INSERT or UPDATE still raise an IntegrityError, the offending rows
        of that statement are singled out (:meth:`isolate`, SAVEPOINTs), everything
        applied so far is rolled back to before the first insert, the offenders' units become
        ``constraint`` conflicts (skipped; with ``abort``: the run aborts), and the apply runs
        again — never a failed run for one bad row."""
        for _ in range(self.max_attempts()):
            watched, full = set(self.watched), set(self.full)
            assert self.script is not None
            self.script.savepoint("recovery_apply")
            failed = self.apply_rows()
            if failed is None:
                self.script.release("recovery_apply")
                break
            bad = self.isolate(failed[0], failed[1])
            if not bad:  # refused as a whole, accepted row by row: nothing to single out
                raise RecoveryError(f"re-import of {failed[1].table} violated a constraint: {failed[2]}; rolled back",
                                    "nothing was changed; report this with the bundle", ExitCode.FAILED)
            self.script.rollback("recovery_apply")
            self.watched, self.full = watched, full  # their TEMP tables were rolled back too
            self.refused(failed[0], failed[1], bad)
            if self.policy is ConflictPolicy.ABORT:
                self.outcome.aborted = True
                return
            self.propagate_skips()
            self.settle_remaps()
            self.outcome.skipped_rows = []
            self.collect_skipped()
        else:  # pragma: no cover - each attempt skips at least one row
            raise RecoveryError("the re-import kept violating constraints of the old schema; rolled back",
                                "nothing was changed; report this with the bundle", ExitCode.FAILED)
        self.deletes(apply_deletes)

    def max_attempts(self) -> int:
        return 2 + sum(self.outcome.tables[tp.table].bundle_inserted + self.outcome.tables[tp.table].bundle_updated
                       for tp in self.staged())

    def insert_stmt(self, tp: TablePlan) -> exp.Insert:
        """INSERT of the live staged rows of ``tp`` (generated columns are never written)."""
        cols = self.writable(tp.table)
        return exp.Insert(
            this=exp.Schema(this=table(tp.table, "main"), expressions=[exp.to_identifier(c, quoted=True) for c in cols]),
            expression=exp.select(*[col(c, "s") for c in cols]).from_(exp.alias_(_t("ins", tp.table), "s")).where(
                self.live("s", tp.table)),
        )

    def apply_rows(self) -> tuple[str, TablePlan, str] | None:
        """One attempt at every insert and update; the (kind, table, message) of the statement the
        target refused."""
        for tp in self.staged():
            to = self.outcome.tables[tp.table]
            try:
                to.inserted = self.run(self.insert_stmt(tp)).rowcount
            except sqlite3.IntegrityError as exc:
                return "insert", tp, str(exc)
            to.skipped = self.rows(exp.select("count(*)").from_(_t("skip", tp.table)))[0][0] - to.already_present
        for tp in self.staged():
            try:
                self.apply_updates(tp)
            except sqlite3.IntegrityError as exc:
                return "update", tp, str(exc)
        return None

    def isolate(self, kind: str, tp: TablePlan) -> list[tuple[int, str]]:
        """The staged rows (rowid, SQLite's message) of ``tp`` whose own statement the target
        refuses, on top of what this attempt applied: rowid ranges are applied in staged order,
        each in a SAVEPOINT, and a refused range is halved until single rows remain — the same
        rows a row-by-row pass in that order finds, in O(bad rows × log n) statements."""
        source = _t("ins" if kind == "insert" else "upd", tp.table)
        lo, hi = self.rows(exp.select(exp.func("min", exp.column("rowid")), exp.func("max", exp.column("rowid"))).from_(source))[0]
        bad: list[tuple[int, str]] = []
        stack = [(lo, hi)] if lo is not None else []
        while stack:
            a, b = stack.pop()
            watched = set(self.watched)
            assert self.script is not None
            self.script.savepoint("recovery_row")
            try:
                if kind == "insert":
                    stmt = self.insert_stmt(tp)
                    stmt.expression.set("where", exp.Where(this=and_all([
                        stmt.expression.args["where"].this,
                        exp.Between(this=exp.column("rowid", "s"), low=exp.Literal.number(a), high=exp.Literal.number(b))])))
                    self.run(stmt)
                else:
                    self.apply_updates(tp, only=(a, b))
            except sqlite3.IntegrityError as exc:
                self.script.rollback("recovery_row")
                self.watched = watched
                if a == b:
                    bad.append((a, str(exc)))
                else:  # the left half first: rows are tried in staged order
                    mid = (a + b) // 2
                    stack += [(mid + 1, b), (a, mid)]
                continue
            self.script.release("recovery_row")
        return bad

    def refused(self, kind: str, tp: TablePlan, bad: list[tuple[int, str]]) -> None:
        """Record the rows :meth:`isolate` found as ``constraint`` conflicts and skip their units."""
        t = self.old(tp.table)
        for rid, message in bad:
            if kind == "insert":
                q = exp.select(*[col(k, "s") for k in t.key], self.label(t, "s")).from_(
                    exp.alias_(_t("ins", tp.table), "s")).where(
                    exp.EQ(this=exp.column("rowid", "s"), expression=exp.Literal.number(rid)))
                *k, label = self.rows(q)[0]
                self.skip(tp.table, exp.select(exp.Literal.number(rid)))
            else:
                q = exp.select(*[col(f"key_{i}", "u") for i in range(len(t.key))]).from_(
                    exp.alias_(_t("upd", tp.table), "u")).where(
                    exp.EQ(this=exp.column("rowid", "u"), expression=exp.Literal.number(rid)))
                k, label = list(self.rows(q)[0]), None
                self.run(exp.Insert(this=_t("uskip", tp.table), expression=exp.select(exp.Literal.number(rid)),
                                    alternative="IGNORE"))
            self.conflict(Conflict("constraint", tp.table, tuple(k), "skipped", label=label,
                                   detail=f"the old schema refused the {kind}: {message}"))

    def moving_columns(self, tp: TablePlan) -> list[int]:
        """Indexes of the updatable columns some bundle row changed (theirs differs from base): only
        those can take a new value, so only they are SET — SQLite then leaves alone every index
        on the others (a SET column is re-indexed in every updated row, changed or not)."""
        if not tp.updatable:
            return []
        if tp.table not in self.moving:  # detection, apply and the FK check all ask: one scan
            q = exp.select(*[exp.func("max", is_distinct(col(f"theirs_{i}"), col(f"base_{i}")))
                             for i in range(len(tp.updatable))]).from_(_t("upd", tp.table))
            gen = self.generated(tp.table)  # a generated column is never written
            self.moving[tp.table] = [i for i, moved in enumerate(self.rows(q)[0])
                                     if moved and tp.updatable[i].lower() not in gen]
        return self.moving[tp.table]

    def apply_updates(self, tp: TablePlan, only: tuple[int, int] | None = None) -> None:
        """The column-wise three-way UPDATE of ``tp``'s live staged updates (``only``: of the staged
        rows in that rowid range). An IntegrityError propagates to :meth:`apply`."""
        moving = self.moving_columns(tp)
        if not moving:
            return
        t = self.old(tp.table)
        whole_rows = tp.table in self.row_tables and self.prefer is Prefer.BUNDLE  # --conflicts row: bundle's row
        has_json = tp.table in self.json_tables
        if whole_rows:
            moving = self.row_columns(tp)
        sets, changes = [], []
        for i in moving:
            name = tp.updatable[i]
            theirs, base, ours = col(f"theirs_{i}", "u"), col(f"base_{i}", "u"), col(name, tp.table)
            take = and_all([is_distinct(theirs, base), is_same(ours, base.copy())])
            if self.prefer is Prefer.BUNDLE:
                take = and_all([is_distinct(theirs.copy(), base.copy()), is_distinct(ours.copy(), theirs.copy())])
            if whole_rows:
                take = or_all([and_all([exp.Not(this=col("__rowc", "u")), take]),
                               and_all([col("__rowc", "u"), is_distinct(ours.copy(), theirs.copy())])])
            if not t.column(name).nullable:
                take = and_all([take, exp.Not(this=exp.Is(this=theirs.copy(), expression=exp.Null()))])
            value: exp.Expression = exp.Case(ifs=[exp.If(this=take, true=theirs.copy())], default=ours.copy())
            if has_json:  # a JSON cell changed on both sides takes its merged document
                merged = exp.select(col("merged", "j")).from_(exp.alias_(_t("json", tp.table), "j")).where(and_all([
                    exp.EQ(this=col("rid", "j"), expression=col("__rid", "u")),
                    exp.EQ(this=col("ci", "j"), expression=exp.Literal.number(i))]))
                value = exp.Coalesce(this=merged.subquery(), expressions=[value])
                take = or_all([take, exp.Exists(this=merged.copy().where(is_distinct(col("merged", "j"), ours.copy())))])
            sets.append(exp.EQ(this=col(name), expression=value))
            changes.append(take.copy())
        extra = []
        if has_json:
            extra.append(exp.alias_(exp.column("rowid", "x"), "__rid"))
        if whole_rows:
            extra.append(exp.alias_(_in(exp.column("rowid", "x"), exp.select("rid").from_(_t("rowc", tp.table))), "__rowc"))
        live = exp.select("*", *extra).from_(exp.alias_(_t("upd", tp.table), "x")).where(exp.Not(this=_in(exp.column("rowid", "x"), exp.select("rid").from_(_t("uskip", tp.table)))))
        if tp.table in self.row_tables and self.prefer is Prefer.DB:  # --conflicts row: the target's row stays
            live = live.where(exp.Not(this=_in(exp.column("rowid", "x"), exp.select("rid").from_(_t("rowc", tp.table)))))
        if only is not None:
            live = live.where(exp.Between(this=exp.column("rowid", "x"), low=exp.Literal.number(only[0]),
                                          high=exp.Literal.number(only[1])))
        if self.has_rowid(tp.table):  # rows whose referenced (unique, non-key) columns may change
            rows = exp.select(_rowid("t")).from_(exp.alias_(_t("upd", tp.table), "u")).join(
                table(tp.table, "main", "t"), on=and_all(exp.EQ(this=col(k, "t"), expression=col(f"key_{i}", "u"))
                                                         for i, k in enumerate(t.key))).where(
                exp.Not(this=_in(_rowid("u"), exp.select("rid").from_(_t("uskip", tp.table)))))
            self.watch_children(tp.table, rows, {tp.updatable[i].lower() for i in moving})
        else:
            self.full.update((fk.table, fk.id) for fk in self.fks_into(tp.table)
                             if {c.lower() for c in fk.ref_columns} & {tp.updatable[i].lower() for i in moving})
        where = and_all([*(exp.EQ(this=col(k, tp.table), expression=col(f"key_{i}", "u")) for i, k in enumerate(t.key)),
                         or_all(changes)])
        upd = exp.Update(this=table(tp.table, "main"), expressions=sets,
                         from_=exp.From(this=live.subquery(exp.TableAlias(this=exp.to_identifier("u", quoted=True)))),
                         where=exp.Where(this=where))
        self.outcome.tables[tp.table].updated = self.run(upd).rowcount

    def deletes(self, apply: bool) -> None:
        """Rows deleted after the deploy came back with the restore: list them; delete on request,
        and then only those unchanged since the backup and with no row referencing them."""
        for name in reversed(self.bundle.old.fk_order()):
            t = self.old(name)
            if self.bundle.counts.get(name, {}).get("deleted", 0) == 0:
                continue
            same = and_all(is_same(col(c, "t"), col(c, "d")) for c in t.column_names)
            q = exp.select(*[col(k, "d") for k in t.key], self.label(t, "d"),
                           exp.Exists(this=exp.select("1").from_(table(name, "main", "t")).where(same))).from_(
                table(name, BASE_DB, "d")).where(exp.EQ(this=col(KIND, "d"), expression=_lit("deleted")))
            nk = len(t.key)
            for row in self.rows(q):
                self.outcome.deletes_for_review.append({"table": name, "key": list(row[:nk]), "label": row[nk],
                                                        "unchanged_since_backup": bool(row[nk + 1])})
            if not apply:
                assert self.script is not None
                self.script.deferred.append(Step(self.delete_statement(name)))
                continue
            self.outcome.tables.setdefault(name, TableOutcome(name)).deleted = self.delete_unreferenced(name)

    def delete_statement(self, name: str) -> exp.Delete:
        """One DELETE of the rows of ``name`` identical to a row deleted after the deploy that no row
        references (what ``--apply-deletes`` deletes), reading ``base`` only."""
        t = self.old(name)
        deleted = exp.EQ(this=col(KIND, "d"), expression=_lit("deleted"))
        same = and_all(is_same(col(c, "t"), col(c, "d")) for c in t.column_names)
        cond = exp.Exists(this=exp.select("1").from_(table(name, BASE_DB, "d")).where(and_all([deleted, same])))
        return exp.Delete(this=table(name, "main", "t"), where=exp.Where(
            this=and_all([cond, *[exp.Not(this=r) for r in self.references(name)]])))

    def references(self, name: str) -> list[exp.Expression]:
        """``EXISTS`` a row referencing row ``t`` of ``name``, one per foreign key of the old schema."""
        out = []
        for child_name, child in self.bundle.old.tables.items():
            for fk in child.foreign_keys:
                if fk.ref_table == name:
                    refs = zip(fk.columns, fk.ref_columns, strict=True)
                    out.append(exp.Exists(this=exp.select("1").from_(table(child_name, "main", "c")).where(
                        and_all(is_same(col(cc, "c"), col(pc, "t")) for cc, pc in refs))))
        return out

    def delete_unreferenced(self, name: str) -> int:
        """Delete the rows of ``name`` identical to a row deleted after the deploy that no row
        references; the children of every deleted row are remembered for the check."""
        t = self.old(name)
        referenced = []
        for child_name, child in self.bundle.old.tables.items():
            for fk in child.foreign_keys:
                if fk.ref_table == name:
                    refs = zip(fk.columns, fk.ref_columns, strict=True)
                    referenced.append(exp.Exists(this=exp.select("1").from_(table(child_name, "main", "c")).where(
                        and_all(is_same(col(cc, "c"), col(pc, "t")) for cc, pc in refs))))
        deleted = exp.EQ(this=col(KIND, "d"), expression=_lit("deleted"))
        same = and_all(is_same(col(c, "t"), col(c, "d")) for c in t.column_names)
        unreferenced = [exp.Not(this=r) for r in referenced]
        if not self.has_rowid(name):  # no rowids to remember: the check reads these children in full
            self.full.update((fk.table, fk.id) for fk in self.fks_into(name))
            cond = exp.Exists(this=exp.select("1").from_(table(name, BASE_DB, "d")).where(and_all([deleted, same])))
            return self.run(exp.Delete(this=table(name, "main", "t"), where=exp.Where(
                this=and_all([cond, *unreferenced])))).rowcount
        doomed = _t("del", name)
        self.run(_rid_table(doomed))
        self.run(exp.Insert(this=doomed, alternative="IGNORE", expression=exp.select(_rowid("t")).from_(
            table(name, BASE_DB, "d")).join(table(name, "main", "t"), on=same).where(
            and_all([deleted, *unreferenced]))))
        self.watch_children(name, exp.select("rid").from_(doomed))
        return self.run(exp.Delete(this=table(name, "main"), where=exp.Where(
            this=_in(exp.column("rowid"), exp.select("rid").from_(doomed))))).rowcount


def check_target_schema(bundle: Bundle, target: Schema) -> None:
    """Refuse a target whose tables/columns differ from the bundle's old (target) schema."""
    want, have = bundle.old, target
    problems = []
    for name in want.data_tables:
        if name not in have.tables:
            problems.append(f"table {name} is missing")
            continue
        wc, hc = set(want.tables[name].column_names), set(have.tables[name].column_names)
        problems += [f"{name}.{c} is missing" for c in sorted(wc - hc)]
        problems += [f"{name}.{c} is unexpected" for c in sorted(hc - wc)]
    problems += [f"table {n} is unexpected" for n in have.data_tables if n not in want.tables]
    if problems:
        raise RecoveryError(
            f"the target's schema differs from the bundle's target schema ({want.alembic_revision}): "
            + "; ".join(problems[:6]) + (" …" if len(problems) > 6 else ""),
            "restore the backup (or downgrade) first; nothing was changed",
        )


def already_applied(conn: sqlite3.Connection, bundle_id: str) -> bool:
    exists = conn.execute("SELECT 1 FROM main.sqlite_master WHERE type='table' AND name=?", (APPLIED_TABLE,)).fetchone()
    if not exists:
        return False
    q = exp.select("1").from_(table(APPLIED_TABLE, "main")).where(exp.EQ(this=col("bundle_id"), expression=exp.Placeholder()))
    return conn.execute(sql(q), (bundle_id,)).fetchone() is not None


def record_applied(m: Merge) -> None:
    ddl = exp.Create(kind="TABLE", exists=True, this=exp.Schema(this=table(APPLIED_TABLE, "main"), expressions=[
        exp.ColumnDef(this=exp.to_identifier(c, quoted=True), kind=exp.DataType.build("TEXT"))
        for c in ("bundle_id", "applied_at", "tool_version", "policy")]))
    m.run(ddl)
    from recovery import __version__

    ins = exp.Insert(this=table(APPLIED_TABLE, "main"), expression=exp.Values(expressions=[exp.Tuple(
        expressions=[exp.Placeholder()] * 4)]))
    m.run(ins, (m.bundle.bundle_id, datetime.now().isoformat(timespec="seconds"), __version__, m.policy.value))


OUTCOME_COLUMN = "outcome"
"""``_recovery_applied.outcome``: the re-import's ``Outcome.to_json()``, written in the re-import's
own transaction, so the outcome is durable exactly when the data is."""


def record_outcome(conn: sqlite3.Connection | Script, bundle_id: str, outcome_json: str) -> None:
    """Store ``outcome_json`` in the ``_recovery_applied`` row of ``bundle_id`` (the caller's open
    transaction; the column is added to a table made before it existed). Given the re-import's
    :class:`Script`, the writes are steps of its plan."""
    script = conn if isinstance(conn, Script) else Script(conn)
    cols = [r[1] for r in script.conn.execute(sql(exp.Pragma(this=exp.Anonymous(
        this="main.table_info", expressions=[exp.Literal.string(APPLIED_TABLE)]))))]
    if OUTCOME_COLUMN not in cols:
        script.execute(exp.Alter(this=table(APPLIED_TABLE, "main"), kind="TABLE", actions=[exp.ColumnDef(
            this=exp.to_identifier(OUTCOME_COLUMN, quoted=True), kind=exp.DataType.build("TEXT"))]))
    upd = exp.update(table(APPLIED_TABLE, "main"), {OUTCOME_COLUMN: exp.Placeholder()},
                     where=exp.EQ(this=col("bundle_id"), expression=exp.Placeholder()))
    script.execute(upd, (outcome_json, bundle_id))


def recorded_outcome(conn: sqlite3.Connection, bundle_id: str) -> str | None:
    """The outcome JSON recorded with ``bundle_id``'s re-import, if any."""
    if not already_applied(conn, bundle_id):
        return None
    cols = [r[1] for r in conn.execute(sql(exp.Pragma(this=exp.Anonymous(
        this="main.table_info", expressions=[exp.Literal.string(APPLIED_TABLE)]))))]
    if OUTCOME_COLUMN not in cols:
        return None
    q = exp.select(col(OUTCOME_COLUMN)).from_(table(APPLIED_TABLE, "main")).where(
        exp.EQ(this=col("bundle_id"), expression=exp.Placeholder()))
    row = conn.execute(sql(q), (bundle_id,)).fetchone()
    return row[0] if row and isinstance(row[0], str) else None


def load_lost(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The bundle's lost values as a bounded :class:`recovery.report.lost.LostValues`: the first 1,000 by
    (table, key, column), exact counts, and the bundle's rows.db, which keeps the complete list."""
    from recovery.report.lost import load

    return load(conn, BUNDLE_DB)


def merge_into(
    conn: sqlite3.Connection, bundle: Bundle, policy: ConflictPolicy, prefer: Prefer, apply_deletes: bool,
    files: FilesConfig, target_name: str, dry_run: bool, target: Schema, in_place: bool = False,
    conflicts: ConflictMode = ConflictMode.CELL,
) -> Outcome:
    """Stage, detect, resolve and apply the bundle on ``conn`` (bundle attached, transaction open).
    ``target`` is the target's reflected schema (reflected on another connection: SQLAlchemy may
    reset a connection's transaction state). The caller commits or rolls back."""
    return _merge(conn, bundle, policy, prefer, apply_deletes, files, target_name, dry_run, target, in_place,
                  conflicts)[0]


def merge_and_check(
    conn: sqlite3.Connection, bundle: Bundle, policy: ConflictPolicy, prefer: Prefer, apply_deletes: bool,
    files: FilesConfig, target_name: str, dry_run: bool, target: Schema, in_place: bool = False,
    limit: int = 20, conflicts: ConflictMode = ConflictMode.CELL, script: Script | None = None,
) -> tuple[Outcome, list[dict[str, Any]]]:
    """:func:`merge_into`, then the foreign-key check of what it wrote (:meth:`Merge.fk_problems`):
    the problems ``PRAGMA foreign_key_check`` would report for those rows, in its shape
    (``{"table", "rowid", "parent", "fk"}``, at most ``limit``); empty when nothing was written
    (already applied, aborted). The caller commits only when the list is empty. Every statement
    is time-bounded (:mod:`recovery.engine.timebound`): one that runs too long raises exit 3."""
    from recovery.engine.timebound import statement_time_limit

    with statement_time_limit(conn):
        outcome, m = _merge(conn, bundle, policy, prefer, apply_deletes, files, target_name, dry_run, target, in_place,
                            conflicts, script)
        if m is None or outcome.aborted:
            return outcome, []
        return outcome, m.fk_problems(limit)


def _merge(
    conn: sqlite3.Connection, bundle: Bundle, policy: ConflictPolicy, prefer: Prefer, apply_deletes: bool,
    files: FilesConfig, target_name: str, dry_run: bool, target: Schema, in_place: bool,
    conflicts: ConflictMode = ConflictMode.CELL, script: Script | None = None,
) -> tuple[Outcome, Merge | None]:
    check_target_schema(bundle, target)
    outcome = Outcome(bundle.bundle_id, target_name, policy.value, dry_run, conflicts_mode=conflicts.value)
    outcome.lost = load_lost(conn)
    if already_applied(conn, bundle.bundle_id):
        outcome.already_applied = True
        return outcome, None
    p = make_plan(bundle.old, bundle.new, bundle.mapping, bundle.tables_with_rows())
    if p.errors:
        raise RecoveryError("the plan has errors, nothing was changed: " + "; ".join(p.errors),
                            "add the missing columns to a mapping file and extract again")
    m = Merge(conn, bundle, p, target, policy, prefer, files, outcome, _Counter(), in_place, mode=conflicts,
              script=script)
    for name in bundle.old.data_tables:
        outcome.tables.setdefault(name, TableOutcome(name)).rows_before = _count(conn, name)
    m.stage()
    for tp in m.staged():
        m.detect_primary_keys(tp)
    for tp in m.staged():
        m.detect_unique(tp)
        m.detect_constraints(tp)
    for tp in m.staged():
        m.detect_missing_parents(tp)
        m.detect_updates(tp)
    m.propagate_skips()
    if m.detect_staged_duplicates():
        m.propagate_skips()
    m.settle_remaps()
    m.collect_skipped()
    if policy is ConflictPolicy.ABORT and outcome.conflicts:
        outcome.aborted = True
        return outcome, m
    seq_before = sequences.read_sequences(conn)
    written = [tp.table for tp in m.staged()] + (sorted(bundle.tables_with_deletes()) if apply_deletes else [])
    assert m.script is not None
    write = m.script.execute
    suspended = triggers.suspend(conn, written, write)  # the app's triggers must not fire for carried rows
    outcome.triggers_suspended = [t.name for t in suspended]
    m.quiet = True
    m.apply(apply_deletes)
    if outcome.aborted:  # the caller rolls back; the triggers are back either way
        triggers.restore(conn, suspended, write)
        return outcome, m
    outcome.sequences = sequences.carry_forward(conn, sequences.live_from_manifest(bundle.manifest), seq_before,
                                                write)
    triggers.restore(conn, suspended, write)
    for name, c in bundle.counts.items():
        if name in outcome.tables:
            outcome.tables[name].bundle_deleted = c.get("deleted", 0)
            outcome.tables[name].lost = c.get("lost", 0)
    record_applied(m)
    for name in bundle.old.data_tables:
        outcome.tables[name].rows_after = _count(conn, name)
    return outcome, m


def _json_container(value: exp.Expression) -> exp.Expression:
    """``value`` is text holding a JSON object or array (``json_type`` only of valid JSON text)."""
    is_json = and_all([exp.EQ(this=exp.Anonymous(this="typeof", expressions=[value]), expression=_lit("text")),
                       exp.Anonymous(this="json_valid", expressions=[value.copy()])])
    kind = exp.Case(ifs=[exp.If(this=is_json, true=exp.Anonymous(this="json_type", expressions=[value.copy()]))])
    return exp.In(this=kind, expressions=[_lit("object"), _lit("array")])


def _json_text(values: dict[str, Any]) -> str:
    """Column values of a row conflict as one JSON object (bytes as hex): a printable cell."""
    import json

    return json.dumps(values, ensure_ascii=False, default=lambda v: bytes(v).hex() if isinstance(v, (bytes, memoryview)) else str(v))


def _count(conn: sqlite3.Connection, name: str) -> int:
    return conn.execute(sql(exp.select("count(*)").from_(table(name, "main")))).fetchone()[0]


def attach_bundle(conn: sqlite3.Connection, bundle: Bundle) -> None:
    from recovery.engine.sqlite_io import _uri

    conn.execute(f"ATTACH DATABASE ? AS {BUNDLE_DB}", (_uri(bundle.rows_db, mode="ro"),))
    conn.execute(f"ATTACH DATABASE ? AS {BASE_DB}", (_uri(bundle.base_db, mode="ro"),))


def open_target(path: Path, timeout: float) -> sqlite3.Connection:
    from recovery.engine.sqlite_io import _uri, check_sqlite_file

    p = check_sqlite_file(path, "target database")
    conn = sqlite3.connect(_uri(p, mode="rw"), uri=True, isolation_level=None, timeout=0.2)
    conn.execute("PRAGMA foreign_keys = OFF")  # no cascade may fire; integrity is checked before commit
    conn.execute("PRAGMA temp_store = FILE")  # staged rows spill to a temp file: bounded RSS at any size
    return conn
