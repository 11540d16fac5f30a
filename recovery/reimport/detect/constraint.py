"""Detector: ``constraint`` conflicts — staged rows the target's own DDL would refuse: NOT NULL,
STRICT types, CHECK, unique indexes on expressions / partial / collated (read from the target by
:mod:`recovery.reimport.constraints`), and twins among the staged rows of such an index."""

from __future__ import annotations


from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, or_all, sql, table
from recovery.model.kinds import ConflictKind, Resolution
from recovery.model.outcome import Conflict
from recovery.reimport.constraints import Rules, UniqueRule, strict_violation, typed_copy
from recovery.reimport.context import Context, in_query, temp_table
from recovery.transpile.passes import TablePlan


def detect(ctx: Context, tp: TablePlan) -> list[Conflict]:
    """Staged rows the target's own rules would refuse — NOT NULL, STRICT types, CHECK, unique
    indexes on expressions / partial / collated — each a ``constraint`` conflict whose unit is
    skipped. NOT NULL is read on the staged rows; the rest on a typed copy of them
    (``typed:<t>``: the target's affinities and collations, so values compare as stored)."""
    found: list[Conflict] = []
    t, r = ctx.old(tp.table), ctx.rules(tp.table)
    not_null = [name for name in r.not_null if t.column(name) is not None]
    for name in not_null if _any_null(ctx, tp, not_null) else []:
        found += hits(
            ctx,
            tp,
            exp.Is(this=col(name, "s"), expression=exp.Null()),
            name,
            f"{name} is NOT NULL in the old schema",
        )
    if not r.needs_rows:
        return found
    typed = temp_table("typed", tp.table)
    cols = ctx.writable(tp.table)
    ctx.run(typed_copy(r, typed))
    ctx.run(
        exp.Insert(
            this=exp.Schema(
                this=typed, expressions=[exp.to_identifier(c, quoted=True) for c in ["rid", *cols]]
            ),
            expression=exp.select(exp.column("rowid", "s"), *[col(c, "s") for c in cols])
            .from_(exp.alias_(temp_table("ins", tp.table), "s"))
            .where(ctx.live("s", tp.table)),
        )
    )
    for name, storage in r.strict.items():
        found += hits(
            ctx,
            tp,
            strict_violation(r, name, "a"),
            name,
            f"{name} must hold {storage} values (STRICT table in the old schema)",
        )
    for check in r.checks:
        text = sql(check)
        names = sorted({c.name for c in check.find_all(exp.Column)})
        found += hits(
            ctx,
            tp,
            exp.Not(this=exp.Paren(this=r.over(check, "a"))),
            ",".join(names),
            f"CHECK ({text}) fails in the old schema",
        )
    for rule in r.unique:
        found += unique_rule(ctx, tp, r, rule)
    return found


def _any_null(ctx: Context, tp: TablePlan, names: list[str]) -> bool:
    """Whether a live staged row of ``tp`` holds a NULL in one of ``names``: one pass over the
    staged rows instead of one per column. The columns' own queries (:func:`hits`, column by
    column: a row skipped for one column is not reported for the next) run only when it finds
    one, so the conflicts and the skips are theirs."""
    if not names:
        return False
    q = (
        exp.select(exp.Literal.number(1))
        .from_(exp.alias_(temp_table("ins", tp.table), "s"))
        .where(
            and_all(
                [
                    or_all(exp.Is(this=col(n, "s"), expression=exp.Null()) for n in names),
                    ctx.live("s", tp.table),
                ]
            )
        )
    )
    return ctx.finds_row(q)


def hits(
    ctx: Context, tp: TablePlan, bad: exp.Expression, column: str, detail: str, typed: bool = True
) -> list[Conflict]:
    """Report and skip the live staged rows of ``tp`` matching ``bad`` (over ``s`` = ``ins:<t>``
    and, when the typed copy exists, ``a`` = its typed row). A rule SQLite cannot evaluate as
    rendered is left to the per-row guard of :mod:`recovery.reimport.apply`."""
    t = ctx.old(tp.table)
    src = exp.select(
        exp.column("rowid", "s"), *[col(k, "s") for k in t.key], ctx.label(t, "s")
    ).from_(exp.alias_(temp_table("ins", tp.table), "s"))
    if (
        typed
        and ctx.rules(tp.table).needs_rows
        and any(c.table == "a" for c in bad.find_all(exp.Column))
    ):
        src = src.join(
            exp.alias_(temp_table("typed", tp.table), "a"),
            on=exp.EQ(this=col("rid", "a"), expression=exp.column("rowid", "s")),
        )
    rows = ctx.rows_if_runs(src.where(and_all([bad, ctx.live("s", tp.table)])))
    if rows is None:  # SQLite cannot run the rule here (the time limit's interrupt is raised)
        return []
    found = []
    for rid, *rest in rows:
        found.append(
            Conflict(
                ConflictKind.CONSTRAINT,
                tp.table,
                tuple(rest[:-1]),
                Resolution.SKIPPED,
                column=column or None,
                label=rest[-1],
                detail=detail,
            )
        )
        ctx.skip(tp.table, exp.select(exp.Literal.number(rid)))
    return found


def unique_rule(ctx: Context, tp: TablePlan, r: Rules, rule: UniqueRule) -> list[Conflict]:
    """A unique index the plain check cannot express: staged rows whose index terms equal a
    target row's (both inside the index's WHERE). Twins among the staged rows themselves are
    :func:`staged_duplicates`' (after every other skip is known)."""
    cond_a = [
        exp.Not(this=exp.Is(this=r.over(term, "a"), expression=exp.Null())) for term in rule.terms
    ]
    if rule.where is not None:
        cond_a.append(exp.Paren(this=r.over(rule.where, "a")))
    match_t = [exp.EQ(this=r.over(term, "x"), expression=r.over(term, "a")) for term in rule.terms]
    if rule.where is not None:
        match_t.append(exp.Paren(this=r.over(rule.where, "x")))
    in_target = exp.Exists(
        this=exp.select("1").from_(table(tp.table, "main", "x")).where(and_all(match_t))
    )
    names = ",".join(sorted({c.name for term in rule.terms for c in term.find_all(exp.Column)}))
    return hits(
        ctx,
        tp,
        and_all([*cond_a, in_target]),
        names,
        f"{rule.text} is taken in the target by a different row",
    )


def staged_duplicates(ctx: Context) -> list[Conflict]:
    """Live staged rows whose unique-index terms (:func:`unique_rule`'s rules) equal an
    earlier live staged row's: run once every other skip is known, so a row is not skipped for
    a twin that does not land either."""
    found: list[Conflict] = []
    for tp in ctx.staged():
        r = ctx.rules(tp.table)
        for rule in r.unique:
            found += staged_twins(ctx, tp, r, rule)
    return found


def staged_twins(ctx: Context, tp: TablePlan, r: Rules, rule: UniqueRule) -> list[Conflict]:
    """The later of staged rows equal under ``rule`` (by staged order): one conflict each."""
    cond_a = [
        exp.Not(this=exp.Is(this=r.over(term, "a"), expression=exp.Null())) for term in rule.terms
    ]
    if rule.where is not None:
        cond_a.append(exp.Paren(this=r.over(rule.where, "a")))
    names = ",".join(sorted({c.name for term in rule.terms for c in term.find_all(exp.Column)}))
    n = exp.Window(
        this=exp.RowNumber(),
        partition_by=[r.over(term, "a") for term in rule.terms],
        order=exp.Order(expressions=[exp.Ordered(this=col("rid", "a"))]),
    )
    ranked = (
        exp.select(col("rid", "a"), exp.alias_(n, "n"))
        .from_(exp.alias_(temp_table("typed", tp.table), "a"))
        .join(
            exp.alias_(temp_table("ins", tp.table), "s"),
            on=exp.EQ(this=col("rid", "a"), expression=exp.column("rowid", "s")),
        )
        .where(and_all([*[c.copy() for c in cond_a], ctx.live("s", tp.table)]))
    )
    later = (
        exp.select(col("rid"))
        .from_(ranked.subquery("d"))
        .where(exp.GT(this=col("n"), expression=exp.Literal.number(1)))
    )
    return hits(
        ctx,
        tp,
        in_query(exp.column("rowid", "s"), later),
        names,
        f"{rule.text}: another new row has the same value",
        typed=False,
    )
