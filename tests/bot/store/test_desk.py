"""SqlDeskStore on a real SQLite file and a real PostgreSQL server: the queue's subqueries,
releasing and closing, the once-only unclaimed timeout across two replicas, and the
dashboard's per-day SQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from bot.core.errors import ConflictError, NotFoundError
from bot.core.ports import DeskStore
from bot.core.records import ConversationStatus, Feedback, Role, Route, Turn
from bot.store.conversations import SqlConversationStore
from bot.store.desk import SqlDeskStore
from bot.store.schema import MessageRow
from tests.fakes.clock import ManualClock
from tests.helpers import angry, understanding


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def stores(
    database_url: str, clock: ManualClock
) -> AsyncIterator[tuple[SqlConversationStore, SqlDeskStore]]:
    store = SqlConversationStore(database_url, clock=clock)
    await store.start()
    try:
        yield store, SqlDeskStore(store)
    finally:
        await store.stop()


def test_the_desk_store_implements_the_port(tmp_path: Path) -> None:
    # mypy checks every method's signature against the Protocol on this assignment.
    desk: DeskStore = SqlDeskStore(SqlConversationStore(f"sqlite:///{tmp_path / 'bot.db'}"))
    assert desk is not None


async def customer_turn(
    store: SqlConversationStore, conversation_id: str, text: str, route: Route, **turn: object
) -> int:
    received = await store.receive(conversation_id, text)
    await store.record_turn(
        conversation_id,
        Turn(
            message_id=received.message.id,
            understanding=understanding(),
            route=route,
            latency_ms=12.0,
            reply_text=None if route == Route.AGENT else f"re: {text}",
            **turn,  # type: ignore[arg-type]
        ),
    )
    return received.message.id


async def test_queue_orders_by_urgency_and_counts_unread(
    stores: tuple[SqlConversationStore, SqlDeskStore], clock: ManualClock
) -> None:
    store, console = stores
    calm = await store.conversation("rest", "calm", "Cal")
    furious = await store.conversation("widget", "furious")
    await customer_turn(store, calm.id, "hello", Route.ANSWER)
    await customer_turn(store, calm.id, "i need a person", Route.HANDOFF, escalation=angry(0.5))
    await customer_turn(store, furious.id, "this is awful", Route.HANDOFF, escalation=angry(0.9))
    await store.claim(furious.id, "ana")
    await store.add_message(furious.id, Role.AGENT, "sorry!", route=Route.AGENT)
    await customer_turn(store, furious.id, "still waiting", Route.AGENT)
    await customer_turn(store, furious.id, "hello??", Route.AGENT)

    items = await console.queue()
    assert [i.conversation.id for i in items] == [furious.id, calm.id]
    assert [i.last_message for i in items] == ["hello??", "i need a person"]
    assert [i.unread for i in items] == [2, 2]  # calm: no agent reply yet, both count
    assert items[0].escalation.assignee == "ana" and items[1].escalation.status == "open"

    # Waiting raises urgency: 10 minutes add 1.
    assert items[1].escalation.created_at == clock()
    clock.advance(minutes=10)
    aged = await console.queue()
    calm_item = next(i for i in aged if i.conversation.id == calm.id)
    assert calm_item.urgency == pytest.approx(0.5 + 1.0, abs=0.01)


async def test_release_and_close_respect_the_assignee(
    stores: tuple[SqlConversationStore, SqlDeskStore], clock: ManualClock
) -> None:
    store, console = stores
    conversation = await store.conversation("rest", "c1")
    await customer_turn(store, conversation.id, "help", Route.HANDOFF, escalation=angry())
    with pytest.raises(ConflictError, match="not claimed"):
        await console.release(conversation.id, "ana", operator=False)
    with pytest.raises(ConflictError, match="claim it first"):
        await console.close(conversation.id, "ana", False, "resolved", "done")
    claimed = await store.claim(conversation.id, "ana")
    assert claimed.claimed_at == clock()
    with pytest.raises(ConflictError, match="only they or an operator"):
        await console.release(conversation.id, "bo", operator=False)
    with pytest.raises(ConflictError, match="claimed by ana"):
        await console.check_claimed_by(conversation.id, "bo")
    assert await console.check_claimed_by(conversation.id, "ana") == claimed
    with pytest.raises(NotFoundError, match="does not exist"):
        await console.check_claimed_by("no-such-conversation", "ana")
    released = await console.release(conversation.id, "olga", operator=True)
    assert (released.status, released.assignee, released.claimed_at) == ("open", None, None)
    assert (await store.get_conversation(conversation.id)).status == ConversationStatus.WAITING

    await store.claim(conversation.id, "bo")
    clock.advance(minutes=3)
    closed = await console.close(conversation.id, "bo", False, "handed_back", "back to the bot")
    assert closed.escalation.outcome == "handed_back" and closed.escalation.status == "resolved"
    assert (closed.escalation.assignee, closed.escalation.resolved_at) == ("bo", clock())
    assert closed.conversation.status == ConversationStatus.BOT
    assert (closed.conversation.assignee, closed.conversation.failed_turns) == (None, 0)
    assert closed.notice.role == Role.SYSTEM and closed.notice.details["event"] == "handed_back"
    with pytest.raises(NotFoundError, match="no open escalation"):
        await console.close(conversation.id, "bo", True, "resolved", "again")


async def test_only_one_replica_times_an_escalation_out(
    database_url: str, clock: ManualClock
) -> None:
    replicas = [SqlConversationStore(database_url, clock=clock) for _ in range(2)]
    for replica in replicas:
        await replica.start()
    try:
        store = replicas[0]
        conversation = await store.conversation("rest", "waiting")
        await customer_turn(store, conversation.id, "anyone?", Route.HANDOFF, escalation=angry())
        consoles = [SqlDeskStore(r) for r in replicas]
        future = clock.advance(seconds=1)
        [(escalation, _)] = await consoles[1].unclaimed_since(future)
        assert await consoles[0].unclaimed_since(escalation.created_at - timedelta(1)) == []
        results = await asyncio.gather(
            *(c.time_out(escalation.id, f"notice {i}") for i, c in enumerate(consoles))
        )
        done = [r for r in results if r is not None]
        assert len(done) == 1 and done[0].escalation.timed_out_at is not None
        assert await consoles[0].unclaimed_since(future) == []
        transcript = await store.transcript(conversation.id)
        assert [m.role for m in transcript].count(Role.SYSTEM) == 1
    finally:
        for replica in replicas:
            await replica.stop()


async def test_dashboard_groups_by_utc_day_in_sql(
    stores: tuple[SqlConversationStore, SqlDeskStore], clock: ManualClock
) -> None:
    store, console = stores
    conversation = await store.conversation("rest", "d1")
    first = await customer_turn(store, conversation.id, "where is my refund", Route.ANSWER)
    await customer_turn(store, conversation.id, "??", Route.REPHRASE)
    await customer_turn(store, conversation.id, "awful", Route.HANDOFF, escalation=angry())
    [reply] = await store.replies_to(first)
    await store.record_feedback(Feedback(reply.id, rating="up"))
    await store.record_feedback(Feedback(reply.id, rating="down", author="ana"))
    await store.claim(conversation.id, "ana")
    await console.close(conversation.id, "ana", False, "resolved", "done")

    # Move the first exchange to yesterday, 23:30 UTC (a day boundary the SQL must respect).
    now = clock()
    yesterday = (now - timedelta(days=1)).replace(hour=23, minute=30)
    async with store.writing("test") as session:
        for message_id in (first, reply.id):
            message = await session.get(MessageRow, message_id)
            assert message is not None
            message.created_at = yesterday

    dashboard = await console.dashboard(3)
    assert [d.date for d in dashboard.days] == [
        (now - timedelta(days=2)).date(),
        (now - timedelta(days=1)).date(),
        now.date(),
    ]
    before, yesterday_figures, today = dashboard.days
    assert before.messages == 0 and before.automation_rate == 0.0
    assert (yesterday_figures.messages, yesterday_figures.customer_messages) == (2, 1)
    assert yesterday_figures.automated == 1
    assert (today.customer_messages, today.automated) == (2, 0)
    assert today.messages == 2 + 2 + 1  # two customer, rephrase + handoff replies, the notice
    assert today.escalations == {"negative_message": 1}
    assert today.feedback == {"up": 1, "down": 1}
    assert dashboard.outcomes == {"resolved": 1}
    assert dashboard.open_escalations == 0
    [intent] = dashboard.intents
    assert (intent.intent, intent.messages, intent.mean_confidence) == ("refund_status", 3, 0.91)
    clock.advance(days=30)
    later = await console.dashboard(1)
    assert later.days[0].messages == 0 and later.intents == ()
