"""The ``Schema`` data object and its reflection with SQLAlchemy.

A Schema is plain frozen data (JSON round-trippable) so it can travel in a bundle manifest and be
compared without a live connection. Views, triggers and indexes are part of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from recovery.engine.base import Connection

IGNORED_TABLES = frozenset({"sqlite_sequence", "sqlite_stat1", "sqlite_stat4"})
APPLIED_TABLE = "_recovery_applied"
"""The re-import's record in the target: one row per bundle applied (and its outcome)."""
APPLIED_DELETES_TABLE = "_recovery_deletes_applied"
"""``recovery apply-deletes``' record in the target: one row per reviewed delete carried out."""
BOOKKEEPING_TABLES = frozenset({"alembic_version", APPLIED_TABLE, APPLIED_DELETES_TABLE})


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True
    default: str | None = None
    """The SQL text of the server default, as SQLite stores it (e.g. ``'0'``), or None."""


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    on_delete: str | None = None


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    unique_sets: tuple[tuple[str, ...], ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    def has(self, name: str) -> Column:
        """The column ``name``, which the caller knows exists (KeyError otherwise)."""
        c = self.column(name)
        if c is None:
            raise KeyError(f"{self.name} has no column {name!r}")
        return c

    @property
    def key(self) -> tuple[str, ...]:
        """The row identity: the primary key, or every column when the table has none."""
        return self.primary_key or self.column_names

    @property
    def has_primary_key(self) -> bool:
        return bool(self.primary_key)


@dataclass(frozen=True)
class Schema:
    tables: dict[str, Table]
    views: dict[str, str] = field(default_factory=dict)
    triggers: dict[str, str] = field(default_factory=dict)
    indexes: dict[str, str] = field(default_factory=dict)
    alembic_revision: str | None = None

    def table(self, name: str) -> Table | None:
        return self.tables.get(name)

    @property
    def data_tables(self) -> list[str]:
        """User tables, without alembic's and our own bookkeeping."""
        return [t for t in self.tables if t not in BOOKKEEPING_TABLES]

    def fk_order(self) -> list[str]:
        """Data tables with parents before children (cycles broken by name order)."""
        names = sorted(self.data_tables)
        deps = {
            n: {
                fk.ref_table
                for fk in self.tables[n].foreign_keys
                if fk.ref_table in self.tables and fk.ref_table != n
            }
            for n in names
        }
        ordered: list[str] = []
        done: set[str] = set()
        while len(ordered) < len(names):
            ready = [n for n in names if n not in done and deps[n] <= done]
            if not ready:  # a cycle: take the first remaining table
                ready = [next(n for n in names if n not in done)]
            for n in ready:
                ordered.append(n)
                done.add(n)
        return ordered

    def to_dict(self) -> dict[str, Any]:
        return {
            "tables": {n: asdict(t) for n, t in self.tables.items()},
            "views": dict(self.views),
            "triggers": dict(self.triggers),
            "indexes": dict(self.indexes),
            "alembic_revision": self.alembic_revision,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        tables = {}
        for name, t in data["tables"].items():
            tables[name] = Table(
                name=t["name"],
                columns=tuple(Column(**c) for c in t["columns"]),
                primary_key=tuple(t["primary_key"]),
                foreign_keys=tuple(
                    ForeignKey(
                        tuple(f["columns"]),
                        f["ref_table"],
                        tuple(f["ref_columns"]),
                        f.get("on_delete"),
                    )
                    for f in t["foreign_keys"]
                ),
                unique_sets=tuple(tuple(u) for u in t["unique_sets"]),
            )
        return cls(
            tables=tables,
            views=dict(data.get("views", {})),
            triggers=dict(data.get("triggers", {})),
            indexes=dict(data.get("indexes", {})),
            alembic_revision=data.get("alembic_revision"),
        )


def engine_for(conn: Connection) -> sa.Engine:
    """A SQLAlchemy engine over an already-open sqlite3 connection (e.g. a read-only one).

    The engine is never disposed (that would close ``conn``): the connection's owner closes it.
    """
    return sa.create_engine(
        "sqlite://", creator=lambda: conn, poolclass=sa.pool.StaticPool, pool_reset_on_return=None
    )


def alembic_revision(conn: Connection, schema: str = "main") -> str | None:
    exists = conn.execute(
        f"SELECT 1 FROM {schema}.sqlite_master WHERE type='table' AND name='alembic_version'"  # fixed names
    ).fetchone()
    if not exists:
        return None
    row = conn.execute(f"SELECT version_num FROM {schema}.alembic_version").fetchone()
    return row[0] if row else None


def reflect(conn: Connection) -> Schema:
    """Reflect tables, columns, keys, foreign keys, unique sets, views, triggers and indexes."""
    engine = engine_for(conn)
    insp = sa.inspect(engine)
    tables: dict[str, Table] = {}
    for name in sorted(insp.get_table_names()):
        if name in IGNORED_TABLES or name.startswith("sqlite_"):
            continue
        cols = tuple(
            Column(
                name=c["name"],
                type=str(c["type"]) if c["type"] is not None else "",
                nullable=bool(c["nullable"]),
                default=None if c.get("default") is None else str(c["default"]),
            )
            for c in insp.get_columns(name)
        )
        pk = tuple(insp.get_pk_constraint(name).get("constrained_columns") or ())
        fks = tuple(
            ForeignKey(
                columns=tuple(f["constrained_columns"]),
                ref_table=f["referred_table"],
                ref_columns=tuple(f["referred_columns"] or pk),
                on_delete=(f.get("options") or {}).get("ondelete"),
            )
            for f in insp.get_foreign_keys(name)
        )
        uniques = [tuple(u["column_names"]) for u in insp.get_unique_constraints(name)]
        uniques += [
            tuple(c for c in i["column_names"] if c is not None)
            for i in insp.get_indexes(name)
            if i.get("unique") and None not in i["column_names"]
        ]  # None: an expression, not a column
        tables[name] = Table(name, cols, pk, fks, tuple(sorted(set(uniques))))
    master = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('view','trigger','index') AND sql IS NOT NULL"
    ).fetchall()
    views = {n: s for t, n, s in master if t == "view"}
    triggers = {n: s for t, n, s in master if t == "trigger"}
    indexes = {n: s for t, n, s in master if t == "index"}
    return Schema(tables, views, triggers, indexes, alembic_revision(conn))


def sqlalchemy_metadata(conn: Connection) -> sa.MetaData:
    """Reflected SQLAlchemy MetaData, as alembic's comparator wants it."""
    engine = engine_for(conn)
    md = sa.MetaData()
    md.reflect(bind=engine)
    return md
