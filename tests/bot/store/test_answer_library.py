"""The answer library's store side, one contract on three stores (the in-memory fake of the
core's fast tests, SqlDeskStore on a real SQLite file and on a real PostgreSQL server, as in
test_desk_essentials.py): served counts and ratings per index source,
disabled / edited / approved answers with who and when, and approved answers with an
agent's edit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, select
from sqlalchemy.engine import Engine

from bot.core.ports import ConversationStore, DeskStore
from bot.core.records import Feedback, Role, Route, Turn
from bot.store.conversations import SqlConversationStore
from bot.store.desk import SqlDeskStore
from bot.store.schema import ApprovedAnswerRow
from tests.fakes.clock import ManualClock
from tests.fakes.store import InMemoryConversationStore, InMemoryDeskStore
from tests.helpers import needs_postgres, pg_schema, understanding

Stores = tuple[ConversationStore, DeskStore]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=needs_postgres),
    ]
)
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Stores]:
    if request.param == "memory":
        memory = InMemoryConversationStore(clock)
        await memory.start()
        yield memory, InMemoryDeskStore(memory)
        await memory.stop()
        return
    if request.param == "sqlite":
        store = SqlConversationStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", clock=clock)
        await store.start()
        yield store, SqlDeskStore(store)
        await store.stop()
        return
    async with pg_schema() as url:
        store = SqlConversationStore(url, clock=clock)
        await store.start()
        yield store, SqlDeskStore(store)
        await store.stop()


async def approved_answers(stores: Stores) -> list[tuple[str, str, str | None, str]]:
    """(question, answer, intent, author) of every approved answer, oldest first."""
    store, desk = stores
    if isinstance(desk, InMemoryDeskStore):
        return [(a.question, a.answer, a.intent, a.author) for a in desk.tables.approved]
    assert isinstance(store, SqlConversationStore)
    async with store.reading("test") as session:
        rows = (await session.scalars(select(ApprovedAnswerRow).order_by("id"))).all()
    return [(r.question, r.answer, r.intent, r.author) for r in rows]


async def answered(stores: Stores, sender: str, source: str | None, rating: str | None) -> int:
    """A customer question the bot answered from `source` (rated `rating` when given);
    returns the reply's id."""
    store, _ = stores
    cid = (await store.conversation("rest", sender)).id
    received = await store.receive(cid, "where is my refund")
    reply = await store.record_turn(
        cid,
        Turn(
            message_id=received.message.id,
            understanding=understanding(),
            route=Route.ANSWER,
            latency_ms=5.0,
            reply_text="Refunds take 5 days.",
            reply_details={"source": source, "score": 0.9} if source else {},
        ),
    )
    assert reply is not None
    if rating is not None:
        await store.record_feedback(Feedback(reply.id, rating=rating))
    return reply.id


async def test_usage_counts_the_bots_answers_per_source_and_their_ratings(stores: Stores) -> None:
    store, desk = stores
    assert await desk.answer_usage() == {}
    first = await answered(stores, "c1", "logs.jsonl:12", "down")
    await answered(stores, "c2", "logs.jsonl:12", "up")
    await answered(stores, "c3", "logs.jsonl:12", None)
    await answered(stores, "c4", "faq.csv:3", "down")
    await answered(stores, "c5", None, "down")  # no source recorded: nothing to count
    # An agent's "Bad" counts like a customer's thumbs-down.
    await store.record_feedback(Feedback(first, rating="down", author="ana"))
    # A handler's reply (no index answer) is not counted even with a source in its details.
    cid = (await store.conversation("rest", "c6")).id
    await store.add_message(cid, Role.BOT, "shipped", route=Route.HANDLER, details={"source": "x"})
    usage = await desk.answer_usage()
    assert {s: (u.served, u.up, u.down) for s, u in usage.items()} == {
        "logs.jsonl:12": (3, 1, 2),
        "faq.csv:3": (1, 0, 1),
    }


async def test_the_decisions_are_read_once_for_concurrent_answers_and_again_after_a_change(
    stores: Stores, clock: ManualClock
) -> None:
    """The service reads the library's decisions for every answer it chooses: concurrent
    answers share one read, remembered for `controls_remembered_s`; a decision made through a
    store of this process counts at once, one made by another process once that has passed."""
    store, desk = stores
    if not isinstance(store, SqlConversationStore):
        pytest.skip("the in-memory desk has no database read to share")
    statements: list[str] = []

    def count(_conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if "answer_controls" in statement and statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    served = SqlDeskStore(store, controls_remembered_s=60)
    event.listen(Engine, "before_cursor_execute", count)
    try:
        assert await asyncio.gather(*(served.answer_controls() for _ in range(30))) == [[]] * 30
        assert len(statements) == 1
        assert await served.answer_controls() == [] and len(statements) == 1  # remembered
        await desk.disable_answer("logs.jsonl:12", True, "ana", "where is my refund")
        assert [c.source for c in await served.answer_controls()] == ["logs.jsonl:12"]
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    other = SqlConversationStore(store.url, clock=clock)  # another process's view
    await other.start()
    try:
        await SqlDeskStore(other).disable_answer("faq.csv:3", True, "bo", "gift cards?")
        assert [c.source for c in await served.answer_controls()] == ["logs.jsonl:12"]
        fresh = SqlDeskStore(store, controls_remembered_s=0)
        assert sorted(c.source for c in await fresh.answer_controls()) == [
            "faq.csv:3",
            "logs.jsonl:12",
        ]
        assert len(await served.answer_controls()) == 2  # every store of the process sees it
    finally:
        await other.stop()


async def test_disabling_editing_and_approving_keep_one_decision_per_answer(
    stores: Stores, clock: ManualClock
) -> None:
    _, desk = stores
    assert await desk.answer_controls() == []
    disabled = await desk.disable_answer("logs.jsonl:12", True, "ana", "where is my refund")
    assert disabled.question == "where is my refund"
    assert (disabled.disabled, disabled.answer, disabled.action, disabled.author) == (
        True,
        None,
        "disabled",
        "ana",
    )
    assert disabled.updated_at == clock()
    clock.advance(minutes=5)

    edited = await desk.edit_answer(
        "logs.jsonl:12", "where is my refund", "Refunds take 5 days.", "refund_status", "bo"
    )
    assert (edited.disabled, edited.answer, edited.action, edited.author) == (
        False,
        "Refunds take 5 days.",
        "edited",
        "bo",
    )
    assert edited.updated_at == clock() and edited.approved_answer_id is not None
    again = await desk.edit_answer("logs.jsonl:12", "where is my refund", "Five days.", None, "cy")
    assert again.approved_answer_id == edited.approved_answer_id  # the same approved answer
    assert await approved_answers(stores) == [("where is my refund", "Five days.", None, "cy")]

    await desk.disable_answer("logs.jsonl:12", True, "ana")
    (kept,) = await desk.answer_controls()
    assert kept.question == "where is my refund"  # kept when not given again
    # Disabling keeps the edit (enabling serves it again).
    assert (kept.source, kept.disabled, kept.answer, kept.action) == (
        "logs.jsonl:12",
        True,
        "Five days.",
        "disabled",
    )

    approved = await desk.approve_indexed("faq.csv:3", "q", "a", None, "ana")
    assert approved.action == "approved" and approved.approved_answer_id is not None
    assert approved.approved_answer_id != edited.approved_answer_id
    twice = await desk.approve_indexed("faq.csv:3", "q", "a", None, "bo")
    assert twice.approved_answer_id == approved.approved_answer_id
    # An answer already approved by an edit is not approved a second time.
    by_edit = await desk.approve_indexed("logs.jsonl:12", "q", "a", None, "bo")
    assert by_edit.approved_answer_id == edited.approved_answer_id
    assert sorted(c.source for c in await desk.answer_controls()) == ["faq.csv:3", "logs.jsonl:12"]
    assert [a[:2] for a in await approved_answers(stores)] == [
        ("where is my refund", "Five days."),
        ("q", "a"),
    ]


async def test_an_approved_reply_keeps_the_agents_edit_and_the_question_given(
    stores: Stores,
) -> None:
    store, desk = stores
    cid = (await store.conversation("rest", "ada")).id
    asked, _ = await store.add_customer_message(cid, "where is my refund")
    await store.add_customer_message(cid, "I want a human")
    reply = await store.add_message(cid, Role.AGENT, "I checked: BC-1 refunded.", route="agent")
    edited = await desk.approve_answer(
        reply.id, "ana", asked.id, "Where is my refund?", "refund_status", "Refunds take 5 days."
    )
    plain = await desk.approve_answer(reply.id, "ana", asked.id)
    assert edited != plain
    assert await approved_answers(stores) == [
        ("Where is my refund?", "Refunds take 5 days.", "refund_status", "ana"),
        ("where is my refund", "I checked: BC-1 refunded.", None, "ana"),
    ]
    view = await desk.view(cid)
    assert reply.id in view.approved
