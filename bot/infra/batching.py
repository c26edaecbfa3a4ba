"""Micro-batching: concurrent requests share one model call, run off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from bot.core.background import cancel_and_wait

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class MicroBatcher(Generic[T, R]):
    """Gathers calls into batches of at most `max_batch`, waiting at most `max_wait_ms`.

    Batches form by themselves under load: while one batch runs, new requests queue, and the
    next batch takes all of them. So with `max_wait_ms=0` (the default) a lone request never
    waits, and concurrent ones still share forwards. A positive `max_wait_ms` makes the first
    request of a batch wait that long for company (larger batches at the price of latency);
    a full batch goes at once.

    `fn` runs in `executor` (one worker thread keeps torch from competing with itself), so
    the event loop never blocks on a forward pass. A failure of `fn` fails every
    request of that batch with the same exception; the batcher itself keeps running.

    Args:
        fn: maps a list of inputs to a list of outputs of the same length and order.
        executor: where `fn` runs.
        max_batch: largest batch.
        max_wait_ms: longest extra wait of the first request of a batch.
        when_idle: run in `executor` when a batch is done and nothing is queued, at most
            once every `idle_every_s` seconds (e.g. `bot.infra.memory.trim_heap`, so the
            memory the batches freed does not stay resident); requests that arrive
            meanwhile wait for it, as for a batch.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        executor: Executor,
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
        name: str = "batcher",
        when_idle: Callable[[], object] | None = None,
        idle_every_s: float = 1.0,
    ) -> None:
        self._fn = fn
        self._when_idle = when_idle
        self.idle_every = idle_every_s
        self.idle_runs = 0
        self._executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.name = name
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-loop")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def submit(self, item: T) -> R:
        """Process one item as part of some batch; returns its result."""
        if self._queue is None:
            raise RuntimeError(f"{self.name} is not started")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        last_idle = time.monotonic()
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                # Take what is already queued without waiting, then wait out the deadline.
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break  # with max_wait 0: run now with whatever has queued
                try:
                    # Not wait_for: on Python 3.11 it can drop a cancel
                    # (see bot/nlu/understander.py).
                    async with asyncio.timeout(remaining):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            items = [item for item, _ in live]
            try:
                results = await loop.run_in_executor(self._executor, self._fn, items)
            except Exception as exc:  # handed to every waiting caller, not swallowed
                log.exception("%s: batch of %d failed", self.name, len(items))
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(items)
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
            if self._when_idle is not None and self._queue.empty():
                now = time.monotonic()
                if now - last_idle >= self.idle_every:
                    last_idle = now
                    await self._idle(loop)

    async def _idle(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._when_idle is not None
        try:
            await loop.run_in_executor(self._executor, self._when_idle)
        except Exception:  # housekeeping: never stops the batches
            log.exception("%s: idle task failed", self.name)
        self.idle_runs += 1
