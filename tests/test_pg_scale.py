"""Issue 19's PostgreSQL scale gaps, on a real server: the live fingerprint in bounded memory, the
relink's reads set-based. Each test works on its own ``pg_world_copy`` (a ``CREATE DATABASE …
TEMPLATE`` copy of the shared 60-part world); without PostgreSQL they skip, saying how to run
them (``pg_server`` in conftest.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql as pgsql

from recovery.engine.postgres import PostgresEngine

if TYPE_CHECKING:
    from tests.pgcluster import PgWorldCopy


TWIN = "(1, '2026-11-20 14:00:00.25+00', '\\x00ff', 0.1 + 0.2)"
SETTINGS = (
    "DateStyle = 'SQL, DMY'",
    "TimeZone = 'Pacific/Chatham'",
    "bytea_output = 'escape'",
    "extra_float_digits = 0",
    "IntervalStyle = 'sql_standard'",
)
"""Per-database settings that change how values print (a timestamptz, bytea and float8 in TWIN)."""


def _changed(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_fingerprint_sees_one_row_and_not_a_no_op(pg_world_copy: PgWorldCopy) -> None:
    """One cell of one row changes its table's fingerprint (and only that table's); an update
    writing the same values, a rewrite of the table in another physical order, a rolled-back
    change and the database's own output settings (``ALTER DATABASE … SET DateStyle``, read by
    every new session) change nothing; a second copy of a row in a table without a key is seen
    (a sum of row hashes, not an XOR, which would cancel the pair)."""
    url = pg_world_copy.url
    engine = PostgresEngine(url)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE twins (v integer, at timestamptz, b bytea, f float8)")
        c.execute(f"INSERT INTO twins VALUES {TWIN}")
    before = engine.fingerprint()
    assert before["public.parts"]["rows"] > 0 and "public.twins" in before

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE parts SET name = name, created_at = created_at")
        c.execute("CLUSTER parts USING parts_pkey")  # rows rewritten in another order
        c.execute("VACUUM FULL quote_items")
        try:
            with c.transaction():
                c.execute("DELETE FROM quotes")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        for setting in SETTINGS:
            c.execute(
                pgsql.SQL("ALTER DATABASE {} SET " + setting).format(
                    pgsql.Identifier(pg_world_copy.name)
                )
            )
    assert engine.fingerprint() == before

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE parts SET name = name || '.' WHERE id = (SELECT min(id) FROM parts)")
    one_cell = engine.fingerprint()
    assert _changed(before, one_cell) == {"public.parts"}
    assert one_cell["public.parts"]["rows"] == before["public.parts"]["rows"]

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"INSERT INTO twins VALUES {TWIN}")
    twin = engine.fingerprint()
    assert _changed(one_cell, twin) == {"public.twins"}
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DELETE FROM twins")
        c.execute(f"INSERT INTO twins VALUES {TWIN}, {TWIN}, {TWIN}")
    assert engine.fingerprint()["public.twins"]["hash_sum"] != twin["public.twins"]["hash_sum"]


def test_fingerprint_reads_the_table_once_without_a_sort_or_a_table_sized_value(
    pg_world_copy: PgWorldCopy,
) -> None:
    """The statement's plan: one scan of the table into a plain aggregate — no Sort node and no
    ``string_agg``/``array_agg`` (whose one value per table cannot pass 1 GB)."""
    from recovery.engine.postgres import fingerprint_statement, render

    with psycopg.connect(pg_world_copy.url, autocommit=True) as c:
        plan = "\n".join(
            r[0]
            for r in c.execute(
                "EXPLAIN (VERBOSE) " + render(fingerprint_statement("public", "quote_items"))
            )
        )
    assert "Aggregate" in plan and "Seq Scan" in plan, plan
    for unbounded in ("Sort", "string_agg", "array_agg", "json_agg"):
        assert unbounded not in plan, plan


def test_the_lineage_sandbox_has_the_schema_and_the_revision_but_no_rows(
    pg_world_copy: PgWorldCopy,
) -> None:
    """The downgrade that tells the lineage runs on a copy of the replayed upgrade emptied of its
    rows (as SQLite's lineage scratch: the live schema, no rows) — not over every row of a large
    database. The copy keeps every table, column and sequence, and ``alembic_version``'s row."""
    from recovery.migrate.pgsandbox import sandbox_database

    source = PostgresEngine(pg_world_copy.url)
    columns = (
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY 1, 2"
    )
    with psycopg.connect(pg_world_copy.url, autocommit=True) as c:
        shape = c.execute(columns).fetchall()
        revision = c.execute("SELECT version_num FROM alembic_version").fetchall()
    before = source.fingerprint()
    with sandbox_database(source, "lineage", rows=False) as sdb:
        with psycopg.connect(sdb.admin.url.render_as_string(False), autocommit=True) as c:
            assert c.execute(columns).fetchall() == shape
            assert c.execute("SELECT version_num FROM alembic_version").fetchall() == revision
        counts = sdb.admin.fingerprint()
    assert revision and before["public.parts"]["rows"] > 0
    assert {k: v["rows"] for k, v in counts.items()} == {
        k: 1 if k == "public.alembic_version" else 0 for k in before
    }
    assert source.fingerprint() == before  # the source keeps its rows
