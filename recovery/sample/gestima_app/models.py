"""SQLAlchemy 2.0 models of Gestima v2.0.1 (Alembic head ``bb006_drop_parts_notes``).

Timestamps are ISO-8601 text ``'YYYY-MM-DD HH:MM:SS'`` (``String(19)``), not ``DateTime``:
the app formats them itself, so they sort and compare as plain strings and are
byte-identical between the backup, the live database and ``world.json``.

Money: v2.0.0 stored ``parts.price`` as REAL; v2.0.1 stores ``parts.price_cents`` as
INTEGER (``price = price_cents / 100.0``). ``quotes.customer`` became ``customer_name``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Timestamp = sa.String(19)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    full_name: Mapped[str] = mapped_column(sa.String(128))
    email: Mapped[str] = mapped_column(sa.String(128))
    role: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[str] = mapped_column(Timestamp)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.text("1"))


class Material(Base):
    __tablename__ = "materials"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    density: Mapped[float] = mapped_column(sa.Float)
    price_per_kg: Mapped[float] = mapped_column(sa.Float)


class Part(Base):
    __tablename__ = "parts"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    part_number: Mapped[str] = mapped_column(sa.String(32), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    material_id: Mapped[int] = mapped_column(sa.ForeignKey("materials.id"), index=True)
    created_at: Mapped[str] = mapped_column(Timestamp)
    updated_at: Mapped[str] = mapped_column(Timestamp)
    created_by: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    drawing_number: Mapped[str | None] = mapped_column(sa.String(64))
    file_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("file_records.id", name="fk_parts_file_id_file_records"), index=True
    )
    price_cents: Mapped[int] = mapped_column(sa.Integer)


class Quote(Base):
    __tablename__ = "quotes"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    quote_number: Mapped[str] = mapped_column(sa.String(32), unique=True)
    customer_name: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[str] = mapped_column(Timestamp)
    updated_at: Mapped[str] = mapped_column(Timestamp)
    created_by: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    discount_pct: Mapped[float] = mapped_column(sa.Float, server_default=sa.text("0"))


class QuoteItem(Base):
    __tablename__ = "quote_items"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    quote_id: Mapped[int] = mapped_column(
        sa.ForeignKey("quotes.id", ondelete="CASCADE"), index=True
    )
    part_id: Mapped[int] = mapped_column(sa.ForeignKey("parts.id"), index=True)
    qty: Mapped[int] = mapped_column(sa.Integer)
    unit_price: Mapped[float] = mapped_column(sa.Float)


class FileRecord(Base):
    __tablename__ = "file_records"
    __table_args__ = (sa.Index("ix_file_records_entity", "entity_type", "entity_id"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(sa.String(255))
    path: Mapped[str] = mapped_column(sa.String(512))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int] = mapped_column(sa.Integer)
    mime_type: Mapped[str] = mapped_column(sa.String(100))
    entity_type: Mapped[str] = mapped_column(sa.String(32))
    entity_id: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[str] = mapped_column(Timestamp)
    uploaded_by: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)


class ProductionRecord(Base):
    __tablename__ = "production_records"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    part_id: Mapped[int] = mapped_column(sa.ForeignKey("parts.id"), index=True)
    quantity: Mapped[int] = mapped_column(sa.Integer)
    machine: Mapped[str] = mapped_column(sa.String(64))
    started_at: Mapped[str] = mapped_column(Timestamp)
    finished_at: Mapped[str | None] = mapped_column(Timestamp)
    created_by: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)


# The view is not a table, so alembic's compare_metadata does not see it; it is kept
# here as the DDL the head revision (bb003) creates.
V_QUOTE_TOTALS_SQL = """
CREATE VIEW v_quote_totals AS
SELECT q.id AS quote_id,
       q.quote_number AS quote_number,
       ROUND(COALESCE(SUM(qi.qty * qi.unit_price), 0) * (1 - q.discount_pct / 100.0), 2) AS total
FROM quotes AS q
LEFT JOIN quote_items AS qi ON qi.quote_id = q.id
GROUP BY q.id, q.quote_number
""".strip()
