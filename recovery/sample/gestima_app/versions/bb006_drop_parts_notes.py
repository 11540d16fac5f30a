"""drop parts.notes (release v2.0.1 head)

Revision ID: bb006_drop_parts_notes
Revises: bb005_production_records
Create Date: 2026-11-19 17:45:00

downgrade() re-adds the column empty: the notes themselves are gone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bb006_drop_parts_notes"
down_revision = "bb005_production_records"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("parts") as batch:
        batch.drop_column("notes")


def downgrade() -> None:
    with op.batch_alter_table("parts") as batch:
        batch.add_column(sa.Column("notes", sa.Text, nullable=True))
