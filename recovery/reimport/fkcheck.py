"""The re-import's own foreign-key check, run before the commit: every foreign key (as the target
declares it) of every row the re-import wrote — inserted, updated, or a child of a row it deleted
or re-keyed (the context's watch lists) — must resolve. Set-based over the staged keys instead of a
``PRAGMA foreign_key_check`` of the whole file; the problems come back in that pragma's shape.
On a target proven consistent right before (:attr:`Context.fk_clean`, the rollback's staged file)
an updated row's keys on columns no UPDATE set are not read (:func:`updated_keys`)."""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, is_same, or_all, sql, table
from recovery.reimport.context import Context, in_key_order, in_query, rowid, temp_table
from recovery.reimport.target_fks import TargetFk


def written(ctx: Context, name: str) -> list[exp.Select]:
    """Queries selecting (as ``c``, rowid first) the rows of ``name`` the check must read: rows
    inserted (staged, not skipped), rows updated (staged, not skipped) and watched rows."""
    return [q for q, _ in _sources(ctx, name)]


def _sources(ctx: Context, name: str) -> list[tuple[exp.Select, bool]]:
    """:func:`written`'s queries, each with whether it selects the updated rows."""
    sources: list[tuple[exp.Select, bool]] = []
    tp = ctx.plan.table(name)
    if tp is not None and tp.insert_select is not None:
        t = ctx.old(name)
        inserted = (
            exp.select(rowid("c"))
            .from_(exp.alias_(temp_table("ins", name), "s"))
            .join(
                table(name, "main", "c"),
                on=and_all(is_same(col(k, "c"), col(k, "s")) for k in t.key),
            )
            .where(
                exp.Not(
                    this=in_query(rowid("s"), exp.select("rid").from_(temp_table("skip", name)))
                )
            )
        )
        sources.append((inserted, False))
        if ctx.moving_columns(tp):
            updated = (
                exp.select(rowid("c"))
                .from_(exp.alias_(temp_table("upd", name), "u"))
                .join(
                    table(name, "main", "c"),
                    on=and_all(
                        exp.EQ(this=col(k, "c"), expression=col(f"key_{i}", "u"))
                        for i, k in enumerate(t.key)
                    ),
                )
                .where(
                    exp.Not(
                        this=in_query(
                            rowid("u"), exp.select("rid").from_(temp_table("uskip", name))
                        )
                    )
                )
            )
            sources.append((updated, True))
    if name in ctx.watched:
        watched = (
            exp.select(rowid("c"))
            .from_(table(name, "main", "c"))
            .where(in_query(rowid("c"), exp.select("rid").from_(temp_table("chk", name))))
        )
        sources.append((watched, False))
    return sources


def updated_keys(ctx: Context, name: str, keys: list[TargetFk]) -> list[TargetFk]:
    """The keys of ``keys`` the check reads on the rows of ``name`` the re-import updated.

    All of them, unless the target's foreign keys all resolved before the transaction
    (:attr:`Context.fk_clean`) and ``name`` has no generated column: then only the keys with a
    column an UPDATE set. Proof: an updated row's key on columns no UPDATE set holds the value
    it held before, which resolved then; its parent can since have gone only by a DELETE or a
    change of the referenced columns, and the children of such rows are watched (``chk:<t>``,
    read with every key); a trigger that wrote makes the check read the whole table; inserts
    remove no parent."""
    clean = ctx.fk_clean() if callable(ctx.fk_clean) else ctx.fk_clean
    if not clean or ctx.generated(name):
        return keys
    written = ctx.set_columns.get(name, set())
    return [fk for fk in keys if {c.lower() for c in fk.columns} & written]


def _none_dangling(ctx: Context, source: exp.Select, keys: list[TargetFk]) -> bool:
    """True when no row ``source`` selects (as ``c``) has a dangling key of ``keys``, asked in
    two passes: the key into the largest parent (:meth:`Context.sorted_key`) with that parent
    probed in key order (:func:`recovery.reimport.context.in_key_order`: the same condition on
    the same values), the other keys in the rows' order. False when a pass finds a row or SQLite
    cannot run it — the exact query then runs and names the rows — and when no parent is large
    (the exact query alone costs no more)."""
    at = ctx.sorted_key([fk.parent if fk.parent_exists else "" for fk in keys])
    if at is None:
        return False
    rest = keys[:at] + keys[at + 1 :]
    if rest and ctx.finds_row(source.where(or_all(fk.dangling("c") for fk in rest))):
        return False
    fk = keys[at]
    return not ctx.finds_row(in_key_order(source, list(fk.columns), "c").where(fk.dangling("c")))


def target_has_triggers(ctx: Context) -> bool:
    """The target DB defines a trigger that may have fired during the re-import (none did when
    the re-import suspended them while it wrote)."""
    if ctx.quiet:
        return False
    q = (
        exp.select("1")
        .from_(table("sqlite_master", "main"))
        .where(exp.EQ(this=col("type"), expression=exp.Literal.string("trigger")))
        .limit(1)
    )
    return ctx.conn.execute(sql(q)).fetchone() is not None


def fk_problems(ctx: Context, limit: int = 20) -> list[dict[str, Any]]:
    """What ``PRAGMA foreign_key_check`` reports for the rows this re-import wrote, in its shape:
    every foreign key (as the target declares it) of every inserted or updated row, and of every
    row referencing a row the re-import deleted or re-keyed. Call after :func:`recovery.reimport.apply.apply`.

    One pass per source of written rows reads all of a table's keys; each row's parents are
    probed by their key (a primary key or unique index), so the cost follows the rows written,
    not the size of the database."""
    found: set[tuple[str, Any, str, int]] = set()
    if target_has_triggers(ctx):  # a trigger may have written rows the merge never saw: all of them
        ctx.full.update(
            (name, fk.id) for name, table_fks in ctx.target_fks().items() for fk in table_fks
        )
    for name, table_fks in ctx.target_fks().items():
        if not ctx.has_rowid(name) and written(ctx, name):
            ctx.full.update((name, fk.id) for fk in table_fks)
        for fk in table_fks:
            if (name, fk.id) in ctx.full:
                rid: exp.Expression = rowid("c") if ctx.has_rowid(name) else exp.Null()
                q = (
                    exp.select(rid)
                    .from_(table(name, "main", "c"))
                    .where(fk.dangling("c"))
                    .limit(limit)
                )
                found.update((name, r, fk.parent, fk.id) for (r,) in ctx.rows(q))
        keys = [fk for fk in table_fks if (name, fk.id) not in ctx.full]
        if not keys or not ctx.has_rowid(name):
            continue
        for source, updated in _sources(ctx, name):
            read = updated_keys(ctx, name, keys) if updated else keys
            if not read or _none_dangling(ctx, source, read):
                continue
            q = (
                source.select(*[fk.dangling("c") for fk in read])
                .where(or_all(fk.dangling("c") for fk in read))
                .limit(limit)
            )
            for rid, *bad in ctx.rows(q):
                found.update(
                    (name, rid, fk.parent, fk.id) for fk, b in zip(read, bad, strict=True) if b
                )
    ordered = sorted(found, key=lambda p: (p[0], p[1] is None, p[1] or 0, p[3]))[:limit]
    return [{"table": t, "rowid": r, "parent": p, "fk": f} for t, r, p, f in ordered]
