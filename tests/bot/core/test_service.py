"""`ConversationService`'s decisions, fast: the real service, router, escalation policy,
dispatcher and bus on in-memory fakes of the store, the models and the answer index.

The harness here (`core` fixture) is shared with `test_desk_service.py`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from bot.core.bus import Event, LocalBus, Subscription
from bot.core.delivery import Deliverer, Dispatcher
from bot.core.demotion import RatedAnswers
from bot.core.desk import AgentDesk
from bot.core.errors import BadRequestError, StoreUnavailableError
from bot.core.escalation import (
    ASKED_FOR_HUMAN,
    NEGATIVE_MESSAGE,
    NEGATIVE_TREND,
    REPEATED_FALLBACK,
    UPSET_FALLBACK,
    EscalationPolicy,
    EscalationSettings,
)
from bot.core.metrics import Metrics
from bot.core.ports import AnswerIndex, ConversationStore, DeskStore, Understander
from bot.core.records import (
    Agent,
    AgentRole,
    Conversation,
    ConversationStatus,
    Feedback,
    Message,
    Role,
    Route,
    StoredMessage,
)
from bot.core.router import HandlerContext, Router, RoutingConfig
from bot.core.service import ConversationService, HandleResult
from tests.fakes.answers import InMemoryAnswerIndex
from tests.fakes.clock import ManualClock
from tests.fakes.delivery import RecordingDeliverer
from tests.fakes.nlu import ScriptedUnderstander, understanding
from tests.fakes.store import InMemoryConversationStore, InMemoryDeskStore

CHANNEL = "fake"
MIN_ANSWER_SCORE = 0.5
# One text per template, so that tests can expect exact replies.
ROUTING: dict[str, Any] = {
    "default": "answer",
    "intents": {
        "greeting": {"response": "Hi {name}!", "quick_replies": ["Track my order", "Refunds"]},
        "order_status": {"handler": "track_order"},
        "talk_to_human": {"handoff": True},
    },
    "messages": {
        "rephrase": "Could you rephrase that, {name}?",
        "handoff": "I'm handing you to a person, {name}.",
        "waiting": "An agent has your conversation, {name}.",
        "error": "Sorry {name}, something went wrong; your message is saved.",
        "unclaimed": "Sorry {name}, all our agents are busy.",
        "resolved": "Resolved, {name}. Write any time.",
        "handed_back": "You're back with the bot, {name}.",
    },
}
INTENT_LABELS = ("greeting", "order_status", "refund_status", "talk_to_human", "Legacy-Intent")
ANGRY = 0.75  # below `negative_message` (0.95), above `negative_trend` (0.7)


# -- the harness -----------------------------------------------------------------------------


class BusRecorder:
    """Collects every event of one topic published on a bus while `recording`."""

    def __init__(self, bus: LocalBus, topic: str) -> None:
        self.bus = bus
        self.topic = topic
        self.received: list[Event] = []

    @asynccontextmanager
    async def recording(self) -> AsyncIterator[BusRecorder]:
        async with self.bus.subscribe(self.topic) as subscription:
            collector = asyncio.create_task(self._collect(subscription))
            try:
                yield self
            finally:
                collector.cancel()

    async def events(self) -> list[Event]:
        """What was published so far (the collector gets to run first)."""
        for _ in range(3):
            await asyncio.sleep(0)
        return list(self.received)

    async def types(self) -> list[str]:
        return [event["type"] for event in await self.events()]

    async def _collect(self, subscription: Subscription) -> None:
        async for event in subscription:
            self.received.append(event)


@dataclass
class InMemoryCore:
    """Every part of the core, on fakes; `say` is a customer writing on the fake channel."""

    clock: ManualClock
    store: InMemoryConversationStore
    desk_store: InMemoryDeskStore
    understander: ScriptedUnderstander
    answers: InMemoryAnswerIndex
    deliverer: RecordingDeliverer
    router: Router
    metrics: Metrics
    service: ConversationService
    desk: AgentDesk
    console: BusRecorder
    handled: list[HandlerContext] = field(default_factory=list)

    async def say(
        self,
        text: str,
        *,
        sender: str = "ada",
        client_id: str | None = None,
        **understood: Any,
    ) -> HandleResult:
        """Handle `text` from `sender`; `understood` (`understanding()`'s arguments), when
        given, is what the models make of it."""
        if understood:
            self.understander.teach(text, understanding(**understood))
        return await self.service.handle(message(text, sender, client_id))

    def agent(self, name: str, role: AgentRole = AgentRole.AGENT) -> Agent:
        return Agent(len(name), name, role, self.clock())

    async def conversation(self, sender: str = "ada") -> Conversation:
        found = await self.store.find_conversation(CHANNEL, sender)
        assert found is not None, f"{sender} never wrote"
        return found

    async def transcript(self, sender: str = "ada") -> list[StoredMessage]:
        return await self.store.transcript((await self.conversation(sender)).id)

    def count(self, metric: str, **labels: str) -> float:
        """A counter of this core's registry (0 when never incremented)."""
        value = self.metrics.registry.get_sample_value(f"supportbot_{metric}_total", labels)
        return value or 0.0

    async def track_order(self, context: HandlerContext) -> str:
        """The handler of intent `order_status`."""
        self.handled.append(context)
        return f"Order of {context.message.sender_name} ({context.understanding.intent}): shipped."


def message(text: str, sender: str = "ada", client_id: str | None = None) -> Message:
    return Message(CHANNEL, sender, text, client_id=client_id, sender_name=sender.title())


@asynccontextmanager
async def in_memory_core(
    routing: dict[str, Any] | None = None,
    redact: tuple[str, ...] = (),
    min_margin: float = 0.0,
    **escalation: Any,
) -> AsyncIterator[InMemoryCore]:
    """A started core on fakes; `routing`: the routing document (default `ROUTING`);
    `min_margin`: `retrieval.min_margin`; `escalation`: `EscalationSettings` fields to
    change."""
    clock = ManualClock()
    store = InMemoryConversationStore(clock)
    desk_store = InMemoryDeskStore(store)
    understander = ScriptedUnderstander()
    answers = InMemoryAnswerIndex()
    bus = LocalBus()
    deliverer = RecordingDeliverer()
    dispatcher = Dispatcher()
    dispatcher.register(CHANNEL, deliverer)
    router = Router(
        RoutingConfig.parse(ROUTING if routing is None else routing, "test_service.py"),
        rng=random.Random(0),
    )
    settings = EscalationSettings(**escalation)
    metrics = Metrics()
    rated = RatedAnswers()  # shared as the factory does: the desk's ratings touch it
    service = ConversationService(
        store,
        understander,
        answers,
        router,
        EscalationPolicy(settings),
        metrics,
        MIN_ANSWER_SCORE,
        dispatcher=dispatcher,
        bus=bus,
        clock=clock,
        redact=redact,
        min_margin=min_margin,
        rated=rated,
    )
    desk = AgentDesk(
        store,
        desk_store,
        router,
        dispatcher,
        bus,
        metrics,
        intent_labels=lambda: INTENT_LABELS,
        unclaimed_timeout_s=settings.unclaimed_timeout_s,
        clock=clock,
        rated=rated,
    )
    console = BusRecorder(bus, "console")
    core = InMemoryCore(
        clock,
        store,
        desk_store,
        understander,
        answers,
        deliverer,
        router,
        metrics,
        service,
        desk,
        console,
    )
    router.add_handler("track_order", core.track_order)
    router.check()
    async with AsyncExitStack() as stack:
        await store.start()
        stack.push_async_callback(store.stop)
        await stack.enter_async_context(console.recording())
        yield core


@pytest.fixture
async def core() -> AsyncIterator[InMemoryCore]:
    async with in_memory_core() as started:
        yield started


# -- the fakes are the ports -----------------------------------------------------------------


def _fakes() -> list[tuple[type, object]]:
    store = InMemoryConversationStore(ManualClock())
    # Annotated: mypy checks that each fake satisfies its port structurally.
    conversations: ConversationStore = store
    desk: DeskStore = InMemoryDeskStore(store)
    understander: Understander = ScriptedUnderstander()
    answers: AnswerIndex = InMemoryAnswerIndex()
    deliverer: Deliverer = RecordingDeliverer()
    return [
        (ConversationStore, conversations),
        (DeskStore, desk),
        (Understander, understander),
        (AnswerIndex, answers),
        (Deliverer, deliverer),
    ]


@pytest.mark.parametrize(("port", "fake"), _fakes(), ids=lambda p: getattr(p, "__name__", ""))
def test_each_fake_has_every_method_of_its_port_with_the_same_parameters(
    port: type, fake: object
) -> None:
    methods = [name for name, value in vars(port).items() if inspect.isfunction(value)]
    assert methods, port
    for name in methods:
        if name.startswith("_"):
            continue
        wanted, found = getattr(port, name), getattr(fake, name)
        assert inspect.iscoroutinefunction(found) == inspect.iscoroutinefunction(wanted), name
        wanted_parameters = list(inspect.signature(wanted).parameters)[1:]  # without self
        assert list(inspect.signature(found).parameters) == wanted_parameters, name


# -- routing kinds ---------------------------------------------------------------------------


async def test_a_configured_response_offers_its_quick_replies_and_no_thumbs(
    core: InMemoryCore,
) -> None:
    result = await core.say("hello", intent="greeting")
    (reply,) = result.replies
    assert (reply.role, reply.route, reply.text) == (Role.BOT, Route.RESPONSE, "Hi Ada!")
    # A greeting is small talk the operator wrote, not an answer: nothing to rate.
    assert reply.quick_replies == ("Track my order", "Refunds") and not reply.rateable
    assert result.status == ConversationStatus.BOT and not result.duplicate
    customer, bot = await core.transcript()
    assert (customer.id, customer.route, customer.intent) == (
        result.message_id,
        "response",
        "greeting",
    )
    assert customer.details["top_intents"] == [["greeting", 0.9]]
    assert customer.model_versions == {"intent": "test-intent", "sentiment": "test-sentiment"}
    assert bot.id == reply.message_id
    assert core.answers.searches == []  # a configured response needs no search
    assert core.count("messages", channel=CHANNEL, route="response") == 1


async def test_a_handler_gets_the_message_its_understanding_and_the_conversation(
    core: InMemoryCore,
) -> None:
    result = await core.say("where is BC-104522", intent="order_status", confidence=0.8)
    (context,) = core.handled
    assert context.message == message("where is BC-104522")
    assert context.understanding.intent_confidence == 0.8
    assert context.conversation_id == result.conversation_id
    (reply,) = result.replies
    assert reply.route == Route.HANDLER and reply.rateable
    assert reply.text == "Order of Ada (order_status): shipped."
    customer, _ = await core.transcript()
    assert customer.details["handler"] == "track_order"


@pytest.mark.parametrize("score", [MIN_ANSWER_SCORE, 0.93])
async def test_a_retrieved_answer_scoring_at_least_min_answer_score_is_served(
    core: InMemoryCore, score: float
) -> None:
    core.answers.add("Refunds take 5 days.", score, intent="refund_status", source="logs")
    result = await core.say("where is my refund", intent="refund_status", embedding="vector")
    (reply,) = result.replies
    assert (reply.route, reply.text, reply.rateable) == (Route.ANSWER, "Refunds take 5 days.", True)
    # The models' embedding of the question is reused, and the search keeps to the intent.
    assert core.answers.searches == [("where is my refund", 3, "refund_status", "vector")]
    customer, _ = await core.transcript()
    assert customer.details["source"] == "logs" and customer.details["score"] == score
    assert (await core.conversation()).failed_turns == 0


async def test_an_answer_below_min_answer_score_is_not_served_the_bot_asks_to_rephrase(
    core: InMemoryCore,
) -> None:
    core.answers.add("Refunds take 5 days.", 0.49, intent="refund_status")
    result = await core.say("where is my refund", intent="refund_status")
    (reply,) = result.replies
    assert (reply.route, reply.text) == (Route.REPHRASE, "Could you rephrase that, Ada?")
    assert not reply.rateable and result.status == ConversationStatus.BOT
    customer, _ = await core.transcript()
    assert customer.details["best_score"] == 0.49
    assert (await core.conversation()).failed_turns == 1
    assert core.count("fallbacks") == 1


# -- the fallback ladder ---------------------------------------------------------------------


@pytest.mark.parametrize("max_failed_turns", [1, 2, 3])
async def test_the_bot_asks_to_rephrase_then_hands_off_after_max_failed_turns(
    max_failed_turns: int,
) -> None:
    async with in_memory_core(max_failed_turns=max_failed_turns) as core:
        routes = [(await core.say(f"blorp {i}")).replies[0].route for i in range(max_failed_turns)]
        assert routes == [Route.REPHRASE] * (max_failed_turns - 1) + [Route.HANDOFF]
        (escalation,) = await core.store.open_escalations()
        assert escalation.reason == REPEATED_FALLBACK
        assert escalation.scores["failed_turns"] == max_failed_turns
        conversation = await core.conversation()
        assert conversation.status == ConversationStatus.WAITING
        assert conversation.failed_turns == 0  # the hand-off ended the ladder
        types = await core.console.types()
        assert types == ["message"] * max_failed_turns + ["escalation.opened"]


async def test_an_upset_customer_the_bot_cannot_help_is_handed_off_not_asked_to_rephrase(
    core: InMemoryCore,
) -> None:
    mild = await core.say("blorp", sender="bob", negativity=0.5)
    assert mild.replies[0].route == Route.REPHRASE  # a calm one is asked to rephrase
    result = await core.say("third time i'm asking where my money is", negativity=0.83)
    assert result.replies[0].route == Route.HANDOFF and result.status == ConversationStatus.WAITING
    (escalation,) = await core.store.open_escalations()
    assert escalation.reason == UPSET_FALLBACK and escalation.scores["negativity"] == 0.83


async def test_a_good_answer_resets_the_failed_turns(core: InMemoryCore) -> None:
    core.answers.add("Refunds take 5 days.", 0.9, question="where is my refund")
    await core.say("blorp")
    assert (await core.conversation()).failed_turns == 1
    answered = await core.say("Where is my refund ")  # abstains; the search finds it anyway
    assert answered.replies[0].route == Route.ANSWER
    assert (await core.conversation()).failed_turns == 0
    again = await core.say("blorp again")  # one failure in a row, not two: no hand-off yet
    assert again.replies[0].route == Route.REPHRASE and again.status == ConversationStatus.BOT


# -- hand-off --------------------------------------------------------------------------------


async def test_a_strongly_negative_message_is_handed_off_at_once(core: InMemoryCore) -> None:
    core.answers.add("Refunds take 5 days.", 0.9, intent="refund_status")
    calm = await core.say("refund?", sender="bob", intent="refund_status", negativity=0.9)
    assert calm.replies[0].route == Route.ANSWER  # 0.9 < negative_message (0.95)
    result = await core.say("this is a disgrace", intent="refund_status", negativity=0.96)
    (reply,) = result.replies
    assert (reply.route, reply.text) == (Route.HANDOFF, "I'm handing you to a person, Ada.")
    assert result.status == ConversationStatus.WAITING
    (escalation,) = await core.store.open_escalations()
    assert (escalation.reason, escalation.priority) == (NEGATIVE_MESSAGE, 2.96)
    assert escalation.conversation_id == result.conversation_id
    assert core.answers.searches == [("refund?", 3, "refund_status", None)]  # not for ada
    assert core.count("escalations", reason=NEGATIVE_MESSAGE) == 1


async def test_a_negative_trend_is_handed_off(core: InMemoryCore) -> None:
    core.answers.add("Refunds take 5 days.", 0.9, intent="refund_status")
    for text in ("refund??", "still no refund"):
        answered = await core.say(text, intent="refund_status", negativity=ANGRY)
        assert answered.replies[0].route == Route.ANSWER
    result = await core.say("this takes forever", intent="refund_status", negativity=ANGRY)
    assert result.replies[0].route == Route.HANDOFF
    (escalation,) = await core.store.open_escalations()
    assert escalation.reason == NEGATIVE_TREND and escalation.scores["trend_mean"] == ANGRY


@pytest.mark.parametrize(
    ("confidence", "explanation"),
    [
        (0.9, "The customer asked for a person (intent talk_to_human, confidence 0.90)."),
        # Below handoff_min_confidence the policy does not act, the routing does.
        (0.4, "Routing sends intent talk_to_human to a person."),
    ],
)
async def test_a_handoff_intent_is_handed_off(
    core: InMemoryCore, confidence: float, explanation: str
) -> None:
    result = await core.say("a human please", intent="talk_to_human", confidence=confidence)
    assert result.replies[0].route == Route.HANDOFF
    assert result.status == ConversationStatus.WAITING
    (escalation,) = await core.store.open_escalations()
    assert (escalation.reason, escalation.explanation) == (ASKED_FOR_HUMAN, explanation)
    assert await core.console.types() == ["message", "escalation.opened"]


async def test_the_trend_starts_afresh_after_an_agent_resolved(core: InMemoryCore) -> None:
    core.answers.add("Refunds take 5 days.", 0.9, intent="refund_status")
    await core.say("a human please", intent="talk_to_human")
    for text in ("hello??", "anyone???"):  # angry while waiting: silent, but counted
        assert (await core.say(text, intent="refund_status", negativity=ANGRY)).replies == ()
    sam = core.agent("sam")
    await core.desk.claim((await core.conversation()).id, sam)
    await core.desk.resolve((await core.conversation()).id, sam)  # without writing a word
    routes = []
    for text in ("one more thing", "and another", "still angry"):
        result = await core.say(text, intent="refund_status", negativity=ANGRY)
        routes.append(result.replies[0].route)
    # What led to the first hand-off was dealt with: only the three new messages make a trend.
    assert routes == [Route.ANSWER, Route.ANSWER, Route.HANDOFF]
    escalations = [e.reason for e in core.store.tables.escalations.values()]
    assert escalations == [ASKED_FOR_HUMAN, NEGATIVE_TREND]


async def test_the_bot_stays_silent_while_waiting_and_while_claimed(core: InMemoryCore) -> None:
    await core.service.request_handoff(message("a person please"))
    waiting = await core.say("hello?", intent="greeting")
    assert waiting.replies == () and waiting.status == ConversationStatus.WAITING
    conversation = await core.conversation()
    await core.desk.claim(conversation.id, core.agent("sam"))
    claimed = await core.say("are you there?", intent="greeting")
    assert claimed.replies == () and claimed.status == ConversationStatus.CLAIMED
    silent = [m for m in await core.transcript() if m.text in ("hello?", "are you there?")]
    # The models still ran, so the agent sees intent and sentiment next to each message.
    assert [(m.route, m.intent) for m in silent] == [("agent", "greeting")] * 2
    # Within ack_interval_s of the hand-off message nothing more is said; the claim is told.
    assert [m.role for m in await core.transcript()] == [
        Role.CUSTOMER,
        Role.BOT,
        Role.CUSTOMER,
        Role.SYSTEM,
        Role.CUSTOMER,
    ]
    assert core.count("messages", channel=CHANNEL, route="agent") == 2
    events = [e for e in await core.console.events() if e["type"] == "message"]
    assert [e["status"] for e in events] == ["waiting", "waiting", "claimed"]


async def test_request_handoff_escalates_a_bot_conversation_at_once(core: InMemoryCore) -> None:
    result = await core.service.request_handoff(message("/human"))
    (reply,) = result.replies
    assert (reply.route, reply.text) == (Route.HANDOFF, "I'm handing you to a person, Ada.")
    assert result.status == ConversationStatus.WAITING
    (escalation,) = await core.store.open_escalations()
    assert (escalation.reason, escalation.priority) == (ASKED_FOR_HUMAN, 1.5)
    assert core.understander.texts == []  # no model needed to see what was asked
    events = await core.console.events()
    assert [e["type"] for e in events] == ["message", "escalation.opened"]
    assert events[1]["conversation_id"] == result.conversation_id
    assert events[1]["status"] == "waiting"


async def test_request_handoff_while_escalated_says_queued_until_an_agent_has_it(
    core: InMemoryCore,
) -> None:
    await core.service.request_handoff(message("/human"))
    again = await core.service.request_handoff(message("/human now!"))
    (reply,) = again.replies
    # Nobody claimed it yet: "an agent has your conversation" would be untrue.
    assert (reply.route, reply.text) == (
        Route.AGENT,
        "Got it, it's in the queue: an agent will see it.",
    )
    await core.desk.claim(again.conversation_id, core.agent("sam"))
    claimed = await core.service.request_handoff(message("/human!!!"))
    assert claimed.status == ConversationStatus.CLAIMED
    assert (claimed.replies[0].route, claimed.replies[0].text) == (
        Route.AGENT,
        "An agent has your conversation, Ada.",
    )
    assert len(core.store.tables.escalations) == 1  # no second escalation
    assert (await core.console.types()).count("escalation.opened") == 1


async def test_request_handoff_delivered_twice_is_escalated_once(core: InMemoryCore) -> None:
    first = await core.service.request_handoff(message("/human", client_id="h1"))
    again = await core.service.request_handoff(message("/human", client_id="h1"))
    assert again.duplicate and again.replies == first.replies
    assert len(await core.transcript()) == 2


async def test_request_handoff_interrupted_before_escalating_escalates_on_retry(
    core: InMemoryCore,
) -> None:
    core.store.make_unavailable("escalate")
    with pytest.raises(StoreUnavailableError):
        await core.service.request_handoff(message("/human", client_id="h1"))
    core.store.make_available()
    retry = await core.service.request_handoff(message("/human", client_id="h1"))
    assert retry.status == ConversationStatus.WAITING
    assert [r.route for r in retry.replies] == [Route.HANDOFF]


# -- deliveries: retried, concurrent, interrupted --------------------------------------------


async def test_a_retried_delivery_gets_the_stored_replies_and_is_not_answered_twice(
    core: InMemoryCore,
) -> None:
    first = await core.say("hello", client_id="m1", intent="greeting")
    again = await core.say("hello", client_id="m1")
    assert again.duplicate and not first.duplicate
    assert (again.message_id, again.replies) == (first.message_id, first.replies)
    assert core.understander.texts == ["hello"]
    assert [m.text for m in await core.transcript()] == ["hello", "Hi Ada!"]
    assert core.count("messages", channel=CHANNEL, route="duplicate") == 1
    assert await core.console.types() == ["message"]
    # Client ids are per conversation: Bob's "m1" is a message of his own.
    bob = await core.say("hello", sender="bob", client_id="m1")
    assert not bob.duplicate and bob.conversation_id != first.conversation_id


async def test_a_second_delivery_during_the_first_waits_for_it_and_is_a_duplicate(
    core: InMemoryCore,
) -> None:
    core.understander.teach("hello", understanding("greeting"))
    model = core.understander.pause("hello")
    first = asyncio.create_task(core.service.handle(message("hello", client_id="m1")))
    for _ in range(50):  # until the first delivery is stored and waits for the models
        if core.understander.texts:
            break
        await asyncio.sleep(0)
    second = asyncio.create_task(core.service.handle(message("hello", client_id="m1")))
    for _ in range(50):
        await asyncio.sleep(0)
    model.set()
    results = await asyncio.gather(first, second)
    # The conversation's turn lock kept the second out until the first was answered, so it
    # was not taken for an interrupted turn and answered again.
    assert [r.duplicate for r in results] == [False, True]
    assert results[1].replies == results[0].replies and len(results[0].replies) == 1
    assert core.understander.texts == ["hello"]
    assert len(await core.transcript()) == 2


async def test_a_turn_interrupted_after_the_message_was_stored_is_answered_once_on_retry(
    core: InMemoryCore,
) -> None:
    core.store.make_unavailable("record_turn")  # stored, then the database went away
    with pytest.raises(StoreUnavailableError):
        await core.say("hello", client_id="m1", intent="greeting")
    (stored,) = await core.transcript()
    assert stored.route is None  # kept, unanswered, and not answered with the error message
    core.store.make_available()
    retry = await core.say("hello", client_id="m1")
    assert not retry.duplicate and retry.message_id == stored.id
    assert [r.text for r in retry.replies] == ["Hi Ada!"]
    again = await core.say("hello", client_id="m1")
    assert again.duplicate and again.replies == retry.replies
    assert [m.text for m in await core.transcript()] == ["hello", "Hi Ada!"]


# -- errors ----------------------------------------------------------------------------------


async def _failing_handler(context: HandlerContext) -> str:
    raise RuntimeError(f"the order service is down ({context.message.text})")


@pytest.mark.parametrize("failing", ["understander", "handler"])
async def test_a_failure_while_deciding_is_answered_with_the_error_message_and_the_message_kept(
    core: InMemoryCore, caplog: pytest.LogCaptureFixture, failing: str
) -> None:
    if failing == "understander":
        core.understander.teach("where is BC-1", RuntimeError("the model crashed"))
    else:
        core.understander.teach("where is BC-1", understanding("order_status"))
        core.router.add_handler("track_order", _failing_handler)
    with caplog.at_level(logging.ERROR, logger="bot.core.service"):
        result = await core.say("where is BC-1", client_id="m1")
    (reply,) = result.replies
    assert (reply.role, reply.rateable) == (Role.SYSTEM, False)
    assert reply.text == "Sorry Ada, something went wrong; your message is saved."
    assert result.status == ConversationStatus.BOT
    assert [(m.role, m.text) for m in await core.transcript()] == [
        (Role.CUSTOMER, "where is BC-1"),
        (Role.SYSTEM, reply.text),
    ]
    assert core.count("errors") == 1
    (record,) = caplog.records
    assert record.exc_info is not None and f"message {result.message_id}" in record.getMessage()
    # The apology is the answer: a retry gets it again, nothing is tried twice.
    again = await core.say("where is BC-1", client_id="m1")
    assert again.duplicate and again.replies == result.replies
    assert core.understander.texts == ["where is BC-1"]
    # The next message is answered as usual.
    assert (await core.say("hi", intent="greeting")).replies[0].text == "Hi Ada!"


async def test_a_store_that_cannot_keep_the_message_fails_the_call(core: InMemoryCore) -> None:
    core.store.make_unavailable("receive")
    with pytest.raises(StoreUnavailableError):
        await core.say("hello", intent="greeting")
    assert core.understander.texts == []
    assert await core.console.events() == []
    core.store.make_available()
    assert await core.transcript() == []  # the caller answers 503 and the client retries


# -- announcements and feedback --------------------------------------------------------------


async def test_every_handled_message_is_announced_to_the_consoles(core: InMemoryCore) -> None:
    result = await core.say("hello", intent="greeting")
    assert await core.console.events() == [
        {
            "type": "message",
            "conversation_id": result.conversation_id,
            "channel": CHANNEL,
            "message_id": result.message_id,
            "status": "bot",
        }
    ]


async def test_a_customer_rates_only_rateable_replies_of_their_own_conversation(
    core: InMemoryCore,
) -> None:
    core.answers.add("Refunds take 5 days.", 0.9, intent="refund_status")
    answered = await core.say("my refund?", intent="refund_status")
    rephrased = await core.say("blorp")
    greeted = await core.say("hello", intent="greeting")
    bobs = await core.say("my refund?", sender="bob", intent="refund_status")

    async def rate(message_id: int, sender: str = "ada") -> int:
        feedback = Feedback(message_id, rating="up")
        return await core.service.record_customer_feedback(CHANNEL, sender, feedback)

    with pytest.raises(BadRequestError, match="not part of this conversation"):
        await rate(bobs.replies[0].message_id)
    with pytest.raises(BadRequestError, match="not part of this conversation"):
        await rate(answered.replies[0].message_id, sender="nobody")
    with pytest.raises(BadRequestError, match="not a rateable bot answer"):
        await rate(rephrased.replies[0].message_id)
    with pytest.raises(BadRequestError, match="not a rateable bot answer"):
        await rate(greeted.replies[0].message_id)
    with pytest.raises(BadRequestError, match="not a rateable bot answer"):
        await rate(answered.message_id)  # the customer's own message
    rated = answered.replies[0].message_id
    await rate(rated)
    assert await core.store.feedback(rated) == [Feedback(rated, rating="up")]
    assert await core.store.feedback(bobs.replies[0].message_id) == []
    assert core.count("feedback", rating="up") == 1
