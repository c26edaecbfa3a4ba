"""The hand-off state machine (`bot/core/handoff.py`): every transition it allows, and every
one it refuses with the error type and a message that says why."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bot.core import handoff
from bot.core.errors import BadRequestError, ConflictError, NotFoundError
from bot.core.handoff import BOT, Handoff
from bot.core.records import ConversationStatus, EscalationStatus, Outcome

CID = "c1"
WAITING = Handoff(ConversationStatus.WAITING, EscalationStatus.OPEN, None)


def claimed(agent: str = "sam") -> Handoff:
    return Handoff(ConversationStatus.CLAIMED, EscalationStatus.CLAIMED, agent)


# -- allowed ---------------------------------------------------------------------------------


def test_escalating_a_bot_conversation_opens_an_escalation() -> None:
    assert handoff.needs_escalation(BOT)
    assert handoff.escalate(BOT) == WAITING


@pytest.mark.parametrize("current", [WAITING, claimed()], ids=["waiting", "claimed"])
def test_escalating_an_escalated_conversation_keeps_its_escalation(current: Handoff) -> None:
    assert not handoff.needs_escalation(current)
    assert handoff.escalate(current) == current


@pytest.mark.parametrize("current", [WAITING, claimed("sam")], ids=["open", "own claim"])
def test_an_agent_claims_an_open_escalation_or_their_own_again(current: Handoff) -> None:
    assert handoff.claim(current, CID, "sam") == claimed("sam")


@pytest.mark.parametrize(
    ("agent", "operator"),
    [("sam", False), ("kim", True), ("sam", True)],
    ids=["assignee", "operator", "assignee and operator"],
)
def test_the_assignee_or_an_operator_puts_a_claim_back_in_the_queue(
    agent: str, operator: bool
) -> None:
    assert handoff.release(claimed("sam"), CID, agent, operator) == WAITING


@pytest.mark.parametrize("outcome", list(Outcome))
@pytest.mark.parametrize(
    ("current", "agent", "operator"),
    [(claimed("sam"), "sam", False), (claimed("sam"), "kim", True), (WAITING, "kim", True)],
    ids=["assignee", "operator, a colleague's", "operator, unclaimed"],
)
def test_closing_gives_the_conversation_back_to_the_bot(
    current: Handoff, agent: str, operator: bool, outcome: Outcome
) -> None:
    assert handoff.close(current, CID, agent, operator, outcome.value) == (BOT, outcome)


def test_the_assignee_passes_the_claim_check() -> None:
    handoff.check_claimed_by(claimed("sam"), CID, "sam")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (EscalationStatus.OPEN, True),
        (EscalationStatus.CLAIMED, False),
        (EscalationStatus.RESOLVED, False),
    ],
)
def test_only_an_escalation_waiting_in_the_queue_times_out(
    status: EscalationStatus, expected: bool
) -> None:
    assert handoff.can_time_out(status) is expected


# -- refused ---------------------------------------------------------------------------------

NO_NAME = "claiming an escalation needs the agent's name; got an empty one"
NONE_OPEN = "conversation c1 has no open escalation to"  # claim, release, close
TAKEN = "conversation c1 is already claimed by 'kim'; 'sam' cannot claim it"
NOTHING = "conversation c1 is not claimed, so there is nothing to release; it is in the queue"
NOT_YOURS = "conversation c1 is claimed by kim; only they or an operator can release it"
OUTCOME = "outcome must be one of ['resolved', 'handed_back']; got 'done'"
CLAIM_FIRST = "claim it first: conversation c1 is not claimed"
THEIRS = "claimed by kim: conversation c1 is theirs"
KIMS = claimed("kim")
claim, release, close, check = (
    handoff.claim,
    handoff.release,
    handoff.close,
    handoff.check_claimed_by,
)
# (what, the change, the state it starts from, its arguments after the conversation id, the
# error, how its message starts)
REFUSED: list[tuple[str, Callable[..., object], Handoff, tuple[object, ...], type[Exception], str]]
REFUSED = [
    ("claim, no name", claim, WAITING, ("",), BadRequestError, NO_NAME),
    ("claim, not escalated", claim, BOT, ("sam",), NotFoundError, NONE_OPEN),
    ("claim, theirs", claim, KIMS, ("sam",), ConflictError, TAKEN),
    ("release, not escalated", release, BOT, ("sam", True), NotFoundError, NONE_OPEN),
    ("release, unclaimed", release, WAITING, ("sam", True), ConflictError, NOTHING),
    ("release, theirs", release, KIMS, ("sam", False), ConflictError, NOT_YOURS),
    ("close, bad outcome", close, KIMS, ("kim", True, "done"), BadRequestError, OUTCOME),
    ("close, outcome first", close, BOT, ("sam", True, "done"), BadRequestError, OUTCOME),
    ("close, not escalated", close, BOT, ("sam", True, "resolved"), NotFoundError, NONE_OPEN),
    ("close, unclaimed", close, WAITING, ("sam", False, "resolved"), ConflictError, CLAIM_FIRST),
    ("close, theirs", close, KIMS, ("sam", False, "resolved"), ConflictError, THEIRS),
    ("check, not escalated", check, BOT, ("sam",), ConflictError, CLAIM_FIRST),
    ("check, unclaimed", check, WAITING, ("sam",), ConflictError, CLAIM_FIRST),
    ("check, theirs", check, KIMS, ("sam",), ConflictError, THEIRS),
]


@pytest.mark.parametrize(
    ("change", "current", "arguments", "error", "message"),
    [row[1:] for row in REFUSED],
    ids=[row[0] for row in REFUSED],
)
def test_refused_changes_raise_what_and_say_why(
    change: Callable[..., object],
    current: Handoff,
    arguments: tuple[object, ...],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error) as raised:
        change(current, CID, *arguments)
    assert type(raised.value) is error  # not merely a subclass
    assert str(raised.value).startswith(message)
