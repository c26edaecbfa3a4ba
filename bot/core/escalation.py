"""The escalation policy: when a conversation goes to a person, and why."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from bot.core.records import Escalation, Understanding

NEGATIVE_MESSAGE = "negative_message"
NEGATIVE_TREND = "negative_trend"
ASKED_FOR_HUMAN = "asked_for_human"
REPEATED_FALLBACK = "repeated_fallback"
UPSET_FALLBACK = "upset_fallback"
LATER_MESSAGE = "later_message"


class EscalationSettings(BaseModel):
    """When the bot hands a conversation to a person."""

    negative_message: float = Field(
        0.95, description="escalate a message whose negativity (P(neg) - P(pos)) reaches this"
    )
    trend_window: int = Field(3, ge=2, description="customer messages in the trend window")
    negative_trend: float = Field(
        0.7, description="escalate when mean negativity over the window reaches this"
    )
    max_failed_turns: int = Field(2, ge=1, description="fallbacks in a row before a hand-off")
    upset_fallback: float = Field(
        0.7,
        description="hand off at the first turn the bot cannot help when the message's "
        "negativity reaches this: an upset customer is not asked to rephrase",
    )
    handoff_intents: list[str] = Field(
        ["talk_to_human"], description='intents that mean "I want a person"'
    )
    handoff_min_confidence: float = Field(
        0.5, ge=0, le=1, description="confidence a hand-off intent needs"
    )
    unclaimed_timeout_s: float = Field(
        300.0,
        gt=0,
        description="an escalation no agent claimed for this long: the customer is told once "
        "(routing message `unclaimed`)",
    )


class EscalationPolicy:
    """Decides from the current message, the conversation so far and the bot's failures.

    Signals, strongest first:
    - the customer asks for a person (a hand-off intent above a confidence);
    - one strongly negative message (negativity = P(negative) - P(positive) >= threshold);
    - a negative trend: mean negativity over the last `trend_window` customer messages;
    - the bot failed `max_failed_turns` times in a row (decided by the caller's fallback
      ladder through `after_fallbacks`).
    Priority grows with negativity, so the angriest customers are seen first.
    """

    def __init__(self, settings: EscalationSettings) -> None:
        self.settings = settings

    def assess(
        self, understanding: Understanding, earlier_negativity: Sequence[float]
    ) -> Escalation | None:
        """Escalate on this message? `earlier_negativity`: the conversation's previous
        customer messages, oldest first."""
        s = self.settings
        negativity = understanding.negativity
        scores = {"negativity": round(negativity, 4)}
        top = understanding.top_intents[0] if understanding.top_intents else None
        if top and top.label in s.handoff_intents and top.score >= s.handoff_min_confidence:
            scores[f"intent:{top.label}"] = round(top.score, 4)
            return Escalation(
                ASKED_FOR_HUMAN,
                priority=round(1.5 + max(0.0, negativity), 4),
                explanation=f"The customer asked for a person (intent {top.label}, "
                f"confidence {top.score:.2f}).",
                scores=scores,
            )
        if negativity >= s.negative_message:
            return Escalation(
                NEGATIVE_MESSAGE,
                priority=round(2.0 + negativity, 4),
                explanation=f"A strongly negative message (negativity {negativity:.2f} >= "
                f"{s.negative_message:.2f}).",
                scores=scores,
            )
        window = [*earlier_negativity[-(s.trend_window - 1) :], negativity]
        if len(window) >= s.trend_window:
            mean = sum(window) / len(window)
            scores["trend_mean"] = round(mean, 4)
            if mean >= s.negative_trend:
                return Escalation(
                    NEGATIVE_TREND,
                    priority=round(1.5 + mean, 4),
                    explanation=f"The conversation turned negative: mean negativity "
                    f"{mean:.2f} over the last {len(window)} messages (>= "
                    f"{s.negative_trend:.2f}).",
                    scores=scores,
                )
        return None

    def urgency(
        self, understanding: Understanding, earlier_negativity: Sequence[float]
    ) -> Escalation:
        """How urgent a message written while the conversation waits for an agent makes it.

        The same signals as `assess` (a furious message, a negative trend, asking for a
        person); a message that would not escalate on its own still counts with its
        negativity, like a repeated fallback. The store raises the queued escalation's
        priority to this when it is higher (`handoff.raises_priority`).
        """
        escalation = self.assess(understanding, earlier_negativity)
        if escalation is not None:
            return escalation
        negativity = understanding.negativity
        return Escalation(
            LATER_MESSAGE,
            priority=round(1.0 + max(0.0, negativity), 4),
            explanation=f"A message while waiting (negativity {negativity:.2f}).",
            scores={"negativity": round(negativity, 4)},
        )

    def after_fallbacks(self, failed_turns: int, understanding: Understanding) -> Escalation | None:
        """Escalate once the bot has failed `max_failed_turns` turns in a row, or at once when
        the message it cannot help with is upset (negativity >= `upset_fallback`): "could
        you rephrase?" to "third time I'm asking where my money is" makes things worse."""
        negativity = understanding.negativity
        scores = {"failed_turns": float(failed_turns)}
        if failed_turns >= self.settings.max_failed_turns:
            reason = REPEATED_FALLBACK
            explanation = f"The bot could not help {failed_turns} times in a row."
            scores["intent_confidence"] = round(understanding.intent_confidence, 4)
        elif negativity >= self.settings.upset_fallback:
            reason = UPSET_FALLBACK
            explanation = f"The bot could not help an upset customer (negativity {negativity:.2f})."
        else:
            return None
        scores["negativity"] = round(negativity, 4)
        return Escalation(
            reason,
            priority=round(1.0 + max(0.0, negativity), 4),
            explanation=explanation,
            scores=scores,
        )
