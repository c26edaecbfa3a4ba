"""`Dispatcher`: which deliverer pushes a reply, in one process and across replicas (two
dispatchers on one in-process bus stand for two replicas on Redis; `tests/bot/infra/
test_redis.py` runs the same over a real Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from bot.core.bus import LocalBus
from bot.core.delivery import DeliveryError, Dispatcher
from bot.core.records import Conversation, ConversationStatus, Reply, Role, Route
from tests.fakes.delivery import RecordingDeliverer

REPLY = Reply("c1", 41, Role.AGENT, "Hello from Bo", Route.AGENT)


def conversation(channel: str) -> Conversation:
    now = datetime.now(UTC)
    return Conversation("c1", channel, "s1", ConversationStatus.CLAIMED, now, now, "Ana")


async def test_a_channel_with_no_deliverer_is_an_error_not_a_delivery() -> None:
    dispatcher = Dispatcher()
    dispatcher.register("telegram", RecordingDeliverer())
    for channel in ("rest", "rasa"):
        with pytest.raises(DeliveryError, match=f"no connector delivers to channel '{channel}'"):
            await dispatcher.deliver(conversation(channel), REPLY)


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[Dispatcher, Dispatcher]]:
    bus = LocalBus()
    pair = Dispatcher(bus), Dispatcher(bus)
    for dispatcher in pair:
        await dispatcher.start()
    try:
        yield pair
    finally:
        for dispatcher in pair:
            await dispatcher.stop()


async def test_across_replicas_socket_channels_still_deliver_and_unknown_ones_fail(
    replicas: tuple[Dispatcher, Dispatcher],
) -> None:
    a, b = replicas
    sockets = RecordingDeliverer(), RecordingDeliverer()
    api = RecordingDeliverer(), RecordingDeliverer()
    for dispatcher, socket, bot_api in zip(replicas, sockets, api, strict=True):
        dispatcher.register("widget", socket, local_only=True)
        dispatcher.register("telegram", bot_api)
    # The widget customer's socket may be on the other replica: the reply goes over the bus,
    # and each replica pushes to the sockets it holds.
    await a.deliver(conversation("widget"), REPLY)
    async with asyncio.timeout(5):
        while not (sockets[0].delivered and sockets[1].delivered):
            await asyncio.sleep(0.01)
    # A channel any replica reaches is sent once, by the replica that has the reply.
    await a.deliver(conversation("telegram"), REPLY)
    assert (len(api[0].delivered), len(api[1].delivered)) == (1, 0)
    # No replica pushes to REST or Rasa clients: an error on every replica, nothing sent.
    for dispatcher in replicas:
        with pytest.raises(DeliveryError, match="the reply is stored"):
            await dispatcher.deliver(conversation("rasa"), REPLY)
    await asyncio.sleep(0.05)
    assert [len(s.delivered) for s in sockets] == [1, 1]
