"""The console's answer library: agents' decisions about indexed answers (disabled, edited,
approved), one row per index source.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 05:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from bot.store.schema (see 0001).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create `answer_controls` (unique source)."""
    op.create_table(
        "answer_controls",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("source", sa.String(1000), nullable=False),
        sa.Column("question", sa.Text(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("approved_answer_id", BIG_ID, nullable=True),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_answer_controls")),
        sa.UniqueConstraint("source", name=op.f("uq_answer_controls_source")),
    )


def downgrade() -> None:
    """Drop `answer_controls` (every disabled or edited answer is served again)."""
    op.drop_table("answer_controls")
