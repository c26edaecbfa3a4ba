"""SqlConversationStore on a real SQLite file and a real PostgreSQL server.

Each PostgreSQL test gets a role and a schema of its own in the database `test`, dropped
afterwards; the PostgreSQL half is skipped, with the reason, only when no server answers at
127.0.0.1:5432. Two stores on one database stand in for two replicas (separate connection pools).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.engine import make_url

from bot.core.errors import (
    BadRequestError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    StoreUnavailableError,
)
from bot.core.ports import ConversationStore
from bot.core.records import (
    ConversationStatus,
    Escalation,
    Feedback,
    Role,
    Route,
)
from bot.store.conversations import SqlConversationStore
from bot.store.engine import MIGRATIONS_DIR, create_store_engine, normalize_url
from bot.store.schema import Base, UTCDateTime
from tests.helpers import angry, understanding

T = TypeVar("T")

UNREACHABLE_PG = "postgresql+asyncpg://postgres@127.0.0.1:1/x"


@pytest.fixture
async def open_store(
    database_url: str,
) -> AsyncIterator[Callable[[], Awaitable[SqlConversationStore]]]:
    """Start stores on the test database (one per replica); all are stopped afterwards."""
    stores: list[SqlConversationStore] = []

    async def start() -> SqlConversationStore:
        store = SqlConversationStore(database_url, timeout=5)
        stores.append(store)
        await store.start()
        return store

    yield start
    for store in stores:
        await store.stop()


@pytest.fixture
async def store(open_store: Callable[[], Awaitable[SqlConversationStore]]) -> SqlConversationStore:
    return await open_store()


async def gather_results(*calls: Awaitable[T]) -> list[T | BaseException]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


def test_the_store_implements_the_port(tmp_path: Path) -> None:
    # mypy checks every method's signature against the Protocol on this assignment.
    store: ConversationStore = SqlConversationStore(f"sqlite:///{tmp_path / 'bot.db'}")
    assert store is not None


# -- conversations ---------------------------------------------------------------------------


async def test_first_contact_creates_a_conversation_that_later_contacts_find(
    store: SqlConversationStore,
) -> None:
    first = await store.conversation("telegram", "42", "Ann")
    again = await store.conversation("telegram", "42")
    other_channel = await store.conversation("widget", "42")

    assert again == first
    assert other_channel.id != first.id
    assert len(first.id) == 32 and int(first.id, 16) >= 0
    assert first.status is ConversationStatus.BOT
    assert (first.failed_turns, first.assignee, first.sender_name) == (0, None, "Ann")
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)
    assert abs(first.created_at - first.updated_at) < timedelta(seconds=1)
    assert await store.get_conversation(first.id) == first


async def test_concurrent_first_contacts_create_one_conversation(
    open_store: Callable[[], Awaitable[SqlConversationStore]],
) -> None:
    replica_a, replica_b = await open_store(), await open_store()
    results = await asyncio.gather(
        *(replica.conversation("widget", "session-1") for replica in [replica_a, replica_b] * 5)
    )
    assert len({conversation.id for conversation in results}) == 1


async def test_conversation_ids_are_remembered_but_renames_still_reach_the_database(
    open_store: Callable[[], Awaitable[SqlConversationStore]],
) -> None:
    store, replica = await open_store(), await open_store()
    first = await store.conversation_id("telegram", "42", "Ann")
    assert await store.conversation_id("telegram", "42") == first
    assert await store.conversation_id("telegram", "42", "Ann") == first
    assert await store.conversation_id("telegram", "43") != first
    assert await replica.conversation_id("telegram", "42") == first
    assert await store.conversation_id("telegram", "42", "Ann B.") == first
    assert (await replica.get_conversation(first)).sender_name == "Ann B."


async def test_a_new_sender_name_replaces_the_stored_one(store: SqlConversationStore) -> None:
    created = await store.conversation("telegram", "7", "Ann")
    renamed = await store.conversation("telegram", "7", "Ann B.")
    unchanged = await store.conversation("telegram", "7")
    assert renamed.id == created.id
    assert renamed.sender_name == unchanged.sender_name == "Ann B."
    assert renamed.updated_at >= created.updated_at


async def test_a_conversation_needs_a_channel_and_a_sender(store: SqlConversationStore) -> None:
    with pytest.raises(BadRequestError, match="channel and a sender"):
        await store.conversation("rest", "")
    with pytest.raises(BadRequestError, match="channel and a sender"):
        await store.conversation("", "42")


async def test_unknown_conversation_ids_are_not_found(store: SqlConversationStore) -> None:
    missing = "0" * 32
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get_conversation(missing),
        lambda: store.transcript(missing),
        lambda: store.add_customer_message(missing, "hi"),
        lambda: store.add_message(missing, Role.BOT, "hello"),
        lambda: store.set_failed_turns(missing, 1),
        lambda: store.escalate(missing, angry()),
        lambda: store.claim(missing, "agent-a"),
        lambda: store.resolve(missing, "agent-a"),
    ]
    for call in calls:
        with pytest.raises(NotFoundError, match=missing):
            await call()


async def test_failed_turns_are_recorded(store: SqlConversationStore) -> None:
    conversation = await store.conversation("rest", "u1")
    await store.set_failed_turns(conversation.id, 2)
    assert (await store.get_conversation(conversation.id)).failed_turns == 2
    with pytest.raises(BadRequestError, match="negative"):
        await store.set_failed_turns(conversation.id, -1)


# -- messages --------------------------------------------------------------------------------


async def test_a_retried_delivery_returns_the_message_stored_first(
    store: SqlConversationStore,
) -> None:
    conversation = await store.conversation("telegram", "42")
    first, first_new = await store.add_customer_message(
        conversation.id, "where is my refund", "m-1"
    )
    again, again_new = await store.add_customer_message(
        conversation.id, "where is my refund", "m-1"
    )
    other, other_new = await store.add_customer_message(conversation.id, "hello?", "m-2")
    no_id_1, _ = await store.add_customer_message(conversation.id, "hello?")
    no_id_2, no_id_new = await store.add_customer_message(conversation.id, "hello?")

    assert (first_new, again_new, other_new, no_id_new) == (True, False, True, True)
    assert again == first
    assert first.role is Role.CUSTOMER and first.client_id == "m-1"
    assert len({first.id, other.id, no_id_1.id, no_id_2.id}) == 4
    assert [m.id for m in await store.transcript(conversation.id)] == [
        first.id,
        other.id,
        no_id_1.id,
        no_id_2.id,
    ]
    # A client id is only unique within its conversation (chat ids repeat across chats).
    elsewhere = await store.conversation("telegram", "43")
    _, elsewhere_new = await store.add_customer_message(elsewhere.id, "hi", "m-1")
    assert elsewhere_new is True


async def test_concurrent_retried_deliveries_store_one_message(
    open_store: Callable[[], Awaitable[SqlConversationStore]],
) -> None:
    replica_a, replica_b = await open_store(), await open_store()
    conversation = await replica_a.conversation("telegram", "42")
    results = await asyncio.gather(
        *(
            replica.add_customer_message(conversation.id, "where is my refund", "update-99")
            for replica in [replica_a, replica_b] * 4
        )
    )
    assert sorted(new for _, new in results) == [False] * 7 + [True]
    assert len({message.id for message, _ in results}) == 1
    assert len(await replica_b.transcript(conversation.id)) == 1


async def test_transcript_is_oldest_first_and_limit_keeps_the_latest(
    store: SqlConversationStore,
) -> None:
    conversation = await store.conversation("rest", "u1")
    other = await store.conversation("rest", "u2")
    await store.add_customer_message(other.id, "not in this conversation")
    texts = [f"message {i}" for i in range(6)]
    for i, line in enumerate(texts):
        if i % 2:
            await store.add_message(conversation.id, Role.BOT, line)
        else:
            await store.add_customer_message(conversation.id, line)

    full = await store.transcript(conversation.id)
    assert [m.text for m in full] == texts
    assert [m.role for m in full] == [Role.CUSTOMER, Role.BOT] * 3
    assert [m.created_at for m in full] == sorted(m.created_at for m in full)
    assert [m.text for m in await store.transcript(conversation.id, limit=2)] == texts[-2:]
    assert await store.transcript(conversation.id, limit=0) == []
    assert len(await store.transcript(conversation.id, limit=100)) == 6
    with pytest.raises(BadRequestError, match="limit"):
        await store.transcript(conversation.id, limit=-1)


async def test_annotate_stores_model_output_route_and_latency(store: SqlConversationStore) -> None:
    conversation = await store.conversation("rest", "u1")
    message, _ = await store.add_customer_message(conversation.id, "still no refund!!")
    # Model output arrives as numpy scalars; the store must bind them as plain floats.
    seen = understanding(intent_confidence=np.float32(0.91), negativity=np.float32(0.625))
    await store.annotate(
        message.id, seen, Route.ANSWER, np.float64(12.5), details={"answer_score": 0.8}
    )

    (stored,) = await store.transcript(conversation.id)
    assert stored.intent == "refund_status"
    assert stored.intent_confidence == pytest.approx(0.91, abs=1e-6)
    assert (stored.sentiment, stored.negativity) == ("negative", 0.625)
    assert stored.route == "answer"
    assert stored.model_versions == {"intent": "v3", "sentiment": "v1"}
    assert stored.latency_ms == 12.5
    assert stored.details == {"answer_score": 0.8}
    assert (stored.id, stored.text, stored.created_at) == (
        message.id,
        message.text,
        message.created_at,
    )

    # Annotating again (e.g. after a hand-off) replaces the model output; details=None keeps them.
    await store.annotate(message.id, understanding(intent=None), Route.HANDOFF, 3.0)
    (again,) = await store.transcript(conversation.id)
    assert (again.intent, again.route, again.details) == (None, "handoff", {"answer_score": 0.8})

    with pytest.raises(NotFoundError, match="message 999999"):
        await store.annotate(999_999, seen, Route.ANSWER, 1.0)


async def test_replies_are_found_by_the_message_they_answer(store: SqlConversationStore) -> None:
    conversation = await store.conversation("widget", "s1")
    question, _ = await store.add_customer_message(conversation.id, "where is my order", "c-1")
    answer = await store.add_message(
        conversation.id,
        Role.BOT,
        "It ships tomorrow.",
        reply_to=question.id,
        route=Route.ANSWER,
        details={"source": "faq"},
    )
    follow_up = await store.add_message(
        conversation.id, Role.SYSTEM, "Rate this answer", reply_to=question.id
    )
    await store.add_message(conversation.id, Role.AGENT, "Hi, Sam here.")

    replies = await store.replies_to(question.id)
    assert [r.id for r in replies] == [answer.id, follow_up.id]
    assert (answer.role, answer.route, answer.details) == (Role.BOT, "answer", {"source": "faq"})
    assert replies[0] == answer
    assert await store.replies_to(answer.id) == []
    assert await store.replies_to(999_999) == []

    with pytest.raises(NotFoundError, match="message 999999"):
        await store.add_message(conversation.id, Role.BOT, "?", reply_to=999_999)
    elsewhere = await store.conversation("widget", "s2")
    with pytest.raises(BadRequestError, match="another conversation|belongs to conversation"):
        await store.add_message(elsewhere.id, Role.BOT, "?", reply_to=question.id)
    with pytest.raises(BadRequestError, match="role"):
        await store.add_message(conversation.id, "robot", "?")  # type: ignore[arg-type]


# -- escalations -----------------------------------------------------------------------------


async def test_escalation_lifecycle(store: SqlConversationStore) -> None:
    conversation = await store.conversation("telegram", "42")
    await store.set_failed_turns(conversation.id, 2)

    opened = await store.escalate(conversation.id, angry(0.8))
    assert (opened.status, opened.assignee, opened.resolved_at) == ("open", None, None)
    assert (opened.reason, opened.priority, opened.scores) == (
        "negative_message",
        0.8,
        {"negativity": 0.8},
    )
    assert opened.created_at.utcoffset() == timedelta(0)
    assert (await store.get_conversation(conversation.id)).status is ConversationStatus.WAITING
    # Escalating again while one is open opens no second one: a more urgent one raises the
    # priority (the queue reorders), a calmer one changes nothing.
    raised = await store.escalate(conversation.id, angry(0.99))
    assert (raised.id, raised.reason, raised.priority) == (opened.id, opened.reason, 0.99)
    assert await store.escalate(conversation.id, angry(0.5)) == raised
    assert await store.open_escalations() == [raised]

    claimed = await store.claim(conversation.id, "agent-a")
    assert (claimed.id, claimed.status, claimed.assignee) == (opened.id, "claimed", "agent-a")
    waiting = await store.get_conversation(conversation.id)
    assert (waiting.status, waiting.assignee) == (ConversationStatus.CLAIMED, "agent-a")
    assert await store.claim(conversation.id, "agent-a") == claimed
    with pytest.raises(ConflictError, match="agent-a"):
        await store.claim(conversation.id, "agent-b")
    assert await store.escalate(conversation.id, angry()) == claimed
    assert await store.open_escalations() == [claimed]

    await store.resolve(conversation.id, "agent-a")
    back = await store.get_conversation(conversation.id)
    assert (back.status, back.assignee, back.failed_turns) == (ConversationStatus.BOT, None, 0)
    assert await store.open_escalations() == []
    with pytest.raises(NotFoundError, match="no open escalation"):
        await store.claim(conversation.id, "agent-b")
    with pytest.raises(NotFoundError, match="no open escalation"):
        await store.resolve(conversation.id, "agent-a")

    # A later escalation of the same conversation is a new one.
    reopened = await store.escalate(conversation.id, angry(0.5))
    assert reopened.id != opened.id and reopened.status == "open"
    await store.claim(conversation.id, "agent-b")


async def test_escalation_input_is_checked(store: SqlConversationStore) -> None:
    conversation = await store.conversation("rest", "u1")
    with pytest.raises(BadRequestError, match="finite"):
        await store.escalate(conversation.id, angry(float("nan")))
    with pytest.raises(NotFoundError):
        await store.claim(conversation.id, "agent-a")
    await store.escalate(conversation.id, angry())
    with pytest.raises(BadRequestError, match="agent"):
        await store.claim(conversation.id, "")


async def test_concurrent_escalations_open_one(
    open_store: Callable[[], Awaitable[SqlConversationStore]],
) -> None:
    replica_a, replica_b = await open_store(), await open_store()
    conversation = await replica_a.conversation("telegram", "42")
    records = await asyncio.gather(
        *(replica.escalate(conversation.id, angry()) for replica in [replica_a, replica_b] * 4)
    )
    assert len({record.id for record in records}) == 1
    assert len(await replica_b.open_escalations()) == 1


async def test_concurrent_claims_let_one_agent_win(
    open_store: Callable[[], Awaitable[SqlConversationStore]],
) -> None:
    replica_a, replica_b = await open_store(), await open_store()
    conversation = await replica_a.conversation("telegram", "42")
    await replica_a.escalate(conversation.id, angry())
    results = await gather_results(
        replica_a.claim(conversation.id, "agent-a"), replica_b.claim(conversation.id, "agent-b")
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1
    assert isinstance(losers[0], ConflictError)
    holder = (await replica_b.get_conversation(conversation.id)).assignee
    assert holder == winners[0].assignee


async def test_an_agent_reply_needs_the_claim_at_the_moment_it_is_stored(
    store: SqlConversationStore,
) -> None:
    conversation = await store.conversation("widget", "s1")
    await store.escalate(conversation.id, angry())
    with pytest.raises(ConflictError, match="claim it first"):
        await store.add_message(conversation.id, Role.AGENT, "hi", claimed_by="agent-a")
    await store.claim(conversation.id, "agent-a")
    stored = await store.add_message(conversation.id, Role.AGENT, "hi", claimed_by="agent-a")
    with pytest.raises(ConflictError, match="claimed by agent-a"):
        await store.add_message(conversation.id, Role.AGENT, "me too", claimed_by="agent-b")
    await store.resolve(conversation.id, "agent-a")
    with pytest.raises(ConflictError, match="claim it first"):
        await store.add_message(conversation.id, Role.AGENT, "late", claimed_by="agent-a")
    texts = [m.text for m in await store.transcript(conversation.id)]
    assert texts == ["hi"] and stored.text == "hi"


async def test_open_escalations_are_most_urgent_first_then_oldest(
    store: SqlConversationStore,
) -> None:
    ids = {}
    for sender, priority in [("a", 0.5), ("b", 0.9), ("c", 0.5), ("d", 0.7), ("e", 0.95)]:
        conversation = await store.conversation("rest", sender)
        ids[sender] = conversation.id
        await store.escalate(conversation.id, angry(priority))
    await store.claim(ids["d"], "agent-a")  # claimed is still unresolved
    await store.resolve(ids["e"], "agent-a")  # resolved is gone from the queue

    queue = await store.open_escalations()
    assert [record.conversation_id for record in queue] == [ids[s] for s in "bdac"]
    assert [record.status for record in queue] == ["open", "claimed", "open", "open"]


# -- feedback --------------------------------------------------------------------------------


async def test_feedback_is_stored_oldest_first(store: SqlConversationStore) -> None:
    conversation = await store.conversation("widget", "s1")
    reply = await store.add_message(conversation.id, Role.BOT, "It ships tomorrow.")
    thumbs_down = Feedback(reply.id, rating="down", comment="wrong order")
    correction = Feedback(
        reply.id, corrected_intent="order_status", corrected_sentiment="neutral", author="agent-a"
    )
    first_id = await store.record_feedback(thumbs_down)
    second_id = await store.record_feedback(correction)

    assert isinstance(first_id, int) and second_id != first_id
    assert await store.feedback(reply.id) == [thumbs_down, correction]
    assert await store.feedback(999_999) == []


async def test_invalid_feedback_is_refused(store: SqlConversationStore) -> None:
    conversation = await store.conversation("widget", "s1")
    reply = await store.add_message(conversation.id, Role.BOT, "Hello!")
    with pytest.raises(BadRequestError, match="rating"):
        await store.record_feedback(Feedback(reply.id, rating="meh"))
    with pytest.raises(BadRequestError, match="carries nothing"):
        await store.record_feedback(Feedback(reply.id))
    with pytest.raises(NotFoundError, match="message 987654"):
        await store.record_feedback(Feedback(987_654, rating="up"))
    assert await store.feedback(reply.id) == []


# -- durability and migrations ---------------------------------------------------------------


async def test_everything_survives_a_restart(database_url: str) -> None:
    store = SqlConversationStore(database_url)
    await store.start()
    conversation = await store.conversation("telegram", "42", "Ann")
    question, _ = await store.add_customer_message(conversation.id, "refund?", "m-1")
    await store.annotate(question.id, understanding(), Route.HANDOFF, 8.0, {"why": "angry"})
    answer = await store.add_message(conversation.id, Role.BOT, "One moment.", reply_to=question.id)
    await store.escalate(conversation.id, angry())
    claimed = await store.claim(conversation.id, "agent-a")
    await store.record_feedback(Feedback(answer.id, rating="up"))
    before = (
        await store.get_conversation(conversation.id),
        await store.transcript(conversation.id),
        await store.open_escalations(),
        await store.feedback(answer.id),
    )
    await store.stop()

    restarted = SqlConversationStore(database_url)
    await restarted.start()
    try:
        after = (
            await restarted.get_conversation(conversation.id),
            await restarted.transcript(conversation.id),
            await restarted.open_escalations(),
            await restarted.feedback(answer.id),
        )
        assert after == before
        assert after[2] == [claimed]
        assert after[1][0].details == {"why": "angry"}
        _, new = await restarted.add_customer_message(conversation.id, "refund?", "m-1")
        assert new is False
    finally:
        await restarted.stop()


def migration_head() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    return ScriptDirectory.from_config(config).get_current_head()


def schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_are_idempotent_and_match_the_models(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alembic")
    store = SqlConversationStore(database_url)
    await store.start()
    await store.conversation("rest", "kept")
    await store.stop()
    await store.start()  # the same instance, restarted
    await store.stop()
    again = SqlConversationStore(database_url)
    await again.start()  # and a new one on the existing database
    try:
        assert (await again.conversation("rest", "kept")).sender == "kept"
    finally:
        await again.stop()

    upgrades = [r.getMessage() for r in caplog.records if "Running upgrade" in r.getMessage()]
    # Each revision ran once, on the first start only.
    assert [u.split(",")[0] for u in upgrades] == [
        "Running upgrade  -> 0001",
        "Running upgrade 0001 -> 0002",
        "Running upgrade 0002 -> 0003",
        "Running upgrade 0003 -> 0004",
        "Running upgrade 0004 -> 0005",
        "Running upgrade 0005 -> 0006",
        "Running upgrade 0006 -> 0007",
    ], upgrades
    engine = create_store_engine(database_url)
    try:
        async with engine.connect() as connection:
            version = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar_one()
            differences = await connection.run_sync(schema_differences)
    finally:
        await engine.dispose()
    assert version == migration_head() == "0007"
    assert differences == []


async def test_migrations_downgrade_and_upgrade_again(database_url: str) -> None:
    store = SqlConversationStore(database_url)
    await store.start()
    await store.stop()

    def downgrade_to_base(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.set_main_option("path_separator", "os")
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    engine = create_store_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(downgrade_to_base)
            tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
    finally:
        await engine.dispose()
    assert tables == ["alembic_version"]

    await store.start()
    try:
        assert (await store.conversation("rest", "u1")).status is ConversationStatus.BOT
    finally:
        await store.stop()


async def test_replicas_starting_together_on_a_fresh_database(database_url: str) -> None:
    stores = [SqlConversationStore(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(store.start() for store in stores))
        conversations = await asyncio.gather(*(s.conversation("rest", "u1") for s in stores))
        assert len({c.id for c in conversations}) == 1
    finally:
        for store in stores:
            await store.stop()


REPLICA_SCRIPT = """
import asyncio, sys
from bot.store.conversations import SqlConversationStore

async def main(url):
    store = SqlConversationStore(url)
    print("ready", flush=True)
    sys.stdin.readline()  # every replica is loaded: go
    await store.start()
    print((await store.conversation("rest", "u1")).id, flush=True)
    await store.stop()

asyncio.run(main(sys.argv[1]))
"""


async def test_replica_processes_starting_together_on_a_fresh_database(database_url: str) -> None:
    # Separate processes, released together once all are loaded, so only the database can
    # serialise their migrations (PostgreSQL: the advisory lock; SQLite: the write lock).
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            REPLICA_SCRIPT,
            database_url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for process in processes:
        assert process.stdout is not None
        assert await process.stdout.readline() == b"ready\n"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()
    outputs = await asyncio.gather(*(process.communicate() for process in processes))
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()
    assert len({stdout.strip() for stdout, _ in outputs}) == 1


async def test_a_database_migrated_by_a_newer_version_is_refused(database_url: str) -> None:
    store = SqlConversationStore(database_url)
    await store.start()
    await store.stop()
    engine = create_store_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        await engine.dispose()

    newer = SqlConversationStore(database_url)
    try:
        with pytest.raises(ConfigurationError, match="9999"):
            await newer.start()
    finally:
        await newer.stop()


async def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "supportbot.db"
    store = SqlConversationStore(f"sqlite:///{path}", timeout=3)
    await store.start()
    await store.stop()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)

    engine = create_store_engine(f"sqlite:///{path}", timeout=3)
    try:
        async with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert (await pragma("PRAGMA foreign_keys")).scalar_one() == 1
            assert (await pragma("PRAGMA busy_timeout")).scalar_one() == 3000
    finally:
        await engine.dispose()


# -- availability ----------------------------------------------------------------------------


async def test_ping_answers_when_the_database_does(store: SqlConversationStore) -> None:
    await store.ping()


async def test_an_unreachable_database_is_reported_quickly() -> None:
    store = SqlConversationStore(UNREACHABLE_PG, timeout=2)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="127.0.0.1:1") as ping_error:
            await store.ping()
        with pytest.raises(StoreUnavailableError, match="migrate"):
            await store.start()
        assert time.monotonic() - started < 4
        assert ping_error.value.__cause__ is not None  # the driver's error is kept, not swallowed
        with pytest.raises(StoreUnavailableError, match="not started"):
            await store.conversation("rest", "u1")
    finally:
        await store.stop()


async def test_an_unusable_sqlite_path_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = SqlConversationStore(f"sqlite:///{blocker / 'supportbot.db'}")
    try:
        with pytest.raises(StoreUnavailableError, match="directory"):
            await store.start()
        with pytest.raises(StoreUnavailableError, match="unable to open database file"):
            await store.ping()
    finally:
        await store.stop()
        # aiosqlite stops the worker thread of a failed connection through a future nobody
        # awaits; let it finish while this test's event loop is still open.
        for thread in threading.enumerate():
            if thread.name.endswith("(_connection_worker_thread)"):
                thread.join(timeout=5)


async def test_a_store_that_is_not_started_says_so(database_url: str) -> None:
    store = SqlConversationStore(database_url)
    with pytest.raises(StoreUnavailableError, match="not started"):
        await store.get_conversation("x")
    await store.start()
    await store.stop()
    with pytest.raises(StoreUnavailableError, match="not started"):
        await store.open_escalations()


class TcpProxy:
    """Forwards a local port to PostgreSQL; stopping it is an outage as the store sees it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_w, server_w]
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def test_an_outage_after_start_is_reported_and_recovered_from(pg_url: str) -> None:
    proxy = TcpProxy(target_port=5432)
    await proxy.start()
    url = make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False)
    store = SqlConversationStore(url, timeout=2)
    try:
        await store.start()
        before = await store.conversation("rest", "u1")

        await proxy.stop()
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            await store.conversation("rest", "u1")
        with pytest.raises(StoreUnavailableError):
            await store.ping()

        await proxy.start()  # the same port: the database is back
        await store.ping()
        assert await store.conversation("rest", "u1") == before
    finally:
        await store.stop()
        await proxy.stop()


async def wait_until_blocked(raw: asyncpg.Connection) -> None:
    """Return once another session of the same role waits for a lock."""
    for _ in range(250):
        waiting = await raw.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE usename = current_user AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the store never waited for the other transaction")


async def test_writers_that_skip_the_row_lock_are_still_caught_by_constraints(pg_url: str) -> None:
    # Another writer (a tool, an older replica) inserts without locking the conversation row;
    # the store's insert then waits on the unique index and must recognise what it lost to.
    store = SqlConversationStore(pg_url)
    await store.start()
    raw = await asyncpg.connect(
        make_url(pg_url).set(drivername="postgresql").render_as_string(False)
    )
    try:
        conversation = await store.conversation("telegram", "42")

        async with raw.transaction():
            other_id = await raw.fetchval(
                "INSERT INTO messages (conversation_id, role, text, client_id, created_at) "
                "VALUES ($1, 'customer', 'sent by the other writer', 'm-1', now()) RETURNING id",
                conversation.id,
            )
            delivery = asyncio.create_task(
                store.add_customer_message(conversation.id, "sent by the store", "m-1")
            )
            await wait_until_blocked(raw)
        message, new = await delivery
        assert (message.id, message.text, new) == (other_id, "sent by the other writer", False)

        async with raw.transaction():
            other_escalation = await raw.fetchval(
                "INSERT INTO escalations (conversation_id, reason, priority, explanation, "
                "status, created_at) VALUES ($1, 'asked_for_human', 0.3, 'x', 'open', now()) "
                "RETURNING id",
                conversation.id,
            )
            escalating = asyncio.create_task(store.escalate(conversation.id, angry()))
            await wait_until_blocked(raw)
        record = await escalating
        assert (record.id, record.reason) == (other_escalation, "asked_for_human")
    finally:
        await raw.close()
        await store.stop()


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite:///data/bot.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///data/bot.db", "sqlite+aiosqlite"),
        ("postgresql://bot:secret@db:5432/support", "postgresql+asyncpg"),
        ("postgres://bot@db/support", "postgresql+asyncpg"),
        ("postgresql+asyncpg://bot@db/support", "postgresql+asyncpg"),
    ],
)
def test_urls_are_mapped_to_the_async_drivers(given: str, driver: str) -> None:
    url = normalize_url(given)
    assert url.drivername == driver
    assert url.database == make_url(given).database


def test_store_url_hides_the_password() -> None:
    store = SqlConversationStore("postgresql://bot:secret@db:5432/support")
    assert "secret" not in store.url and store.url.startswith("postgresql+asyncpg://bot:")


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("mysql://bot@db/support", "does not support"),
        ("postgresql+psycopg2://bot@db/support", "does not support"),
        ("sqlite://", "in-memory"),
        ("sqlite+aiosqlite:///:memory:", "in-memory"),
        ("not a url", "not a database URL"),
    ],
)
def test_unusable_urls_are_refused(given: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        SqlConversationStore(given)


def test_timestamps_are_stored_as_utc_and_need_a_time_zone() -> None:
    column, dialect = UTCDateTime(), sqlite_dialect()
    berlin = datetime(2025, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert column.process_bind_param(berlin, dialect) == datetime(2025, 1, 1, 12, 0)
    assert column.process_result_value(datetime(2025, 1, 1, 12, 0), dialect) == berlin
    with pytest.raises(ValueError, match="timezone-aware"):
        column.process_bind_param(datetime(2025, 1, 1), dialect)


async def test_record_turn_writes_annotation_reply_failures_and_escalation_together(
    store: SqlConversationStore,
) -> None:
    from bot.core.records import Turn

    conversation = await store.conversation("rest", "turns")
    message, _ = await store.add_customer_message(conversation.id, "this is useless!!")
    seen = understanding(negativity=np.float32(0.97))
    reply = await store.record_turn(
        conversation.id,
        Turn(
            message_id=message.id,
            understanding=seen,
            route=Route.HANDOFF,
            latency_ms=np.float64(8.5),
            details={"reason": "negative_message"},
            reply_text="A person will take over.",
            reply_details={"reason": "negative_message"},
            failed_turns=0,
            escalation=Escalation("negative_message", 2.97, "very negative", {"negativity": 0.97}),
        ),
    )
    assert reply is not None and reply.role == Role.BOT and reply.text == "A person will take over."
    customer, bot = await store.transcript(conversation.id)
    assert (customer.route, customer.latency_ms) == ("handoff", 8.5)
    assert customer.negativity == pytest.approx(0.97)
    assert customer.details == {"reason": "negative_message"}
    assert bot.id == reply.id and [m.id for m in await store.replies_to(message.id)] == [reply.id]
    current = await store.get_conversation(conversation.id)
    assert current.status == ConversationStatus.WAITING
    [escalation] = await store.open_escalations()
    assert escalation.reason == "negative_message" and escalation.priority == 2.97

    # A silent turn (an agent has the conversation) stores no reply and no second escalation.
    later, _ = await store.add_customer_message(conversation.id, "hello?")
    silent = await store.record_turn(
        conversation.id,
        Turn(
            later.id,
            understanding(),
            Route.AGENT,
            1.0,
            failed_turns=2,
            escalation=Escalation("negative_trend", 1.0, "again", {}),
        ),
    )
    assert silent is None
    assert len(await store.open_escalations()) == 1
    assert (await store.get_conversation(conversation.id)).failed_turns == 2
    assert len(await store.transcript(conversation.id)) == 3


async def test_record_turn_refuses_a_message_of_another_conversation(
    store: SqlConversationStore,
) -> None:
    from bot.core.records import Turn

    first = await store.conversation("rest", "a")
    second = await store.conversation("rest", "b")
    message, _ = await store.add_customer_message(first.id, "hi")
    before = await store.get_conversation(second.id)
    with pytest.raises(BadRequestError, match="belongs to conversation"):
        await store.record_turn(
            second.id, Turn(message.id, understanding(), Route.ANSWER, 1.0, failed_turns=2)
        )
    # The whole turn rolled back: the conversation touched first is as it was.
    assert await store.get_conversation(second.id) == before
    assert (await store.transcript(first.id))[0].route is None
    with pytest.raises(NotFoundError):
        await store.record_turn(first.id, Turn(999999, understanding(), Route.ANSWER, 1.0))


async def test_receive_returns_state_and_recent_messages_from_one_transaction(
    store: SqlConversationStore,
) -> None:
    conversation = await store.conversation("rest", "recv")
    for said in ("one", "two", "three"):
        await store.receive(conversation.id, said)
    await store.escalate(conversation.id, Escalation("negative_message", 2.0, "angry", {}))
    received = await store.receive(conversation.id, "four", client_id="c-4", recent=3)
    assert received.new and received.message.text == "four"
    assert received.conversation.status == ConversationStatus.WAITING
    assert [m.text for m in received.recent] == ["two", "three", "four"]
    again = await store.receive(conversation.id, "four", client_id="c-4", recent=3)
    assert not again.new and again.message.id == received.message.id
    assert len(await store.transcript(conversation.id)) == 4


async def test_a_replica_out_of_connections_answers_retry_later(tmp_path: Path) -> None:
    # Every pooled connection busy for longer than the timeout (an overloaded replica): the
    # request is refused as unavailable (HTTP 503 + Retry-After), not failed (500).
    store = SqlConversationStore(f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}", timeout=0.2)
    await store.start()
    try:
        known = await store.conversation("widget", "s1")
        async with store.writing("hold the only connection") as session:
            await session.execute(text("SELECT 1"))  # sessions connect on first use
            with pytest.raises(StoreUnavailableError, match="cannot store a customer message"):
                await store.receive(known.id, "hello?")
            # Reads have connections of their own on SQLite: they do not queue behind writes.
            assert (await store.conversation("widget", "s1")).id == known.id
    finally:
        await store.stop()
