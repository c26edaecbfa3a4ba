"""`Remembered`: a read shared by concurrent callers, trusted for a moment, forgotten on a
change; a read that overlapped a change is not remembered (it may predate the change)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.store.conversations import SqlConversationStore
from bot.store.remembered import Remembered


async def test_a_read_that_overlapped_a_change_is_used_once_not_remembered(
    tmp_path: Path,
) -> None:
    store = SqlConversationStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    remembered: Remembered[str] = Remembered()
    reads: list[str] = []
    release = asyncio.Event()

    async def slow_read() -> str:
        reads.append("old")
        await release.wait()  # the database answered before the change committed
        return "old"

    async def read() -> str:
        reads.append("new")
        return "new"

    pending = asyncio.create_task(remembered.get(store, 60, slow_read))
    await asyncio.sleep(0)
    remembered.forget(store)  # a change committed while the read was under way
    release.set()
    assert await pending == "old"  # its own caller gets what it read
    assert await remembered.get(store, 60, read) == "new"  # but it was not remembered
    assert await remembered.get(store, 60, read) == "new" and reads == ["old", "new"]
    # Without a change in between, one read serves every caller for the remembered time.
    other = SqlConversationStore(f"sqlite+aiosqlite:///{tmp_path / 'other.sqlite'}")
    assert await asyncio.gather(*(remembered.get(other, 60, read) for _ in range(5))) == ["new"] * 5
    assert reads == ["old", "new", "new"]
    assert await remembered.get(other, 0, read) == "new" and len(reads) == 4  # expired
