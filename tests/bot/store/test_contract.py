"""One contract, two stores: the same scenarios against `SqlConversationStore` on SQLite and
the in-memory fake of `tests/fakes/store.py`, so the fake the core's fast tests rely on
cannot drift from the real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import pytest

from bot.core.errors import BadRequestError, ConflictError, NotFoundError
from bot.core.ports import ConversationStore, DeskStore
from bot.core.records import (
    AnswerRating,
    ConversationStatus,
    Escalation,
    EscalationStatus,
    Feedback,
    Outcome,
    Role,
    Turn,
)
from bot.store.conversations import SqlConversationStore
from bot.store.desk import SqlDeskStore
from tests.fakes.clock import ManualClock
from tests.fakes.nlu import understanding
from tests.fakes.store import InMemoryConversationStore, InMemoryDeskStore
from tests.helpers import needs_postgres, pg_schema

CHANNEL = "contract"


def escalation(priority: float = 1.5) -> Escalation:
    return Escalation("asked_for_human", priority, "The customer asked for a person.", {})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[ConversationStore]:
    started: ConversationStore
    if request.param == "memory":
        started = InMemoryConversationStore(clock)
    else:
        started = SqlConversationStore(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", clock=clock)
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
def desk(store: ConversationStore) -> DeskStore:
    if isinstance(store, InMemoryConversationStore):
        return InMemoryDeskStore(store)
    assert isinstance(store, SqlConversationStore)
    return SqlDeskStore(store)


async def new_conversation(store: ConversationStore, sender: str = "ada") -> str:
    return (await store.conversation(CHANNEL, sender, sender.title())).id


async def test_a_client_id_is_stored_once_per_conversation(store: ConversationStore) -> None:
    ada, bob = await new_conversation(store), await new_conversation(store, "bob")
    first = await store.receive(ada, "hello", "m1")
    again = await store.receive(ada, "hello (resent)", "m1", recent=5)
    assert first.new and not again.new
    assert (again.message.id, again.message.text) == (first.message.id, "hello")
    assert [m.id for m in again.recent] == [first.message.id]
    assert (await store.receive(bob, "hello", "m1")).new  # another conversation's id
    stored, new = await store.add_customer_message(ada, "no id", None)
    assert new and (await store.add_customer_message(ada, "no id", None))[1]
    assert [m.text for m in await store.transcript(ada)] == ["hello", "no id", "no id"]
    assert stored.role == Role.CUSTOMER and stored.client_id is None


async def test_an_empty_client_id_is_no_id(store: ConversationStore) -> None:
    ada = await new_conversation(store)
    assert (await store.receive(ada, "first", "")).new
    second = await store.receive(ada, "second", "")
    assert second.new and second.message.text == "second"


async def test_a_turn_is_recorded_in_one_step(store: ConversationStore) -> None:
    ada = await new_conversation(store)
    asked = (await store.receive(ada, "where is my refund", "m1")).message
    turn = Turn(
        message_id=asked.id,
        understanding=understanding("refund_status", 0.8, 0.2),
        route="handoff",
        latency_ms=12.5,
        details={"reason": "asked_for_human"},
        reply_text="A person will take over.",
        reply_details={"quick_replies": ["ok"]},
        failed_turns=0,
        escalation=escalation(),
    )
    reply = await store.record_turn(ada, turn)
    assert reply is not None and (reply.role, reply.route) == (Role.BOT, "handoff")
    assert await store.replies_to(asked.id) == [reply]
    annotated, stored_reply = await store.transcript(ada)
    assert (annotated.intent, annotated.route, annotated.latency_ms) == (
        "refund_status",
        "handoff",
        12.5,
    )
    assert annotated.details == {"reason": "asked_for_human"}
    assert stored_reply.details == {"quick_replies": ["ok"]}
    assert (await store.get_conversation(ada)).status == ConversationStatus.WAITING
    # A second escalation while one is unresolved keeps the first, only raising its priority
    # when more urgent (a later, angrier message); a silent turn stores nothing.
    (first,) = await store.open_escalations()
    later = (await store.receive(ada, "hello?")).message
    silent = Turn(later.id, understanding(), "agent", 1.0, escalation=escalation(3.0))
    assert await store.record_turn(ada, silent) is None
    (only,) = await store.open_escalations()
    assert (only.id, only.reason, only.priority) == (first.id, first.reason, 3.0)
    assert only.explanation.endswith("Raised while waiting: The customer asked for a person.")
    calmer = Turn(later.id, understanding(), "agent", 1.0, escalation=escalation(2.0))
    await store.record_turn(ada, calmer)
    assert [e.priority for e in await store.open_escalations()] == [3.0]
    bob = await new_conversation(store, "bob")
    with pytest.raises(BadRequestError, match="belongs to conversation"):
        await store.record_turn(bob, silent)
    with pytest.raises(NotFoundError):
        await store.record_turn(ada, Turn(10_000, understanding(), "answer", 1.0))


async def test_claims_and_agent_messages(store: ConversationStore) -> None:
    ada = await new_conversation(store)
    with pytest.raises(NotFoundError, match="no open escalation to claim"):
        await store.claim(ada, "sam")
    opened = await store.escalate(ada, escalation())
    again = await store.escalate(ada, escalation(9.0))
    assert (again.id, again.priority) == (opened.id, 9.0)  # the same one, more urgent
    with pytest.raises(ConflictError, match="claim it first"):
        await store.add_message(ada, Role.AGENT, "hi", claimed_by="sam")
    claimed = await store.claim(ada, "sam")
    assert (claimed.status, claimed.assignee) == (EscalationStatus.CLAIMED, "sam")
    assert await store.claim(ada, "sam") == claimed
    with pytest.raises(ConflictError, match="already claimed by 'sam'"):
        await store.claim(ada, "kim")
    with pytest.raises(ConflictError, match="claimed by sam"):
        await store.add_message(ada, Role.AGENT, "hi", claimed_by="kim")
    sent = await store.add_message(ada, Role.AGENT, "hi", claimed_by="sam")
    assert (await store.transcript(ada))[-1] == sent
    await store.set_failed_turns(ada, 2)
    await store.resolve(ada, "kim")  # any agent may resolve
    conversation = await store.get_conversation(ada)
    assert (conversation.status, conversation.assignee, conversation.failed_turns) == (
        ConversationStatus.BOT,
        None,
        0,
    )
    assert await store.open_escalations() == []
    with pytest.raises(NotFoundError):
        await store.resolve(ada, "kim")


async def test_open_escalations_most_urgent_first(store: ConversationStore) -> None:
    calm, angry = await new_conversation(store), await new_conversation(store, "bob")
    await store.escalate(calm, escalation(1.0))
    await store.escalate(angry, escalation(2.9))
    assert [e.conversation_id for e in await store.open_escalations()] == [angry, calm]


async def test_feedback_needs_a_message_and_something_to_say(store: ConversationStore) -> None:
    ada = await new_conversation(store)
    message = (await store.receive(ada, "hello")).message
    with pytest.raises(NotFoundError):
        await store.record_feedback(Feedback(10_000, rating="up"))
    with pytest.raises(BadRequestError, match="carries nothing"):
        await store.record_feedback(Feedback(message.id))
    with pytest.raises(BadRequestError, match="rating"):
        await store.record_feedback(Feedback(message.id, rating="meh"))
    await store.record_feedback(Feedback(message.id, rating="down"))
    await store.record_feedback(Feedback(message.id, comment="rude", author="sam"))
    assert await store.feedback(message.id) == [
        Feedback(message.id, rating="down"),
        Feedback(message.id, comment="rude", author="sam"),
    ]


async def test_transcripts_are_oldest_first_and_limited_to_the_newest(
    store: ConversationStore,
) -> None:
    ada = await new_conversation(store)
    for text in ("one", "two", "three"):
        await store.receive(ada, text)
    assert [m.text for m in await store.transcript(ada)] == ["one", "two", "three"]
    assert [m.text for m in await store.transcript(ada, limit=2)] == ["two", "three"]
    assert await store.transcript(ada, limit=0) == []
    with pytest.raises(BadRequestError):
        await store.transcript(ada, limit=-1)
    with pytest.raises(NotFoundError):
        await store.transcript("nope")
    assert await store.find_conversation(CHANNEL, "nobody") is None
    renamed = await store.conversation(CHANNEL, "ada", "Ada L.")
    assert renamed.id == ada and renamed.sender_name == "Ada L."
    with pytest.raises(BadRequestError):
        await store.conversation(CHANNEL, "")


async def test_the_desk_times_out_releases_and_closes(
    store: ConversationStore, desk: DeskStore, clock: ManualClock
) -> None:
    ada, bob = await new_conversation(store), await new_conversation(store, "bob")
    opened = await store.escalate(ada, escalation())
    clock.advance(minutes=4)
    await store.escalate(bob, escalation())
    clock.advance(minutes=1)
    assert [e.id for e, _ in await desk.unclaimed_since(clock() - timedelta(minutes=5))] == [
        opened.id
    ]
    told = await desk.time_out(opened.id, "All agents are busy.")
    assert told is not None and told.escalation.timed_out_at == clock()
    assert (told.notice.role, told.notice.details) == (Role.SYSTEM, {"event": "unclaimed"})
    assert await desk.time_out(opened.id, "All agents are busy.") is None  # once
    await store.claim(ada, "sam")
    with pytest.raises(ConflictError, match="claimed by sam"):
        await desk.check_claimed_by(ada, "kim")
    assert (await desk.check_claimed_by(ada, "sam")).id == opened.id
    with pytest.raises(ConflictError, match="only they or an operator"):
        await desk.release(ada, "kim", operator=False)
    released = await desk.release(ada, "kim", operator=True)
    assert (released.status, released.assignee, released.claimed_at) == ("open", None, None)
    closed = await desk.close(ada, "boss", True, "handed_back", "Back to the bot.")
    assert (closed.escalation.outcome, closed.conversation.status) == (
        Outcome.HANDED_BACK,
        ConversationStatus.BOT,
    )
    assert closed.notice.details == {"event": "handed_back", "agent": "boss"}
    assert await desk.unresolved(ada) is None
    (waiting,) = await desk.queue()
    assert (waiting.conversation.id, waiting.unread) == (bob, 0)
    with pytest.raises(BadRequestError, match="outcome"):
        await desk.close(bob, "boss", True, "done", "...")


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=needs_postgres)])
async def any_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[ConversationStore]:
    """The fake and the SQL store on both backends (for what the core derives its demoted
    answers from, `answer_ratings`)."""
    async with AsyncExitStack() as stack:
        started: ConversationStore
        if request.param == "memory":
            started = InMemoryConversationStore(clock)
        elif request.param == "sqlite":
            started = SqlConversationStore(f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", clock=clock)
        else:
            url = await stack.enter_async_context(pg_schema())
            started = SqlConversationStore(url, clock=clock)
        await started.start()
        stack.push_async_callback(started.stop)
        yield started


async def test_answer_ratings_are_the_up_and_down_on_served_answers_oldest_first(
    any_store: ConversationStore, clock: ManualClock
) -> None:
    store = any_store
    ada = await new_conversation(store)

    async def answered(text: str, intent: str | None, route: str, **details: str) -> int:
        asked = (await store.receive(ada, text)).message
        reply = await store.record_turn(
            ada,
            Turn(asked.id, understanding(intent), route, 1.0, {}, f"re: {text}", dict(details)),
        )
        assert reply is not None
        return reply.id

    refund = await answered("where is my refund", "refund_status", "answer", source="logs:3")
    unsure = await answered("hmm", None, "answer", source="faq:1")
    handled = await answered("track BC-204719", "order_status", "handler", handler="track")
    sourceless = await answered("old reply", "refund_status", "answer")
    await store.record_feedback(Feedback(refund, rating="down"))
    clock.advance(seconds=1)
    await store.record_feedback(Feedback(refund, comment="not my order"))  # no rating
    await store.record_feedback(Feedback(handled, rating="down"))  # not an indexed answer
    await store.record_feedback(Feedback(sourceless, rating="down"))  # nothing to demote
    await store.record_feedback(Feedback(unsure, rating="down", author="sam"))
    clock.advance(seconds=1)
    await store.record_feedback(Feedback(refund, rating="up", author="sam"))
    assert await store.answer_ratings() == [
        AnswerRating("logs:3", "re: where is my refund", "refund_status", "down"),
        AnswerRating("faq:1", "re: hmm", None, "down"),
        AnswerRating("logs:3", "re: where is my refund", "refund_status", "up"),
    ]
    # Only the ratings after a feedback id: what a reader that saw the first one asks for.
    first, *rest = await store.answer_ratings()
    assert first.feedback_id > 0
    assert await store.answer_ratings(after=first.feedback_id) == rest
    assert [r.feedback_id for r in rest] == sorted(r.feedback_id for r in rest)
    assert await store.answer_ratings(after=rest[-1].feedback_id) == []
