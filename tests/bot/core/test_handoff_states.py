"""Honest hand-off states, fast, on the in-memory core of `test_service.py`: "waiting" until
someone claims, "<agent> joined" when they do, an acknowledgement (not a flood of them) for
messages written while waiting, a queue that reorders when a waiting customer gets angrier,
and business hours in the hand-off message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from bot.core.escalation import (
    ASKED_FOR_HUMAN,
    EscalationPolicy,
    EscalationSettings,
)
from bot.core.hours import HandoffSettings
from bot.core.records import ConversationStatus, Role, Route
from bot.core.router import RoutingConfig
from bot.core.service import ConversationService
from tests.bot.core.test_service import (
    ANGRY,
    MIN_ANSWER_SCORE,
    ROUTING,
    InMemoryCore,
    in_memory_core,
    message,
)
from tests.fakes.nlu import understanding

QUEUED = "Got it, it's in the queue: an agent will see it."


@pytest.fixture
async def core() -> AsyncIterator[InMemoryCore]:
    async with in_memory_core() as started:
        yield started


async def test_messages_while_waiting_are_acknowledged_at_most_once_per_interval(
    core: InMemoryCore,
) -> None:
    handed = await core.say("a person please", intent="talk_to_human")
    assert handed.replies[0].route == Route.HANDOFF
    # Right after the hand-off message, which said it all: silence, not an echo.
    core.clock.advance(seconds=10)
    assert (await core.say("hello?")).replies == ()
    # A minute after the last thing the customer was told: one acknowledgement...
    core.clock.advance(seconds=60)
    first = await core.say("anyone there?")
    (ack,) = first.replies
    assert (ack.role, ack.text, ack.rateable) == (Role.SYSTEM, QUEUED, False)
    assert first.status == ConversationStatus.WAITING
    # ...and not one for each of the messages that follow quickly.
    for seconds in (5, 20, 30):
        core.clock.advance(seconds=seconds)
        assert (await core.say("???")).replies == ()
    core.clock.advance(seconds=6)  # 61 s after the acknowledgement
    assert [r.text for r in (await core.say("still here")).replies] == [QUEUED]
    # The acknowledgement is part of the transcript (REST, the widget's history, the console).
    stored = [m for m in await core.transcript() if m.role == Role.SYSTEM]
    assert [(m.text, m.details) for m in stored] == [(QUEUED, {"event": "queued"})] * 2


async def test_a_claim_tells_the_customer_who_joined_and_ends_the_acknowledgements(
    core: InMemoryCore,
) -> None:
    handed = await core.say("a person please", intent="talk_to_human")
    ana = core.agent("Ana")
    await core.desk.claim(handed.conversation_id, ana)
    joined = core.deliverer.delivered[-1][1]
    assert (joined.role, joined.text) == (Role.SYSTEM, "Ana joined the conversation.")
    # Claiming one's own claim again does not say it twice.
    await core.desk.claim(handed.conversation_id, ana)
    assert core.deliverer.texts == ["Ana joined the conversation."]
    core.clock.advance(minutes=5)
    result = await core.say("thanks for coming")
    assert result.replies == () and result.status == ConversationStatus.CLAIMED
    conversation = await core.conversation()
    assert conversation.assignee == "Ana"


async def test_an_angrier_message_while_waiting_moves_the_conversation_up_the_queue(
    core: InMemoryCore,
) -> None:
    # Bob got a hand-off for a strong reason; Ada only asked for a person, calmly.
    await core.say("this is outrageous", sender="bob", intent="refund_status", negativity=0.96)
    await core.say("a person please", intent="talk_to_human", negativity=0.0)
    assert [item.conversation.sender for item in await core.desk.queue()] == ["bob", "ada"]
    # A mildly annoyed message does not outrank Bob...
    await core.say("hm", intent="refund_status", negativity=0.3)
    assert [item.conversation.sender for item in await core.desk.queue()] == ["bob", "ada"]
    # ...a furious one does: the queue reorders.
    await core.say("I AM FURIOUS", intent="refund_status", negativity=0.99)
    queue = await core.desk.queue()
    assert [item.conversation.sender for item in queue] == ["ada", "bob"]
    ada = queue[0].escalation
    assert ada.priority == 2.99 and ada.reason == ASKED_FOR_HUMAN  # the reason it was opened
    assert "Raised while waiting: A strongly negative message" in ada.explanation
    # A calmer message afterwards does not lower it again.
    await core.say("ok", intent="refund_status", negativity=-0.5)
    assert (await core.desk.queue())[0].escalation.priority == 2.99
    assert len(core.store.tables.escalations) == 2  # raised, not re-opened


async def test_a_negative_trend_while_waiting_counts_too(core: InMemoryCore) -> None:
    await core.say("a person please", intent="talk_to_human", negativity=0.0)
    for text in ("hello?", "anyone???", "this is ridiculous"):
        await core.say(text, intent="refund_status", negativity=ANGRY)
    (item,) = await core.desk.queue()
    assert item.escalation.priority == round(1.5 + ANGRY, 4)


def closed_core_service(core: InMemoryCore) -> ConversationService:
    """The core's parts with the sample shop's hours: Mon-Sat 8:00-20:00, Berlin."""
    hours = HandoffSettings(
        hours={d: "8:00-20:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat")},
        timezone="Europe/Berlin",
    ).business_hours()
    return ConversationService(
        core.store,
        core.understander,
        core.answers,
        core.router,
        EscalationPolicy(EscalationSettings()),
        core.metrics,
        MIN_ANSWER_SCORE,
        hours=hours,
        ack_interval_s=60,
        clock=core.clock,
    )


async def test_outside_business_hours_the_handoff_says_when_someone_will_answer(
    core: InMemoryCore,
) -> None:
    service = closed_core_service(core)
    core.clock.now = datetime(2026, 12, 7, 21, 30, tzinfo=UTC)  # Monday 22:30 in Berlin
    core.understander.teach("a person please", understanding(intent="talk_to_human"))
    result = await service.handle(message("a person please"))
    (reply,) = result.replies
    assert reply.route == Route.HANDOFF and "tomorrow at 8:00 CET" in reply.text
    assert "Mon-Sat" not in reply.text
    # The queue keeps the conversation for the morning shift.
    assert result.status == ConversationStatus.WAITING
    assert [i.conversation.id for i in await core.desk.queue()] == [result.conversation_id]
    # Later messages hear when, too.
    core.clock.advance(minutes=2)
    later = await service.handle(message("ok, and my refund?"))
    assert [r.text for r in later.replies] == [
        "Got it, it's in the queue: an agent will see it tomorrow at 8:00 CET."
    ]


async def test_within_business_hours_the_usual_handoff_message_is_used(
    core: InMemoryCore,
) -> None:
    service = closed_core_service(core)
    core.clock.now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)  # Monday 10:00 in Berlin
    result = await service.request_handoff(message("/human"))
    assert result.replies[0].text == "I'm handing you to a person, Ada."


async def test_a_routing_file_words_the_closed_message_itself() -> None:
    custom = {
        **ROUTING,
        "messages": {**ROUTING["messages"], "handoff_closed": "Back {opens}, {name}!"},
    }
    config = RoutingConfig.parse(custom, "test")
    assert config.messages["handoff_closed"] == ("Back {opens}, {name}!",)
    # Left out, a neutral built-in text is used (no promise of particular hours).
    assert "{opens}" in RoutingConfig.parse(ROUTING, "test").messages["handoff_closed"][0]
