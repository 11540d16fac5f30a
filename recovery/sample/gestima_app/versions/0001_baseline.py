"""baseline: users, materials, parts, quotes, quote_items, file_records, drawings, v_quote_totals

Revision ID: 0001_baseline
Revises:
Create Date: 2025-09-01 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.String(19)  # ISO-8601 text 'YYYY-MM-DD HH:MM:SS'

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
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("full_name", sa.String(128), nullable=False),
        sa.Column("email", sa.String(128), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "materials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(32), nullable=False, unique=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("density", sa.Float, nullable=False),
        sa.Column("price_per_kg", sa.Float, nullable=False),
    )
    op.create_table(
        "parts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("part_number", sa.String(32), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("material_id", sa.Integer, sa.ForeignKey("materials.id"), nullable=False),
        sa.Column("price", sa.Float, nullable=False),
        sa.Column("notes", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    )
    op.create_index("ix_parts_material_id", "parts", ["material_id"])
    op.create_index("ix_parts_created_by", "parts", ["created_by"])
    op.create_table(
        "quotes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("quote_number", sa.String(32), nullable=False, unique=True),
        sa.Column("customer", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    )
    op.create_index("ix_quotes_created_by", "quotes", ["created_by"])
    op.create_table(
        "quote_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "quote_id", sa.Integer, sa.ForeignKey("quotes.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("part_id", sa.Integer, sa.ForeignKey("parts.id"), nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("unit_price", sa.Float, nullable=False),
    )
    op.create_index("ix_quote_items_quote_id", "quote_items", ["quote_id"])
    op.create_index("ix_quote_items_part_id", "quote_items", ["part_id"])
    op.create_table(
        "file_records",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("mime_type", sa.String(100), nullable=False),
        sa.Column("entity_type", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("uploaded_by", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    )
    op.create_index("ix_file_records_entity", "file_records", ["entity_type", "entity_id"])
    op.create_index("ix_file_records_uploaded_by", "file_records", ["uploaded_by"])
    op.create_table(
        "drawings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("part_id", sa.Integer, sa.ForeignKey("parts.id"), nullable=False),
        sa.Column("drawing_no", sa.String(64), nullable=False),
        sa.Column("revision", sa.String(8), nullable=False),
    )
    op.create_index("ix_drawings_part_id", "drawings", ["part_id"])
    op.execute(_view())


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS v_quote_totals")
    op.drop_table("drawings")
    op.drop_table("file_records")
    op.drop_table("quote_items")
    op.drop_table("quotes")
    op.drop_table("parts")
    op.drop_table("materials")
    op.drop_table("users")
