from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.infra.batching import MicroBatcher


async def test_concurrent_requests_share_batches_and_keep_their_order() -> None:
    calls: list[int] = []
    threads: set[str] = set()

    def double(items: Sequence[int]) -> list[int]:
        calls.append(len(items))
        threads.add(threading.current_thread().name)
        return [2 * i for i in items]

    with ThreadPoolExecutor(1, thread_name_prefix="model") as pool:
        batcher: MicroBatcher[int, int] = MicroBatcher(double, pool, max_batch=16, max_wait_ms=20)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(40)))
        await batcher.stop()
    assert results == [2 * i for i in range(40)]
    assert max(calls) <= 16 and len(calls) <= 5  # 40 requests in a few batches, not 40 calls
    assert all(name.startswith("model") for name in threads)  # never on the event loop


async def test_a_lone_request_waits_at_most_max_wait() -> None:
    with ThreadPoolExecutor(1) as pool:
        batcher: MicroBatcher[int, int] = MicroBatcher(lambda xs: list(xs), pool, 8, 10)
        await batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batcher.submit(7) == 7
        assert loop.time() - started < 1.0
        await batcher.stop()


async def test_a_failing_batch_fails_its_callers_and_the_next_batch_works() -> None:
    def fragile(items: Sequence[str]) -> list[str]:
        if "boom" in items:
            raise ValueError("model exploded")
        return [s.upper() for s in items]

    with ThreadPoolExecutor(1) as pool:
        batcher: MicroBatcher[str, str] = MicroBatcher(fragile, pool, 8, 1)
        await batcher.start()
        with pytest.raises(ValueError, match="model exploded"):
            await batcher.submit("boom")
        assert await batcher.submit("ok") == "OK"
        await batcher.stop()


async def test_without_max_wait_batches_form_while_the_previous_one_runs() -> None:
    import time

    sizes: list[int] = []

    def slow(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.05)
        return list(items)

    with ThreadPoolExecutor(1) as pool:
        batcher: MicroBatcher[int, int] = MicroBatcher(slow, pool, max_batch=64, max_wait_ms=0)
        await batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await batcher.submit(1) == 1  # alone: runs at once, no waiting for company
        assert loop.time() - started < 0.5
        sizes.clear()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.stop()
    assert results == list(range(20))
    assert len(sizes) <= 3 and sum(sizes) == 20  # the first alone, the rest together


async def test_the_idle_task_runs_when_nothing_is_queued_at_most_once_per_interval() -> None:
    """`when_idle` (the heap trim in serving) runs on the model thread between batches, only
    when no request waits, no more often than `idle_every_s`; a failing one stops nothing."""
    events: list[str] = []
    threads: set[str] = set()

    def work(items: Sequence[int]) -> list[int]:
        events.append("batch")
        return list(items)

    def idle() -> None:
        events.append("idle")
        threads.add(threading.current_thread().name)
        if events.count("idle") == 1:
            raise OSError("the first one fails")

    with ThreadPoolExecutor(1, thread_name_prefix="model") as pool:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            work, pool, 8, 0, when_idle=idle, idle_every_s=0.2
        )
        await batcher.start()
        await batcher.submit(1)
        assert events == ["batch"]  # not before an interval has passed since the start
        await asyncio.sleep(0.25)
        for i in range(5):  # five lone requests in quick succession: one idle run
            assert await batcher.submit(i) == i
        await asyncio.sleep(0.25)
        assert await batcher.submit(9) == 9  # the failed first run did not stop anything
        await asyncio.sleep(0.05)
        busy = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.stop()
    assert busy == list(range(20))
    assert events.count("idle") == batcher.idle_runs == 2
    assert events.index("idle") == 2  # after the batch that found the queue empty
    assert threads and all(name.startswith("model") for name in threads)
