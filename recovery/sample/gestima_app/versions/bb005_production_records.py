"""production_records: what was made, on which machine, by whom

Revision ID: bb005_production_records
Revises: bb004_price_cents
Create Date: 2026-11-18 10:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bb005_production_records"
down_revision = "bb004_price_cents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "production_records",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("part_id", sa.Integer, sa.ForeignKey("parts.id"), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("machine", sa.String(64), nullable=False),
        sa.Column("started_at", sa.String(19), nullable=False),
        sa.Column("finished_at", sa.String(19), nullable=True),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    )
    op.create_index("ix_production_records_part_id", "production_records", ["part_id"])
    op.create_index("ix_production_records_created_by", "production_records", ["created_by"])


def downgrade() -> None:
    op.drop_index("ix_production_records_created_by", table_name="production_records")
    op.drop_index("ix_production_records_part_id", table_name="production_records")
    op.drop_table("production_records")
