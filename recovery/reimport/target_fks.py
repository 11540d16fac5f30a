"""The target's own foreign keys (``PRAGMA foreign_key_list``): what ``PRAGMA foreign_key_check``
enforces, and so what the re-import's check of the rows it wrote reads."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, sql, table


@dataclass(frozen=True)
class TargetFk:
    """One foreign key as the target database itself declares it (``PRAGMA foreign_key_list``), which
    is what ``PRAGMA foreign_key_check`` enforces: ``id`` is the number that pragma reports."""

    table: str
    id: int
    parent: str
    columns: tuple[str, ...]
    ref_columns: tuple[str, ...]
    parent_exists: bool
    """False also when the parent's key columns cannot be resolved: then every row setting the key
    is reported (where the pragma itself would fail with "foreign key mismatch")."""

    def link(self, child: str, parent: str) -> exp.Expression:
        """``parent.ref = child.col AND …`` — the parent column on the left, so its collation rules."""
        return and_all(
            exp.EQ(this=col(pc, parent), expression=col(cc, child))
            for pc, cc in zip(self.ref_columns, self.columns, strict=True)
        )

    def dangling(self, child: str) -> exp.Expression:
        """Row ``child`` violates this key: every key column set and no parent row has the values
        (every such row when the parent table does not exist, as the pragma reports it)."""
        notnull = [
            exp.Not(this=exp.Is(this=col(c, child), expression=exp.Null())) for c in self.columns
        ]
        if not self.parent_exists:
            return and_all(notnull)
        orphan = exp.Not(
            this=exp.Exists(
                this=exp.select("1")
                .from_(table(self.parent, "main", "p"))
                .where(self.link(child, "p"))
            )
        )
        return and_all([*notnull, orphan])


def target_foreign_keys(conn: sqlite3.Connection) -> dict[str, tuple[TargetFk, ...]]:
    """Every foreign key declared in ``main``, by child table (sorted), read from SQLite's catalog."""
    master = table("sqlite_master", "main")
    names = [
        r[0]
        for r in conn.execute(
            sql(
                exp.select(col("name"))
                .from_(master)
                .where(exp.EQ(this=col("type"), expression=exp.Literal.string("table")))
            )
        )
        if not r[0].startswith("sqlite_")
    ]
    lower = {n.lower() for n in names}
    fk_list = (
        exp.select(col("id"), col("table"), col("from"), col("to"))
        .from_(
            exp.Anonymous(
                this="pragma_foreign_key_list",
                expressions=[exp.Placeholder(), exp.Literal.string("main")],
            )
        )
        .order_by(col("id"), col("seq"))
    )
    pk_list = (
        exp.select(col("name"))
        .from_(
            exp.Anonymous(
                this="pragma_table_info",
                expressions=[exp.Placeholder(), exp.Literal.string("main")],
            )
        )
        .where(exp.GT(this=col("pk"), expression=exp.Literal.number(0)))
        .order_by(col("pk"))
    )
    out: dict[str, tuple[TargetFk, ...]] = {}
    for name in sorted(names):
        groups: dict[int, list[tuple[str, str, str | None]]] = {}
        for fid, parent, frm, to in conn.execute(sql(fk_list), (name,)):
            groups.setdefault(fid, []).append((parent, frm, to))
        fks = []
        for fid, parts in sorted(groups.items()):
            parent = parts[0][0]
            exists = parent.lower() in lower
            refs = tuple(to for _, _, to in parts)
            if any(r is None for r in refs):  # the parent's primary key is meant
                refs = tuple(r[0] for r in conn.execute(sql(pk_list), (parent,))) if exists else ()
            # a key whose parent columns cannot be resolved (SQLite: "foreign key mismatch") is
            # treated like a missing parent table: every row that sets it is a problem
            resolved = tuple(r for r in refs if r is not None)
            usable = exists and len(resolved) == len(parts)
            fks.append(
                TargetFk(
                    name,
                    fid,
                    parent,
                    tuple(f for _, f, _ in parts),
                    resolved if usable else (),
                    usable,
                )
            )
        if fks:
            out[name] = tuple(fks)
    return out
