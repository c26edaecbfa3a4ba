"""`serve` with `privacy.retention_days`: the app purges old conversations on its schedule,
and a stopped app leaves no purge task running."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.app.factory import RUNTIME, create_app
from bot.core.errors import ConfigurationError, NotFoundError
from bot.settings import load_settings
from bot.store.conversations import SqlConversationStore
from bot.store.privacy import RETENTION, Customer, SqlPrivacyStore
from tests.helpers import ClientFactory, runtime_settings

pytestmark = pytest.mark.slow


async def stored_at(url: str, days_ago: float, sender: str) -> str:
    """A conversation whose last message is `days_ago` old."""
    then = datetime.now(UTC) - timedelta(days=days_ago)
    store = SqlConversationStore(url, clock=lambda: then)
    await store.start()
    try:
        conversation = await store.conversation("rest", sender)
        await store.add_customer_message(conversation.id, f"a question from {sender}")
        return conversation.id
    finally:
        await store.stop()


def purge_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "retention-purge"]


async def test_serve_purges_on_its_schedule(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> None:
    old = await stored_at(sqlite_url, 40, "carol")
    recent = await stored_at(sqlite_url, 5, "dave")
    settings = runtime_settings(
        runtime_models, sqlite_url, privacy={"retention_days": 30, "purge_interval_s": 0.1}
    )
    client = await aiohttp_client(create_app(settings))
    privacy = SqlPrivacyStore(client.app[RUNTIME].store)
    async with asyncio.timeout(15):
        while not await privacy.erasures():
            await asyncio.sleep(0.05)
    [record] = await privacy.erasures()
    assert record.erased_by == RETENTION and record.counts["conversations"] == 1
    with pytest.raises(NotFoundError):
        await privacy.export(Customer(conversation_id=old))
    assert (await privacy.export(Customer(conversation_id=recent))).tables["messages"]
    assert len(purge_tasks()) == 1
    await client.close()
    assert purge_tasks() == []


def test_retention_settings_are_checked() -> None:
    assert load_settings(None).privacy.retention_days is None
    with pytest.raises(ConfigurationError, match=r"privacy.retention_days: Input should be"):
        load_settings(None, privacy={"retention_days": 0})
    with pytest.raises(ConfigurationError, match=r"privacy.purge_interval_s: Input should be"):
        load_settings(None, privacy={"purge_interval_s": 0})
