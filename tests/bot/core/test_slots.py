"""Slots the bot asks for (`requires:` in the routing file, bot/core/service.py): it asks for
the first missing one, takes it from the next message and goes on with the question's intent,
re-asks once, then lets go. Fast, on the in-memory fakes."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bot.core.entities import Entity
from bot.core.errors import ConfigurationError
from bot.core.escalation import EscalationPolicy, EscalationSettings
from bot.core.metrics import Metrics
from bot.core.records import Message, Role, Route, StoredMessage, Turn
from bot.core.router import HandlerContext, Router, RoutingConfig
from bot.core.service import ConversationService, HandleResult
from tests.fakes.answers import InMemoryAnswerIndex
from tests.fakes.clock import ManualClock
from tests.fakes.nlu import ScriptedUnderstander, understanding
from tests.fakes.store import InMemoryConversationStore

ASK_ORDER = "What's your order number? It starts with BC."
AGAIN_ORDER = "I need the order number to look at this (BC and six digits)."
ROUTING: dict[str, Any] = {
    "default": "answer",
    "intents": {
        "talk_to_human": {"handoff": True},
        "greeting": {"response": "Hi {name}!"},
        "order_status": {"answer": True, "requires": [{"order_id": ASK_ORDER}]},
        "change_address": {
            "response": "{name}, the address of {order_id} can be changed under My orders.",
            "requires": ["order_id"],
        },
        "return_item": {
            "handler": "start_return",
            "requires": [
                "order_id",
                {"email": {"ask": "Which email should the label go to?", "ask_again": "Email?"}},
            ],
        },
        "callback": {"response": "We'll call you back, {name}.", "requires": ["name"]},
    },
    "messages": {
        "rephrase": "Could you rephrase that?",
        "handoff": "A person takes over.",
        "waiting": "An agent has it.",
        "error": "Sorry.",
        "ask_again_order_id": AGAIN_ORDER,
    },
    "entities": {
        "order_id": {
            "pattern": r"\bBC[\s-]?(\d{6})\b",
            "normalize": "BC-{1}",
            "looks_like": [r"\bBC[\s-]?\d+\b", r"\border\s+#?\d{3,}\b"],
        }
    },
}
STATUS = "{order_id} left our warehouse; the tracking link is under My orders."
GENERIC = "Open My orders and click Track parcel."


@dataclass
class Harness:
    store: InMemoryConversationStore
    understander: ScriptedUnderstander
    answers: InMemoryAnswerIndex
    router: Router
    service: ConversationService
    handled: list[HandlerContext] = field(default_factory=list)

    def new_service(self) -> ConversationService:
        """Another replica: its own service over the same store."""
        return service_for(self.store, self.understander, self.answers, self.router)

    async def say(
        self,
        text: str,
        sender: str = "ada",
        name: str | None = "Ada",
        service: ConversationService | None = None,
    ) -> HandleResult:
        return await (service or self.service).handle(
            Message("fake", sender, text, sender_name=name)
        )

    async def transcript(self, sender: str = "ada") -> list[StoredMessage]:
        conversation = await self.store.find_conversation("fake", sender)
        assert conversation is not None
        return await self.store.transcript(conversation.id)


def service_for(
    store: InMemoryConversationStore,
    understander: ScriptedUnderstander,
    answers: InMemoryAnswerIndex,
    router: Router,
) -> ConversationService:
    return ConversationService(
        store,
        understander,
        answers,
        router,
        EscalationPolicy(EscalationSettings()),
        Metrics(),
        0.5,
    )


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    store = InMemoryConversationStore(ManualClock())
    understander = ScriptedUnderstander()
    for text, intent in {
        "where is my order?": "order_status",
        "where is it??": "order_status",
        "just tell me where my parcel is": "order_status",
        "hi": "greeting",
        "I want a human": "talk_to_human",
        "can I change the delivery address?": "change_address",
        "actually I want to change the address of BC-204719": "change_address",
        "I want to return the kettle": "return_item",
        "please call me back": "callback",
    }.items():
        understander.teach(text, understanding(intent, 0.9))
    answers = InMemoryAnswerIndex()
    answers.add(STATUS, 0.9, intent="order_status")
    router = Router(RoutingConfig.parse(copy.deepcopy(ROUTING), "shop.yml"))
    handled: list[HandlerContext] = []

    async def start_return(ctx: HandlerContext) -> str:
        handled.append(ctx)
        return f"Return label for {ctx.slots['order_id']} sent to {ctx.slots['email']}."

    router.add_handler("start_return", start_return)
    router.check()
    service = service_for(store, understander, answers, router)
    await store.start()
    try:
        yield Harness(store, understander, answers, router, service, handled)
    finally:
        await store.stop()


async def test_the_bot_asks_for_a_missing_slot_and_records_what_it_waits_for(
    harness: Harness,
) -> None:
    first = await harness.say("where is my order?")
    (reply,) = first.replies
    assert (reply.route, reply.text, reply.rateable) == (Route.SLOT_QUESTION, ASK_ORDER, False)
    customer, bot = await harness.transcript()
    assert customer.route == Route.SLOT_QUESTION
    assert bot.details["awaiting"] == {
        "intent": "order_status",
        "slot": "order_id",
        "asked": 1,
        "message_id": customer.id,
    }
    assert harness.answers.searches == []  # nothing served before the number is known


async def test_the_next_message_gives_the_slot_and_the_original_intent_is_answered(
    harness: Harness,
) -> None:
    await harness.say("where is my order?")
    # What the model makes of a bare order number is meaningless: here, a confident greeting.
    harness.understander.teach("bc 204719", understanding("greeting", 0.95))
    (reply,) = (await harness.say("bc 204719")).replies
    assert (reply.route, reply.text) == (
        Route.ANSWER,
        "BC-204719 left our warehouse; the tracking link is under My orders.",
    )
    # The index was searched with the question the number answers, under its intent.
    text, _, intent, embedding = harness.answers.searches[-1]
    assert (text, intent, embedding) == ("where is my order?", "order_status", None)
    *_, answer_message, answer = await harness.transcript()
    assert answer_message.details["resumes"]["intent"] == "order_status"
    assert "awaiting" not in answer.details


async def test_no_answer_after_the_slot_is_given_hands_off_rather_than_ask_to_rephrase(
    harness: Harness,
) -> None:
    harness.answers.entries.clear()
    await harness.say("where is my order?")
    result = await harness.say("BC-204719")
    assert result.replies[0].route == Route.HANDOFF and result.status == "waiting"
    (escalation,) = await harness.store.open_escalations()
    assert escalation.reason == "repeated_fallback"
    assert "gave the order_id the bot asked for" in escalation.explanation


async def test_a_response_is_filled_with_the_slot(harness: Harness) -> None:
    (question,) = (await harness.say("can I change the delivery address?")).replies
    # The short form's default question, built from the slot's name.
    assert question.text == "Could you give me your order id?"
    (reply,) = (await harness.say("it's BC204719")).replies
    assert (reply.route, reply.text) == (
        Route.RESPONSE,
        "Ada, the address of BC-204719 can be changed under My orders.",
    )


async def test_a_second_missing_slot_is_asked_next_and_the_handler_gets_them_all(
    harness: Harness,
) -> None:
    await harness.say("I want to return the kettle")
    (second,) = (await harness.say("BC-204719")).replies
    assert (second.route, second.text) == (
        Route.SLOT_QUESTION,
        "Which email should the label go to?",
    )
    *_, asked = await harness.transcript()
    first_message = (await harness.transcript())[0]
    assert asked.details["awaiting"] == {
        "intent": "return_item",
        "slot": "email",
        "asked": 1,
        "message_id": first_message.id,
    }
    (done,) = (await harness.say("ada@example.com")).replies
    assert (done.route, done.text) == (
        Route.HANDLER,
        "Return label for BC-204719 sent to ada@example.com.",
    )
    (ctx,) = harness.handled
    assert ctx.slots == {"order_id": "BC-204719", "email": "ada@example.com", "name": "Ada"}
    assert ctx.understanding.intent == "return_item"


async def test_a_miss_is_asked_again_once_then_the_question_is_dropped(harness: Harness) -> None:
    harness.answers.add(GENERIC, 0.8, intent="order_status")
    await harness.say("where is my order?")
    (again,) = (await harness.say("where is it??")).replies
    assert (again.route, again.text) == (Route.SLOT_QUESTION, AGAIN_ORDER)
    assert (await harness.transcript())[-1].details["awaiting"]["asked"] == 2
    # Asked twice in vain: answered as well as it can be without the number, not asked again.
    (reply,) = (await harness.say("just tell me where my parcel is")).replies
    assert (reply.route, reply.text) == (Route.ANSWER, GENERIC)
    customer = (await harness.transcript())[-2]
    assert customer.details["dropped"] == {
        "intent": "order_status",
        "slot": "order_id",
        "message_id": (await harness.transcript())[0].id,
    }


async def test_after_two_misses_a_message_the_bot_cannot_place_gets_the_fallback(
    harness: Harness,
) -> None:
    await harness.say("where is my order?")
    (again,) = (await harness.say("I don't have it")).replies  # the model abstains
    assert again.route == Route.SLOT_QUESTION
    (reply,) = (await harness.say("no idea")).replies
    assert reply.route == Route.REPHRASE
    # A new question about an order asks afresh.
    (fresh,) = (await harness.say("where is my order?")).replies
    assert (fresh.route, fresh.text) == (Route.SLOT_QUESTION, ASK_ORDER)


async def test_a_response_whose_slot_the_customer_cannot_give_is_never_half_filled(
    harness: Harness,
) -> None:
    await harness.say("can I change the delivery address?")
    await harness.say("I don't know it")
    (reply,) = (await harness.say("no")).replies
    assert reply.route == Route.REPHRASE and "{" not in reply.text


async def test_a_hand_off_request_mid_question_wins(harness: Harness) -> None:
    await harness.say("where is my order?")
    result = await harness.say("I want a human")
    assert result.replies[0].route == Route.HANDOFF and result.status == "waiting"


async def test_an_angry_reply_mid_question_is_handed_off(harness: Harness) -> None:
    await harness.say("where is my order?")
    harness.understander.teach("useless bot", understanding(None, 0.2, negativity=0.97))
    result = await harness.say("useless bot")
    assert result.replies[0].route == Route.HANDOFF
    (escalation,) = await harness.store.open_escalations()
    assert escalation.reason == "negative_message"


async def test_a_confident_other_intent_drops_the_question(harness: Harness) -> None:
    await harness.say("where is my order?")
    (reply,) = (await harness.say("hi")).replies
    assert (reply.route, reply.text) == (Route.RESPONSE, "Hi Ada!")
    # The question is gone: a later unrelated message is not taken as its answer.
    (later,) = (await harness.say("hmm")).replies
    assert later.route == Route.REPHRASE


async def test_a_reply_with_the_slot_that_says_more_follows_its_own_intent(
    harness: Harness,
) -> None:
    await harness.say("where is my order?")
    (reply,) = (await harness.say("actually I want to change the address of BC-204719")).replies
    assert (reply.route, reply.text) == (
        Route.RESPONSE,
        "Ada, the address of BC-204719 can be changed under My orders.",
    )


async def test_a_slot_known_from_an_earlier_message_is_not_asked(harness: Harness) -> None:
    harness.understander.teach("hi, I ordered BC-204719", understanding("greeting", 0.9))
    await harness.say("hi, I ordered BC-204719")
    (reply,) = (await harness.say("where is my order?")).replies
    assert reply.route == Route.ANSWER and reply.text.startswith("BC-204719 left")


async def test_slots_come_from_the_entities_stored_with_earlier_messages(
    harness: Harness,
) -> None:
    """A stored annotation is what counts (a learned entity the patterns would not find);
    a message stored without one is read again."""
    conversation = await harness.store.conversation("fake", "ada", "Ada")
    stored, _ = await harness.store.add_customer_message(conversation.id, "the blue one")
    await harness.store.record_turn(
        conversation.id,
        Turn(
            stored.id,
            understanding(None, 0.2),
            Route.REPHRASE,
            1.0,
            details={"entities": [{"type": "order_id", "value": "BC-777777"}]},
            reply_text="Could you rephrase that?",
        ),
    )
    (reply,) = (await harness.say("where is my order?")).replies
    assert reply.text.startswith("BC-777777 left")

    other = await harness.store.conversation("fake", "bob", "Bob")
    await harness.store.add_customer_message(other.id, "it's about BC-123456")  # no annotation
    (reply,) = (await harness.say("where is my order?", sender="bob", name="Bob")).replies
    assert reply.text.startswith("BC-123456 left")


async def test_a_resolved_case_forgets_its_slots(harness: Harness) -> None:
    harness.understander.teach("hi, I ordered BC-204719", understanding("greeting", 0.9))
    await harness.say("hi, I ordered BC-204719")
    conversation = await harness.store.find_conversation("fake", "ada")
    assert conversation is not None
    await harness.store.add_message(
        conversation.id, Role.SYSTEM, "Resolved.", details={"event": "resolved"}
    )
    (reply,) = (await harness.say("where is my order?")).replies
    assert reply.route == Route.SLOT_QUESTION


async def test_the_question_is_answered_on_another_replica(harness: Harness) -> None:
    await harness.say("where is my order?")
    (reply,) = (await harness.say("BC-204719", service=harness.new_service())).replies
    assert reply.route == Route.ANSWER and "BC-204719" in reply.text


async def test_the_name_slot_is_asked_when_unknown_and_taken_from_the_reply(
    harness: Harness,
) -> None:
    (question,) = (await harness.say("please call me back", name=None)).replies
    assert question.text == "Could you give me your name?"
    (reply,) = (await harness.say("Ada Lovelace", name=None)).replies
    assert (reply.route, reply.text) == (Route.RESPONSE, "We'll call you back, Ada Lovelace.")
    # Known from the channel: not asked.
    (known,) = (await harness.say("please call me back", sender="bob", name="Bob")).replies
    assert known.text == "We'll call you back, Bob."


async def test_a_mistyped_order_number_is_asked_for_with_the_format(harness: Harness) -> None:
    harness.understander.teach("my order BC-111 is late", understanding("order_status", 0.6))
    (reply,) = (await harness.say("my order BC-111 is late")).replies
    assert (reply.route, reply.text) == (Route.SLOT_QUESTION, AGAIN_ORDER)


async def test_an_unsure_message_with_a_mistyped_order_number_asks_for_it(
    harness: Harness,
) -> None:
    """The model abstains on "charged twice for order 1234": the bot does not guess an answer
    from the index, it asks for the number, then searches with the question and the number."""
    harness.answers.add(
        "Sorry! {order_id} was charged once; the second is a hold.",
        0.9,
        question="I was charged twice for order 1234",
    )
    (reply,) = (await harness.say("I was charged twice for order 1234")).replies
    assert (reply.route, reply.text) == (Route.SLOT_QUESTION, AGAIN_ORDER)
    assert (await harness.transcript())[-1].details["awaiting"]["intent"] is None
    assert harness.answers.searches == []
    (answer,) = (await harness.say("BC-204719")).replies
    assert (answer.route, answer.text) == (
        Route.ANSWER,
        "Sorry! BC-204719 was charged once; the second is a hold.",
    )
    text, _, intent, _ = harness.answers.searches[-1]
    assert (text, intent) == ("I was charged twice for order 1234", None)


async def test_a_mistyped_order_number_is_asked_for_even_when_out_of_scope(
    harness: Harness,
) -> None:
    harness.understander.teach(
        "charged 2x for order 1234!!", understanding(None, 0.2, top="x", out_of_scope=True)
    )
    (reply,) = (await harness.say("charged 2x for order 1234!!")).replies
    assert (reply.route, reply.text) == (Route.SLOT_QUESTION, AGAIN_ORDER)


async def test_a_mistyped_order_number_is_asked_for_under_any_answered_intent(
    harness: Harness,
) -> None:
    harness.understander.teach("refund for order 1234?", understanding("refund_status", 0.9))
    (reply,) = (await harness.say("refund for order 1234?")).replies
    assert (reply.route, reply.text) == (Route.SLOT_QUESTION, AGAIN_ORDER)
    harness.understander.teach("BC-204719", understanding("greeting", 0.9))
    harness.answers.add("Refunds for {order_id} take 5 days.", 0.9, intent="refund_status")
    (answer,) = (await harness.say("BC-204719")).replies
    assert answer.text == "Refunds for BC-204719 take 5 days."
    # A response route (small talk) is not interrupted by it.
    harness.understander.teach("hi, order 1234 here", understanding("greeting", 0.9))
    (hello,) = (await harness.say("hi, order 1234 here", sender="bob", name="Bob")).replies
    assert hello.text == "Hi Bob!"


async def test_an_unsure_message_without_an_order_reference_is_not_asked_about(
    harness: Harness,
) -> None:
    (reply,) = (await harness.say("I ordered 2 things")).replies
    assert reply.route == Route.REPHRASE


# ---- configuration -----------------------------------------------------------------------


def parse(**intents: Any) -> RoutingConfig:
    document = copy.deepcopy(ROUTING)
    document["intents"] = intents
    return RoutingConfig.parse(document, "shop.yml")


def test_questions_come_from_the_route_then_messages_then_the_slot_name() -> None:
    document = copy.deepcopy(ROUTING)
    document["messages"]["ask_email"] = ["Your email, please?"]
    config = RoutingConfig.parse(document, "shop.yml")
    order, email = config.intents["return_item"].requires
    assert order.questions == ("Could you give me your order id?",)
    assert order.again == (AGAIN_ORDER,)
    assert email.questions == ("Which email should the label go to?",)  # the route's own
    document["intents"]["return_item"]["requires"] = ["email"]
    (email,) = RoutingConfig.parse(document, "shop.yml").intents["return_item"].requires
    assert email.questions == ("Your email, please?",)
    assert email.again == ("I need your email to look at this. Your email, please?",)


@pytest.mark.parametrize(
    ("intents", "error"),
    [
        (
            {"order_status": {"answer": True, "requires": ["ordr_id"]}},
            r"shop\.yml: intents\.order_status\.requires: 'ordr_id' is not a slot; use name, "
            r"a built-in entity type \(card, iban, email.*\) or an entity of the `entities:` "
            r"section \(order_id\)",
        ),
        (
            {"change_address": {"response": "Changed {order_id}."}},
            r"intents\.change_address\.response: \{order_id\} needs the slot order_id; add it "
            r"to the route's `requires: \[order_id\]`",
        ),
        (
            {"talk_to_human": {"handoff": True, "requires": ["order_id"]}},
            r"intents\.talk_to_human\.requires: a handoff route asks for nothing",
        ),
        (
            {"order_status": {"answer": True, "requires": "order_id"}},
            r"intents\.order_status\.requires: expected a list of slots",
        ),
        (
            {"order_status": {"answer": True, "requires": ["order_id", "order_id"]}},
            r"intents\.order_status\.requires\[1\]: order_id is required twice",
        ),
        (
            {"order_status": {"answer": True, "requires": [{"order_id": {"question": "?"}}]}},
            r"requires\[0\]\.order_id: unknown field\(s\) question; use ask and ask_again",
        ),
        (
            {"order_status": {"answer": True, "requires": [{"order_id": 7}]}},
            r"requires\[0\]\.order_id: expected a question",
        ),
    ],
)
def test_bad_requires_are_refused_at_start_up(intents: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        parse(**intents)


def test_a_bad_looks_like_pattern_is_refused_with_the_entity_and_field() -> None:
    document = copy.deepcopy(ROUTING)
    document["entities"]["order_id"]["looks_like"] = ["(BC", ""]
    with pytest.raises(ConfigurationError) as error:
        RoutingConfig.parse(document, "shop.yml")
    assert "entities.order_id.looks_like[0]: invalid regular expression '(BC'" in str(error.value)
    assert "entities.order_id.looks_like[1]: expected a non-empty regular expression" in str(
        error.value
    )


def test_out_of_scope_cannot_require_slots() -> None:
    document = copy.deepcopy(ROUTING)
    document["out_of_scope"] = {"response": "Not here.", "requires": ["order_id"]}
    with pytest.raises(ConfigurationError, match=r"out_of_scope\.requires: .*remove"):
        RoutingConfig.parse(document, "shop.yml")


def test_the_packaged_sample_shop_asks_for_the_order_number() -> None:
    config = RoutingConfig.load()
    for intent in ("order_status", "delivery_problem"):
        (requirement,) = config.intents[intent].requires
        assert requirement.name == "order_id"
        assert re.search(r"BC-\d{6}", requirement.questions[0])
    assert "payment_failed" not in config.intents and not config.intents["greeting"].requires
    (order,) = config.entities.definitions
    assert order.looks_like  # "order 1234" and "BC-111" are asked about


async def test_an_unsure_guess_that_needs_the_mistyped_slot_is_resumed_with_that_intent(
    harness: Harness,
) -> None:
    """ "hello, my name is John, my order BC-111 is late": the detector declines it, but the
    model's best guess (order_status) requires an order number, which the customer tried to
    give: once they write it, the answer comes from order_status's answers."""
    text = "hello, my name is John, my order BC-111 is late"
    harness.understander.teach(
        text, understanding(None, 0.63, top="order_status", out_of_scope=True)
    )
    (reply,) = (await harness.say(text, name=None)).replies
    assert (reply.route, reply.text) == (Route.SLOT_QUESTION, AGAIN_ORDER)
    assert (await harness.transcript())[-1].details["awaiting"]["intent"] == "order_status"

    (answer,) = (await harness.say("sorry, it is BC-204711", name=None)).replies

    assert (answer.route, answer.text) == (
        Route.ANSWER,
        "BC-204711 left our warehouse; the tracking link is under My orders.",
    )
    searched, _, intent, _ = harness.answers.searches[-1]
    assert (searched, intent) == (text, "order_status")


async def test_an_unsure_guess_that_needs_no_such_slot_is_not_taken(harness: Harness) -> None:
    harness.understander.teach(
        "hi, order 1234 please", understanding(None, 0.5, top="greeting", out_of_scope=True)
    )
    await harness.say("hi, order 1234 please")
    assert (await harness.transcript())[-1].details["awaiting"]["intent"] is None


async def test_a_learned_entity_type_declared_in_the_routing_file_can_be_required() -> None:
    """`entities.learned` names the types the learned entity model finds, so a route may
    require one: asked while missing, filled from the model's entity in the reply."""
    document = copy.deepcopy(ROUTING)
    document["entities"]["learned"] = ["product"]
    document["intents"]["product_availability"] = {
        "response": "{product} is back in stock next week.",
        "requires": [{"product": "Which product do you mean?"}],
    }
    store = InMemoryConversationStore(ManualClock())
    understander = ScriptedUnderstander()
    understander.teach("is it back in stock?", understanding("product_availability", 0.9))
    sofa = "the blue sofa"
    found = understanding("greeting", 0.6)
    understander.teach(
        sofa, dataclasses.replace(found, entities=(Entity("product", "blue sofa", sofa, 4, 13),))
    )
    del document["intents"]["return_item"]  # its handler is not what this test is about
    router = Router(RoutingConfig.parse(document, "shop.yml"))
    router.check()
    service = service_for(store, understander, InMemoryAnswerIndex(), router)
    await store.start()
    try:
        (ask,) = (await service.handle(Message("fake", "bo", "is it back in stock?"))).replies
        assert (ask.route, ask.text) == (Route.SLOT_QUESTION, "Which product do you mean?")
        (reply,) = (await service.handle(Message("fake", "bo", sofa))).replies
        assert (reply.route, reply.text) == (
            Route.RESPONSE,
            "blue sofa is back in stock next week.",
        )
    finally:
        await store.stop()


@pytest.mark.parametrize(
    ("learned", "error"),
    [
        (["order_id"], r"entities\.learned: 'order_id' is already a built-in or configured"),
        (["email"], r"entities\.learned: 'email' is already a built-in or configured"),
        (["Product"], r"entities\.learned: 'Product' is not an entity type name"),
        ("product, city", r"entities\.learned: 'product, city' is not an entity type name"),
        ({"product": 1}, r"entities\.learned: expected a list of the entity types"),
    ],
)
def test_bad_learned_entity_types_are_refused(learned: Any, error: str) -> None:
    document = copy.deepcopy(ROUTING)
    document["entities"]["learned"] = learned
    with pytest.raises(ConfigurationError, match=error):
        RoutingConfig.parse(document, "shop.yml")


def test_an_undeclared_learned_type_says_where_to_declare_it() -> None:
    document = copy.deepcopy(ROUTING)
    document["intents"]["product_availability"] = {"answer": True, "requires": ["product"]}
    with pytest.raises(ConfigurationError, match=r"goes in `entities\.learned: \[\.\.\.\]`"):
        RoutingConfig.parse(document, "shop.yml")
