"""Conversations, messages, escalations and feedback.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from bot.store.schema: a revision must keep creating the
# schema it was written for, whatever the models look like later.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def timestamp(name: str, nullable: bool = False) -> sa.Column[datetime]:
    """A timezone-aware timestamp column (naive UTC on SQLite)."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the four tables of the store."""
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("sender_name", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failed_turns", sa.Integer(), nullable=False),
        sa.Column("assignee", sa.Text(), nullable=True),
        timestamp("created_at"),
        timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
        sa.UniqueConstraint("channel", "sender", name=op.f("uq_conversations_channel_sender")),
        sa.CheckConstraint(
            "status IN ('bot', 'waiting', 'claimed')", name=op.f("ck_conversations_status")
        ),
    )

    op.create_table(
        "messages",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("conversation_id", sa.String(32), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=True),
        sa.Column("reply_to", BIG_ID, nullable=True),
        sa.Column("intent", sa.Text(), nullable=True),
        sa.Column("intent_confidence", sa.Float(), nullable=True),
        sa.Column("sentiment", sa.Text(), nullable=True),
        sa.Column("negativity", sa.Float(), nullable=True),
        sa.Column("route", sa.Text(), nullable=True),
        sa.Column("model_versions", JSON, nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("details", JSON, nullable=True),
        timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_messages_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(
            ["reply_to"], ["messages.id"], name=op.f("fk_messages_reply_to_messages")
        ),
        sa.UniqueConstraint(
            "conversation_id", "client_id", name=op.f("uq_messages_conversation_id_client_id")
        ),
        sa.CheckConstraint(
            "role IN ('customer', 'bot', 'agent', 'system')", name=op.f("ck_messages_role")
        ),
    )
    op.create_index(op.f("ix_messages_conversation_id_id"), "messages", ["conversation_id", "id"])
    op.create_index(op.f("ix_messages_reply_to"), "messages", ["reply_to"])

    op.create_table(
        "escalations",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("conversation_id", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("scores", JSON, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("assignee", sa.Text(), nullable=True),
        timestamp("created_at"),
        timestamp("claimed_at", nullable=True),
        timestamp("resolved_at", nullable=True),
        sa.Column("resolved_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_escalations")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_escalations_conversation_id_conversations"),
        ),
        sa.CheckConstraint(
            "status IN ('open', 'claimed', 'resolved')", name=op.f("ck_escalations_status")
        ),
    )
    op.create_index(op.f("ix_escalations_conversation_id"), "escalations", ["conversation_id"])
    op.create_index(
        op.f("uq_escalations_conversation_id_unresolved"),
        "escalations",
        ["conversation_id"],
        unique=True,
        sqlite_where=sa.text("status != 'resolved'"),
        postgresql_where=sa.text("status != 'resolved'"),
    )

    op.create_table(
        "feedback",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("message_id", BIG_ID, nullable=False),
        sa.Column("rating", sa.String(8), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("corrected_intent", sa.Text(), nullable=True),
        sa.Column("corrected_sentiment", sa.Text(), nullable=True),
        sa.Column("author", sa.Text(), nullable=False),
        timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_feedback_message_id_messages")
        ),
        sa.CheckConstraint(
            "rating IS NULL OR rating IN ('up', 'down')", name=op.f("ck_feedback_rating")
        ),
    )
    op.create_index(op.f("ix_feedback_message_id"), "feedback", ["message_id"])


def downgrade() -> None:
    """Drop the four tables (and everything in them)."""
    op.drop_table("feedback")
    op.drop_table("escalations")
    op.drop_table("messages")
    op.drop_table("conversations")
