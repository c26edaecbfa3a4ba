"""What the store holds about one customer: export it whole, or erase it in one transaction.

A customer is a sender (on one channel or on every channel) or one conversation. Their data
is their conversations and every row hanging off them: messages (with the models'
annotations in `details`), feedback on those messages (ratings and the labels agents gave),
escalations, the conversation labels and private notes agents wrote, and approved answers
made from their messages. Exports and erasures go through the same selection, so what is
exported is exactly what an erasure removes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, false, func, inspect, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.errors import BadRequestError, NotFoundError
from bot.core.records import Role
from bot.store.conversations import SqlConversationStore
from bot.store.schema import (
    ApprovedAnswerRow,
    Base,
    ConversationLabelRow,
    ConversationNoteRow,
    ConversationRow,
    ErasureRow,
    EscalationRow,
    FeedbackRow,
    MessageRow,
)

# The tables of a customer's data, in the order an erasure deletes them (rows that point
# at others first, conversations last).
CUSTOMER_TABLES: tuple[type[Base], ...] = (
    FeedbackRow,
    ApprovedAnswerRow,
    ConversationLabelRow,
    ConversationNoteRow,
    EscalationRow,
    MessageRow,
    ConversationRow,
)


@dataclass(frozen=True, slots=True)
class Customer:
    """Whose data: a sender (on `channel`, or on every channel) or one conversation."""

    sender: str | None = None
    channel: str | None = None
    conversation_id: str | None = None

    def __post_init__(self) -> None:
        if (self.sender is None) == (self.conversation_id is None):
            raise BadRequestError(
                "name the customer either by sender (--sender ID, optionally --channel C) or "
                "by conversation (--conversation ID), not both and not neither"
            )
        if self.channel is not None and self.sender is None:
            raise BadRequestError(
                "--channel narrows --sender; a conversation id names one conversation already"
            )

    def describe(self) -> str:
        """The customer in words, for reports and errors (`sender 'u1' on channel 'rest'`)."""
        if self.conversation_id is not None:
            return f"conversation {self.conversation_id!r}"
        where = f" on channel {self.channel!r}" if self.channel else " on every channel"
        return f"sender {self.sender!r}{where}"


@dataclass(frozen=True, slots=True)
class CustomerData:
    """Every stored row of one customer, table by table, as column -> value."""

    customer: Customer
    tables: Mapping[str, list[dict[str, Any]]]

    def to_json(self) -> dict[str, Any]:
        """The export document: JSON types only (timestamps as ISO 8601, in UTC)."""
        return {
            "customer": {
                "sender": self.customer.sender,
                "channel": self.customer.channel,
                "conversation": self.customer.conversation_id,
            },
            **{
                table: [{k: _jsonable(v) for k, v in row.items()} for row in rows]
                for table, rows in self.tables.items()
            },
        }


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure removed (or, in a dry run, would remove) from the store.

    `texts` are the customer's message texts, kept only in memory so the caller can remove
    them from files outside the database (the models' replay pools and test sets).
    """

    customer: Customer
    counts: Mapping[str, int]
    texts: frozenset[str] = field(default_factory=frozenset)
    dry_run: bool = False


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _row_dict(row: Base) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


class SqlPrivacyStore:
    """Export and erasure of one customer's data, in the store's database.

    Args:
        store: the conversation store whose database and connection pool are shared, and
            whose `clock` stamps the erasure record.
    """

    def __init__(self, store: SqlConversationStore) -> None:
        self.store = store

    async def export(self, customer: Customer) -> CustomerData:
        """Every stored row of `customer` (NotFoundError when the store holds none)."""
        async with self.store.reading("export a customer's data") as session:
            ids = await self._conversation_ids(session, customer)
            tables: dict[str, list[dict[str, Any]]] = {}
            for table in reversed(CUSTOMER_TABLES):
                query = self._rows(table, ids).order_by(*inspect(table).primary_key)
                rows = (await session.scalars(query)).all()
                tables[table.__tablename__] = [_row_dict(row) for row in rows]
        return CustomerData(customer, tables)

    async def erase(self, customer: Customer, erased_by: str, *, dry_run: bool = False) -> Erasure:
        """Delete every stored row of `customer` and record the erasure, in one transaction.

        Args:
            customer: whose data.
            erased_by: who asked for it (kept in the `erasures` record).
            dry_run: count what would be removed and change nothing.

        Raises:
            NotFoundError: the store holds nothing of `customer`.
        """
        async with self.store.writing("erase a customer's data") as session:
            ids = await self._conversation_ids(session, customer)
            texts = await session.scalars(
                select(MessageRow.text).where(
                    MessageRow.conversation_id.in_(ids), MessageRow.role == Role.CUSTOMER.value
                )
            )
            found = frozenset(texts.all())
            counts: dict[str, int] = {}
            for table in CUSTOMER_TABLES:
                matching = self._rows(table, ids).subquery()
                count = await session.scalar(select(func.count()).select_from(matching))
                counts[table.__tablename__] = int(count or 0)
            if not dry_run:
                for table in CUSTOMER_TABLES:
                    await session.execute(
                        delete(table).where(self._condition(table, ids)),
                        execution_options={"synchronize_session": False},
                    )
                session.add(
                    ErasureRow(erased_by=erased_by, counts=counts, created_at=self.store.clock())
                )
        return Erasure(customer, counts, found, dry_run)

    async def erasures(self) -> list[ErasureRow]:
        """Every erasure record, oldest first."""
        async with self.store.reading("list erasures") as session:
            return list((await session.scalars(select(ErasureRow).order_by(ErasureRow.id))).all())

    async def _conversation_ids(self, session: AsyncSession, customer: Customer) -> list[str]:
        query = select(ConversationRow.id)
        if customer.conversation_id is not None:
            query = query.where(ConversationRow.id == customer.conversation_id)
        else:
            query = query.where(ConversationRow.sender == customer.sender)
            if customer.channel is not None:
                query = query.where(ConversationRow.channel == customer.channel)
        ids = list((await session.scalars(query.order_by(ConversationRow.id))).all())
        if not ids:
            raise NotFoundError(
                f"the store holds no conversation of {customer.describe()}; check the id and "
                "the channel (the agent console shows each conversation's channel and sender), "
                "or it was erased already"
            )
        return ids

    def _rows(self, table: type[Base], ids: list[str]) -> Select[Any]:
        return select(table).where(self._condition(table, ids))

    def _condition(self, table: type[Base], ids: list[str]) -> ColumnElement[bool]:
        """Rows of `table` that belong to the conversations `ids`."""
        messages = select(MessageRow.id).where(MessageRow.conversation_id.in_(ids))
        if table is ConversationRow:
            return ConversationRow.id.in_(ids)
        if table is FeedbackRow:
            return FeedbackRow.message_id.in_(messages)
        if table is ApprovedAnswerRow:
            # Made from the customer's question: it holds their text, wherever it points.
            return or_(
                ApprovedAnswerRow.conversation_id.in_(ids),
                ApprovedAnswerRow.question_message_id.in_(messages),
                ApprovedAnswerRow.answer_message_id.in_(messages),
            )
        conversation_id = getattr(table, "conversation_id", None)
        if conversation_id is None:  # pragma: no cover - every customer table has one
            return false()
        return conversation_id.in_(ids)
