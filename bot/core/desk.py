"""The agent console's use cases: take a conversation from the queue, answer the customer
through their own channel, give the conversation back, label what the models got wrong.

`AgentDesk` sits beside `ConversationService` (on the same store, bus, router and dispatcher)
and publishes every change on the bus topic "console" (see `bot/core/bus.py`), so that every
open console refreshes. It also runs the unclaimed timeout: an escalation no agent claimed
within `escalation.unclaimed_timeout_s` gets the customer one notice.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from bot.core.background import cancel_and_wait
from bot.core.bus import EventBus
from bot.core.clock import Clock, utcnow
from bot.core.delivery import DeliveryError, Dispatcher
from bot.core.errors import BadRequestError, ForbiddenError, StoreUnavailableError
from bot.core.metrics import Metrics
from bot.core.ports import ConversationStore, DeskStore
from bot.core.records import (
    Agent,
    Conversation,
    EscalationRecord,
    Feedback,
    Role,
    Route,
    StoredMessage,
)
from bot.core.router import Router
from bot.core.service import reply_of, store_feedback

log = logging.getLogger(__name__)

INTENT_NAME = re.compile(r"[a-z][a-z0-9_]{1,63}")
RATINGS = {"good": "up", "bad": "down"}
TOPIC = "console"
SENTIMENTS = ("negative", "neutral", "positive")
# Customer messages the bot answered itself: the automation rate's numerator.
AUTOMATED_ROUTES = (Route.RESPONSE.value, Route.ANSWER.value, Route.HANDLER.value)
MAX_DASHBOARD_DAYS = 366
# An escalation's urgency grows by 1 for every this many seconds it waits.
URGENCY_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class QueueItem:
    """An unresolved escalation as the agents' queue shows it."""

    escalation: EscalationRecord
    conversation: Conversation
    last_message: str | None
    unread: int
    waiting_s: float
    urgency: float

    @classmethod
    def at(
        cls,
        now: datetime,
        escalation: EscalationRecord,
        conversation: Conversation,
        last_message: str | None,
        unread: int,
    ) -> QueueItem:
        """The item as of `now`: its urgency is the escalation's priority plus 1 for every
        `URGENCY_SECONDS` it has waited since it opened."""
        waiting = max(0.0, (now - escalation.created_at).total_seconds())
        urgency = escalation.priority + waiting / URGENCY_SECONDS
        return cls(escalation, conversation, last_message, unread, waiting, urgency)


def most_urgent_first(items: Iterable[QueueItem]) -> list[QueueItem]:
    """The queue's order: most urgent first, the older escalation first on a tie."""
    return sorted(items, key=lambda item: (-item.urgency, item.escalation.id))


@dataclass(frozen=True, slots=True)
class MessageLabels:
    """The agents' latest judgement of one message (None where nobody said anything)."""

    intent: str | None = None
    sentiment: str | None = None
    rating: str | None = None  # "up" | "down"
    by: str | None = None


@dataclass(frozen=True, slots=True)
class ConversationView:
    """A conversation with everything an agent needs beside the transcript."""

    conversation: Conversation
    escalation: EscalationRecord | None
    messages: tuple[StoredMessage, ...]
    labels: dict[int, MessageLabels]
    approved: frozenset[int]
    sentiment: str | None


@dataclass(frozen=True, slots=True)
class EscalationNotice:
    """An escalation that changed hands (closed by an agent, or timed out unclaimed), and the
    notice stored for the customer."""

    escalation: EscalationRecord
    conversation: Conversation
    notice: StoredMessage


@dataclass(frozen=True, slots=True)
class DayFigures:
    """One UTC day of the dashboard."""

    date: date
    messages: int = 0
    customer_messages: int = 0
    automated: int = 0
    escalations: dict[str, int] = field(default_factory=dict)
    feedback: dict[str, int] = field(default_factory=dict)

    @property
    def automation_rate(self) -> float:
        return self.automated / self.customer_messages if self.customer_messages else 0.0


@dataclass(frozen=True, slots=True)
class IntentFigures:
    """How often an intent was predicted in the window, and how sure the model was."""

    intent: str
    messages: int
    mean_confidence: float


@dataclass(frozen=True, slots=True)
class Dashboard:
    """The operators' figures for the last few days (UTC), oldest day first."""

    days: tuple[DayFigures, ...]
    intents: tuple[IntentFigures, ...]
    open_escalations: int
    outcomes: dict[str, int]


# -- the desk stores' input rules (the SQL store and the in-memory fake both call these) --


def check_sentiment(sentiment: str) -> None:
    """Raise BadRequestError unless `sentiment` is one of `SENTIMENTS`."""
    if sentiment not in SENTIMENTS:
        raise BadRequestError(
            f'field "sentiment" must be one of {", ".join(SENTIMENTS)}; got {sentiment!r}'
        )


def dashboard_window(now: datetime, days: int) -> tuple[list[date], datetime]:
    """The dashboard's last `days` UTC dates up to `now`'s, oldest first, and the moment the
    first of them began.

    Raises:
        BadRequestError: `days` is not from 1 to `MAX_DASHBOARD_DAYS`.
    """
    if not 1 <= days <= MAX_DASHBOARD_DAYS:
        raise BadRequestError(f"days must be from 1 to {MAX_DASHBOARD_DAYS}; got {days}")
    first = now.astimezone(UTC).date() - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    return [first + timedelta(days=i) for i in range(days)], start


def most_asked_first(intents: Iterable[IntentFigures]) -> tuple[IntentFigures, ...]:
    """The dashboard's order of intents: most messages first, then by name."""
    return tuple(sorted(intents, key=lambda f: (-f.messages, f.intent)))


def latest_labels(feedback: Iterable[Feedback]) -> dict[int, MessageLabels]:
    """Each message's labels from the agents' feedback on it, oldest first: a label replaces
    the values it gives and keeps the others."""
    labels: dict[int, MessageLabels] = {}
    for f in feedback:
        current = labels.get(f.message_id, MessageLabels())
        labels[f.message_id] = MessageLabels(
            intent=f.corrected_intent or current.intent,
            sentiment=f.corrected_sentiment or current.sentiment,
            rating=f.rating or current.rating,
            by=f.author,
        )
    return labels


def check_approvable(answer: StoredMessage) -> None:
    """Raise BadRequestError unless `answer` is an agent's reply (only those are approved)."""
    if answer.role != Role.AGENT:
        raise BadRequestError(
            f"message {answer.id} is a {answer.role.value} message; only agents' replies can "
            "be approved answers"
        )


def check_question(asked: StoredMessage, answer: StoredMessage) -> None:
    """Raise BadRequestError unless `asked`, named as the question of an approved answer, is a
    customer message of the answer's conversation."""
    if asked.role != Role.CUSTOMER or asked.conversation_id != answer.conversation_id:
        raise BadRequestError(
            f"message {asked.id} is not a customer message of the answer's conversation; "
            "give one of its questions"
        )


def approved_question(
    answer: StoredMessage, question: str | None, asked: StoredMessage | None
) -> str:
    """The question an approved answer pairs with: `question` when given, else the text of
    `asked` (the question message named, or the last customer message before the answer).

    Raises:
        BadRequestError: neither gives a question.
    """
    text = question or (asked.text if asked is not None else None)
    if not text:
        raise BadRequestError(
            f"no customer message comes before message {answer.id}; send "
            '"question" with the question it answers'
        )
    return text


def known_intents(model_labels: Sequence[str], corrected: Sequence[str]) -> list[str]:
    """The live model's intents and the ones agents named, each once, sorted."""
    return sorted(set(model_labels) | set(corrected))


class AgentDesk:
    """What agents and operators do in the console.

    Args:
        conversations: the conversation store (claims, replies, feedback).
        desk: the desk's own queries and changes.
        router: the message templates (notices to the customer).
        dispatcher: pushes agents' replies and notices through the customer's channel.
        bus: where changes are published for every open console (topic "console").
        metrics: counters to update.
        intent_labels: the live intent model's labels (they change on a model reload).
        unclaimed_timeout_s: how long an escalation may wait unclaimed before the customer
            is told (routing message `unclaimed`).
        clock: the current time (injected so tests control it).
    """

    def __init__(
        self,
        conversations: ConversationStore,
        desk: DeskStore,
        router: Router,
        dispatcher: Dispatcher,
        bus: EventBus,
        metrics: Metrics,
        intent_labels: Callable[[], Sequence[str]],
        unclaimed_timeout_s: float,
        clock: Clock = utcnow,
    ) -> None:
        self.conversations = conversations
        self.desk = desk
        self.router = router
        self.dispatcher = dispatcher
        self.bus = bus
        self.metrics = metrics
        self.intent_labels = intent_labels
        self.unclaimed_timeout_s = unclaimed_timeout_s
        self.clock = clock
        self._watcher: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching for unclaimed escalations."""
        self._watcher = asyncio.create_task(self._watch_unclaimed(), name="unclaimed-timeout")

    async def stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        await cancel_and_wait(watcher)

    # -- reading -----------------------------------------------------------------------------

    async def queue(self) -> list[QueueItem]:
        """Unresolved escalations, most urgent first."""
        return await self.desk.queue()

    async def view(self, conversation_id: str) -> ConversationView:
        """A conversation with its escalation, messages and labels."""
        return await self.desk.view(conversation_id)

    async def intents(self) -> list[str]:
        """The live model's intents plus those agents named in corrections, sorted."""
        return known_intents(self.intent_labels(), await self.desk.corrected_intents())

    async def dashboard(self, agent: Agent, days: int) -> Dashboard:
        """Per-day figures for operators.

        Raises:
            ForbiddenError: `agent` is not an operator.
        """
        if not agent.is_operator:
            raise ForbiddenError(
                f"the dashboard is for operators; {agent.name} is an {agent.role.value}"
            )
        return await self.desk.dashboard(days)

    # -- changing hands ----------------------------------------------------------------------

    async def claim(self, conversation_id: str, agent: Agent) -> EscalationRecord:
        """Take the conversation's escalation (ConflictError if a colleague has it)."""
        escalation = await self.conversations.claim(conversation_id, agent.name)
        await self._publish("escalation.claimed", escalation, agent=agent.name)
        return escalation

    async def release(self, conversation_id: str, agent: Agent) -> EscalationRecord:
        """Put a claimed conversation back in the queue (its assignee or an operator)."""
        escalation = await self.desk.release(conversation_id, agent.name, agent.is_operator)
        await self._publish("escalation.released", escalation, agent=agent.name)
        return escalation

    async def resolve(self, conversation_id: str, agent: Agent) -> EscalationNotice:
        """Close the escalation as dealt with; the bot answers again."""
        return await self._close(conversation_id, agent, "resolved")

    async def hand_back(self, conversation_id: str, agent: Agent) -> EscalationNotice:
        """Give the conversation back to the bot (outcome `handed_back`)."""
        return await self._close(conversation_id, agent, "handed_back")

    async def _close(self, conversation_id: str, agent: Agent, outcome: str) -> EscalationNotice:
        conversation = await self.conversations.get_conversation(conversation_id)
        notice = self.router.message(outcome, conversation.sender_name)
        closed = await self.desk.close(
            conversation_id, agent.name, agent.is_operator, outcome, notice
        )
        await self._deliver(closed.conversation, closed.notice)
        await self._publish(
            "escalation.resolved", closed.escalation, agent=agent.name, outcome=outcome
        )
        return closed

    # -- answering ---------------------------------------------------------------------------

    async def reply(
        self, conversation_id: str, agent: Agent, text: str
    ) -> tuple[StoredMessage, bool]:
        """Store an agent's reply and push it through the customer's channel.

        Returns:
            (the stored message, whether the channel took it). A channel failure keeps the
            message (it is in the transcript) and returns False.

        Raises:
            BadRequestError: the text is empty.
            ConflictError: the caller has not claimed the conversation.
        """
        text = text.strip()
        if not text:
            raise BadRequestError('field "text" is empty; write the reply to send')
        # The claim is checked in the same transaction that stores the reply.
        stored = await self.conversations.add_message(
            conversation_id,
            Role.AGENT,
            text,
            route=Route.AGENT,
            details={"agent": agent.name},
            claimed_by=agent.name,
        )
        conversation = await self.conversations.get_conversation(conversation_id)
        await self.bus.publish(
            TOPIC,
            {
                "type": "message",
                "conversation_id": conversation_id,
                "channel": conversation.channel,
                "message_id": stored.id,
                "status": conversation.status.value,
            },
        )
        return stored, await self._deliver(conversation, stored)

    # -- labels ------------------------------------------------------------------------------

    async def label_message(
        self,
        message_id: int,
        agent: Agent,
        intent: str | None = None,
        sentiment: str | None = None,
        rating: str | None = None,
    ) -> int:
        """Store an agent's corrections of a message as feedback authored by the agent.

        Args:
            intent: the right intent of a customer message (a known one, or a new name of
                lower-case letters, digits and `_`).
            sentiment: negative, neutral or positive (a customer message).
            rating: good or bad (a bot message).

        Returns:
            The feedback row's id.

        Raises:
            BadRequestError: nothing to store, a value out of range, or a label that does not
                fit the message's role.
            NotFoundError: no message has this id.
        """
        if intent is None and sentiment is None and rating is None:
            raise BadRequestError('send at least one of "intent", "sentiment", "rating"')
        message = await self.desk.message(message_id)
        if (intent is not None or sentiment is not None) and message.role != Role.CUSTOMER:
            raise BadRequestError(
                f"message {message_id} is a {message.role.value} message; intent and sentiment "
                "labels are for customer messages"
            )
        if rating is not None and message.role != Role.BOT:
            raise BadRequestError(
                f"message {message_id} is a {message.role.value} message; ratings are for the "
                "bot's messages"
            )
        if rating is not None and rating not in RATINGS:
            raise BadRequestError(f'field "rating" must be "good" or "bad"; got {rating!r}')
        if sentiment is not None:
            check_sentiment(sentiment)
        if intent is not None:
            await self._check_intent(intent)
        feedback = Feedback(
            message_id=message_id,
            rating=None if rating is None else RATINGS[rating],
            corrected_intent=intent,
            corrected_sentiment=sentiment,
            author=agent.name,
        )
        return await store_feedback(self.conversations, self.metrics, feedback)

    async def label_conversation(self, conversation_id: str, agent: Agent, sentiment: str) -> int:
        """Store an agent's overall sentiment of a conversation."""
        return await self.desk.label_conversation(conversation_id, sentiment, agent.name)

    async def approve_answer(
        self,
        agent: Agent,
        answer_message_id: int,
        question_message_id: int | None = None,
        question: str | None = None,
        intent: str | None = None,
    ) -> int:
        """Save an agent's reply as an approved answer (for the next answer index).

        Raises:
            BadRequestError: `intent` is neither a known intent nor a valid new name, or the
                messages do not fit (see `DeskStore.approve_answer`).
            NotFoundError: a message does not exist.
        """
        if intent is not None:
            await self._check_intent(intent)
        return await self.desk.approve_answer(
            answer_message_id, agent.name, question_message_id, question, intent
        )

    # -- the unclaimed timeout ---------------------------------------------------------------

    async def time_out_unclaimed(self) -> list[EscalationNotice]:
        """Tell the customers of escalations unclaimed for too long, once each.

        Returns:
            The escalations this process timed out (another replica may have taken some).
        """
        cutoff = self.clock() - timedelta(seconds=self.unclaimed_timeout_s)
        done = []
        for escalation, conversation in await self.desk.unclaimed_since(cutoff):
            notice = self.router.message("unclaimed", conversation.sender_name)
            timed_out = await self.desk.time_out(escalation.id, notice)
            if timed_out is None:
                continue
            await self._deliver(timed_out.conversation, timed_out.notice)
            await self._publish("escalation.timeout", timed_out.escalation)
            done.append(timed_out)
        return done

    async def _watch_unclaimed(self) -> None:
        # Often enough that the notice is at most a quarter of the timeout late, at most every
        # 5 s (one cheap indexed query).
        interval = min(5.0, max(0.05, self.unclaimed_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.time_out_unclaimed()
            except StoreUnavailableError as exc:
                log.warning("unclaimed-timeout check skipped: %s", exc)
            except Exception:  # a background loop's boundary: log, keep watching
                log.exception("unclaimed-timeout check failed")

    # -- internals ---------------------------------------------------------------------------

    async def _check_intent(self, intent: str) -> None:
        """Refuse (BadRequestError) an intent label that is neither one the live model or an
        agent's correction knows, nor a valid new name: labels become training data, so
        nothing else gets in (`../x`, control characters, pages of text)."""
        if INTENT_NAME.fullmatch(intent) or intent in await self.intents():
            return
        shown = intent if len(intent) <= 80 else f"{intent[:80]}... ({len(intent)} characters)"
        raise BadRequestError(
            f"intent {shown!r} is neither a known intent nor a valid new name; a new "
            "intent is 2-64 lower-case letters, digits and _, starting with a letter"
        )

    async def _deliver(self, conversation: Conversation, message: StoredMessage) -> bool:
        """Push a stored message to the customer's channel; False when the channel failed."""
        try:
            await self.dispatcher.deliver(conversation, reply_of(message))
        except DeliveryError as exc:
            log.warning(
                "message %s to %s conversation %s is stored but was not delivered: %s",
                message.id,
                conversation.channel,
                conversation.id,
                exc,
            )
            return False
        return True

    async def _publish(self, kind: str, escalation: EscalationRecord, **extra: str) -> None:
        await self.bus.publish(
            TOPIC,
            {
                "type": kind,
                "conversation_id": escalation.conversation_id,
                "escalation_id": escalation.id,
                **extra,
            },
        )
