"""`AgentDesk`'s use cases, fast: the real desk and service on the in-memory store, a recording
push channel and the in-process bus (the harness of `test_service.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.core import csat
from bot.core.desk import IntentFigures, MessageLabels
from bot.core.errors import BadRequestError, ConflictError, ForbiddenError, NotFoundError
from bot.core.records import (
    Agent,
    AgentRole,
    ConversationStatus,
    EscalationStatus,
    Feedback,
    Message,
    Outcome,
    Role,
    Route,
)
from tests.bot.core.test_service import CHANNEL, InMemoryCore, in_memory_core, message


@pytest.fixture
async def core() -> AsyncIterator[InMemoryCore]:
    async with in_memory_core() as started:
        yield started


async def escalated(core: InMemoryCore, sender: str = "ada") -> str:
    """A conversation waiting in the queue (the customer asked for a person)."""
    return (await core.service.request_handoff(message("/human", sender))).conversation_id


def team(core: InMemoryCore) -> tuple[Agent, Agent, Agent]:
    """Agents sam and kim, and boss, an operator."""
    return core.agent("sam"), core.agent("kim"), core.agent("boss", AgentRole.OPERATOR)


async def agent_messages(core: InMemoryCore) -> list[str]:
    return [m.text for m in await core.transcript() if m.role == Role.AGENT]


# -- claiming and releasing ------------------------------------------------------------------


async def test_an_agent_claims_an_escalation_and_a_colleague_cannot(core: InMemoryCore) -> None:
    cid, (sam, kim, _) = await escalated(core), team(core)
    core.clock.advance(minutes=2)
    claimed = await core.desk.claim(cid, sam)
    assert (claimed.status, claimed.assignee) == (EscalationStatus.CLAIMED, "sam")
    assert claimed.claimed_at == core.clock.now
    conversation = await core.conversation()
    assert (conversation.status, conversation.assignee) == (ConversationStatus.CLAIMED, "sam")
    core.clock.advance(minutes=1)
    assert await core.desk.claim(cid, sam) == claimed  # claiming again changes nothing
    with pytest.raises(ConflictError, match="already claimed by 'sam'"):
        await core.desk.claim(cid, kim)
    event = next(e for e in await core.console.events() if e["type"] == "escalation.claimed")
    assert event == {
        "type": "escalation.claimed",
        "conversation_id": cid,
        "escalation_id": claimed.id,
        "agent": "sam",
    }
    bob = (await core.say("hi", sender="bob", intent="greeting")).conversation_id
    with pytest.raises(NotFoundError, match="no open escalation to claim"):
        await core.desk.claim(bob, sam)


@pytest.mark.parametrize(
    ("change", "unclaimed", "colleagues"),
    [
        ("release", "not claimed, so there is nothing to release", "only they or an operator"),
        ("resolve", "claim it first", "claimed by sam"),
        ("hand_back", "claim it first", "claimed by sam"),
    ],
)
async def test_only_the_assignee_or_an_operator_changes_hands(
    core: InMemoryCore, change: str, unclaimed: str, colleagues: str
) -> None:
    cid, (sam, kim, boss) = await escalated(core), team(core)
    with pytest.raises(ConflictError, match=unclaimed):
        await getattr(core.desk, change)(cid, sam)
    await core.desk.claim(cid, sam)
    with pytest.raises(ConflictError, match=colleagues):
        await getattr(core.desk, change)(cid, kim)
    assert (await core.conversation()).status == ConversationStatus.CLAIMED
    await getattr(core.desk, change)(cid, boss)  # an operator may, claim or no claim
    assert (await core.conversation()).status != ConversationStatus.CLAIMED


async def test_a_released_claim_goes_back_to_the_queue(core: InMemoryCore) -> None:
    cid, (sam, kim, boss) = await escalated(core), team(core)
    await core.desk.claim(cid, sam)
    released = await core.desk.release(cid, sam)
    assert (released.status, released.assignee, released.claimed_at) == ("open", None, None)
    assert (await core.conversation()).status == ConversationStatus.WAITING
    await core.desk.claim(cid, kim)  # back in the queue: anyone may take it
    assert (await core.desk.release(cid, boss)).status == EscalationStatus.OPEN
    released_by = [e["agent"] for e in await core.console.events() if "released" in e["type"]]
    assert released_by == ["sam", "boss"]


# -- answering -------------------------------------------------------------------------------


async def test_a_reply_needs_the_callers_claim(core: InMemoryCore) -> None:
    cid, (sam, kim, _) = await escalated(core), team(core)
    with pytest.raises(ConflictError, match="claim it first"):
        await core.desk.reply(cid, sam, "Hello, I'm Sam.")
    await core.desk.claim(cid, kim)
    with pytest.raises(ConflictError, match="claimed by kim"):
        await core.desk.reply(cid, sam, "Hello, I'm Sam.")
    with pytest.raises(BadRequestError, match='"text" is empty'):
        await core.desk.reply(cid, kim, "   ")
    assert await agent_messages(core) == []
    assert core.deliverer.texts == ["kim joined the conversation."]  # no reply, only who joined


async def test_a_reply_is_stored_and_pushed_through_the_customers_channel(
    core: InMemoryCore,
) -> None:
    cid = await escalated(core)
    sam = core.agent("sam")
    await core.desk.claim(cid, sam)
    stored, delivered = await core.desk.reply(cid, sam, "  Your parcel left today.  ")
    assert delivered
    assert (stored.role, stored.text, stored.details) == (
        Role.AGENT,
        "Your parcel left today.",
        {"agent": "sam"},
    )
    (joined, (conversation, reply)) = core.deliverer.delivered
    assert (joined[1].role, joined[1].text) == (Role.SYSTEM, "sam joined the conversation.")
    assert (conversation.channel, conversation.sender) == (CHANNEL, "ada")
    assert (reply.message_id, reply.role, reply.route) == (stored.id, Role.AGENT, Route.AGENT)
    assert reply.text == "Your parcel left today." and not reply.rateable
    assert (await core.console.events())[-1] == {
        "type": "message",
        "conversation_id": cid,
        "channel": CHANNEL,
        "message_id": stored.id,
        "status": "claimed",
    }


async def test_a_reply_the_channel_refuses_is_kept_and_reported(core: InMemoryCore) -> None:
    cid = await escalated(core)
    sam = core.agent("sam")
    await core.desk.claim(cid, sam)
    core.deliverer.fail("the customer blocked the bot")
    stored, delivered = await core.desk.reply(cid, sam, "Are you still there?")
    assert not delivered
    assert [r.message_id for r in core.deliverer.refused] == [stored.id]
    assert (await core.transcript())[-1] == stored


async def test_a_reply_to_a_channel_no_connector_pushes_to_is_kept_and_reported(
    core: InMemoryCore,
) -> None:
    # E.g. a conversation Rasa handed over: its customer reads nothing supportbot pushes.
    handed = await core.service.request_handoff(Message("rasa", "ada", "/human"))
    sam = core.agent("sam")
    await core.desk.claim(handed.conversation_id, sam)
    stored, delivered = await core.desk.reply(handed.conversation_id, sam, "Sam here.")
    assert not delivered
    assert (await core.store.transcript(handed.conversation_id))[-1] == stored
    assert core.deliverer.delivered == []


# -- closing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("close", "outcome", "notice"),
    [
        ("resolve", Outcome.RESOLVED, "Resolved, Ada. Write any time."),
        ("hand_back", Outcome.HANDED_BACK, "You're back with the bot, Ada."),
    ],
)
async def test_closing_tells_the_customer_and_the_bot_answers_again(
    core: InMemoryCore, close: str, outcome: Outcome, notice: str
) -> None:
    cid = await escalated(core)
    sam = core.agent("sam")
    await core.desk.claim(cid, sam)
    assert (await core.say("hello?", intent="greeting")).replies == ()
    core.clock.advance(minutes=5)
    closed = await getattr(core.desk, close)(cid, sam)
    assert (closed.escalation.status, closed.escalation.outcome) == ("resolved", outcome)
    assert closed.escalation.resolved_at == core.clock.now
    assert (closed.notice.role, closed.notice.text) == (Role.SYSTEM, notice)
    assert closed.notice.details == {"event": outcome.value, "agent": "sam"}
    # After a resolve (not a hand back) the customer is asked to rate the help (CSAT).
    rating = [csat.QUESTION] if outcome == Outcome.RESOLVED else []
    assert core.deliverer.texts == ["sam joined the conversation.", notice, *rating]
    assert (closed.conversation.status, closed.conversation.assignee) == ("bot", None)
    event = (await core.console.events())[-1]
    assert (event["type"], event["outcome"]) == ("escalation.resolved", outcome.value)
    assert await core.desk_store.unresolved(cid) is None
    after = await core.say("hello", intent="greeting")
    assert [r.text for r in after.replies] == ["Hi Ada!"]


async def test_the_notice_is_stored_even_when_the_channel_is_down(core: InMemoryCore) -> None:
    cid, (sam, _, boss) = await escalated(core), team(core)
    await core.desk.claim(cid, sam)
    core.deliverer.fail()
    closed = await core.desk.resolve(cid, boss)
    assert closed.conversation.status == ConversationStatus.BOT
    *_, notice, question = await core.transcript()  # the notice, then the CSAT question
    assert notice == closed.notice and question.text == csat.QUESTION
    assert [r.message_id for r in core.deliverer.refused] == [notice.id, question.id]
    with pytest.raises(NotFoundError, match="no open escalation to close"):
        await core.desk.resolve(cid, boss)


async def test_closing_starts_the_fallback_ladder_afresh(core: InMemoryCore) -> None:
    assert (await core.say("blorp")).replies[0].route == Route.REPHRASE  # one failed turn
    cid = await escalated(core)
    sam = core.agent("sam")
    await core.desk.claim(cid, sam)
    await core.desk.resolve(cid, sam)
    # Without the reset this would be the second failure in a row, and a hand-off.
    assert (await core.say("blorp again")).replies[0].route == Route.REPHRASE


# -- labels ----------------------------------------------------------------------------------


async def test_labels_must_fit_the_message_they_describe(core: InMemoryCore) -> None:
    core.answers.add("Refunds take 5 days.", 0.9, intent="refund_status")
    answered = await core.say("my refund?", intent="refund_status")
    question, answer = answered.message_id, answered.replies[0].message_id
    sam = core.agent("sam")
    refused = [
        (question, {}, "at least one of"),
        (answer, {"intent": "greeting"}, "labels are for customer messages"),
        (question, {"rating": "good"}, "ratings are for the bot's messages"),
        (answer, {"rating": "meh"}, 'must be "good" or "bad"'),
        (question, {"sentiment": "furious"}, "must be one of negative, neutral, positive"),
        (question, {"intent": "Gift cards!"}, "neither a known intent nor a valid new name"),
    ]
    for message_id, labels, match in refused:
        with pytest.raises(BadRequestError, match=match):
            await core.desk.label_message(message_id, sam, **labels)
    with pytest.raises(NotFoundError):
        await core.desk.label_message(10_000, sam, rating="good")
    await core.desk.label_message(question, sam, intent="Legacy-Intent")  # the model knows it
    await core.desk.label_message(question, sam, intent="gift_cards", sentiment="positive")
    await core.desk.label_message(answer, sam, rating="bad")
    customers = Feedback(answer, rating="up")  # the customer's rating is not an agent label
    await core.service.record_customer_feedback(CHANNEL, "ada", customers)
    view = await core.desk.view(answered.conversation_id)
    assert view.labels == {
        question: MessageLabels(intent="gift_cards", sentiment="positive", by="sam"),
        answer: MessageLabels(rating="down", by="sam"),
    }
    assert "gift_cards" in await core.desk.intents()
    assert core.count("feedback", rating="down") == 1
    with pytest.raises(BadRequestError, match="sentiment"):
        await core.desk.label_conversation(answered.conversation_id, sam, "meh")
    await core.desk.label_conversation(answered.conversation_id, sam, "negative")
    assert (await core.desk.view(answered.conversation_id)).sentiment == "negative"


@pytest.mark.parametrize(
    "intent", ["../../evil", "x" * 5000, "Refund Status", "refund\x00status", "", "a"]
)
async def test_an_approved_answers_intent_is_a_known_one_or_a_valid_new_name(
    core: InMemoryCore, intent: str
) -> None:
    cid, sam = await escalated(core), core.agent("sam")
    await core.desk.claim(cid, sam)
    stored, _ = await core.desk.reply(cid, sam, "Refunds take five days.")
    with pytest.raises(BadRequestError, match="neither a known intent nor a valid new name"):
        await core.desk.approve_answer(sam, stored.id, intent=intent)
    question = next(m for m in await core.transcript() if m.role == Role.CUSTOMER)
    with pytest.raises(BadRequestError, match="neither a known intent nor a valid new name"):
        await core.desk.label_message(question.id, sam, intent=intent)
    assert await core.desk.approve_answer(sam, stored.id, intent="refund_status")
    assert await core.desk.approve_answer(sam, stored.id, intent="Legacy-Intent")  # the model's


# -- the queue, the unclaimed timeout, the dashboard -----------------------------------------


async def test_the_queue_puts_the_most_urgent_first_and_counts_unread_messages(
    core: InMemoryCore,
) -> None:
    ada = await escalated(core)  # priority 1.5
    core.clock.advance(minutes=20)  # + 20 min / 10 min of urgency
    await core.say("you are useless", sender="bob", intent="complaint", negativity=0.96)
    await core.say("hello??")
    first, second = await core.desk.queue()
    assert (first.conversation.id, first.waiting_s, first.urgency) == (ada, 1200.0, 3.5)
    assert (second.conversation.sender, second.urgency) == ("bob", 2.96)
    assert (first.unread, first.last_message) == (2, "hello??")
    sam = core.agent("sam")
    await core.desk.claim(ada, sam)
    await core.desk.reply(ada, sam, "Hi, Sam here.")
    assert [item.unread for item in await core.desk.queue()] == [0, 1]


async def test_the_unclaimed_timeout_counts_only_business_hours(core: InMemoryCore) -> None:
    """Handed off at 9:00 on a Monday, agents in from 10:00: no "all our agents are busy"
    before 10:05 (the hand-off message said when someone would answer)."""
    from bot.core.hours import BusinessHours

    core.desk.hours = BusinessHours.from_spans({"mon": "10:00-18:00"}, "UTC")
    await escalated(core)
    core.clock.advance(minutes=50)  # 9:50, closed
    assert await core.desk.time_out_unclaimed() == []
    core.clock.advance(minutes=12)  # 10:02: open, but for less than the 300 s timeout
    assert await core.desk.time_out_unclaimed() == []
    core.clock.advance(minutes=3)  # 10:05
    (told,) = await core.desk.time_out_unclaimed()
    assert core.deliverer.texts == ["Sorry Ada, all our agents are busy."]
    assert told.escalation.timed_out_at == core.clock.now


async def test_an_unclaimed_escalation_tells_its_customer_once(core: InMemoryCore) -> None:
    ada = await escalated(core)
    core.clock.advance(seconds=200)
    await escalated(core, "bob")
    core.clock.advance(seconds=99)
    assert await core.desk.time_out_unclaimed() == []  # 299 s
    core.clock.advance(seconds=1)
    (told,) = await core.desk.time_out_unclaimed()
    assert told.conversation.id == ada and told.escalation.timed_out_at == core.clock.now
    assert (told.notice.role, told.notice.details) == (Role.SYSTEM, {"event": "unclaimed"})
    assert core.deliverer.texts == ["Sorry Ada, all our agents are busy."]
    assert (await core.console.events())[-1] == {
        "type": "escalation.timeout",
        "conversation_id": ada,
        "escalation_id": told.escalation.id,
    }
    core.clock.advance(minutes=30)
    (bob,) = await core.desk.time_out_unclaimed()  # Bob's turn; Ada is not told again
    assert bob.conversation.sender == "bob"
    sam = core.agent("sam")
    await core.desk.claim(ada, sam)
    await core.desk.release(ada, sam)  # back in the queue, but she was told already
    core.clock.advance(hours=1)
    assert await core.desk.time_out_unclaimed() == []
    assert len(core.deliverer.delivered) == 3  # Ada's and Bob's notices, "sam joined"


async def test_a_claimed_escalation_does_not_time_out(core: InMemoryCore) -> None:
    cid = await escalated(core)
    core.clock.advance(seconds=100)
    await core.desk.claim(cid, core.agent("sam"))
    core.clock.advance(hours=2)
    assert await core.desk.time_out_unclaimed() == []
    assert core.deliverer.texts == ["sam joined the conversation."]


async def test_the_dashboard_is_for_operators(core: InMemoryCore) -> None:
    await core.say("hello", intent="greeting")
    await core.say("blorp")
    with pytest.raises(ForbiddenError, match="for operators"):
        await core.desk.dashboard(core.agent("sam"), 7)
    board = await core.desk.dashboard(core.agent("boss", AgentRole.OPERATOR), 7)
    assert len(board.days) == 7 and board.days[-1].date == core.clock.now.date()
    today = board.days[-1]
    assert (today.messages, today.customer_messages, today.automated) == (4, 2, 1)
    assert today.automation_rate == 0.5
    assert board.intents == (IntentFigures("greeting", 1, 0.9),)
    assert board.open_escalations == 0
