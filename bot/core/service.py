"""Handling a customer message: persist, understand, decide, answer, record."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.core import csat, demotion, logs
from bot.core.bus import EventBus, LocalBus
from bot.core.clock import Clock, utcnow
from bot.core.datafiles import normalize
from bot.core.delivery import Dispatcher
from bot.core.entities import (
    ALWAYS_REDACTED,
    BUILTIN_TYPES,
    Entity,
    EntityExtractor,
    mask,
    name_in,
    near_misses,
    slot_values,
)
from bot.core.entities import merge as merge_entities
from bot.core.errors import (
    BadRequestError,
    ConfigurationError,
    NotFoundError,
    StoreUnavailableError,
)
from bot.core.escalation import ASKED_FOR_HUMAN, REPEATED_FALLBACK, EscalationPolicy
from bot.core.hours import BusinessHours, describe_opening
from bot.core.library import by_source, controlled, edited_sources
from bot.core.locks import KeyedLocks
from bot.core.metrics import Metrics
from bot.core.ports import (
    AnswerControls,
    AnswerIndex,
    ConversationStore,
    TurnLocks,
    Understander,
)
from bot.core.records import (
    Answer,
    Conversation,
    ConversationStatus,
    Escalation,
    Feedback,
    Message,
    Reply,
    Role,
    Route,
    StoredMessage,
    Turn,
    Understanding,
)
from bot.core.router import HandlerContext, Router, SlotRequirement

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HandleResult:
    """What handling one customer message produced."""

    conversation_id: str
    message_id: int
    replies: tuple[Reply, ...]
    status: ConversationStatus
    duplicate: bool = False
    # Who has the conversation when `status` is `claimed` (channels say "<agent> joined").
    assignee: str | None = None


@dataclass(frozen=True, slots=True)
class _Decision:
    route: Route
    text: str
    details: dict[str, Any]
    escalation: Escalation | None = None
    failed_turns: int = 0
    quick_replies: tuple[str, ...] = ()


# A slot question is asked at most this many times in a row (the question, then once
# rephrased); the reply after that is routed as a new message.
MAX_SLOT_QUESTIONS = 2
# A reply holding the awaited slot says something else too when it has more words than this
# besides the detail ("actually I want to cancel BC-204719"): then a confident intent of its
# own wins over the question's. "it's BC-204719", "my order number is BC-204719" do not.
FOLLOW_UP_WORDS = 4


@dataclass(frozen=True, slots=True)
class _FollowUp:
    """The bot's last reply asked for a slot (`details["awaiting"]` of that reply, read back
    from the store so that any replica handles the answer), and what this message holds.

    Attributes:
        intent: the intent of the question the slot is for (None: the model was unsure
            of it; the question gave the slot mistyped, "order 1234").
        slot: the slot asked for.
        asked: how many times in a row it was asked (1, then 2 when rephrased).
        message_id: the customer message the question is about (its text is what the
            answer index is searched with once the slot is given).
        holds: this message gives the slot.
        says_more: this message has more to it than the detail (see FOLLOW_UP_WORDS).
    """

    intent: str | None
    slot: str
    asked: int
    message_id: int
    holds: bool
    says_more: bool

    @staticmethod
    def awaiting(recent: Sequence[StoredMessage]) -> dict[str, Any] | None:
        """`details["awaiting"]` of the last reply before the newest message, if it asked."""
        for m in reversed(recent[:-1]):
            if m.role == Role.CUSTOMER:
                continue
            awaiting = m.details.get("awaiting") if m.role == Role.BOT else None
            return awaiting if isinstance(awaiting, dict) else None
        return None

    @classmethod
    def of(
        cls, recent: Sequence[StoredMessage], text: str, entities: Sequence[Entity]
    ) -> _FollowUp | None:
        """The pending question and what `text` (the new message; `entities` are its own)
        makes of it; None when the bot's last reply asked for nothing."""
        awaiting = cls.awaiting(recent)
        if awaiting is None:
            return None
        intent, slot = awaiting.get("intent"), awaiting.get("slot")
        message_id = awaiting.get("message_id")
        if not isinstance(slot, str) or not isinstance(message_id, int):
            return None
        if intent is not None and not isinstance(intent, str):
            return None
        found = [e for e in entities if e.type == slot]
        rest = text
        for e in sorted(found, key=lambda e: -e.start):
            rest = rest[: e.start] + " " + rest[e.end :]
        return cls(
            intent,
            slot,
            int(awaiting.get("asked", 1)),
            message_id,
            holds=bool(found),
            says_more=len(re.findall(r"\w+", rest)) > FOLLOW_UP_WORDS,
        )

    def record(self, key: str) -> dict[str, Any]:
        """What the turn stores about it: `{key: {"intent", "slot", "message_id"}}`."""
        return {key: {"intent": self.intent, "slot": self.slot, "message_id": self.message_id}}


def _stored_entities(details: Mapping[str, Any]) -> list[Entity] | None:
    """The entities stored with a customer message (`details["entities"]`), None when it has
    none stored (a message from before entities were extracted)."""
    stored = details.get("entities")
    if not isinstance(stored, list):
        return None
    return [
        Entity(
            str(e["type"]),
            str(e["value"]),
            str(e.get("text", "")),
            int(e.get("start", 0)),
            int(e.get("end", 0)),
        )
        for e in stored
        if isinstance(e, dict) and "type" in e and "value" in e
    ]


def reply_of(message: StoredMessage) -> Reply:
    """The Reply a stored bot/agent/system message is shown as."""
    known = {r.value for r in Route}
    route = Route(message.route) if message.route in known else None
    return Reply(
        conversation_id=message.conversation_id,
        message_id=message.id,
        role=message.role,
        text=message.text,
        route=route,
        quick_replies=tuple(message.details.get("quick_replies", ())),
        # Thumbs under what answers a question (a found answer, a handler's result), not under
        # configured small talk (greetings, thanks), rephrase prompts or notices.
        rateable=message.role == Role.BOT and route in (Route.ANSWER, Route.HANDLER),
    )


def earlier_negativity(recent: Sequence[StoredMessage]) -> list[float]:
    """Negativity of the customer messages before the newest one, since the last hand-off.

    What led to an earlier hand-off was dealt with by a person, so it does not count towards a
    new negative trend.
    """
    earlier: list[float] = []
    for m in recent[:-1]:  # the newest message is the one being handled
        if (
            m.route == Route.HANDOFF
            or m.role == Role.AGENT
            # An agent closed the hand-off (bot/core/desk.py): a fresh start, even if no agent
            # wrote anything.
            or (m.role == Role.SYSTEM and m.details.get("event") in ("resolved", "handed_back"))
        ):
            earlier = []
        elif m.role == Role.CUSTOMER and m.negativity is not None:
            earlier.append(m.negativity)
    return earlier


def _annotation(understanding: Understanding, details: dict[str, Any]) -> dict[str, Any]:
    """What is stored on a customer message besides the route: the runner-up guesses and
    scores are what an agent or a retraining run wants to see next to it."""
    return {
        **details,
        "top_intents": [[s.label, round(s.score, 4)] for s in understanding.top_intents],
        "sentiment_scores": {s.label: round(s.score, 4) for s in understanding.sentiment_scores},
        "abstained": understanding.intent is None,
        "out_of_scope": understanding.out_of_scope,
        "oos_score": understanding.oos_score,
    }


async def store_feedback(
    store: ConversationStore,
    metrics: Metrics,
    feedback: Feedback,
    rated: demotion.RatedAnswers | None = None,
) -> int:
    """Store feedback (a customer's rating or an agent's label) and count it; the one place
    both the service and the agents' desk record feedback. A rating touches `rated` (the
    service's demotions), so it holds from the next message."""
    feedback_id = await store.record_feedback(feedback)
    metrics.feedback.labels(feedback.rating or "label").inc()
    if rated is not None and feedback.rating is not None:
        rated.touch()
    return feedback_id


class ConversationService:
    """The core: every customer message of every channel goes through `handle`.

    Args:
        store: durable conversation state.
        understander: intent + sentiment.
        answers: the answer index.
        router: per-intent routing and message templates.
        policy: the escalation policy.
        metrics: counters to update.
        min_answer_score: retrieved answers below this similarity are not used.
        dispatcher: pushes agent replies to the customer's channel.
        bus: where conversation changes are published for the agent console (topic
            "console", see `bot/core/bus.py`).
        locks: serialise the turns of one conversation; default: per process (enough for
            one replica), `RedisTurnLocks` across replicas.
        hours: when agents answer hand-offs (default: always); outside them the hand-off
            message says when someone will (routing messages `handoff_closed`,
            `queued_closed`).
        ack_interval_s: messages written while waiting for an agent get "it's in the queue"
            (routing message `queued`) at most once per this many seconds.
        clock: the current time (injected so tests control it).
        redact: entity types masked in customer messages before they are stored, besides
            card numbers and IBANs, which always are (`privacy.redact`).
        min_margin: the best answer must score at least this much above the runner-up (a
            different answer) to be served; closer, the bot is unsure which one fits and asks
            to rephrase (`retrieval.min_margin`; 0 serves the best answer, however close).
        controls: where agents' decisions in the answer library are read (disabled answers
            are not served, edited ones are served with the agent's text); None: none.
    """

    def __init__(
        self,
        store: ConversationStore,
        understander: Understander,
        answers: AnswerIndex,
        router: Router,
        policy: EscalationPolicy,
        metrics: Metrics,
        min_answer_score: float,
        dispatcher: Dispatcher | None = None,
        bus: EventBus | None = None,
        locks: TurnLocks | None = None,
        hours: BusinessHours | None = None,
        ack_interval_s: float = 60.0,
        clock: Clock = utcnow,
        redact: Iterable[str] = (),
        min_margin: float = 0.0,
        controls: AnswerControls | None = None,
        rated: demotion.RatedAnswers | None = None,
    ) -> None:
        self._store = store
        # The demoted answers, read incrementally from the store's ratings (shared with the
        # agents' desk, whose ratings touch it).
        self._rated = rated if rated is not None else demotion.RatedAnswers()
        self._controls = controls
        self._understander = understander
        self._answers = answers
        self._router = router
        self._entities = EntityExtractor(router.config.entities)
        known = set(BUILTIN_TYPES) | {d.name for d in router.config.entities.definitions}
        unknown = sorted(set(redact) - known)
        if unknown:
            raise ConfigurationError(
                f"privacy.redact: {', '.join(unknown)} is not an entity type; use the built-in "
                f"{', '.join(BUILTIN_TYPES)} or an entity of the routing file's `entities:`"
            )
        self._redact = frozenset(redact) | ALWAYS_REDACTED
        self._policy = policy
        self._metrics = metrics
        self._min_answer_score = min_answer_score
        self._min_margin = min_margin
        self._dispatcher = dispatcher or Dispatcher()
        self._bus: EventBus = bus or LocalBus()
        self._locks: TurnLocks = locks or KeyedLocks()
        self._hours = hours
        self._ack_interval_s = ack_interval_s
        self._clock = clock

    async def handle(self, message: Message) -> HandleResult:
        """Persist the message, then answer it (or stay silent while an agent has it).

        The message is committed to the store before anything else, so once this returns or
        raises anything but StoreUnavailableError, the message is kept. Failures after that
        point are caught here (the one boundary per message): logged with the traceback and
        answered with the configured error message.

        Raises:
            StoreUnavailableError: the message could not be stored; the caller should answer
                503 so the client retries.
        """
        started = time.perf_counter()
        model_seconds: dict[str, float] = {}
        message = self._redacted(message)
        conversation_id = await self._store.conversation_id(
            message.channel, message.sender, message.sender_name
        )
        logs.conversation_id.set(conversation_id)
        async with self._locks.hold(conversation_id):
            # The conversation's state comes back from the same transaction that stored the
            # message, so an escalation by an earlier message is seen.
            received = await self._store.receive(
                conversation_id,
                message.text,
                message.client_id,
                recent=4 * self._policy.settings.trend_window,
            )
            stored, conversation = received.message, received.conversation
            if not received.new:
                replies = tuple(reply_of(m) for m in await self._store.replies_to(stored.id))
                # Stored, but neither annotated nor answered: the first attempt died mid-turn
                # (a replica killed after the commit). We hold the conversation's turn lock,
                # so that attempt is over: answer now, once, instead of never.
                interrupted = not replies and stored.route is None
                if not interrupted:
                    self._metrics.messages.labels(message.channel, Route.DUPLICATE).inc()
                    return HandleResult(
                        conversation.id, stored.id, replies, conversation.status, duplicate=True
                    )
                log.warning("message %s was stored but never answered; answering it now", stored.id)
            try:
                replies, status = await self._respond(
                    conversation, stored, message, started, model_seconds, received.recent
                )
            except StoreUnavailableError:
                raise
            except Exception:  # the one per-message boundary: log, apologise, keep the message
                log.exception("handling message %s of %s failed", stored.id, conversation.id)
                self._metrics.errors.inc()
                text = self._router.message("error", message.sender_name)
                error_reply = await self._store.add_message(
                    conversation.id, Role.SYSTEM, text, reply_to=stored.id
                )
                replies, status = (reply_of(error_reply),), conversation.status
            total = time.perf_counter() - started
            self._metrics.stage_seconds.labels("total").observe(total)
            # Everything that is not a model call is database work (routing is negligible).
            self._metrics.stage_seconds.labels("store").observe(total - sum(model_seconds.values()))
            await self._announce(conversation, stored.id, conversation.status, status)
            assignee = conversation.assignee if status == ConversationStatus.CLAIMED else None
            return HandleResult(conversation.id, stored.id, replies, status, assignee=assignee)

    async def _announce(
        self,
        conversation: Conversation,
        message_id: int,
        before: ConversationStatus,
        after: ConversationStatus,
    ) -> None:
        """Tell consoles about a new message, and about an escalation it opened."""
        event = {
            "conversation_id": conversation.id,
            "channel": conversation.channel,
            "message_id": message_id,
            "status": after.value,
        }
        await self._bus.publish("console", {"type": "message", **event})
        if before == ConversationStatus.BOT and after == ConversationStatus.WAITING:
            await self._bus.publish("console", {"type": "escalation.opened", **event})

    async def _respond(
        self,
        conversation: Conversation,
        stored: StoredMessage,
        message: Message,
        started: float,
        model_seconds: dict[str, float],
        recent: tuple[StoredMessage, ...],
    ) -> tuple[tuple[Reply, ...], ConversationStatus]:
        # Extracted once per turn: the out-of-scope check, the slots and the stored
        # annotation all use these.
        entities = tuple(self._entities.extract(message.text))
        stage = time.perf_counter()
        understanding = self._in_scope_by_entity(
            await self._understander.understand(message.text), entities
        )
        model_seconds["nlu"] = time.perf_counter() - stage
        # The learned entity model's spans join the rule-based ones (a rule wins on overlap).
        entities = merge_entities(entities, understanding.entities)
        self._metrics.stage_seconds.labels("nlu").observe(model_seconds["nlu"])
        if understanding.out_of_scope:
            self._metrics.out_of_scope.labels(message.channel).inc()

        if conversation.status == ConversationStatus.BOT:
            # The answer to "rate the help 1-5" after an agent resolved it (bot/core/csat.py).
            latency_ms = (time.perf_counter() - started) * 1000
            thanks = await csat.take_rating(
                self._store,
                conversation,
                stored,
                understanding,
                recent,
                latency_ms,
                self._router.message("csat_thanks", message.sender_name),
            )
            if thanks is not None:
                return (reply_of(thanks),), conversation.status

        if conversation.status != ConversationStatus.BOT:
            replies = await self._while_handed_off(
                conversation, stored, message, understanding, started, recent, entities
            )
            self._metrics.messages.labels(message.channel, Route.AGENT).inc()
            return replies, conversation.status

        slot_entities = [*entities, *self._name_given(message.text, recent)]
        decision = await self._decide(
            conversation,
            message,
            understanding,
            model_seconds,
            earlier_negativity(recent),
            self._slots(message, recent, slot_entities),
            follow_up=_FollowUp.of(recent, message.text, slot_entities),
            recent=recent,
            message_id=stored.id,
            mistyped=near_misses(self._router.config.entities, message.text, slot_entities),
        )
        reply = await self._record(
            conversation,
            stored,
            understanding,
            decision.route,
            decision.details,
            started,
            decision,
            slot_entities,
        )
        self._metrics.messages.labels(message.channel, decision.route).inc()
        if decision.route == Route.REPHRASE:
            self._metrics.fallbacks.inc()
        status = ConversationStatus.BOT
        if decision.escalation is not None:
            self._metrics.escalations.labels(decision.escalation.reason).inc()
            status = ConversationStatus.WAITING
        return ((reply_of(reply),) if reply else ()), status

    async def _while_handed_off(
        self,
        conversation: Conversation,
        stored: StoredMessage,
        message: Message,
        understanding: Understanding,
        started: float,
        recent: tuple[StoredMessage, ...],
        entities: Sequence[Entity] = (),
    ) -> tuple[Reply, ...]:
        """A message to a conversation a person has or will have: the bot does not answer it.

        The agent sees it; a later, angrier message raises the queued escalation's priority
        (`EscalationPolicy.urgency`, `handoff.raises_priority`), so the queue reorders; and
        while nobody has claimed it the customer hears that it is queued, at most once per
        `ack_interval_s` (the hand-off message itself counts), not after every message.
        """
        urgency = self._policy.urgency(understanding, earlier_negativity(recent))
        waiting = conversation.status == ConversationStatus.WAITING
        await self._store.record_turn(
            conversation.id,
            Turn(
                message_id=stored.id,
                understanding=understanding,
                route=Route.AGENT,
                latency_ms=(time.perf_counter() - started) * 1000,
                details={
                    **_annotation(understanding, {}),
                    "entities": [entity.to_dict() for entity in entities],
                },
                escalation=urgency if waiting else None,
            ),
        )
        if not waiting or self._acknowledged_lately(recent):
            return ()
        text = self._closed_text("queued", message.sender_name) or self._router.message(
            "queued", message.sender_name
        )
        ack = await self._store.add_message(
            conversation.id,
            Role.SYSTEM,
            text,
            reply_to=stored.id,
            route=Route.AGENT,
            details={"event": "queued"},
        )
        return (reply_of(ack),)

    def _acknowledged_lately(self, recent: Sequence[StoredMessage]) -> bool:
        """Whether the customer was told "handed off" or "queued" within `ack_interval_s`."""
        if self._ack_interval_s <= 0:
            return False
        now = self._clock()
        for m in reversed(recent):
            told = m.route == Route.HANDOFF or m.details.get("event") == "queued"
            if m.role != Role.CUSTOMER and told:
                return (now - m.created_at).total_seconds() < self._ack_interval_s
        return False

    def _closed_text(self, key: str, name: str | None) -> str | None:
        """The `<key>_closed` message with `{opens}` filled in when nobody answers now
        (business hours); None while agents are in."""
        if self._hours is None:
            return None
        now = self._clock()
        if self._hours.is_open(now):
            return None
        opening = self._hours.next_opening(now)
        opens = describe_opening(opening, now) if opening is not None else "as soon as we can"
        return self._router.message(f"{key}_closed", name).replace("{opens}", opens)

    def _redacted(self, message: Message) -> Message:
        """The message with card numbers, IBANs and the `privacy.redact` types masked
        (`[CARD]`, `[EMAIL]`), before anything stores, logs or classifies it: the models see
        that an email was there, nobody sees which."""
        if not self._redact:
            return message
        masked = mask(message.text, self._entities.extract(message.text), self._redact, "[{TYPE}]")
        return message if masked == message.text else dataclasses.replace(message, text=masked)

    def _in_scope_by_entity(
        self, understanding: Understanding, entities: Sequence[Entity]
    ) -> Understanding:
        """A message naming one of the routing file's own entities (an order number) is
        about this business, whatever the out-of-scope detector made of its wording (a long
        message mixing a greeting, a name and the order): it is answered or asked about like
        any unsure message (intent None), not declined. Built-in entities (emails, dates,
        money) do not count: anyone's message may carry them."""
        if not understanding.out_of_scope:
            return understanding
        configured = {d.name for d in self._router.config.entities.definitions}
        if not any(e.type in configured for e in entities):
            return understanding
        return dataclasses.replace(understanding, out_of_scope=False)

    def _slots(
        self, message: Message, recent: Sequence[StoredMessage], entities: Sequence[Entity]
    ) -> dict[str, str]:
        """What the conversation has told the bot: the entities of its recent customer
        messages (the newest value of a type wins) and the customer's name; a past answer
        that needs a slot (`{order_id}`) is served only when it is here."""
        earlier: list[Entity] = []
        for m in recent[:-1]:
            if m.role == Role.SYSTEM and m.details.get("event") == "resolved":
                # An agent closed the case: the next question may be about another order.
                earlier = []
            elif m.role == Role.CUSTOMER:
                stored = _stored_entities(m.details)
                earlier.extend(self._entities.extract(m.text) if stored is None else stored)
        values = slot_values([*earlier, *entities])
        if message.sender_name:
            values.setdefault("name", message.sender_name)
        return values

    def _name_given(self, text: str, recent: Sequence[StoredMessage]) -> list[Entity]:
        """The customer's name when this message gives it: "my name is John", or a short
        reply to the bot's question for the `name` slot (kept with the message's entities, so
        later turns know it)."""
        asked = _FollowUp.awaiting(recent)
        found = name_in(text, answering=asked is not None and asked.get("slot") == "name")
        return [found] if found is not None else []

    async def _record(
        self,
        conversation: Conversation,
        stored: StoredMessage,
        understanding: Understanding,
        route: Route,
        details: dict[str, Any],
        started: float,
        decision: _Decision | None = None,
        entities: Sequence[Entity] = (),
    ) -> StoredMessage | None:
        """Store the whole turn (annotation, reply, failed turns, escalation) in one go."""
        # The runner-up guesses are what an agent or a retraining run wants to see next to
        # the message, so they are kept with it.
        message_details = _annotation(understanding, details)
        message_details["entities"] = [entity.to_dict() for entity in entities]
        reply_details = dict(details)
        if decision is not None and decision.quick_replies:
            reply_details["quick_replies"] = list(decision.quick_replies)
        failed_turns = None
        if decision is not None and decision.failed_turns != conversation.failed_turns:
            failed_turns = decision.failed_turns
        turn = Turn(
            message_id=stored.id,
            understanding=understanding,
            route=route,
            latency_ms=(time.perf_counter() - started) * 1000,
            details=message_details,
            reply_text=decision.text if decision is not None else None,
            reply_details=reply_details,
            failed_turns=failed_turns,
            escalation=decision.escalation if decision is not None else None,
        )
        return await self._store.record_turn(conversation.id, turn)

    async def _decide(
        self,
        conversation: Conversation,
        message: Message,
        understanding: Understanding,
        model_seconds: dict[str, float],
        earlier: list[float],
        slots: Mapping[str, str] | None = None,
        follow_up: _FollowUp | None = None,
        recent: Sequence[StoredMessage] = (),
        message_id: int | None = None,
        mistyped: Sequence[str] = (),
    ) -> _Decision:
        escalation = self._policy.assess(understanding, earlier)
        if escalation is not None:
            return self._handoff(escalation, message)
        slots = dict(slots or {})
        if understanding.out_of_scope and any(s not in slots for s in mistyped):
            # Like a message naming an order number (`_in_scope_by_entity`), one that tries to
            # ("charged twice for order 1234") is about this business: unsure, not declined.
            understanding = dataclasses.replace(understanding, out_of_scope=False)
        # What the turn is about: the message itself, unless it answers a slot question.
        question, embedding, origin = message.text, understanding.query_embedding, message_id
        not_asked: frozenset[str] = frozenset()
        noted: dict[str, Any] = {}
        if follow_up is not None:
            step = self._follow_up_step(follow_up, understanding)
            if step == "resume":
                # "BC-204719" means nothing by itself: go on with the question it answers.
                asked = next((m for m in recent if m.id == follow_up.message_id), None)
                if asked is not None:
                    question, embedding = asked.text, None
                origin = follow_up.message_id
                understanding = dataclasses.replace(
                    understanding, intent=follow_up.intent, out_of_scope=False
                )
                noted = follow_up.record("resumes")
            elif step == "again":
                return self._ask(
                    self._router.requirement(follow_up.intent, follow_up.slot),
                    follow_up.intent,
                    follow_up.asked + 1,
                    follow_up.message_id,
                    message,
                    again=True,
                )
            elif step == "drop":
                # Asked twice in vain: route the message as it is, and do not ask a third
                # time for what the customer does not have.
                not_asked = frozenset({follow_up.slot})
                noted = follow_up.record("dropped")
        decision = await self._route(
            conversation,
            message,
            understanding,
            model_seconds,
            slots,
            question,
            embedding,
            origin,
            not_asked,
            mistyped,
        )
        if follow_up is not None and "resumes" in noted and decision.route == Route.REPHRASE:
            # The customer gave what the bot asked for: "could you rephrase?" now would be
            # absurd. A person takes over, with the question and the detail in the transcript.
            decision = self._handoff(
                Escalation(
                    REPEATED_FALLBACK,
                    priority=round(1.0 + max(0.0, understanding.negativity), 4),
                    explanation=f"The customer gave the {follow_up.slot} the bot asked for, "
                    "but no answer fits the question.",
                    scores={"negativity": round(understanding.negativity, 4)},
                ),
                message,
            )
        if noted:
            return dataclasses.replace(decision, details={**decision.details, **noted})
        return decision

    @staticmethod
    def _follow_up_step(follow_up: _FollowUp, understanding: Understanding) -> str:
        """What a reply to a slot question does: `resume` the question's intent with the slot
        given, ask `again` (once), `drop` the question after the second miss, or be routed
        as the `other` thing it clearly is (a confident intent of its own)."""
        other = understanding.intent is not None and understanding.intent != follow_up.intent
        if follow_up.holds and not (other and follow_up.says_more):
            return "resume"
        if other:
            return "other"
        if follow_up.asked < MAX_SLOT_QUESTIONS:
            return "again"
        return "drop"

    def _ask(
        self,
        requirement: SlotRequirement,
        intent: str | None,
        asked: int,
        message_id: int | None,
        message: Message,
        again: bool = False,
    ) -> _Decision:
        """Ask for a slot; the reply records what the bot waits for, for the next turn."""
        texts = requirement.again if again else requirement.questions
        awaiting: dict[str, Any] = {"intent": intent, "slot": requirement.name, "asked": asked}
        if message_id is not None:
            awaiting["message_id"] = message_id
        return _Decision(
            Route.SLOT_QUESTION,
            self._router.render(texts, message.sender_name),
            {"awaiting": awaiting},
        )

    async def _route(
        self,
        conversation: Conversation,
        message: Message,
        understanding: Understanding,
        model_seconds: dict[str, float],
        slots: Mapping[str, str],
        question: str,
        embedding: Any,
        origin: int | None,
        not_asked: frozenset[str],
        mistyped: Sequence[str] = (),
    ) -> _Decision:
        """The routing file's entry for the intent: ask for a missing slot it requires, else
        its response, handler or a search of the answer index for `question`."""
        route = self._router.route_for(understanding.intent)
        if understanding.out_of_scope:
            # About none of the intents: the routing file's `out_of_scope` entry decides
            # (a response saying what the bot can help with, today's rephrase ladder, a
            # search of all answers, a hand-off or a handler).
            route = self._router.config.out_of_scope
            if route.kind == "rephrase":
                return self._rephrase(conversation, message, understanding, None)
        if route.kind == "handoff":
            return self._handoff(
                Escalation(
                    ASKED_FOR_HUMAN,
                    priority=round(1.5 + max(0.0, understanding.negativity), 4),
                    explanation="Routing sends out-of-scope messages to a person."
                    if understanding.out_of_scope
                    else f"Routing sends intent {understanding.intent} to a person.",
                    scores={"negativity": round(understanding.negativity, 4)},
                ),
                message,
            )
        missing = [r for r in route.requires if r.name not in slots]
        to_ask = [r for r in missing if r.name not in not_asked]
        if to_ask and understanding.intent is not None:
            # Given but mistyped ("my order BC-111"): the question that explains the format.
            again = to_ask[0].name in mistyped
            return self._ask(to_ask[0], understanding.intent, 1, origin, message, again=again)
        garbled = [s for s in mistyped if s not in slots and s not in not_asked]
        if garbled and route.kind == "answer":
            # The customer means to name an order but the number is not one ("charged twice
            # for order 1234"): say what one looks like, rather than answer as if it were.
            intent = understanding.intent or self._needing(understanding, garbled[0])
            requirement = self._router.requirement(intent, garbled[0])
            return self._ask(requirement, intent, 1, origin, message, again=True)
        if missing and route.kind != "answer":
            # The customer could not give what the response or handler needs: the fallback
            # ladder (rephrase, then a person) rather than a half-filled answer.
            return self._rephrase(conversation, message, understanding, None)
        if route.kind == "response":
            # The name the customer gave ("my name is John") or the channel's display name.
            name = slots.get("name") or message.sender_name
            text = self._router.render(route.responses, name, slots)
            return _Decision(Route.RESPONSE, text, {}, quick_replies=route.quick_replies)
        if route.kind == "handler" and route.handler:
            handler = self._router.handlers[route.handler]
            text = await handler(
                HandlerContext(message, understanding, conversation.id, dict(slots))
            )
            return _Decision(
                Route.HANDLER, text, {"handler": route.handler}, quick_replies=route.quick_replies
            )
        # Rated down and not rated up since, for this kind of question (bot/core/demotion.py):
        # searched for like the others, then skipped, so the next answer can take its place.
        demoted = [
            d
            for d in await self._rated.read(self._store.answer_ratings)
            if d.applies_to(understanding.intent)
        ]
        # Disabled or edited by agents in the answer library (bot/core/library.py).
        controls = by_source(await self._controls.answer_controls()) if self._controls else {}
        stage = time.perf_counter()
        found = await self._answers.search(
            question,
            k=3 + len(demoted) + sum(c.disabled for c in controls.values()),
            intent=understanding.intent,
            embedding=embedding,
            slots=slots,
        )
        model_seconds["retrieval"] = time.perf_counter() - stage
        self._metrics.stage_seconds.labels("retrieval").observe(model_seconds["retrieval"])
        found, disabled = controlled(found, controls, slots)
        # An agent's edit replaces a rated-down original: only ratings of its text count.
        edited = edited_sources(found, controls)
        hits, skipped = demotion.without_demoted(
            found, [d for d in demoted if d.source not in edited], understanding.intent
        )
        unsure: dict[str, Any] = {}
        if skipped:
            unsure["demoted"] = sorted({a.source for a in skipped})
        if disabled:
            unsure["disabled"] = sorted({a.source for a in disabled})
        if hits and hits[0].score >= self._min_answer_score:
            best = hits[0]
            margin = self._margin(hits)
            if margin is None or margin >= self._min_margin:
                details = {
                    "source": best.source,
                    "score": round(best.score, 4),
                    "question": best.question,
                    **unsure,
                }
                if margin is not None:
                    details["margin"] = round(margin, 4)
                return _Decision(
                    Route.ANSWER, best.text, details, quick_replies=route.quick_replies
                )
            unsure["margin"] = round(margin, 4)
        return self._rephrase(
            conversation, message, understanding, hits[0] if hits else None, unsure
        )

    def _needing(self, understanding: Understanding, slot: str) -> str | None:
        """The model's best guess when the model was unsure (no intent) and that guess's
        route requires `slot`: a mistyped order number ("my order BC-111 is late") is
        evidence for an intent about one order, so the answer given once the customer
        writes the number is searched among that intent's answers. None otherwise."""
        if not understanding.top_intents:
            return None
        guess = understanding.top_intents[0].label
        route = self._router.route_for(guess)
        return guess if any(r.name == slot for r in route.requires) else None

    @staticmethod
    def _margin(hits: Sequence[Answer]) -> float | None:
        """How far the best answer scores above the next different one (None: no other)."""
        best = normalize(hits[0].text)
        for other in hits[1:]:
            if normalize(other.text) != best:
                return hits[0].score - other.score
        return None

    def _rephrase(
        self,
        conversation: Conversation,
        message: Message,
        understanding: Understanding,
        best: Answer | None,
        unsure: Mapping[str, Any] | None = None,
    ) -> _Decision:
        """The fallback ladder: not sure -> ask to rephrase, offering the routing file's
        `suggestions` -> after max_failed_turns in a row, a person takes over."""
        failed = conversation.failed_turns + 1
        escalation = self._policy.after_fallbacks(failed, understanding)
        if escalation is not None:
            return self._handoff(escalation, message)
        details = {"best_score": round(best.score, 4) if best else None, **(unsure or {})}
        text = self._router.message("rephrase", message.sender_name)
        return _Decision(
            Route.REPHRASE,
            text,
            details,
            failed_turns=failed,
            quick_replies=self._router.config.suggestions,
        )

    def _handoff(self, escalation: Escalation, message: Message) -> _Decision:
        details = {"reason": escalation.reason, "explanation": escalation.explanation}
        text = self._closed_text("handoff", message.sender_name) or self._router.message(
            "handoff", message.sender_name
        )
        return _Decision(Route.HANDOFF, text, details, escalation=escalation)

    async def request_handoff(self, message: Message) -> HandleResult:
        """The customer explicitly asked for a person (e.g. Telegram's /human command).

        The message is stored like any other; the conversation is escalated at once with
        reason `asked_for_human`, unless an agent already has it.
        """
        message = self._redacted(message)
        conversation = await self._store.conversation(
            message.channel, message.sender, message.sender_name
        )
        logs.conversation_id.set(conversation.id)
        async with self._locks.hold(conversation.id):
            stored, new = await self._store.add_customer_message(
                conversation.id, message.text, message.client_id
            )
            conversation = await self._store.get_conversation(conversation.id)
            if not new:
                replies = tuple(reply_of(m) for m in await self._store.replies_to(stored.id))
                # No reply stored: the first attempt died before it finished (we hold the
                # turn lock, so it is over). Ask for the person now, once, instead of never.
                if replies:
                    return HandleResult(
                        conversation.id, stored.id, replies, conversation.status, duplicate=True
                    )
                log.warning("hand-off request %s was stored but never answered", stored.id)
            details: dict[str, Any] | None = None
            if conversation.status == ConversationStatus.CLAIMED:
                text = self._router.message("waiting", message.sender_name)
                route = Route.AGENT
            elif conversation.status == ConversationStatus.WAITING:
                # Nobody has claimed it yet: "an agent has your conversation" would be untrue.
                text = self._closed_text("queued", message.sender_name) or self._router.message(
                    "queued", message.sender_name
                )
                route, details = Route.AGENT, {"event": "queued"}
            else:
                escalation = Escalation(
                    ASKED_FOR_HUMAN,
                    priority=1.5,
                    explanation="The customer asked for a person with a command.",
                    scores={},
                )
                await self._store.escalate(conversation.id, escalation)
                self._metrics.escalations.labels(escalation.reason).inc()
                text = self._closed_text("handoff", message.sender_name) or (
                    self._router.message("handoff", message.sender_name)
                )
                route = Route.HANDOFF
            reply = await self._store.add_message(
                conversation.id, Role.BOT, text, reply_to=stored.id, route=route, details=details
            )
            self._metrics.messages.labels(message.channel, route).inc()
            current = await self._store.get_conversation(conversation.id)
            await self._announce(conversation, stored.id, conversation.status, current.status)
            return HandleResult(
                conversation.id,
                stored.id,
                (reply_of(reply),),
                current.status,
                assignee=current.assignee,
            )

    async def record_feedback(self, feedback: Feedback) -> int:
        """Store feedback on a reply (NotFoundError for an unknown message id)."""
        return await store_feedback(self._store, self._metrics, feedback, self._rated)

    async def record_customer_feedback(self, channel: str, sender: str, feedback: Feedback) -> int:
        """A customer's rating of a bot reply in their own conversation.

        Raises:
            BadRequestError: the message is not a rateable reply of this sender's conversation
                (a customer may not rate someone else's messages).
        """
        conversation = await self._store.find_conversation(channel, sender)
        transcript = [] if conversation is None else await self._store.transcript(conversation.id)
        message = next((m for m in transcript if m.id == feedback.message_id), None)
        if message is None:
            raise BadRequestError(
                f"message {feedback.message_id} is not part of this conversation; rate a reply "
                "shown in this chat"
            )
        if not reply_of(message).rateable:
            raise BadRequestError(
                f"message {feedback.message_id} is not a rateable bot answer; only answers "
                "shown with feedback buttons can be rated"
            )
        return await self.record_feedback(feedback)

    async def understand(self, text: str) -> Understanding:
        """Intent and sentiment of a text, without storing anything (a debugging aid)."""
        return await self._understander.understand(text)

    async def search_answers(
        self, text: str, k: int = 3, intent: str | None = None
    ) -> tuple[Sequence[Answer], float]:
        """The answer index's best answers for `text`, and the score below which the bot
        would not use one."""
        return await self._answers.search(text, k=k, intent=intent), self._min_answer_score

    async def transcript(self, conversation_id: str) -> tuple[Conversation, list[StoredMessage]]:
        """A conversation and its messages, oldest first (NotFoundError when unknown)."""
        conversation = await self._store.get_conversation(conversation_id)
        return conversation, await self._store.transcript(conversation_id)

    async def handed_off(self, channel: str, sender: str) -> bool:
        """Whether the sender's conversation is with the agents (waiting or claimed), so the
        bot will not answer their next message (a channel then shows no "typing…")."""
        conversation = await self._store.find_conversation(channel, sender)
        return conversation is not None and conversation.status != ConversationStatus.BOT

    async def history(
        self, channel: str, sender: str, limit: int | None = None
    ) -> tuple[Conversation | None, list[StoredMessage]]:
        """What a returning customer sees: their conversation (None before their first
        message, which creates nothing) and its last `limit` messages."""
        conversation = await self._store.find_conversation(channel, sender)
        if conversation is None:
            return None, []
        return conversation, await self._store.transcript(conversation.id, limit=limit)

    async def transcript_within(
        self, conversation_id: str, channels: Sequence[str]
    ) -> tuple[Conversation, list[StoredMessage]]:
        """A conversation and its messages, oldest first, if it is on one of `channels` (those
        an API caller may act as).

        Raises:
            NotFoundError: the conversation is unknown or on another channel: the same error
                either way, so a caller learns nothing about other channels' conversations.
        """
        hidden = NotFoundError(
            f"conversation {conversation_id!r} was not found on the channels this caller may "
            f"read ({', '.join(channels)}); use the conversation_id of one it took part in"
        )
        try:
            conversation = await self._store.get_conversation(conversation_id)
        except NotFoundError:
            raise hidden from None
        if conversation.channel not in channels:
            raise hidden
        return conversation, await self._store.transcript(conversation_id)
