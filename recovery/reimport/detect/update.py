"""Detector: ``update_deleted`` and ``update_update`` conflicts of the staged updates (``upd:<t>``).

A row changed after the deploy is gone from the target (``update_deleted``: its update is skipped),
or the same cell changed differently on both sides (``update_update``, cell by cell; with
``--conflicts row`` once per row, its rid in ``rowc:<t>``). JSON objects/arrays changed on both sides
are merged key by key (:mod:`recovery.reimport.jsonmerge`): the merged text goes to ``json:<t>``.
"""

from __future__ import annotations

import json
from typing import Any

from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, is_distinct, is_same, or_all, table
from recovery.model.kinds import ConflictKind, Resolution
from recovery.model.outcome import Conflict, ConflictMode, Prefer
from recovery.reimport.context import Context, in_query, lit, rid_table, rowid, temp_table
from recovery.reimport.jsonmerge import JsonMergeError, merge_texts
from recovery.transpile.passes import TablePlan

JSON_BATCH = 500
"""JSON cells changed on both sides are read into Python (:mod:`recovery.reimport.jsonmerge`) this many at a time."""


def detect(ctx: Context, tp: TablePlan) -> list[Conflict]:
    """Every ``update_deleted`` and ``update_update`` conflict of ``tp``'s staged updates (and the
    ``constraint`` conflict of a NULL the old schema cannot hold, the target's value kept)."""
    out: list[Conflict] = []
    t = ctx.old(tp.table)
    key_match = and_all(is_same(col(k, "t"), col(f"key_{i}", "u")) for i, k in enumerate(t.key))
    gone = (
        exp.select(exp.column("rowid", "u"), *[col(f"key_{i}", "u") for i in range(len(t.key))])
        .from_(exp.alias_(temp_table("upd", tp.table), "u"))
        .where(
            exp.Not(
                this=exp.Exists(
                    this=exp.select("1").from_(table(tp.table, "main", "t")).where(key_match)
                )
            )
        )
    )
    both = _gone_and_any_cell(ctx, tp, key_match) if ctx.mode is ConflictMode.CELL else None
    for rid, *k in ctx.rows(gone) if both is None else both[0]:
        out.append(
            Conflict(
                ConflictKind.UPDATE_DELETED,
                tp.table,
                tuple(k),
                Resolution.SKIPPED,
                detail="changed after the deploy but deleted in the target since",
            )
        )
        ctx.run(
            exp.Insert(
                this=temp_table("uskip", tp.table), expression=exp.select(exp.Literal.number(rid))
            )
        )
    if ctx.mode is ConflictMode.ROW:
        out += row_conflicts(ctx, tp)
    elif not (both[1] if both is not None else _any_cell_found(ctx, tp, key_match)):
        return out  # neither json_merge's cells nor the query below can find a row
    else:
        out += json_merge(ctx, tp)
    # every column in one pass over the updated rows; conflicts listed column by column as before
    nk, per_column, flags = len(t.key), [], []
    for i in ctx.moving_columns(tp):
        name = tp.updatable[i]
        theirs, base, ours = col(f"theirs_{i}", "u"), col(f"base_{i}", "u"), col(name, "t")
        clash = [
            is_distinct(theirs, base),
            is_distinct(ours, base.copy()),
            is_distinct(ours.copy(), theirs.copy()),
        ]
        if ctx.mode is ConflictMode.ROW:  # reported once per row by row_conflicts
            clash.append(exp.false())
        elif tp.table in ctx.json_tables:  # merged key by key (json_merge)
            clash.append(exp.Not(this=json_cell(ctx, tp.table, i, exp.column("rowid", "u"))))
        if t.has(name).nullable:
            nulled = None
        else:  # a NULL the old schema cannot hold: keep the target's value
            clash.append(exp.Not(this=exp.Is(this=theirs.copy(), expression=exp.Null())))
            nulled = and_all(
                [
                    exp.Is(this=theirs.copy(), expression=exp.Null()),
                    is_distinct(theirs.copy(), base.copy()),
                ]
            )
        per_column.append(
            (
                name,
                [theirs.copy(), ours.copy(), base.copy(), and_all(clash)]
                + ([nulled] if nulled is not None else []),
            )
        )
        flags += [and_all(clash).copy()] + ([nulled.copy()] if nulled is not None else [])
    if not per_column:
        return out
    q = (
        exp.select(
            *[col(f"key_{j}", "u") for j in range(nk)],
            ctx.label(t, "t"),
            *[e for _, exprs in per_column for e in exprs],
        )
        .from_(exp.alias_(temp_table("upd", tp.table), "u"))
        .join(table(tp.table, "main", "t"), on=key_match.copy())
        .where(or_all(flags))
    )
    found = ctx.rows(q)
    resolution = Resolution.KEPT_TARGET if ctx.prefer is Prefer.DB else Resolution.APPLIED
    at = nk + 1
    for name, exprs in per_column:
        if len(exprs) == 5:
            for row in found:
                if row[at + 4]:
                    out.append(
                        Conflict(
                            ConflictKind.CONSTRAINT,
                            tp.table,
                            tuple(row[:nk]),
                            Resolution.KEPT_TARGET,
                            column=name,
                            target_value=row[at + 1],
                            base_value=row[at + 2],
                            label=row[nk],
                            detail=f"{name} became NULL after the deploy; NOT NULL in the old schema",
                        )
                    )
        for row in found:
            if row[at + 3]:
                out.append(
                    Conflict(
                        ConflictKind.UPDATE_UPDATE,
                        tp.table,
                        tuple(row[:nk]),
                        resolution,
                        column=name,
                        bundle_value=row[at],
                        target_value=row[at + 1],
                        base_value=row[at + 2],
                        label=row[nk],
                        detail="changed after the deploy and, differently, in the target since",
                    )
                )
        at += len(exprs)
    return out


def _cell_conditions(ctx: Context, tp: TablePlan) -> list[exp.Expression]:
    """:func:`_any_cell_found`'s conditions on a staged update ``u`` and its row ``t``: a cell
    changed on both sides (theirs, ours and base all different), or a NULL from after the deploy
    in a NOT NULL column."""
    t = ctx.old(tp.table)
    found = []
    for i in ctx.moving_columns(tp):
        name = tp.updatable[i]
        theirs, base, ours = col(f"theirs_{i}", "u"), col(f"base_{i}", "u"), col(name, "t")
        found.append(
            and_all(
                [
                    is_distinct(theirs, base),
                    is_distinct(ours, base.copy()),
                    is_distinct(ours.copy(), theirs.copy()),
                ]
            )
        )
        if not t.has(name).nullable:
            found.append(
                and_all(
                    [
                        exp.Is(this=theirs.copy(), expression=exp.Null()),
                        is_distinct(theirs.copy(), base.copy()),
                    ]
                )
            )
    return found


def _gone_and_any_cell(
    ctx: Context, tp: TablePlan, key_match: exp.Expression
) -> tuple[list[tuple[Any, ...]], bool] | None:
    """:func:`detect`'s ``update_deleted`` rows (rowid and key of each staged update whose row is
    gone from the target, in the staged updates' order) and :func:`_any_cell_found`'s answer,
    from one pass over the staged updates (``LEFT JOIN`` the target: a row whose ``t.rowid`` is
    NULL has no row there) instead of two. None when the target table has no rowid, has no
    moving column, or SQLite cannot run it: then the two queries run."""
    cells = _cell_conditions(ctx, tp)
    if not cells or not ctx.has_rowid(tp.table):
        return None
    nk = len(ctx.old(tp.table).key)
    missing = exp.Is(this=rowid("t"), expression=exp.Null())
    q = (
        exp.select(
            exp.column("rowid", "u"), *[col(f"key_{i}", "u") for i in range(nk)], missing.copy()
        )
        .from_(exp.alias_(temp_table("upd", tp.table), "u"))
        .join(table(tp.table, "main", "t"), on=key_match.copy(), join_type="left")
        .where(or_all([missing, *cells]))
    )
    rows = ctx.rows_if_runs(q)
    if rows is None:
        return None
    return [tuple(r[:-1]) for r in rows if r[-1]], any(not r[-1] for r in rows)


def _any_cell_found(ctx: Context, tp: TablePlan, key_match: exp.Expression) -> bool:
    """Whether some staged update of ``tp`` whose row is in the target has a cell changed on
    both sides (theirs, ours and base all different) or a NULL from after the deploy: one pass
    over the staged updates that answers for :func:`json_merge` and :func:`detect`'s cell query
    together. Each of their row conditions implies this one (a JSON cell merged key by key is
    first such a cell; a NOT NULL column's clash is such a cell, its NULL such a NULL), so when
    it finds no row neither query finds one and both are skipped: the same conflicts, the same
    writes (none). ``--conflicts cell`` only."""
    found = _cell_conditions(ctx, tp)
    if not found:
        return False
    q = (
        exp.select(exp.Literal.number(1))
        .from_(exp.alias_(temp_table("upd", tp.table), "u"))
        .join(table(tp.table, "main", "t"), on=key_match.copy())
        .where(or_all(found))
    )
    return ctx.finds_row(q)


def row_conflicts(ctx: Context, tp: TablePlan) -> list[Conflict]:
    """``--conflicts row``: a staged update whose row the target also changed since the backup
    (some column differs from base on both sides) and that differs from the target's row is
    one ``update_update`` conflict; its rid goes to ``rowc:<t>`` for the apply."""
    out: list[Conflict] = []
    moving, every = ctx.moving_columns(tp), ctx.row_columns(tp)
    if not moving:
        return out
    t = ctx.old(tp.table)
    th = lambda i: col(f"theirs_{i}", "u")  # noqa: E731
    ba = lambda i: col(f"base_{i}", "u")  # noqa: E731
    ou = lambda i: col(tp.updatable[i], "t")  # noqa: E731
    cond = and_all(
        [
            or_all(is_distinct(th(i), ba(i)) for i in moving),
            or_all(is_distinct(ou(i), ba(i)) for i in every),
            or_all(is_distinct(ou(i), th(i)) for i in every),
        ]
    )
    key_match = and_all(
        exp.EQ(this=col(k, "t"), expression=col(f"key_{j}", "u")) for j, k in enumerate(t.key)
    )
    rowc = temp_table("rowc", tp.table)
    ctx.run(rid_table(rowc))
    if not ctx.run(
        exp.Insert(
            this=rowc,
            expression=exp.select(rowid("u"))
            .from_(exp.alias_(temp_table("upd", tp.table), "u"))
            .join(table(tp.table, "main", "t"), on=key_match)
            .where(cond),
        )
    ).rowcount:
        return out
    ctx.row_tables.add(tp.table)
    nk = len(t.key)
    cells = [
        e
        for i in every
        for e in (is_distinct(th(i), ba(i)), is_distinct(ou(i), ba(i)), th(i), ou(i), ba(i))
    ]
    q = (
        exp.select(*[col(f"key_{j}", "u") for j in range(nk)], ctx.label(t, "t"), *cells)
        .from_(exp.alias_(temp_table("upd", tp.table), "u"))
        .join(table(tp.table, "main", "t"), on=key_match.copy())
        .where(in_query(rowid("u"), exp.select("rid").from_(rowc)))
    )
    resolution = Resolution.KEPT_TARGET if ctx.prefer is Prefer.DB else Resolution.APPLIED
    for row in ctx.rows(q):
        mine, theirs_d, ours_d, base_d = [], {}, {}, {}
        for n, i in enumerate(every):
            b_moved, t_moved, tv, ov, bv = row[nk + 1 + 5 * n : nk + 6 + 5 * n]
            name = tp.updatable[i]
            if b_moved or t_moved:
                mine.append((name, bool(b_moved), bool(t_moved)))
                theirs_d[name], ours_d[name], base_d[name] = tv, ov, bv
        changed_b = [n for n, b, _ in mine if b]
        changed_t = [n for n, _, tm in mine if tm]
        out.append(
            Conflict(
                ConflictKind.UPDATE_UPDATE,
                tp.table,
                tuple(row[:nk]),
                resolution,
                column=",".join(n for n, _, _ in mine),
                bundle_value=json_text(theirs_d),
                target_value=json_text(ours_d),
                base_value=json_text(base_d),
                label=row[nk],
                detail=f"row changed after the deploy ({', '.join(changed_b)}) and in the target "
                f"since ({', '.join(changed_t)}); --conflicts row",
            )
        )
    return out


def json_cell(ctx: Context, name: str, i: int, rid: exp.Expression) -> exp.Expression:
    """``EXISTS`` a merged JSON cell of column ``i`` for the staged update ``rid``."""
    return exp.Exists(
        this=exp.select("1")
        .from_(exp.alias_(temp_table("json", name), "j"))
        .where(
            and_all(
                [
                    exp.EQ(this=col("rid", "j"), expression=rid),
                    exp.EQ(this=col("ci", "j"), expression=exp.Literal.number(i)),
                ]
            )
        )
    )


def json_merge(ctx: Context, tp: TablePlan) -> list[Conflict]:
    """Cells changed differently on both sides whose three values are all JSON objects/arrays
    (decided in SQL, one pass over the staged updates for every column) are merged key by key
    in Python, :data:`JSON_BATCH` rows at a time: the merged text goes to ``json:<t>``; the
    same JSON path changed differently on both sides is an ``update_update`` conflict naming
    the paths of each side, resolved by ``--prefer`` at those paths."""
    out: list[Conflict] = []
    moving = ctx.moving_columns(tp)
    if not moving:
        return out
    t = ctx.old(tp.table)
    flags, values = [], []
    for i in moving:
        theirs, base, ours = (
            col(f"theirs_{i}", "u"),
            col(f"base_{i}", "u"),
            col(tp.updatable[i], "t"),
        )
        flags.append(
            and_all(
                [
                    is_distinct(theirs, base),
                    is_distinct(ours, base.copy()),
                    is_distinct(ours.copy(), theirs.copy()),
                    json_container(theirs.copy()),
                    json_container(ours.copy()),
                    json_container(base.copy()),
                ]
            )
        )
        values += [theirs.copy(), ours.copy(), base.copy()]
    key_match = and_all(
        exp.EQ(this=col(k, "t"), expression=col(f"key_{j}", "u")) for j, k in enumerate(t.key)
    )
    nk = len(t.key)
    q = (
        exp.select(
            rowid("u"),
            *[col(f"key_{j}", "u") for j in range(nk)],
            ctx.label(t, "t"),
            *[f.copy() for f in flags],
            *values,
        )
        .from_(exp.alias_(temp_table("upd", tp.table), "u"))
        .join(table(tp.table, "main", "t"), on=key_match)
        .where(and_all([or_all(flags), exp.GT(this=rowid("u"), expression=exp.Placeholder())]))
        .order_by(rowid("u"))
        .limit(JSON_BATCH)
    )
    ins = exp.Insert(
        this=temp_table("json", tp.table),
        expression=exp.Values(expressions=[exp.Tuple(expressions=[exp.Placeholder()] * 3)]),
    )
    bundle_wins = ctx.prefer is Prefer.BUNDLE
    last = -1
    while True:
        batch = ctx.run(q, (last,)).fetchall()
        if not batch:
            return out
        last = batch[-1][0]
        if tp.table not in ctx.json_tables:
            ctx.run(
                exp.Create(
                    kind="TABLE",
                    this=exp.Schema(
                        this=temp_table("json", tp.table),
                        expressions=[
                            exp.ColumnDef(this=exp.to_identifier(c), kind=exp.DataType.build(k))
                            for c, k in (("rid", "INTEGER"), ("ci", "INTEGER"), ("merged", "TEXT"))
                        ],
                    ),
                )
            )
            ctx.run(
                exp.Create(
                    kind="INDEX",
                    this=exp.Index(
                        this=table(f"ix_json:{tp.table}", "temp"),
                        table=table(f"json:{tp.table}"),
                        params=exp.IndexParameters(columns=[col("rid"), col("ci")]),
                    ),
                )
            )
            ctx.json_tables.add(tp.table)
        merged_rows = []
        for row in batch:
            rid, key, label = row[0], tuple(row[1 : nk + 1]), row[nk + 1]
            at = nk + 2 + len(moving)
            for n, i in enumerate(moving):
                if not row[nk + 2 + n]:
                    continue
                tv, ov, bv = row[at + 3 * n : at + 3 * n + 3]
                try:
                    text, m = merge_texts(bv, tv, ov, bundle_wins)
                except JsonMergeError:  # not mergeable key by key: the cell rule decides it
                    continue
                merged_rows.append((rid, i, text))
                if m.conflicted:
                    kept = "the bundle's" if bundle_wins else "the target's"
                    out.append(
                        Conflict(
                            ConflictKind.UPDATE_UPDATE,
                            tp.table,
                            key,
                            Resolution.APPLIED if bundle_wins else Resolution.KEPT_TARGET,
                            column=tp.updatable[i],
                            bundle_value=tv,
                            target_value=ov,
                            base_value=bv,
                            label=label,
                            detail=f"the same JSON path changed on both sides — bundle: "
                            f"{', '.join(m.conflict_bundle)}; target: {', '.join(m.conflict_target)}; "
                            f"{kept} value kept there, other keys merged",
                        )
                    )
        ctx.counter.tick()
        assert ctx.script is not None
        ctx.script.execute_rows(ins, merged_rows)


def json_container(value: exp.Expression) -> exp.Expression:
    """``value`` is text holding a JSON object or array (``json_type`` only of valid JSON text)."""
    is_json = and_all(
        [
            exp.EQ(this=exp.Anonymous(this="typeof", expressions=[value]), expression=lit("text")),
            exp.Anonymous(this="json_valid", expressions=[value.copy()]),
        ]
    )
    kind = exp.Case(
        ifs=[exp.If(this=is_json, true=exp.Anonymous(this="json_type", expressions=[value.copy()]))]
    )
    return exp.In(this=kind, expressions=[lit("object"), lit("array")])


def json_text(values: dict[str, Any]) -> str:
    """Column values of a row conflict as one JSON object (bytes as hex): a printable cell."""
    return json.dumps(
        values,
        ensure_ascii=False,
        default=lambda v: bytes(v).hex() if isinstance(v, (bytes, memoryview)) else str(v),
    )
