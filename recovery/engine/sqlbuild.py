"""Small helpers for building sqlglot expression trees with quoted identifiers.

Every statement the toolkit runs or writes is built here or from these pieces; identifiers are
always quoted (so names with quotes, spaces, unicode or keywords are safe) and values are bound
parameters, never text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from sqlglot import exp

DIALECT = "sqlite"
_RENDER_FOR: ContextVar[str] = ContextVar("recovery_render_for", default=DIALECT)


@contextmanager
def rendering_for(dialect: str) -> Iterator[None]:
    """Inside the block, :func:`sql` renders for ``dialect`` (e.g. ``"postgres"``): the same trees
    the stages build for SQLite run on PostgreSQL. Context-local (threads start with SQLite)."""
    token = _RENDER_FOR.set(dialect)
    try:
        yield
    finally:
        _RENDER_FOR.reset(token)


def current_dialect() -> str:
    return _RENDER_FOR.get()


def ident(name: str) -> exp.Identifier:
    return exp.Identifier(this=name, quoted=True)


def col(name: str, table: str | None = None) -> exp.Column:
    return exp.Column(this=ident(name), table=ident(table) if table else None)


def table(name: str, db: str | None = None, alias: str | None = None) -> exp.Table:
    t = exp.Table(this=ident(name), db=ident(db) if db else None)
    if alias:
        t.set("alias", exp.TableAlias(this=ident(alias)))
    return t


def and_all(conds: Iterable[exp.Expression]) -> exp.Expression:
    """``(a AND b …)`` — parenthesised, so it can be negated or nested safely."""
    conds = list(conds)
    if not conds:
        return exp.true()
    return exp.Paren(this=exp.and_(*conds)) if len(conds) > 1 else conds[0]


def or_all(conds: Iterable[exp.Expression]) -> exp.Expression:
    """``(a OR b …)`` — parenthesised, so it can be negated or nested safely."""
    conds = list(conds)
    if not conds:
        return exp.false()
    return exp.Paren(this=exp.or_(*conds)) if len(conds) > 1 else conds[0]


def _comparable(a: exp.Expression) -> exp.Expression:
    """On PostgreSQL ``to_jsonb(a)``: values of different types compare as SQLite compares storage
    classes (numbers by value, 1 = 1.0; a number never equals a text) instead of raising
    ``operator does not exist`` (a rename candidate pairs a text column with an integer one)."""
    if _RENDER_FOR.get() != "postgres" or isinstance(a, exp.Null):
        return a
    if isinstance(a, exp.Literal) and a.is_string:  # an untyped literal: PostgreSQL needs its type
        a = exp.Cast(this=a, to=exp.DataType.build("TEXT"))
    return exp.Anonymous(this="to_jsonb", expressions=[a])


def is_same(a: exp.Expression, b: exp.Expression) -> exp.Expression:
    """NULL-safe equality (``a IS b`` in SQLite, ``IS NOT DISTINCT FROM`` in PostgreSQL)."""
    return exp.NullSafeEQ(this=_comparable(a), expression=_comparable(b))


def is_distinct(a: exp.Expression, b: exp.Expression) -> exp.Expression:
    """NULL-safe inequality (``a IS NOT b`` in SQLite, ``IS DISTINCT FROM`` in PostgreSQL)."""
    return exp.NullSafeNEQ(this=_comparable(a), expression=_comparable(b))


def key_join(key: Sequence[str], left: str, right: str, null_safe: bool = False) -> exp.Expression:
    """``left.k1 = right.k1 AND …`` (``IS`` when the key may hold NULLs)."""
    op = is_same if null_safe else (lambda a, b: exp.EQ(this=a, expression=b))
    return and_all(op(col(k, left), col(k, right)) for k in key)


def float_div(a: exp.Expression, b: exp.Expression) -> exp.Div:
    """``a / b`` in floating point, built as sqlglot's generator would rewrite an untyped division
    for SQLite and PostgreSQL (``CAST(a AS REAL) / b``), so that rendering it in place
    (:func:`sql`) leaves the tree as it is and gives the same text."""
    return exp.Div(this=exp.Cast(this=a, to=exp.DataType.build("DOUBLE")), expression=b)


def qualify_columns(expression: exp.Expression, alias: str) -> exp.Expression:
    """A copy of ``expression`` with every column reference qualified by ``alias``."""
    tree = expression.copy()
    for c in tree.find_all(exp.Column):
        c.set("table", ident(alias))
        name = c.this
        if isinstance(name, exp.Identifier):
            name.set("quoted", True)
    return tree


CHECK_RENDER_ENV = "RECOVERY_CHECK_RENDER"
"""Set to ``1`` (the test suite does), :func:`sql` proves on every statement that rendering it
left the tree as it was and gave what rendering a copy gives."""
_CHECK_RENDER = os.environ.get(CHECK_RENDER_ENV) == "1"


def sql(expression: exp.Expression, dialect: str | None = None) -> str:
    """``expression`` as text for ``dialect`` (default: the one :func:`rendering_for` set).

    For SQLite rendered in place, not on a copy (sqlglot's default copies every tree first: a
    fifth of a rollback's main-thread time in sqlglot). sqlglot's generator may rewrite a tree
    while it renders it (e.g. an untyped division's left side cast to REAL, a set operation's
    LIMIT moved out, DISTINCT ON or QUALIFY rewritten); the trees built here avoid those
    constructs (:func:`float_div`), and with :data:`CHECK_RENDER_ENV` every statement is
    checked: the tree after rendering is node for node, value for value the tree before (then
    the text is what rendering a copy gives). Other dialects render a copy, as sqlglot does."""
    d = dialect or _RENDER_FOR.get()
    if d != DIALECT:  # PostgreSQL's generator rewrites some of these trees: on a copy
        return expression.sql(dialect=d)
    if not _CHECK_RENDER:
        return expression.sql(dialect=d, copy=False)
    before = expression.dump()  # every node, argument and value (not the cached hashes)
    text = expression.sql(dialect=d, copy=False)
    if expression.dump() != before:
        raise AssertionError(f"rendering changed the tree of: {text}")
    return text
