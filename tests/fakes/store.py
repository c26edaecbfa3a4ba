"""In-memory `ConversationStore` and `DeskStore` (the ports of `bot/core/ports.py`), for fast
tests of the core's decisions.

The semantics are those of the SQL stores (`bot/store/conversations.py`, `bot/store/desk.py`):
the same input rules and messages (both call `bot/core/validation.py` and the desk's rules in
`bot/core/desk.py`), the same errors, client-id de-duplication, one-step turns, escalations
changed only through `bot/core/handoff.py`, ids growing in insertion order. Each operation validates
first and changes the tables after its one `await`, so it is as atomic as a transaction, and
other coroutines may run in between operations, as they do against a database.

Deliberate differences: the agents' labels in `InMemoryDeskStore.view` are the feedback of any
author but "customer" (the SQL store joins the console accounts, which the fake does not keep),
and an empty client id counts as no id (see `receive`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from uuid import uuid4

from bot.core import csat, handoff, validation
from bot.core.clock import Clock, utcnow
from bot.core.csat import CsatFigures
from bot.core.desk import (
    AUTOMATED_ROUTES,
    RESOLVED,
    AnswerUsage,
    CannedResponse,
    ConversationView,
    CustomerHistory,
    Dashboard,
    DayFigures,
    EscalationNotice,
    IntentFigures,
    Note,
    QueueItem,
    SearchHit,
    SearchPage,
    SearchQuery,
    approved_question,
    check_approvable,
    check_question,
    check_sentiment,
    customer_matches,
    dashboard_window,
    latest_labels,
    message_matches,
    most_asked_first,
    most_recent_first,
    most_urgent_first,
)
from bot.core.errors import ConflictError, NotFoundError, StoreUnavailableError
from bot.core.handoff import Handoff
from bot.core.library import AnswerControl
from bot.core.records import (
    AnswerRating,
    Conversation,
    ConversationStatus,
    Escalation,
    EscalationRecord,
    EscalationStatus,
    Feedback,
    Outcome,
    Received,
    Role,
    Route,
    StoredMessage,
    Turn,
    Understanding,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FeedbackEntry:
    """A stored feedback row (the record plus what the table adds)."""

    id: int
    feedback: Feedback
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ConversationLabel:
    """An agent's overall sentiment of a conversation."""

    id: int
    conversation_id: str
    sentiment: str
    author: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApprovedAnswer:
    """An agent's reply saved as the answer to a customer's question."""

    id: int
    question: str
    answer: str
    intent: str | None
    # None for an answer approved in the answer library (no conversation's reply).
    conversation_id: str | None
    question_message_id: int | None
    answer_message_id: int | None
    author: str
    created_at: datetime


@dataclass
class MemoryTables:
    """The rows both fakes share; dicts keep insertion order, which is id order."""

    conversations: dict[str, Conversation] = field(default_factory=dict)
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    reply_to: dict[int, int] = field(default_factory=dict)  # message id -> the one it answers
    escalations: dict[int, EscalationRecord] = field(default_factory=dict)
    resolved_by: dict[int, str] = field(default_factory=dict)  # escalation id -> agent
    feedback: list[FeedbackEntry] = field(default_factory=list)
    labels: list[ConversationLabel] = field(default_factory=list)
    approved: list[ApprovedAnswer] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)  # console accounts (a test adds them)
    canned: dict[int, CannedResponse] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    controls: dict[str, AnswerControl] = field(default_factory=dict)  # by source
    _ids: dict[str, Iterator[int]] = field(default_factory=dict)

    def next_id(self, table: str) -> int:
        """The next id of `table` (each table counts from 1, like an autoincrement)."""
        return next(self._ids.setdefault(table, itertools.count(1)))


class InMemoryConversationStore:
    """The `ConversationStore` port in process memory.

    Args:
        clock: the time written on every row (a `ManualClock` in tests).

    Test controls: `make_unavailable(*operations)` makes those operations (every one when
    none is named) raise StoreUnavailableError, as an unreachable database does, until
    `make_available()`. Like the SQL store, nothing but `ping` works before `start()`.
    """

    def __init__(self, clock: Clock = utcnow) -> None:
        self.clock = clock
        self.tables = MemoryTables()
        self.started = False
        self._down: set[str] = set()
        self._all_down = False

    # -- test controls -----------------------------------------------------------------------

    def make_unavailable(self, *operations: str) -> None:
        """Let `operations` (method names; all of them when none is given) fail from now on
        (`conversation_id` goes through `conversation`, `add_customer_message` through
        `receive`)."""
        if operations:
            self._down.update(operations)
        else:
            self._all_down = True

    def make_available(self) -> None:
        self._down.clear()
        self._all_down = False

    async def enter(self, operation: str, *, needs_start: bool = True) -> None:
        """Where a database round trip would be: other coroutines run, outages strike."""
        await asyncio.sleep(0)
        if self._all_down or operation in self._down:
            raise StoreUnavailableError(
                f"cannot {operation}: the in-memory store was made unavailable by the test"
            )
        if needs_start and not self.started:
            raise StoreUnavailableError(
                f"cannot {operation}: the store is not started; call `await store.start()` first"
            )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.enter("start", needs_start=False)
        self.started = True

    async def stop(self) -> None:
        """Stop; the tables stay, like a database file, for a later `start`."""
        self.started = False

    async def ping(self) -> None:
        await self.enter("ping", needs_start=False)

    # -- conversations -----------------------------------------------------------------------

    async def conversation(
        self, channel: str, sender: str, sender_name: str | None = None
    ) -> Conversation:
        validation.check_conversation_key(channel, sender)
        await self.enter("conversation")
        now = self.clock()
        found = self._find(channel, sender)
        if found is None:
            found = Conversation(
                id=uuid4().hex,
                channel=channel,
                sender=sender,
                status=ConversationStatus.BOT,
                created_at=now,
                updated_at=now,
                sender_name=sender_name,
            )
        elif sender_name is not None and sender_name != found.sender_name:
            found = replace(found, sender_name=sender_name, updated_at=now)  # a new name
        return self.save(found)

    async def conversation_id(
        self, channel: str, sender: str, sender_name: str | None = None
    ) -> str:
        return (await self.conversation(channel, sender, sender_name)).id

    async def find_conversation(self, channel: str, sender: str) -> Conversation | None:
        await self.enter("find_conversation")
        return self._find(channel, sender)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        await self.enter("get_conversation")
        return self.row(conversation_id)

    async def set_failed_turns(self, conversation_id: str, failed_turns: int) -> None:
        validation.check_failed_turns(failed_turns)
        await self.enter("set_failed_turns")
        conversation = self.row(conversation_id)
        self.save(replace(conversation, failed_turns=failed_turns, updated_at=self.clock()))

    # -- messages ----------------------------------------------------------------------------

    async def add_customer_message(
        self, conversation_id: str, text: str, client_id: str | None = None
    ) -> tuple[StoredMessage, bool]:
        received = await self.receive(conversation_id, text, client_id)
        return received.message, received.new

    async def receive(
        self, conversation_id: str, text: str, client_id: str | None = None, recent: int = 0
    ) -> Received:
        """Store a customer message, unless `client_id` is already stored in the conversation.

        An empty `client_id` is no id: every such message is new. (The SQL store stores "" as
        an id, so its second message with "" counts as a retry: see the contract test.)
        """
        await self.enter("receive")
        conversation = self.save(replace(self.row(conversation_id), updated_at=self.clock()))
        client_id = client_id or None
        earlier = None
        if client_id is not None:
            earlier = next(
                (m for m in self.messages_of(conversation_id) if m.client_id == client_id), None
            )
        if earlier is None:
            message = self.insert(conversation_id, Role.CUSTOMER, text, client_id=client_id)
        else:
            message = earlier
        last = self.messages_of(conversation_id)[-recent:] if recent > 0 else []
        return Received(conversation, message, earlier is None, tuple(last))

    async def annotate(
        self,
        message_id: int,
        understanding: Understanding,
        route: str,
        latency_ms: float,
        details: dict[str, Any] | None = None,
    ) -> None:
        await self.enter("annotate")
        message = self.message_row(message_id)
        self._annotate(message, understanding, route, latency_ms, details)

    async def add_message(
        self,
        conversation_id: str,
        role: Role,
        text: str,
        reply_to: int | None = None,
        route: str | None = None,
        details: dict[str, Any] | None = None,
        claimed_by: str | None = None,
    ) -> StoredMessage:
        role = validation.check_role(role)
        await self.enter("add_message")
        conversation = self.row(conversation_id)
        if claimed_by is not None:
            handoff.check_claimed_by(self.state_of(conversation_id), conversation_id, claimed_by)
        if reply_to is not None:
            self._check_reply_to(reply_to, conversation_id)
        self.save(replace(conversation, updated_at=self.clock()))
        return self.insert(
            conversation_id, role, text, reply_to=reply_to, route=route, details=details
        )

    async def record_turn(self, conversation_id: str, turn: Turn) -> StoredMessage | None:
        """Annotate, count failed turns, open the escalation (unless one is unresolved) and
        store the reply, all or nothing."""
        validation.check_failed_turns(turn.failed_turns)
        if turn.escalation is not None:
            validation.check_priority(turn.escalation.priority)
        await self.enter("record_turn")
        conversation = self.row(conversation_id)
        message = self.message_row(turn.message_id)
        if message.conversation_id != conversation_id:
            raise validation.not_in_conversation(
                turn.message_id, message.conversation_id, conversation_id
            )
        changes: dict[str, Any] = {"updated_at": self.clock()}
        if turn.failed_turns is not None:
            changes["failed_turns"] = turn.failed_turns
        self.save(replace(conversation, **changes))
        self._annotate(message, turn.understanding, turn.route, turn.latency_ms, turn.details)
        if turn.escalation is not None:
            self._open_escalation(conversation_id, turn.escalation)
        if turn.reply_text is None:
            return None
        return self.insert(
            conversation_id,
            Role.BOT,
            turn.reply_text,
            reply_to=turn.message_id,
            route=turn.route,
            details=turn.reply_details,
        )

    async def replies_to(self, message_id: int) -> list[StoredMessage]:
        await self.enter("replies_to")
        return [
            m for m in self.tables.messages.values() if self.tables.reply_to.get(m.id) == message_id
        ]

    async def transcript(
        self, conversation_id: str, limit: int | None = None
    ) -> list[StoredMessage]:
        validation.check_transcript_limit(limit)
        await self.enter("transcript")
        self.row(conversation_id)
        messages = self.messages_of(conversation_id)
        if limit is None:
            return messages
        return messages[len(messages) - limit :]

    # -- escalations -------------------------------------------------------------------------

    async def escalate(self, conversation_id: str, escalation: Escalation) -> EscalationRecord:
        """Open an escalation; the unresolved one, unchanged, if there is one."""
        validation.check_priority(escalation.priority)
        await self.enter("escalate")
        self.row(conversation_id)
        return self._open_escalation(conversation_id, escalation)

    async def claim(self, conversation_id: str, agent: str) -> EscalationRecord:
        await self.enter("claim")
        current = self.state_of(conversation_id)
        claimed = handoff.claim(current, conversation_id, agent)
        unresolved = self.unresolved(conversation_id)
        assert unresolved is not None  # handoff.claim refuses a conversation without one
        if claimed == current:  # claiming one's own claim again changes nothing
            return unresolved
        return self.change_hands(unresolved, claimed, claimed_at=self.clock())

    async def resolve(self, conversation_id: str, agent: str) -> None:
        """Close the unresolved escalation as `resolved`; any agent may (as in the SQL store)."""
        await self.enter("resolve")
        current = self.state_of(conversation_id)
        closed, outcome = handoff.close(current, conversation_id, agent, True, Outcome.RESOLVED)
        unresolved = self.unresolved(conversation_id)
        assert unresolved is not None
        self.finish(unresolved, closed, outcome, agent)

    async def open_escalations(self) -> list[EscalationRecord]:
        await self.enter("open_escalations")
        unresolved = [e for e in self.tables.escalations.values() if e.status in handoff.UNRESOLVED]
        return sorted(unresolved, key=lambda e: (-e.priority, e.created_at, e.id))

    # -- feedback ----------------------------------------------------------------------------

    async def record_feedback(self, feedback: Feedback) -> int:
        validation.check_feedback(feedback)
        await self.enter("record_feedback")
        self.message_row(feedback.message_id)
        entry = FeedbackEntry(self.tables.next_id("feedback"), feedback, self.clock())
        self.tables.feedback.append(entry)
        return entry.id

    async def feedback(self, message_id: int) -> list[Feedback]:
        await self.enter("feedback")
        return [e.feedback for e in self.tables.feedback if e.feedback.message_id == message_id]

    async def answer_ratings(self, after: int = 0) -> list[AnswerRating]:
        await self.enter("answer_ratings")
        ratings = []
        for entry in sorted(self.tables.feedback, key=lambda e: e.id):
            if entry.id <= after:
                continue
            reply = self.tables.messages[entry.feedback.message_id]
            source = reply.details.get("source")
            if (
                entry.feedback.rating is None
                or reply.role != Role.BOT
                or reply.route != Route.ANSWER
                or not source
            ):
                continue
            asked = self.tables.messages.get(self.tables.reply_to.get(reply.id, -1))
            intent = asked.intent if asked is not None else None
            ratings.append(
                AnswerRating(str(source), reply.text, intent, entry.feedback.rating, entry.id)
            )
        return ratings

    # -- the tables, for both fakes ----------------------------------------------------------

    def row(self, conversation_id: str) -> Conversation:
        """A conversation by id (NotFoundError when unknown)."""
        return _found(
            self.tables.conversations.get(conversation_id),
            f"conversation {conversation_id!r} does not exist; use an id returned by "
            "conversation() or listed by open_escalations()",
        )

    def message_row(self, message_id: int) -> StoredMessage:
        """A message by id (NotFoundError when unknown)."""
        return _found(
            self.tables.messages.get(message_id),
            f"message {message_id} does not exist; refer to an id returned when the message "
            "was stored (e.g. Reply.message_id)",
        )

    def messages_of(self, conversation_id: str) -> list[StoredMessage]:
        """A conversation's messages, oldest first."""
        return [m for m in self.tables.messages.values() if m.conversation_id == conversation_id]

    def save(self, conversation: Conversation) -> Conversation:
        self.tables.conversations[conversation.id] = conversation
        return conversation

    def insert(
        self,
        conversation_id: str,
        role: Role,
        text: str,
        *,
        client_id: str | None = None,
        reply_to: int | None = None,
        route: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> StoredMessage:
        """Add a message row (the caller has checked the conversation and `reply_to`)."""
        message = StoredMessage(
            id=self.tables.next_id("messages"),
            conversation_id=conversation_id,
            role=role,
            text=text,
            created_at=self.clock(),
            client_id=client_id,
            route=None if route is None else str(route),
            details=dict(details or {}),
        )
        self.tables.messages[message.id] = message
        if reply_to is not None:
            self.tables.reply_to[message.id] = reply_to
        return message

    def unresolved(self, conversation_id: str) -> EscalationRecord | None:
        """The conversation's open or claimed escalation (at most one exists)."""
        return next(
            (
                e
                for e in self.tables.escalations.values()
                if e.conversation_id == conversation_id and e.status in handoff.UNRESOLVED
            ),
            None,
        )

    def state_of(self, conversation_id: str) -> Handoff:
        """Who is in charge of the conversation now (NotFoundError when unknown)."""
        conversation = self.row(conversation_id)
        unresolved = self.unresolved(conversation_id)
        if unresolved is None:
            return Handoff(conversation.status)
        return Handoff(
            conversation.status, EscalationStatus(unresolved.status), unresolved.assignee
        )

    def change_hands(
        self, escalation: EscalationRecord, to: Handoff, **columns: Any
    ) -> EscalationRecord:
        """Write the state `bot/core/handoff.py` decided on to the conversation and its
        escalation (`columns`: the escalation's timestamps and outcome)."""
        now = self.clock()
        conversation = self.row(escalation.conversation_id)
        back_to_bot = to.conversation == ConversationStatus.BOT
        self.save(
            replace(
                conversation,
                status=to.conversation,
                assignee=to.assignee,
                updated_at=now,
                failed_turns=0 if back_to_bot else conversation.failed_turns,
            )
        )
        if to.escalation is None:  # closed: it keeps whoever had claimed it
            changed = replace(escalation, status=EscalationStatus.RESOLVED, **columns)
        else:
            changed = replace(escalation, status=to.escalation, assignee=to.assignee, **columns)
        self.tables.escalations[changed.id] = changed
        return changed

    def finish(
        self, escalation: EscalationRecord, to: Handoff, outcome: Outcome, agent: str
    ) -> EscalationRecord:
        """Close `escalation` (the conversation goes back to the bot, failed turns reset)."""
        self.tables.resolved_by[escalation.id] = agent
        return self.change_hands(escalation, to, resolved_at=self.clock(), outcome=outcome)

    # -- internals ---------------------------------------------------------------------------

    def _find(self, channel: str, sender: str) -> Conversation | None:
        return next(
            (
                c
                for c in self.tables.conversations.values()
                if c.channel == channel and c.sender == sender
            ),
            None,
        )

    def _check_reply_to(self, reply_to: int, conversation_id: str) -> None:
        validation.check_reply_to(
            reply_to, self.message_row(reply_to).conversation_id, conversation_id
        )

    def _annotate(
        self,
        message: StoredMessage,
        u: Understanding,
        route: str,
        latency_ms: float,
        details: dict[str, Any] | None,
    ) -> None:
        self.tables.messages[message.id] = replace(
            message,
            intent=u.intent,
            intent_confidence=float(u.intent_confidence),
            sentiment=u.sentiment,
            negativity=float(u.negativity),
            model_versions=dict(u.model_versions),
            route=str(route),
            latency_ms=float(latency_ms),
            details=message.details if details is None else dict(details),
        )

    def _open_escalation(self, conversation_id: str, escalation: Escalation) -> EscalationRecord:
        current = self.state_of(conversation_id)
        if not handoff.needs_escalation(current):
            unresolved = self.unresolved(conversation_id)
            assert unresolved is not None
            if handoff.raises_priority(unresolved.priority, escalation.priority):
                unresolved = replace(
                    unresolved,
                    priority=float(escalation.priority),
                    explanation=handoff.raised_explanation(
                        unresolved.explanation, escalation.explanation
                    ),
                )
                self.tables.escalations[unresolved.id] = unresolved
            return unresolved
        to = handoff.escalate(current)
        opened = EscalationRecord(
            id=self.tables.next_id("escalations"),
            conversation_id=conversation_id,
            reason=escalation.reason,
            priority=float(escalation.priority),
            explanation=escalation.explanation,
            scores={name: float(score) for name, score in escalation.scores.items()},
            status=EscalationStatus.OPEN,
            created_at=self.clock(),
        )
        self.tables.escalations[opened.id] = opened
        return self.change_hands(opened, to)


class InMemoryDeskStore:
    """The `DeskStore` port on the tables of an `InMemoryConversationStore`.

    Args:
        store: the conversation store whose tables (and outages) are shared.
        clock: the time for new rows and the queue's waiting times; the store's by default.
    """

    def __init__(self, store: InMemoryConversationStore, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or store.clock

    @property
    def tables(self) -> MemoryTables:
        return self.store.tables

    # -- the queue and one conversation ------------------------------------------------------

    async def queue(self) -> list[QueueItem]:
        """Unresolved escalations, most urgent first (priority + waiting time / 10 min)."""
        await self.store.enter("queue")
        now = self.clock()
        items = []
        for escalation in self.tables.escalations.values():
            if escalation.status not in handoff.UNRESOLVED:
                continue
            messages = self.store.messages_of(escalation.conversation_id)
            customer = [m for m in messages if m.role == Role.CUSTOMER]
            last_agent = max((m.id for m in messages if m.role == Role.AGENT), default=0)
            items.append(
                QueueItem.at(
                    now,
                    escalation,
                    self.store.row(escalation.conversation_id),
                    customer[-1].text if customer else None,
                    sum(1 for m in customer if m.id > last_agent),
                )
            )
        return most_urgent_first(items)

    async def view(self, conversation_id: str) -> ConversationView:
        await self.store.enter("view")
        if conversation_id not in self.tables.conversations:
            raise NotFoundError(
                f"conversation {conversation_id!r} does not exist; open one from the queue"
            )
        messages = tuple(self.store.messages_of(conversation_id))
        ids = {m.id for m in messages}
        labels = latest_labels(
            e.feedback
            for e in self.tables.feedback
            if e.feedback.message_id in ids and e.feedback.author != "customer"
        )
        escalations = [
            e for e in self.tables.escalations.values() if e.conversation_id == conversation_id
        ]
        sentiments = [s for s in self.tables.labels if s.conversation_id == conversation_id]
        return ConversationView(
            conversation=self.store.row(conversation_id),
            escalation=escalations[-1] if escalations else None,
            messages=messages,
            labels=labels,
            approved=frozenset(
                a.answer_message_id
                for a in self.tables.approved
                if a.conversation_id == conversation_id
            ),
            sentiment=sentiments[-1].sentiment if sentiments else None,
            notes=tuple(n for n in self.tables.notes if n.conversation_id == conversation_id),
        )

    async def message(self, message_id: int) -> StoredMessage:
        await self.store.enter("message")
        missing = f"message {message_id} does not exist; label a message shown"
        return _found(self.tables.messages.get(message_id), missing)

    async def unresolved(self, conversation_id: str) -> EscalationRecord | None:
        await self.store.enter("unresolved")
        return self.store.unresolved(conversation_id)

    # -- changing hands ----------------------------------------------------------------------

    async def release(self, conversation_id: str, agent: str, operator: bool) -> EscalationRecord:
        await self.store.enter("release")
        current = self.store.state_of(conversation_id)
        released = handoff.release(current, conversation_id, agent, operator)
        return self.store.change_hands(self._unresolved(conversation_id), released, claimed_at=None)

    async def close(
        self, conversation_id: str, agent: str, operator: bool, outcome: str, notice: str
    ) -> EscalationNotice:
        await self.store.enter("close")
        current = self.store.state_of(conversation_id)
        closed, closed_as = handoff.close(current, conversation_id, agent, operator, outcome)
        escalation = self.store.finish(self._unresolved(conversation_id), closed, closed_as, agent)
        message = self.store.insert(
            conversation_id,
            Role.SYSTEM,
            notice,
            details={"event": closed_as.value, "agent": agent},
        )
        return EscalationNotice(escalation, self.store.row(conversation_id), message)

    async def check_claimed_by(self, conversation_id: str, agent: str) -> EscalationRecord:
        await self.store.enter("check_claimed_by")
        # Like the SQL store: an unknown conversation is one nobody claimed.
        known = conversation_id in self.tables.conversations
        current = self.store.state_of(conversation_id) if known else handoff.BOT
        handoff.check_claimed_by(current, conversation_id, agent)
        return self._unresolved(conversation_id)

    async def transfer(
        self, conversation_id: str, agent: str, operator: bool, to: str
    ) -> EscalationRecord:
        await self.store.enter("transfer")
        current = self.store.state_of(conversation_id)
        moved = handoff.transfer(current, conversation_id, agent, operator, to)
        unresolved = self._unresolved(conversation_id)
        if moved == current:
            return unresolved
        return self.store.change_hands(unresolved, moved, claimed_at=self.clock())

    async def colleagues(self) -> list[str]:
        await self.store.enter("colleagues")
        return sorted(self.tables.agents)

    # -- the unclaimed timeout ---------------------------------------------------------------

    async def unclaimed_since(
        self, cutoff: datetime
    ) -> list[tuple[EscalationRecord, Conversation]]:
        await self.store.enter("unclaimed_since")
        return [
            (e, self.store.row(e.conversation_id))
            for e in self.tables.escalations.values()
            if handoff.can_time_out(EscalationStatus(e.status))
            and e.timed_out_at is None
            and e.created_at <= cutoff
        ]

    async def time_out(self, escalation_id: int, notice: str) -> EscalationNotice | None:
        """Mark an open escalation timed out, once, and store the notice; None when it was
        claimed, closed or timed out already (or does not exist)."""
        await self.store.enter("time_out")
        escalation = self.tables.escalations.get(escalation_id)
        if (
            escalation is None
            or escalation.timed_out_at is not None
            or not handoff.can_time_out(EscalationStatus(escalation.status))
        ):
            return None
        now = self.clock()
        escalation = replace(escalation, timed_out_at=now)
        self.tables.escalations[escalation.id] = escalation
        conversation = self.store.save(
            replace(self.store.row(escalation.conversation_id), updated_at=now)
        )
        message = self.store.insert(
            conversation.id, Role.SYSTEM, notice, details={"event": "unclaimed"}
        )
        return EscalationNotice(escalation, conversation, message)

    # -- labels and approved answers ---------------------------------------------------------

    async def label_conversation(self, conversation_id: str, sentiment: str, author: str) -> int:
        check_sentiment(sentiment)
        await self.store.enter("label_conversation")
        self.store.row(conversation_id)
        label = ConversationLabel(
            self.tables.next_id("labels"), conversation_id, sentiment, author, self.clock()
        )
        self.tables.labels.append(label)
        return label.id

    async def approve_answer(
        self,
        answer_message_id: int,
        author: str,
        question_message_id: int | None = None,
        question: str | None = None,
        intent: str | None = None,
        answer: str | None = None,
    ) -> int:
        """Save an agent's reply as an approved answer (see `SqlDeskStore.approve_answer`)."""
        await self.store.enter("approve_answer")
        reply = self.store.message_row(answer_message_id)
        check_approvable(reply)
        asked: StoredMessage | None
        if question_message_id is not None:
            asked = self.store.message_row(question_message_id)
            check_question(asked, reply)
        else:
            before = [
                m
                for m in self.store.messages_of(reply.conversation_id)
                if m.role == Role.CUSTOMER and m.id < reply.id
            ]
            asked = before[-1] if before else None
        text = approved_question(reply, question, asked)
        if intent is None and asked is not None:
            corrected = [
                e.feedback.corrected_intent
                for e in self.tables.feedback
                if e.feedback.message_id == asked.id and e.feedback.corrected_intent
            ]
            intent = corrected[-1] if corrected else asked.intent
        approved = ApprovedAnswer(
            id=self.tables.next_id("approved"),
            question=text,
            answer=reply.text if answer is None else answer,
            intent=intent,
            conversation_id=reply.conversation_id,
            question_message_id=None if asked is None else asked.id,
            answer_message_id=reply.id,
            author=author,
            created_at=self.clock(),
        )
        self.tables.approved.append(approved)
        return approved.id

    async def corrected_intents(self) -> list[str]:
        await self.store.enter("corrected_intents")
        return sorted(
            {i for e in self.tables.feedback if (i := e.feedback.corrected_intent) is not None}
        )

    # -- the answer library (see `SqlDeskStore`) -----------------------------------------------

    async def answer_controls(self) -> list[AnswerControl]:
        await self.store.enter("answer_controls")
        return list(self.tables.controls.values())

    async def answer_usage(self) -> dict[str, AnswerUsage]:
        await self.store.enter("answer_usage")
        counts: dict[str, dict[str, int]] = {}
        for message in self.tables.messages.values():
            source = message.details.get("source")
            if message.role == Role.BOT and message.route == Route.ANSWER and source:
                served = counts.setdefault(str(source), {})
                served["served"] = served.get("served", 0) + 1
        for entry in self.tables.feedback:
            reply = self.tables.messages[entry.feedback.message_id]
            source = reply.details.get("source")
            rating = entry.feedback.rating
            if rating and reply.role == Role.BOT and reply.route == Route.ANSWER and source:
                rated = counts.setdefault(str(source), {})
                rated[rating] = rated.get(rating, 0) + 1
        return {
            name: AnswerUsage(c.get("served", 0), c.get("up", 0), c.get("down", 0))
            for name, c in counts.items()
        }

    async def disable_answer(
        self, source: str, disabled: bool, author: str, question: str | None = None
    ) -> AnswerControl:
        await self.store.enter("disable_answer")
        action = "disabled" if disabled else "enabled"
        return self._control(source, author, question, disabled=disabled, action=action)

    async def edit_answer(
        self,
        source: str,
        question: str,
        answer: str,
        intent: str | None,
        author: str,
        clean_question: str | None = None,
    ) -> AnswerControl:
        await self.store.enter("edit_answer")
        before = self.tables.controls.get(source)
        kept = self._approved(before)
        approved = ApprovedAnswer(
            id=kept.id if kept is not None else self.tables.next_id("approved"),
            question=question if clean_question is None else clean_question,
            answer=answer,
            intent=intent,
            conversation_id=None if kept is None else kept.conversation_id,
            question_message_id=None if kept is None else kept.question_message_id,
            answer_message_id=None if kept is None else kept.answer_message_id,
            author=author,
            created_at=self.clock() if kept is None else kept.created_at,
        )
        self.tables.approved = [a for a in self.tables.approved if a.id != approved.id]
        self.tables.approved.append(approved)
        return self._control(
            source,
            author,
            question,
            disabled=False,
            answer=answer,
            action="edited",
            approved_answer_id=approved.id,
        )

    async def approve_indexed(
        self, source: str, question: str, answer: str, intent: str | None, author: str
    ) -> AnswerControl:
        await self.store.enter("approve_indexed")
        before = self.tables.controls.get(source)
        if before is not None and self._approved(before) is not None:
            return self._control(source, author, question)
        approved = ApprovedAnswer(
            id=self.tables.next_id("approved"),
            question=question,
            answer=answer,
            intent=intent,
            conversation_id=None,
            question_message_id=None,
            answer_message_id=None,
            author=author,
            created_at=self.clock(),
        )
        self.tables.approved.append(approved)
        return self._control(
            source, author, question, action="approved", approved_answer_id=approved.id
        )

    def _approved(self, control: AnswerControl | None) -> ApprovedAnswer | None:
        if control is None or control.approved_answer_id is None:
            return None
        wanted = control.approved_answer_id
        return next((a for a in self.tables.approved if a.id == wanted), None)

    def _control(
        self, source: str, author: str, question: str | None, **changes: Any
    ) -> AnswerControl:
        before = self.tables.controls.get(source) or AnswerControl(
            source, False, None, "", None, author, self.clock()
        )
        if question is not None:
            changes["question"] = question
        control = replace(before, author=author, updated_at=self.clock(), **changes)
        self.tables.controls[source] = control
        return control

    # -- canned responses and notes ----------------------------------------------------------

    async def canned_responses(self) -> list[CannedResponse]:
        await self.store.enter("canned_responses")
        return sorted(self.tables.canned.values(), key=lambda c: c.shortcut)

    async def save_canned(
        self, canned_id: int | None, shortcut: str, title: str, text: str, author: str
    ) -> CannedResponse:
        await self.store.enter("save_canned")
        taken = [c for c in self.tables.canned.values() if c.shortcut == shortcut]
        if taken and taken[0].id != canned_id:
            raise ConflictError(
                f"the shortcut {shortcut!r} is taken by another canned response; pick another "
                "one or edit that response"
            )
        now = self.clock()
        if canned_id is None:
            saved = CannedResponse(
                self.tables.next_id("canned"), shortcut, title, text, author, now, now
            )
        else:
            missing = f"canned response {canned_id} does not exist (deleted?); reload"
            found = _found(self.tables.canned.get(canned_id), missing)
            saved = replace(
                found, shortcut=shortcut, title=title, text=text, author=author, updated_at=now
            )
        self.tables.canned[saved.id] = saved
        return saved

    async def delete_canned(self, canned_id: int) -> None:
        await self.store.enter("delete_canned")
        missing = f"canned response {canned_id} does not exist (deleted?); reload"
        _found(self.tables.canned.pop(canned_id, None), missing)

    async def add_note(self, conversation_id: str, author: str, text: str) -> Note:
        await self.store.enter("add_note")
        if conversation_id not in self.tables.conversations:
            raise NotFoundError(f"conversation {conversation_id!r} does not exist")
        note = Note(self.tables.next_id("notes"), conversation_id, author, text, self.clock())
        self.tables.notes.append(note)
        return note

    # -- search and history ------------------------------------------------------------------

    async def search(self, query: SearchQuery) -> SearchPage:
        """See `SqlDeskStore.search` (the same rules, in Python)."""
        await self.store.enter("search")
        found = []
        for conversation in self.tables.conversations.values():
            messages = self.store.messages_of(conversation.id)
            filtered = query.text is not None or query.since is not None or query.until is not None
            if filtered and not any(message_matches(m, query) for m in messages):
                continue
            if not customer_matches(conversation, query.customer):
                continue
            if query.channel is not None and conversation.channel != query.channel:
                continue
            if query.status == RESOLVED:
                closed = any(
                    e.conversation_id == conversation.id and e.status == EscalationStatus.RESOLVED
                    for e in self.tables.escalations.values()
                )
                if conversation.status != ConversationStatus.BOT or not closed:
                    continue
            elif query.status is not None and conversation.status != query.status:
                continue
            found.append(conversation)
        ordered = most_recent_first(found)
        page = ordered[query.offset : query.offset + query.per_page]
        return SearchPage(
            tuple(self._hit(c, query) for c in page), len(ordered), query.page, query.per_page
        )

    async def history(self, conversation_id: str) -> CustomerHistory:
        await self.store.enter("history")
        conversation = self.store.row(conversation_id)
        episodes = [
            e
            for e in self.tables.escalations.values()
            if e.conversation_id == conversation_id and e.status == EscalationStatus.RESOLVED
        ]
        name = (conversation.sender_name or "").lower()
        others = [
            c
            for c in self.tables.conversations.values()
            if name and (c.sender_name or "").lower() == name and c.id != conversation_id
        ]
        return CustomerHistory(
            tuple(reversed(episodes)),
            tuple(self._hit(c, SearchQuery()) for c in most_recent_first(others)[:20]),
        )

    def _hit(self, conversation: Conversation, query: SearchQuery) -> SearchHit:
        messages = self.store.messages_of(conversation.id)
        matching = [m for m in messages if message_matches(m, query)]
        escalations = [
            e for e in self.tables.escalations.values() if e.conversation_id == conversation.id
        ]
        return SearchHit(
            conversation,
            escalations[-1] if escalations else None,
            matching[-1] if matching else None,
            len(messages),
        )

    # -- the dashboard -----------------------------------------------------------------------

    async def dashboard(self, days: int) -> Dashboard:
        """Per-day figures for the last `days` UTC days (today included), counted in Python."""
        dates, start = dashboard_window(self.clock(), days)
        await self.store.enter("dashboard")
        figures = {d: _Day() for d in dates}

        def day_of(when: datetime) -> _Day | None:
            return figures.get(when.astimezone(UTC).date()) if when >= start else None

        intents: dict[str, list[float]] = {}
        for m in self.tables.messages.values():
            day = day_of(m.created_at)
            if day is None:
                continue
            day.messages += 1
            if m.role == Role.CUSTOMER:
                day.customer_messages += 1
                day.automated += int(m.route in AUTOMATED_ROUTES)
                if m.intent is not None:
                    intents.setdefault(m.intent, []).append(m.intent_confidence or 0.0)
        outcomes: dict[str, int] = {}
        for e in self.tables.escalations.values():
            day = day_of(e.created_at)
            if day is not None:
                day.escalations[e.reason] = day.escalations.get(e.reason, 0) + 1
            if e.outcome is not None and e.resolved_at is not None and e.resolved_at >= start:
                outcomes[str(e.outcome)] = outcomes.get(str(e.outcome), 0) + 1
        for entry in self.tables.feedback:
            day = day_of(entry.created_at)
            if day is not None and entry.feedback.rating is not None:
                day.feedback[entry.feedback.rating] += 1
        return Dashboard(
            days=tuple(day.figures(d) for d, day in sorted(figures.items())),
            intents=most_asked_first(
                IntentFigures(intent, len(scores), round(sum(scores) / len(scores), 4))
                for intent, scores in intents.items()
            ),
            open_escalations=sum(
                1 for e in self.tables.escalations.values() if e.status in handoff.UNRESOLVED
            ),
            outcomes=outcomes,
            csat=CsatFigures.of(
                m.details.get("csat")
                for m in self.tables.messages.values()
                if m.role == Role.CUSTOMER and m.route == csat.ROUTE and m.created_at >= start
            ),
        )

    # -- internals ---------------------------------------------------------------------------

    def _unresolved(self, conversation_id: str) -> EscalationRecord:
        unresolved = self.store.unresolved(conversation_id)
        assert unresolved is not None  # handoff refused the change otherwise
        return unresolved


@dataclass
class _Day:
    messages: int = 0
    customer_messages: int = 0
    automated: int = 0
    escalations: dict[str, int] = field(default_factory=dict)
    feedback: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})

    def figures(self, day: date) -> DayFigures:
        return DayFigures(
            date=day,
            messages=self.messages,
            customer_messages=self.customer_messages,
            automated=self.automated,
            escalations=self.escalations,
            feedback=self.feedback,
        )


def _found(row: T | None, missing: str) -> T:
    if row is None:
        raise NotFoundError(missing)
    return row
