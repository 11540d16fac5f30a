"""quotes.discount_pct, and v_quote_totals applies it

Revision ID: bb003_quote_discount_pct
Revises: bb002_rename_quote_customer
Create Date: 2026-11-16 09:20:00

downgrade() is a stub (``pass``), as it is in many real projects: after a downgrade
the column ``discount_pct`` and the discounting view stay behind.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bb003_quote_discount_pct"
down_revision = "bb002_rename_quote_customer"
branch_labels = None
depends_on = None

V_QUOTE_TOTALS = """
CREATE VIEW v_quote_totals AS
SELECT q.id AS quote_id,
       q.quote_number AS quote_number,
       ROUND(COALESCE(SUM(qi.qty * qi.unit_price), 0) * (1 - q.discount_pct / 100.0), 2) AS total
FROM quotes AS q
LEFT JOIN quote_items AS qi ON qi.quote_id = q.id
GROUP BY q.id, q.quote_number
"""


def _view() -> str:
    """The view for the connected engine: PostgreSQL has no ROUND(double precision, int)."""
    if op.get_bind().dialect.name == "postgresql":
        return V_QUOTE_TOTALS.replace("ROUND(", "ROUND(CAST(").replace(
            ", 2) AS total", " AS NUMERIC), 2) AS total"
        )
    return V_QUOTE_TOTALS


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS v_quote_totals")
    with op.batch_alter_table("quotes") as batch:
        batch.add_column(
            sa.Column("discount_pct", sa.Float, nullable=False, server_default=sa.text("0"))
        )
    op.execute(_view())


def downgrade() -> None:
    pass
