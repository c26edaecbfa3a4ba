"""An in-memory `AnswerIndex` (the port of `bot/core/ports.py`): answers keyed by the exact
question or by intent, each with the similarity the test gives it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.core.entities import fill
from bot.core.errors import BadRequestError
from bot.core.records import Answer


@dataclass(frozen=True, slots=True)
class IndexedAnswer:
    """One entry: found for the text `question` (case and outer spaces aside), or, when
    `question` is None, for any text of `intent`; `score` is the similarity it is found with."""

    answer: str
    score: float
    question: str | None = None
    intent: str | None = None
    source: str = "faq"


class InMemoryAnswerIndex:
    """Finds the entries that fit a text, best first, like `EmbeddingAnswerIndex.search`:
    at most `k`, distinct answer texts, nothing for blank text, BadRequestError for k < 1.

    Every search is recorded in `searches` as (text, k, intent, embedding), its slots in
    `slots_seen`. Answers are templates as in the real index: one needing a slot that is not
    given (`{order_id}`) is left out, the others are filled in.
    """

    def __init__(self, entries: tuple[IndexedAnswer, ...] = ()) -> None:
        self.entries = list(entries)
        self.searches: list[tuple[str, int, str | None, Any]] = []
        self.slots_seen: list[dict[str, str]] = []

    def add(
        self,
        answer: str,
        score: float,
        *,
        question: str | None = None,
        intent: str | None = None,
        source: str = "faq",
    ) -> None:
        if question is None and intent is None:
            raise ValueError("an indexed answer needs the question or the intent it answers")
        self.entries.append(IndexedAnswer(answer, score, question, intent, source))

    async def search(
        self,
        text: str,
        k: int = 3,
        intent: str | None = None,
        embedding: Any = None,
        slots: Mapping[str, str] | None = None,
    ) -> list[Answer]:
        if k < 1:
            raise BadRequestError(f"k must be at least 1 (how many answers); got {k}")
        self.searches.append((text, k, intent, embedding))
        self.slots_seen.append(dict(slots or {}))
        key = _key(text)
        if not key:
            return []
        fitting = [
            e
            for e in self.entries
            if (e.question is not None and _key(e.question) == key)
            or (e.question is None and intent is not None and e.intent == intent)
        ]
        found: dict[str, Answer] = {}
        for e in sorted(fitting, key=lambda e: -e.score):
            filled = fill(e.answer, slots or {})
            if filled is not None:
                found.setdefault(e.answer, Answer(filled, e.score, e.source, e.question or text))
        return list(found.values())[:k]


def _key(text: str) -> str:
    return " ".join(text.lower().split())
