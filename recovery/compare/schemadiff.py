"""``SchemaDiff``: the structural difference old → new, from alembic's comparator, plus renames.

The structural part is alembic's ``compare_metadata`` run with the old (backup) database as the
"database" and the new (live) schema's reflected MetaData as the "model", so its operations read
as the upgrade that happened. Rename detection is our one extra comparator: a removed and an added
column of the same table whose values agree on the rows both databases share, and likewise a
removed and an added table whose rows are found by key and agree in most columns.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from recovery.engine.base import Connection
from recovery.transpile.mapping import UserMapping
from recovery.engine.schema import BOOKKEEPING_TABLES, Schema, engine_for, sqlalchemy_metadata
from recovery.engine.sqlbuild import and_all, col, is_same, key_join, sql, table

RENAME_THRESHOLD = 0.9
RENAME_SAMPLE = 20_000
"""Rows (in storage order) whose values are compared per candidate pair: the same bound as the
rule evidence (:data:`recovery.compare.evidence.SAMPLE`), which re-checks every detected rename on
those rows before it is used; at least ``RENAME_THRESHOLD`` of them must agree, so a wrong pair is
refused by thousands of rows, and the cost stays bounded on million-row tables."""


@dataclass(frozen=True)
class ColumnChange:
    table: str
    column: str
    kind: str  # "type" | "nullable" | "default"
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Rename:
    table: str
    old: str
    new: str
    source: str  # "rename-detected" | "user-mapping"
    share: float | None = None
    rows_compared: int = 0
    dated: bool = False
    """True when rows updated after the deploy (by the live table's updated-at column) were left out."""

    @property
    def evidence(self) -> str:
        if self.source == "user-mapping":
            return "declared in the mapping file"
        which = "shared rows not updated after the deploy" if self.dated else "shared rows"
        return f"{self.share:.1%} of {self.rows_compared} {which} agree"


@dataclass(frozen=True)
class TableRename:
    """A backup table whose rows live on under another name: most of its rows are found by key in
    the added table and most of its shared-name columns agree there."""

    old: str
    new: str
    rows_compared: int
    rows_matched: int
    columns_agreeing: tuple[str, ...]
    columns_compared: tuple[str, ...]

    @property
    def evidence(self) -> str:
        return (
            f"{self.rows_matched} of {self.rows_compared} backup rows found by key; "
            f"{len(self.columns_agreeing)} of {len(self.columns_compared)} columns agree"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "rows_compared": self.rows_compared,
            "rows_matched": self.rows_matched,
            "columns_agreeing": list(self.columns_agreeing),
            "columns_compared": list(self.columns_compared),
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class SchemaDiff:
    tables_added: tuple[str, ...] = ()
    tables_removed: tuple[str, ...] = ()
    columns_added: dict[str, tuple[str, ...]] = field(default_factory=dict)
    columns_removed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    columns_changed: tuple[ColumnChange, ...] = ()
    renames: tuple[Rename, ...] = ()
    views: dict[str, tuple[str, ...]] = field(default_factory=dict)
    triggers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    indexes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    old_revision: str | None = None
    new_revision: str | None = None
    table_renames: tuple[TableRename, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (
            self.tables_added
            or self.tables_removed
            or self.columns_added
            or self.columns_removed
            or self.columns_changed
            or any(self.views.values())
            or any(self.triggers.values())
            or any(self.indexes.values())
        )

    def renames_by_table(self) -> dict[str, dict[str, tuple[str, str]]]:
        out: dict[str, dict[str, tuple[str, str]]] = {}
        for r in self.renames:
            out.setdefault(r.table, {})[r.old] = (r.new, r.evidence)
        return out

    def table_renames_by_old(self) -> dict[str, tuple[str, str]]:
        return {r.old: (r.new, r.evidence) for r in self.table_renames}

    def to_dict(self) -> dict[str, Any]:
        return {
            "revisions": {"old": self.old_revision, "new": self.new_revision},
            "table_renames": [r.to_dict() for r in self.table_renames],
            "tables_added": list(self.tables_added),
            "tables_removed": list(self.tables_removed),
            "columns_added": {t: list(c) for t, c in sorted(self.columns_added.items())},
            "columns_removed": {t: list(c) for t, c in sorted(self.columns_removed.items())},
            "columns_changed": [vars(c) for c in self.columns_changed],
            "renames": [
                {
                    "table": r.table,
                    "old": r.old,
                    "new": r.new,
                    "source": r.source,
                    "share": r.share,
                    "rows_compared": r.rows_compared,
                    "evidence": r.evidence,
                }
                for r in self.renames
            ],
            "views": {k: list(v) for k, v in self.views.items()},
            "triggers": {k: list(v) for k, v in self.triggers.items()},
            "indexes": {k: list(v) for k, v in self.indexes.items()},
        }


def _named_diff(old: dict[str, str], new: dict[str, str]) -> dict[str, tuple[str, ...]]:
    return {
        "added": tuple(sorted(set(new) - set(old))),
        "removed": tuple(sorted(set(old) - set(new))),
        "changed": tuple(sorted(n for n in set(old) & set(new) if _norm(old[n]) != _norm(new[n]))),
    }


def _norm(ddl: str) -> str:
    return " ".join(ddl.replace('"', "").split()).lower()


@dataclass(frozen=True)
class _Named:
    """The one attribute of alembic's ``Table``/``Column`` objects that :func:`compare` reads."""

    name: str


def _pragma_tables(conn: Connection) -> dict[str, dict[str, tuple[Any, ...]]] | None:
    """Each table's columns as SQLite declares them (``PRAGMA table_xinfo``: declared type, NOT
    NULL, default text), the tables SQLAlchemy reflects (``sqlite_%`` and our bookkeeping left
    out); None when a table is virtual or has hidden or generated columns (left to alembic)."""
    if not isinstance(conn, sqlite3.Connection):
        return None
    master = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' ESCAPE '~'"
    ).fetchall()
    out: dict[str, dict[str, tuple[Any, ...]]] = {}
    for name, ddl in master:
        if name in BOOKKEEPING_TABLES:
            continue
        if ddl is None or " ".join(ddl.split()[:2]).upper() != "CREATE TABLE":
            return None  # CREATE VIRTUAL TABLE
        info = conn.execute(
            'SELECT name, type, "notnull", dflt_value, hidden FROM pragma_table_xinfo(?)', (name,)
        ).fetchall()
        if any(r[4] for r in info):
            return None
        out[name] = {r[0]: (r[1], r[2], r[3]) for r in info}
    return out


def pragma_ops(old_conn: Connection, new_conn: Connection) -> list[tuple[Any, ...]] | None:
    """alembic's operations for the schema diff, without alembic, when the PRAGMA-level schemas
    decide them alone: tables and columns added or removed, and every column both have declared
    alike (same type text, NOT NULL and default), so alembic's type, nullability and default
    comparisons find nothing. None when some shared column differs in those (alembic judges
    whether the difference is one), or :func:`_pragma_tables` leaves a table to alembic."""
    old, new = _pragma_tables(old_conn), _pragma_tables(new_conn)
    if old is None or new is None:
        return None
    ops: list[tuple[Any, ...]] = [("add_table", _Named(t)) for t in new if t not in old]
    ops += [("remove_table", _Named(t)) for t in old if t not in new]
    for t in old.keys() & new.keys():
        o, n = old[t], new[t]
        if any(o[c] != n[c] for c in o.keys() & n.keys()):
            return None
        ops += [("add_column", None, t, _Named(c)) for c in n if c not in o]
        ops += [("remove_column", None, t, _Named(c)) for c in o if c not in n]
    return ops


def structural(old_conn: Connection, new_conn: Connection) -> list[Any]:
    """alembic's upgrade operations from the old database to the new schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    target = sqlalchemy_metadata(new_conn)
    for name in list(target.tables):
        if name in BOOKKEEPING_TABLES:
            target.remove(target.tables[name])
    with engine_for(old_conn).connect() as sa_conn:
        ctx = MigrationContext.configure(
            sa_conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_name": lambda name, type_, parent: (
                    not (type_ == "table" and name in BOOKKEEPING_TABLES)
                ),
            },
        )
        return list(compare_metadata(ctx, target))


def detect_renames(
    pair: Connection,
    old: Schema,
    new: Schema,
    removed: dict[str, tuple[str, ...]],
    added: dict[str, tuple[str, ...]],
    user: UserMapping,
    threshold: float = RENAME_THRESHOLD,
    since_jd: float | None = None,
) -> list[Rename]:
    """Pair removed with added columns whose values agree on the shared rows (one pass per table).

    A pair needs at least ``threshold`` agreeing rows and one agreeing non-NULL value; each column
    is used once, best share first. Columns the mapping file declares are never guessed. With the
    deploy time known and an updated-at column in the live table, rows updated after the deploy
    are left out: a user's edit of the renamed column is not evidence against the rename.
    """
    found: list[Rename] = []
    for tname in sorted(set(removed) & set(added)):
        if user.skipped(tname):
            continue
        declared = set(user.tables[tname].columns if tname in user.tables else ())
        rem = [c for c in removed[tname] if c not in declared]
        add = list(added[tname])
        old_t, new_t = old.tables[tname], new.tables[tname]
        key = old_t.primary_key
        if not rem or not add or not key or tuple(new_t.primary_key) != key:
            continue
        pairs = [(r, a) for r in rem for a in add]
        selects: list[exp.Expression] = [exp.Count(this=exp.Star())]
        for r, a in pairs:
            same = is_same(col(r, "o"), col(a, "n"))
            nonnull = and_all([same, exp.Not(this=exp.Is(this=col(r, "o"), expression=exp.Null()))])
            selects.append(exp.Sum(this=exp.Cast(this=same, to=exp.DataType.build("INT"))))
            selects.append(exp.Sum(this=exp.Cast(this=nonnull, to=exp.DataType.build("INT"))))
        # only the key and the candidate columns: SQLite materialises this sample before the join
        sample = (
            exp.select(*[col(c) for c in dict.fromkeys([*key, *rem])])
            .from_(table(tname, "old"))
            .limit(RENAME_SAMPLE)
        )
        query = (
            exp.select(*selects)
            .from_(sample.subquery(exp.TableAlias(this=exp.to_identifier("o", quoted=True))))
            .join(table(tname, "new", "n"), on=key_join(key, "o", "n"))
        )
        from recovery.compare.evidence import untouched_condition

        untouched = untouched_condition(new_t, since_jd)
        if untouched is not None:
            query = query.where(untouched)
        row = pair.execute(sql(query)).fetchone()
        total = row[0] or 0
        if not total:
            continue
        scored = []
        for i, (r, a) in enumerate(pairs):
            agree, agree_nonnull = row[1 + 2 * i] or 0, row[2 + 2 * i] or 0
            share = agree / total
            if share >= threshold and agree_nonnull > 0:
                scored.append((share, r, a))
        used: set[str] = set()
        for share, r, a in sorted(scored, key=lambda s: (-s[0], s[1], s[2])):
            if r in used or a in used:
                continue
            used |= {r, a}
            found.append(
                Rename(
                    tname, r, a, "rename-detected", round(share, 6), total, untouched is not None
                )
            )
    return found


def detect_table_renames(
    pair: Connection,
    old: Schema,
    new: Schema,
    removed: list[str],
    added: list[str],
    user: UserMapping,
    threshold: float = RENAME_THRESHOLD,
) -> list[TableRename]:
    """Pair removed with added tables as columns are paired: same primary key columns, at least
    ``threshold`` of the backup's rows (first :data:`RENAME_SAMPLE`) found by key in the added
    table, and at least half of the other shared-name columns agreeing on ``threshold`` of those
    rows (at least one). One aggregate query per candidate pair; each table is used once, best
    match first. A table the mapping file names is never guessed."""
    scored: list[tuple[float, TableRename]] = []
    for o in removed:
        if o in user.tables:
            continue
        old_t = old.tables[o]
        key = old_t.primary_key
        for a in added:
            new_t = new.tables[a]
            if not key or tuple(new_t.primary_key) != key:
                continue
            shared = [c for c in old_t.column_names if c not in key and new_t.column(c) is not None]
            if not shared:
                continue
            sample = (
                exp.select(*[col(c) for c in [*key, *shared]])
                .from_(table(o, "old"))
                .limit(RENAME_SAMPLE)
            )
            src = sample.subquery(exp.TableAlias(this=exp.to_identifier("o", quoted=True)))
            found = exp.Not(this=exp.Is(this=col(key[0], "n"), expression=exp.Null()))
            sel: list[exp.Expression] = [
                exp.Count(this=exp.Star()),
                exp.Sum(this=exp.Cast(this=found, to=exp.DataType.build("INT"))),
            ]
            for c in shared:
                same = and_all([found.copy(), is_same(col(c, "o"), col(c, "n"))])
                sel.append(exp.Sum(this=exp.Cast(this=same, to=exp.DataType.build("INT"))))
            q = (
                exp.select(*sel)
                .from_(src)
                .join(table(a, "new", "n"), on=key_join(key, "o", "n"), join_type="left")
            )
            row = pair.execute(sql(q)).fetchone()
            total, matched = int(row[0] or 0), int(row[1] or 0)
            if not total or matched < threshold * total:
                continue
            agreeing = tuple(
                c for i, c in enumerate(shared) if (row[2 + i] or 0) >= threshold * matched
            )
            if not agreeing or len(agreeing) * 2 < len(shared):
                continue
            scored.append(
                (
                    matched / total + len(agreeing) / len(shared),
                    TableRename(o, a, total, matched, agreeing, tuple(shared)),
                )
            )
    out: list[TableRename] = []
    used: set[str] = set()
    for _, r in sorted(scored, key=lambda x: (-x[0], x[1].old, x[1].new)):
        if r.old in used or r.new in used:
            continue
        used |= {r.old, r.new}
        out.append(r)
    return out


def compare(
    pair: Connection,
    old_conn: Connection,
    new_conn: Connection,
    old: Schema,
    new: Schema,
    user: UserMapping,
    since_jd: float | None = None,
    ops: list[Any] | None = None,
) -> SchemaDiff:
    """The full schema diff old → new: alembic's structural diff (``ops`` when the caller computed
    it, e.g. on PostgreSQL; :func:`pragma_ops` when the PRAGMAs decide it, so alembic is not even
    imported), renames, views/triggers/indexes."""
    if ops is None:
        ops = pragma_ops(old_conn, new_conn)
    if ops is None:
        ops = structural(old_conn, new_conn)
    added_tables, removed_tables = [], []
    cols_added: dict[str, list[str]] = {}
    cols_removed: dict[str, list[str]] = {}
    changes: list[ColumnChange] = []
    for op in ops:
        items = op if isinstance(op, list) else [op]
        for item in items:
            kind = item[0]
            if kind == "add_table":
                added_tables.append(item[1].name)
            elif kind == "remove_table":
                removed_tables.append(item[1].name)
            elif kind == "add_column":
                cols_added.setdefault(item[2], []).append(item[3].name)
            elif kind == "remove_column":
                cols_removed.setdefault(item[2], []).append(item[3].name)
            elif kind in ("modify_type", "modify_nullable", "modify_default"):
                _, _, tname, cname, _info, before, after = item
                changes.append(
                    ColumnChange(
                        tname, cname, kind.removeprefix("modify_"), _text(before), _text(after)
                    )
                )
    cols_added_t = {t: tuple(sorted(c)) for t, c in cols_added.items()}
    cols_removed_t = {t: tuple(sorted(c)) for t, c in cols_removed.items()}
    table_renames = detect_table_renames(
        pair, old, new, sorted(removed_tables), sorted(added_tables), user
    )
    renames = detect_renames(pair, old, new, cols_removed_t, cols_added_t, user, since_jd=since_jd)
    for tname, tm in user.tables.items():
        for cname, expr in tm.columns.items():
            if isinstance(expr, exp.Column) and expr.name != cname:
                renames.append(Rename(tname, cname, expr.name, "user-mapping"))
    return SchemaDiff(
        tables_added=tuple(sorted(added_tables)),
        tables_removed=tuple(sorted(removed_tables)),
        columns_added=cols_added_t,
        columns_removed=cols_removed_t,
        columns_changed=tuple(sorted(changes, key=lambda c: (c.table, c.column, c.kind))),
        renames=tuple(sorted(renames, key=lambda r: (r.table, r.old))),
        views=_named_diff(old.views, new.views),
        triggers=_named_diff(old.triggers, new.triggers),
        indexes=_named_diff(old.indexes, new.indexes),
        old_revision=old.alembic_revision,
        new_revision=new.alembic_revision,
        table_renames=tuple(table_renames),
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    arg = getattr(value, "arg", None)  # server defaults
    if arg is not None:
        return str(getattr(arg, "text", arg))
    return str(value)
