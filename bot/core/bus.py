"""Events between the parts of one deployment: console live updates, pushed replies, reloads.

The core publishes small JSON-able events on named topics; whoever cares subscribes. One
process uses `LocalBus` (in memory). Several replicas use a bus that crosses processes (Redis
pub/sub), so an agent on one replica sees an escalation opened on another. Events are hints
to refresh: the store stays the source of truth, so a subscriber that missed events (it
lagged, or the bus reconnected) reloads what it shows from the store and loses nothing.

Topics used by supportbot:
    console: conversation and escalation changes an agent console shows
        (`{"type": "message" | "escalation.opened" | "escalation.claimed" |
        "escalation.released" | "escalation.resolved" | "escalation.timeout",
        "conversation_id": ..., ...}`).
    deliver: a reply to push to a customer connected to some replica
        (`{"conversation_id", "channel", "sender", "reply": {...}}`).
    models: the live model versions changed (`{"versions": {...}}`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

log = logging.getLogger(__name__)

Event = dict[str, Any]

# A subscriber this far behind is told it lagged (it reloads from the store) instead of
# holding memory for events it will never catch up with.
QUEUE_LIMIT = 1000

LAGGED: Event = {"type": "lagged"}


class Subscription(Protocol):
    """Events of one topic, in publication order, from subscription on."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def get(self) -> Event:
        """The next event; `{"type": "lagged"}` when some were dropped."""


class EventBus(Protocol):
    """Publish/subscribe by topic; at-most-once, in order per publisher."""

    async def start(self) -> None:
        """Connect (a no-op in memory)."""

    async def stop(self) -> None:
        """Disconnect; open subscriptions end."""

    async def publish(self, topic: str, event: Event) -> None:
        """Send `event` to every current subscriber of `topic` (on every replica).

        Never raises for a transport failure: the event is logged as lost (events are hints;
        subscribers resynchronise from the store).
        """

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[Subscription]:
        """`async with bus.subscribe(topic) as events: async for event in events: ...`."""


class QueueSubscription:
    """A bounded queue of events; when full, the backlog is replaced by one `lagged` event."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._limit = limit

    def put(self, event: Event | None) -> None:
        if self._queue.qsize() >= self._limit:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(LAGGED)
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def get(self) -> Event:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # stay closed for any later get()
            raise StopAsyncIteration
        return event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.get()


class LocalBus:
    """The bus of a single process: fan-out to in-memory queues."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[QueueSubscription]] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription.close()
        self._subscribers.clear()

    async def publish(self, topic: str, event: Event) -> None:
        self.deliver_local(topic, event)

    def deliver_local(self, topic: str, event: Event) -> None:
        """Hand `event` to this process's subscribers of `topic`."""
        for subscription in list(self._subscribers.get(topic, ())):
            subscription.put(event)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[QueueSubscription]:
        subscription = QueueSubscription()
        self._subscribers.setdefault(topic, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscribers.get(topic)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[topic]

    def subscriber_count(self, topic: str) -> int:
        return len(self._subscribers.get(topic, ()))

    def announce_lag(self) -> None:
        """Tell every subscriber it may have missed events (e.g. after a reconnect)."""
        for topic, subscribers in self._subscribers.items():
            for subscription in list(subscribers):
                subscription.put(LAGGED)
            log.debug("event bus: told %d %s subscribers they lagged", len(subscribers), topic)
