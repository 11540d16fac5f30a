"""Every column rule checked against the data, and rules the schemas do not declare inferred from it.

A rule says how an old (backup) column is produced from the live row (``price = price_cents /
100.0``). Whatever declared it — the mapping file, the migrations, rename detection or a shared
name — it is only right if, applied to a live row nobody touched after the deploy, it gives the
value the backup holds for that row. This module counts exactly that, inside SQLite, with one
aggregate query per table over the attached pair (``old`` = backup, ``new`` = live).

**Unchanged rows.** For the rule of old column ``c`` of a table, the rows checked are the rows
whose key is in both databases, among the first :data:`SAMPLE` backup rows in storage order, such
that

* every *other* compared column agrees (its rule, applied to the live row, gives the backup's
  value): a row a user edited after the deploy differs in some column, and is then not evidence
  about ``c`` — unless ``c`` is the only column that differs, in which case it is counted and
  disagrees (the edit cannot be told from a wrong rule without a timestamp);
* where the live table has an updated-at timestamp column (:mod:`recovery.compare.timestamps`) and the
  deploy time is known, the row was not updated after the deploy. A NULL or unparseable
  timestamp is no evidence either way: the row is kept.

**Verdicts.** With at least :data:`MIN_EVIDENCE` checked rows (:data:`MIN_EVIDENCE_SAME_NAME` for a
same-name rule), a rule *agrees* when at least
:data:`AGREE_SHARE_DATED` of them agree on a table whose rows are dated (the rows checked are
then known untouched, so almost all must agree), and :data:`AGREE_SHARE_UNDATED` on a table
without an updated-at timestamp (rows users edited after the deploy can only be excluded through
their other columns; an edit of this very column looks like a disagreement). Below the share it
*disagrees*. With fewer checked rows (e.g. two wrong rules in one table, so that no row has all
*other* columns agreeing) a rule still *disagrees* when it contradicts most of the shared,
undated-or-untouched rows (share below :data:`AGREE_SHARE_UNDATED` of at least
:data:`MIN_EVIDENCE`) — except a same-name rule: users who edited several columns of most rows
(no timestamps to tell) look exactly like that, and a column carried under its own name is only
refused on direct evidence; otherwise it is *unverified* (too little evidence, kept). A disagreeing rule
is refused (:class:`~recovery.errors.RecoveryError`, exit 2, with the evidence) unless the operator
passes ``--trust-mapping``.

A table without a primary key (keyed by all its columns) has no rule to check beyond its key.

**Inference.** An old column with no rule (or whose same-name rule disagrees) gets one found from
the unchanged rows — here, rows whose every trusted compared column agrees — among: the column as
is, a cast or a rounding, a scale factor (the ratio backup / live measured on the data, snapped to
a power of ten or a simple fraction p/q with q ≤ 1000), a split at a separator, or a concatenation
of two live columns with a separator. A candidate is accepted only when every one of at least
:data:`MIN_INFER` unchanged rows agrees (among the first :data:`INFER_SAMPLE`), at least
:data:`MIN_INFER_VALUES` of them hold a non-NULL backup value and the backup values are not all
equal (a constant column proves nothing). The first accepted candidate in the order above wins.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import sqlglot
from sqlglot import exp

from recovery.engine.base import Connection
from recovery.compare.changes import TableSides, sides
from recovery.reimport.constraints import affinity_type
from recovery.errors import RecoveryError
from recovery.transpile.mapping import ColumnMapping, ColumnRule, TableMapping
from recovery.engine.schema import Schema, Table
from recovery.engine.sqlbuild import and_all, col, float_div, qualify_columns, sql, table
from recovery.compare.timestamps import after_expr, find_timestamp_columns

SAMPLE = 20_000
"""Backup rows (storage order) a rule is checked on: plenty of evidence at a bounded cost."""
INFER_SAMPLE = 20_000
"""Backup rows inference looks at (it evaluates dozens of candidate expressions per row)."""
MIN_EVIDENCE = 5
"""Checked rows needed before a rule can be refused."""
MIN_EVIDENCE_SAME_NAME = 20
"""Checked rows needed before a same-name rule can be refused: a column carried under its own name
is wrong only when a migration changed its meaning in place, which shows on every row; a small
table whose users edited that column in most rows after the deploy must not look like that."""
AGREE_SHARE_DATED = 0.9
AGREE_SHARE_UNDATED = 0.5
MIN_INFER = 20
"""Unchanged rows that must all agree before a rule is inferred."""
MIN_INFER_VALUES = 10
"""Of which this many with a non-NULL backup value."""
CANDIDATES_PER_QUERY = 400
"""Candidate rules judged per aggregate query (SQLite allows 2,000 result columns)."""
MAX_CANDIDATES = 4_000
"""At most this many candidates per table (ten scans of the sample at most)."""
MAX_RATIO_PAIRS = 400

_NUMERIC = ("integer", "real")


def affinity(declared: str) -> str:
    """SQLite's column affinity of a declared type, lower-case (``integer``, ``text``, ``blob``,
    ``real``, ``numeric``): the one rule set, :func:`recovery.reimport.constraints.affinity_type`."""
    return affinity_type(declared).lower()


def _is_num(aff: str) -> bool:
    return aff in ("integer", "real", "numeric")


def _flag(cond: exp.Expression) -> exp.Expression:
    """1 when ``cond`` holds, else 0 (never NULL)."""
    return exp.Case(
        ifs=[exp.If(this=cond, true=exp.Literal.number(1))], default=exp.Literal.number(0)
    )


def _sum_when(cond: exp.Expression) -> exp.Expression:
    return exp.Sum(this=exp.Case(ifs=[exp.If(this=cond, true=exp.Literal.number(1))]))


def untouched_condition(new_t: Table, since_jd: float | None) -> exp.Expression | None:
    """``NOT (updated after the deploy)`` for the live row ``n``; None when it cannot be dated."""
    ts = find_timestamp_columns(new_t)
    if since_jd is None or "updated" not in ts:
        return None
    after = after_expr(col(ts["updated"], "n"), since_jd)
    return exp.Not(this=exp.Paren(this=exp.Coalesce(this=after, expressions=[exp.false()])))


def _pair_source(
    s: TableSides, old_cols: list[str], limit: int
) -> tuple[exp.Expression, exp.Expression]:
    """(FROM sample-of-old ``o``, JOIN condition with live ``n``): the first ``limit`` backup rows,
    only the columns needed, joined to the live rows with the same key."""
    wanted = list(dict.fromkeys([*s.key, *old_cols]))
    sample = exp.select(*[col(c) for c in wanted]).from_(table(s.name, "old")).limit(limit)
    src = sample.subquery(exp.TableAlias(this=exp.to_identifier("o", quoted=True)))
    on = and_all(exp.EQ(this=o, expression=n) for o, n in zip(s.old_key, s.new_key, strict=True))
    return src, on


def _key_json(s: TableSides) -> exp.Expression:
    """The row's key, for ``MIN`` to pick the first disagreeing row: the key itself when it is one
    column (smallest key first), else its JSON array text."""
    if len(s.key) == 1:
        return col(s.key[0], "o")
    return exp.Anonymous(this="json_array", expressions=[col(k, "o") for k in s.key])


@dataclass(frozen=True)
class _Paired:
    """One table's backup sample joined to its live rows, with a 0/1 disagreement flag per rule."""

    s: TableSides
    new_t: Table
    names: tuple[str, ...]
    exprs: tuple[exp.Expression, ...]  # the rules' expressions over ``n``


def _inner(
    p: _Paired,
    since_jd: float | None,
    limit: int,
    extra: list[exp.Expression] | None = None,
    old_cols: list[str] | None = None,
) -> exp.Select:
    src, on = _pair_source(p.s, [*p.names, *(old_cols or [])], limit)
    flags = [
        exp.alias_(_flag(exp.NullSafeNEQ(this=col(c, "o"), expression=e)), f"d{i}", quoted=True)
        for i, (c, e) in enumerate(zip(p.names, p.exprs, strict=True))
    ]
    nd = exp.alias_(
        _add(
            [
                _flag(exp.NullSafeNEQ(this=col(c, "o"), expression=e.copy()))
                for c, e in zip(p.names, p.exprs, strict=True)
            ]
        ),
        "nd",
        quoted=True,
    )
    q = (
        exp.select(*flags, nd, exp.alias_(_key_json(p.s), "k", quoted=True), *(extra or []))
        .from_(src, copy=False)
        .join(table(p.new_t.name, "new", "n"), on=on, copy=False)
    )
    untouched = untouched_condition(p.new_t, since_jd)
    return q.where(untouched, copy=False) if untouched is not None else q


def _streamed(pair: Connection, s: TableSides, q: exp.Select) -> exp.Select:
    """On a SQLite ``pair``, ``q`` with ``LIMIT -1`` (no limit): SQLite then runs it, as a
    subquery of an aggregate, as a co-routine that computes each of its columns once per row,
    instead of flattening it into the aggregate, which computes a column once per reference
    (``nd`` sums every rule's flag and each rule's aggregates name it again: rules² comparisons
    per row; half the CPU on the 1M world). Only for a one-column key: a composite key's ``k`` is
    ``json_array`` (:func:`_key_json`), which fails on a BLOB part and must stay computed only
    for the disagreeing rows, as the flattened aggregate does. Another engine gets ``q`` as it
    is."""
    if not isinstance(pair, sqlite3.Connection) or len(s.key) != 1:
        return q
    return q.limit(exp.Neg(this=exp.Literal.number(1)), copy=False)


def _add(terms: list[exp.Expression]) -> exp.Expression:
    if not terms:
        return exp.Literal.number(0)
    out = terms[0]
    for t in terms[1:]:
        out = exp.Add(this=out, expression=t)
    return out


def check_table(
    pair: Connection, old_t: Table, new_t: Table, tm: TableMapping, since_jd: float | None
) -> dict[str, dict[str, Any]]:
    """column -> evidence for every non-key rule of one table: one aggregate query (plus one keyed
    look-up per rule with a disagreement, for its first example)."""
    s = sides(old_t, tm)
    if isinstance(s, str) or not s.compared or s.null_safe_key:
        return {}
    p = _Paired(s, new_t, tuple(c for c, _, _ in s.compared), tuple(n for _, _, n in s.compared))
    inner = _streamed(pair, s, _inner(p, since_jd, SAMPLE)).subquery(
        exp.TableAlias(this=exp.to_identifier("r", quoted=True)), copy=False
    )
    nd = col("nd", "r")
    sel: list[exp.Expression] = [
        exp.Count(this=exp.Star()),
        _sum_when(exp.EQ(this=nd, expression=exp.Literal.number(0))),
    ]
    for i in range(len(p.names)):
        d = col(f"d{i}", "r")
        sel.append(
            _sum_when(
                exp.EQ(this=exp.Sub(this=nd.copy(), expression=d), expression=exp.Literal.number(0))
            )
        )
        sel.append(exp.Sum(this=d.copy()))
        only_this = and_all(
            [
                exp.EQ(this=d.copy(), expression=exp.Literal.number(1)),
                exp.EQ(this=nd.copy(), expression=exp.Literal.number(1)),
            ]
        )
        sel.append(exp.Min(this=exp.Case(ifs=[exp.If(this=only_this, true=col("k", "r"))])))
        sel.append(
            exp.Min(
                this=exp.Case(
                    ifs=[
                        exp.If(
                            this=exp.EQ(this=d.copy(), expression=exp.Literal.number(1)),
                            true=col("k", "r"),
                        )
                    ]
                )
            )
        )
    row = pair.execute(sql(exp.select(*sel).from_(inner, copy=False))).fetchone()
    shared, all_agree = int(row[0] or 0), int(row[1] or 0)
    dated = untouched_condition(new_t, since_jd) is not None
    share = AGREE_SHARE_DATED if dated else AGREE_SHARE_UNDATED
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(p.names):
        checked, raw_dis, first_only, first_any = (
            (row[2 + 4 * i] or 0),
            (row[3 + 4 * i] or 0),
            row[4 + 4 * i],
            row[5 + 4 * i],
        )
        agreeing, first = all_agree, first_only
        same_name = tm.rule(name).source == "same-name"
        if checked >= (MIN_EVIDENCE_SAME_NAME if same_name else MIN_EVIDENCE):
            verdict = "agrees" if agreeing >= share * checked else "disagrees"
        elif (
            shared >= MIN_EVIDENCE
            and shared - raw_dis < AGREE_SHARE_UNDATED * shared
            and not same_name
        ):
            verdict, checked, agreeing, first = "disagrees", shared, shared - raw_dis, first_any
        else:
            verdict = "unverified"
        ev: dict[str, Any] = {
            "rows_checked": int(checked),
            "rows_agreeing": int(agreeing),
            "verdict": verdict,
            "first_disagreement": None,
        }
        if first is not None and checked > agreeing:
            ev["first_disagreement"] = _example(pair, s, new_t, name, p.exprs[i], first)
        out[name] = ev
    return out


def _example(
    pair: Connection, s: TableSides, new_t: Table, column: str, expr: exp.Expression, key_value: Any
) -> dict[str, Any]:
    """{key, backup, live}: the backup's value and what the rule gives for the row with that key."""
    key = [key_value] if len(s.key) == 1 else json.loads(key_value)
    conds = [exp.EQ(this=col(k, "o"), expression=exp.Placeholder()) for k in s.key]
    on = and_all(exp.EQ(this=o, expression=n) for o, n in zip(s.old_key, s.new_key, strict=True))
    q = (
        exp.select(col(column, "o"), expr.copy())
        .from_(table(s.name, "old", "o"))
        .join(table(new_t.name, "new", "n"), on=on)
        .where(and_all(conds))
        .limit(1)
    )
    try:
        got = pair.execute(sql(q), key).fetchone()
    except sqlite3.Error:
        got = None
    backup, live = got if got else (None, None)
    return {"key": key, "backup": _jsonable(backup), "live": _jsonable(live)}


def _jsonable(v: Any) -> Any:
    return {"hex": v.hex()} if isinstance(v, bytes) else v


# ---------------------------------------------------------------------------------------------
# inference

_A, _B = "__recovery_a", "__recovery_b"
_SEPARATORS = (" ", ", ", ",", "-", "_", "/", "|", ";", ":", ".")
_CONCAT_SEPARATORS = (" ", "", ", ", "-", "_", "/")


@dataclass(frozen=True)
class Candidate:
    column: str
    expression: exp.Expression  # over the live table's columns, unqualified
    kind: str  # "as is" | "cast" | "rounding" | "scale" | "split" | "concatenation"


def _template(text: str, a: str, b: str | None = None) -> exp.Expression:
    """A candidate expression from one of this module's constant templates; the live column
    names go in as quoted identifier nodes, never as text."""
    tree = sqlglot.parse_one(text, read="sqlite")

    def swap(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and node.name == _A:
            return col(a)
        if isinstance(node, exp.Column) and node.name == _B and b is not None:
            return col(b)
        return node

    return tree.transform(swap)


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def scale_templates(r: float, old_aff: str) -> list[str]:
    """Templates of ``old = live * r`` in the forms an application writes them."""
    out: list[str] = []
    if not math.isfinite(r) or r == 0 or r == 1:
        return out
    k = round(math.log10(abs(r)))
    sign = "-" if r < 0 else ""
    if abs(abs(r) - 10.0**k) <= 1e-9 * 10.0**k and k != 0:
        if k > 0:
            f = f"{sign}{10**k}"
            out += [f"{_A} * {f}", f"CAST(ROUND({_A} * {f}) AS INTEGER)", f"ROUND({_A} * {f}, 2)"]
        else:
            f = f"{sign}{10**-k}"
            out += [f"{_A} / {f}.0", f"{_A} * {r!r}", f"ROUND({_A} / {f}.0, {-k})"]
    else:
        frac = Fraction(r).limit_denominator(1000)
        if abs(float(frac) - r) <= 1e-9 * abs(r):
            p, q = frac.numerator, frac.denominator
            if q == 1:
                out += [f"{_A} * {p}", f"CAST(ROUND({_A} * {p}) AS INTEGER)"]
            else:
                out += [
                    f"{_A} * {p} / {q}.0",
                    f"{_A} / ({q}.0 / {p})",
                    f"ROUND({_A} * {p} / {q}.0, 2)",
                ]
        out += [f"{_A} * {r!r}"]
    if old_aff == "integer":
        out += [f"CAST(ROUND({t}) AS INTEGER)" for t in list(out) if not t.startswith("CAST")]
    return list(dict.fromkeys(out))


def _identity_templates(old_aff: str, new_aff: str) -> list[tuple[str, str]]:
    if _is_num(old_aff) and _is_num(new_aff):
        return [
            (_A, "as is"),
            (f"CAST({_A} AS INTEGER)", "cast"),
            (f"CAST({_A} AS REAL)", "cast"),
            (f"CAST(ROUND({_A}) AS INTEGER)", "rounding"),
            (f"ROUND({_A})", "rounding"),
        ] + [(f"ROUND({_A}, {d})", "rounding") for d in range(1, 5)]
    if _is_num(old_aff) and new_aff == "text":
        return [
            (f"CAST({_A} AS INTEGER)", "cast"),
            (f"CAST({_A} AS REAL)", "cast"),
            (f"CAST({_A} AS NUMERIC)", "cast"),
        ]
    if old_aff == "text" and _is_num(new_aff):
        return [(f"CAST({_A} AS TEXT)", "cast")]
    if old_aff == "text" and new_aff == "text":
        return [(_A, "as is"), (f"TRIM({_A})", "cast")]
    return [(_A, "as is")]


def _split_templates() -> list[str]:
    out = []
    for sep in _SEPARATORS:
        out.append(f"SUBSTR({_A}, 1, INSTR({_A}, {_lit(sep)}) - 1)")
        out.append(f"SUBSTR({_A}, INSTR({_A}, {_lit(sep)}) + {len(sep)})")
    return out


@dataclass(frozen=True)
class TextFit:
    """Which live text columns fit old column ``c`` on every unchanged row, measured in SQL:
    ``prefix``/``suffix``: the live value begins/ends the old one (halves of a concatenation);
    ``head``/``tail``: the old value begins/ends the live one (halves of a split)."""

    prefix: frozenset[str] = frozenset()
    suffix: frozenset[str] = frozenset()
    head: frozenset[str] = frozenset()
    tail: frozenset[str] = frozenset()


def candidates(
    column: str,
    old_aff: str,
    pool: list[tuple[str, str]],
    ratios: dict[str, float],
    fit: TextFit | None = None,
) -> list[Candidate]:
    """Every candidate rule for old ``column`` over the live columns ``pool`` ((name, affinity)),
    most plausible first; ``ratios`` holds the measured backup/live ratio per numeric live column,
    ``fit`` (when measured) limits splits and concatenations to the columns that can form them."""
    out: list[Candidate] = []
    for a, aff in pool:
        out += [
            Candidate(column, _template(t, a), kind)
            for t, kind in _identity_templates(old_aff, aff)
        ]
    for a, aff in pool:
        if a in ratios and _is_num(aff) and _is_num(old_aff):
            out += [
                Candidate(column, _template(t, a), "scale")
                for t in scale_templates(ratios[a], old_aff)
            ]
    if old_aff in ("text", "blob"):
        texts = [a for a, aff in pool if aff in ("text", "blob")]
        halves = _split_templates()
        for a in texts:
            if fit is None or a in fit.head:
                out += [Candidate(column, _template(t, a), "split") for t in halves[0::2]]
            if fit is None or a in fit.tail:
                out += [Candidate(column, _template(t, a), "split") for t in halves[1::2]]
        for a in texts:
            for b in texts:
                if a != b and (fit is None or (a in fit.prefix and b in fit.suffix)):
                    out += [
                        Candidate(
                            column, _template(f"{_A} || {_lit(sep)} || {_B}", a, b), "concatenation"
                        )
                        for sep in _CONCAT_SEPARATORS
                    ]
    return out


def _fits(c: str, a: str) -> list[exp.Expression]:
    """0/1 per row: live ``a`` begins, ends the old ``c``; old ``c`` begins, ends live ``a``."""
    o, n = col(c, "o"), col(a, "n")

    def starts(whole: exp.Expression, part: exp.Expression) -> exp.Expression:
        cut = exp.Substring(
            this=whole.copy(), start=exp.Literal.number(1), length=exp.Length(this=part.copy())
        )
        return _flag(exp.EQ(this=cut, expression=part.copy()))

    def ends(whole: exp.Expression, part: exp.Expression) -> exp.Expression:
        cut = exp.Substring(this=whole.copy(), start=exp.Neg(this=exp.Length(this=part.copy())))
        return _flag(exp.EQ(this=cut, expression=part.copy()))

    return [starts(o, n), ends(o, n), starts(n, o), ends(n, o)]


def _ratio_expr(c: str, a: str) -> exp.Expression:
    """``o.c * 1.0 / n.a`` where both are numbers and ``n.a`` is not 0, else NULL."""
    both = and_all(
        [
            exp.In(
                this=exp.Anonymous(this="typeof", expressions=[col(c, "o")]),
                expressions=[exp.Literal.string(t) for t in _NUMERIC],
            ),
            exp.In(
                this=exp.Anonymous(this="typeof", expressions=[col(a, "n")]),
                expressions=[exp.Literal.string(t) for t in _NUMERIC],
            ),
            exp.NEQ(this=col(a, "n"), expression=exp.Literal.number(0)),
        ]
    )
    ratio = float_div(exp.Mul(this=col(c, "o"), expression=exp.Literal.number("1.0")), col(a, "n"))
    return exp.Case(ifs=[exp.If(this=both, true=ratio)])


def infer_table(
    pair: Connection,
    old_t: Table,
    new_t: Table,
    tm: TableMapping,
    targets: list[str],
    since_jd: float | None,
) -> dict[str, tuple[ColumnRule | None, dict[str, Any]]]:
    """old column -> (inferred rule or None, evidence) for each of ``targets`` (old columns without
    a trusted rule). Two aggregate queries: the measures (rows, distinct values, ratios), then every
    candidate's agreement."""
    target_set = set(targets)
    trusted = replace(
        tm, rules=tuple(r for r in tm.rules if r.column not in target_set and not r.disagrees)
    )
    s = sides(old_t, trusted)
    if isinstance(s, str) or s.null_safe_key:
        return {}
    used = trusted.used_new_columns
    pool_names = [
        c.name for c in new_t.columns if c.name not in used and c.name not in new_t.primary_key
    ]
    out: dict[str, tuple[ColumnRule | None, dict[str, Any]]] = {}
    p = _Paired(s, new_t, tuple(c for c, _, _ in s.compared), tuple(n for _, _, n in s.compared))
    per_target: dict[str, list[tuple[str, str]]] = {}
    for c in targets:
        names = [*pool_names, *([c] if new_t.column(c) is not None and c not in pool_names else [])]
        per_target[c] = [(a, affinity(new_t.column(a).type)) for a in names]  # type: ignore[union-attr]
    pairs = [
        (c, a)
        for c in targets
        for a, aff in per_target[c]
        if _is_num(aff) and _is_num(affinity(old_t.has(c).type))
    ][:MAX_RATIO_PAIRS]
    base = _inner(
        p,
        since_jd,
        INFER_SAMPLE,
        old_cols=targets,
        extra=[exp.alias_(col(c, "o"), f"o{i}", quoted=True) for i, c in enumerate(targets)]
        + [exp.alias_(_ratio_expr(c, a), f"q{j}", quoted=True) for j, (c, a) in enumerate(pairs)]
        + [
            exp.alias_(col(a, "n"), f"n_{a}", quoted=True)
            for a in dict.fromkeys(a for c in targets for a, _ in per_target[c])
        ],
    )
    text_pairs = [
        (c, a)
        for c in targets
        for a, aff in per_target[c]
        if aff in ("text", "blob") and affinity(old_t.has(c).type) in ("text", "blob")
    ][:MAX_RATIO_PAIRS]
    for j, (c, a) in enumerate(text_pairs):
        base = base.select(
            *[exp.alias_(f, f"f{j}_{m}", quoted=True) for m, f in enumerate(_fits(c, a))],
            copy=False,
        )
    rows = base.subquery(exp.TableAlias(this=exp.to_identifier("r", quoted=True)))
    unchanged = exp.EQ(this=col("nd", "r"), expression=exp.Literal.number(0))
    sel: list[exp.Expression] = [exp.Count(this=exp.Star())]
    for i, _c in enumerate(targets):
        sel += [
            exp.Count(this=col(f"o{i}", "r")),
            exp.Count(this=exp.Distinct(expressions=[col(f"o{i}", "r")])),
        ]
    for j in range(len(pairs)):
        sel += [exp.Min(this=col(f"q{j}", "r")), exp.Max(this=col(f"q{j}", "r"))]
    for j in range(len(text_pairs)):
        sel += [exp.Sum(this=col(f"f{j}_{m}", "r")) for m in range(4)]
    row = pair.execute(sql(exp.select(*sel).from_(rows).where(unchanged))).fetchone()
    total = int(row[0] or 0)
    ratios: dict[str, dict[str, float]] = {c: {} for c in targets}
    for j, (c, a) in enumerate(pairs):
        lo, hi = row[1 + 2 * len(targets) + 2 * j], row[2 + 2 * len(targets) + 2 * j]
        if lo is not None and hi is not None and math.isclose(lo, hi, rel_tol=1e-9):
            ratios[c][a] = _snap((lo + hi) / 2)
    at = 1 + 2 * len(targets) + 2 * len(pairs)
    fit_sets: dict[str, list[set[str]]] = {c: [set(), set(), set(), set()] for c in targets}
    for j, (c, a) in enumerate(text_pairs):
        for m in range(4):
            if int(row[at + 4 * j + m] or 0) == total:
                fit_sets[c][m].add(a)
    cands: list[Candidate] = []
    for i, c in enumerate(targets):
        nonnull, distinct = int(row[1 + 2 * i] or 0), int(row[2 + 2 * i] or 0)
        ev = {
            "rows_checked": total,
            "rows_agreeing": 0,
            "verdict": "not inferred",
            "first_disagreement": None,
        }
        if total < MIN_INFER:
            ev["reason"] = f"only {total} unchanged row(s), {MIN_INFER} needed"
        elif nonnull < MIN_INFER_VALUES or distinct < 2:
            ev["reason"] = "the backup's values are too few or all equal to prove a rule"
        else:
            fs = fit_sets[c]
            mine = candidates(
                c,
                affinity(old_t.has(c).type),
                per_target[c],
                ratios[c],
                TextFit(frozenset(fs[0]), frozenset(fs[1]), frozenset(fs[2]), frozenset(fs[3])),
            )
            cands += mine
            ev["reason"] = f"no candidate rule ({len(mine)} tried) agrees on every unchanged row"
        out[c] = (None, ev)
    if not cands:
        return out
    order = ("as is", "cast", "rounding", "scale", "split", "concatenation")
    cands.sort(key=lambda cd: order.index(cd.kind))  # stable: each target's own order is kept
    idx = {c: i for i, c in enumerate(targets)}
    sub = base.subquery(exp.TableAlias(this=exp.to_identifier("r", quoted=True)))
    for start in range(0, min(len(cands), MAX_CANDIDATES), CANDIDATES_PER_QUERY):
        batch = [c for c in cands[start : start + CANDIDATES_PER_QUERY] if out[c.column][0] is None]
        if not batch:
            continue
        sel2: list[exp.Expression] = [exp.Count(this=exp.Star())]
        for cand in batch:
            rebased = qualify_columns(cand.expression, "r")
            for node in rebased.find_all(exp.Column):
                node.set("this", exp.to_identifier(f"n_{node.name}", quoted=True))
            sel2.append(
                _sum_when(exp.NullSafeEQ(this=col(f"o{idx[cand.column]}", "r"), expression=rebased))
            )
        try:
            row2 = pair.execute(
                sql(exp.select(*sel2).from_(sub.copy()).where(unchanged.copy()))
            ).fetchone()
        except sqlite3.Error:  # a candidate SQLite cannot evaluate: no rule from this batch
            continue
        for k, cand in enumerate(batch):
            if out[cand.column][0] is None and int(row2[1 + k] or 0) == total:
                ev = {
                    "rows_checked": total,
                    "rows_agreeing": total,
                    "verdict": "agrees",
                    "first_disagreement": None,
                    "inferred_as": cand.kind,
                }
                rule = ColumnRule(
                    cand.column,
                    cand.expression,
                    "inferred",
                    f"{cand.kind}: all {total} unchanged rows agree",
                    ev,
                )
                out[cand.column] = (rule, ev)
    return out


def _snap(r: float) -> float:
    """The measured ratio, snapped to the nearest power of ten or simple fraction it matches."""
    if r == 0 or not math.isfinite(r):
        return r
    k = round(math.log10(abs(r)))
    if math.isclose(abs(r), 10.0**k, rel_tol=1e-9):
        return math.copysign(10.0**k, r)
    frac = Fraction(r).limit_denominator(1000)
    if math.isclose(float(frac), r, rel_tol=1e-9):
        return float(frac)
    return r


# ---------------------------------------------------------------------------------------------
# the whole mapping


def verify(
    pair: Connection,
    old: Schema,
    new: Schema,
    cmap: ColumnMapping,
    since_jd: float | None,
    trust: bool = False,
    infer: bool = True,
) -> ColumnMapping:
    """The mapping with every rule's evidence and the inferred rules; raises (exit 2) on the first
    rule the data contradict unless ``trust`` (then kept, marked ``trusted``)."""
    tables: dict[str, TableMapping] = {}
    for name, tm in cmap.tables.items():
        old_t, new_t = old.table(name), new.table(tm.source_table)
        if tm.skip or old_t is None or new_t is None:
            tables[name] = tm
            continue
        checks = check_table(pair, old_t, new_t, tm, since_jd)
        rules = tuple(
            replace(r, check=checks[r.column]) if r.column in checks else r for r in tm.rules
        )
        tm = replace(tm, rules=rules)
        targets = [
            r.column
            for r in rules
            if r.column not in old_t.key
            and (r.source == "none" or (r.source == "same-name" and r.disagrees))
        ]
        if infer and targets:
            found = infer_table(pair, old_t, new_t, tm, targets, since_jd)
            new_rules = []
            for r in tm.rules:
                got = found.get(r.column)
                if got and got[0] is not None:
                    new_rules.append(got[0])
                elif got and r.source == "none":
                    new_rules.append(replace(r, check=got[1]))
                else:
                    new_rules.append(r)
            tm = replace(tm, rules=tuple(new_rules))
        tables[name] = tm
    out = ColumnMapping(tables)
    bad = out.disagreeing()
    if bad and not trust:
        tname, rule = bad[0]
        more = f" (and {len(bad) - 1} more rule(s))" if len(bad) > 1 else ""
        raise RecoveryError(
            refusal_line(tname, rule) + more,
            "fix the rule (mapping file / migrations), or pass --trust-mapping if it is right",
        )
    if bad:
        marked = {
            name: replace(
                tm,
                rules=tuple(
                    replace(r, check={**(r.check or {}), "trusted": True}) if r.disagrees else r
                    for r in tm.rules
                ),
            )
            for name, tm in out.tables.items()
        }
        out = ColumnMapping(marked)
    return out


def refusal_line(tname: str, rule: ColumnRule) -> str:
    """One line: which rule, from where, and what the data say about it."""
    ev = rule.check or {}
    first = ev.get("first_disagreement")
    eg = ""
    if first:
        eg = f"; e.g. key {json.dumps(first['key'], default=str)}: backup {first['backup']!r}, rule gives {first['live']!r}"
    return (
        f"{tname}.{rule.column} = {rule.sql} ({rule.source}) disagrees with the backup: "
        f"{ev.get('rows_agreeing', 0)} of {ev.get('rows_checked', 0)} unchanged rows agree{eg}"
    )
