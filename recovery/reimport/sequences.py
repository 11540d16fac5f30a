"""AUTOINCREMENT counters (``sqlite_sequence``) carried across a rollback.

An AUTOINCREMENT key is never handed out twice: that is its whole contract. After a rollback the
restored backup's counter is behind the ids the new release handed out since the deploy; the next
insert would reuse one of them (an invoice numbered twice). Extract records the live counters in
the bundle's manifest (``sources.live.sqlite_sequence``); the re-import raises every AUTOINCREMENT
table's counter to max(backup's, live's at extract time, largest id now in the table), in its
transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlglot
from sqlglot import exp

from recovery.engine.base import Connection
from recovery.engine.sqlbuild import col, sql, table

SEQ = "sqlite_sequence"


def _has_sequence_table(conn: Connection, schema: str) -> bool:
    q = (
        exp.select("1")
        .from_(table("sqlite_master", schema))
        .where(
            exp.and_(
                exp.EQ(this=col("type"), expression=exp.Literal.string("table")),
                exp.EQ(this=col("name"), expression=exp.Literal.string(SEQ)),
            )
        )
    )
    return conn.execute(sql(q)).fetchone() is not None


def read_sequences(conn: Connection, schema: str = "main") -> dict[str, int]:
    """``sqlite_sequence`` of database ``schema`` as {table: seq} (empty when it has none)."""
    if not _has_sequence_table(conn, schema):
        return {}
    q = exp.select(col("name"), col("seq")).from_(table(SEQ, schema))
    return {n: int(s) for n, s in conn.execute(sql(q)) if n is not None and isinstance(s, int)}


def autoincrement_tables(conn: Connection) -> list[str]:
    """Tables of ``main`` declared with AUTOINCREMENT (by their DDL, or by a counter row)."""
    q = (
        exp.select(col("name"), col("sql"))
        .from_(table("sqlite_master", "main"))
        .where(exp.EQ(this=col("type"), expression=exp.Literal.string("table")))
    )
    found = set()
    for name, ddl in conn.execute(sql(q)):
        if name.startswith("sqlite_") or not ddl:
            continue
        try:
            tree = sqlglot.parse_one(ddl, read="sqlite")
            if any(True for _ in tree.find_all(exp.AutoIncrementColumnConstraint)):
                found.add(name)
        except sqlglot.errors.SqlglotError:
            if "AUTOINCREMENT" in ddl.upper():
                found.add(name)
    names = {n.lower(): n for n in found}
    for n in read_sequences(conn):
        if (
            n.lower() not in names
            and conn.execute(
                sql(q.where(exp.EQ(this=col("name"), expression=exp.Placeholder()))), (n,)
            ).fetchone()
        ):
            names[n.lower()] = n
    return sorted(names.values())


def carry_forward(
    conn: Connection,
    live: dict[str, int],
    before: dict[str, int],
    run: Callable[[exp.Expression, tuple[Any, ...]], object] | None = None,
) -> list[dict[str, Any]]:
    """Raise each AUTOINCREMENT table's counter in ``main`` to max(its value, ``before`` (the
    target's before the re-import wrote), ``live``'s, max rowid); one entry per such table:
    ``{"table", "backup", "live", "max_id", "seq"}`` (``seq``: the value now). ``run`` executes
    the writes (default: on ``conn``)."""
    if run is None:

        def run(stmt: exp.Expression, params: tuple[Any, ...]) -> object:
            return conn.execute(sql(stmt), params)

    live_l = {k.lower(): v for k, v in live.items()}
    before_l = {k.lower(): v for k, v in before.items()}
    out = []
    for name in autoincrement_tables(conn):
        now = {k.lower(): v for k, v in read_sequences(conn).items()}.get(name.lower())
        top = conn.execute(
            sql(exp.select(exp.func("max", exp.column("rowid"))).from_(table(name, "main")))
        ).fetchone()[0]
        lv = live_l.get(name.lower())
        want = max(v for v in (now, before_l.get(name.lower()), lv, top, 0) if isinstance(v, int))
        if now is None:
            if want > 0:
                run(
                    exp.Insert(
                        this=exp.Schema(
                            this=table(SEQ, "main"),
                            expressions=[
                                exp.to_identifier("name", quoted=True),
                                exp.to_identifier("seq", quoted=True),
                            ],
                        ),
                        expression=exp.Values(
                            expressions=[
                                exp.Tuple(expressions=[exp.Placeholder(), exp.Placeholder()])
                            ]
                        ),
                    ),
                    (name, want),
                )
        elif want > now:
            run(
                exp.Update(
                    this=table(SEQ, "main"),
                    expressions=[exp.EQ(this=col("seq"), expression=exp.Placeholder())],
                    where=exp.Where(this=exp.EQ(this=col("name"), expression=exp.Placeholder())),
                ),
                (want, name),
            )
        out.append(
            {
                "table": name,
                "backup": before_l.get(name.lower()),
                "live": lv,
                "max_id": top,
                "seq": want,
            }
        )
    return out


SANE_MAX = 2**62
"""Counters above this are ignored: a bundle is untrusted input, and a counter near 2**63 would
make the application's next AUTOINCREMENT insert fail (SQLITE_FULL)."""


def live_from_manifest(manifest: dict[str, Any]) -> dict[str, int]:
    """The live counters a bundle recorded at extract time; {} for a bundle made before they were.
    Only plain integers in 0..:data:`SANE_MAX` are taken."""
    seqs = ((manifest.get("sources") or {}).get("live") or {}).get("sqlite_sequence")
    if not isinstance(seqs, dict):
        return {}
    return {
        str(k): v
        for k, v in seqs.items()
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= SANE_MAX
    }
