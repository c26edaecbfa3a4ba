"""The console's pure rules: a closed hand-off starts the negative trend afresh, and the intents
agents may pick. (The use cases end to end: tests/connectors/test_console.py.)"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bot.core.desk import known_intents
from bot.core.records import Role, Route, StoredMessage
from bot.core.service import earlier_negativity

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def message(role: Role, negativity: float | None = None, **extra: Any) -> StoredMessage:
    return StoredMessage(0, "c", role, "...", NOW, negativity=negativity, **extra)


def test_negativity_before_a_closed_hand_off_no_longer_counts() -> None:
    angry = message(Role.CUSTOMER, 0.9)
    for outcome in ("resolved", "handed_back"):
        notice = message(Role.SYSTEM, details={"event": outcome})
        recent = [angry, angry, notice, message(Role.CUSTOMER, 0.2), message(Role.CUSTOMER, 0.5)]
        assert earlier_negativity(recent) == [0.2]
    # Other system messages (an error apology, the unclaimed notice) do not reset the trend.
    for event in ({}, {"event": "unclaimed"}):
        recent = [angry, message(Role.SYSTEM, details=event), message(Role.CUSTOMER, 0.5)]
        assert earlier_negativity(recent) == [0.9]
    handoff = message(Role.BOT, route=Route.HANDOFF)
    assert earlier_negativity([angry, handoff, message(Role.CUSTOMER, 0.4)]) == []


def test_known_intents_merge_the_models_and_the_agents() -> None:
    # out_of_scope is always offered, so an agent can mark a message no intent covers.
    assert known_intents(("refund_status", "greeting"), ["new_one", "greeting"]) == [
        "greeting",
        "new_one",
        "out_of_scope",
        "refund_status",
    ]
    assert known_intents((), ["out_of_scope"]) == ["out_of_scope"]
