"""The database tables behind `SqlConversationStore`, as SQLAlchemy declarative models.

These rows never leave `bot/store/`: the stores turn them into the frozen records of
`bot/core/records.py`. The Alembic migrations in `bot/store/migrations/versions/` create
exactly these tables; `tests/bot/store/test_conversations.py` checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from bot.core.records import AgentRole, ConversationStatus, EscalationStatus, Role

# Named constraints let later migrations drop or alter them, which SQLite's batch mode
# cannot do for anonymous ones.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an `INTEGER PRIMARY KEY`; PostgreSQL gets 64-bit ids so a
# busy deployment never runs out.
BigId = BigInteger().with_variant(Integer(), "sqlite")

# JSONB on PostgreSQL so stored model versions and scores can be queried; a Python None is
# stored as SQL NULL rather than the JSON literal `null`.
Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def one_of(column: str, values: Iterable[StrEnum]) -> str:
    """The SQL of a CHECK constraint: `column` holds one of `values` (e.g. an enum's members).

    The migrations spell the same constraints out: a revision never imports model code.
    """
    quoted = ", ".join(f"'{value.value}'" for value in values)
    return f"{column} IN ({quoted})"


# What the unique index of unresolved escalations covers.
UNRESOLVED_ONLY = f"status != '{EscalationStatus.RESOLVED.value}'"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware, in UTC.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so values are stored as naive
    UTC and given their zone back on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} given to a UTC column; "
                "pass a timezone-aware value such as datetime.now(UTC)"
            )
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ConversationRow(Base):
    """One conversation per (channel, sender)."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("channel", "sender"),
        CheckConstraint(one_of("status", ConversationStatus), name="status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel: Mapped[str] = mapped_column(Text)
    sender: Mapped[str] = mapped_column(Text)
    sender_name: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    failed_turns: Mapped[int] = mapped_column(Integer)
    assignee: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MessageRow(Base):
    """A message of any role, with what the models made of it when it is the customer's."""

    __tablename__ = "messages"
    __table_args__ = (
        # A retried delivery carries the same client id; NULLs never collide.
        UniqueConstraint("conversation_id", "client_id"),
        CheckConstraint(one_of("role", Role), name="role"),
        Index(None, "conversation_id", "id"),
        Index(None, "reply_to"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(String(32), ForeignKey("conversations.id"))
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str | None] = mapped_column(Text)
    reply_to: Mapped[int | None] = mapped_column(BigId, ForeignKey("messages.id"))
    intent: Mapped[str | None] = mapped_column(Text)
    intent_confidence: Mapped[float | None] = mapped_column(Float)
    sentiment: Mapped[str | None] = mapped_column(Text)
    negativity: Mapped[float | None] = mapped_column(Float)
    route: Mapped[str | None] = mapped_column(Text)
    model_versions: Mapped[dict[str, str] | None] = mapped_column(Json)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EscalationRow(Base):
    """A hand-off to a person: open, then claimed by an agent, then resolved."""

    __tablename__ = "escalations"
    __table_args__ = (
        CheckConstraint(one_of("status", EscalationStatus), name="status"),
        # At most one unresolved escalation per conversation, enforced by the database so
        # that two replicas escalating at once cannot both succeed.
        Index(
            "uq_escalations_conversation_id_unresolved",
            "conversation_id",
            unique=True,
            sqlite_where=text(UNRESOLVED_ONLY),
            postgresql_where=text(UNRESOLVED_ONLY),
        ),
        Index(None, "conversation_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(String(32), ForeignKey("conversations.id"))
    reason: Mapped[str] = mapped_column(Text)
    priority: Mapped[float] = mapped_column(Float)
    explanation: Mapped[str] = mapped_column(Text)
    scores: Mapped[dict[str, float] | None] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16))
    assignee: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_by: Mapped[str | None] = mapped_column(Text)
    # When the customer was told nobody claimed it in time (the unclaimed-timeout notice).
    timed_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # How it was closed: `resolved` (the agent dealt with it) or `handed_back` (to the bot).
    outcome: Mapped[str | None] = mapped_column(String(16))


class FeedbackRow(Base):
    """A rating of a message, or a correction of what the models made of it."""

    __tablename__ = "feedback"
    __table_args__ = (
        CheckConstraint("rating IS NULL OR rating IN ('up', 'down')", name="rating"),
        Index(None, "message_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(BigId, ForeignKey("messages.id"))
    rating: Mapped[str | None] = mapped_column(String(8))
    comment: Mapped[str | None] = mapped_column(Text)
    corrected_intent: Mapped[str | None] = mapped_column(Text)
    corrected_sentiment: Mapped[str | None] = mapped_column(Text)
    author: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AgentRow(Base):
    """A person who signs in to the console: an agent (answers customers) or an operator."""

    __tablename__ = "agents"
    __table_args__ = (
        UniqueConstraint("name"),
        CheckConstraint(one_of("role", AgentRole), name="role"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    # A slow KDF's self-describing string (algorithm, parameters, salt, hash).
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AgentSessionRow(Base):
    """A signed-in console session; kept in the database so every replica knows it."""

    __tablename__ = "agent_sessions"
    __table_args__ = (Index(None, "agent_id"),)

    # SHA-256 of the cookie's token: a leaked table does not give working cookies.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[int] = mapped_column(BigId, ForeignKey("agents.id"))
    csrf_token: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SignInFailureRow(Base):
    """A failed sign-in, counted per name and per address to rate-limit guessing."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (Index(None, "name", "created_at"), Index(None, "address", "created_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    address: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApprovedAnswerRow(Base):
    """An agent's reply saved as a good answer to a customer's question (for the index)."""

    __tablename__ = "approved_answers"
    __table_args__ = (Index(None, "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    intent: Mapped[str | None] = mapped_column(Text)
    conversation_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("conversations.id"))
    question_message_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("messages.id"))
    answer_message_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("messages.id"))
    author: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ConversationLabelRow(Base):
    """An agent's judgement of a whole conversation (its overall sentiment)."""

    __tablename__ = "conversation_labels"
    __table_args__ = (Index(None, "conversation_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(String(32), ForeignKey("conversations.id"))
    sentiment: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


# What the unique index of API key names covers: a revoked key's name may be given again.
ACTIVE_KEYS_ONLY = "revoked_at IS NULL"


class ApiKeyRow(Base):
    """A key for the server-to-server REST API; the key itself is never stored."""

    __tablename__ = "api_keys"
    __table_args__ = (
        UniqueConstraint("prefix"),
        Index(
            "uq_api_keys_name_active",
            "name",
            unique=True,
            sqlite_where=text(ACTIVE_KEYS_ONLY),
            postgresql_where=text(ACTIVE_KEYS_ONLY),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    # `sb_` and the next 8 characters: finds the row, and tells keys apart in lists.
    prefix: Mapped[str] = mapped_column(String(16))
    # SHA-256 (hex) of the whole key, compared in constant time: a leaked table gives no key.
    key_hash: Mapped[str] = mapped_column(String(64))
    channels: Mapped[list[str]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class CannedResponseRow(Base):
    """A reply agents insert by its shortcut; `{name}`, `{agent}` and the like are filled in
    for the open conversation (`bot.core.desk.fill_variables`)."""

    __tablename__ = "canned_responses"
    __table_args__ = (UniqueConstraint("shortcut"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    shortcut: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    # Who wrote or last changed it.
    author: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ConversationNoteRow(Base):
    """An agent's private note on a conversation: shown to agents only, never sent to the
    customer (it is no message, so no transcript holds it)."""

    __tablename__ = "conversation_notes"
    __table_args__ = (Index(None, "conversation_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(String(32), ForeignKey("conversations.id"))
    author: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ErasureRow(Base):
    """A record that a customer's data was erased: who asked for it, when, and how many rows
    each table lost. It holds no customer data (no sender, no text), so it may be kept."""

    __tablename__ = "erasures"
    __table_args__ = (Index(None, "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The operator who ran `supportbot privacy erase` (the OS user, or --by NAME).
    erased_by: Mapped[str] = mapped_column(Text)
    # Rows removed per table, e.g. {"messages": 12, "feedback": 1}.
    counts: Mapped[dict[str, int]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AnswerControlRow(Base):
    """The agents' decision about one indexed answer in the console's answer library:
    disabled (not served), edited (served with `answer` in place of the indexed text) or
    approved; one row per index source, holding the last action, who took it and when."""

    __tablename__ = "answer_controls"
    __table_args__ = (UniqueConstraint("source"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The answer's index source (`file:line`, `store:approved_answers:<id>`).
    source: Mapped[str] = mapped_column(String(1000))
    # The pair's question when decided: the decision holds only for that pair (a rewritten
    # data file may put another one at the same `file:line`).
    question: Mapped[str | None] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean)
    # The agent's edited text, served instead of the indexed one (None: not edited).
    answer: Mapped[str | None] = mapped_column(Text)
    # disabled | enabled | edited | approved: the last action.
    action: Mapped[str] = mapped_column(String(16))
    # The approved answer an edit or an approval saved (no foreign key: an erasure may delete
    # approved answers, and the decision about the indexed answer stays).
    approved_answer_id: Mapped[int | None] = mapped_column(BigId)
    author: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LeaseRow(Base):
    """A named lease: work that one replica of several does at a time (the retention purge).

    Whoever holds it until `expires_at` may do the work; the others skip it. A replica that
    dies holding it is replaced once it expires."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Replica name, process id and a random suffix of the holding process.
    holder: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
