"""What a `ConversationStore` accepts: each input rule once, with its message.

The SQL store (`bot/store/conversations.py`) and the in-memory fake (`tests/fakes/store.py`)
both call these before they touch a row, so the two cannot drift apart; the contract test
(`tests/bot/store/test_contract.py`) runs the same cases on both. The agents' desk has its
rules next to its records, in `bot/core/desk.py`.
"""

from __future__ import annotations

import math

from bot.core.errors import BadRequestError
from bot.core.records import Feedback, Role

# What `Feedback.rating` may hold (besides None).
RATINGS = ("up", "down")


def check_conversation_key(channel: str, sender: str) -> None:
    """Raise BadRequestError unless both halves of a conversation's key are given."""
    if not channel or not sender:
        raise BadRequestError(
            f"a conversation needs a channel and a sender id; got channel={channel!r}, "
            f"sender={sender!r}"
        )


def check_role(role: str) -> Role:
    """`role` as a `Role` (BadRequestError when it is none)."""
    try:
        return Role(role)
    except ValueError as exc:
        raise BadRequestError(
            f"message role must be one of {[r.value for r in Role]}; got {role!r}"
        ) from exc


def check_failed_turns(failed_turns: int | None) -> None:
    """Raise BadRequestError for a negative count of failed turns (None: unchanged)."""
    if failed_turns is not None and failed_turns < 0:
        raise BadRequestError(
            f"failed_turns counts turns and cannot be negative; got {failed_turns}"
        )


def check_priority(priority: float) -> float:
    """An escalation's priority as a float (BadRequestError unless it is finite)."""
    value = float(priority)
    if not math.isfinite(value):
        raise BadRequestError(f"escalation priority must be a finite number; got {value}")
    return value


def check_transcript_limit(limit: int | None) -> None:
    """Raise BadRequestError for a negative transcript limit (None: the whole transcript)."""
    if limit is not None and limit < 0:
        raise BadRequestError(f"transcript limit must be 0 or more messages; got {limit}")


def check_feedback(feedback: Feedback) -> None:
    """Raise BadRequestError for a rating other than "up", "down" or None, or for feedback
    that carries neither a rating, a comment nor a correction."""
    if feedback.rating is not None and feedback.rating not in RATINGS:
        raise BadRequestError(
            f'feedback rating must be "up", "down" or None; got {feedback.rating!r}'
        )
    carried = (
        feedback.rating,
        feedback.comment,
        feedback.corrected_intent,
        feedback.corrected_sentiment,
    )
    if all(value is None for value in carried):
        raise BadRequestError(
            f"feedback on message {feedback.message_id} carries nothing; give a rating, "
            "a comment or a corrected intent/sentiment"
        )


def not_in_conversation(
    message_id: int, owner: str, conversation_id: str, fix: str = ""
) -> BadRequestError:
    """The error for message `message_id`, of conversation `owner`, named as part of
    `conversation_id`; `fix` (if any) is appended after a semicolon."""
    return BadRequestError(
        f"message {message_id} belongs to conversation {owner}, not {conversation_id}"
        + (f"; {fix}" if fix else "")
    )


def check_reply_to(reply_to: int, parent_conversation: str, conversation_id: str) -> None:
    """Raise BadRequestError unless the message replied to is in the same conversation."""
    if parent_conversation != conversation_id:
        raise not_in_conversation(
            reply_to,
            parent_conversation,
            conversation_id,
            "a reply must stay in the conversation it answers",
        )
