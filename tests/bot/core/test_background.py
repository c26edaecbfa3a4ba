"""Stopping background tasks: a lost cancel must not make shutdown hang."""

from __future__ import annotations

import asyncio

import pytest

from bot.core.background import cancel_and_wait


async def test_a_task_that_loses_its_first_cancel_is_cancelled_again() -> None:
    swallowed = asyncio.Event()

    async def loses_one_cancel() -> None:
        # What asyncio.wait_for does on Python 3.11 when a cancel meets a ready result.
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.sleep(30)

    task = asyncio.create_task(loses_one_cancel())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task, None, recancel_s=0.05)
    assert swallowed.is_set() and task.cancelled()


async def test_finished_and_failed_tasks_are_waited_for() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    done = asyncio.create_task(asyncio.sleep(0))
    await done
    failing = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):  # a task's own failure is not hidden
        await cancel_and_wait(done, failing)
