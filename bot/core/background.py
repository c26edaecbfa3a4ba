"""Background tasks: stopping them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, recancel_s: float = 1.0) -> None:
    """Cancel the given tasks (None is skipped) and wait until each has ended.

    A task still running `recancel_s` after its cancel is cancelled again: a cancel that
    lands as an awaited result arrives can be lost (asyncio.wait_for on Python 3.11 returns
    the result instead), and one lost cancel must not make shutdown wait for ever.
    """
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        while not task.done():
            await asyncio.wait({task}, timeout=recancel_s)
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
