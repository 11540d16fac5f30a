"""parts.file_id -> file_records.id, back-filled with each part's latest uploaded file

Revision ID: bb001_parts_file_id
Revises: aa001_add_drawing_number_drop_drawings
Create Date: 2026-11-12 16:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "bb001_parts_file_id"
down_revision = "aa001_add_drawing_number_drop_drawings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the named FK forces a table rebuild (SQLite cannot ALTER ... ADD CONSTRAINT)
    with op.batch_alter_table("parts") as batch:
        batch.add_column(sa.Column("file_id", sa.Integer, nullable=True))
        batch.create_foreign_key(
            "fk_parts_file_id_file_records", "file_records", ["file_id"], ["id"]
        )
        batch.create_index("ix_parts_file_id", ["file_id"])
    op.execute(
        """
        UPDATE parts SET file_id = (
            SELECT fr.id FROM file_records AS fr
            WHERE fr.entity_type = 'part' AND fr.entity_id = parts.id
            ORDER BY fr.created_at DESC, fr.id DESC
            LIMIT 1)
        WHERE EXISTS (
            SELECT 1 FROM file_records AS fr
            WHERE fr.entity_type = 'part' AND fr.entity_id = parts.id)
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("parts") as batch:
        batch.drop_index("ix_parts_file_id")
        batch.drop_constraint("fk_parts_file_id_file_records", type_="foreignkey")
        batch.drop_column("file_id")
