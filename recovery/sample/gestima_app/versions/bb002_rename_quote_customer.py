"""quotes.customer -> quotes.customer_name

Revision ID: bb002_rename_quote_customer
Revises: bb001_parts_file_id
Create Date: 2026-11-13 11:05:00

The batch rename rebuilds ``quotes``. SQLite's ALTER TABLE ... RENAME (the last step
of the rebuild) re-checks every view, and v_quote_totals names ``quotes`` — which does
not exist at that moment — so the view is dropped before and recreated after.
"""

from __future__ import annotations

from alembic import op

revision = "bb002_rename_quote_customer"
down_revision = "bb001_parts_file_id"
branch_labels = None
depends_on = None

V_QUOTE_TOTALS = """
CREATE VIEW v_quote_totals AS
SELECT q.id AS quote_id,
       q.quote_number AS quote_number,
       ROUND(COALESCE(SUM(qi.qty * qi.unit_price), 0), 2) AS total
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
        batch.alter_column("customer", new_column_name="customer_name")
    op.execute(_view())


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS v_quote_totals")
    with op.batch_alter_table("quotes") as batch:
        batch.alter_column("customer_name", new_column_name="customer")
    op.execute(_view())
