"""The widget connector in-process: aiohttp test client, real WebSocket client, real models."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.test_utils import TestClient

from bot.app.factory import RUNTIME, create_app
from bot.core.errors import BadRequestError
from bot.core.records import Feedback, Message, Role
from bot.settings import Settings
from connectors.widget import WIDGET, _origin_key, parse_frame
from tests.helpers import console_as, runtime_settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
Socket = aiohttp.ClientWebSocketResponse
TIMEOUT = 20.0


def settings_for(models: Path, db_url: str, **widget: Any) -> Settings:
    return runtime_settings(models, db_url, widget=widget)


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings_for(runtime_models, sqlite_url)))


async def connect(client: TestClient[Any, Any], session: str, **kwargs: Any) -> Socket:
    ws: Socket = await client.ws_connect(f"/ws?session={session}", **kwargs)
    return ws


async def receive(ws: Socket) -> dict[str, Any]:
    frame: dict[str, Any] = await ws.receive_json(timeout=TIMEOUT)
    return frame


async def history(client: TestClient[Any, Any], session: str) -> tuple[Socket, dict[str, Any]]:
    ws = await connect(client, session)
    frame = await receive(ws)
    assert frame["type"] == "history"
    return ws, frame


async def history_with_origin(
    client: TestClient[Any, Any], origin: str
) -> tuple[Socket, dict[str, Any]]:
    ws = await connect(client, "session-e1", headers={"Origin": origin})
    return ws, await receive(ws)


async def say(ws: Socket, text: str, client_id: str) -> list[dict[str, Any]]:
    """Send a message; the frames it produces, ack to status."""
    await ws.send_json({"type": "message", "text": text, "client_id": client_id})
    frames = [await receive(ws)]
    while frames[-1]["type"] not in ("status", "error"):
        frames.append(await receive(ws))
    return frames


async def nothing_arrives(ws: Socket, seconds: float = 0.5) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=seconds)


# -- parser and origin rules (no models) ---------------------------------------------------------


def test_frames_parse_into_the_runtimes_own_types() -> None:
    message = parse_frame('{"type":"message","text":"  hi ","client_id":"c1"}', "sess1234", 10)
    assert message == Message(channel="widget", sender="sess1234", text="hi", client_id="c1")
    feedback = parse_frame('{"type":"feedback","message_id":7,"rating":"down"}', "sess1234", 10)
    assert feedback == Feedback(message_id=7, rating="down", author="widget:sess1234")
    assert parse_frame('{"type":"typing"}', "sess1234", 10) is None


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        ("{nope", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        ('{"type":"dance"}', "unknown frame type 'dance'"),
        ('{"type":"message","text":"   ","client_id":"c"}', '"text" is empty'),
        ('{"type":"message","text":"\\ud800","client_id":"c"}', "lone surrogate"),
        ('{"type":"message","text":"hi","client_id":""}', '"client_id" must be a string'),
        ('{"type":"message","text":' + "[" * 100 + "]" * 100 + "}", "nested more than"),
        ('{"type":"feedback","message_id":' + "9" * 30 + ',"rating":"up"}', "digits"),
        ('{"type":"feedback","message_id":9223372036854775808,"rating":"up"}', "integer id"),
        ('{"type":"message","text":"hello world","client_id":"c"}', "the limit is 10"),
        ('{"type":"message","text":"hi"}', '"client_id" must be a string'),
        ('{"type":"feedback","message_id":"7","rating":"up"}', '"message_id" must be the integer'),
        ('{"type":"feedback","message_id":true,"rating":"up"}', '"message_id" must be the integer'),
        ('{"type":"feedback","message_id":7,"rating":"meh"}', '"rating" must be "up" or "down"'),
    ],
)
def test_bad_frames_are_refused_with_a_reason(frame: str, says: str) -> None:
    with pytest.raises(BadRequestError) as error:
        parse_frame(frame, "sess1234", 10)
    assert says in str(error.value)


def test_origins_compare_by_scheme_host_and_port() -> None:
    assert _origin_key("HTTPS://Shop.Example/") == "https://shop.example"
    assert _origin_key("https://shop.example:443") == "https://shop.example"
    assert _origin_key("http://shop.example:8080") == "http://shop.example:8080"
    assert _origin_key("https://shop.example") != _origin_key("http://shop.example")


# -- the connector on the real app ---------------------------------------------------------------


@pytest.mark.slow
async def test_demo_page_script_and_stylesheet_are_served(client: TestClient[Any, Any]) -> None:
    page = await client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    body = await page.text()
    assert 'src="/widget.js" data-title="Brightcart support" defer' in body
    assert "Brightcart" in body and f"{client.make_url('/widget.js')}" in body
    assert "&lt;script src=" in body  # the embed snippet is shown, not executed
    script = await client.get("/widget.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert script.charset == "utf-8"
    text = await script.text()
    config = (
        '/*config*/{"title": "Brightcart support", "maxQueued": 50, "maxChars": 4000}/*config*/'
    )
    assert config in text
    assert "innerHTML" not in text
    css = await client.get("/widget.css")
    assert css.status == 200 and css.content_type == "text/css"


@pytest.mark.slow
async def test_connect_gets_history_and_a_message_gets_ack_reply_and_status(
    client: TestClient[Any, Any],
) -> None:
    ws, first = await history(client, "session-a1")
    assert first == {"type": "history", "status": "bot", "messages": []}
    # Opening the widget is not a conversation: nothing is written until the visitor writes.
    store = client.server.app[RUNTIME].store
    assert await store.find_conversation("widget", "session-a1") is None
    ack, reply, status = await say(ws, "hello there", "c-1")
    assert await store.find_conversation("widget", "session-a1") is not None
    assert ack["type"] == "ack" and ack["client_id"] == "c-1" and ack["duplicate"] is False
    assert reply["type"] == "reply" and reply["role"] == "bot" and reply["route"] == "response"
    assert reply["rateable"] is True and reply["text"]
    assert status == {"type": "status", "status": "bot"}
    await ws.close()

    # A reload: the transcript comes back, with the client's ids, in order.
    ws, again = await history(client, "session-a1")
    customer, bot = again["messages"]
    assert customer == {
        "message_id": ack["message_id"],
        "role": "customer",
        "text": "hello there",
        "route": None,
        "rateable": False,
        "quick_replies": [],
        "client_id": "c-1",
    }
    assert bot["message_id"] == reply["message_id"] and bot["text"] == reply["text"]
    assert bot["rateable"] is True and bot["role"] == "bot"
    await ws.close()


@pytest.mark.slow
async def test_a_message_resent_after_a_reconnect_is_answered_once(
    client: TestClient[Any, Any],
) -> None:
    runtime = client.app[RUNTIME]
    # Sent, then the connection drops before the ack could be read.
    ws, _ = await history(client, "session-b1")
    await ws.send_json({"type": "message", "text": "where is my order", "client_id": "c-9"})
    await ws.close()
    # The browser reconnects and sends its un-acked message again.
    ws, _ = await history(client, "session-b1")
    ack, *replies, status = await say(ws, "where is my order", "c-9")
    assert ack["type"] == "ack" and status["type"] == "status"
    conversation = await runtime.store.conversation("widget", "session-b1")
    transcript = await runtime.store.transcript(conversation.id)
    customer = [m for m in transcript if m.role == Role.CUSTOMER]
    assert [(m.id, m.client_id) for m in customer] == [(ack["message_id"], "c-9")]
    assert [m.id for m in transcript if m.role != Role.CUSTOMER] == [
        r["message_id"] for r in replies
    ]
    assert len(transcript) == 2

    # Once more, acked this time: same message id, same reply, nothing new stored.
    again_ack, *again_replies, _ = await say(ws, "where is my order", "c-9")
    assert again_ack["duplicate"] is True and again_ack["message_id"] == ack["message_id"]
    assert [r["message_id"] for r in again_replies] == [r["message_id"] for r in replies]
    assert len(await runtime.store.transcript(conversation.id)) == 2
    await ws.close()


@pytest.mark.slow
async def test_feedback_is_stored_for_own_rateable_replies_only(
    client: TestClient[Any, Any],
) -> None:
    runtime = client.app[RUNTIME]
    ws, _ = await history(client, "session-c1")
    ack, reply, _ = await say(ws, "hello there", "c-1")
    await ws.send_json({"type": "feedback", "message_id": reply["message_id"], "rating": "down"})
    assert await receive(ws) == {"type": "feedback_ok", "message_id": reply["message_id"]}
    [stored] = await runtime.store.feedback(reply["message_id"])
    assert stored.rating == "down" and stored.author == "widget:session-c1"

    # Not a bot answer, or someone else's: refused, and the socket keeps working.
    await ws.send_json({"type": "feedback", "message_id": ack["message_id"], "rating": "up"})
    refused = await receive(ws)
    assert refused["type"] == "error" and "not a rateable bot answer" in refused["error"]
    other, _ = await history(client, "session-c2")
    await other.send_json({"type": "feedback", "message_id": reply["message_id"], "rating": "up"})
    foreign = await receive(other)
    assert foreign["type"] == "error" and "not part of this conversation" in foreign["error"]
    assert len(await runtime.store.feedback(reply["message_id"])) == 1
    await ws.close()
    await other.close()


@pytest.mark.slow
async def test_agent_replies_reach_every_tab_of_that_session_only(
    client: TestClient[Any, Any],
) -> None:
    runtime = client.app[RUNTIME]
    tab1, _ = await history(client, "session-d1")
    tab2, _ = await history(client, "session-d1")
    stranger, _ = await history(client, "session-d2")
    _, handoff, status = await say(tab1, "i want to talk to a human", "c-1")
    assert handoff["route"] == "handoff" and status == {"type": "status", "status": "waiting"}
    # The other tab is brought up to date with the whole transcript.
    refreshed = await receive(tab2)
    assert refreshed["type"] == "history" and refreshed["status"] == "waiting"
    assert [m["role"] for m in refreshed["messages"]] == ["customer", "bot"]

    conversation = await runtime.store.conversation("widget", "session-d1")
    console, ana = await console_as(client.app, "agent-ana")
    await console.claim(conversation.id, ana)
    sent, _ = await console.reply(conversation.id, ana, "Hi, Ana here. <b>ok</b>")
    for tab in (tab1, tab2):
        pushed = await receive(tab)
        assert pushed == {
            "type": "reply",
            "message_id": sent.id,
            "role": "agent",
            "text": "Hi, Ana here. <b>ok</b>",
            "route": "agent",
            "rateable": False,
            "quick_replies": [],
        }
        assert await receive(tab) == {"type": "status", "status": "claimed"}
    await nothing_arrives(stranger)

    # No tab open: nothing to push, nothing fails; the next connect shows it.
    for ws in (tab1, tab2, stranger):
        await ws.close()
    for _ in range(50):
        if not client.app[WIDGET].open_sockets("session-d1"):
            break
        await asyncio.sleep(0.05)
    assert client.app[WIDGET].open_sockets("session-d1") == []
    later, _ = await console.reply(conversation.id, ana, "Still there?")
    ws, restored = await history(client, "session-d1")
    assert restored["status"] == "claimed"
    assert [(m["role"], m["message_id"]) for m in restored["messages"][-2:]] == [
        ("agent", sent.id),
        ("agent", later.id),
    ]
    await ws.close()


@pytest.mark.slow
async def test_origin_check_on_the_handshake(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> None:
    app = create_app(
        settings_for(runtime_models, sqlite_url, allowed_origins=["https://shop.example"])
    )
    client = await aiohttp_client(app)
    own = str(client.make_url("/")).rstrip("/")
    for origin in (own, "https://shop.example", "https://SHOP.example:443"):
        ws, frame = await history_with_origin(client, origin)
        assert frame["type"] == "history"
        await ws.close()
    for origin in ("https://evil.example", "http://shop.example", "null"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(client, "session-e1", headers={"Origin": origin})
        assert refused.value.status == 403
    bad = await client.get("/ws?session=x", headers={"Upgrade": "websocket"})
    assert bad.status == 400 and "session" in await bad.text()


@pytest.mark.slow
async def test_a_star_allows_any_origin(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> None:
    client = await aiohttp_client(
        create_app(settings_for(runtime_models, sqlite_url, allowed_origins=["*"]))
    )
    ws = await connect(client, "session-f1", headers={"Origin": "https://anywhere.example"})
    assert (await receive(ws))["type"] == "history"
    await ws.close()


@pytest.mark.slow
async def test_invalid_frames_get_an_error_and_the_socket_keeps_working(
    client: TestClient[Any, Any],
) -> None:
    ws, _ = await history(client, "session-g1")
    await ws.send_str("{nope")
    assert "not valid JSON" in (await receive(ws))["error"]
    await ws.send_json({"type": "dance"})
    assert "unknown frame type" in (await receive(ws))["error"]
    await ws.send_json({"type": "message", "text": "a" * 4001, "client_id": "long-1"})
    too_long = await receive(ws)
    assert too_long == {
        "type": "error",
        "error": 'field "text" has 4001 characters; the limit is 4000',
        "client_id": "long-1",
        "retry": False,
    }
    await ws.send_bytes(b"\x00\x01")
    assert "binary frames" in (await receive(ws))["error"]
    await ws.send_json({"type": "typing"})
    ack, reply, _ = await say(ws, "hello there", "ok-1")
    assert ack["type"] == "ack" and reply["type"] == "reply"
    runtime = client.app[RUNTIME]
    conversation = await runtime.store.conversation("widget", "session-g1")
    assert [m.text for m in await runtime.store.transcript(conversation.id)][0] == "hello there"
    assert not ws.closed
    await ws.close()


@pytest.mark.slow
async def test_server_shutdown_closes_open_sockets(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> None:
    client = await aiohttp_client(create_app(settings_for(runtime_models, sqlite_url)))
    ws, _ = await history(client, "session-h1")
    await client.app.shutdown()
    closing = await ws.receive(timeout=TIMEOUT)
    assert closing.type == WSMsgType.CLOSE and closing.data == WSCloseCode.GOING_AWAY
    assert client.app[WIDGET].open_sockets("session-h1") == []
