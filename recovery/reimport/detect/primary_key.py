"""Detector: ``primary_key`` conflicts — a staged row's key is taken in the target by a different row."""

from __future__ import annotations

from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, is_same, table
from recovery.model.kinds import ConflictKind, Resolution
from recovery.model.outcome import Conflict, ConflictPolicy
from recovery.reimport.context import Context, temp_table
from recovery.transpile.passes import TablePlan


def detect(ctx: Context, tp: TablePlan) -> tuple[list[Conflict], list[int]]:
    """Staged rows whose primary key the target already holds: the very same record is skipped as
    already present (no conflict); a different row is a ``primary_key`` conflict, remapped (an
    integer key under ``--on-conflict remap``: its staged rowid is returned for :mod:`..remap`)
    or skipped."""
    found: list[Conflict] = []
    t = ctx.old(tp.table)
    key = t.primary_key
    if not key:
        return found, []
    same_key = and_all(exp.EQ(this=col(k, "t"), expression=col(k, "s")) for k in key)
    identical = and_all(is_same(col(c, "t"), col(c, "s")) for c in ctx.writable(tp.table))
    hit = (
        exp.select(
            exp.column("rowid", "s"),
            *[col(k, "s") for k in key],
            ctx.label(t, "s"),
            exp.Exists(
                this=exp.select("1")
                .from_(table(tp.table, "main", "t"))
                .where(and_all([same_key, identical]))
            ),
        )
        .from_(exp.alias_(temp_table("ins", tp.table), "s"))
        .where(exp.Exists(this=exp.select("1").from_(table(tp.table, "main", "t")).where(same_key)))
    )
    taken = []
    for rid, *rest in ctx.rows(hit):
        k, label, same = tuple(rest[: len(key)]), rest[len(key)], rest[len(key) + 1]
        if same or ctx.in_place:  # the very same record is already there: nothing to insert
            ctx.outcome.tables[tp.table].already_present += 1
            ctx.mark_present(tp.table, rid)
            continue
        taken.append((rid, k, label))
    if not taken:
        return found, []
    remappable = (
        ctx.policy is ConflictPolicy.REMAP
        and len(key) == 1
        and "INT" in (t.has(key[0]).type or "").upper()
    )
    for rid, k, label in taken:
        resolution = Resolution.REMAPPED if remappable else Resolution.SKIPPED
        found.append(
            Conflict(
                ConflictKind.PRIMARY_KEY,
                tp.table,
                k,
                resolution,
                label=label,
                detail="the key is taken in the target by a different row",
            )
        )
        if not remappable:
            ctx.skip(tp.table, exp.select(exp.Literal.number(rid)))
    return found, [rid for rid, _, _ in taken] if remappable else []
