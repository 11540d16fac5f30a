"""parts.price (REAL) -> parts.price_cents (INTEGER)

Revision ID: bb004_price_cents
Revises: bb003_quote_discount_pct
Create Date: 2026-11-17 14:55:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bb004_price_cents"
down_revision = "bb003_quote_discount_pct"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("parts") as batch:
        batch.add_column(sa.Column("price_cents", sa.Integer, nullable=True))
    op.execute("UPDATE parts SET price_cents = CAST(ROUND(price * 100) AS INTEGER)")
    with op.batch_alter_table("parts") as batch:
        batch.alter_column("price_cents", existing_type=sa.Integer, nullable=False)
        batch.drop_column("price")


def downgrade() -> None:
    with op.batch_alter_table("parts") as batch:
        batch.add_column(sa.Column("price", sa.Float, nullable=True))
    op.execute("UPDATE parts SET price = price_cents / 100.0")
    with op.batch_alter_table("parts") as batch:
        batch.alter_column("price", existing_type=sa.Float, nullable=False)
        batch.drop_column("price_cents")
