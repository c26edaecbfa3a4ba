"""Console accounts and sessions, sign-in failures, approved answers, conversation labels,
the unclaimed-escalation timeout and how an escalation ended (its outcome).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from bot.store.schema (see 0001).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def timestamp(name: str, nullable: bool = False) -> sa.Column[datetime]:
    """A timezone-aware timestamp column (naive UTC on SQLite)."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the console's tables; add `escalations.timed_out_at` and `.outcome`."""
    op.create_table(
        "agents",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        timestamp("created_at"),
        timestamp("disabled_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("name", name=op.f("uq_agents_name")),
        sa.CheckConstraint("role IN ('agent', 'operator')", name=op.f("ck_agents_role")),
    )
    op.create_table(
        "agent_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("agent_id", BIG_ID, nullable=False),
        sa.Column("csrf_token", sa.Text(), nullable=False),
        timestamp("created_at"),
        timestamp("expires_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_sessions")),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_agent_sessions_agent_id_agents")
        ),
    )
    op.create_index(op.f("ix_agent_sessions_agent_id"), "agent_sessions", ["agent_id"])
    op.create_table(
        "sign_in_failures",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_failures")),
    )
    op.create_index(
        op.f("ix_sign_in_failures_name_created_at"), "sign_in_failures", ["name", "created_at"]
    )
    op.create_index(
        op.f("ix_sign_in_failures_address_created_at"),
        "sign_in_failures",
        ["address", "created_at"],
    )
    op.create_table(
        "approved_answers",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("intent", sa.Text(), nullable=True),
        sa.Column("conversation_id", sa.String(32), nullable=True),
        sa.Column("question_message_id", BIG_ID, nullable=True),
        sa.Column("answer_message_id", BIG_ID, nullable=True),
        sa.Column("author", sa.Text(), nullable=False),
        timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approved_answers")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_approved_answers_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(
            ["question_message_id"],
            ["messages.id"],
            name=op.f("fk_approved_answers_question_message_id_messages"),
        ),
        sa.ForeignKeyConstraint(
            ["answer_message_id"],
            ["messages.id"],
            name=op.f("fk_approved_answers_answer_message_id_messages"),
        ),
    )
    op.create_index(op.f("ix_approved_answers_created_at"), "approved_answers", ["created_at"])
    op.create_table(
        "conversation_labels",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("conversation_id", sa.String(32), nullable=False),
        sa.Column("sentiment", sa.Text(), nullable=False),
        sa.Column("author", sa.Text(), nullable=False),
        timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_labels")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_labels_conversation_id_conversations"),
        ),
    )
    op.create_index(
        op.f("ix_conversation_labels_conversation_id"), "conversation_labels", ["conversation_id"]
    )
    with op.batch_alter_table("escalations") as batch:
        batch.add_column(sa.Column("timed_out_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("outcome", sa.String(16), nullable=True))


def downgrade() -> None:
    """Drop the console's tables and the two escalation columns."""
    with op.batch_alter_table("escalations") as batch:
        batch.drop_column("outcome")
        batch.drop_column("timed_out_at")
    op.drop_table("conversation_labels")
    op.drop_table("approved_answers")
    op.drop_table("sign_in_failures")
    op.drop_table("agent_sessions")
    op.drop_table("agents")
