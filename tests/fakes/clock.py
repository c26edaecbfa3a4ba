"""A clock the test moves by hand (the `Clock` port of `bot/core/clock.py`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class ManualClock:
    """Stands still until `advance` moves it; call it like `utcnow()`.

    Args:
        start: the first time it shows (default: a fixed, timezone-aware UTC instant).
    """

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 30, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        """Move forward by `timedelta(**delta)` (e.g. `advance(minutes=5)`); returns the new
        time."""
        self.now += timedelta(**delta)
        return self.now
