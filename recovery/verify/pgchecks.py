"""Verification after a PostgreSQL rollback: foreign keys, Alembic revision, row counts.

The same :class:`~recovery.model.values.Verification` dict as SQLite's :mod:`recovery.verify.checks`.
PostgreSQL has no ``PRAGMA integrity_check``: the server keeps its own files consistent, so
``integrity_check`` is ``ok`` when the database can be read. Foreign keys are checked here, set
based, one anti-join per constraint: a re-import that suspends triggers
(``session_replication_role``) also suspends the server's foreign-key triggers, so the server's
own enforcement is not proof.
"""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from recovery.engine.postgres import PostgresEngine, command, count_rows, run, user_tables
from recovery.model.outcome import Outcome
from recovery.model.values import RowCountCheck, Verification

_CONSTRAINTS_SQL = (
    "SELECT con.conname, ns.nspname, cl.relname, pns.nspname, pcl.relname, "
    "CAST(con.conrelid AS BIGINT), CAST(con.confrelid AS BIGINT), "
    "CAST(con.conkey AS INT[]), CAST(con.confkey AS INT[]) "
    "FROM pg_catalog.pg_constraint AS con "
    "JOIN pg_catalog.pg_class AS cl ON cl.oid = con.conrelid "
    "JOIN pg_catalog.pg_namespace AS ns ON ns.oid = cl.relnamespace "
    "JOIN pg_catalog.pg_class AS pcl ON pcl.oid = con.confrelid "
    "JOIN pg_catalog.pg_namespace AS pns ON pns.oid = pcl.relnamespace "
    "WHERE con.contype = 'f' AND ns.nspname NOT IN ('pg_catalog', 'information_schema') "
    "ORDER BY ns.nspname, cl.relname, con.conname"
)
_COLUMNS_SQL = (
    "SELECT CAST(a.attrelid AS BIGINT), a.attnum, a.attname FROM pg_catalog.pg_attribute AS a "
    "JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
    "WHERE a.attnum > 0 AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
)


def _table(schema: str, name: str, alias: str) -> exp.Table:
    return exp.Table(
        this=exp.Identifier(this=name, quoted=True),
        db=exp.Identifier(this=schema, quoted=True),
        alias=exp.TableAlias(this=exp.Identifier(this=alias, quoted=False)),
    )


def _col(alias: str, name: str) -> exp.Column:
    return exp.column(exp.Identifier(this=name, quoted=True), table=alias)


def orphan_query(
    child: tuple[str, str], parent: tuple[str, str], fk: list[str], key: list[str], limit: int
) -> exp.Select:
    """The rows of ``child`` whose non-null foreign key ``fk`` has no ``key`` in ``parent``."""
    match = exp.and_(*(_col("p", k).eq(_col("c", f)) for f, k in zip(fk, key, strict=True)))
    missing = exp.Not(
        this=exp.Exists(
            this=exp.select(exp.Literal.number(1)).from_(_table(*parent, "p")).where(match)
        )
    )
    present = exp.and_(
        *(exp.Not(this=exp.Is(this=_col("c", f), expression=exp.Null())) for f in fk)
    )
    return (
        exp.select(*(_col("c", f) for f in fk))
        .from_(_table(*child, "c"))
        .where(exp.and_(present, missing))
        .limit(limit)
    )


def foreign_key_problems(conn: Any, limit: int = 20) -> list[dict[str, Any]]:
    """Up to ``limit`` rows (over all constraints) whose foreign key points at no row."""
    names: dict[tuple[int, int], str] = {
        (int(r[0]), int(r[1])): r[2] for r in run(conn, _COLUMNS_SQL).fetchall()
    }
    out: list[dict[str, Any]] = []
    for con, ns, rel, pns, prel, relid, prelid, conkey, confkey in run(
        conn, _CONSTRAINTS_SQL
    ).fetchall():
        fk = [names[(int(relid), int(n))] for n in conkey]
        key = [names[(int(prelid), int(n))] for n in confkey]
        q = orphan_query((ns, rel), (pns, prel), fk, key, limit - len(out))
        for row in run(conn, q).fetchall():
            out.append({"table": rel, "key": list(row), "parent": prel, "fk": con})
        if len(out) >= limit:
            break
    return out


def alembic_revision(conn: Any) -> str | None:
    """The ``alembic_version`` of the database's search path, or None without one."""
    found = run(conn, "SELECT CAST(to_regclass('alembic_version') AS TEXT)").fetchone()[0]
    if found is None:
        return None
    row = run(conn, exp.select("version_num").from_(exp.to_table("alembic_version"))).fetchone()
    return str(row[0]) if row else None


def verify_postgres(
    engine: PostgresEngine, outcome: Outcome, expected_revision: str | None
) -> dict[str, Any]:
    """Every check on ``engine`` (read-only, one snapshot): foreign keys, revision, and each
    re-imported table's row count now against before + inserted - deleted."""
    with engine.readonly("live database") as conn:
        run(conn, command("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        fks = foreign_key_problems(conn)
        revision = alembic_revision(conn)
        present = {name for schema, name in user_tables(conn) if schema == "public"}
        counts = {}
        for name, t in sorted(outcome.tables.items()):
            expected = t.rows_before + t.inserted - t.deleted
            actual = count_rows(conn, "public", name) if name in present else 0  # type: ignore[arg-type]
            counts[name] = RowCountCheck(t.rows_before, t.inserted, t.deleted, expected, actual)
        run(conn, command("COMMIT"))
    return Verification(("ok",), tuple(fks), expected_revision, revision, counts).to_dict()
