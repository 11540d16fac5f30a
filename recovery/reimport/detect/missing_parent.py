"""Detector: ``missing_parent`` conflicts — a staged row's foreign key points at a parent that is
neither in the target nor staged."""

from __future__ import annotations

from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, is_same, or_all, table
from recovery.model.kinds import ConflictKind, Resolution
from recovery.model.outcome import Conflict
from recovery.reimport.context import Context, in_key_order, in_query, temp_table
from recovery.transpile.passes import TablePlan


def detect(ctx: Context, tp: TablePlan) -> list[Conflict]:
    """Report and skip the live staged rows of ``tp`` whose parent is in neither the target nor the bundle."""
    found: list[Conflict] = []
    t = ctx.old(tp.table)
    staged = {s.table for s in ctx.staged()}
    fks = [fk for fk in t.foreign_keys if fk.ref_table in ctx.bundle.old.tables]
    in_order = ctx.sorted_key([fk.ref_table for fk in fks])
    for n, fk in enumerate(fks):
        present = [
            exp.Exists(
                this=exp.select("1")
                .from_(table(fk.ref_table, "main", "p"))
                .where(
                    and_all(
                        is_same(col(pc, "p"), col(cc, "s"))
                        for pc, cc in zip(fk.ref_columns, fk.columns, strict=True)
                    )
                )
            )
        ]
        if fk.ref_table in staged:
            present.append(
                exp.Exists(
                    this=exp.select("1")
                    .from_(exp.alias_(temp_table("ins", fk.ref_table), "p"))
                    .where(
                        and_all(
                            is_same(col(pc, "p"), col(cc, "s"))
                            for pc, cc in zip(fk.ref_columns, fk.columns, strict=True)
                        )
                    )
                )
            )
        notnull = [
            exp.Not(this=exp.Is(this=col(c, "s"), expression=exp.Null())) for c in fk.columns
        ]
        live = exp.Not(
            this=in_query(
                exp.column("rowid", "s"), exp.select("rid").from_(temp_table("skip", tp.table))
            )
        )
        if n == in_order and not _any_missing(ctx, tp, list(fk.columns), notnull, present, live):
            continue
        q = (
            exp.select(
                exp.column("rowid", "s"),
                *[col(k, "s") for k in t.key],
                ctx.label(t, "s"),
                *[col(c, "s") for c in fk.columns],
            )
            .from_(exp.alias_(temp_table("ins", tp.table), "s"))
            .where(
                and_all(
                    [
                        *notnull,
                        exp.Not(this=or_all(present)),
                        live,
                    ]
                )
            )
        )
        nk = len(t.key)
        for rid, *rest in ctx.rows(q):
            found.append(
                Conflict(
                    ConflictKind.MISSING_PARENT,
                    tp.table,
                    tuple(rest[:nk]),
                    Resolution.SKIPPED,
                    column=",".join(fk.columns),
                    bundle_value=rest[nk + 1],
                    label=rest[nk],
                    detail=f"{fk.ref_table} row {rest[nk + 1]} is not in the target",
                )
            )
            ctx.skip(tp.table, exp.select(exp.Literal.number(rid)))
    return found


def _any_missing(
    ctx: Context,
    tp: TablePlan,
    columns: list[str],
    notnull: list[exp.Expression],
    present: list[exp.Expression],
    live: exp.Expression,
) -> bool:
    """Whether :func:`detect`'s query of this key can find a row: the same condition on the same
    values, with the live staged rows' key values materialized in key order
    (:func:`recovery.reimport.context.in_key_order`) so the parent is probed in key order — one
    read of each of its pages, not one per row. True also when SQLite cannot run it."""
    rows = exp.select("1").from_(exp.alias_(temp_table("ins", tp.table), "s")).where(live)
    return ctx.finds_row(
        in_key_order(rows, columns, "s").where(and_all([*notnull, exp.Not(this=or_all(present))]))
    )
