"""RedisBus and RedisTurnLocks against the real local Redis (127.0.0.1:6379).

Two buses on one Redis stand in for two replicas. Every test uses a channel prefix of its own,
so tests (and anything else on this Redis) do not hear each other. Skipped, with the reason,
only when no Redis answers.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from bot.app.cli import main as cli_main
from bot.core.bus import LAGGED
from bot.core.delivery import Dispatcher, deliver_event, parse_deliver_event
from bot.core.errors import ConfigurationError, StoreUnavailableError
from bot.core.locks import KeyedLocks
from bot.core.metrics import Metrics
from bot.core.records import Conversation, ConversationStatus, Reply, Role, Route
from bot.infra.redis import RedisBus, RedisTurnLocks, publish_once
from bot.nlu.understander import TransformerUnderstander
from tests.helpers import REDIS_SKIP_REASON, REDIS_URL

pytestmark = pytest.mark.skipif(REDIS_SKIP_REASON is not None, reason=REDIS_SKIP_REASON or "")


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid4().hex[:10]}:"


@pytest.fixture
async def replicas(prefix: str) -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    first, second = RedisBus(REDIS_URL, prefix, "a"), RedisBus(REDIS_URL, prefix, "b")
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.stop()
        await second.stop()


async def next_event(subscription: Any, timeout: float = 5.0) -> dict[str, Any]:
    event: dict[str, Any] = await asyncio.wait_for(subscription.get(), timeout)
    return event


async def test_an_event_reaches_local_and_remote_subscribers_once_in_order(
    replicas: tuple[RedisBus, RedisBus],
) -> None:
    a, b = replicas
    async with a.subscribe("console") as on_a, b.subscribe("console") as on_b:
        for n in range(5):
            await a.publish("console", {"type": "message", "n": n})
        assert [(await next_event(on_b))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        assert [(await next_event(on_a))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        # A's own copy coming back from Redis is skipped: nothing more arrives on A.
        await b.publish("console", {"type": "message", "n": "from-b"})
        assert (await next_event(on_a))["n"] == "from-b"
        assert (await next_event(on_b))["n"] == "from-b"


async def test_topics_and_prefixes_keep_events_apart(
    replicas: tuple[RedisBus, RedisBus],
) -> None:
    a, b = replicas
    other = RedisBus(REDIS_URL, f"other-{uuid4().hex[:8]}:")
    await other.start()
    try:
        async with (
            b.subscribe("models") as models,
            b.subscribe("console") as console,
            other.subscribe("console") as foreign,
        ):
            await a.publish("models", {"versions": {"intent": "v2"}})
            await a.publish("console", {"type": "message"})
            assert await next_event(models) == {"versions": {"intent": "v2"}}
            assert await next_event(console) == {"type": "message"}
            with pytest.raises(TimeoutError):
                await next_event(foreign, timeout=0.3)
    finally:
        await other.stop()


async def test_publish_never_raises_when_redis_is_unreachable(prefix: str) -> None:
    metrics = Metrics(replica="a")
    bus = RedisBus(
        "redis://127.0.0.1:1/0",
        prefix,
        on_lost=lambda topic: metrics.bus_events_lost.labels(topic).inc(),
    )
    started = time.monotonic()
    await bus.start(wait_s=0.3)
    try:
        assert not bus.connected
        async with bus.subscribe("console") as local:
            await bus.publish("console", {"type": "message"})
            # This replica's own subscribers still hear it.
            assert await next_event(local) == {"type": "message"}
        assert metrics.bus_events_lost.labels("console")._value.get() == 1
    finally:
        await bus.stop()
    assert time.monotonic() - started < 5


def test_a_bus_url_that_is_not_redis_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a Redis URL"):
        RedisBus("postgresql://x/y")


async def test_a_dropped_connection_is_reported_as_lag_and_recovered(
    replicas: tuple[RedisBus, RedisBus],
) -> None:
    a, b = replicas
    admin = Redis.from_url(REDIS_URL)
    try:
        async with b.subscribe("console") as events:
            await a.publish("console", {"type": "message", "n": 1})
            assert (await next_event(events))["n"] == 1
            # Redis drops B's subscriber connection, as a restart or a network cut would.
            clients = await admin.client_list()
            killed = [c for c in clients if c.get("name", "").endswith(b.origin[:8])]
            assert killed, "B's subscriber connection is named in CLIENT LIST"
            for client in killed:
                await admin.client_kill_filter(_id=client["id"])
            assert await next_event(events) == LAGGED
            deadline = time.monotonic() + 10
            while not b.connected or b.reconnects == 0:
                assert time.monotonic() < deadline, "B did not reconnect"
                await asyncio.sleep(0.05)
            # After the reconnect: lagged (resynchronise), then events flow again.
            seen = []
            while len(seen) < 1 or seen[-1] == LAGGED:
                await a.publish("console", {"type": "message", "n": 2})
                seen.append(await next_event(events))
            assert seen[-1]["n"] == 2
            assert b.reconnects >= 1
    finally:
        await admin.aclose()


async def test_turn_locks_serialise_one_conversation_across_replicas(
    replicas: tuple[RedisBus, RedisBus],
) -> None:
    a, b = replicas
    on_a, on_b = RedisTurnLocks(a, KeyedLocks()), RedisTurnLocks(b, KeyedLocks())
    running: list[str] = []
    overlaps = 0

    async def turn(locks: RedisTurnLocks, name: str, key: str) -> None:
        nonlocal overlaps
        async with locks.hold(key):
            if any(r.startswith(key) for r in running):
                overlaps += 1
            running.append(f"{key}:{name}")
            await asyncio.sleep(0.05)
            running.remove(f"{key}:{name}")

    started = time.monotonic()
    await asyncio.gather(
        *(turn(on_a if n % 2 else on_b, str(n), "c1") for n in range(6)),
        *(turn(on_a if n % 2 else on_b, str(n), "c2") for n in range(6)),
    )
    assert overlaps == 0
    # The two conversations ran side by side: about 6 x 50 ms, not 12 x.
    assert time.monotonic() - started < 0.6 * 1.5 + 0.4


async def locked_by_a(
    replicas: tuple[RedisBus, RedisBus], key: str, for_ms: int, wait_s: float
) -> RedisTurnLocks:
    """Replica b's turn locks, with replica a's lock on `key` left in Redis for `for_ms`."""
    a, b = replicas
    await a.client.set(f"{a.prefix}turn:{key}", "replica a", px=for_ms)
    return RedisTurnLocks(b, KeyedLocks(), ttl_s=5, wait_s=wait_s)


async def test_a_lock_left_by_a_dead_replica_expires(
    replicas: tuple[RedisBus, RedisBus],
) -> None:
    # A replica killed mid-turn leaves its lock behind; the TTL frees it.
    locks = await locked_by_a(replicas, "c9", for_ms=400, wait_s=5)
    started = time.monotonic()
    async with locks.hold("c9"):
        waited = time.monotonic() - started
    assert 0.2 < waited < 3


async def test_a_lock_that_stays_taken_answers_retry_later(
    replicas: tuple[RedisBus, RedisBus],
) -> None:
    locks = await locked_by_a(replicas, "c8", for_ms=5000, wait_s=0.2)
    with pytest.raises(StoreUnavailableError, match="send it again"):
        async with locks.hold("c8"):
            pass


async def test_a_long_turn_keeps_its_lock(replicas: tuple[RedisBus, RedisBus]) -> None:
    a, b = replicas
    on_a, on_b = RedisTurnLocks(a, KeyedLocks(), ttl_s=0.3), RedisTurnLocks(b, KeyedLocks())
    order: list[str] = []

    async def long_turn() -> None:
        async with on_a.hold("c7"):
            order.append("a starts")
            await asyncio.sleep(1.0)  # over three TTLs: renewed meanwhile
            order.append("a ends")

    async def second_turn() -> None:
        await asyncio.sleep(0.1)
        async with on_b.hold("c7"):
            order.append("b")

    await asyncio.gather(long_turn(), second_turn())
    assert order == ["a starts", "a ends", "b"]


async def test_turns_end_promptly_even_when_a_renewal_is_in_flight(
    replicas: tuple[RedisBus, RedisBus],
) -> None:
    a, _ = replicas
    # Renewals every 10 ms: turns often end while one is on the wire. A cancelled renewal
    # there used to be swallowed by redis-py, and the turn then waited for it forever.
    locks = RedisTurnLocks(a, KeyedLocks(), ttl_s=0.03)

    async def turn(n: int) -> None:
        async with locks.hold(f"c{n % 5}"):
            await asyncio.sleep(0.02 + (n % 3) * 0.01)

    await asyncio.wait_for(asyncio.gather(*(turn(n) for n in range(60))), 20)
    assert await a.client.keys(f"{a.prefix}turn:*") == []


class RecordingDeliverer:
    """A channel's deliverer that records what it was asked to push."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, int]] = []

    async def deliver(self, conversation: Conversation, reply: Reply) -> None:
        self.pushed.append((conversation.sender, reply.message_id))


def conversation(channel: str) -> Conversation:
    now = datetime.now(UTC)
    return Conversation("c1", channel, "s1", ConversationStatus.CLAIMED, now, now, "Ana")


async def test_socket_replies_cross_replicas_and_api_replies_are_sent_once(
    replicas: tuple[RedisBus, RedisBus],
) -> None:
    a, b = replicas
    dispatchers = Dispatcher(a), Dispatcher(b)
    sockets = RecordingDeliverer(), RecordingDeliverer()
    api = RecordingDeliverer(), RecordingDeliverer()
    for dispatcher, socket, bot_api in zip(dispatchers, sockets, api, strict=True):
        dispatcher.register("widget", socket, local_only=True)
        dispatcher.register("telegram", bot_api)
        await dispatcher.start()
    try:
        reply = Reply("c1", 41, Role.AGENT, "Hello from Bo", Route.AGENT)
        await dispatchers[0].deliver(conversation("widget"), reply)
        await dispatchers[0].deliver(conversation("telegram"), reply)
        deadline = time.monotonic() + 5
        while not (sockets[0].pushed and sockets[1].pushed):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        # Each replica pushed to the sockets it holds (the deliverer picks its own).
        assert sockets[0].pushed == sockets[1].pushed == [("s1", 41)]
        # The Bot API is called by the replica that had the reply, once.
        assert api[0].pushed == [("s1", 41)] and api[1].pushed == []
    finally:
        for dispatcher in dispatchers:
            await dispatcher.stop()


def test_deliver_events_round_trip_through_json() -> None:
    reply = Reply("c1", 7, Role.SYSTEM, "Hi", None, ("Yes", "No"), False)
    original = conversation("widget")
    event = json.loads(json.dumps(deliver_event(original, reply)))
    assert parse_deliver_event(event) == (original, reply)


@pytest.mark.slow
async def test_promote_with_a_bus_makes_replicas_reload_at_once(
    runtime_models: Path, tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A models directory of our own: v1 as trained, and a v2 of the intent model to promote.
    models = tmp_path / "models"
    for task in ("intent", "sentiment"):
        (models / task).mkdir(parents=True)
        (models / task / "v1").symlink_to(runtime_models / task / "v1")
    (models / "intent" / "v2").symlink_to(runtime_models / "intent" / "v1")
    shutil.copy(runtime_models / "registry.json", models / "registry.json")

    bus = RedisBus(REDIS_URL, prefix, "a")
    await bus.start()
    executor = ThreadPoolExecutor(max_workers=1)
    # Polling every 10 minutes: only the notice can make it reload within the test.
    understander = TransformerUnderstander(
        models, executor, quantized=False, reload_interval_s=600, bus=bus
    )
    await understander.start()
    try:
        async with bus.subscribe("models") as notices:
            assert understander.versions["intent"] == "v1"
            monkeypatch.setenv("SUPPORTBOT_BUS__URL", REDIS_URL)
            monkeypatch.setenv("SUPPORTBOT_BUS__PREFIX", prefix)
            status = await asyncio.to_thread(
                cli_main, ["models", "--out", str(models), "promote", "intent", "v2"]
            )
            assert status == 0
            deadline = time.monotonic() + 30
            while understander.versions.get("intent") != "v2":
                assert time.monotonic() < deadline, "no reload on the notice"
                await asyncio.sleep(0.05)
            # The CLI's notice, then the replica's own announcement of what it now serves.
            assert (await next_event(notices))["versions"]["intent"] == "v2"
            assert await next_event(notices) == {"versions": {"intent": "v2", "sentiment": "v1"}}
        assert await publish_once(REDIS_URL, prefix, "models", {"versions": {}})
    finally:
        await understander.stop()
        await bus.stop()
        executor.shutdown()
