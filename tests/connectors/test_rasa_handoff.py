"""A conversation Rasa handed over (issue 18, item 4): the agent's reply cannot be pushed into
Rasa's channel, and the console says so (`delivered: false`), never `delivered: true`.

The real app in-process: the Rasa action server's hand-off call (`POST /api/v1/handoff`), then an
agent signed in to the console over HTTP (session cookie, CSRF token) who claims and replies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.app.factory import create_app
from connectors.console import CONSOLE
from tests.connectors.test_console import PASSWORD, ClientFactory, Person
from tests.helpers import runtime_settings

pytestmark = pytest.mark.slow


async def test_an_agent_reply_to_a_rasa_conversation_is_reported_undelivered(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> None:
    client = await aiohttp_client(create_app(runtime_settings(runtime_models, sqlite_url)))
    await client.server.app[CONSOLE].accounts.add("ana", "agent", PASSWORD)
    # What connectors/rasa_actions.py sends for action_supportbot_handoff.
    handed = await client.post(
        "/api/v1/handoff", json={"sender": "customer-42", "text": "I want to talk to a person"}
    )
    assert handed.status == 200, await handed.text()
    body: dict[str, Any] = await handed.json()
    conversation_id = body["conversation_id"]
    assert (body["status"], body["agent"]) == ("waiting", None)

    ana = Person(client)
    try:
        assert (await ana.sign_in("ana")).status == 200
        status, _ = await ana.post(f"/conversations/{conversation_id}/claim")
        assert status == 200
        status, sent = await ana.post(
            f"/conversations/{conversation_id}/reply", {"text": "Hi, Ana here."}
        )
        assert status == 201
        assert sent["delivered"] is False  # Rasa's channel was not reached: not claimed
        # ... and the agent is told why (not "they will see it when they reconnect").
        reason = sent["undelivered_reason"]
        assert "no connector delivers to channel 'rasa'" in reason
        assert "GET /api/v1/conversations/{id}" in reason
    finally:
        await ana.http.close()

    # The reply is kept where a Rasa client can read it, with who has the conversation.
    transcript = await (await client.get(f"/api/v1/conversations/{conversation_id}")).json()
    assert (transcript["channel"], transcript["status"], transcript["agent"]) == (
        "rasa",
        "claimed",
        "ana",
    )
    texts = [(m["role"], m["text"]) for m in transcript["messages"]]
    assert texts[-2:] == [("system", "ana joined the conversation."), ("agent", "Hi, Ana here.")]
