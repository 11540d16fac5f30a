"""Pass: rows deleted after the deploy came back with the restore. Each is listed for review; with
``--apply-deletes`` the rows unchanged since the backup that no row references are deleted (their
children watched by the foreign-key check); without it, the DELETE that would run is kept as a
deferred statement of the script (``deletes.sql``, commented out)."""

from __future__ import annotations

import json
from typing import Any

from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, is_same, table
from recovery.model.kinds import RowKind
from recovery.model.outcome import encode_item
from recovery.model.spill import SpillList
from recovery.model.outcome import TableOutcome
from recovery.reimport.context import Context, in_query, lit, rid_table, rowid, temp_table
from recovery.reimport.script import Step
from recovery.transpile.passes import BASE_DB, KIND


def deletes(ctx: Context, apply: bool) -> None:
    """Rows deleted after the deploy came back with the restore: list them; delete on request,
    and then only those unchanged since the backup and with no row referencing them."""
    for name in reversed(ctx.bundle.old.fk_order()):
        t = ctx.old(name)
        if ctx.bundle.counts.get(name, {}).get("deleted", 0) == 0:
            continue
        same = and_all(is_same(col(c, "t"), col(c, "d")) for c in t.column_names)
        keys, label = [col(k, "d") for k in t.key], ctx.label(t, "d")
        q = (
            exp.select(
                *keys,
                label,
                exp.Exists(this=exp.select("1").from_(table(name, "main", "t")).where(same)),
                item_text(name, keys, label),
            )
            .from_(table(name, BASE_DB, "d"))
            .where(exp.EQ(this=col(KIND, "d"), expression=lit(RowKind.DELETED.value)))
        )
        nk = len(t.key)

        def item(row: tuple[Any, ...], name: str = name, nk: int = nk) -> dict[str, Any]:
            return {
                "table": name,
                "key": list(row[:nk]),
                "label": row[nk],
                "unchanged_since_backup": bool(row[nk + 1]),
            }

        def text(row: tuple[Any, ...], nk: int = nk) -> str | None:
            head = row[nk + 2]
            return None if head is None else head + ("true}" if row[nk + 1] else "false}")

        # one pass over the cursor: the list spills its tail in batches, as SQLite wrote it
        spill = ctx.outcome.deletes_for_review
        if isinstance(spill, SpillList) and spill.encodes_with(encode_item):
            spill.extend_rows(ctx.run(q), item, text)
        else:
            spill.extend(item(row) for row in ctx.run(q))
        if not apply:
            assert ctx.script is not None
            ctx.script.deferred.append(Step(delete_statement(ctx, name)))
            continue
        ctx.outcome.tables.setdefault(name, TableOutcome(name)).deleted = delete_unreferenced(
            ctx, name
        )


def _json_text(value: exp.Expression) -> exp.Expression:
    """SQL giving ``value`` as ``json.dumps(value, ensure_ascii=False)`` writes it when it is an
    integer, text or NULL (SQLite's ``json_quote`` escapes text as Python does: ``\\"``,
    ``\\\\``, the short escapes of ``\\b \\f \\n \\r \\t``, ``\\u00xx`` for the other control
    characters, nothing else); NULL for a real or a blob, whose text Python writes otherwise."""
    of_type = exp.Anonymous(this="typeof", expressions=[value.copy()])
    return exp.Case(
        this=of_type,
        ifs=[
            exp.If(
                this=lit("integer"), true=exp.Cast(this=value.copy(), to=exp.DataType.build("TEXT"))
            ),
            exp.If(
                this=lit("text"),
                true=exp.Anonymous(this="json_quote", expressions=[value.copy()]),
            ),
            exp.If(this=lit("null"), true=lit("null")),
        ],
    )


def item_text(name: str, keys: list[exp.Expression], label: exp.Expression) -> exp.Expression:
    """SQL giving the text :func:`recovery.model.outcome._encode_item` writes for a row's
    deletes-for-review item (``{"key": [...], "label": ..., "table": name,
    "unchanged_since_backup": ``, the flag and ``}`` left to append), or NULL when a key or the
    label is a real or a blob (the item is then encoded in Python)."""
    parts: list[exp.Expression] = [lit('{"key": [')]
    for i, k in enumerate(keys):
        parts += [lit(", ")] if i else []
        parts.append(_json_text(k))
    parts += [lit('], "label": '), _json_text(label)]
    parts.append(
        lit(f', "table": {json.dumps(name, ensure_ascii=False)}, "unchanged_since_backup": ')
    )
    out = parts[0]
    for p in parts[1:]:
        out = exp.DPipe(this=out, expression=p, safe=True)
    return out


def delete_statement(ctx: Context, name: str) -> exp.Delete:
    """One DELETE of the rows of ``name`` identical to a row deleted after the deploy that no row
    references (what ``--apply-deletes`` deletes), reading ``base`` only."""
    t = ctx.old(name)
    deleted = exp.EQ(this=col(KIND, "d"), expression=lit(RowKind.DELETED.value))
    same = and_all(is_same(col(c, "t"), col(c, "d")) for c in t.column_names)
    cond = exp.Exists(
        this=exp.select("1").from_(table(name, BASE_DB, "d")).where(and_all([deleted, same]))
    )
    return exp.Delete(
        this=table(name, "main", "t"),
        where=exp.Where(this=and_all([cond, *[exp.Not(this=r) for r in references(ctx, name)]])),
    )


def references(ctx: Context, name: str) -> list[exp.Expression]:
    """``EXISTS`` a row referencing row ``t`` of ``name``, one per foreign key of the old schema."""
    out = []
    for child_name, child in ctx.bundle.old.tables.items():
        for fk in child.foreign_keys:
            if fk.ref_table == name:
                refs = zip(fk.columns, fk.ref_columns, strict=True)
                out.append(
                    exp.Exists(
                        this=exp.select("1")
                        .from_(table(child_name, "main", "c"))
                        .where(and_all(is_same(col(cc, "c"), col(pc, "t")) for cc, pc in refs))
                    )
                )
    return out


def delete_unreferenced(ctx: Context, name: str) -> int:
    """Delete the rows of ``name`` identical to a row deleted after the deploy that no row
    references; the children of every deleted row are remembered for the check."""
    t = ctx.old(name)
    referenced = []
    for child_name, child in ctx.bundle.old.tables.items():
        for fk in child.foreign_keys:
            if fk.ref_table == name:
                refs = zip(fk.columns, fk.ref_columns, strict=True)
                referenced.append(
                    exp.Exists(
                        this=exp.select("1")
                        .from_(table(child_name, "main", "c"))
                        .where(and_all(is_same(col(cc, "c"), col(pc, "t")) for cc, pc in refs))
                    )
                )
    deleted = exp.EQ(this=col(KIND, "d"), expression=lit(RowKind.DELETED.value))
    same = and_all(is_same(col(c, "t"), col(c, "d")) for c in t.column_names)
    unreferenced = [exp.Not(this=r) for r in referenced]
    if not ctx.has_rowid(name):  # no rowids to remember: the check reads these children in full
        ctx.full.update((fk.table, fk.id) for fk in ctx.fks_into(name))
        cond = exp.Exists(
            this=exp.select("1").from_(table(name, BASE_DB, "d")).where(and_all([deleted, same]))
        )
        return ctx.run(
            exp.Delete(
                this=table(name, "main", "t"), where=exp.Where(this=and_all([cond, *unreferenced]))
            )
        ).rowcount
    doomed = temp_table("del", name)
    ctx.run(rid_table(doomed))
    ctx.run(
        exp.Insert(
            this=doomed,
            alternative="IGNORE",
            expression=exp.select(rowid("t"))
            .from_(table(name, BASE_DB, "d"))
            .join(table(name, "main", "t"), on=same)
            .where(and_all([deleted, *unreferenced])),
        )
    )
    ctx.watch_children(name, exp.select("rid").from_(doomed))
    return ctx.run(
        exp.Delete(
            this=table(name, "main"),
            where=exp.Where(this=in_query(exp.column("rowid"), exp.select("rid").from_(doomed))),
        )
    ).rowcount
