"""``Plan``: carrying bundle rows (new schema) into the old schema, as sqlglot expression trees.

Transpiling is a list of small passes (see :data:`PASSES`), each taking and returning a ``Plan``:

1. :func:`source_columns` — each old column's expression over the bundle row (alias ``b``) from the
   resolved ``ColumnMapping`` (user mapping > migration lineage > rename detection > same name);
2. :func:`fill_old_only` — old columns with no source: the column default (or NULL) for inserted
   rows, the backup's value for updated rows; NOT NULL without default is a planning error;
3. :func:`build_statements` — INSERT … SELECT for inserted rows, a column-wise three-way UPDATE for
   updated rows, DELETE for rows deleted after the deploy (applied only on request).

At apply time the bundle's ``rows.db`` is attached as ``bundle`` and ``base.db`` as ``base``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import sqlglot
from sqlglot import exp

from recovery.transpile.mapping import ColumnMapping
from recovery.engine.schema import Schema, Table
from recovery.engine.sqlbuild import and_all, col, is_distinct, is_same, qualify_columns, sql, table
from recovery.model.kinds import INSERT_KINDS, KIND_COLUMN, RowKind

KIND = KIND_COLUMN  # the name the plan's statements use for it
BUNDLE_DB = "bundle"
BASE_DB = "base"


@dataclass(frozen=True)
class ColumnPlan:
    column: str
    expression: exp.Expression | None  # over alias "b"; None: keep backup value / default
    source: str
    insert_value: exp.Expression | None = None  # what an inserted row gets


@dataclass(frozen=True)
class TablePlan:
    table: str
    key: tuple[str, ...]
    columns: tuple[ColumnPlan, ...] = ()
    insert: exp.Insert | None = None
    update: exp.Update | None = None
    delete: exp.Delete | None = None
    insert_select: exp.Select | None = None
    update_select: exp.Select | None = None
    """SELECT key…, theirs_i, base_i for updated rows; ``updatable`` names column i."""
    updatable: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    tables: tuple[TablePlan, ...]
    errors: tuple[str, ...] = ()
    old: Schema | None = field(default=None, repr=False, compare=False)
    new: Schema | None = field(default=None, repr=False, compare=False)
    mapping: ColumnMapping | None = field(default=None, repr=False, compare=False)
    has_rows: frozenset[str] = frozenset()
    """Old tables whose bundle table holds rows (others need no INSERT/UPDATE)."""
    has_deletes: frozenset[str] | None = None
    """Old tables with rows deleted after the deploy; None: unknown, every table gets its DELETE."""

    def table(self, name: str) -> TablePlan | None:
        return next((t for t in self.tables if t.table == name), None)

    def statements(self, apply_deletes: bool = False) -> list[exp.Expression]:
        """Inserts parents first, then updates, then (on request) deletes children first."""
        out: list[exp.Expression] = [t.insert for t in self.tables if t.insert is not None]
        out += [t.update for t in self.tables if t.update is not None]
        if apply_deletes:
            out += [t.delete for t in reversed(self.tables) if t.delete is not None]
        return out

    def to_sql(self, dialect: str = "sqlite", apply_deletes: bool = True) -> str:
        """The whole plan as reviewable SQL for ``dialect``."""
        lines = [
            "-- recovery re-import plan: carries the bundle's rows into the old schema.",
            f"-- Attach the bundle first: rows.db AS {BUNDLE_DB}, base.db AS {BASE_DB}.",
        ]
        for e in self.errors:
            lines.append(f"-- PLANNING ERROR: {e}")
        for t in self.tables:
            tm = self.mapping.tables.get(t.table) if self.mapping is not None else None
            for c in t.columns:
                if c.source != "same-name":
                    how = (
                        c.expression.sql(dialect=dialect)
                        if c.expression is not None
                        else "default/NULL on insert, backup value on update"
                    )
                    lines.append(
                        f"-- {t.table}.{c.column} <- {how}  [{c.source}]{_evidence_note(tm, c.column)}"
                    )
        lines.append("BEGIN;")
        for stmt in self.statements(apply_deletes):
            text = stmt.sql(dialect=dialect, pretty=True) + ";"
            if isinstance(stmt, exp.Delete):  # for review only: never live SQL in a file people run
                lines.append(
                    "-- rows deleted after the deploy (the re-import runs them only with --apply-deletes;"
                )
                lines.append("-- uncomment to run by hand):")
                text = "\n".join("-- " + line for line in text.splitlines())
            lines.append(text)
        lines.append("COMMIT;")
        return "\n".join(lines) + "\n"


def _evidence_note(tm: object, column: str) -> str:
    """' (55 of 55 unchanged rows agree)' from the rule's evidence (recovery.compare.evidence), if any."""
    rule = next((r for r in getattr(tm, "rules", ()) if r.column == column), None)
    ev = getattr(rule, "check", None) or {}
    if "rows_checked" not in ev:
        return ""
    trusted = "; disagrees, kept by --trust-mapping" if ev.get("trusted") else ""
    return f" ({ev['rows_agreeing']} of {ev['rows_checked']} unchanged rows agree{trusted})"


def source_columns(plan: Plan) -> Plan:
    assert plan.old is not None and plan.mapping is not None
    tables = []
    for tp in plan.tables:
        tm = plan.mapping.tables.get(tp.table)
        cols = []
        for rule in tm.rules if tm else ():
            expr = qualify_columns(rule.expression, "b") if rule.expression is not None else None
            cols.append(ColumnPlan(rule.column, expr, rule.source, expr))
        tables.append(replace(tp, columns=tuple(cols)))
    return replace(plan, tables=tuple(tables))


def default_value(text: str | None) -> exp.Expression | None:
    """The SQL default as an expression (``'0'`` → '0', ``CURRENT_TIMESTAMP`` …), or None."""
    if text is None:
        return None
    try:
        return sqlglot.parse_one(text, read="sqlite")
    except sqlglot.errors.ParseError:
        return exp.Literal.string(text)


def fill_old_only(plan: Plan) -> Plan:
    assert plan.old is not None
    errors = list(plan.errors)
    tables = []
    for tp in plan.tables:
        old_t = plan.old.tables[tp.table]
        cols = []
        for c in tp.columns:
            if c.expression is None:
                spec = old_t.column(c.column)
                dv = default_value(spec.default if spec else None)
                if (
                    dv is None
                    and spec is not None
                    and not spec.nullable
                    and tp.table in plan.has_rows
                ):
                    if c.column in old_t.primary_key:
                        errors.append(
                            f"{tp.table}.{c.column}: primary key has no source in the new schema"
                        )
                    else:
                        errors.append(
                            f"{tp.table}.{c.column} is NOT NULL without a default and the new schema has no "
                            f"source for it: add it to the mapping file ([tables.{tp.table}.columns] {c.column} = ...)"
                        )
                c = replace(c, insert_value=dv if dv is not None else exp.Null(), source=c.source)
            cols.append(c)
        tables.append(replace(tp, columns=tuple(cols)))
    return replace(plan, tables=tuple(tables), errors=tuple(errors))


def _bundle_rows(tname: str, kinds: tuple[RowKind, ...]) -> exp.Select:
    cond = exp.In(this=col(KIND, "b"), expressions=[exp.Literal.string(k) for k in kinds])
    return exp.select().from_(table(tname, BUNDLE_DB, "b")).where(cond)


def insert_select(tp: TablePlan) -> exp.Select:
    q = _bundle_rows(tp.table, INSERT_KINDS)
    return q.select(
        *[
            exp.alias_((c.insert_value or exp.Null()).copy(), c.column, quoted=True)
            for c in tp.columns
        ],
        copy=False,
    )  # insert_value: set for every column by fill_old_only


def update_select(tp: TablePlan, old_t: Table) -> tuple[exp.Select, tuple[str, ...]]:
    """key…, theirs_i, base_i for every updatable (sourced, non-key) column of updated rows."""
    updatable = tuple(
        c.column for c in tp.columns if c.expression is not None and c.column not in tp.key
    )
    q = _bundle_rows(tp.table, (RowKind.UPDATED,))
    q = q.join(
        table(tp.table, BASE_DB, "o"),
        on=and_all(
            [is_same(col(k, "o"), qualify_key(tp, k)) for k in tp.key]
            + [exp.EQ(this=col(KIND, "o"), expression=exp.Literal.string(RowKind.UPDATED))]
        ),
    )
    sel: list[exp.Expression] = [
        exp.alias_(col(k, "o"), f"key_{i}", quoted=True) for i, k in enumerate(tp.key)
    ]
    by_name = {c.column: c for c in tp.columns}
    for i, name in enumerate(updatable):
        theirs = by_name[name].expression
        assert theirs is not None  # updatable columns are the sourced ones
        sel.append(exp.alias_(theirs.copy(), f"theirs_{i}", quoted=True))
        sel.append(exp.alias_(col(name, "o"), f"base_{i}", quoted=True))
    return q.select(*sel, copy=False), updatable


def qualify_key(tp: TablePlan, k: str) -> exp.Expression:
    c = next(c for c in tp.columns if c.column == k)
    return c.expression.copy() if c.expression is not None else col(k, "b")


def build_statements(plan: Plan) -> Plan:
    assert plan.old is not None
    tables = []
    for tp in plan.tables:
        wants_delete = plan.has_deletes is None or tp.table in plan.has_deletes
        if tp.table not in plan.has_rows:
            # a table whose only changes are deletions still needs its DELETE
            tables.append(replace(tp, delete=delete_statement(tp)) if wants_delete else tp)
            continue
        old_t = plan.old.tables[tp.table]
        ins_sel = insert_select(tp)
        insert = exp.Insert(
            this=exp.Schema(
                this=table(tp.table),
                expressions=[exp.to_identifier(c.column, quoted=True) for c in tp.columns],
            ),
            expression=ins_sel.copy(),
        )
        upd_sel, updatable = update_select(tp, old_t)
        update = None
        if updatable:
            target = table(tp.table)
            sets = []
            for i, name in enumerate(updatable):
                theirs, base, ours = (
                    col(f"theirs_{i}", "u"),
                    col(f"base_{i}", "u"),
                    col(name, tp.table),
                )
                three_way = exp.Case(
                    ifs=[
                        exp.If(
                            this=and_all([is_distinct(theirs, base), is_same(ours, base.copy())]),
                            true=theirs.copy(),
                        )
                    ],
                    default=ours.copy(),
                )
                sets.append(exp.EQ(this=col(name), expression=three_way))
            update = exp.Update(
                this=target,
                expressions=sets,
                from_=exp.From(
                    this=exp.Subquery(
                        this=upd_sel.copy(),
                        alias=exp.TableAlias(this=exp.to_identifier("u", quoted=True)),
                    )
                ),
                where=exp.Where(
                    this=and_all(
                        exp.EQ(this=col(k, tp.table), expression=col(f"key_{i}", "u"))
                        for i, k in enumerate(tp.key)
                    )
                ),
            )
        delete = delete_statement(tp) if wants_delete else None
        tables.append(
            replace(
                tp,
                insert=insert,
                update=update,
                delete=delete,
                insert_select=ins_sel,
                update_select=upd_sel,
                updatable=updatable,
            )
        )
    return replace(plan, tables=tuple(tables))


def delete_statement(tp: TablePlan) -> exp.Delete:
    """DELETE the rows the bundle's base.db marks ``deleted`` (matched by key, NULL-safe)."""
    deleted = (
        exp.select(exp.Literal.number(1))
        .from_(table(tp.table, BASE_DB, "d"))
        .where(
            and_all(
                [exp.EQ(this=col(KIND, "d"), expression=exp.Literal.string(RowKind.DELETED))]
                + [is_same(col(k, "d"), col(k, tp.table)) for k in tp.key]
            )
        )
    )
    return exp.Delete(this=table(tp.table), where=exp.Where(this=exp.Exists(this=deleted)))


PASSES: tuple[Callable[[Plan], Plan], ...] = (source_columns, fill_old_only, build_statements)
"""The transpile passes, in order."""


def plan(
    old: Schema,
    new: Schema,
    mapping: ColumnMapping,
    has_rows: set[str] | frozenset[str],
    has_deletes: set[str] | frozenset[str] | None = None,
) -> Plan:
    """Run every pass over the old tables the mapping carries (FK order, skipped tables left out).

    ``has_deletes``: tables with rows deleted after the deploy (None: emit every table's DELETE)."""
    tables = tuple(
        TablePlan(t, old.tables[t].key)
        for t in old.fk_order()
        if t in mapping.tables
        and not mapping.tables[t].skip
        and mapping.tables[t].source_table in new.tables
    )
    p = Plan(
        tables,
        old=old,
        new=new,
        mapping=mapping,
        has_rows=frozenset(has_rows),
        has_deletes=None if has_deletes is None else frozenset(has_deletes),
    )
    for step in PASSES:
        p = step(p)
    return p


def render(stmt: exp.Expression, dialect: str = "sqlite") -> str:
    return sql(stmt, dialect)
