"""Pass 1, staging: the plan's SELECTs fill TEMP tables with the bundle's rows in the old schema —
``ins:<t>`` (rows to insert) and ``upd:<t>`` (key, theirs_i, base_i per updatable column) — with
empty ``skip:<t>``/``uskip:<t>`` sets and the per-table bundle counts.
"""

from __future__ import annotations

from sqlglot import exp

from recovery.engine.sqlbuild import col, table
from recovery.model.outcome import TableOutcome
from recovery.reimport.context import Context, temp_table


def stage(ctx: Context) -> None:
    """Fill the TEMP tables of every staged table (a key index on ``ins:<t>``) and count them."""
    for tp in ctx.staged():
        assert tp.insert_select is not None and tp.update_select is not None
        ctx.run(
            exp.Create(
                this=temp_table("ins", tp.table), kind="TABLE", expression=tp.insert_select.copy()
            )
        )
        ctx.run(
            exp.Create(
                this=temp_table("upd", tp.table), kind="TABLE", expression=tp.update_select.copy()
            )
        )
        for kind in ("skip", "uskip"):
            ctx.run(
                exp.Create(
                    kind="TABLE",
                    this=exp.Schema(
                        this=temp_table(kind, tp.table),
                        expressions=[
                            exp.ColumnDef(
                                this=exp.to_identifier("rid"),
                                kind=exp.DataType.build("INTEGER"),
                                constraints=[
                                    exp.ColumnConstraint(kind=exp.PrimaryKeyColumnConstraint())
                                ],
                            )
                        ],
                    ),
                )
            )
        key = ctx.old(tp.table).primary_key
        if key:  # parents are probed by key per child row (missing parents, unit propagation)
            ctx.run(
                exp.Create(
                    kind="INDEX",
                    this=exp.Index(
                        this=table(f"ix_ins:{tp.table}", "temp"),
                        table=table(f"ins:{tp.table}"),
                        params=exp.IndexParameters(columns=[col(k) for k in key]),
                    ),
                )
            )
        to = ctx.outcome.tables.setdefault(tp.table, TableOutcome(tp.table))
        to.bundle_inserted = ctx.rows(exp.select("count(*)").from_(temp_table("ins", tp.table)))[0][
            0
        ]
        to.bundle_updated = ctx.rows(exp.select("count(*)").from_(temp_table("upd", tp.table)))[0][
            0
        ]
