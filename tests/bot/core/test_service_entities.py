"""The runtime's use of entities (bot/core/service.py): every customer message is stored with
the details found in it, and a past answer that needs a slot (`{order_id}`) is served only
when the conversation has given it, filled in. Fast, on the in-memory fakes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from bot.core.escalation import EscalationPolicy, EscalationSettings
from bot.core.metrics import Metrics
from bot.core.records import Message, Route
from bot.core.router import Router, RoutingConfig
from bot.core.service import ConversationService, HandleResult
from tests.fakes.answers import InMemoryAnswerIndex
from tests.fakes.clock import ManualClock
from tests.fakes.nlu import ScriptedUnderstander, understanding
from tests.fakes.store import InMemoryConversationStore

ROUTING: dict[str, Any] = {
    "default": "answer",
    "intents": {"talk_to_human": {"handoff": True}},
    "messages": {
        "rephrase": "Could you rephrase that, maybe with your order number?",
        "handoff": "A person takes over.",
        "waiting": "An agent has it.",
        "error": "Sorry.",
    },
    "entities": {"order_id": {"pattern": r"\bBC[\s-]?(\d{6})\b", "normalize": "BC-{1}"}},
}
TEMPLATE = "Hi {name}, {order_id} can still be changed under My orders."


@dataclass
class Harness:
    store: InMemoryConversationStore
    understander: ScriptedUnderstander
    answers: InMemoryAnswerIndex
    service: ConversationService

    async def say(self, text: str, sender: str = "ada", name: str | None = "Ada") -> HandleResult:
        return await self.service.handle(Message("fake", sender, text, sender_name=name))

    async def customer_details(self, sender: str = "ada") -> list[dict[str, Any]]:
        conversation = await self.store.find_conversation("fake", sender)
        assert conversation is not None
        transcript = await self.store.transcript(conversation.id)
        return [m.details for m in transcript if m.role == "customer"]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    store = InMemoryConversationStore(ManualClock())
    understander = ScriptedUnderstander(default=understanding("change_order", 0.9))
    answers = InMemoryAnswerIndex()
    service = ConversationService(
        store,
        understander,
        answers,
        Router(RoutingConfig.parse(ROUTING, "test.yml")),
        EscalationPolicy(EscalationSettings()),
        Metrics(),
        0.5,
    )
    await store.start()
    try:
        yield Harness(store, understander, answers, service)
    finally:
        await store.stop()


async def test_each_customer_message_is_stored_with_its_entities(harness: Harness) -> None:
    await harness.say("order bc 204719, mail me at ADA@example.com")
    (details,) = await harness.customer_details()
    assert details["entities"] == [
        {"type": "order_id", "value": "BC-204719", "text": "bc 204719", "start": 6, "end": 15},
        {
            "type": "email",
            "value": "ada@example.com",
            "text": "ADA@example.com",
            "start": 28,
            "end": 43,
        },
    ]


async def test_a_message_without_details_stores_an_empty_list(harness: Harness) -> None:
    await harness.say("hello, my order BC-111 is late")
    (details,) = await harness.customer_details()
    assert details["entities"] == []


async def test_a_template_is_filled_from_the_current_message(harness: Harness) -> None:
    harness.answers.add(TEMPLATE, 0.9, intent="change_order")
    (reply,) = (await harness.say("can I change order BC-204719?")).replies
    assert (reply.route, reply.text) == (
        Route.ANSWER,
        "Hi Ada, BC-204719 can still be changed under My orders.",
    )
    assert harness.answers.slots_seen == [{"order_id": "BC-204719", "name": "Ada"}]


async def test_a_template_is_filled_from_an_earlier_message(harness: Harness) -> None:
    harness.answers.add(TEMPLATE, 0.9, intent="change_order")
    first = await harness.say("can I change my order?", name=None)
    assert first.replies[0].route == Route.REPHRASE  # no order number yet: not served
    (reply,) = (await harness.say("it is BC204719", name=None)).replies
    assert reply.text == "Hi, BC-204719 can still be changed under My orders."


async def test_a_template_needing_a_missing_slot_is_never_served(harness: Harness) -> None:
    harness.answers.add(TEMPLATE, 0.9, intent="change_order")
    for sender, text in (
        ("bob", "I was charged twice for order 1234"),
        ("cy", "hello, my order BC-111 is late"),
    ):
        (reply,) = (await harness.say(text, sender=sender)).replies
        assert reply.route == Route.REPHRASE
        assert not re.search(r"BC-\d{6}|\{", reply.text)


async def test_an_answer_without_slots_is_served_with_or_without_them(harness: Harness) -> None:
    harness.answers.add("Changes are made under My orders.", 0.8, intent="change_order")
    harness.answers.add(TEMPLATE, 0.9, intent="change_order")
    (reply,) = (await harness.say("can I change my order?")).replies
    assert reply.text == "Changes are made under My orders."
    (reply,) = (await harness.say("it's BC-204719")).replies
    assert reply.text == "Hi Ada, BC-204719 can still be changed under My orders."


async def test_slots_belong_to_one_conversation(harness: Harness) -> None:
    harness.answers.add(TEMPLATE, 0.9, intent="change_order")
    await harness.say("order BC-204719", sender="ada")
    (reply,) = (await harness.say("can I change my order?", sender="bob", name="Bob")).replies
    assert reply.route == Route.REPHRASE and "204719" not in reply.text
