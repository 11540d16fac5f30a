"""Pass: apply — the inserts (parents first) and the column-wise three-way UPDATEs of every live
staged row, executed through the context's :class:`recovery.reimport.script.Script` (so each is a
step of the plan as executed). Should the target still refuse a statement, the refused rows are
found by halving its rowid range under SAVEPOINTs, everything this attempt applied is rolled back
(and dropped from the script), their units are skipped as ``constraint`` conflicts and the apply
runs again."""

from __future__ import annotations

import sqlite3

from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, is_distinct, is_same, or_all, table
from recovery.errors import ExitCode, RecoveryError
from recovery.model.kinds import ConflictKind, Resolution
from recovery.model.outcome import Conflict, ConflictPolicy, Prefer
from recovery.reimport.context import Context, in_query, rowid, temp_table
from recovery.reimport.remap import settle_remaps
from recovery.reimport.skips import collect_skipped, propagate_skips
from recovery.transpile.passes import TablePlan


def apply(ctx: Context) -> None:
    """Insert (parents first) and update every live staged row. The detection predicts what the
    target refuses; should an INSERT or UPDATE still raise an IntegrityError, the offending rows
    of that statement are singled out (:func:`isolate`, SAVEPOINTs), everything
    applied so far is rolled back to before the first insert, the offenders' units become
    ``constraint`` conflicts (skipped; with ``abort``: the run aborts), and the apply runs
    again — never a failed run for one bad row."""
    for _ in range(max_attempts(ctx)):
        watched, full = set(ctx.watched), set(ctx.full)
        assert ctx.script is not None
        ctx.script.savepoint("recovery_apply")
        failed = apply_rows(ctx)
        if failed is None:
            ctx.script.release("recovery_apply")
            break
        bad = isolate(ctx, failed[0], failed[1])
        if not bad:  # refused as a whole, accepted row by row: nothing to single out
            raise RecoveryError(
                f"re-import of {failed[1].table} violated a constraint: {failed[2]}; rolled back",
                "nothing was changed; report this with the bundle",
                ExitCode.FAILED,
            )
        ctx.script.rollback("recovery_apply")
        ctx.watched, ctx.full = watched, full  # their TEMP tables were rolled back too
        refused(ctx, failed[0], failed[1], bad)
        if ctx.policy is ConflictPolicy.ABORT:
            ctx.outcome.aborted = True
            return
        propagate_skips(ctx)
        settle_remaps(ctx)
        ctx.outcome.skipped_rows = []
        collect_skipped(ctx)
    else:  # pragma: no cover - each attempt skips at least one row
        raise RecoveryError(
            "the re-import kept violating constraints of the old schema; rolled back",
            "nothing was changed; report this with the bundle",
            ExitCode.FAILED,
        )


def max_attempts(ctx: Context) -> int:
    """An upper bound on apply attempts: each refused attempt skips at least one staged row."""
    return 2 + sum(
        ctx.outcome.tables[tp.table].bundle_inserted + ctx.outcome.tables[tp.table].bundle_updated
        for tp in ctx.staged()
    )


def insert_stmt(ctx: Context, tp: TablePlan) -> exp.Insert:
    """INSERT of the live staged rows of ``tp`` (generated columns are never written)."""
    cols = ctx.writable(tp.table)
    return exp.Insert(
        this=exp.Schema(
            this=table(tp.table, "main"),
            expressions=[exp.to_identifier(c, quoted=True) for c in cols],
        ),
        expression=exp.select(*[col(c, "s") for c in cols])
        .from_(exp.alias_(temp_table("ins", tp.table), "s"))
        .where(ctx.live("s", tp.table)),
    )


def apply_rows(ctx: Context) -> tuple[str, TablePlan, str] | None:
    """One attempt at every insert and update; the (kind, table, message) of the statement the
    target refused."""
    for tp in ctx.staged():
        to = ctx.outcome.tables[tp.table]
        try:
            to.inserted = ctx.run(insert_stmt(ctx, tp)).rowcount
        except sqlite3.IntegrityError as exc:
            return "insert", tp, str(exc)
        to.skipped = (
            ctx.rows(exp.select("count(*)").from_(temp_table("skip", tp.table)))[0][0]
            - to.already_present
        )
    for tp in ctx.staged():
        try:
            apply_updates(ctx, tp)
        except sqlite3.IntegrityError as exc:
            return "update", tp, str(exc)
    return None


def isolate(ctx: Context, kind: str, tp: TablePlan) -> list[tuple[int, str]]:
    """The staged rows (rowid, SQLite's message) of ``tp`` whose own statement the target
    refuses, on top of what this attempt applied: rowid ranges are applied in staged order,
    each in a SAVEPOINT, and a refused range is halved until single rows remain — the same
    rows a row-by-row pass in that order finds, in O(bad rows × log n) statements."""
    source = temp_table("ins" if kind == "insert" else "upd", tp.table)
    lo, hi = ctx.rows(
        exp.select(
            exp.func("min", exp.column("rowid")), exp.func("max", exp.column("rowid"))
        ).from_(source)
    )[0]
    bad: list[tuple[int, str]] = []
    stack = [(lo, hi)] if lo is not None else []
    while stack:
        a, b = stack.pop()
        watched = set(ctx.watched)
        assert ctx.script is not None
        ctx.script.savepoint("recovery_row")
        try:
            if kind == "insert":
                stmt = insert_stmt(ctx, tp)
                stmt.expression.set(
                    "where",
                    exp.Where(
                        this=and_all(
                            [
                                stmt.expression.args["where"].this,
                                exp.Between(
                                    this=exp.column("rowid", "s"),
                                    low=exp.Literal.number(a),
                                    high=exp.Literal.number(b),
                                ),
                            ]
                        )
                    ),
                )
                ctx.run(stmt)
            else:
                apply_updates(ctx, tp, only=(a, b))
        except sqlite3.IntegrityError as exc:
            ctx.script.rollback("recovery_row")
            ctx.watched = watched
            if a == b:
                bad.append((a, str(exc)))
            else:  # the left half first: rows are tried in staged order
                mid = (a + b) // 2
                stack += [(mid + 1, b), (a, mid)]
            continue
        ctx.script.release("recovery_row")
    return bad


def refused(ctx: Context, kind: str, tp: TablePlan, bad: list[tuple[int, str]]) -> None:
    """Record the rows :func:`isolate` found as ``constraint`` conflicts and skip their units."""
    t = ctx.old(tp.table)
    for rid, message in bad:
        if kind == "insert":
            q = (
                exp.select(*[col(k, "s") for k in t.key], ctx.label(t, "s"))
                .from_(exp.alias_(temp_table("ins", tp.table), "s"))
                .where(exp.EQ(this=exp.column("rowid", "s"), expression=exp.Literal.number(rid)))
            )
            *k, label = ctx.rows(q)[0]
            ctx.skip(tp.table, exp.select(exp.Literal.number(rid)))
        else:
            q = (
                exp.select(*[col(f"key_{i}", "u") for i in range(len(t.key))])
                .from_(exp.alias_(temp_table("upd", tp.table), "u"))
                .where(exp.EQ(this=exp.column("rowid", "u"), expression=exp.Literal.number(rid)))
            )
            k, label = list(ctx.rows(q)[0]), None
            ctx.run(
                exp.Insert(
                    this=temp_table("uskip", tp.table),
                    expression=exp.select(exp.Literal.number(rid)),
                    alternative="IGNORE",
                )
            )
        ctx.conflict(
            Conflict(
                ConflictKind.CONSTRAINT,
                tp.table,
                tuple(k),
                Resolution.SKIPPED,
                label=label,
                detail=f"the old schema refused the {kind}: {message}",
            )
        )


def apply_updates(ctx: Context, tp: TablePlan, only: tuple[int, int] | None = None) -> None:
    """The column-wise three-way UPDATE of ``tp``'s live staged updates (``only``: of the staged
    rows in that rowid range). An IntegrityError propagates to :func:`apply`."""
    moving = ctx.moving_columns(tp)
    if not moving:
        return
    t = ctx.old(tp.table)
    whole_rows = (
        tp.table in ctx.row_tables and ctx.prefer is Prefer.BUNDLE
    )  # --conflicts row: bundle's row
    has_json = tp.table in ctx.json_tables
    if whole_rows:
        moving = ctx.row_columns(tp)
    ctx.set_columns.setdefault(tp.table, set()).update(tp.updatable[i].lower() for i in moving)
    sets, changes = [], []
    for i in moving:
        name = tp.updatable[i]
        theirs, base, ours = col(f"theirs_{i}", "u"), col(f"base_{i}", "u"), col(name, tp.table)
        take = and_all([is_distinct(theirs, base), is_same(ours, base.copy())])
        if ctx.prefer is Prefer.BUNDLE:
            take = and_all(
                [is_distinct(theirs.copy(), base.copy()), is_distinct(ours.copy(), theirs.copy())]
            )
        if whole_rows:
            take = or_all(
                [
                    and_all([exp.Not(this=col("__rowc", "u")), take]),
                    and_all([col("__rowc", "u"), is_distinct(ours.copy(), theirs.copy())]),
                ]
            )
        if not t.has(name).nullable:
            take = and_all([take, exp.Not(this=exp.Is(this=theirs.copy(), expression=exp.Null()))])
        value: exp.Expression = exp.Case(
            ifs=[exp.If(this=take, true=theirs.copy())], default=ours.copy()
        )
        if has_json:  # a JSON cell changed on both sides takes its merged document
            merged = (
                exp.select(col("merged", "j"))
                .from_(exp.alias_(temp_table("json", tp.table), "j"))
                .where(
                    and_all(
                        [
                            exp.EQ(this=col("rid", "j"), expression=col("__rid", "u")),
                            exp.EQ(this=col("ci", "j"), expression=exp.Literal.number(i)),
                        ]
                    )
                )
            )
            value = exp.Coalesce(this=merged.subquery(), expressions=[value])
            take = or_all(
                [
                    take,
                    exp.Exists(
                        this=merged.copy().where(is_distinct(col("merged", "j"), ours.copy()))
                    ),
                ]
            )
        sets.append(exp.EQ(this=col(name), expression=value))
        changes.append(take.copy())
    extra = []
    if has_json:
        extra.append(exp.alias_(exp.column("rowid", "x"), "__rid"))
    if whole_rows:
        extra.append(
            exp.alias_(
                in_query(
                    exp.column("rowid", "x"), exp.select("rid").from_(temp_table("rowc", tp.table))
                ),
                "__rowc",
            )
        )
    live = (
        exp.select("*", *extra)
        .from_(exp.alias_(temp_table("upd", tp.table), "x"))
        .where(
            exp.Not(
                this=in_query(
                    exp.column("rowid", "x"), exp.select("rid").from_(temp_table("uskip", tp.table))
                )
            )
        )
    )
    if (
        tp.table in ctx.row_tables and ctx.prefer is Prefer.DB
    ):  # --conflicts row: the target's row stays
        live = live.where(
            exp.Not(
                this=in_query(
                    exp.column("rowid", "x"), exp.select("rid").from_(temp_table("rowc", tp.table))
                )
            )
        )
    if only is not None:
        live = live.where(
            exp.Between(
                this=exp.column("rowid", "x"),
                low=exp.Literal.number(only[0]),
                high=exp.Literal.number(only[1]),
            )
        )
    if ctx.has_rowid(tp.table):  # rows whose referenced (unique, non-key) columns may change
        rows = (
            exp.select(rowid("t"))
            .from_(exp.alias_(temp_table("upd", tp.table), "u"))
            .join(
                table(tp.table, "main", "t"),
                on=and_all(
                    exp.EQ(this=col(k, "t"), expression=col(f"key_{i}", "u"))
                    for i, k in enumerate(t.key)
                ),
            )
            .where(
                exp.Not(
                    this=in_query(
                        rowid("u"), exp.select("rid").from_(temp_table("uskip", tp.table))
                    )
                )
            )
        )
        ctx.watch_children(tp.table, rows, {tp.updatable[i].lower() for i in moving})
    else:
        ctx.full.update(
            (fk.table, fk.id)
            for fk in ctx.fks_into(tp.table)
            if {c.lower() for c in fk.ref_columns} & {tp.updatable[i].lower() for i in moving}
        )
    where = and_all(
        [
            *(
                exp.EQ(this=col(k, tp.table), expression=col(f"key_{i}", "u"))
                for i, k in enumerate(t.key)
            ),
            or_all(changes),
        ]
    )
    upd = exp.Update(
        this=table(tp.table, "main"),
        expressions=sets,
        from_=exp.From(
            this=live.subquery(exp.TableAlias(this=exp.to_identifier("u", quoted=True)))
        ),
        where=exp.Where(this=where),
    )
    ctx.outcome.tables[tp.table].updated = ctx.run(upd).rowcount
