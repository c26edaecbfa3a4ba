"""Start-up and shutdown through one AsyncExitStack: whatever started is stopped, in reverse
order, also when a later start fails."""

from __future__ import annotations

import contextlib

import pytest

from bot.app.factory import Component, start_all


class Part:
    """A component that records its start and stop in a shared journal."""

    def __init__(self, name: str, journal: list[str], fail: bool = False) -> None:
        self.name, self.journal, self.fail = name, journal, fail

    async def start(self) -> None:
        if self.fail:
            self.journal.append(f"start {self.name} failed")
            raise RuntimeError(f"{self.name} cannot start")
        self.journal.append(f"start {self.name}")

    async def stop(self) -> None:
        self.journal.append(f"stop {self.name}")


async def test_components_stop_in_reverse_order() -> None:
    journal: list[str] = []
    parts: list[Component] = [Part(n, journal) for n in ("bus", "store", "models")]
    async with contextlib.AsyncExitStack() as stack:
        await start_all(stack, parts)
        journal.append("serving")
    assert journal == [
        "start bus",
        "start store",
        "start models",
        "serving",
        "stop models",
        "stop store",
        "stop bus",
    ]


async def test_a_failed_start_stops_what_already_started() -> None:
    journal: list[str] = []
    parts: list[Component] = [
        Part("bus", journal),
        Part("store", journal),
        Part("models", journal, fail=True),
        Part("index", journal),
    ]
    with pytest.raises(RuntimeError, match="models cannot start"):
        async with contextlib.AsyncExitStack() as stack:
            await start_all(stack, parts)
    assert journal == ["start bus", "start store", "start models failed", "stop store", "stop bus"]
