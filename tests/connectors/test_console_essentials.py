"""The console's essentials over HTTP, in-process (the real app, real models, real SQLite):
per-message labels that `supportbot retrain` learns from, the runtime's annotations of a
customer message (entities, out of scope), search and history, canned responses, private
notes, transfers and CSAT. (Rendering in Chromium: test_console_essentials_browser.py.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bot.app.factory import RUNTIME, create_app
from bot.core.csat import QUESTION
from bot.core.records import Role, StoredMessage
from bot.core.service import reply_of
from connectors.console import CONSOLE, render_message
from connectors.telegram import render_reply
from tests.connectors.test_console import (
    PASSWORD,
    Person,
    say,
    widget_customer,
    widget_frame,
)
from tests.helpers import angry, runtime_settings, understanding
from training.feedback import read_feedback
from training.registry import FileModelRegistry
from training.retrain import RetrainOptions, plan_task

pytestmark = pytest.mark.slow

NOW = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    runtime_models: Path,
    sqlite_url: str,
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def make(**sections: dict[str, Any]) -> TestClient[Any, Any]:
        client = await aiohttp_client(
            create_app(runtime_settings(runtime_models, sqlite_url, **sections))
        )
        accounts = client.server.app[CONSOLE].accounts
        await accounts.add("ana", "agent", PASSWORD)
        await accounts.add("bo", "agent", PASSWORD)
        await accounts.add("olga", "operator", PASSWORD)
        return client

    return make


async def customer_said(
    client: TestClient[Any, Any], sender: str, text: str, **details: Any
) -> tuple[str, int]:
    """A REST customer's message as the runtime stores it (annotated, with `details`), and
    the conversation escalated: (conversation id, message id)."""
    store = client.server.app[RUNTIME].store
    conversation = await store.conversation("rest", sender)
    message, _ = await store.add_customer_message(conversation.id, text)
    await store.annotate(message.id, understanding(), "handoff", 12.0, details=details or None)
    if (await store.get_conversation(conversation.id)).status == "bot":
        await store.escalate(conversation.id, angry())
    return conversation.id, message.id


# -- 1. per-message labels, annotations ---------------------------------------------------------


def test_a_customer_message_shows_its_entities_and_the_out_of_scope_verdict() -> None:
    details = {
        "entities": [
            {"type": "order_id", "value": "BC-104522", "text": "bc-104522", "start": 6, "end": 15},
            {"type": "amount", "value": 24.5, "text": "€24.50", "start": 20, "end": 26},
            "garbage",
            {"type": 3, "text": "no type"},
            {"type": "email", "text": "a@b.example", "start": "x"},
        ],
        "out_of_scope": True,
        "oos_score": 0.87,
    }
    said = StoredMessage(1, "c", Role.CUSTOMER, "order bc-104522 for €24.50", NOW, details=details)
    rendered = render_message(said)
    assert rendered["entities"] == [
        {"type": "order_id", "value": "BC-104522", "text": "bc-104522", "start": 6, "end": 15},
        {"type": "amount", "value": 24.5, "text": "€24.50", "start": 20, "end": 26},
        # A malformed offset is dropped, the value defaults to the text.
        {
            "type": "email",
            "value": "a@b.example",
            "text": "a@b.example",
            "start": None,
            "end": None,
        },
    ]
    assert (rendered["out_of_scope"], rendered["oos_score"]) == (True, 0.87)
    plain = render_message(StoredMessage(2, "c", Role.CUSTOMER, "hi", NOW))
    assert (plain["entities"], plain["out_of_scope"], plain["oos_score"]) == ([], None, None)
    # A bot message carries none, whatever its details say.
    bot = render_message(StoredMessage(3, "c", Role.BOT, "hello", NOW, details=details))
    assert (bot["entities"], bot["out_of_scope"]) == ([], None)


async def test_a_console_sentiment_label_reaches_the_retrain_training_set(
    make_client: Any, runtime_models: Path
) -> None:
    client = await make_client()
    ana = Person(client)
    try:
        assert (await ana.sign_in("ana")).status == 200
        cid, said = await customer_said(client, "s1", "thanks, that fixed it, you are great")
        _, weather = await customer_said(client, "s2", "what's the weather in Lisbon tomorrow")

        # out_of_scope is offered, and a message can be labelled with it and a sentiment.
        status, intents = await ana.get("/intents")
        assert status == 200 and "out_of_scope" in intents["intents"]
        assert (await ana.post(f"/messages/{said}/labels", {"sentiment": "positive"}))[0] == 201
        status, _ = await ana.post(
            f"/messages/{weather}/labels", {"intent": "out_of_scope", "sentiment": "neutral"}
        )
        assert status == 201
        status, view = await ana.get(f"/conversations/{cid}")
        [message] = [m for m in view["messages"] if m["id"] == said]
        assert message["labels"]["sentiment"] == "positive" and message["labels"]["by"] == "ana"
        # A sentiment on a bot message is refused.
        bot = await client.server.app[RUNTIME].store.add_message(cid, Role.BOT, "glad to help")
        status, error = await ana.post(f"/messages/{bot.id}/labels", {"sentiment": "positive"})
        assert status == 400 and "customer messages" in error["error"]

        feedback = await read_feedback(client.server.app[RUNTIME].store)
    finally:
        await ana.http.close()

    assert {(x.text, x.label, x.author) for x in feedback.sentiments} == {
        ("thanks, that fixed it, you are great", "positive", "ana"),
        ("what's the weather in Lisbon tomorrow", "neutral", "ana"),
    }
    assert [(x.text, x.label) for x in feedback.intents] == [
        ("what's the weather in Lisbon tomorrow", "out_of_scope")
    ]
    registry = FileModelRegistry(runtime_models)
    plan = plan_task("sentiment", registry, feedback, RetrainOptions(progress=False))
    assert plan.skip is None
    trained = {(e.text, e.label) for e in plan.train_feedback}
    assert ("thanks, that fixed it, you are great", "positive") in trained
    assert ("what's the weather in Lisbon tomorrow", "neutral") in trained
    intent_plan = plan_task("intent", registry, feedback, RetrainOptions(progress=False))
    # One label of a new intent is too few to learn it; it is reported, not dropped silently.
    assert intent_plan.too_few == {"out_of_scope": 1}


# -- 2. search and history ----------------------------------------------------------------------


async def test_search_and_history_over_http(make_client: Any) -> None:
    client = await make_client()
    ana = Person(client)
    store = client.server.app[RUNTIME].store
    try:
        assert (await ana.sign_in("ana")).status == 200
        first, _ = await customer_said(client, "ada-1", "my parcel never arrived")
        await store.conversation("rest", "ada-1", "Ada Lovelace")
        await ana.post(f"/conversations/{first}/claim")
        assert (await ana.post(f"/conversations/{first}/resolve"))[0] == 200
        other = (await store.conversation("widget", "w-1", "Ada Lovelace")).id
        await store.add_customer_message(other, "parcel 2 is late as well")

        status, page = await ana.get("/search?q=PARCEL&status=resolved")
        assert status == 200
        assert (page["total"], page["page"], page["pages"]) == (1, 1, 1)
        [hit] = page["results"]
        assert hit["conversation_id"] == first and hit["customer"] == "Ada Lovelace"
        assert hit["escalation"]["outcome"] == "resolved"
        assert hit["snippet"]["text"] == "my parcel never arrived"
        today = datetime.now(UTC).date().isoformat()
        status, page = await ana.get(f"/search?customer=ada&from={today}&to={today}&per_page=1")
        assert status == 200 and page["total"] == 2 and page["pages"] == 2
        assert [r["conversation_id"] for r in page["results"]] == [other]
        status, page = await ana.get("/search?customer=ada&to=2020-01-01")
        assert status == 200 and page["results"] == []

        status, history = await ana.get(f"/conversations/{first}/history")
        assert status == 200
        assert [e["outcome"] for e in history["episodes"]] == ["resolved"]
        assert [h["conversation_id"] for h in history["others"]] == [other]

        for bad, says in (
            ("status=done", "status must be one of"),
            ("from=yesterday", "must be a date like"),
            ("from=2026-12-08&to=2026-12-01", "the date range is empty"),
            ("per_page=1000", "per_page must be"),
            ("page=0", "page must be"),
            ("q=%00", "NUL"),
            (f"q={'x' * 201}", "at most 200"),
        ):
            status, error = await ana.get(f"/search?{bad}")
            assert status == 400 and says in error["error"], (bad, error)
        assert (await ana.get(f"/conversations/{'0' * 32}/history"))[0] == 404
    finally:
        await ana.http.close()


# -- 3. canned responses and notes ---------------------------------------------------------------


async def test_canned_responses_and_notes_over_http(make_client: Any) -> None:
    client = await make_client()
    ana = Person(client)
    try:
        assert (await ana.sign_in("ana")).status == 200
        cid, _ = await customer_said(
            client, "ada", "where is bc-1", entities=[{"type": "order_id", "value": "BC-1"}]
        )
        await client.server.app[RUNTIME].store.conversation("rest", "ada", "Ada Byron")
        body = {"shortcut": "late", "title": "Late", "text": "Hi {first_name}, {order_id}: {x}"}
        status, created = await ana.post("/canned-responses", body)
        assert status == 201 and created["canned_response"]["author"] == "ana"
        canned_id = created["canned_response"]["id"]
        assert (await ana.post("/canned-responses", body))[0] == 409
        status, listed = await ana.get(f"/canned-responses?conversation_id={cid}")
        [item] = listed["canned_responses"]
        assert (item["filled"], item["missing"]) == ("Hi Ada, BC-1: {x}", ["x"])
        assert (await ana.get(f"/canned-responses?conversation_id={'0' * 32}"))[0] == 404

        # PUT and DELETE need the CSRF token like every change.
        changed = {**body, "text": "Hello {name}"}
        async with ana.http.put(f"/console/api/canned-responses/{canned_id}", json=changed) as r:
            assert r.status == 403
        headers = {"X-CSRF-Token": ana.csrf}
        async with ana.http.put(
            f"/console/api/canned-responses/{canned_id}", json=changed, headers=headers
        ) as r:
            assert r.status == 200 and (await r.json())["canned_response"]["text"] == "Hello {name}"
        async with ana.http.delete(
            f"/console/api/canned-responses/{canned_id}", headers=headers
        ) as r:
            assert r.status == 204
        async with ana.http.delete(
            f"/console/api/canned-responses/{canned_id}", headers=headers
        ) as r:
            assert r.status == 404
        assert (await ana.post("/canned-responses", {**body, "shortcut": "Bad one"}))[0] == 400

        status, note = await ana.post(f"/conversations/{cid}/notes", {"text": "call back at 5"})
        assert status == 201 and note["note"]["author"] == "ana"
        assert (await ana.post(f"/conversations/{cid}/notes", {"text": "  "}))[0] == 400
        assert (await ana.post(f"/conversations/{'0' * 32}/notes", {"text": "x"}))[0] == 404
        status, view = await ana.get(f"/conversations/{cid}")
        assert [n["text"] for n in view["notes"]] == ["call back at 5"]
        assert all("call back" not in m["text"] for m in view["messages"])
    finally:
        await ana.http.close()


# -- 5. CSAT ---------------------------------------------------------------------------------


async def test_a_widget_customer_rates_the_help_after_resolve_and_the_dashboard_shows_it(
    make_client: Any,
) -> None:
    client = await make_client()
    ana, olga = Person(client), Person(client)
    store = client.server.app[RUNTIME].store
    ws = await widget_customer(client, "csat-session-0001")
    try:
        assert (await ana.sign_in("ana")).status == 200
        assert (await olga.sign_in("olga")).status == 200
        await widget_frame(ws, "history")
        await say(ws, "hello", "m1")
        cid = (await store.conversation("widget", "csat-session-0001")).id
        await store.escalate(cid, angry())
        assert (await ana.post(f"/conversations/{cid}/claim"))[0] == 200
        assert (await ana.post(f"/conversations/{cid}/resolve"))[0] == 200

        # The question arrives in the widget with the five scores as quick replies.
        while True:
            frame = await widget_frame(ws, "reply")
            if frame["text"] == QUESTION:
                break
        assert frame["quick_replies"] == ["1", "2", "3", "4", "5"]
        await ws.send_json({"type": "message", "text": "4", "client_id": "m2"})
        thanks = await widget_frame(ws, "reply")
        assert (thanks["role"], thanks["text"]) == ("bot", "Thank you for rating us 4/5!")
        assert thanks["rateable"] is False

        status, dashboard = await olga.get("/dashboard?days=7")
        assert status == 200
        assert dashboard["csat"] == {
            "mean": 4.0,
            "count": 1,
            "distribution": {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0},
        }
        # The rating is kept on the customer's message, for agents to see.
        status, view = await ana.get(f"/conversations/{cid}")
        [rated] = [m for m in view["messages"] if m["text"] == "4"]
        assert rated["route"] == "csat"
    finally:
        await ws.close()
        await ana.http.close()
        await olga.http.close()


def test_telegram_shows_the_rating_question_with_a_button_per_score() -> None:
    question = StoredMessage(
        7,
        "c",
        Role.SYSTEM,
        QUESTION,
        NOW,
        details={"event": "csat_request", "quick_replies": ["1", "2", "3", "4", "5"]},
    )
    [sent] = render_reply(reply_of(question))
    keyboard = sent["reply_markup"].inline_keyboard
    assert [button.text for row in keyboard for button in row] == ["1", "2", "3", "4", "5"]
