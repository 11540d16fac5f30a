"""The user's mapping file and the resolved ``ColumnMapping``.

The mapping file (TOML) declares, per OLD table, old column = SQL expression over the NEW table's
columns, or ``skip = true`` for the table::

    [tables.parts.columns]
    price = "price_cents / 100.0"
    [tables.quotes.columns]
    customer = "customer_name"
    [tables.production_records]
    skip = true

A ``ColumnMapping`` says, for every old-schema column, which expression over the new schema
produces it and which rule decided that, in order of trust: ``user-mapping``,
``migration-lineage``, ``rename-detected``, ``inferred`` (found from the data by
:mod:`recovery.infer`), ``same-name`` — or that it has no source (``none``). Every rule carries the
evidence :mod:`recovery.compare.evidence` found for it in the rows both databases share (``check``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from recovery.errors import RecoveryError
from recovery.engine.schema import Schema, Table
from recovery.engine.sqlbuild import col

SOURCES = ("user-mapping", "migration-lineage", "rename-detected", "inferred", "same-name", "none")

_FORBIDDEN = (
    exp.Query,
    exp.Subquery,
    exp.Command,
    exp.DDL,
    exp.DML,
    exp.Pragma,
    exp.Star,
    exp.Placeholder,
    exp.Parameter,
)


_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})


def _function_name(node: exp.Func) -> str:
    name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
    return str(name).lower()


@dataclass(frozen=True)
class UserTableMapping:
    columns: dict[str, exp.Expression] = field(default_factory=dict)
    skip: bool = False


@dataclass(frozen=True)
class UserMapping:
    """What the mapping file says, parsed and checked for shape (not yet against a schema)."""

    path: str | None
    tables: dict[str, UserTableMapping] = field(default_factory=dict)

    def expression(self, table: str, column: str) -> exp.Expression | None:
        t = self.tables.get(table)
        return t.columns.get(column) if t else None

    def skipped(self, table: str) -> bool:
        t = self.tables.get(table)
        return bool(t and t.skip)


def parse_expression(text: str, where: str) -> exp.Expression:
    """Parse one scalar SQL expression; refuse statements, subqueries and anything not scalar."""
    if not isinstance(text, str) or not text.strip():
        raise RecoveryError(f"{where}: the mapping must be a non-empty SQL expression string")
    try:
        trees = [t for t in sqlglot.parse(text, read="sqlite") if t is not None]
    except ParseError as exc:
        first = str(exc).splitlines()[0]
        raise RecoveryError(
            f"{where}: cannot parse {text!r}: {first}", "write one SQL expression"
        ) from None
    if len(trees) != 1:
        raise RecoveryError(
            f"{where}: {text!r} must be exactly one SQL expression", "remove any `;`"
        )
    tree = trees[0]
    check_tree(tree, where, text)
    return tree


def _aggregate(node: exp.Expression) -> bool:
    """An aggregate or window call: it folds many rows into one value (SQLite's two-argument
    ``max(a, b)``/``min(a, b)`` are scalar, and allowed)."""
    if isinstance(node, exp.Window):
        return True
    if isinstance(node, (exp.Max, exp.Min)) and node.expressions:
        return False
    return isinstance(node, exp.AggFunc)


def check_tree(tree: exp.Expression, where: str, text: str | None = None) -> None:
    """The rules every carried expression obeys, wherever it comes from (a mapping file, a
    bundle's manifest): only unqualified columns, literals, operators and scalar functions — no
    statement, subquery, aggregate, window, parameter, ``*``, or a function that reaches outside
    the row (``load_extension``, ``readfile`` …). Raises :class:`RecoveryError` (exit 2)."""
    shown = text if text is not None else tree.sql(dialect="sqlite")
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN) or _aggregate(node):
            raise RecoveryError(
                f"{where}: {shown!r} is not a plain expression over the new table's columns",
                "use columns, literals, operators and scalar functions only",
            )
        if isinstance(node, exp.Func) and _function_name(node) in _DENIED_FUNCTIONS:
            raise RecoveryError(
                f"{where}: {shown!r} calls {_function_name(node)}(), which the mapping may not use",
                "use columns, literals, operators and scalar functions only",
            )
        if isinstance(node, exp.Column) and node.table:
            raise RecoveryError(
                f"{where}: {shown!r} refers to another table ({node.table})",
                "refer to columns of the new table by name only",
            )


def load_mapping(path: str | os.PathLike[str] | None) -> UserMapping:
    """Read and check a mapping file; ``None`` gives an empty mapping."""
    if path is None:
        return UserMapping(None)
    p = Path(path)
    if not p.is_file():
        raise RecoveryError(f"mapping file {p} does not exist", "check the --mapping path")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecoveryError(
            f"mapping file {p} is not valid TOML: {exc}", "fix the syntax"
        ) from None
    tables_raw = data.get("tables", {})
    unknown_top = set(data) - {"tables"}
    if unknown_top or not isinstance(tables_raw, dict):
        raise RecoveryError(
            f"mapping file {p}: expected only [tables.<name>] sections", "see the README"
        )
    tables: dict[str, UserTableMapping] = {}
    for tname, body in tables_raw.items():
        if not isinstance(body, dict) or set(body) - {"columns", "skip"}:
            raise RecoveryError(
                f"mapping file {p}: [tables.{tname}] may hold only `columns` and `skip`",
                "see the README",
            )
        cols_raw = body.get("columns", {})
        if not isinstance(cols_raw, dict):
            raise RecoveryError(
                f"mapping file {p}: [tables.{tname}.columns] must be a table of strings"
            )
        cols = {
            c: parse_expression(e, f"mapping file {p} [tables.{tname}.columns] {c}")
            for c, e in cols_raw.items()
        }
        skip = body.get("skip", False)
        if not isinstance(skip, bool):
            raise RecoveryError(f"mapping file {p}: [tables.{tname}] skip must be true or false")
        tables[tname] = UserTableMapping(cols, skip)
    return UserMapping(str(p), tables)


@dataclass(frozen=True)
class ColumnRule:
    """How one old-schema column is produced from the new schema."""

    column: str
    expression: exp.Expression | None
    source: str
    evidence: str = ""
    check: dict[str, Any] | None = field(default=None, compare=False)
    """What the data say about the rule (:func:`recovery.compare.evidence.check_rules`): ``rows_checked``,
    ``rows_agreeing``, ``first_disagreement`` ({key, backup, live}), ``verdict`` (agrees /
    disagrees / unverified) and ``trusted`` when ``--trust-mapping`` kept a disagreeing rule."""

    @property
    def sql(self) -> str | None:
        return None if self.expression is None else self.expression.sql(dialect="sqlite")

    @property
    def disagrees(self) -> bool:
        return bool(self.check and self.check.get("verdict") == "disagrees")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "column": self.column,
            "expression": self.sql,
            "source": self.source,
            "evidence": self.evidence,
        }
        if self.check is not None:
            out.update(self.check)
        return out


@dataclass(frozen=True)
class TableMapping:
    table: str
    """The old table name."""
    rules: tuple[ColumnRule, ...]
    skip: bool = False
    new_table: str | None = None
    """The live table the rules read, when a table rename was detected (None: same name)."""
    rename_evidence: str = ""

    @property
    def source_table(self) -> str:
        """The live table holding this old table's rows."""
        return self.new_table or self.table

    def rule(self, column: str) -> ColumnRule:
        return next(r for r in self.rules if r.column == column)

    @property
    def used_new_columns(self) -> set[str]:
        out: set[str] = set()
        for r in self.rules:
            if r.expression is not None:
                out |= {c.name for c in r.expression.find_all(exp.Column)}
        return out


@dataclass(frozen=True)
class ColumnMapping:
    tables: dict[str, TableMapping]

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for n, t in sorted(self.tables.items()):
            entry: dict[str, object] = {"skip": t.skip, "columns": [r.to_dict() for r in t.rules]}
            if t.new_table:
                entry["new_table"] = t.new_table
                entry["table_rename_evidence"] = t.rename_evidence
            out[n] = entry
        return out

    def disagreeing(self) -> list[tuple[str, ColumnRule]]:
        """(table, rule) for every rule the data contradict, in table order."""
        return [
            (n, r)
            for n, t in sorted(self.tables.items())
            if not t.skip
            for r in t.rules
            if r.disagrees
        ]


def check_against(
    user: UserMapping,
    old: Schema,
    new: Schema,
    table_renames: dict[str, tuple[str, str]] | None = None,
) -> None:
    """Every mapped table/column must exist in the old schema, every referenced column in the new
    (in the renamed live table, when a table rename was detected)."""
    where = f"mapping file {user.path}"
    table_renames = table_renames or {}
    for tname, tm in user.tables.items():
        old_t = old.table(tname)
        if old_t is None:
            raise RecoveryError(
                f"{where}: [tables.{tname}] is not a table of the old (backup) schema"
            )
        if tm.skip:
            continue
        new_t = new.table(table_renames.get(tname, (tname, ""))[0])
        for cname, expr in tm.columns.items():
            if old_t.column(cname) is None:
                raise RecoveryError(
                    f"{where}: [tables.{tname}.columns] {cname}: the old table has no such column"
                )
            if new_t is None:
                raise RecoveryError(
                    f"{where}: [tables.{tname}.columns] {cname}: the new schema has no table {tname}"
                )
            check_columns(expr, new_t, f"{where}: [tables.{tname}.columns] {cname}")


def check_columns(expr: exp.Expression, new_t: Table, where: str) -> None:
    """Every column ``expr`` reads is a column of the new table ``new_t``."""
    for ref in expr.find_all(exp.Column):
        if new_t.column(ref.name) is None:
            raise RecoveryError(
                f"{where}: unknown column {ref.name!r} in {expr.sql()!r}",
                f"columns of the new {new_t.name}: {', '.join(new_t.column_names)}",
            )


def check_mapping(mapping: ColumnMapping, old: Schema, new: Schema, where: str) -> None:
    """A resolved mapping read from elsewhere (a bundle's manifest) obeys the mapping file's rules:
    every table is a table of the old schema, every rule names a column of the old table, and
    every expression passes :func:`check_tree` and reads only columns of its new table (the one
    of the same name, or the one it was renamed to)."""
    for tname, tm in mapping.tables.items():
        old_t = old.table(tname)
        if old_t is None:
            raise RecoveryError(
                f"{where}: mapping table {tname!r} is not a table of the old schema"
            )
        source = tm.source_table  # a renamed table reads the new table of its new name
        new_t = new.table(source)
        for r in tm.rules:
            if old_t.column(r.column) is None:
                raise RecoveryError(
                    f"{where}: mapping {tname}.{r.column}: the old table has no such column"
                )
            if r.expression is None:
                continue
            check_tree(r.expression, f"{where}: mapping {tname}.{r.column}")
            if new_t is None:
                raise RecoveryError(
                    f"{where}: mapping {tname}.{r.column}: the new schema has no table {source}"
                )
            check_columns(r.expression, new_t, f"{where}: mapping {tname}.{r.column}")


def resolve(
    old: Schema,
    new: Schema,
    user: UserMapping,
    lineage: dict[str, dict[str, exp.Expression]] | None = None,
    renames: dict[str, dict[str, tuple[str, str]]] | None = None,
    table_renames: dict[str, tuple[str, str]] | None = None,
) -> ColumnMapping:
    """Decide every old column's source, most trusted rule first.

    ``lineage``: old table -> old column -> expression from the migrations.
    ``renames``: old table -> old column -> (new column, evidence) from rename detection.
    ``table_renames``: old table -> (new table, evidence): the rules read the renamed live table.
    The ``inferred`` rules and every rule's evidence are added afterwards, from the data
    (:func:`recovery.compare.evidence.verify`).
    """
    table_renames = table_renames or {}
    check_against(user, old, new, table_renames)
    lineage = lineage or {}
    renames = renames or {}
    tables: dict[str, TableMapping] = {}
    for tname in old.data_tables:
        old_t = old.tables[tname]
        live_table, rename_evidence = table_renames.get(tname, (None, ""))
        new_t = new.table(live_table or tname)
        skip = user.skipped(tname)
        rules: list[ColumnRule] = []
        for c in old_t.columns:
            expr = user.expression(tname, c.name)
            if expr is not None:
                rules.append(ColumnRule(c.name, expr, "user-mapping", f"{user.path}"))
            elif c.name in lineage.get(tname, {}):
                rules.append(
                    ColumnRule(
                        c.name, lineage[tname][c.name], "migration-lineage", "alembic downgrade SQL"
                    )
                )
            elif c.name in renames.get(tname, {}):
                new_name, evidence = renames[tname][c.name]
                rules.append(ColumnRule(c.name, col(new_name), "rename-detected", evidence))
            elif new_t is not None and new_t.column(c.name) is not None:
                rules.append(ColumnRule(c.name, col(c.name), "same-name"))
            else:
                rules.append(
                    ColumnRule(c.name, None, "none", "the new schema has no source for it")
                )
        tables[tname] = TableMapping(tname, tuple(rules), skip, live_table, rename_evidence)
    return ColumnMapping(tables)
