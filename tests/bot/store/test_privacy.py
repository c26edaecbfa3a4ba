"""Export, erasure and retention purge of customer data on a real SQLite file and a real
PostgreSQL server: the export holds every stored row, the erasure leaves none (not even in
the SQLite file's bytes) and touches nobody else, the purge removes old conversations in
batches once across replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Text, cast, func, or_, select, update
from sqlalchemy.engine import make_url

from bot.core.errors import BadRequestError, NotFoundError
from bot.core.records import Escalation, Feedback, Role
from bot.store.conversations import SqlConversationStore
from bot.store.desk import SqlDeskStore
from bot.store.lease import SqlLease
from bot.store.privacy import (
    CUSTOMER_TABLES,
    PURGE_LEASE,
    RETENTION,
    Customer,
    RetentionPurge,
    SqlPrivacyStore,
)
from bot.store.schema import (
    AnswerControlRow,
    ApprovedAnswerRow,
    Base,
    ConversationLabelRow,
    ConversationNoteRow,
    ConversationRow,
    ErasureRow,
    MessageRow,
)
from tests.fakes.clock import ManualClock

EMAIL = "ada.lovelace@example.org"
PHONE = "+44 20 7946 0958"
ALICE_TEXTS = (
    "my card [CARD] was charged twice",
    f"still waiting for the refund of A-1234, write to {EMAIL} or call {PHONE}",
)
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
    alice_rest = await store.conversation("rest", "alice", sender_name="Alice Lovelace")
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
        "answer_controls": 0,
    }
    assert dict(dry.counts) == dict(erasure.counts) == expected
    assert erasure.texts == frozenset(ALICE_TEXTS) == dry.texts
    after = await table_counts(store)
    assert {t: before[t] - after[t] for t in before} == {
        t: n for t, n in expected.items() if t != "answer_controls"
    }
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


async def every_stored_value(store: SqlConversationStore) -> str:
    """Every value of every table of the schema, as text (what a SELECT can still see)."""
    values: list[str] = []
    async with store.reading("dump") as session:
        for table in Base.metadata.sorted_tables:
            rows = (await session.execute(select(table))).all()
            values += [str(value) for row in rows for value in row]
    return "\n".join(values)


def database_bytes(url: str) -> bytes:
    """SQLite: the database file and its write-ahead log, byte for byte."""
    path = Path(make_url(url).database or "")
    return b"".join(
        p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
    )


async def test_erased_data_is_gone_from_the_tables_and_the_sqlite_file(
    store: SqlConversationStore, database_url: str
) -> None:
    await seed(store)
    privacy = SqlPrivacyStore(store)
    needles = (*ALICE_TEXTS, NOTE, EMAIL, PHONE, "Alice Lovelace")
    sqlite = database_url.startswith("sqlite")
    if sqlite:
        assert await privacy.checkpoint()
        on_disk = database_bytes(database_url)
        assert all(n.encode() in on_disk for n in needles)  # the search does find them

    erasure = await privacy.erase(Customer(sender="alice"), "dpo")

    assert erasure.checkpointed
    assert erasure.answers == {"sorry to hear that"}  # the approved answer's text
    assert len(erasure.approved) == 1
    dumped = await every_stored_value(store)
    assert [n for n in needles if n in dumped] == []
    assert BOB_TEXT in dumped  # the dump does see the rows that are left
    if sqlite:
        on_disk = database_bytes(database_url)
        assert [n for n in needles if n.encode() in on_disk] == []
        assert BOB_TEXT.encode() in on_disk


async def backdate(store: SqlConversationStore, clock: ManualClock, days: float) -> str:
    """A conversation whose last message is `days` old (made with the clock set back)."""
    clock.advance(days=-days)
    try:
        conversation = await store.conversation("rest", f"old-{days}-{clock().timestamp()}")
        first, _ = await store.add_customer_message(conversation.id, f"old question {days}")
        reply = await store.add_message(conversation.id, Role.BOT, "old answer", reply_to=first.id)
        await store.record_feedback(Feedback(reply.id, rating="up"))
        await store.escalate(conversation.id, Escalation("asked_for_human", 1.0, "asked", {}))
    finally:
        clock.advance(days=days)
    return conversation.id


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 12, 7, 4, 0, tzinfo=UTC))


@pytest.fixture
async def clocked(database_url: str, clock: ManualClock) -> AsyncIterator[SqlConversationStore]:
    store = SqlConversationStore(database_url, clock=clock)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


async def test_purge_removes_old_conversations_in_batches_with_one_record(
    clocked: SqlConversationStore, clock: ManualClock
) -> None:
    old = [await backdate(clocked, clock, days) for days in (400, 200, 31)]
    async with clocked.writing("approve") as session:
        # An agent saved the reviewed pair as the team's answer: it outlives the conversation.
        session.add(
            ApprovedAnswerRow(
                question="how long does a refund take?",
                answer="5-7 business days after we receive the return.",
                conversation_id=old[0],
                author="ann",
                created_at=clock(),
            )
        )
    await seed(clocked)  # today: kept
    recent = await backdate(clocked, clock, 29)
    privacy = SqlPrivacyStore(clocked)
    before = await table_counts(clocked)
    cutoff = clock() - timedelta(days=30)

    dry = await privacy.purge(cutoff, dry_run=True)
    assert await table_counts(clocked) == before
    expected = {
        "feedback": 3,
        "approved_answers": 0,
        "conversation_labels": 0,
        "conversation_notes": 0,
        "escalations": 3,
        "messages": 6,
        "conversations": 3,
    }
    assert dict(dry.counts) == expected and dry.conversations == 3

    purge = await privacy.purge(cutoff, batch_size=2)

    assert dict(purge.counts) == expected
    assert purge.batches == 2 and purge.complete and purge.checkpointed
    after = await table_counts(clocked)
    assert {t: before[t] - after[t] for t in before} == expected
    async with clocked.reading("left") as session:
        left = set((await session.scalars(select(ConversationRow.id))).all())
    assert not left & set(old) and recent in left and len(left) == 4
    [record] = await privacy.erasures()
    assert record.id == purge.erasure_id
    assert record.erased_by == RETENTION and record.counts == expected
    dumped = await every_stored_value(clocked)
    assert [d for d in (400, 200, 31) if f"old question {d}" in dumped] == []
    assert "old question 29" in dumped

    async with clocked.reading("approved") as session:
        kept = (
            await session.scalars(
                select(ApprovedAnswerRow).where(ApprovedAnswerRow.author == "ann")
            )
        ).all()
    by_question = {row.question: row.conversation_id for row in kept}
    assert by_question["how long does a refund take?"] is None  # kept, unlinked
    again = await privacy.purge(cutoff)
    assert again.batches == 0 and again.erasure_id is None
    assert len(await privacy.erasures()) == 1
    with pytest.raises(BadRequestError, match="batch_size must be 1 or more"):
        await privacy.purge(cutoff, batch_size=0)


async def test_a_lease_has_one_holder_until_it_expires(
    database_url: str, clock: ManualClock
) -> None:
    stores = [SqlConversationStore(database_url, clock=clock) for _ in range(4)]
    for store in stores:
        await store.start()
    try:
        leases = [SqlLease(store, PURGE_LEASE, f"replica-{i}") for i, store in enumerate(stores)]
        ttl = timedelta(minutes=60)
        taken = await asyncio.gather(*(lease.acquire(ttl) for lease in leases))
        assert sorted(taken) == [False, False, False, True]
        winner = leases[taken.index(True)]
        other = leases[(taken.index(True) + 1) % 4]
        assert await other.holder_now() == winner.holder
        clock.advance(minutes=59)
        assert await winner.acquire(ttl)  # renewed: another hour
        clock.advance(minutes=59)
        assert not await other.acquire(ttl)
        clock.advance(minutes=2)  # expired: the holder died
        assert await other.holder_now() is None
        assert await other.acquire(ttl)
        assert not await winner.acquire(ttl)
    finally:
        for store in stores:
            await store.stop()


async def test_scheduled_purge_runs_on_one_replica_per_interval(
    database_url: str, clock: ManualClock
) -> None:
    replicas = [SqlConversationStore(database_url, clock=clock) for _ in range(2)]
    for store in replicas:
        await store.start()
    try:
        old = await backdate(replicas[0], clock, 100)
        kept = await backdate(replicas[0], clock, 10)
        purges = [
            RetentionPurge(
                SqlPrivacyStore(store),
                SqlLease(store, PURGE_LEASE, f"replica-{i}"),
                retention_days=30,
                interval_s=3600,
            )
            for i, store in enumerate(replicas)
        ]
        done = await asyncio.gather(*(p.purge_once() for p in purges))
        [purge] = [d for d in done if d is not None]  # the other replica skipped
        assert purge.conversations == 1
        privacy = SqlPrivacyStore(replicas[1])
        with pytest.raises(NotFoundError):
            await privacy.export(Customer(conversation_id=old))
        assert (await privacy.export(Customer(conversation_id=kept))).tables["messages"]
        clock.advance(days=25)  # `kept` is 35 days old now, and the lease has expired
        loser = purges[[d is None for d in done].index(True)]
        later = await loser.purge_once()
        assert later is not None and later.conversations == 1
        assert [r.erased_by for r in await privacy.erasures()] == [RETENTION, RETENTION]
    finally:
        for store in replicas:
            await store.stop()


async def test_the_schedule_starts_purging_at_once_and_stops(
    clocked: SqlConversationStore, clock: ManualClock
) -> None:
    old = await backdate(clocked, clock, 100)
    privacy = SqlPrivacyStore(clocked)
    schedule = RetentionPurge(
        privacy, SqlLease(clocked, PURGE_LEASE, "me"), retention_days=30, interval_s=0.05
    )
    await schedule.start()
    try:
        async with asyncio.timeout(10):
            while schedule.last is None or not schedule.last.batches:
                await asyncio.sleep(0.02)
    finally:
        await schedule.stop()
    assert [t for t in asyncio.all_tasks() if t.get_name() == "retention-purge"] == []
    with pytest.raises(NotFoundError):
        await privacy.export(Customer(conversation_id=old))
    with pytest.raises(BadRequestError, match="retention_days >= 1"):
        RetentionPurge(privacy, SqlLease(clocked, PURGE_LEASE, "me"), 0, 10)


async def test_erase_takes_the_answer_library_decisions_about_the_customer_with_it(
    store: SqlConversationStore,
) -> None:
    """An agent's edit of a pair made from the customer's question is an approved answer of
    its own, not linked to their conversation: the erasure finds it through the answer
    library's decision and removes both; decisions about other pairs stay."""
    await seed(store)
    desk = SqlDeskStore(store)
    async with store.reading("approved") as session:
        alices = await session.scalar(select(ApprovedAnswerRow.id))
    assert alices is not None
    edit = await desk.edit_answer(
        f"store:approved_answers:{alices}",
        ALICE_TEXTS[0],
        "Sorry Alice, A-1234 was charged twice: the second charge is released in 3 days.",
        None,
        "ann",
    )
    assert edit.approved_answer_id is not None and edit.approved_answer_id != alices
    await desk.disable_answer("logs.jsonl:7", True, "ann", question=BOB_TEXT)
    # Read (and remembered, as the service reads them) before the erasure: it must forget them.
    assert len(await desk.answer_controls()) == 2
    privacy = SqlPrivacyStore(store)

    dry = await privacy.erase(Customer(sender="alice"), "dpo", dry_run=True)
    assert dry.counts["answer_controls"] == 1
    assert dry.counts["approved_answers"] == 2
    erasure = await privacy.erase(Customer(sender="alice"), "dpo")

    assert erasure.approved == frozenset({alices, edit.approved_answer_id})
    assert any("A-1234 was charged twice" in answer for answer in erasure.answers)
    assert [c.source for c in await desk.answer_controls()] == ["logs.jsonl:7"]
    async with store.reading("left") as session:
        assert (await session.scalars(select(ApprovedAnswerRow))).all() == []
        texts = (await session.scalars(select(AnswerControlRow.question))).all()
    assert texts == [BOB_TEXT]
