"""A scripted `Understander` (the port of `bot/core/ports.py`): what the models "make" of each
text is whatever the test said, so the core's decisions can be tested without a model."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from bot.core.records import Scored, Understanding


def understanding(
    intent: str | None = None,
    confidence: float = 0.9,
    negativity: float = 0.0,
    *,
    top: str | None = None,
    embedding: object = None,
    out_of_scope: bool = False,
    oos_score: float | None = None,
) -> Understanding:
    """A consistent `Understanding`: sentiment scores whose P(negative) - P(positive) is
    `negativity`, and `top` (default: `intent`) as the best guess with `confidence`.

    `intent=None, top="x"` is the model abstaining while still guessing "x";
    `intent=None, top="x", out_of_scope=True` its detector declining the message.
    """
    if not -1.0 <= negativity <= 1.0:
        raise ValueError(f"negativity is P(negative) - P(positive), in [-1, 1]; got {negativity}")
    rest = (1.0 - abs(negativity)) / 3
    negative, positive = rest + max(negativity, 0.0), rest + max(-negativity, 0.0)
    scores = {"negative": negative, "neutral": rest, "positive": positive}
    best = top or intent
    return Understanding(
        intent=intent,
        intent_confidence=confidence,
        top_intents=(Scored(best, confidence),) if best else (),
        sentiment=max(scores, key=lambda label: scores[label]),
        negativity=negativity,
        sentiment_scores=tuple(Scored(label, score) for label, score in scores.items()),
        model_versions={"intent": "test-intent", "sentiment": "test-sentiment"},
        query_embedding=embedding,
        out_of_scope=out_of_scope,
        oos_score=oos_score,
    )


class ScriptedUnderstander:
    """Answers each text with the `Understanding` it was taught, `default` for any other.

    Args:
        script: text -> what to return, or an exception to raise (the per-message error
            boundary's test case).
        default: for texts not in the script (an abstaining, neutral understanding if None).
    """

    def __init__(
        self,
        script: Mapping[str, Understanding | Exception] | None = None,
        default: Understanding | None = None,
    ) -> None:
        self.script: dict[str, Understanding | Exception] = dict(script or {})
        self.default = default or understanding(None, confidence=0.2)
        self.texts: list[str] = []  # every text asked about, in order
        self.loaded = True
        self._gates: dict[str, asyncio.Event] = {}

    def teach(self, text: str, result: Understanding | Exception) -> None:
        """From now on, `text` is understood as `result` (raised, if it is an exception)."""
        self.script[text] = result

    def pause(self, text: str) -> asyncio.Event:
        """Make `understand(text)` wait until the returned event is set (a slow model)."""
        return self._gates.setdefault(text, asyncio.Event())

    async def understand(self, text: str) -> Understanding:
        self.texts.append(text)
        gate = self._gates.get(text)
        if gate is not None:
            await gate.wait()
        else:
            await asyncio.sleep(0)  # a model call is awaited: other coroutines run meanwhile
        result = self.script.get(text, self.default)
        if isinstance(result, Exception):
            raise result
        return result

    def ready(self) -> bool:
        return self.loaded
