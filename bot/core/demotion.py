"""Answers agents and customers have rated down, kept out of what the bot serves.

A thumbs-down (or an agent's "Bad" in the console) on an answer the bot served demotes that
answer for that kind of question until someone rates it up again. The state is derived from
the feedback the store already keeps (`ConversationStore.answer_ratings`), not held in
process memory, so it survives restarts, holds for every replica at once, and outlives a
retrain or index rebuild (the answer is named by its source `file:line` and its text, which a
rebuild from the same data keeps).

"That kind of question" is the intent of the question the answer was rated on: an answer rated
down for "where is my refund" (intent `refund_status`) is still served for another intent it
fits. When either side's intent is unknown (the classifier abstained), the demotion applies,
since nothing says the questions differ. Comparing question embeddings instead would need the
vectors stored with every rating and a numeric library in the core; the intent is already on
the rated question's row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from bot.core.datafiles import normalize
from bot.core.records import Answer, AnswerRating

# A full re-read of the ratings at most this often (seconds): between two, only ratings with a
# higher feedback id than the last one seen are read. The full read also catches a rating
# whose transaction committed after a later id had been read (possible on PostgreSQL) and
# forgets ratings an erasure or a retention purge deleted.
FULL_READ_S = 60.0
# Between two reads at least this long (seconds), unless a rating was recorded in this process
# since (`RatedAnswers.touch`): under load every answered message would otherwise cost a query
# (measured: a quarter of the event loop's time at 100 concurrent conversations). A rating
# given on this replica holds from the next message; one given on another, within POLL_S.
POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class Demotion:
    """An answer (by index source, or by its text, normalized) not to serve for `intent`
    (None: for any question)."""

    source: str | None
    text: str | None
    intent: str | None

    def applies_to(self, intent: str | None) -> bool:
        """Whether the demotion holds for a question of `intent` (None: unknown)."""
        return self.intent is None or intent is None or self.intent == intent

    def matches(self, answer: Answer) -> bool:
        """Whether `answer` is the demoted answer (same source, or same text)."""
        return answer.source == self.source or normalize(answer.text) == self.text


def demotions(ratings: Iterable[AnswerRating]) -> tuple[Demotion, ...]:
    """The answers whose latest rating for an intent is "down", from ratings oldest first.

    An answer is tracked both by its source and by its text: the same text indexed under
    another question (another source) is the same reply to the customer, and a template
    answer (`{order_id}`) has a different text in each conversation but one source. A later
    "up" on the same source (or text) for the same intent lifts the demotion.
    """
    state = RatedAnswers()
    state.apply(ratings)
    return state.current


class RatedAnswers:
    """The demotions as the store's ratings say, kept up to date by reading only the ratings
    added since the last read (a full read every `full_read_s`), so that choosing an answer
    does not read every rating ever given, and reading at most every `poll_s` unless told a
    rating was recorded (`touch`), so that it does not cost a query per message either.
    Concurrent reads share one query.

    Args:
        full_read_s: seconds between full reads (see FULL_READ_S).
        poll_s: least seconds between two reads when nothing was touched (see POLL_S).
        now: a monotonic clock (injected in tests).
    """

    def __init__(
        self,
        full_read_s: float = FULL_READ_S,
        poll_s: float = POLL_S,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._full_read_s = full_read_s
        self._poll_s = poll_s
        self._now = now
        self._read_at: float | None = None
        self._polled_at: float | None = None
        self._stale = True
        self._lock = asyncio.Lock()
        self._reset()

    def touch(self) -> None:
        """A rating was just recorded: the next `read` queries the store."""
        self._stale = True

    def _due(self) -> bool:
        return (
            self._stale or self._polled_at is None or self._now() - self._polled_at >= self._poll_s
        )

    def _reset(self) -> None:
        self._by_source: dict[tuple[str, str | None], str] = {}
        self._by_text: dict[tuple[str, str | None], str] = {}
        self._last = 0
        self._current: tuple[Demotion, ...] = ()

    @property
    def current(self) -> tuple[Demotion, ...]:
        """The demotions after the ratings applied so far."""
        return self._current

    async def read(
        self, ratings: Callable[[int], Awaitable[Sequence[AnswerRating]]]
    ) -> tuple[Demotion, ...]:
        """The demotions, after applying what `ratings(after)` (the store's
        `answer_ratings`) returns beyond the last feedback id seen, or all of it when the
        last full read is older than `full_read_s`; the last ones known, without a query,
        when the last read is younger than `poll_s` and nothing was touched since."""
        if not self._due():
            return self._current
        async with self._lock:
            if not self._due():  # a concurrent read has just done it
                return self._current
            now = self._now()
            # Cleared before the query: a rating recorded while it runs touches it again.
            self._stale = False
            try:
                if self._read_at is None or now - self._read_at >= self._full_read_s:
                    fresh = await ratings(0)
                    self._reset()
                    self._read_at = now
                else:
                    fresh = await ratings(self._last)
            except BaseException:
                self._stale = True
                raise
            self._polled_at = now
            self.apply(fresh)
        return self._current

    def apply(self, ratings: Iterable[AnswerRating]) -> None:
        """Take ratings in (oldest first); those at or below the last feedback id seen are
        skipped, so two concurrent reads that return the same rows count them once."""
        changed = False
        for rating in ratings:
            if rating.feedback_id and rating.feedback_id <= self._last:
                continue
            self._by_source[(rating.source, rating.intent)] = rating.rating
            self._by_text[(normalize(rating.text), rating.intent)] = rating.rating
            self._last = max(self._last, rating.feedback_id)
            changed = True
        if changed:
            found = [Demotion(s, None, i) for (s, i), r in self._by_source.items() if r == "down"]
            found += [Demotion(None, t, i) for (t, i), r in self._by_text.items() if r == "down"]
            self._current = tuple(found)


def without_demoted(
    answers: Sequence[Answer], demoted: Iterable[Demotion], intent: str | None
) -> tuple[list[Answer], list[Answer]]:
    """(`answers` a question of `intent` may get, the demoted ones), each in order."""
    holding = [d for d in demoted if d.applies_to(intent)]
    kept: list[Answer] = []
    skipped: list[Answer] = []
    for answer in answers:
        (skipped if any(d.matches(answer) for d in holding) else kept).append(answer)
    return kept, skipped
