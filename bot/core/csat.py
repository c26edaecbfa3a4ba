"""Customer satisfaction (CSAT): after an agent resolves a conversation, the customer is asked
on their own channel to rate the help from 1 to 5 (quick replies, which the widget and
Telegram show as buttons); a rating sent right after the question is stored on the customer's
message and thanked, instead of going to the bot, and the operators' dashboard sums the
ratings up (mean, count, distribution).

Pure rules plus one store call; `AgentDesk` asks (`request_details`), `ConversationService`
hands each customer message to `take_rating` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.core.ports import ConversationStore
from bot.core.records import (
    Conversation,
    EscalationRecord,
    Role,
    StoredMessage,
    Turn,
    Understanding,
)
from bot.core.router import DEFAULT_MESSAGES

#: `details["event"]` of the system message that asks for a rating.
REQUEST_EVENT = "csat_request"
#: The route stored on a customer message that was a rating (and on the thanks).
ROUTE = "csat"
SCORES = ("1", "2", "3", "4", "5")
QUESTION = DEFAULT_MESSAGES["csat_question"][0]  # the routing file may override
THANKS = DEFAULT_MESSAGES["csat_thanks"][0]
# "4", " 4 ", "4/5", "4 stars", "⭐⭐⭐⭐": what a customer writes instead of tapping.
_NUMBER = re.compile(r"([1-5])\s*(?:/\s*5|out of 5|stars?)?\.?!?", re.IGNORECASE)
_STARS = re.compile(r"(?:⭐|★)\ufe0f?")


@dataclass(frozen=True, slots=True)
class CsatFigures:
    """The ratings of a period: how many of each score (index 0 holds the 1s)."""

    counts: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def mean(self) -> float | None:
        if not self.count:
            return None
        return sum(score * n for score, n in enumerate(self.counts, start=1)) / self.count

    @classmethod
    def of(cls, ratings: Iterable[Any]) -> CsatFigures:
        """Figures of stored ratings (anything that is not a score 1-5 is left out)."""
        counts = [0] * 5
        for rating in ratings:
            if isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5:
                counts[rating - 1] += 1
        return cls((counts[0], counts[1], counts[2], counts[3], counts[4]))


def request_details(escalation: EscalationRecord, agent: str) -> dict[str, Any]:
    """What the question's system message carries: the score buttons and whose help it was."""
    return {
        "event": REQUEST_EVENT,
        "quick_replies": list(SCORES),
        "escalation_id": escalation.id,
        "agent": agent,
    }


def parse_rating(text: str) -> int | None:
    """The score 1-5 a customer's answer gives, or None when it is something else."""
    text = text.strip()
    match = _NUMBER.fullmatch(text)
    if match:
        return int(match.group(1))
    stars = _STARS.findall(text)
    if stars and not _STARS.sub("", text).strip() and len(stars) <= 5:
        return len(stars)
    return None


def pending_request(recent: Sequence[StoredMessage], message_id: int) -> StoredMessage | None:
    """The rating question a customer message answers: the message just before it, when that
    is the question (anything in between, even another customer message, ends the wait)."""
    earlier = [m for m in recent if m.id < message_id]
    if not earlier:
        return None
    last = earlier[-1]
    if last.role == Role.SYSTEM and last.details.get("event") == REQUEST_EVENT:
        return last
    return None


async def take_rating(
    store: ConversationStore,
    conversation: Conversation,
    stored: StoredMessage,
    understanding: Understanding,
    recent: Sequence[StoredMessage],
    latency_ms: float,
    thanks: str = THANKS,
) -> StoredMessage | None:
    """Store `stored` as the answer to a pending rating question and thank the customer.

    Returns:
        The thanks (a bot message with route `csat`), or None when `stored` is no rating
        (nothing was asked just before, or it is not a score): the bot handles it as usual.
    """
    request = pending_request(recent, stored.id)
    rating = None if request is None else parse_rating(stored.text)
    if request is None or rating is None:
        return None
    turn = Turn(
        message_id=stored.id,
        understanding=understanding,
        route=ROUTE,
        latency_ms=latency_ms,
        details={
            "csat": rating,
            "csat_request_id": request.id,
            "escalation_id": request.details.get("escalation_id"),
            "agent": request.details.get("agent"),
        },
        reply_text=thanks.replace("{rating}", str(rating)),
        reply_details={"event": "csat_thanks"},
    )
    return await store.record_turn(conversation.id, turn)
