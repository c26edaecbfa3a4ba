"""The agent console's use cases: take a conversation from the queue, answer the customer
through their own channel, give the conversation back, label what the models got wrong.

`ConsoleService` sits beside `ConversationService` (whose store, bus, router and dispatcher it
uses) and publishes every change on the bus topic "console" (see `bot/bus.py`), so that every
open console refreshes. It also runs the unclaimed timeout: an escalation no agent claimed
within `escalation.unclaimed_timeout_s` gets the customer one notice.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from datetime import timedelta

from bot.accounts import Agent
from bot.console_store import (
    SENTIMENTS,
    Closed,
    ConversationView,
    Dashboard,
    QueueItem,
    SqlConsoleStore,
    TimedOut,
    known_intents,
)
from bot.delivery import DeliveryError
from bot.errors import BadRequestError, ForbiddenError, StoreUnavailableError
from bot.events import Conversation, EscalationRecord, Feedback, Role, Route, StoredMessage
from bot.schema import utcnow
from bot.service import ConversationService, reply_of
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

INTENT_NAME = re.compile(r"[a-z][a-z0-9_]{1,63}")
RATINGS = {"good": "up", "bad": "down"}
TOPIC = "console"


class ConsoleService:
    """What agents and operators do in the console.

    Args:
        service: the conversation core (store, bus, router, dispatcher, metrics).
        console: the console's queries and changes.
        intent_labels: the live intent model's labels (they change on a model reload).
        unclaimed_timeout_s: how long an escalation may wait unclaimed before the customer
            is told (routing message `unclaimed`).
    """

    def __init__(
        self,
        service: ConversationService,
        console: SqlConsoleStore,
        intent_labels: Callable[[], Sequence[str]],
        unclaimed_timeout_s: float,
    ) -> None:
        self.service = service
        self.console = console
        self.intent_labels = intent_labels
        self.unclaimed_timeout_s = unclaimed_timeout_s
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
        return await self.console.queue()

    async def view(self, conversation_id: str) -> ConversationView:
        """A conversation with its escalation, messages and labels."""
        return await self.console.view(conversation_id)

    async def intents(self) -> list[str]:
        """The live model's intents plus those agents named in corrections, sorted."""
        return known_intents(self.intent_labels(), await self.console.corrected_intents())

    async def dashboard(self, agent: Agent, days: int) -> Dashboard:
        """Per-day figures for operators.

        Raises:
            ForbiddenError: `agent` is not an operator.
        """
        if not agent.is_operator:
            raise ForbiddenError(
                f"the dashboard is for operators; {agent.name} is an {agent.role.value}"
            )
        return await self.console.dashboard(days)

    # -- changing hands ----------------------------------------------------------------------

    async def claim(self, conversation_id: str, agent: Agent) -> EscalationRecord:
        """Take the conversation's escalation (ConflictError if a colleague has it)."""
        escalation = await self.service.store.claim(conversation_id, agent.name)
        await self._publish("escalation.claimed", escalation, agent=agent.name)
        return escalation

    async def release(self, conversation_id: str, agent: Agent) -> EscalationRecord:
        """Put a claimed conversation back in the queue (its assignee or an operator)."""
        escalation = await self.console.release(conversation_id, agent.name, agent.is_operator)
        await self._publish("escalation.released", escalation, agent=agent.name)
        return escalation

    async def resolve(self, conversation_id: str, agent: Agent) -> Closed:
        """Close the escalation as dealt with; the bot answers again."""
        return await self._close(conversation_id, agent, "resolved")

    async def hand_back(self, conversation_id: str, agent: Agent) -> Closed:
        """Give the conversation back to the bot (outcome `handed_back`)."""
        return await self._close(conversation_id, agent, "handed_back")

    async def _close(self, conversation_id: str, agent: Agent, outcome: str) -> Closed:
        conversation = await self.service.store.get_conversation(conversation_id)
        notice = self.service.router.message(outcome, conversation.sender_name)
        closed = await self.console.close(
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
        stored = await self.service.store.add_message(
            conversation_id,
            Role.AGENT,
            text,
            route=Route.AGENT,
            details={"agent": agent.name},
            claimed_by=agent.name,
        )
        conversation = await self.service.store.get_conversation(conversation_id)
        await self.service.bus.publish(
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
        message = await self.console.message(message_id)
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
        if sentiment is not None and sentiment not in SENTIMENTS:
            raise BadRequestError(
                f'field "sentiment" must be one of {", ".join(SENTIMENTS)}; got {sentiment!r}'
            )
        if (
            intent is not None
            and not INTENT_NAME.fullmatch(intent)
            and intent not in await self.intents()
        ):
            raise BadRequestError(
                f"intent {intent!r} is neither a known intent nor a valid new name; a new "
                "intent is 2-64 lower-case letters, digits and _, starting with a letter"
            )
        return await self.service.record_feedback(
            Feedback(
                message_id=message_id,
                rating=None if rating is None else RATINGS[rating],
                corrected_intent=intent,
                corrected_sentiment=sentiment,
                author=agent.name,
            )
        )

    async def label_conversation(self, conversation_id: str, agent: Agent, sentiment: str) -> int:
        """Store an agent's overall sentiment of a conversation."""
        return await self.console.label_conversation(conversation_id, sentiment, agent.name)

    async def approve_answer(
        self,
        agent: Agent,
        answer_message_id: int,
        question_message_id: int | None = None,
        question: str | None = None,
        intent: str | None = None,
    ) -> int:
        """Save an agent's reply as an approved answer (for the next answer index)."""
        return await self.console.approve_answer(
            answer_message_id, agent.name, question_message_id, question, intent
        )

    # -- the unclaimed timeout ---------------------------------------------------------------

    async def time_out_unclaimed(self) -> list[TimedOut]:
        """Tell the customers of escalations unclaimed for too long, once each.

        Returns:
            The escalations this process timed out (another replica may have taken some).
        """
        cutoff = utcnow() - timedelta(seconds=self.unclaimed_timeout_s)
        done = []
        for escalation, conversation in await self.console.unclaimed_since(cutoff):
            notice = self.service.router.message("unclaimed", conversation.sender_name)
            timed_out = await self.console.time_out(escalation.id, notice)
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

    async def _deliver(self, conversation: Conversation, message: StoredMessage) -> bool:
        """Push a stored message to the customer's channel; False when the channel failed."""
        try:
            await self.service.dispatcher.deliver(conversation, reply_of(message))
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
        await self.service.bus.publish(
            TOPIC,
            {
                "type": kind,
                "conversation_id": escalation.conversation_id,
                "escalation_id": escalation.id,
                **extra,
            },
        )
