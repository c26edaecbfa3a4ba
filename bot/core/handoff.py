"""The hand-off state machine: every change of who is in charge of a conversation.

A conversation is `bot` (the bot answers), `waiting` (escalated, in the agents' queue) or
`claimed` (an agent has it); its unresolved escalation, if any, is `open` or `claimed`.

```
 bot ──escalate──> waiting/open ──claim──> claimed/claimed ──close──> bot (escalation resolved)
                        ^                        │
                        └────────release─────────┘      close also from waiting/open
```

The stores (SQL, and the in-memory fakes of the tests) read the current `Handoff` inside
their transaction, ask this module for the next one and write it back; so the rules (who may
claim, release or close what) live here once, and the error messages with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.errors import BadRequestError, ConflictError, NotFoundError
from bot.core.records import ConversationStatus, EscalationStatus, Outcome

UNRESOLVED = (EscalationStatus.OPEN, EscalationStatus.CLAIMED)


@dataclass(frozen=True, slots=True)
class Handoff:
    """Who is in charge of one conversation.

    Attributes:
        conversation: the conversation's status.
        escalation: the status of its unresolved escalation (None when it has none; a
            resolved escalation is history, not state).
        assignee: the agent who claimed it, if any.
    """

    conversation: ConversationStatus
    escalation: EscalationStatus | None = None
    assignee: str | None = None


BOT = Handoff(ConversationStatus.BOT)


def escalate(current: Handoff) -> Handoff:
    """Open an escalation: the conversation waits in the queue, the bot stays silent.

    An already escalated conversation keeps its escalation (the caller does not open a
    second one; see `needs_escalation`).
    """
    if not needs_escalation(current):
        return current
    return Handoff(ConversationStatus.WAITING, EscalationStatus.OPEN, None)


def needs_escalation(current: Handoff) -> bool:
    """Whether escalating opens a new escalation (False while one is unresolved)."""
    return current.escalation not in UNRESOLVED


def raises_priority(current_priority: float, offered: float) -> bool:
    """Whether a later message's urgency changes an unresolved escalation's priority.

    Priority only goes up while the customer waits: a calmer message does not send an angry
    customer back down the queue, a furious one moves a patient customer up.
    """
    return offered > current_priority


RAISED = " Raised while waiting: "


def raised_explanation(current: str, later: str) -> str:
    """The explanation of an escalation whose priority a later message raised: why it was
    opened, then why it was raised last (earlier raises are dropped, so it stays short)."""
    return f"{current.split(RAISED)[0]}{RAISED}{later}"


def claim(current: Handoff, conversation_id: str, agent: str) -> Handoff:
    """An agent takes the unresolved escalation; claiming one's own claim again is a no-op.

    Raises:
        BadRequestError: `agent` is empty.
        NotFoundError: there is no unresolved escalation.
        ConflictError: another agent has claimed it.
    """
    if not agent:
        raise BadRequestError("claiming an escalation needs the agent's name; got an empty one")
    _unresolved(current, conversation_id, "claim")
    if current.escalation == EscalationStatus.CLAIMED and current.assignee != agent:
        raise ConflictError(
            f"conversation {conversation_id} is already claimed by {current.assignee!r}; "
            f"{agent!r} cannot claim it until it is resolved"
        )
    return Handoff(ConversationStatus.CLAIMED, EscalationStatus.CLAIMED, agent)


def release(current: Handoff, conversation_id: str, agent: str, operator: bool) -> Handoff:
    """Put a claimed escalation back in the queue (its assignee, or an operator).

    Raises:
        NotFoundError: there is no unresolved escalation.
        ConflictError: nobody claimed it, or another agent did and `operator` is False.
    """
    _unresolved(current, conversation_id, "release")
    if current.escalation != EscalationStatus.CLAIMED:
        raise ConflictError(
            f"conversation {conversation_id} is not claimed, so there is nothing to release; "
            "it is in the queue already"
        )
    if current.assignee != agent and not operator:
        raise ConflictError(
            f"conversation {conversation_id} is claimed by {current.assignee}; only they or "
            "an operator can release it"
        )
    return Handoff(ConversationStatus.WAITING, EscalationStatus.OPEN, None)


def close(
    current: Handoff, conversation_id: str, agent: str, operator: bool, outcome: str
) -> tuple[Handoff, Outcome]:
    """Close the unresolved escalation and give the conversation back to the bot.

    Args:
        operator: whether `agent` may close a conversation they have not claimed.
        outcome: `resolved` or `handed_back`.

    Raises:
        BadRequestError: `outcome` is not an `Outcome`.
        NotFoundError: there is no unresolved escalation.
        ConflictError: `agent` has not claimed it and is not an operator.
    """
    try:
        closed_as = Outcome(outcome)
    except ValueError as exc:
        raise BadRequestError(
            f"outcome must be one of {[o.value for o in Outcome]}; got {outcome!r}"
        ) from exc
    _unresolved(current, conversation_id, "close")
    if not operator:
        check_claimed_by(current, conversation_id, agent)
    return BOT, closed_as


def transfer(
    current: Handoff, conversation_id: str, agent: str, operator: bool, to: str
) -> Handoff:
    """Give the unresolved escalation to colleague `to` (assign it, or transfer a claim): it
    is then claimed by `to`. Anyone may assign one still in the queue; a claimed one only its
    assignee or an operator. Giving it to who has it already is a no-op.

    Raises:
        BadRequestError: `to` is empty.
        NotFoundError: there is no unresolved escalation.
        ConflictError: another agent has claimed it and `operator` is False.
    """
    if not to:
        raise BadRequestError("a transfer needs the colleague's name; got an empty one")
    _unresolved(current, conversation_id, "transfer")
    held = current.escalation == EscalationStatus.CLAIMED
    if held and current.assignee == to:
        return current
    if held and current.assignee != agent and not operator:
        raise ConflictError(
            f"conversation {conversation_id} is claimed by {current.assignee}; only they "
            "or an operator can transfer it"
        )
    return Handoff(ConversationStatus.CLAIMED, EscalationStatus.CLAIMED, to)


def check_claimed_by(current: Handoff, conversation_id: str, agent: str) -> None:
    """Agent-only actions (a reply, closing) need the caller's claim.

    Raises:
        ConflictError: says by whom it is claimed, or "claim it first".
    """
    if current.escalation != EscalationStatus.CLAIMED or current.assignee is None:
        raise ConflictError(f"claim it first: conversation {conversation_id} is not claimed")
    if current.assignee != agent:
        raise ConflictError(
            f"claimed by {current.assignee}: conversation {conversation_id} is theirs"
        )


def can_time_out(escalation: EscalationStatus) -> bool:
    """Only an escalation still waiting in the queue tells its customer nobody came."""
    return escalation == EscalationStatus.OPEN


def _unresolved(current: Handoff, conversation_id: str, action: str) -> None:
    # Not `is None`: a resolved escalation is history, so it is nothing to act on either.
    if current.escalation not in UNRESOLVED:
        raise NotFoundError(
            f"conversation {conversation_id} has no open escalation to {action}; it was "
            "resolved already or never escalated"
        )
