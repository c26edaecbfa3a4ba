from __future__ import annotations

from bot.core.escalation import (
    ASKED_FOR_HUMAN,
    NEGATIVE_MESSAGE,
    NEGATIVE_TREND,
    REPEATED_FALLBACK,
    UPSET_FALLBACK,
    EscalationPolicy,
    EscalationSettings,
)
from bot.core.records import Scored, Understanding


def understanding(
    negativity: float, intent: str = "order_status", confidence: float = 0.9
) -> Understanding:
    return Understanding(
        intent=intent,
        intent_confidence=confidence,
        top_intents=(Scored(intent, confidence),),
        sentiment="negative" if negativity > 0.3 else "neutral",
        negativity=negativity,
        sentiment_scores=(),
        model_versions={},
    )


# Explicit thresholds: these tests are about the rules, not about the tuned defaults.
POLICY = EscalationPolicy(EscalationSettings(negative_message=0.8, negative_trend=0.4))


def test_calm_conversation_is_not_escalated() -> None:
    assert POLICY.assess(understanding(0.1), [0.0, 0.2]) is None


def test_strongly_negative_message_escalates_with_its_score() -> None:
    escalation = POLICY.assess(understanding(0.93), [])
    assert escalation is not None and escalation.reason == NEGATIVE_MESSAGE
    assert escalation.scores["negativity"] == 0.93
    assert "0.93" in escalation.explanation


def test_negative_trend_needs_a_full_window() -> None:
    assert POLICY.assess(understanding(0.6), [0.5]) is None  # two messages, window is three
    escalation = POLICY.assess(understanding(0.6), [0.1, 0.5, 0.5])
    assert escalation is not None and escalation.reason == NEGATIVE_TREND
    assert abs(escalation.scores["trend_mean"] - (0.5 + 0.5 + 0.6) / 3) < 1e-3
    assert POLICY.assess(understanding(0.1), [0.5, 0.5]) is None  # mean 0.37 < 0.4


def test_asking_for_a_person_escalates_even_when_calm() -> None:
    escalation = POLICY.assess(understanding(-0.2, "talk_to_human", 0.8), [])
    assert escalation is not None and escalation.reason == ASKED_FOR_HUMAN
    # below the hand-off confidence it is not taken as a request
    assert POLICY.assess(understanding(-0.2, "talk_to_human", 0.3), []) is None


def test_angrier_customers_get_higher_priority() -> None:
    mild = POLICY.assess(understanding(0.81), [])
    furious = POLICY.assess(understanding(0.99), [])
    assert mild is not None and furious is not None and furious.priority > mild.priority


def test_repeated_fallbacks_escalate_at_the_configured_count() -> None:
    policy = EscalationPolicy(EscalationSettings(max_failed_turns=3))
    assert policy.after_fallbacks(2, understanding(0.0)) is None
    escalation = policy.after_fallbacks(3, understanding(0.0))
    assert escalation is not None and escalation.reason == REPEATED_FALLBACK
    assert escalation.scores["failed_turns"] == 3


def test_an_upset_customer_the_bot_cannot_help_is_handed_off_at_the_first_fallback() -> None:
    policy = EscalationPolicy(EscalationSettings(max_failed_turns=2, upset_fallback=0.7))
    assert policy.after_fallbacks(1, understanding(0.69)) is None  # asked to rephrase
    escalation = policy.after_fallbacks(1, understanding(0.83))
    assert escalation is not None and escalation.reason == UPSET_FALLBACK
    assert escalation.scores == {"failed_turns": 1.0, "negativity": 0.83}
    assert escalation.priority == 1.83 and "0.83" in escalation.explanation
    # At the configured count, it is a repeated fallback whatever the mood.
    repeated = policy.after_fallbacks(2, understanding(0.9))
    assert repeated is not None and repeated.reason == REPEATED_FALLBACK
