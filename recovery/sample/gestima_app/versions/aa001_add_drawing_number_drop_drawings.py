"""parts.drawing_number replaces the drawings table (release v2.0.0 head)

Revision ID: aa001_add_drawing_number_drop_drawings
Revises: 0002_users_is_active
Create Date: 2026-06-02 08:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "aa001_add_drawing_number_drop_drawings"
down_revision = "0002_users_is_active"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("parts") as batch:
        batch.add_column(sa.Column("drawing_number", sa.String(64), nullable=True))
    # the newest revision's drawing number wins
    op.execute(
        """
        UPDATE parts SET drawing_number = (
            SELECT d.drawing_no FROM drawings AS d
            WHERE d.part_id = parts.id
            ORDER BY d.revision DESC, d.id DESC
            LIMIT 1)
        """
    )
    op.drop_index("ix_drawings_part_id", table_name="drawings")
    op.drop_table("drawings")


def downgrade() -> None:
    op.create_table(
        "drawings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("part_id", sa.Integer, sa.ForeignKey("parts.id"), nullable=False),
        sa.Column("drawing_no", sa.String(64), nullable=False),
        sa.Column("revision", sa.String(8), nullable=False),
    )
    op.create_index("ix_drawings_part_id", "drawings", ["part_id"])
    # older revisions were folded away by upgrade(); only the current one comes back, as 'A'
    op.execute(
        "INSERT INTO drawings (part_id, drawing_no, revision) "
        "SELECT id, drawing_number, 'A' FROM parts WHERE drawing_number IS NOT NULL ORDER BY id"
    )
    with op.batch_alter_table("parts") as batch:
        batch.drop_column("drawing_number")
