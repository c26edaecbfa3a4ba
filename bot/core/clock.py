"""Time, injected: every component that reads the wall clock takes a `Clock`.

Tests pass a clock they control (`tests/fakes/clock.py`) instead of patching a module's
`utcnow`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware, in UTC."""


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC (the default `Clock`)."""
    return datetime.now(UTC)
