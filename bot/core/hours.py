"""Business hours: when people answer hand-offs, and how to tell a customer when they will.

The rules are pure (a time in, a decision out; the clock is the caller's), so the service
and the tests share them: `BusinessHours.is_open(now)`, `BusinessHours.next_opening(now)` and
`describe_opening(opening, now)` ("tomorrow at 8:00 CET"). `HandoffSettings` is the
`handoff:` section of the settings file.

With no hours configured the team is always open: that is the behaviour of a bot without
this section, so nothing changes for it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
# The longest a search for the next opening looks ahead (holidays around new year included).
_HORIZON_DAYS = 400


def parse_span(text: str, where: str) -> tuple[time, time]:
    """`"8:00-20:00"` -> (08:00, 20:00); "24:00" may end a span (until midnight).

    Raises:
        ValueError: says where, what was found and the expected form.
    """
    match = _SPAN.match(text)
    if match is None:
        raise ValueError(
            f"{where}: {text!r} is not an opening span; write it as HH:MM-HH:MM, e.g. "
            '"8:00-20:00" (several spans: a list)'
        )
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(f"{where}: {text!r} has an impossible time; hours 0-23 (24:00 to end)")
    start = time(h1, m1)
    end = time.max if h2 == 24 else time(h2, m2)
    if end <= start:
        raise ValueError(
            f"{where}: {text!r} ends before it starts; spans over midnight are two spans, "
            'e.g. fri: "20:00-24:00" and sat: "0:00-2:00"'
        )
    return start, end


class HandoffSettings(BaseModel):
    """When people answer hand-offs, and how often a waiting customer hears "it's queued"."""

    hours: dict[str, list[str] | str | None] = Field(
        default_factory=dict,
        description='opening spans per weekday (mon..sun), e.g. mon: "8:00-20:00" or a list '
        "of spans; a day left out or null is closed; no hours at all: always open",
    )
    timezone: str = Field("UTC", description="IANA time zone of the hours, e.g. Europe/Berlin")
    holidays: list[date] = Field(
        default_factory=list, description="dates (YYYY-MM-DD) closed all day"
    )
    ack_interval_s: float = Field(
        60.0,
        ge=0,
        description='at most one "it\'s in the queue" acknowledgement per this many seconds '
        "for messages written while waiting for an agent (0: one for every message)",
    )

    csat: bool = Field(
        True,
        description="after an agent resolves a conversation, ask the customer to rate the "
        "help 1-5 (routing messages csat_question, csat_thanks)",
    )

    @field_validator("hours")
    @classmethod
    def _check_hours(
        cls, value: dict[str, list[str] | str | None]
    ) -> dict[str, list[str] | str | None]:
        for day, spans in value.items():
            if day not in WEEKDAYS:
                raise ValueError(f"hours: {day!r} is not a weekday; use {', '.join(WEEKDAYS)}")
            for span in _spans_of(spans):
                parse_span(span, f"hours.{day}")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"timezone {value!r} is not an IANA time zone; use e.g. Europe/Berlin or UTC"
            ) from exc
        return value

    def business_hours(self) -> BusinessHours:
        """The pure rules these settings describe."""
        return BusinessHours.from_spans(self.hours, self.timezone, self.holidays)


def _spans_of(spans: list[str] | str | None) -> list[str]:
    if spans is None:
        return []
    return [spans] if isinstance(spans, str) else list(spans)


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """Opening spans per weekday (0 = Monday) in one time zone, and closed dates.

    Attributes:
        week: per weekday, its (start, end) spans in local time, sorted; empty: closed.
        zone: the time zone the spans and holidays are in.
        holidays: local dates closed all day.
        always_open: no hours were configured (every time is open).
    """

    week: tuple[tuple[tuple[time, time], ...], ...]
    zone: ZoneInfo
    holidays: frozenset[date] = frozenset()
    always_open: bool = False

    @classmethod
    def from_spans(
        cls,
        hours: Mapping[str, list[str] | str | None],
        timezone: str = "UTC",
        holidays: Sequence[date] = (),
    ) -> BusinessHours:
        """Build from `{"mon": "8:00-20:00", ...}` (ValueError on a malformed span)."""
        week = tuple(
            tuple(sorted(parse_span(span, f"hours.{day}") for span in _spans_of(hours.get(day))))
            for day in WEEKDAYS
        )
        return cls(week, ZoneInfo(timezone), frozenset(holidays), always_open=not hours)

    def is_open(self, now: datetime) -> bool:
        """Whether someone answers at `now` (timezone-aware)."""
        if self.always_open:
            return True
        local = now.astimezone(self.zone)
        if local.date() in self.holidays:
            return False
        moment = local.time().replace(tzinfo=None)
        return any(
            start <= moment and (moment < end or end == time.max)
            for start, end in self.week[local.weekday()]
        )

    def next_opening(self, now: datetime) -> datetime | None:
        """The first moment after `now` at which the team is open (`now` itself when open),
        in the business's time zone; None when no day is ever open."""
        if self.is_open(now):
            return now.astimezone(self.zone)
        local = now.astimezone(self.zone)
        for offset in range(_HORIZON_DAYS):
            day = local.date() + timedelta(days=offset)
            if day in self.holidays:
                continue
            for start, _end in self.week[day.weekday()]:
                opening = datetime.combine(day, start, self.zone)
                if opening > local:
                    return opening
        return None


def describe_opening(opening: datetime, now: datetime) -> str:
    """When `opening` is, said the way a person would: "today at 14:00 CET", "tomorrow at
    8:00 CET", "on Monday at 8:00 CET", or with the date when it is a week or more away.

    Both times are read in `opening`'s time zone (the business's), whose abbreviation is
    named so that a customer elsewhere can convert.
    """
    local_now = now.astimezone(opening.tzinfo)
    clock = f"{opening.hour}:{opening.minute:02d} {opening.strftime('%Z')}".rstrip()
    days = (opening.date() - local_now.date()).days
    if days <= 0:
        return f"today at {clock}"
    if days == 1:
        return f"tomorrow at {clock}"
    if days < 7:
        return f"on {opening.strftime('%A')} at {clock}"
    return f"on {opening.strftime('%A')} {opening.day} {opening.strftime('%B')} at {clock}"
