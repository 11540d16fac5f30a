"""The target's own row constraints, read from its catalog, as sqlglot trees the re-import can
evaluate set-based over staged rows before anything is written.

The target of a re-import *is* the old schema (the restored backup), so its ``sqlite_master`` DDL
and pragmas are the exact rules an INSERT will meet: ``CHECK`` expressions (column and table
level), ``NOT NULL``, ``STRICT`` column types, generated columns (never written), and UNIQUE
indexes that the reflected :class:`recovery.engine.schema.Table` cannot express — on an expression, with a
``WHERE`` (partial), or with a collation other than the column's.

A rule that cannot be parsed is left out: the re-import's last guard (one SAVEPOINT per row of a
failing table) still turns what it misses into a ``constraint`` conflict.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field, replace

import sqlglot
from sqlglot import exp

from recovery.engine.sqlbuild import col, ident, sql, table

STRICT_TYPES = {
    "INT": "integer",
    "INTEGER": "integer",
    "REAL": "real",
    "TEXT": "text",
    "BLOB": "blob",
    "ANY": None,
}
"""A STRICT column's declared type → the storage class its values must have after affinity (None: any)."""


@dataclass(frozen=True)
class UniqueRule:
    """One UNIQUE index the plain unique-set check does not cover."""

    name: str
    terms: tuple[exp.Expression, ...]
    """Index terms over unqualified columns, each with its collation made explicit."""
    where: exp.Expression | None = None

    @property
    def text(self) -> str:
        on = ", ".join(sql(t) for t in self.terms)
        return f"UNIQUE INDEX {self.name} ({on})" + (
            f" WHERE {sql(self.where)}" if self.where is not None else ""
        )


@dataclass(frozen=True)
class Rules:
    """What an INSERT into ``table`` of the target must satisfy (names as the target spells them)."""

    table: str
    columns: tuple[str, ...]
    """Every column, generated ones included, in table order."""
    affinity: dict[str, str] = field(default_factory=dict)
    """Column → the type name whose affinity SQLite applies on insert (INTEGER/REAL/TEXT/NUMERIC/BLOB)."""
    collation: dict[str, str] = field(default_factory=dict)
    generated: dict[str, exp.Expression | None] = field(default_factory=dict)
    """Generated (VIRTUAL or STORED) columns → their expression (None when it could not be parsed)."""
    not_null: tuple[str, ...] = ()
    """NOT NULL columns a NULL would violate (not generated, not the rowid alias)."""
    checks: tuple[exp.Expression, ...] = ()
    strict: dict[str, str] = field(default_factory=dict)
    """STRICT table: column → required storage class (``typeof``)."""
    unique: tuple[UniqueRule, ...] = ()
    plain_unique: frozenset[tuple[str, ...]] = frozenset()
    """Column sets of full (not partial) UNIQUE indexes on plain columns with the column's own
    collation: what :func:`recovery.reimport.detect.unique.detect` checks as ``unique`` conflicts."""

    @property
    def writable(self) -> tuple[str, ...]:
        """The columns an INSERT may name: every column but the generated ones."""
        low = {g.lower() for g in self.generated}
        return tuple(c for c in self.columns if c.lower() not in low)

    @property
    def needs_rows(self) -> bool:
        """Some rule reads values as the table would store them (a typed copy of the staged rows)."""
        return bool(self.checks or self.strict or self.unique)

    def column_expr(self, name: str, alias: str, depth: int = 0) -> exp.Expression:
        """``alias.name``, or — for a generated column — its expression over ``alias`` (the staged
        value of a generated column is not what the table would hold)."""
        gen = {g.lower(): e for g, e in self.generated.items()}
        e = gen.get(name.lower())
        if e is None or depth > 8:
            return col(self.spelled(name), alias)
        return exp.Paren(this=self.over(e, alias, depth + 1))

    def over(self, expression: exp.Expression, alias: str, depth: int = 0) -> exp.Expression:
        """A copy of ``expression`` with every column read from ``alias`` (generated ones expanded)."""
        tree = expression.copy()
        for c in list(tree.find_all(exp.Column)):
            repl = self.column_expr(c.name, alias, depth)
            if c is tree:
                return repl
            c.replace(repl)
        return tree

    def spelled(self, name: str) -> str:
        return next((c for c in self.columns if c.lower() == name.lower()), name)


def _parse(text: str | None) -> exp.Expression | None:
    if not text:
        return None
    try:
        return sqlglot.parse_one(text, read="sqlite")
    except sqlglot.errors.SqlglotError:
        return None


def affinity_type(declared: str) -> str:
    """SQLite's column affinity rules (datatype3.html §3.1), as a type name with that affinity."""
    d = (declared or "").upper()
    if "INT" in d:
        return "INTEGER"
    if any(s in d for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if not d or "BLOB" in d:
        return "BLOB"
    if any(s in d for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def _pragma(conn: sqlite3.Connection, name: str, arg: str) -> list[tuple]:
    q = exp.select("*").from_(
        exp.Anonymous(this=name, expressions=[exp.Placeholder(), exp.Literal.string("main")])
    )
    return conn.execute(sql(q), (arg,)).fetchall()


def _master_sql(conn: sqlite3.Connection, kind: str, name: str) -> str | None:
    q = (
        exp.select(col("sql"))
        .from_(table("sqlite_master", "main"))
        .where(
            exp.and_(
                exp.EQ(this=col("type"), expression=exp.Placeholder()),
                exp.EQ(this=col("name"), expression=exp.Placeholder()),
            )
        )
    )
    row = conn.execute(sql(q), (kind, name)).fetchone()
    return row[0] if row else None


def _column_defs(ddl: exp.Expression | None) -> dict[str, exp.ColumnDef]:
    if not isinstance(ddl, exp.Create) or not isinstance(ddl.this, exp.Schema):
        return {}
    return {d.name.lower(): d for d in ddl.this.expressions if isinstance(d, exp.ColumnDef)}


def _checks(ddl: exp.Expression | None) -> list[exp.Expression]:
    if not isinstance(ddl, exp.Create) or not isinstance(ddl.this, exp.Schema):
        return []
    return [c.this for c in ddl.this.find_all(exp.CheckColumnConstraint) if c.this is not None]


def _is_strict(ddl: exp.Expression | None) -> bool:
    return isinstance(ddl, exp.Create) and any(True for _ in ddl.find_all(exp.StrictProperty))


def read_rules(conn: sqlite3.Connection, name: str) -> Rules:
    """The rules of table ``name`` in ``main`` (read inside the re-import's transaction)."""
    ddl = _parse(_master_sql(conn, "table", name))
    defs = _column_defs(ddl)
    xinfo = _pragma(conn, "pragma_table_xinfo", name)  # cid, name, type, notnull, dflt, pk, hidden
    columns = tuple(r[1] for r in xinfo)
    pk_cols = [r for r in xinfo if r[5]]
    rowid_alias = (
        pk_cols[0][1].lower() if len(pk_cols) == 1 and pk_cols[0][2].upper() == "INTEGER" else None
    )
    collation: dict[str, str] = {}
    generated: dict[str, exp.Expression | None] = {}
    for r in xinfo:
        d = defs.get(r[1].lower())
        coll = d.find(exp.CollateColumnConstraint) if d is not None else None
        if coll is not None and coll.this is not None:
            collation[r[1]] = coll.this.name.upper()
        if r[6] in (2, 3):
            comp = d.find(exp.ComputedColumnConstraint) if d is not None else None
            generated[r[1]] = comp.this if comp is not None else None
    strict = _is_strict(ddl)
    rules = Rules(
        table=name,
        columns=columns,
        affinity={
            r[1]: ("BLOB" if strict and r[2].upper() == "ANY" else affinity_type(r[2]))
            for r in xinfo
        },
        collation=collation,
        generated=generated,
        not_null=tuple(
            r[1] for r in xinfo if r[3] and r[6] not in (2, 3) and r[1].lower() != rowid_alias
        ),
        checks=tuple(_checks(ddl)),
        strict={
            r[1]: t for r in xinfo if r[6] not in (2, 3) and (t := STRICT_TYPES.get(r[2].upper()))
        }
        if strict
        else {},
    )
    unique, plain = _unique_rules(conn, rules)
    return replace(rules, unique=tuple(unique), plain_unique=frozenset(plain))


def _unique_rules(
    conn: sqlite3.Connection, rules: Rules
) -> tuple[list[UniqueRule], set[tuple[str, ...]]]:
    out: list[UniqueRule] = []
    plain: set[tuple[str, ...]] = set()
    for _seq, iname, unique, origin, partial in _pragma(conn, "pragma_index_list", rules.table):
        if not unique:
            continue
        keys = [
            r for r in _pragma(conn, "pragma_index_xinfo", iname) if r[5]
        ]  # seqno, cid, name, desc, coll, key
        own = all(r[4].upper() == rules.collation.get(r[2], "BINARY") for r in keys if r[1] >= 0)
        if not partial and all(r[1] >= 0 for r in keys) and (own or origin in ("u", "pk")):
            plain.add(tuple(r[2] for r in keys))
            continue
        parsed = (
            _parse(_master_sql(conn, "index", iname))
            if (partial or any(r[1] < 0 for r in keys))
            else None
        )
        params = (
            parsed.this.args.get("params")
            if isinstance(parsed, exp.Create) and isinstance(parsed.this, exp.Index)
            else None
        )
        terms_src = (
            [
                o.this if isinstance(o, exp.Ordered) else o
                for o in (params.args.get("columns") or [])
            ]
            if params
            else []
        )
        terms: list[exp.Expression] = []
        for i, r in enumerate(keys):
            if r[1] >= 0:
                term: exp.Expression = exp.column(r[2])
                usual = rules.collation.get(r[2], "BINARY")
            elif i < len(terms_src):
                term = terms_src[i].copy()
                term = term.this if isinstance(term, exp.Collate) else term
                usual = "BINARY"
            else:
                terms = []
                break
            # an explicit COLLATE only where it differs: the target's index then serves the probe
            terms.append(
                term
                if r[4].upper() == usual
                else exp.Collate(this=term, expression=exp.Var(this=r[4].upper()))
            )
        where = params.args.get("where") if params is not None else None
        if not terms or (partial and where is None):
            continue  # not understood: the per-row guard catches what it would refuse
        out.append(
            UniqueRule(iname, tuple(terms), where.this.copy() if where is not None else None)
        )
    return out, plain


def typed_copy(rules: Rules, name: exp.Table) -> exp.Create:
    """``CREATE TABLE name (rid INTEGER PRIMARY KEY, <col> <affinity type> [COLLATE c], …)``: an
    INSERT into it stores values as the target table would (affinity, collation), no constraint."""
    defs = [
        exp.ColumnDef(
            this=ident("rid"),
            kind=exp.DataType.build("INTEGER"),
            constraints=[exp.ColumnConstraint(kind=exp.PrimaryKeyColumnConstraint())],
        )
    ]
    for c in rules.writable:
        cons = []
        if c in rules.collation:
            cons.append(
                exp.ColumnConstraint(
                    kind=exp.CollateColumnConstraint(this=exp.Var(this=rules.collation[c]))
                )
            )
        # a user-defined type keeps the name as written (sqlglot renders NUMERIC as REAL: another affinity)
        kind = exp.DataType(this=exp.DataType.Type.USERDEFINED, kind=rules.affinity[c])
        defs.append(exp.ColumnDef(this=ident(c), kind=kind, constraints=cons))
    return exp.Create(kind="TABLE", this=exp.Schema(this=name, expressions=defs))


def strict_violation(rules: Rules, column: str, alias: str) -> exp.Expression:
    """The value (as stored after affinity) has the wrong storage class for its STRICT column."""
    c = col(column, alias)
    return exp.and_(
        exp.Not(this=exp.Is(this=c, expression=exp.Null())),
        exp.NEQ(
            this=exp.Anonymous(this="typeof", expressions=[c.copy()]),
            expression=exp.Literal.string(rules.strict[column]),
        ),
    )
