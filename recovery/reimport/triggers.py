"""Suspending the target's triggers while the re-import writes, inside its transaction.

The application's triggers (audit rows, counters, timestamps) already ran in the live database
when the post-deploy rows were first written; the bundle carries their effects. Firing them
again while the re-import carries those rows would write everything twice (three duplicate audit
rows in the issue). So every trigger on a table the re-import writes is dropped before the first
write and re-created from its exact ``sqlite_master.sql`` text after the last one, in the same
transaction: a rollback brings the originals back untouched, a commit leaves them byte-identical.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlglot import exp

from recovery.engine.sqlbuild import col, sql, table


@dataclass(frozen=True)
class Trigger:
    name: str
    table: str
    sql: str
    """The trigger's ``CREATE TRIGGER`` text exactly as ``sqlite_master`` stores it."""


def triggers_on(conn: sqlite3.Connection, tables: Iterable[str]) -> list[Trigger]:
    """Triggers in ``main`` on any of ``tables`` (names compared as SQLite does, case-insensitively),
    in creation order (``sqlite_master`` rowid) so re-creating keeps their relative order."""
    wanted = {t.lower() for t in tables}
    q = (
        exp.select(col("name"), col("tbl_name"), col("sql"))
        .from_(table("sqlite_master", "main"))
        .where(exp.EQ(this=col("type"), expression=exp.Literal.string("trigger")))
        .order_by(exp.column("rowid"))
    )
    return [Trigger(n, t, s) for n, t, s in conn.execute(sql(q)) if t.lower() in wanted and s]


Run = Callable[[exp.Expression | str], object]
"""Executes one writing statement (the re-import's :class:`recovery.reimport.script.Script`)."""


def suspend(
    conn: sqlite3.Connection, tables: Iterable[str], run: Run | None = None
) -> list[Trigger]:
    """Drop every trigger on ``tables`` (inside the caller's open transaction); returns them for
    :func:`restore`. ``run`` executes the DROPs (default: on ``conn``)."""
    found = triggers_on(conn, tables)
    for t in found:
        drop = exp.Drop(kind="TRIGGER", tables=[table(t.name, "main")])
        run(drop) if run is not None else conn.execute(sql(drop))
    return found


def restore(conn: sqlite3.Connection, suspended: Iterable[Trigger], run: Run | None = None) -> None:
    """Re-create the triggers :func:`suspend` dropped, from their stored text.

    The stored text is executed as it is (not rebuilt as a sqlglot tree): it is the application's
    own DDL, and only the very same bytes keep ``sqlite_master`` identical to before the run."""
    for t in suspended:
        run(t.sql) if run is not None else conn.execute(t.sql)
