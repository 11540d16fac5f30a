"""The re-import's bookkeeping in the target: the target's schema must be the bundle's old schema,
and ``_recovery_applied`` records each bundle re-imported (with its outcome), in the re-import's
own transaction, so a second run is a no-op and the outcome is durable exactly when the data is."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from sqlglot import exp

from recovery.bundle.store import Bundle
from recovery.engine.schema import APPLIED_TABLE, Schema
from recovery.engine.sqlbuild import col, sql, table
from recovery.errors import RecoveryError
from recovery.reimport.context import Context
from recovery.reimport.script import Script


def check_target_schema(bundle: Bundle, target: Schema) -> None:
    """Refuse a target whose tables/columns differ from the bundle's old (target) schema."""
    want, have = bundle.old, target
    problems = []
    for name in want.data_tables:
        if name not in have.tables:
            problems.append(f"table {name} is missing")
            continue
        wc, hc = set(want.tables[name].column_names), set(have.tables[name].column_names)
        problems += [f"{name}.{c} is missing" for c in sorted(wc - hc)]
        problems += [f"{name}.{c} is unexpected" for c in sorted(hc - wc)]
    problems += [f"table {n} is unexpected" for n in have.data_tables if n not in want.tables]
    if problems:
        raise RecoveryError(
            f"the target's schema differs from the bundle's target schema ({want.alembic_revision}): "
            + "; ".join(problems[:6])
            + (" …" if len(problems) > 6 else ""),
            "restore the backup (or downgrade) first; nothing was changed",
        )


def already_applied(conn: sqlite3.Connection, bundle_id: str) -> bool:
    """``bundle_id`` was re-imported into this database already."""
    exists = conn.execute(
        "SELECT 1 FROM main.sqlite_master WHERE type='table' AND name=?", (APPLIED_TABLE,)
    ).fetchone()
    if not exists:
        return False
    q = (
        exp.select("1")
        .from_(table(APPLIED_TABLE, "main"))
        .where(exp.EQ(this=col("bundle_id"), expression=exp.Placeholder()))
    )
    return conn.execute(sql(q), (bundle_id,)).fetchone() is not None


def record_applied(ctx: Context) -> None:
    """The ``_recovery_applied`` row of this bundle: a second run is a no-op."""
    ddl = exp.Create(
        kind="TABLE",
        exists=True,
        this=exp.Schema(
            this=table(APPLIED_TABLE, "main"),
            expressions=[
                exp.ColumnDef(
                    this=exp.to_identifier(c, quoted=True), kind=exp.DataType.build("TEXT")
                )
                for c in ("bundle_id", "applied_at", "tool_version", "policy")
            ],
        ),
    )
    ctx.run(ddl)
    from recovery import __version__

    ins = exp.Insert(  # columns named: the table may have gained ``outcome`` (OUTCOME_COLUMN)
        this=exp.Schema(
            this=table(APPLIED_TABLE, "main"),
            expressions=[
                exp.to_identifier(c, quoted=True)
                for c in ("bundle_id", "applied_at", "tool_version", "policy")
            ],
        ),
        expression=exp.Values(expressions=[exp.Tuple(expressions=[exp.Placeholder()] * 4)]),
    )
    ctx.run(
        ins,
        (
            ctx.bundle.bundle_id,
            datetime.now().isoformat(timespec="seconds"),
            __version__,
            ctx.policy.value,
        ),
    )


OUTCOME_COLUMN = "outcome"
"""``_recovery_applied.outcome``: the re-import's ``Outcome.to_json()``, written in the re-import's
own transaction, so the outcome is durable exactly when the data is."""


def record_outcome(conn: sqlite3.Connection | Script, bundle_id: str, outcome_json: str) -> None:
    """Store ``outcome_json`` in the ``_recovery_applied`` row of ``bundle_id`` (the caller's open
    transaction; the column is added to a table made before it existed). Given the re-import's
    :class:`Script`, the writes are steps of its plan."""
    script = conn if isinstance(conn, Script) else Script(conn)
    cols = [
        r[1]
        for r in script.conn.execute(
            sql(
                exp.Pragma(
                    this=exp.Anonymous(
                        this="main.table_info", expressions=[exp.Literal.string(APPLIED_TABLE)]
                    )
                )
            )
        )
    ]
    if OUTCOME_COLUMN not in cols:
        script.execute(
            exp.Alter(
                this=table(APPLIED_TABLE, "main"),
                kind="TABLE",
                actions=[
                    exp.ColumnDef(
                        this=exp.to_identifier(OUTCOME_COLUMN, quoted=True),
                        kind=exp.DataType.build("TEXT"),
                    )
                ],
            )
        )
    upd = exp.update(
        table(APPLIED_TABLE, "main"),
        {OUTCOME_COLUMN: exp.Placeholder()},
        where=exp.EQ(this=col("bundle_id"), expression=exp.Placeholder()),
    )
    script.execute(upd, (outcome_json, bundle_id))


def recorded_outcome(conn: sqlite3.Connection, bundle_id: str) -> str | None:
    """The outcome JSON recorded with ``bundle_id``'s re-import, if any."""
    if not already_applied(conn, bundle_id):
        return None
    cols = [
        r[1]
        for r in conn.execute(
            sql(
                exp.Pragma(
                    this=exp.Anonymous(
                        this="main.table_info", expressions=[exp.Literal.string(APPLIED_TABLE)]
                    )
                )
            )
        )
    ]
    if OUTCOME_COLUMN not in cols:
        return None
    q = (
        exp.select(col(OUTCOME_COLUMN))
        .from_(table(APPLIED_TABLE, "main"))
        .where(exp.EQ(this=col("bundle_id"), expression=exp.Placeholder()))
    )
    row = conn.execute(sql(q), (bundle_id,)).fetchone()
    return row[0] if row and isinstance(row[0], str) else None
