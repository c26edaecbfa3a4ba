"""A card number and an email sent through REST (SQLite and PostgreSQL), the widget (a real
WebSocket) and Telegram (real python-telegram-bot against the fake Bot API) are masked in the
store, in the agent console's transcript API and in the JSON logs, at DEBUG level too."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bot.app.factory import RUNTIME, create_app
from bot.core.logs import PAYLOAD_LOGGERS, QUIET_LOGGERS, configure_logging
from connectors.console import CONSOLE
from connectors.telegram import TELEGRAM, RetryPolicy
from tests.fakes.telegram_api import TOKEN, FakeTelegramApi
from tests.helpers import ClientFactory, runtime_settings

pytestmark = pytest.mark.slow

CARD = "4111 1111 1111 1111"
EMAIL = "ada@example.org"
SAID = f"my card {CARD} was charged twice, write to {EMAIL}"
MASKED = "my card [CARD] was charged twice, write to [EMAIL]"
PASSWORD = "a long enough password"
TIMEOUT = 20.0


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """`serve`'s own logging set-up, JSON lines at DEBUG, into the buffer yielded."""
    root, buffer = logging.getLogger(), io.StringIO()
    before = root.level
    handler = configure_logging("json", "replica-1", logging.DEBUG, stream=buffer)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(before)
    for name in (*QUIET_LOGGERS, *PAYLOAD_LOGGERS):
        logging.getLogger(name).setLevel(logging.NOTSET)


def assert_nothing_in_clear(logs: io.StringIO) -> None:
    text = logs.getvalue()
    assert text.count("\n") > 5  # DEBUG lines were written: the search had something to read
    for secret in (CARD, CARD.replace(" ", ""), "1111 1111", EMAIL):
        assert secret not in text, f"{secret!r} in the logs"


async def console_transcript(client: TestClient[Any, Any], conversation_id: str) -> list[str]:
    """The texts the agent console shows for the conversation, through its HTTP API."""
    await client.server.app[CONSOLE].accounts.add("ana", "agent", PASSWORD)
    async with aiohttp.ClientSession(
        str(client.make_url("")), cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        signed = await http.post("/console/api/session", json={"name": "ana", "password": PASSWORD})
        assert signed.status == 200
        async with http.get(f"/console/api/conversations/{conversation_id}") as response:
            assert response.status == 200
            body = await response.json()
    return [m["text"] for m in body["messages"]]


async def test_widget_masks_in_store_console_and_logs(
    json_logs: io.StringIO,
    aiohttp_client: ClientFactory,
    runtime_models: Path,
    sqlite_url: str,
) -> None:
    settings = runtime_settings(runtime_models, sqlite_url, privacy={"redact": ["email"]})
    client = await aiohttp_client(create_app(settings))
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "hello", "session": "session-privacy-1"})
    assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "history"
    await ws.send_json({"type": "message", "text": SAID, "client_id": "c-1"})
    frames = [await ws.receive_json(timeout=TIMEOUT)]
    while frames[-1]["type"] not in ("status", "error"):
        frames.append(await ws.receive_json(timeout=TIMEOUT))
    assert frames[-1]["type"] == "status", frames
    await ws.close()

    store = client.app[RUNTIME].store
    conversation = await store.find_conversation("widget", "session-privacy-1")
    assert conversation is not None
    [said, *_] = await store.transcript(conversation.id)
    assert said.text == MASKED
    assert MASKED in await console_transcript(client, conversation.id)
    # The customer's own transcript (the widget's history on reconnect) is masked too.
    again = await client.ws_connect("/ws")
    await again.send_json({"type": "hello", "session": "session-privacy-1"})
    history = await again.receive_json(timeout=TIMEOUT)
    assert MASKED in [m["text"] for m in history["messages"]]
    await again.close()
    assert_nothing_in_clear(json_logs)


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")  # PTB's own
async def test_telegram_masks_in_store_console_and_logs(
    json_logs: io.StringIO,
    aiohttp_client: ClientFactory,
    runtime_models: Path,
    sqlite_url: str,
) -> None:
    async with FakeTelegramApi() as fake:
        settings = runtime_settings(
            runtime_models,
            sqlite_url,
            privacy={"redact": ["email"]},
            telegram={"token": TOKEN, "base_url": fake.base_url},
        )
        app = create_app(settings)
        app[TELEGRAM].retry = RetryPolicy(base_delay_s=0.01)
        app[TELEGRAM].poll_timeout_s = 1
        client = await aiohttp_client(app)
        await fake.enqueue(fake.message_update(5001, SAID))
        await fake.wait_for_message(5001, count=1)

        store = client.app[RUNTIME].store
        conversation = await store.find_conversation("telegram", "5001")
        assert conversation is not None
        [said, *_] = await store.transcript(conversation.id)
        assert said.text == MASKED
        assert MASKED in await console_transcript(client, conversation.id)
        assert_nothing_in_clear(json_logs)


async def test_rest_masks_in_store_console_and_json_logs(
    json_logs: io.StringIO,
    aiohttp_client: ClientFactory,
    runtime_models: Path,
    database_url: str,
) -> None:
    settings = runtime_settings(runtime_models, database_url, privacy={"redact": ["email"]})
    client = await aiohttp_client(create_app(settings))
    response = await client.post("/api/v1/messages", json={"sender": "pay-1", "text": SAID})
    assert response.status == 200, await response.text()
    conversation_id = (await response.json())["conversation_id"]

    [said, *_] = await client.app[RUNTIME].store.transcript(conversation_id)
    assert said.text == MASKED
    assert MASKED in await console_transcript(client, conversation_id)
    transcript = await (await client.get(f"/api/v1/conversations/{conversation_id}")).json()
    assert transcript["messages"][0]["text"] == MASKED
    assert_nothing_in_clear(json_logs)
