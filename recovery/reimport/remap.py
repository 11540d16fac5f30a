"""Pass: remap — staged rows whose integer primary key is taken get fresh keys above every key in
use (and above the live database's AUTOINCREMENT counter), and every staged reference follows
(foreign-key columns, updated rows, polymorphic entity links); once every skip is known,
:func:`settle_remaps` reports a remapped row that was skipped after all as skipped."""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, table
from recovery.model.kinds import ConflictKind, Resolution
from recovery.model.outcome import Remap
from recovery.reimport import sequences
from recovery.reimport.context import Context, in_query, lit, temp_table
from recovery.transpile.passes import TablePlan


def remap(ctx: Context, tp: TablePlan, rids: list[int]) -> None:
    """Give rows ``rids`` of ``ins:<t>`` fresh integer keys above every key in use, and rewrite
    every staged reference to them (FK columns, updated rows, polymorphic entity links)."""
    k = ctx.old(tp.table).primary_key[0]
    top = exp.select(exp.func("max", col(k))).from_(table(tp.table, "main"))
    top_s = exp.select(exp.func("max", col(k))).from_(temp_table("ins", tp.table))
    base = ctx.rows(
        exp.select(
            exp.func(
                "max",
                exp.func("coalesce", top.subquery(), 0),
                exp.func("coalesce", top_s.subquery(), 0),
            )
        )
    )[0][0]
    # never a key the live DB's AUTOINCREMENT counter handed out after the deploy
    live_seq = {n.lower(): v for n, v in sequences.live_from_manifest(ctx.bundle.manifest).items()}
    base = max(base, live_seq.get(tp.table.lower(), 0))
    rid_list = exp.Tuple(expressions=[exp.Literal.number(r) for r in rids])
    ctx.run(
        exp.Create(
            kind="TABLE",
            this=temp_table("remap", tp.table),
            expression=exp.select(
                exp.alias_(col(k, "s"), "old_key"),
                exp.alias_(
                    exp.Add(
                        this=exp.Literal.number(base),
                        expression=exp.Window(
                            this=exp.RowNumber(),
                            order=exp.Order(expressions=[exp.Ordered(this=col(k, "s"))]),
                        ),
                    ),
                    "new_key",
                ),
            )
            .from_(exp.alias_(temp_table("ins", tp.table), "s"))
            .where(exp.In(this=exp.column("rowid", "s"), expressions=rid_list.expressions)),
        )
    )
    pairs = ctx.rows(exp.select("old_key", "new_key").from_(temp_table("remap", tp.table)))
    ctx.outcome.remaps += [Remap(tp.table, o, n) for o, n in pairs]
    ctx.outcome.tables[tp.table].remapped += len(pairs)
    lookup = exp.select("new_key").from_(exp.alias_(temp_table("remap", tp.table), "r"))
    _rewrite(ctx, temp_table("ins", tp.table), k, tp.table, lookup, rid_filter=rid_list)
    for child in ctx.staged():
        ct = ctx.old(child.table)
        for fk in ct.foreign_keys:
            if fk.ref_table == tp.table and len(fk.columns) == 1 and fk.ref_columns[0] == k:
                _rewrite(ctx, temp_table("ins", child.table), fk.columns[0], tp.table, lookup)
                if fk.columns[0] in child.updatable:
                    i = child.updatable.index(fk.columns[0])
                    _rewrite(ctx, temp_table("upd", child.table), f"theirs_{i}", tp.table, lookup)
        if child.table == ctx.files.table and ct.column(ctx.files.entity_id) is not None:
            kinds = exp.Tuple(expressions=[lit(tp.table), lit(tp.table.rstrip("s"))])
            _rewrite(
                ctx,
                temp_table("ins", child.table),
                ctx.files.entity_id,
                tp.table,
                lookup,
                extra=exp.In(this=col(ctx.files.entity_type), expressions=kinds.expressions),
            )


def _rewrite(
    ctx: Context,
    target: exp.Table,
    column: str,
    remapped: str,
    lookup: exp.Select,
    rid_filter: exp.Tuple | None = None,
    extra: exp.Expression | None = None,
) -> None:
    """``column`` of the staged ``target`` rows that name an old key of ``remapped`` takes its new key."""
    match = exp.EQ(this=col("old_key", "r"), expression=col(column, target.name))
    sub = lookup.copy().where(match)
    in_remap = in_query(
        col(column, target.name), exp.select("old_key").from_(temp_table("remap", remapped))
    )
    conds = [in_remap]
    if rid_filter is not None:
        conds.append(
            exp.In(this=exp.column("rowid", target.name), expressions=rid_filter.expressions)
        )
    if extra is not None:
        conds.append(extra)
    upd = exp.Update(
        this=target,
        expressions=[exp.EQ(this=col(column), expression=sub.subquery())],
        where=exp.Where(this=and_all(conds)),
    )
    ctx.run(upd)


def settle_remaps(ctx: Context) -> None:
    """Once every skip is known: a remapped row that was skipped after all (e.g. its unique value
    is taken too) is reported as skipped, not remapped; conflicts name rows by their bundle key."""
    for name in sorted({r.table for r in ctx.outcome.remaps}):
        k = ctx.old(name).primary_key[0]
        q = (
            exp.select(col("old_key", "r"))
            .from_(exp.alias_(temp_table("remap", name), "r"))
            .join(
                exp.alias_(temp_table("ins", name), "s"),
                on=exp.EQ(this=col(k, "s"), expression=col("new_key", "r")),
            )
            .where(
                in_query(
                    exp.column("rowid", "s"), exp.select("rid").from_(temp_table("skip", name))
                )
            )
        )
        dropped = {row[0] for row in ctx.rows(q)} & {
            r.old_key for r in ctx.outcome.remaps if r.table == name
        }
        back = {r.new_key: r.old_key for r in ctx.outcome.remaps if r.table == name}
        fixed = []
        for c in ctx.outcome.conflicts:
            if (
                c.table == name
                and len(c.key) == 1
                and c.kind != ConflictKind.PRIMARY_KEY
                and c.key[0] in back
            ):
                c = replace(c, key=(back[c.key[0]],))
            if (
                c.table == name
                and c.kind == ConflictKind.PRIMARY_KEY
                and c.resolution == Resolution.REMAPPED
                and c.key[0] in dropped
            ):
                c = replace(
                    c,
                    resolution=Resolution.SKIPPED,
                    detail=c.detail + "; not remapped: the row was skipped",
                )
            fixed.append(c)
        ctx.outcome.conflicts = fixed
        ctx.outcome.remaps = [
            r for r in ctx.outcome.remaps if not (r.table == name and r.old_key in dropped)
        ]
        ctx.outcome.tables[name].remapped -= len(dropped)
