"""Business hours: open or closed, the next opening, and how it is said to a customer."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from pydantic import ValidationError

from bot.core.hours import BusinessHours, HandoffSettings, describe_opening
from tests.fakes.clock import ManualClock

# The sample shop: Mon-Sat 8:00-20:00 in Berlin, closed on Sundays and on Christmas Day.
SHOP = HandoffSettings(
    hours={d: "8:00-20:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat")},
    timezone="Europe/Berlin",
    holidays=[date(2026, 12, 25)],
).business_hours()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_no_hours_configured_means_always_open() -> None:
    always = HandoffSettings().business_hours()
    clock = ManualClock(utc(2026, 12, 6, 3, 0))  # a Sunday night
    assert always.is_open(clock())
    assert always.next_opening(clock()) == clock()


def test_open_within_a_span_in_the_business_time_zone() -> None:
    # 7:30 UTC is 8:30 in Berlin (CET, UTC+1) on Monday 7 December 2026.
    assert SHOP.is_open(utc(2026, 12, 7, 7, 30))
    # 6:59 UTC is 7:59 in Berlin: not yet.
    assert not SHOP.is_open(utc(2026, 12, 7, 6, 59))
    # 19:00 UTC is 20:00 in Berlin: the span has ended.
    assert not SHOP.is_open(utc(2026, 12, 7, 19, 0))


def test_closed_on_a_free_weekday_and_on_holidays() -> None:
    assert not SHOP.is_open(utc(2026, 12, 6, 12, 0))  # Sunday
    assert not SHOP.is_open(utc(2026, 12, 25, 12, 0))  # Friday, Christmas Day


def test_next_opening_after_closing_is_tomorrow_morning() -> None:
    clock = ManualClock(utc(2026, 12, 7, 20, 0))  # Monday 21:00 in Berlin
    opening = SHOP.next_opening(clock())
    assert opening is not None
    assert (opening.date(), opening.hour, opening.minute) == (date(2026, 12, 8), 8, 0)
    assert describe_opening(opening, clock()) == "tomorrow at 8:00 CET"


def test_next_opening_before_opening_is_today() -> None:
    now = utc(2026, 12, 8, 5, 0)  # Tuesday 6:00 in Berlin
    opening = SHOP.next_opening(now)
    assert opening is not None and describe_opening(opening, now) == "today at 8:00 CET"


def test_saturday_night_waits_for_monday() -> None:
    now = utc(2026, 12, 5, 21, 0)  # Saturday 22:00 in Berlin
    opening = SHOP.next_opening(now)
    assert opening is not None and describe_opening(opening, now) == "on Monday at 8:00 CET"


def test_a_holiday_is_skipped() -> None:
    now = utc(2026, 12, 24, 20, 0)  # Thursday 24 December, 21:00 in Berlin
    opening = SHOP.next_opening(now)
    assert opening is not None
    assert opening.date() == date(2026, 12, 26)  # Saturday: Friday 25th is a holiday
    assert describe_opening(opening, now) == "on Saturday at 8:00 CET"


def test_summer_time_is_named() -> None:
    now = utc(2026, 7, 4, 19, 0)  # Saturday 21:00 CEST
    opening = SHOP.next_opening(now)
    assert opening is not None and describe_opening(opening, now) == "on Monday at 8:00 CEST"


def test_far_away_openings_carry_the_date() -> None:
    hours = BusinessHours.from_spans({"mon": "9:30-12:00"}, "UTC", [date(2026, 12, 7)])
    now = utc(2026, 12, 1, 13, 0)  # Tuesday; next Monday is a holiday
    opening = hours.next_opening(now)
    assert opening is not None
    assert describe_opening(opening, now) == "on Monday 14 December at 9:30 UTC"


def test_several_spans_and_midnight() -> None:
    hours = BusinessHours.from_spans({"fri": ["20:00-24:00", "8:00-12:00"]}, "UTC")
    assert hours.is_open(utc(2026, 12, 11, 23, 59, 59))
    assert not hours.is_open(utc(2026, 12, 11, 12, 30))
    opening = hours.next_opening(utc(2026, 12, 11, 12, 30))
    assert opening is not None and opening.hour == 20


def test_never_open_has_no_next_opening() -> None:
    hours = BusinessHours.from_spans({"mon": None}, "UTC")
    assert hours.next_opening(utc(2026, 12, 7, 9, 0)) is None


@pytest.mark.parametrize(
    ("hours", "timezone", "expected"),
    [
        ({"monday": "8:00-20:00"}, "UTC", "'monday' is not a weekday"),
        ({"mon": "8-20"}, "UTC", "write it as HH:MM-HH:MM"),
        ({"mon": "20:00-8:00"}, "UTC", "ends before it starts"),
        ({"mon": "8:00-25:00"}, "UTC", "impossible time"),
        ({}, "Mars/Olympus", "not an IANA time zone"),
    ],
)
def test_malformed_settings_say_what_to_write(
    hours: dict[str, str], timezone: str, expected: str
) -> None:
    with pytest.raises(ValidationError, match=expected):
        HandoffSettings(hours=hours, timezone=timezone)  # type: ignore[arg-type]
