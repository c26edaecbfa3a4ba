"""What the bot does with a message its intent model's detector declines as out of scope:
whatever the routing file's `out_of_scope` entry says (fast, on the in-memory core)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.core.errors import ConfigurationError
from bot.core.escalation import ASKED_FOR_HUMAN, NEGATIVE_MESSAGE, REPEATED_FALLBACK
from bot.core.records import ConversationStatus, Route
from bot.core.router import IntentRoute, Router, RoutingConfig
from tests.bot.core.test_service import CHANNEL, ROUTING, InMemoryCore, in_memory_core

WEATHER = "what's the weather in Paris tomorrow?"
SUGGESTIONS = ["Where is my order?", "Talk to a person"]
DECLINE = "I can help with orders and refunds, {name}."


@pytest.fixture
async def core() -> AsyncIterator[InMemoryCore]:
    async with in_memory_core() as started:
        yield started


def routing(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(ROUTING)
    document.update(changes)
    return document


async def say_out_of_scope(core: InMemoryCore, text: str = WEATHER, **understood: Any) -> Any:
    """`text`, which the detector scores 2.5 and declines (the model's guess: refund_status)."""
    return await core.say(
        text, intent=None, top="refund_status", out_of_scope=True, oos_score=2.5, **understood
    )


async def test_without_an_out_of_scope_entry_the_bot_asks_to_rephrase_and_searches_nothing(
    core: InMemoryCore,
) -> None:
    core.answers.add("Refunds take 5 days.", 0.99, intent="refund_status")
    result = await say_out_of_scope(core)
    (reply,) = result.replies
    assert (reply.route, reply.text) == (Route.REPHRASE, "Could you rephrase that, Ada?")
    # A confident-looking answer is not searched for a message about none of the intents.
    assert core.answers.searches == []
    assert (await core.conversation()).failed_turns == 1
    customer, _ = await core.transcript()
    assert customer.details["out_of_scope"] is True and customer.details["oos_score"] == 2.5
    assert customer.intent is None and customer.details["top_intents"] == [["refund_status", 0.9]]
    assert core.count("out_of_scope", channel=CHANNEL) == 1


async def test_in_scope_messages_are_marked_so_and_not_counted(core: InMemoryCore) -> None:
    core.answers.add("Refunds take 5 days.", 0.9, intent="refund_status")
    result = await core.say("where is my refund", intent="refund_status", oos_score=-0.4)
    assert result.replies[0].route == Route.ANSWER
    customer, _ = await core.transcript()
    assert customer.details["out_of_scope"] is False and customer.details["oos_score"] == -0.4
    assert core.count("out_of_scope", channel=CHANNEL) == 0


async def test_a_response_entry_says_what_the_bot_can_do_and_never_hands_off() -> None:
    document = routing(out_of_scope={"response": DECLINE}, suggestions=SUGGESTIONS)
    async with in_memory_core(document, max_failed_turns=2) as core:
        for _ in range(4):
            (reply,) = (await say_out_of_scope(core)).replies
            assert (reply.route, reply.text) == (
                Route.RESPONSE,
                "I can help with orders and refunds, Ada.",
            )
            assert reply.quick_replies == tuple(SUGGESTIONS) and not reply.rateable
        # A clear "I can't help with that" is not a failed turn: no hand-off for off-topic.
        conversation = await core.conversation()
        assert conversation.failed_turns == 0
        assert conversation.status == ConversationStatus.BOT
        assert await core.store.open_escalations() == []
        assert core.answers.searches == []


async def test_a_response_entry_keeps_its_own_quick_replies() -> None:
    document = routing(
        out_of_scope={"response": DECLINE, "quick_replies": ["Refunds"]}, suggestions=SUGGESTIONS
    )
    async with in_memory_core(document) as core:
        (reply,) = (await say_out_of_scope(core)).replies
        assert reply.quick_replies == ("Refunds",)


async def test_the_rephrase_prompt_offers_the_suggestions_and_the_ladder_still_hands_off() -> None:
    document = routing(out_of_scope="rephrase", suggestions=SUGGESTIONS)
    async with in_memory_core(document, max_failed_turns=2) as core:
        (first,) = (await say_out_of_scope(core)).replies
        assert first.route == Route.REPHRASE and first.quick_replies == tuple(SUGGESTIONS)
        (second,) = (await say_out_of_scope(core, "and the weather on sunday?")).replies
        assert second.route == Route.HANDOFF
        (escalation,) = await core.store.open_escalations()
        assert escalation.reason == REPEATED_FALLBACK


async def test_an_answer_entry_searches_every_answer_as_if_in_scope() -> None:
    async with in_memory_core(routing(out_of_scope="answer")) as core:
        core.answers.add("It is sunny.", 0.8, question=WEATHER)
        (reply,) = (await say_out_of_scope(core)).replies
        assert (reply.route, reply.text) == (Route.ANSWER, "It is sunny.")
        # No intent filter: the search runs over all answers.
        assert core.answers.searches == [(WEATHER, 3, None, None)]


async def test_a_handoff_entry_hands_the_conversation_to_a_person() -> None:
    async with in_memory_core(routing(out_of_scope="handoff")) as core:
        result = await say_out_of_scope(core)
        assert result.replies[0].route == Route.HANDOFF
        assert result.status == ConversationStatus.WAITING
        (escalation,) = await core.store.open_escalations()
        assert escalation.reason == ASKED_FOR_HUMAN
        assert "out-of-scope" in escalation.explanation


async def test_a_handler_entry_gets_the_out_of_scope_understanding() -> None:
    async with in_memory_core(routing(out_of_scope={"handler": "track_order"})) as core:
        (reply,) = (await say_out_of_scope(core)).replies
        assert (reply.route, reply.text) == (Route.HANDLER, "Order of Ada (None): shipped.")
        (context,) = core.handled
        assert context.understanding.out_of_scope and context.understanding.intent is None


async def test_an_angry_out_of_scope_message_is_still_handed_off_for_its_anger() -> None:
    async with in_memory_core(routing(out_of_scope={"response": DECLINE})) as core:
        result = await say_out_of_scope(core, "your weather is rubbish!!", negativity=0.99)
        assert result.replies[0].route == Route.HANDOFF
        (escalation,) = await core.store.open_escalations()
        assert escalation.reason == NEGATIVE_MESSAGE


ORDER_ID = {"order_id": {"pattern": r"\bBC-(\d{6})\b", "normalize": "BC-{1}"}}


async def test_a_message_naming_one_of_our_own_entities_is_not_declined() -> None:
    """An order number (a configured entity) says the message is about this business."""
    document = routing(out_of_scope={"response": DECLINE}, entities=ORDER_ID)
    async with in_memory_core(document) as core:
        text = "hello, I'm John from Leeds, BC-204719 is late and I'm off on holiday"
        (reply,) = (await say_out_of_scope(core, text)).replies
        assert reply.route == Route.REPHRASE  # unsure, so it asks: not "can't help"
        customer, _ = await core.transcript()
        assert customer.details["out_of_scope"] is False
        assert customer.details["oos_score"] == 2.5  # the detector's view is kept
        assert core.count("out_of_scope", channel=CHANNEL) == 0
        # A built-in entity (an email, a date) is no such sign.
        (other,) = (
            await say_out_of_scope(core, "mail the weather to a@b.org", sender="bo")
        ).replies
        assert other.route == Route.RESPONSE


# -- the routing file ---------------------------------------------------------------------------


def test_the_packaged_routing_declines_with_what_the_shop_can_help_with() -> None:
    config = RoutingConfig.load()
    assert config.out_of_scope.kind == "response"
    assert "orders" in config.out_of_scope.responses[0]
    assert "Talk to a person" in config.suggestions
    assert config.out_of_scope.quick_replies == config.suggestions


def test_a_routing_file_without_the_entry_keeps_the_rephrase_ladder() -> None:
    config = RoutingConfig.parse(ROUTING, "old.yml")
    assert config.out_of_scope == IntentRoute("rephrase") and config.suggestions == ()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"out_of_scope": "shrug"}, "out_of_scope: 'shrug' is not a route"),
        ({"out_of_scope": {"response": "a", "handoff": True}}, "out_of_scope: give exactly one"),
        ({"suggestions": "Track my order"}, "suggestions: expected a list of texts"),
        ({"suggestions": ["ok", ""]}, "suggestions: expected a list of texts"),
    ],
)
def test_a_bad_out_of_scope_entry_is_refused_naming_the_file_and_the_field(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RoutingConfig.parse(routing(**changes), "shop.yml")
    assert "routing config shop.yml" in str(caught.value) and problem in str(caught.value)


def test_an_unregistered_out_of_scope_handler_is_refused_at_start() -> None:
    router = Router(RoutingConfig.parse(routing(out_of_scope={"handler": "web"}), "shop.yml"))
    with pytest.raises(ConfigurationError, match="web"):
        router.check()
