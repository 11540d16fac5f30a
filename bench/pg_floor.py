"""The plain-SQL floors of ``recovery diff`` and ``recovery rollback`` on PostgreSQL (issue 19).

    python bench/pg_floor.py diff     LIVE_URL BACKUP_URL   # keyed diff in SQL on the server
    python bench/pg_floor.py rollback SERVER_URL DUMP LIVE_URL

``diff``: from the live database, the backup database is reached through ``postgres_fdw``
(``IMPORT FOREIGN SCHEMA public`` into a temporary schema, as the tool reaches it); per shared
table, keyed anti-joins both ways (inserted, deleted) and one keyed join comparing the same-named
columns with ``IS DISTINCT FROM`` (updated), each ``count(*)``. One connection, one core.

``rollback``: ``pg_restore`` of the dump into a new database (the restore the tool's rollback
also does), then every column of every row of both databases read once
(``SELECT count(*), count(c1), …, count(cN) FROM t`` per table); the new database is dropped.

Prints one JSON object: seconds per part and the total. Bench code: identifiers composed with
``psycopg.sql`` (quoted), nothing user-controlled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


def _url(u: str, db: str | None = None) -> str:
    url = make_url(u).set(drivername="postgresql")
    if db is not None:
        url = url.set(database=db)
    return url.render_as_string(hide_password=False)


def _tables(conn: psycopg.Connection[Any], schema: str) -> dict[str, list[str]]:
    rows = conn.execute(
        "SELECT c.relname, a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'f', 'p') ORDER BY c.relname, a.attnum",
        (schema,),
    ).fetchall()
    out: dict[str, list[str]] = {}
    for t, c in rows:
        out.setdefault(t, []).append(c)
    return out


def _pk(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary",
        (f'public."{table}"',),
    ).fetchall()
    return [r[0] for r in rows]


def diff_floor(live: str, backup: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    b = make_url(backup)
    counts: dict[str, dict[str, int]] = {}
    with psycopg.connect(_url(live), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
        srv = f"bench_floor_{uuid.uuid4().hex[:8]}"
        opts = {
            "dbname": str(b.database),
            "host": b.host or "127.0.0.1",
            "port": str(b.port or 5432),
        }
        conn.execute(
            sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})").format(
                sql.Identifier(srv),
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v))
                    for k, v in opts.items()
                ),
            )
        )
        try:
            user_opts = [("user", b.username or "postgres")] + (
                [("password", str(b.password))] if b.password else []
            )
            conn.execute(
                sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS ({})").format(
                    sql.Identifier(srv),
                    sql.SQL(", ").join(
                        sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v))
                        for k, v in user_opts
                    ),
                )
            )
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(srv)))
            conn.execute(
                sql.SQL("IMPORT FOREIGN SCHEMA public FROM SERVER {} INTO {}").format(
                    sql.Identifier(srv), sql.Identifier(srv)
                )
            )
            t_setup = time.perf_counter() - t0
            new, old = _tables(conn, "public"), _tables(conn, srv)
            for t in sorted(set(new) & set(old)):
                key = _pk(conn, t)
                if not key:
                    continue
                shared = [c for c in new[t] if c in old[t] and c not in key]
                lt = sql.SQL("public.{} AS l").format(sql.Identifier(t))
                bt = sql.SQL("{}.{} AS b").format(sql.Identifier(srv), sql.Identifier(t))
                on = sql.SQL(" AND ").join(
                    sql.SQL("l.{0} = b.{0}").format(sql.Identifier(k)) for k in key
                )
                ins = sql.SQL(
                    "SELECT count(*) FROM {} WHERE NOT EXISTS (SELECT 1 FROM {} WHERE {})"
                ).format(lt, bt, on)
                dele = sql.SQL(
                    "SELECT count(*) FROM {} WHERE NOT EXISTS (SELECT 1 FROM {} WHERE {})"
                ).format(bt, lt, on)
                changed = (
                    sql.SQL("({}) IS DISTINCT FROM ({})").format(
                        sql.SQL(", ").join(
                            sql.SQL("l.{}").format(sql.Identifier(c)) for c in shared
                        ),
                        sql.SQL(", ").join(
                            sql.SQL("b.{}").format(sql.Identifier(c)) for c in shared
                        ),
                    )
                    if len(shared) > 1
                    else sql.SQL("l.{0} IS DISTINCT FROM b.{0}").format(sql.Identifier(shared[0]))
                    if shared
                    else sql.SQL("false")
                )
                upd = sql.SQL("SELECT count(*) FROM {} JOIN {} ON {} WHERE {}").format(
                    lt, bt, on, changed
                )
                counts[t] = {
                    "inserted": conn.execute(ins).fetchone()[0],  # type: ignore[index]
                    "deleted": conn.execute(dele).fetchone()[0],  # type: ignore[index]
                    "updated": conn.execute(upd).fetchone()[0],  # type: ignore[index]
                }
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(srv)))
            conn.execute(sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(sql.Identifier(srv)))
    total = time.perf_counter() - t0
    return {"setup_s": round(t_setup, 3), "total_s": round(total, 3), "counts": counts}


def read_all(url: str) -> int:
    rows = 0
    with psycopg.connect(url) as conn:
        for t, cols in _tables(conn, "public").items():
            sel = sql.SQL(", ").join(sql.SQL("count({})").format(sql.Identifier(c)) for c in cols)
            n = conn.execute(
                sql.SQL("SELECT count(*), {} FROM public.{}").format(sel, sql.Identifier(t))
            ).fetchone()
            rows += int(n[0])  # type: ignore[index]
    return rows


def rollback_floor(server: str, dump: str, live: str, pg_restore: str) -> dict[str, Any]:
    name = f"bench_floor_{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    with psycopg.connect(_url(server, "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        subprocess.run(
            [pg_restore, "--no-owner", "--exit-on-error", "-d", _url(server, name), dump],
            check=True,
            capture_output=True,
        )
        t_restore = time.perf_counter() - t0
        rows = read_all(_url(server, name)) + read_all(_url(live))
        total = time.perf_counter() - t0
    finally:
        with psycopg.connect(_url(server, "postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    return {
        "restore_s": round(t_restore, 3),
        "read_s": round(total - t_restore, 3),
        "total_s": round(total, 3),
        "rows_read": rows,
    }


def main() -> None:
    mode = sys.argv[1]
    if mode == "diff":
        print(json.dumps(diff_floor(sys.argv[2], sys.argv[3])))
    elif mode == "rollback":
        tool = os.environ.get("PG_RESTORE", "pg_restore")
        print(json.dumps(rollback_floor(sys.argv[2], sys.argv[3], sys.argv[4], tool)))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
