"""Detector: ``unique`` conflicts — a staged row's value of a plain UNIQUE constraint or index is taken
in the target by a different row (partial, expression and collated indexes: :mod:`.constraint`)."""

from __future__ import annotations

from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, is_distinct, is_same, or_all, table
from recovery.model.kinds import ConflictKind, Resolution
from recovery.model.outcome import Conflict
from recovery.reimport.context import Context, in_query, temp_table
from recovery.transpile.passes import TablePlan


def detect(ctx: Context, tp: TablePlan) -> list[Conflict]:
    """Report and skip the live staged rows of ``tp`` whose plain unique columns clash with a target row."""
    found: list[Conflict] = []
    t = ctx.old(tp.table)
    plain = {tuple(c.lower() for c in u) for u in ctx.rules(tp.table).plain_unique}
    for uset in t.unique_sets:
        if tuple(uset) == t.primary_key or tuple(c.lower() for c in uset) not in plain:
            continue  # partial, expression or collated indexes: detect_constraints
        clash = and_all(
            [
                *(is_same(col(c, "t"), col(c, "s")) for c in uset),
                *(exp.Not(this=exp.Is(this=col(c, "s"), expression=exp.Null())) for c in uset),
                *(
                    [or_all(is_distinct(col(k, "t"), col(k, "s")) for k in t.primary_key)]
                    if t.primary_key
                    else []
                ),
            ]
        )
        q = (
            exp.select(
                exp.column("rowid", "s"),
                *[col(k, "s") for k in t.key],
                ctx.label(t, "s"),
                *[col(c, "s") for c in uset],
            )
            .from_(exp.alias_(temp_table("ins", tp.table), "s"))
            .where(
                and_all(
                    [
                        exp.Exists(
                            this=exp.select("1").from_(table(tp.table, "main", "t")).where(clash)
                        ),
                        exp.Not(
                            this=in_query(
                                exp.column("rowid", "s"),
                                exp.select("rid").from_(temp_table("skip", tp.table)),
                            )
                        ),
                    ]
                )
            )
        )
        for rid, *rest in ctx.rows(q):
            nk = len(t.key)
            found.append(
                Conflict(
                    ConflictKind.UNIQUE,
                    tp.table,
                    tuple(rest[:nk]),
                    Resolution.SKIPPED,
                    column=",".join(uset),
                    bundle_value=rest[nk + 1] if len(uset) == 1 else list(rest[nk + 1 :]),
                    label=rest[nk],
                    detail=f"{', '.join(uset)} is taken in the target by a different row",
                )
            )
            ctx.skip(tp.table, exp.select(exp.Literal.number(rid)))
    return found
