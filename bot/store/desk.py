"""What the agent console reads and writes beyond the conversation store: the queue, a
conversation with its labels, releasing and closing escalations, agents' labels, approved
answers, the unclaimed timeout and the operators' dashboard.

`SqlDeskStore` shares the database and the connection pool of `SqlConversationStore`
(through its `writing` / `reading` sessions). Every query here runs unchanged on SQLite and
PostgreSQL; per-day figures are grouped by the UTC date in SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Date,
    and_,
    case,
    cast,
    delete,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from bot.core import csat, handoff
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
    dashboard_window,
    latest_labels,
    most_asked_first,
    most_urgent_first,
)
from bot.core.errors import ConflictError, NotFoundError
from bot.core.library import AnswerControl
from bot.core.records import (
    Conversation,
    ConversationStatus,
    EscalationRecord,
    EscalationStatus,
    Role,
    Route,
    StoredMessage,
)
from bot.store.conversations import SqlConversationStore
from bot.store.mapping import (
    UNRESOLVED_VALUES,
    apply_handoff,
    load_handoff,
    select_unresolved,
    to_conversation,
    to_escalation,
    to_feedback,
    to_message,
)
from bot.store.remembered import Remembered
from bot.store.schema import (
    AgentRow,
    AnswerControlRow,
    ApprovedAnswerRow,
    CannedResponseRow,
    ConversationLabelRow,
    ConversationNoteRow,
    ConversationRow,
    EscalationRow,
    FeedbackRow,
    MessageRow,
)

# What `escalations.status` holds while the unclaimed timeout may still tell the customer.
TIMEOUT_VALUES = tuple(status.value for status in EscalationStatus if handoff.can_time_out(status))
# How many of a customer's other conversations the history shows.
MAX_OTHER_CONVERSATIONS = 20


_ANSWER_CONTROLS = select(
    AnswerControlRow.source,
    AnswerControlRow.disabled,
    AnswerControlRow.answer,
    AnswerControlRow.action,
    AnswerControlRow.approved_answer_id,
    AnswerControlRow.author,
    AnswerControlRow.updated_at,
    AnswerControlRow.question,
)


#: How long the answer library's decisions, read for every answer the bot chooses, are
#: trusted without a query: under load every answered message would otherwise read them
#: (measured: 8 % of the event loop's time at 100 concurrent conversations). A decision made
#: through this process's store (the console on this replica, an erasure) holds from the
#: next message; one made on another replica, within this.
CONTROLS_REMEMBERED_S = 1.0
# The decisions as last read per store (a process's view of its database), shared by every
# `SqlDeskStore` on it (see `bot.store.remembered`).
_CONTROLS: Remembered[list[AnswerControl]] = Remembered()


def forget_answer_controls(store: SqlConversationStore) -> None:
    """The answer library's decisions changed in `store`'s database (call after the commit):
    the next `answer_controls` reads them again."""
    _CONTROLS.forget(store)


class SqlDeskStore:
    """The `DeskStore` port: the console's queries and changes, on the conversation store's
    database.

    Args:
        store: the conversation store whose sessions (and pool) are shared, and whose `clock`
            this store reads (waiting times, the dashboard's days, every row it stamps).
        controls_remembered_s: how long `answer_controls` trusts its last read (see
            CONTROLS_REMEMBERED_S).
    """

    def __init__(
        self, store: SqlConversationStore, controls_remembered_s: float = CONTROLS_REMEMBERED_S
    ) -> None:
        self.store = store
        self.controls_remembered_s = controls_remembered_s

    # -- the queue ---------------------------------------------------------------------------

    async def queue(self) -> list[QueueItem]:
        """Unresolved escalations, most urgent first (priority + waiting time / 10 min)."""
        now = self.store.clock()
        last = aliased(MessageRow)
        agent_reply = aliased(MessageRow)
        unread_message = aliased(MessageRow)
        last_customer_text = (
            select(last.text)
            .where(last.conversation_id == ConversationRow.id, last.role == Role.CUSTOMER.value)
            .order_by(last.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        last_agent_id = (
            select(func.coalesce(func.max(agent_reply.id), 0))
            .where(
                # Correlated with the message counted below, one level up.
                agent_reply.conversation_id == unread_message.conversation_id,
                agent_reply.role == Role.AGENT.value,
            )
            .scalar_subquery()
        )
        unread = (
            select(func.count(unread_message.id))
            .where(
                unread_message.conversation_id == ConversationRow.id,
                unread_message.role == Role.CUSTOMER.value,
                unread_message.id > last_agent_id,
            )
            .scalar_subquery()
        )
        query = (
            select(EscalationRow, ConversationRow, last_customer_text, unread)
            .join(ConversationRow, ConversationRow.id == EscalationRow.conversation_id)
            .where(EscalationRow.status.in_(UNRESOLVED_VALUES))
        )
        async with self.store.reading("read the queue") as session:
            rows = (await session.execute(query)).all()
        return most_urgent_first(
            QueueItem.at(
                now,
                to_escalation(escalation),
                to_conversation(conversation),
                text,
                int(unread_count or 0),
            )
            for escalation, conversation, text, unread_count in rows
        )

    # -- one conversation --------------------------------------------------------------------

    async def view(self, conversation_id: str) -> ConversationView:
        """A conversation, its latest escalation, its messages and the agents' labels.

        Raises:
            NotFoundError: no conversation has this id.
        """
        labelled = (
            select(FeedbackRow)
            .join(MessageRow, MessageRow.id == FeedbackRow.message_id)
            .where(
                MessageRow.conversation_id == conversation_id,
                FeedbackRow.author.in_(select(AgentRow.name)),
            )
            .order_by(FeedbackRow.id)
        )
        async with self.store.reading("read a conversation") as session:
            conversation = await session.get(ConversationRow, conversation_id)
            if conversation is None:
                raise NotFoundError(
                    f"conversation {conversation_id!r} does not exist; open one from the queue"
                )
            # At most one escalation is unresolved, and none can open after it: the newest
            # is the unresolved one if there is one.
            escalation = await session.scalar(
                select(EscalationRow)
                .where(EscalationRow.conversation_id == conversation_id)
                .order_by(EscalationRow.id.desc())
                .limit(1)
            )
            messages = (
                await session.scalars(
                    select(MessageRow)
                    .where(MessageRow.conversation_id == conversation_id)
                    .order_by(MessageRow.id)
                )
            ).all()
            feedback = (await session.scalars(labelled)).all()
            approved = (
                await session.scalars(
                    select(ApprovedAnswerRow.answer_message_id).where(
                        ApprovedAnswerRow.conversation_id == conversation_id
                    )
                )
            ).all()
            sentiment = await session.scalar(
                select(ConversationLabelRow.sentiment)
                .where(ConversationLabelRow.conversation_id == conversation_id)
                .order_by(ConversationLabelRow.id.desc())
                .limit(1)
            )
            notes = (
                await session.scalars(
                    select(ConversationNoteRow)
                    .where(ConversationNoteRow.conversation_id == conversation_id)
                    .order_by(ConversationNoteRow.id)
                )
            ).all()
        return ConversationView(
            conversation=to_conversation(conversation),
            escalation=None if escalation is None else to_escalation(escalation),
            messages=tuple(to_message(m) for m in messages),
            labels=latest_labels(to_feedback(row) for row in feedback),
            approved=frozenset(a for a in approved if a is not None),
            sentiment=sentiment,
            notes=tuple(_to_note(n) for n in notes),
        )

    async def message(self, message_id: int) -> StoredMessage:
        """A message by id (NotFoundError when unknown)."""
        async with self.store.reading("read a message") as session:
            row = await session.get(MessageRow, message_id)
        if row is None:
            raise NotFoundError(f"message {message_id} does not exist; label a message shown")
        return to_message(row)

    async def unresolved(self, conversation_id: str) -> EscalationRecord | None:
        """The conversation's unresolved escalation, if any."""
        async with self.store.reading("read escalations") as session:
            row = await session.scalar(select_unresolved(conversation_id))
        return None if row is None else to_escalation(row)

    # -- changing hands ----------------------------------------------------------------------

    async def release(self, conversation_id: str, agent: str, operator: bool) -> EscalationRecord:
        """Put a claimed escalation back in the queue (`handoff.release`: open, no assignee).

        Raises:
            NotFoundError: the conversation does not exist or has no unresolved escalation.
            ConflictError: nobody claimed it, or another agent did and `operator` is False.
        """
        now = self.store.clock()
        async with self.store.writing("release an escalation") as session:
            conversation, row, current = await session.run_sync(load_handoff, conversation_id)
            state = handoff.release(current, conversation_id, agent, operator)
            released = apply_handoff(conversation, row, state, now)
        return to_escalation(released)

    async def close(
        self, conversation_id: str, agent: str, operator: bool, outcome: str, notice: str
    ) -> EscalationNotice:
        """Close the unresolved escalation, give the conversation back to the bot and store
        the notice for the customer, in one transaction.

        Args:
            outcome: `resolved` or `handed_back`.
            notice: the system message telling the customer.

        Raises:
            BadRequestError: `outcome` is not an `Outcome`.
            NotFoundError: the conversation does not exist or has no unresolved escalation.
            ConflictError: the caller has not claimed it (operators may close any).
        """
        now = self.store.clock()
        async with self.store.writing("close an escalation") as session:
            conversation, row, current = await session.run_sync(load_handoff, conversation_id)
            state, closed_as = handoff.close(current, conversation_id, agent, operator, outcome)
            closed = apply_handoff(conversation, row, state, now, by=agent, outcome=closed_as)
            message = MessageRow(
                conversation_id=conversation_id,
                role=Role.SYSTEM.value,
                text=notice,
                details={"event": closed_as.value, "agent": agent},
                created_at=now,
            )
            session.add(message)
            await session.flush()
        return EscalationNotice(
            to_escalation(closed), to_conversation(conversation), to_message(message)
        )

    async def check_claimed_by(self, conversation_id: str, agent: str) -> EscalationRecord:
        """The escalation `agent` has claimed on this conversation (`handoff.check_claimed_by`).

        Raises:
            NotFoundError: no conversation has this id.
            ConflictError: it is not claimed by `agent` (says by whom, or "claim it first").
        """
        async with self.store.reading("read escalations") as session:
            _, row, current = await session.run_sync(load_handoff, conversation_id, lock=False)
        handoff.check_claimed_by(current, conversation_id, agent)
        assert row is not None  # claimed, so it has an unresolved escalation
        return to_escalation(row)

    async def transfer(
        self, conversation_id: str, agent: str, operator: bool, to: str
    ) -> EscalationRecord:
        """Give the unresolved escalation to colleague `to` (`handoff.transfer`): claimed by
        them from now on.

        Raises:
            NotFoundError: the conversation does not exist or has no unresolved escalation.
            ConflictError: a colleague has claimed it and `operator` is False.
        """
        now = self.store.clock()
        async with self.store.writing("transfer an escalation") as session:
            conversation, row, current = await session.run_sync(load_handoff, conversation_id)
            state = handoff.transfer(current, conversation_id, agent, operator, to)
            transferred = apply_handoff(conversation, row, state, now)
        return to_escalation(transferred)

    async def colleagues(self) -> list[str]:
        """The names of the accounts that can sign in (not disabled), sorted."""
        async with self.store.reading("read the agents") as session:
            names = await session.scalars(
                select(AgentRow.name).where(AgentRow.disabled_at.is_(None)).order_by(AgentRow.name)
            )
            return list(names.all())

    # -- the unclaimed timeout ---------------------------------------------------------------

    async def unclaimed_since(
        self, cutoff: datetime
    ) -> list[tuple[EscalationRecord, Conversation]]:
        """Open escalations created at or before `cutoff` whose customer was not told yet."""
        query = (
            select(EscalationRow, ConversationRow)
            .join(ConversationRow, ConversationRow.id == EscalationRow.conversation_id)
            .where(
                EscalationRow.status.in_(TIMEOUT_VALUES),
                EscalationRow.timed_out_at.is_(None),
                EscalationRow.created_at <= cutoff,
            )
            .order_by(EscalationRow.id)
        )
        async with self.store.reading("find unclaimed escalations") as session:
            rows = (await session.execute(query)).all()
        return [(to_escalation(e), to_conversation(c)) for e, c in rows]

    async def time_out(self, escalation_id: int, notice: str) -> EscalationNotice | None:
        """Mark an unclaimed escalation as timed out and store the customer's notice.

        The update is conditional on `timed_out_at` being NULL and the escalation still
        waiting (`handoff.can_time_out`), so of several replicas exactly one gets the row and
        tells the customer.

        Returns:
            What was done, or None when another replica (or a claim) came first.
        """
        now = self.store.clock()
        async with self.store.writing("time out an escalation") as session:
            result = await session.execute(
                update(EscalationRow)
                .where(
                    EscalationRow.id == escalation_id,
                    EscalationRow.status.in_(TIMEOUT_VALUES),
                    EscalationRow.timed_out_at.is_(None),
                )
                .values(timed_out_at=now)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = await session.get(EscalationRow, escalation_id, populate_existing=True)
            assert row is not None
            conversation = await session.get(ConversationRow, row.conversation_id)
            assert conversation is not None
            message = MessageRow(
                conversation_id=row.conversation_id,
                role=Role.SYSTEM.value,
                text=notice,
                details={"event": "unclaimed"},
                created_at=now,
            )
            session.add(message)
            conversation.updated_at = now
            await session.flush()
        return EscalationNotice(
            to_escalation(row), to_conversation(conversation), to_message(message)
        )

    # -- labels and approved answers ---------------------------------------------------------

    async def label_conversation(self, conversation_id: str, sentiment: str, author: str) -> int:
        """Store an agent's overall sentiment for a conversation; returns the label's id.

        Raises:
            BadRequestError: `sentiment` is not negative, neutral or positive.
            NotFoundError: no conversation has this id.
        """
        check_sentiment(sentiment)
        async with self.store.writing("label a conversation") as session:
            if await session.get(ConversationRow, conversation_id) is None:
                raise NotFoundError(f"conversation {conversation_id!r} does not exist")
            row = ConversationLabelRow(
                conversation_id=conversation_id,
                sentiment=sentiment,
                author=author,
                created_at=self.store.clock(),
            )
            session.add(row)
            await session.flush()
            return row.id

    async def approve_answer(
        self,
        answer_message_id: int,
        author: str,
        question_message_id: int | None = None,
        question: str | None = None,
        intent: str | None = None,
        answer: str | None = None,
    ) -> int:
        """Save an agent's reply (or `answer`, the agent's edit of it) as an approved answer
        to a customer's question.

        The question defaults to the last customer message before the answer, the intent to
        an agent's correction of that message, else the model's intent.

        Returns:
            The approved answer's id.

        Raises:
            NotFoundError: a message does not exist.
            BadRequestError: the answer is not an agent message, the question message is not
                a customer message of the same conversation, or there is no question.
        """
        async with self.store.writing("approve an answer") as session:
            answer_row = await session.get(MessageRow, answer_message_id)
            if answer_row is None:
                raise NotFoundError(f"message {answer_message_id} does not exist")
            reply = to_message(answer_row)
            check_approvable(reply)
            asked_row: MessageRow | None
            if question_message_id is not None:
                asked_row = await session.get(MessageRow, question_message_id)
                if asked_row is None:
                    raise NotFoundError(f"message {question_message_id} does not exist")
                check_question(to_message(asked_row), reply)
            else:
                asked_row = await session.scalar(
                    select(MessageRow)
                    .where(
                        MessageRow.conversation_id == reply.conversation_id,
                        MessageRow.role == Role.CUSTOMER.value,
                        MessageRow.id < reply.id,
                    )
                    .order_by(MessageRow.id.desc())
                    .limit(1)
                )
            asked = None if asked_row is None else to_message(asked_row)
            text = approved_question(reply, question, asked)
            if intent is None and asked is not None:
                intent = await session.scalar(
                    select(FeedbackRow.corrected_intent)
                    .where(
                        FeedbackRow.message_id == asked.id,
                        FeedbackRow.corrected_intent.is_not(None),
                    )
                    .order_by(FeedbackRow.id.desc())
                    .limit(1)
                )
                intent = intent or asked.intent
            row = ApprovedAnswerRow(
                question=text,
                answer=reply.text if answer is None else answer,
                intent=intent,
                conversation_id=reply.conversation_id,
                question_message_id=None if asked is None else asked.id,
                answer_message_id=reply.id,
                author=author,
                created_at=self.store.clock(),
            )
            session.add(row)
            await session.flush()
            return row.id

    async def corrected_intents(self) -> list[str]:
        """Intents agents have named in corrections, sorted."""
        query = (
            select(FeedbackRow.corrected_intent)
            .where(FeedbackRow.corrected_intent.is_not(None))
            .distinct()
        )
        async with self.store.reading("read corrected intents") as session:
            return sorted(str(i) for i in (await session.scalars(query)).all())

    # -- the answer library ------------------------------------------------------------------

    async def answer_controls(self) -> list[AnswerControl]:
        """Every indexed answer agents disabled, edited or approved (one small table, read
        by the service for every answer it chooses): as last read when that is younger than
        `controls_remembered_s` and nothing changed through this process's store since."""
        return list(await _CONTROLS.get(self.store, self.controls_remembered_s, self._controls))

    async def _controls(self) -> list[AnswerControl]:
        # Plain rows, not ORM objects, from a statement built once.
        async with self.store.reading("read the answer library's decisions") as session:
            rows = (await session.execute(_ANSWER_CONTROLS)).all()
        return [AnswerControl(s, bool(d), a, c, i, by, at, q) for s, d, a, c, i, by, at, q in rows]

    async def answer_usage(self) -> dict[str, AnswerUsage]:
        """Per index source: the bot replies that served it (route `answer`, the source in
        their details) and the "up"/"down" ratings of those replies (customers' thumbs and
        agents' Good/Bad), counted in SQL."""
        source = MessageRow.details["source"].as_string()
        served = (
            select(source, func.count())
            .where(MessageRow.role == Role.BOT.value, MessageRow.route == Route.ANSWER.value)
            .group_by(source)
        )
        rated = (
            select(source, FeedbackRow.rating, func.count())
            .join(MessageRow, MessageRow.id == FeedbackRow.message_id)
            .where(
                FeedbackRow.rating.is_not(None),
                MessageRow.role == Role.BOT.value,
                MessageRow.route == Route.ANSWER.value,
            )
            .group_by(source, FeedbackRow.rating)
        )
        counts: dict[str, dict[str, int]] = {}
        async with self.store.reading("count served answers") as session:
            for name, count in (await session.execute(served)).all():
                if name:
                    counts.setdefault(str(name), {})["served"] = int(count)
            for name, rating, count in (await session.execute(rated)).all():
                if name:
                    counts.setdefault(str(name), {})[str(rating)] = int(count)
        return {
            name: AnswerUsage(c.get("served", 0), c.get("up", 0), c.get("down", 0))
            for name, c in counts.items()
        }

    async def disable_answer(
        self, source: str, disabled: bool, author: str, question: str | None = None
    ) -> AnswerControl:
        """Stop (or resume) serving the indexed answer `source`, the pair of `question`
        (None: the one recorded)."""
        action = "disabled" if disabled else "enabled"
        async with self.store.writing(f"{action[:-1]} an answer") as session:
            row = await self._control(session, source, author, question)
            row.disabled, row.action = disabled, action
            control = await _saved_control(session, row)
        forget_answer_controls(self.store)
        return control

    async def edit_answer(
        self,
        source: str,
        question: str,
        answer: str,
        intent: str | None,
        author: str,
        clean_question: str | None = None,
    ) -> AnswerControl:
        """Serve `answer` in place of `source`'s text (and serve it again if it was
        disabled), and keep the pair as an approved answer to `clean_question` (default:
        the pair's `question`; an excluded answer's clean version may ask it better): the
        one an earlier edit or approval saved is updated, else a new one is made."""
        async with self.store.writing("edit an answer") as session:
            row = await self._control(session, source, author, question)
            approved = await self._approved(session, row)
            if approved is None:
                approved = ApprovedAnswerRow(created_at=self.store.clock())
                session.add(approved)
            approved.question = question if clean_question is None else clean_question
            approved.answer, approved.intent = answer, intent
            approved.author = author
            await session.flush()
            row.answer, row.disabled, row.action = answer, False, "edited"
            row.approved_answer_id = approved.id
            control = await _saved_control(session, row)
        forget_answer_controls(self.store)
        return control

    async def approve_indexed(
        self, source: str, question: str, answer: str, intent: str | None, author: str
    ) -> AnswerControl:
        """Keep an indexed pair as an approved answer; when one was kept already (by an
        earlier approval or edit), nothing changes."""
        async with self.store.writing("approve an indexed answer") as session:
            row = await self._control(session, source, author, question)
            if await self._approved(session, row) is not None:
                return _to_control(row)
            approved = ApprovedAnswerRow(
                question=question,
                answer=answer,
                intent=intent,
                author=author,
                created_at=self.store.clock(),
            )
            session.add(approved)
            await session.flush()
            row.approved_answer_id, row.action = approved.id, "approved"
            control = await _saved_control(session, row)
        forget_answer_controls(self.store)
        return control

    async def _control(
        self, session: AsyncSession, source: str, author: str, question: str | None
    ) -> AnswerControlRow:
        """The source's decision row (a new one, not yet flushed, when there is none),
        stamped with `author`, now and the pair's `question` (when given)."""
        now = self.store.clock()
        row = await session.scalar(
            select(AnswerControlRow).where(AnswerControlRow.source == source).with_for_update()
        )
        if row is None:
            row = AnswerControlRow(source=source, disabled=False, action="", created_at=now)
            session.add(row)
        row.author, row.updated_at = author, now
        if question is not None:
            row.question = question
        return row

    @staticmethod
    async def _approved(session: AsyncSession, row: AnswerControlRow) -> ApprovedAnswerRow | None:
        if row.approved_answer_id is None:
            return None
        return await session.get(ApprovedAnswerRow, row.approved_answer_id)

    # -- canned responses and notes ----------------------------------------------------------

    async def canned_responses(self) -> list[CannedResponse]:
        """Every canned response, by shortcut."""
        async with self.store.reading("read canned responses") as session:
            rows = (
                await session.scalars(
                    select(CannedResponseRow).order_by(CannedResponseRow.shortcut)
                )
            ).all()
        return [_to_canned(row) for row in rows]

    async def save_canned(
        self, canned_id: int | None, shortcut: str, title: str, text: str, author: str
    ) -> CannedResponse:
        """Create or change a canned response (fields checked by `desk.check_canned`).

        Raises:
            ConflictError: another canned response has this shortcut.
            NotFoundError: `canned_id` names none.
        """
        now = self.store.clock()
        try:
            async with self.store.writing("save a canned response") as session:
                taken = await session.scalar(
                    select(CannedResponseRow.id).where(CannedResponseRow.shortcut == shortcut)
                )
                if taken is not None and taken != canned_id:
                    raise _shortcut_taken(shortcut)
                if canned_id is None:
                    row = CannedResponseRow(shortcut=shortcut, created_at=now)
                    session.add(row)
                else:
                    found = await session.get(CannedResponseRow, canned_id)
                    if found is None:
                        raise _no_canned(canned_id)
                    row = found
                row.title, row.text, row.author, row.updated_at = title, text, author, now
                row.shortcut = shortcut
                await session.flush()
                return _to_canned(row)
        except IntegrityError as exc:  # a colleague took the shortcut a moment ago
            raise _shortcut_taken(shortcut) from exc

    async def delete_canned(self, canned_id: int) -> None:
        """Delete a canned response (NotFoundError when there is none)."""
        async with self.store.writing("delete a canned response") as session:
            result = await session.execute(
                delete(CannedResponseRow).where(CannedResponseRow.id == canned_id)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise _no_canned(canned_id)

    async def add_note(self, conversation_id: str, author: str, text: str) -> Note:
        """Store a private note on a conversation (NotFoundError for an unknown one)."""
        async with self.store.writing("add a note") as session:
            if await session.get(ConversationRow, conversation_id) is None:
                raise NotFoundError(f"conversation {conversation_id!r} does not exist")
            row = ConversationNoteRow(
                conversation_id=conversation_id,
                author=author,
                text=text,
                created_at=self.store.clock(),
            )
            session.add(row)
            await session.flush()
            return _to_note(row)

    # -- search and history ------------------------------------------------------------------

    async def search(self, query: SearchQuery) -> SearchPage:
        """One page of the conversations `query` finds, most recently active first (the rules
        of `desk.message_matches` / `desk.customer_matches`, in SQL)."""
        matching = _message_filters(query)
        where: list[ColumnElement[bool]] = []
        if matching:
            where.append(
                select(MessageRow.id)
                .where(MessageRow.conversation_id == ConversationRow.id, *matching)
                .exists()
            )
        if query.customer is not None:
            where.append(
                or_(
                    ConversationRow.sender_name.icontains(query.customer, autoescape=True),
                    ConversationRow.sender.icontains(query.customer, autoescape=True),
                )
            )
        if query.channel is not None:
            where.append(ConversationRow.channel == query.channel)
        if query.status == RESOLVED:
            where.append(ConversationRow.status == ConversationStatus.BOT.value)
            where.append(
                select(EscalationRow.id)
                .where(
                    EscalationRow.conversation_id == ConversationRow.id,
                    EscalationRow.status == EscalationStatus.RESOLVED.value,
                )
                .exists()
            )
        elif query.status is not None:
            where.append(ConversationRow.status == query.status)
        async with self.store.reading("search conversations") as session:
            total = await session.scalar(
                select(func.count()).select_from(ConversationRow).where(*where)
            )
            rows = (
                await session.scalars(
                    select(ConversationRow)
                    .where(*where)
                    .order_by(ConversationRow.updated_at.desc(), ConversationRow.id)
                    .offset(query.offset)
                    .limit(query.per_page)
                )
            ).all()
            hits = await _hits(session, rows, matching)
        return SearchPage(tuple(hits), int(total or 0), query.page, query.per_page)

    async def history(self, conversation_id: str) -> CustomerHistory:
        """The conversation's closed escalations, newest first, and up to 20 other
        conversations of a customer of the same name (case ignored)."""
        async with self.store.reading("read a customer's history") as session:
            conversation = await session.get(ConversationRow, conversation_id)
            if conversation is None:
                raise NotFoundError(f"conversation {conversation_id!r} does not exist")
            episodes = (
                await session.scalars(
                    select(EscalationRow)
                    .where(
                        EscalationRow.conversation_id == conversation_id,
                        EscalationRow.status == EscalationStatus.RESOLVED.value,
                    )
                    .order_by(EscalationRow.id.desc())
                )
            ).all()
            others: list[SearchHit] = []
            if conversation.sender_name:
                rows = (
                    await session.scalars(
                        select(ConversationRow)
                        .where(
                            func.lower(ConversationRow.sender_name)
                            == conversation.sender_name.lower(),
                            ConversationRow.id != conversation_id,
                        )
                        .order_by(ConversationRow.updated_at.desc(), ConversationRow.id)
                        .limit(MAX_OTHER_CONVERSATIONS)
                    )
                ).all()
                others = await _hits(session, rows, [])
        return CustomerHistory(tuple(to_escalation(e) for e in episodes), tuple(others))

    # -- the dashboard -----------------------------------------------------------------------

    async def dashboard(self, days: int) -> Dashboard:
        """Per-day figures for the last `days` UTC days (today included), grouped in SQL.

        Raises:
            BadRequestError: `days` is not between 1 and 366.
        """
        dates, start = dashboard_window(self.store.clock(), days)
        sqlite = self.store.url.startswith("sqlite")

        def day(column: Any) -> ColumnElement[Any]:
            if sqlite:  # naive UTC text: date() takes its first ten characters
                return func.date(column)
            # `timezone('UTC', timestamptz)` is the UTC wall time, whatever the session's
            # TimeZone; a literal (not a bound parameter) so that GROUP BY repeats it exactly.
            return cast(func.timezone(literal_column("'UTC'"), column), Date)

        customer = MessageRow.role == Role.CUSTOMER.value
        message_day = day(MessageRow.created_at)
        per_day = (
            select(
                message_day,
                func.count(MessageRow.id),
                func.sum(case((customer, 1), else_=0)),
                func.sum(
                    case((and_(customer, MessageRow.route.in_(AUTOMATED_ROUTES)), 1), else_=0)
                ),
            )
            .where(MessageRow.created_at >= start)
            .group_by(message_day)
        )
        escalation_day = day(EscalationRow.created_at)
        escalations = (
            select(escalation_day, EscalationRow.reason, func.count(EscalationRow.id))
            .where(EscalationRow.created_at >= start)
            .group_by(escalation_day, EscalationRow.reason)
        )
        feedback_day = day(FeedbackRow.created_at)
        feedback = (
            select(feedback_day, FeedbackRow.rating, func.count(FeedbackRow.id))
            .where(FeedbackRow.created_at >= start, FeedbackRow.rating.is_not(None))
            .group_by(feedback_day, FeedbackRow.rating)
        )
        intents = (
            select(
                MessageRow.intent,
                func.count(MessageRow.id),
                func.avg(MessageRow.intent_confidence),
            )
            .where(MessageRow.created_at >= start, customer, MessageRow.intent.is_not(None))
            .group_by(MessageRow.intent)
        )
        outcomes = (
            select(EscalationRow.outcome, func.count(EscalationRow.id))
            .where(EscalationRow.resolved_at >= start, EscalationRow.outcome.is_not(None))
            .group_by(EscalationRow.outcome)
        )
        open_count = select(func.count(EscalationRow.id)).where(
            EscalationRow.status.in_(UNRESOLVED_VALUES)
        )
        ratings = select(MessageRow.details).where(
            MessageRow.created_at >= start,
            MessageRow.role == Role.CUSTOMER.value,
            MessageRow.route == csat.ROUTE,
        )
        async with self.store.reading("read the dashboard") as session:
            message_rows = (await session.execute(per_day)).all()
            escalation_rows = (await session.execute(escalations)).all()
            feedback_rows = (await session.execute(feedback)).all()
            intent_rows = (await session.execute(intents)).all()
            outcome_rows = (await session.execute(outcomes)).all()
            open_escalations = int(await session.scalar(open_count) or 0)
            rated = (await session.scalars(ratings)).all()

        figures: dict[date, dict[str, Any]] = {
            d: {"escalations": {}, "feedback": {"up": 0, "down": 0}} for d in dates
        }
        for when, total, customers, automated in message_rows:
            entry = figures.get(_as_date(when))
            if entry is not None:
                entry["messages"] = int(total)
                entry["customer_messages"] = int(customers or 0)
                entry["automated"] = int(automated or 0)
        for when, reason, count in escalation_rows:
            entry = figures.get(_as_date(when))
            if entry is not None:
                entry["escalations"][reason] = int(count)
        for when, rating, count in feedback_rows:
            entry = figures.get(_as_date(when))
            if entry is not None:
                entry["feedback"][rating] = int(count)
        return Dashboard(
            days=tuple(DayFigures(date=d, **values) for d, values in sorted(figures.items())),
            intents=most_asked_first(
                IntentFigures(str(intent), int(count), round(float(mean or 0.0), 4))
                for intent, count, mean in intent_rows
            ),
            open_escalations=open_escalations,
            outcomes={str(outcome): int(count) for outcome, count in outcome_rows},
            csat=csat.CsatFigures.of((details or {}).get("csat") for details in rated),
        )


def _to_control(row: AnswerControlRow) -> AnswerControl:
    return AnswerControl(
        source=row.source,
        disabled=bool(row.disabled),
        answer=row.answer,
        action=row.action,
        approved_answer_id=row.approved_answer_id,
        author=row.author,
        updated_at=row.updated_at,
        question=row.question,
    )


async def _saved_control(session: AsyncSession, row: AnswerControlRow) -> AnswerControl:
    """Flush the decision; a colleague who made the first decision about the same answer at
    the same moment wins (ConflictError: reload and try again)."""
    try:
        await session.flush()
    except IntegrityError as exc:
        raise ConflictError(
            f"a colleague changed the answer {row.source[:200]!r} at the same moment; reload "
            "the answer library and try again"
        ) from exc
    return _to_control(row)


def _to_canned(row: CannedResponseRow) -> CannedResponse:
    return CannedResponse(
        row.id, row.shortcut, row.title, row.text, row.author, row.created_at, row.updated_at
    )


def _to_note(row: ConversationNoteRow) -> Note:
    return Note(row.id, row.conversation_id, row.author, row.text, row.created_at)


def _shortcut_taken(shortcut: str) -> ConflictError:
    return ConflictError(
        f"the shortcut {shortcut!r} is taken by another canned response; pick another one "
        "or edit that response"
    )


def _no_canned(canned_id: int) -> NotFoundError:
    return NotFoundError(f"canned response {canned_id} does not exist (deleted?); reload")


def _message_filters(query: SearchQuery) -> list[ColumnElement[bool]]:
    """The conditions on a message that `desk.message_matches` checks."""
    conditions: list[ColumnElement[bool]] = []
    if query.text is not None:
        conditions.append(MessageRow.text.icontains(query.text, autoescape=True))
    if query.since is not None:
        conditions.append(MessageRow.created_at >= query.since)
    if query.until is not None:
        conditions.append(MessageRow.created_at < query.until)
    return conditions


async def _hits(
    session: AsyncSession,
    rows: Sequence[ConversationRow],
    matching: Sequence[ColumnElement[bool]],
) -> list[SearchHit]:
    """Search hits of `rows`, in their order: each one's latest escalation, message count and
    newest message satisfying `matching` (the newest message when there are no conditions)."""
    ids = [row.id for row in rows]
    if not ids:
        return []
    in_page = MessageRow.conversation_id.in_(ids)
    newest = (
        await session.execute(
            select(MessageRow.conversation_id, func.max(MessageRow.id))
            .where(in_page, *matching)
            .group_by(MessageRow.conversation_id)
        )
    ).all()
    snippets = {
        m.conversation_id: to_message(m)
        for m in (
            await session.scalars(
                select(MessageRow).where(MessageRow.id.in_([i for _, i in newest]))
            )
        ).all()
    }
    counted = await session.execute(
        select(MessageRow.conversation_id, func.count(MessageRow.id))
        .where(in_page)
        .group_by(MessageRow.conversation_id)
    )
    counts = {str(cid): int(n) for cid, n in counted.all()}
    latest: dict[str, EscalationRecord] = {}
    for escalation in (
        await session.scalars(
            select(EscalationRow)
            .where(EscalationRow.conversation_id.in_(ids))
            .order_by(EscalationRow.id)
        )
    ).all():
        latest[escalation.conversation_id] = to_escalation(escalation)
    return [
        SearchHit(
            to_conversation(row), latest.get(row.id), snippets.get(row.id), counts.get(row.id, 0)
        )
        for row in rows
    ]


def _as_date(value: Any) -> date:
    """A grouped day as SQLite ('2026-11-29') or PostgreSQL (a date) returns it."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))
