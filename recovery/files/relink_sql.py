"""The statements relink runs, each a sqlglot tree with quoted identifiers and bound values,
rendered once per shape (the planner asks the same few questions once per file record).

The bundle's ``rows.db`` is ATTACHed as :data:`BUNDLE` while planning; ``main`` is the target.
"""

from __future__ import annotations

from functools import cache, lru_cache

from sqlglot import exp

from recovery.model.kinds import CARRIED_KINDS, KIND_COLUMN as KIND
from recovery.engine.sqlbuild import and_all, col, ident, is_same, sql, table

BUNDLE = "relink_bundle"
"""The schema name bundle ``rows.db`` is ATTACHed under while planning."""
BUNDLE_KINDS = CARRIED_KINDS


def _ph() -> exp.Placeholder:
    return exp.Placeholder()


def _in(column: exp.Expression, n: int) -> exp.In:
    return exp.In(this=column, expressions=[_ph() for _ in range(n)])


def _kinds(n: int) -> exp.In:
    return _in(col(KIND), n)


@cache
def tables_sql(schema: str) -> str:
    """The tables of ``schema`` by name (SQLite's own left out)."""
    return sql(
        exp.select(col("name"))
        .from_(table("sqlite_master", schema))
        .where(
            and_all(
                [
                    exp.EQ(this=col("type"), expression=exp.Literal.string("table")),
                    exp.Not(
                        this=exp.Like(this=col("name"), expression=exp.Literal.string("sqlite_%"))
                    ),
                ]
            )
        )
        .order_by(col("name"))
    )


@cache
def bundle_rows_sql(name: str) -> str:
    """A bundle table's rows of the bundle kinds (the kinds bound)."""
    return sql(exp.select(exp.Star()).from_(table(name, BUNDLE)).where(_kinds(len(BUNDLE_KINDS))))


@cache
def fk_rows_sql(name: str, fk_column: str) -> str:
    """A bundle table's inserted/updated rows whose ``fk_column`` names something."""
    return sql(
        exp.select(exp.Star())
        .from_(table(name, BUNDLE))
        .where(
            and_all([_kinds(2), exp.Not(this=exp.Is(this=col(fk_column), expression=exp.Null()))])
        )
    )


@cache
def entity_rows_sql(
    name: str, key_col: str, files_table: str, etype: str, eid: str, n_types: int
) -> str:
    """The rows of bundle table ``name`` that bundle file records (of the bundle kinds, with one of
    ``n_types`` entity types) name by ``eid``, in table order. ``=`` between two untyped bundle
    columns compares values as a bound key would."""
    names = (
        exp.select(col(eid, "f"))
        .from_(table(files_table, BUNDLE, "f"))
        .where(and_all([_in(col(etype, "f"), n_types), _in(col(KIND, "f"), len(BUNDLE_KINDS))]))
    )
    return sql(
        exp.select(exp.Column(this=exp.Star(), table=ident("b")))
        .from_(table(name, BUNDLE, "b"))
        .where(exp.In(this=col(key_col, "b"), query=exp.Subquery(this=names)))
        .order_by(col("rowid", "b"))
    )


@cache
def bundle_row_sql(name: str, key_col: str) -> str:
    """The bundle rows of ``name`` whose ``key_col`` is the bound key, in table order."""
    return sql(
        exp.select(exp.Star())
        .from_(table(name, BUNDLE))
        .where(exp.EQ(this=col(key_col), expression=_ph()))
        .order_by(col("rowid"))
    )


@cache
def entity_types_sql(files_table: str, etype: str) -> str:
    """The distinct entity types the bundle's file records name (the kinds bound)."""
    return sql(
        exp.select(col(etype))
        .distinct()
        .from_(table(files_table, BUNDLE))
        .where(_kinds(len(BUNDLE_KINDS)))
    )


def _record_select(name: str, pk: str, alias: str | None = None) -> exp.Select:
    """``SELECT *, pk AS _key FROM main.name`` (``alias.*`` with an alias)."""
    star = exp.Column(this=exp.Star(), table=ident(alias)) if alias else exp.Star()
    return exp.select(star, exp.alias_(col(pk, alias), "_key", quoted=True)).from_(
        table(name, "main", alias)
    )


@cache
def record_sql(name: str, pk: str) -> str:
    """The target record whose key is the bound key, with its key as ``_key``."""
    return sql(_record_select(name, pk).where(exp.EQ(this=col(pk), expression=_ph())))


@lru_cache(maxsize=64)
def records_sql(name: str, pk: str, n: int) -> str:
    """The records whose key is one of ``n`` bound keys, each row led by its key's position:
    ``(VALUES (0, ?), …) AS k JOIN main.name ON pk = k.column2`` compares as ``pk = ?`` would."""
    keys = exp.Values(
        expressions=[exp.Tuple(expressions=[exp.Literal.number(i), _ph()]) for i in range(n)],
        alias=exp.TableAlias(this=ident("k")),
    )
    q = _record_select(name, pk, "t")
    q.set("expressions", [col("column1", "k"), *q.expressions])
    return sql(
        q.from_(keys).join(
            table(name, "main", "t"), on=exp.EQ(this=col(pk, "t"), expression=col("column2", "k"))
        )
    )


@cache
def record_by_path_sql(name: str, pk: str, path: str, sha: str) -> str:
    """The target records at the bound path (with the bound hash, when the table records one)."""
    conds: list[exp.Expression] = [exp.EQ(this=col(path), expression=_ph())]
    if sha:
        conds.append(is_same(col(sha), _ph()))
    return sql(_record_select(name, pk).where(and_all(conds)))


@cache
def has_row_sql(name: str, key_col: str, same: tuple[str, ...]) -> str:
    """``SELECT 1 FROM main.name WHERE key = ? AND c IS ? …``."""
    conds = [exp.EQ(this=col(key_col), expression=_ph()), *(is_same(col(c), _ph()) for c in same)]
    return sql(exp.select(exp.Literal.number(1)).from_(table(name, "main")).where(and_all(conds)))


@lru_cache(maxsize=64)
def has_rows_sql(name: str, key_col: str, same: tuple[str, ...], n: int) -> str:
    """:func:`has_row_sql` for ``n`` questions at once: each bound as ``(key, c…)`` after its
    position, ``(VALUES (0, ?, ?…), …) AS k JOIN main.name ON key = k.column2 AND c IS k.column3
    …``, the positions of those a row answers (compared as ``key = ? AND c IS ?`` would)."""
    keys = exp.Values(
        expressions=[
            exp.Tuple(expressions=[exp.Literal.number(i), *(_ph() for _ in range(1 + len(same)))])
            for i in range(n)
        ],
        alias=exp.TableAlias(this=ident("k")),
    )
    conds = [
        exp.EQ(this=col(key_col, "t"), expression=col("column2", "k")),
        *(is_same(col(c, "t"), col(f"column{3 + j}", "k")) for j, c in enumerate(same)),
    ]
    return sql(
        exp.select(col("column1", "k"))
        .from_(keys)
        .join(table(name, "main", "t"), on=and_all(conds))
    )


@cache
def key_by_sql(name: str, key_col: str, same: tuple[str, ...]) -> str:
    """``SELECT key FROM main.name WHERE c IS ? AND …``."""
    return sql(
        exp.select(col(key_col))
        .from_(table(name, "main"))
        .where(and_all(is_same(col(c), _ph()) for c in same))
    )


@cache
def select_sql(name: str, columns: tuple[str | None, ...]) -> str:
    """``SELECT c1, c2 … FROM main.name`` (NULL for a column not there)."""
    return sql(
        exp.select(*(col(c) if c else exp.Null() for c in columns)).from_(table(name, "main"))
    )


@cache
def update_sql(name: str, column: str, pk: str) -> str:
    """``UPDATE main.name SET column = ? WHERE pk = ?``."""
    return sql(
        exp.Update(
            this=table(name, "main"),
            expressions=[exp.EQ(this=col(column), expression=_ph())],
            where=exp.Where(this=exp.EQ(this=col(pk), expression=_ph())),
        )
    )
