"""The record of customer data erasures (`supportbot privacy erase`).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 04:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from bot.store.schema (see 0001).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    """Create `erasures`: who erased a customer's data, when, and rows removed per table."""
    op.create_table(
        "erasures",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("erased_by", sa.Text(), nullable=False),
        sa.Column("counts", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
    )
    op.create_index(op.f("ix_erasures_created_at"), "erasures", ["created_at"])


def downgrade() -> None:
    """Drop `erasures` (the record of past erasures with it)."""
    op.drop_table("erasures")
