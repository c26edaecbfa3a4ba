"""Reads the service makes for (nearly) every message, remembered for a moment per store.

A value such as "does any API key exist?" or the answer library's decisions is read from the
database for each request; under load that is a query per message, and when a remembered
answer expires under 100 concurrent requests, 100 queries at once. `Remembered` keeps the last
read per store (a process's view of its database, shared by every adapter on it), lets the
callers that find it expired together share one read, and forgets it at once when a change
goes through the same store (`forget`, after the commit); a read that overlapped such a change
is used once, not remembered.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from bot.store.conversations import SqlConversationStore

T = TypeVar("T")


class Remembered(Generic[T]):
    """The last value read per store, trusted for `remembered_s` (see the module)."""

    def __init__(self) -> None:
        self._values: weakref.WeakKeyDictionary[SqlConversationStore, tuple[float, T]] = (
            weakref.WeakKeyDictionary()
        )
        self._reads: weakref.WeakKeyDictionary[SqlConversationStore, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._changes: weakref.WeakKeyDictionary[SqlConversationStore, int] = (
            weakref.WeakKeyDictionary()
        )

    def forget(self, store: SqlConversationStore) -> None:
        """The value changed in `store`'s database: the next `get` reads it again."""
        self._values.pop(store, None)
        self._changes[store] = self._changes.get(store, 0) + 1

    def _fresh(self, store: SqlConversationStore, remembered_s: float) -> tuple[T] | None:
        known = self._values.get(store)
        if known is not None and time.monotonic() - known[0] < remembered_s:
            return (known[1],)
        return None

    async def get(
        self,
        store: SqlConversationStore,
        remembered_s: float,
        read: Callable[[], Awaitable[T]],
    ) -> T:
        """The value as last read when that is younger than `remembered_s`, else `read()`'s
        (one read at a time per store: callers waiting on it take its result)."""
        known = self._fresh(store, remembered_s)
        if known is not None:
            return known[0]
        async with self._reads.setdefault(store, asyncio.Lock()):
            known = self._fresh(store, remembered_s)  # a concurrent caller has just read it
            if known is not None:
                return known[0]
            now, changes = time.monotonic(), self._changes.get(store, 0)
            value = await read()
            if self._changes.get(store, 0) == changes:
                self._values[store] = (now, value)
            return value
