"""The in-process event bus: fan-out by topic, order, unsubscribe, lag instead of growing."""

from __future__ import annotations

import asyncio

from bot.core.bus import LAGGED, LocalBus, QueueSubscription


async def test_every_subscriber_of_a_topic_gets_its_events_in_order() -> None:
    bus = LocalBus()
    async with (
        bus.subscribe("console") as first,
        bus.subscribe("console") as second,
        bus.subscribe("models") as other,
    ):
        for n in range(3):
            await bus.publish("console", {"type": "message", "n": n})
        assert [(await first.get())["n"] for _ in range(3)] == [0, 1, 2]
        assert [(await second.get())["n"] for _ in range(3)] == [0, 1, 2]
        await bus.publish("models", {"versions": {"intent": "v2"}})
        assert await other.get() == {"versions": {"intent": "v2"}}
        assert bus.subscriber_count("console") == 2
    assert bus.subscriber_count("console") == 0 and bus.subscriber_count("models") == 0


async def test_publishing_with_nobody_listening_is_fine_and_later_subscribers_start_fresh() -> None:
    bus = LocalBus()
    await bus.publish("console", {"type": "message"})
    async with bus.subscribe("console") as events:
        await bus.publish("console", {"type": "escalation.opened"})
        assert (await events.get())["type"] == "escalation.opened"


async def test_a_subscriber_that_falls_behind_is_told_it_lagged() -> None:
    subscription = QueueSubscription(limit=3)
    for n in range(5):
        subscription.put({"n": n})
    # The backlog was dropped for one marker: the subscriber reloads from the store.
    assert await subscription.get() == LAGGED
    assert await subscription.get() == {"n": 4}  # what came after the drop is kept


async def test_stopping_the_bus_ends_open_subscriptions() -> None:
    bus = LocalBus()
    received: list[dict[str, object]] = []

    async def listen() -> None:
        async with bus.subscribe("console") as events:
            async for event in events:
                received.append(event)

    task = asyncio.create_task(listen())
    while bus.subscriber_count("console") == 0:
        await asyncio.sleep(0)
    await bus.publish("console", {"type": "message"})
    await bus.stop()
    await asyncio.wait_for(task, timeout=2)
    assert received == [{"type": "message"}]
