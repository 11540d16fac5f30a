"""users.is_active (soft-disable accounts instead of deleting them)

Revision ID: 0002_users_is_active
Revises: 0001_baseline
Create Date: 2025-10-14 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_users_is_active"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # add_column alone is a plain ALTER TABLE ... ADD COLUMN (no table rebuild)
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column(
                "is_active",
                sa.Boolean,
                nullable=False,
                server_default=sa.text(
                    "true" if op.get_bind().dialect.name == "postgresql" else "1"
                ),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("is_active")
