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
