"""Handling a customer message: persist, understand, decide, answer, record."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.core import logs
from bot.core.bus import EventBus, LocalBus
from bot.core.delivery import Dispatcher
from bot.core.errors import BadRequestError, NotFoundError, StoreUnavailableError
from bot.core.escalation import ASKED_FOR_HUMAN, EscalationPolicy
from bot.core.locks import KeyedLocks
from bot.core.metrics import Metrics
from bot.core.ports import AnswerIndex, ConversationStore, TurnLocks, Understander
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
from bot.core.router import HandlerContext, Router

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HandleResult:
    """What handling one customer message produced."""

    conversation_id: str
    message_id: int
    replies: tuple[Reply, ...]
    status: ConversationStatus
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class _Decision:
    route: Route
    text: str
    details: dict[str, Any]
    escalation: Escalation | None = None
    failed_turns: int = 0
    quick_replies: tuple[str, ...] = ()


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
        rateable=message.role == Role.BOT
        and route in (Route.ANSWER, Route.RESPONSE, Route.HANDLER),
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


async def store_feedback(store: ConversationStore, metrics: Metrics, feedback: Feedback) -> int:
    """Store feedback (a customer's rating or an agent's label) and count it; the one place
    both the service and the agents' desk record feedback."""
    feedback_id = await store.record_feedback(feedback)
    metrics.feedback.labels(feedback.rating or "label").inc()
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
    ) -> None:
        self._store = store
        self._understander = understander
        self._answers = answers
        self._router = router
        self._policy = policy
        self._metrics = metrics
        self._min_answer_score = min_answer_score
        self._dispatcher = dispatcher or Dispatcher()
        self._bus: EventBus = bus or LocalBus()
        self._locks: TurnLocks = locks or KeyedLocks()

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
            return HandleResult(conversation.id, stored.id, replies, status)

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
        stage = time.perf_counter()
        understanding = await self._understander.understand(message.text)
        model_seconds["nlu"] = time.perf_counter() - stage
        self._metrics.stage_seconds.labels("nlu").observe(model_seconds["nlu"])

        if conversation.status != ConversationStatus.BOT:
            # An agent has this conversation: the bot stays silent, the agent sees the message.
            await self._record(conversation, stored, understanding, Route.AGENT, {}, started)
            self._metrics.messages.labels(message.channel, Route.AGENT).inc()
            return (), conversation.status

        decision = await self._decide(
            conversation, message, understanding, model_seconds, earlier_negativity(recent)
        )
        reply = await self._record(
            conversation,
            stored,
            understanding,
            decision.route,
            decision.details,
            started,
            decision,
        )
        self._metrics.messages.labels(message.channel, decision.route).inc()
        if decision.route == Route.REPHRASE:
            self._metrics.fallbacks.inc()
        status = ConversationStatus.BOT
        if decision.escalation is not None:
            self._metrics.escalations.labels(decision.escalation.reason).inc()
            status = ConversationStatus.WAITING
        return ((reply_of(reply),) if reply else ()), status

    async def _record(
        self,
        conversation: Conversation,
        stored: StoredMessage,
        understanding: Understanding,
        route: Route,
        details: dict[str, Any],
        started: float,
        decision: _Decision | None = None,
    ) -> StoredMessage | None:
        """Store the whole turn (annotation, reply, failed turns, escalation) in one go."""
        # The runner-up guesses are what an agent or a retraining run wants to see next to
        # the message, so they are kept with it.
        message_details = {
            **details,
            "top_intents": [[s.label, round(s.score, 4)] for s in understanding.top_intents],
            "sentiment_scores": {
                s.label: round(s.score, 4) for s in understanding.sentiment_scores
            },
            "abstained": understanding.intent is None,
        }
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
    ) -> _Decision:
        escalation = self._policy.assess(understanding, earlier)
        if escalation is not None:
            return self._handoff(escalation, message)
        route = self._router.route_for(understanding.intent)
        if route.kind == "handoff":
            return self._handoff(
                Escalation(
                    ASKED_FOR_HUMAN,
                    priority=round(1.5 + max(0.0, understanding.negativity), 4),
                    explanation=f"Routing sends intent {understanding.intent} to a person.",
                    scores={"negativity": round(understanding.negativity, 4)},
                ),
                message,
            )
        if route.kind == "response":
            text = self._router.render(route.responses, message.sender_name)
            return _Decision(Route.RESPONSE, text, {}, quick_replies=route.quick_replies)
        if route.kind == "handler" and route.handler:
            handler = self._router.handlers[route.handler]
            text = await handler(HandlerContext(message, understanding, conversation.id))
            return _Decision(
                Route.HANDLER, text, {"handler": route.handler}, quick_replies=route.quick_replies
            )
        stage = time.perf_counter()
        hits = await self._answers.search(
            message.text, k=3, intent=understanding.intent, embedding=understanding.query_embedding
        )
        model_seconds["retrieval"] = time.perf_counter() - stage
        self._metrics.stage_seconds.labels("retrieval").observe(model_seconds["retrieval"])
        if hits and hits[0].score >= self._min_answer_score:
            best = hits[0]
            details = {
                "source": best.source,
                "score": round(best.score, 4),
                "question": best.question,
            }
            return _Decision(Route.ANSWER, best.text, details, quick_replies=route.quick_replies)
        # Fallback ladder: not sure -> retrieval found nothing good -> ask to rephrase ->
        # after max_failed_turns in a row, a person takes over.
        failed = conversation.failed_turns + 1
        escalation = self._policy.after_fallbacks(failed, understanding)
        if escalation is not None:
            return self._handoff(escalation, message)
        details = {"best_score": round(hits[0].score, 4) if hits else None}
        text = self._router.message("rephrase", message.sender_name)
        return _Decision(Route.REPHRASE, text, details, failed_turns=failed)

    def _handoff(self, escalation: Escalation, message: Message) -> _Decision:
        details = {"reason": escalation.reason, "explanation": escalation.explanation}
        text = self._router.message("handoff", message.sender_name)
        return _Decision(Route.HANDOFF, text, details, escalation=escalation)

    async def request_handoff(self, message: Message) -> HandleResult:
        """The customer explicitly asked for a person (e.g. Telegram's /human command).

        The message is stored like any other; the conversation is escalated at once with
        reason `asked_for_human`, unless an agent already has it.
        """
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
            if conversation.status != ConversationStatus.BOT:
                text = self._router.message("waiting", message.sender_name)
                route = Route.AGENT
            else:
                escalation = Escalation(
                    ASKED_FOR_HUMAN,
                    priority=1.5,
                    explanation="The customer asked for a person with a command.",
                    scores={},
                )
                await self._store.escalate(conversation.id, escalation)
                self._metrics.escalations.labels(escalation.reason).inc()
                text = self._router.message("handoff", message.sender_name)
                route = Route.HANDOFF
            reply = await self._store.add_message(
                conversation.id, Role.BOT, text, reply_to=stored.id, route=route
            )
            self._metrics.messages.labels(message.channel, route).inc()
            current = await self._store.get_conversation(conversation.id)
            await self._announce(conversation, stored.id, conversation.status, current.status)
            return HandleResult(conversation.id, stored.id, (reply_of(reply),), current.status)

    async def record_feedback(self, feedback: Feedback) -> int:
        """Store feedback on a reply (NotFoundError for an unknown message id)."""
        return await store_feedback(self._store, self._metrics, feedback)

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
