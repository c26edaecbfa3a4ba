"""Export and erasure of one customer's data on a real SQLite file and a real PostgreSQL
server: the export holds every stored row, the erasure leaves none and touches nobody else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import Text, cast, func, or_, select, update

from bot.core.errors import BadRequestError, NotFoundError
from bot.core.records import Escalation, Feedback, Role
from bot.store.conversations import SqlConversationStore
from bot.store.privacy import CUSTOMER_TABLES, Customer, SqlPrivacyStore
from bot.store.schema import (
    ApprovedAnswerRow,
    ConversationLabelRow,
    ConversationNoteRow,
    ErasureRow,
    MessageRow,
)

ALICE_TEXTS = ("my card [CARD] was charged twice", "still waiting for the refund of A-1234")
BOB_TEXT = "where is my parcel B-9876"
NOTE = "Alice called about the double charge"


@dataclass(frozen=True)
class Seeded:
    alice_rest: str
    alice_widget: str
    bob: str


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlConversationStore]:
    store = SqlConversationStore(database_url)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


async def seed(store: SqlConversationStore) -> Seeded:
    """Alice on two channels with a row in every customer table; Bob with a few rows."""
    now = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)
    alice_rest = await store.conversation("rest", "alice", sender_name="Alice")
    alice_widget = await store.conversation("widget", "alice")
    bob = await store.conversation("rest", "bob")
    first, _ = await store.add_customer_message(alice_rest.id, ALICE_TEXTS[0], "c-1")
    reply = await store.add_message(
        alice_rest.id, Role.BOT, "sorry to hear that", reply_to=first.id, route="response"
    )
    second, _ = await store.add_customer_message(alice_widget.id, ALICE_TEXTS[1])
    bob_message, _ = await store.add_customer_message(bob.id, BOB_TEXT)
    async with store.writing("annotate") as session:
        await session.execute(
            update(MessageRow)
            .where(MessageRow.id == first.id)
            .values(intent="billing", sentiment="negative", details={"entities": ["CARD"]})
        )
    await store.record_feedback(Feedback(reply.id, rating="down", comment="useless"))
    await store.record_feedback(
        Feedback(first.id, corrected_intent="refund", corrected_sentiment="angry", author="ann")
    )
    await store.record_feedback(Feedback(bob_message.id, rating="up"))
    await store.escalate(alice_rest.id, Escalation("negative_message", 2.0, "angry", {"n": 0.9}))
    await store.escalate(bob.id, Escalation("asked_for_human", 1.0, "asked", {}))
    async with store.writing("label and note") as session:
        session.add(
            ConversationNoteRow(
                conversation_id=alice_rest.id, author="ann", text=NOTE, created_at=now
            )
        )
        session.add(
            ConversationNoteRow(
                conversation_id=bob.id, author="ann", text="bob note", created_at=now
            )
        )
        session.add(
            ConversationLabelRow(
                conversation_id=alice_widget.id, sentiment="negative", author="ann", created_at=now
            )
        )
        session.add(
            ApprovedAnswerRow(
                question=ALICE_TEXTS[0],
                answer="sorry to hear that",
                conversation_id=alice_rest.id,
                question_message_id=first.id,
                answer_message_id=reply.id,
                author="ann",
                created_at=now,
            )
        )
    return Seeded(alice_rest.id, alice_widget.id, bob.id)


async def table_counts(store: SqlConversationStore) -> dict[str, int]:
    async with store.reading("count") as session:
        return {
            table.__tablename__: int(
                await session.scalar(select(func.count()).select_from(table)) or 0
            )
            for table in CUSTOMER_TABLES
        }


async def rows_mentioning(store: SqlConversationStore, needles: tuple[str, ...]) -> list[str]:
    """Every text column of every customer table searched for the needles."""
    found: list[str] = []
    async with store.reading("search") as session:
        for table in (*CUSTOMER_TABLES, ErasureRow):
            columns = [
                cast(column, Text)
                for column in table.__table__.columns
                if column.key not in ("id", "created_at", "updated_at")
            ]
            condition = or_(*(c.contains(n) for c in columns for n in needles))
            rows = (await session.scalars(select(table).where(condition))).all()
            found += [f"{table.__tablename__} {row}" for row in rows]
    return found


async def test_export_holds_every_stored_row_of_the_sender(store: SqlConversationStore) -> None:
    seeded = await seed(store)
    privacy = SqlPrivacyStore(store)

    data = await privacy.export(Customer(sender="alice"))

    tables = data.tables
    assert [c["id"] for c in tables["conversations"]] == sorted(
        [seeded.alice_rest, seeded.alice_widget]
    )
    assert {m["text"] for m in tables["messages"]} == {*ALICE_TEXTS, "sorry to hear that"}
    annotated = next(m for m in tables["messages"] if m["text"] == ALICE_TEXTS[0])
    assert annotated["intent"] == "billing"
    assert annotated["details"] == {"entities": ["CARD"]}
    assert [(f["rating"], f["corrected_intent"]) for f in tables["feedback"]] == [
        ("down", None),
        (None, "refund"),
    ]
    assert [e["reason"] for e in tables["escalations"]] == ["negative_message"]
    assert [n["text"] for n in tables["conversation_notes"]] == [NOTE]
    assert [label["sentiment"] for label in tables["conversation_labels"]] == ["negative"]
    assert [a["question"] for a in tables["approved_answers"]] == [ALICE_TEXTS[0]]
    # Round trip: every column of every row, and exactly the rows the store holds of her.
    async with store.reading("compare") as session:
        for table in CUSTOMER_TABLES:
            exported = tables[table.__tablename__]
            for row in exported:
                stored = await session.get(table, row["id"])
                assert stored is not None
                assert row == {c.key: getattr(stored, c.key) for c in table.__table__.columns}
    assert BOB_TEXT not in str(data.to_json())
    document = data.to_json()
    assert document["customer"] == {"sender": "alice", "channel": None, "conversation": None}
    assert document["messages"][0]["created_at"].startswith("20")

    one = await privacy.export(Customer(sender="alice", channel="widget"))
    assert [m["text"] for m in one.tables["messages"]] == [ALICE_TEXTS[1]]
    by_id = await privacy.export(Customer(conversation_id=seeded.alice_widget))
    assert by_id.tables == one.tables


async def test_erase_removes_the_customer_everywhere_and_nobody_else(
    store: SqlConversationStore,
) -> None:
    await seed(store)
    privacy = SqlPrivacyStore(store)
    before = await table_counts(store)
    bob_before = await privacy.export(Customer(sender="bob"))

    dry = await privacy.erase(Customer(sender="alice"), "dpo", dry_run=True)
    assert await table_counts(store) == before
    assert await privacy.erasures() == []

    erasure = await privacy.erase(Customer(sender="alice"), "dpo")

    expected = {
        "feedback": 2,
        "approved_answers": 1,
        "conversation_labels": 1,
        "conversation_notes": 1,
        "escalations": 1,
        "messages": 3,
        "conversations": 2,
    }
    assert dict(dry.counts) == dict(erasure.counts) == expected
    assert erasure.texts == frozenset(ALICE_TEXTS) == dry.texts
    after = await table_counts(store)
    assert {t: before[t] - after[t] for t in before} == expected
    assert await rows_mentioning(store, (*ALICE_TEXTS, NOTE, "alice")) == []
    assert (await privacy.export(Customer(sender="bob"))).tables == bob_before.tables
    [record] = await privacy.erasures()
    assert record.erased_by == "dpo" and record.counts == expected
    with pytest.raises(NotFoundError, match="sender 'alice' on every channel"):
        await privacy.export(Customer(sender="alice"))


async def test_erase_of_one_channel_keeps_the_other(store: SqlConversationStore) -> None:
    seeded = await seed(store)
    privacy = SqlPrivacyStore(store)

    erasure = await privacy.erase(Customer(sender="alice", channel="rest"), "dpo")

    assert erasure.texts == {ALICE_TEXTS[0]}
    left = await privacy.export(Customer(sender="alice"))
    assert [c["id"] for c in left.tables["conversations"]] == [seeded.alice_widget]
    assert [m["text"] for m in left.tables["messages"]] == [ALICE_TEXTS[1]]


def test_a_customer_is_a_sender_or_a_conversation() -> None:
    with pytest.raises(BadRequestError, match="either by sender"):
        Customer()
    with pytest.raises(BadRequestError, match="either by sender"):
        Customer(sender="a", conversation_id="c")
    with pytest.raises(BadRequestError, match="--channel narrows --sender"):
        Customer(channel="rest", conversation_id="c")
