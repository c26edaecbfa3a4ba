"""Between the store's rows and the core's records, shared by every SQL store.

- Row -> record conversions (`to_conversation`, `to_message`, ...): rows never leave
  `bot/store/`.
- The hand-off state the rows hold, and the one function that writes a new one back. Every
  change of who is in charge of a conversation goes the same way: `load_handoff` (the locked
  conversation row, its unresolved escalation row and the `Handoff` they hold), a function of
  `bot/core/handoff.py` for the next state (it raises when the change is not allowed), then
  `apply_handoff`.
- The selects and "not found" errors the stores share.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from sqlalchemy import Row, Select, select
from sqlalchemy.orm import Session

from bot.core.errors import NotFoundError
from bot.core.handoff import UNRESOLVED, Handoff
from bot.core.records import (
    Agent,
    AgentRole,
    AgentSession,
    Conversation,
    ConversationStatus,
    EscalationRecord,
    EscalationStatus,
    Feedback,
    Outcome,
    Role,
    StoredMessage,
)
from bot.store.schema import (
    AgentRow,
    AgentSessionRow,
    ConversationRow,
    EscalationRow,
    FeedbackRow,
    MessageRow,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")

# What `escalations.status` holds while an escalation is unresolved, for SQL filters.
UNRESOLVED_VALUES = tuple(status.value for status in UNRESOLVED)


# -- rows -> records -------------------------------------------------------------------------


def to_conversation(row: ConversationRow | Row[Any]) -> Conversation:
    """A conversation row (ORM or Core) as the core's record."""
    return _from_columns(Conversation, row, status=ConversationStatus(row.status))


def to_message(row: MessageRow | Row[Any]) -> StoredMessage:
    """A message row (ORM or Core) as the core's record."""
    return _from_columns(
        StoredMessage,
        row,
        role=Role(row.role),
        model_versions=dict(row.model_versions or {}),
        details=dict(row.details or {}),
    )


def to_escalation(row: EscalationRow) -> EscalationRecord:
    """An escalation row as the core's record."""
    return _from_columns(
        EscalationRecord,
        row,
        status=EscalationStatus(row.status),
        scores=dict(row.scores or {}),
        outcome=None if row.outcome is None else Outcome(row.outcome),
    )


def to_feedback(row: FeedbackRow) -> Feedback:
    """A feedback row as the core's record."""
    return _from_columns(Feedback, row)


def to_agent(row: AgentRow) -> Agent:
    """A console account's row as the core's record (without the password hash)."""
    return _from_columns(Agent, row, role=AgentRole(row.role))


def to_agent_session(row: AgentSessionRow, agent: AgentRow) -> AgentSession:
    """A console session's row and its account's row as the core's record."""
    return _from_columns(AgentSession, row, agent=to_agent(agent))


@cache
def _field_names(record: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(field.name for field in fields(record))


def _from_columns(record: type[R], row: object, **converted: Any) -> R:
    """A `record` whose fields are the row's columns of the same names, but for `converted`
    (the fields that need more than a copy: enums, fresh dicts, nested records)."""
    copied = {name: getattr(row, name) for name in _field_names(record) if name not in converted}
    return record(**copied, **converted)


# -- the hand-off state ----------------------------------------------------------------------


class HandoffRows(NamedTuple):
    """A conversation row, its unresolved escalation row (None when it has none) and the
    hand-off state they hold."""

    conversation: ConversationRow
    escalation: EscalationRow | None
    state: Handoff


def read_handoff(conversation: ConversationRow, escalation: EscalationRow | None) -> Handoff:
    """The hand-off state of a conversation row and its unresolved escalation row."""
    return Handoff(
        ConversationStatus(conversation.status),
        None if escalation is None else EscalationStatus(escalation.status),
        conversation.assignee,
    )


def lock_conversation(session: Session, conversation_id: str) -> ConversationRow:
    """The conversation row, locked until the transaction ends (PostgreSQL).

    Every state change of a conversation locks its row first, so concurrent changes from
    several replicas queue up instead of interleaving. SQLite's write lock does the same.
    Async code runs it with `await session.run_sync(lock_conversation, conversation_id)`.

    Raises:
        NotFoundError: no conversation has this id.
    """
    row = session.get(ConversationRow, conversation_id, with_for_update=True)
    if row is None:
        raise no_conversation(conversation_id)
    return row


def load_handoff(session: Session, conversation_id: str, *, lock: bool = True) -> HandoffRows:
    """The conversation row (locked, see `lock_conversation`; not when `lock` is False, for
    a read-only check), its unresolved escalation row and the state they hold.

    Raises:
        NotFoundError: no conversation has this id.
    """
    if lock:
        conversation = lock_conversation(session, conversation_id)
    else:
        found = session.get(ConversationRow, conversation_id)
        if found is None:
            raise no_conversation(conversation_id)
        conversation = found
    escalation = session.scalar(select_unresolved(conversation_id))
    return HandoffRows(conversation, escalation, read_handoff(conversation, escalation))


def apply_handoff(
    conversation: ConversationRow,
    escalation: EscalationRow | None,
    state: Handoff,
    now: datetime,
    *,
    by: str | None = None,
    outcome: Outcome | None = None,
) -> EscalationRow:
    """Write a hand-off state that `bot/core/handoff.py` returned to the rows it is about.

    The conversation takes the state's status and assignee (and `updated_at`). The escalation
    takes its status and assignee, with `claimed_at` set when claimed and cleared when back
    in the queue; a state without an escalation resolves it (`resolved_at`, `resolved_by`,
    `outcome`; its assignee stays, as history) and the conversation's failed turns start
    again from 0. Writing the state the rows already hold changes nothing (an agent claiming
    their own claim again).

    Args:
        conversation: the conversation row, locked (see `load_handoff`).
        escalation: its unresolved escalation row, or a new one being opened (no status yet).
        state: the conversation's new state.
        now: when it changes (the store's clock).
        by: who closes the escalation (stored as `resolved_by`).
        outcome: how it was closed; needed when `state` closes it.

    Returns:
        The escalation row, changed.

    Raises:
        ValueError: no escalation row, or a closing state without `outcome`: a bug in the
            caller, since the functions of `bot/core/handoff.py` refuse such changes.
    """
    if escalation is None:
        raise ValueError(f"hand-off state {state} needs the escalation row it changes")
    # A new row has no status yet, so it never holds `state` already.
    if escalation.status is not None and read_handoff(conversation, escalation) == state:
        return escalation
    conversation.status = state.conversation.value
    conversation.assignee = state.assignee
    conversation.updated_at = now
    if state.escalation is None:
        if outcome is None:
            raise ValueError("closing an escalation needs its outcome (resolved, handed_back)")
        escalation.status = EscalationStatus.RESOLVED.value
        escalation.resolved_at = now
        escalation.resolved_by = by
        escalation.outcome = outcome.value
        conversation.failed_turns = 0
        return escalation
    escalation.status = state.escalation.value
    escalation.assignee = state.assignee
    escalation.claimed_at = now if state.escalation == EscalationStatus.CLAIMED else None
    return escalation


# -- shared selects and errors ---------------------------------------------------------------


def select_unresolved(conversation_id: str) -> Select[EscalationRow]:
    """The conversation's unresolved escalation (at most one: a unique index says so)."""
    return select(EscalationRow).where(
        EscalationRow.conversation_id == conversation_id,
        EscalationRow.status.in_(UNRESOLVED_VALUES),
    )


def no_conversation(conversation_id: str) -> NotFoundError:
    """The error for an unknown conversation id."""
    return NotFoundError(
        f"conversation {conversation_id!r} does not exist; use an id returned by "
        "conversation() or listed by open_escalations()"
    )


def no_message(message_id: int) -> NotFoundError:
    """The error for an unknown message id."""
    return NotFoundError(
        f"message {message_id} does not exist; refer to an id returned when the message was "
        "stored (e.g. Reply.message_id)"
    )
