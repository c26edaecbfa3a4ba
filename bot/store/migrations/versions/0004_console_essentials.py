"""The console essentials: canned responses and private notes on conversations.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from bot.store.schema (see 0001).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create `canned_responses` (unique shortcuts) and `conversation_notes`."""
    op.create_table(
        "canned_responses",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("shortcut", sa.String(32), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_canned_responses")),
        sa.UniqueConstraint("shortcut", name=op.f("uq_canned_responses_shortcut")),
    )
    op.create_table(
        "conversation_notes",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("conversation_id", sa.String(32), nullable=False),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_notes")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_notes_conversation_id_conversations"),
        ),
    )
    op.create_index(
        op.f("ix_conversation_notes_conversation_id"), "conversation_notes", ["conversation_id"]
    )


def downgrade() -> None:
    """Drop both tables (every canned response and note with them)."""
    op.drop_table("conversation_notes")
    op.drop_table("canned_responses")
