"""Pass: skip propagation — a unit lands whole or not at all. Children of skipped parents are
skipped, a skipped child of an ``ON DELETE CASCADE`` parent skips the parent (a quote never lands
without its items), file records follow their entity; :func:`collect_skipped` lists the rows
skipped only because their unit was."""

from __future__ import annotations

from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, is_same
from recovery.reimport.context import Context, in_query, lit, temp_table


def propagate_skips(ctx: Context) -> None:
    """Skip whole units: children of skipped parents; cascade-owned children's parents."""
    staged = list(dict.fromkeys(s.table for s in ctx.staged()))  # the plan's order: reimport.sql
    for _ in range(len(staged) * 2 + 2):
        changed = 0
        for child in staged:
            ct = ctx.old(child)
            for fk in ct.foreign_keys:
                if fk.ref_table not in staged:
                    continue
                link = and_all(
                    is_same(col(pc, "p"), col(cc, "c"))
                    for pc, cc in zip(fk.ref_columns, fk.columns, strict=True)
                )
                skipped_p = ctx.skipped_unit(fk.ref_table, "p")
                q = (
                    exp.select(exp.column("rowid", "c"))
                    .from_(exp.alias_(temp_table("ins", child), "c"))
                    .join(exp.alias_(temp_table("ins", fk.ref_table), "p"), on=link)
                    .where(skipped_p)
                )
                changed += ctx.skip(child, q)
                i_fk = [c for c in fk.columns if c in ctx.tp(child).updatable]
                if i_fk:  # updated rows pointing at a skipped new parent
                    i = ctx.tp(child).updatable.index(i_fk[0])
                    uq = (
                        exp.select(exp.column("rowid", "c"))
                        .from_(exp.alias_(temp_table("upd", child), "c"))
                        .join(
                            exp.alias_(temp_table("ins", fk.ref_table), "p"),
                            on=is_same(col(fk.ref_columns[0], "p"), col(f"theirs_{i}", "c")),
                        )
                        .where(skipped_p.copy())
                    )
                    changed += ctx.run(
                        exp.Insert(
                            this=temp_table("uskip", child), expression=uq, alternative="IGNORE"
                        )
                    ).rowcount
                if (fk.on_delete or "").upper() == "CASCADE":
                    skipped_c = ctx.skipped_unit(child, "c")
                    pq = (
                        exp.select(exp.column("rowid", "p"))
                        .from_(exp.alias_(temp_table("ins", fk.ref_table), "p"))
                        .join(exp.alias_(temp_table("ins", child), "c"), on=link.copy())
                        .where(skipped_c)
                    )
                    changed += ctx.skip(fk.ref_table, pq)
            changed += _skip_entity_links(ctx, child)
        if not changed:
            return


def _skip_entity_links(ctx: Context, parent: str) -> int:
    """Skip staged file records whose polymorphic entity link names a skipped staged row of
    ``parent``: a file must not land attached to a row that did not (or to another row)."""
    ft = ctx.files.table
    if ft == parent or ctx.plan.table(ft) is None or ctx.tp(ft).insert_select is None:
        return 0
    pt, ct = ctx.old(parent), ctx.old(ft)
    if (
        len(pt.primary_key) != 1
        or ct.column(ctx.files.entity_id) is None
        or ct.column(ctx.files.entity_type) is None
    ):
        return 0
    kinds = [lit(parent), lit(parent.rstrip("s"))]
    q = (
        exp.select(exp.column("rowid", "c"))
        .from_(exp.alias_(temp_table("ins", ft), "c"))
        .join(
            exp.alias_(temp_table("ins", parent), "p"),
            on=exp.EQ(this=col(pt.primary_key[0], "p"), expression=col(ctx.files.entity_id, "c")),
        )
        .where(
            and_all(
                [
                    exp.In(this=col(ctx.files.entity_type, "c"), expressions=kinds),
                    ctx.skipped_unit(parent, "p"),
                ]
            )
        )
    )
    return ctx.skip(ft, q)


def collect_skipped(ctx: Context) -> None:
    """List bundle rows skipped only because their unit was (no conflict of their own)."""
    own = {(c.table, tuple(c.key)) for c in ctx.outcome.conflicts}
    for tp in ctx.staged():
        t = ctx.old(tp.table)
        q = (
            exp.select(exp.column("rowid", "s"), *[col(k, "s") for k in t.key], ctx.label(t, "s"))
            .from_(exp.alias_(temp_table("ins", tp.table), "s"))
            .where(
                in_query(
                    exp.column("rowid", "s"), exp.select("rid").from_(temp_table("skip", tp.table))
                )
            )
        )
        for rid, *k, label in ctx.rows(q):
            if (tp.table, tuple(k)) in own or (tp.table, rid) in ctx.present:
                continue
            ctx.outcome.skipped_rows.append(
                {
                    "table": tp.table,
                    "key": k,
                    "label": label,
                    "kind": "insert",
                    "reason": "its unit was skipped (see conflicts)",
                }
            )
        uq = (
            exp.select(*[col(f"key_{i}", "u") for i in range(len(t.key))])
            .from_(exp.alias_(temp_table("upd", tp.table), "u"))
            .where(
                in_query(
                    exp.column("rowid", "u"), exp.select("rid").from_(temp_table("uskip", tp.table))
                )
            )
        )
        for row_key in ctx.rows(uq):
            if (tp.table, tuple(row_key)) in own:
                continue
            ctx.outcome.skipped_rows.append(
                {
                    "table": tp.table,
                    "key": list(row_key),
                    "label": None,
                    "kind": "update",
                    "reason": "it points at a skipped new row",
                }
            )
