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
from bot.core.errors import BadRequestError, ConfigurationError
from bot.core.records import Feedback, Message, Role
from bot.settings import Settings
from connectors.widget import WIDGET, _origin_key, parse_frame, parse_hello
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
    """A socket that said hello for `session` (the history is the next frame)."""
    ws: Socket = await client.ws_connect("/ws", **kwargs)
    await ws.send_json({"type": "hello", "session": session})
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
    assert _origin_key("https://bücher.example") == "https://xn--bcher-kva.example"
    for not_an_origin in (
        "null",
        "shop.example",
        "http://127.0.0.1:8080.evil.example",
        "http://[::1",
        "http://shop.example:99999",
        "https://user@shop.example",
        "https://shop.example/path",
        "ftp://shop.example",
        "http://\udcff.example",
        "http://" + "a" * 3000 + ".example",
    ):
        assert _origin_key(not_an_origin) is None, not_an_origin


def test_an_allowed_origin_that_is_not_one_is_a_configuration_error(
    runtime_models: Path, sqlite_url: str
) -> None:
    settings = settings_for(runtime_models, sqlite_url, allowed_origins=["shop.example"])
    with pytest.raises(ConfigurationError, match="'shop.example' is not an origin"):
        create_app(settings)


def test_the_first_frame_must_be_a_hello() -> None:
    assert parse_hello('{"type":"hello","session":"sess-1234"}', 10) == "sess-1234"
    for frame, says in [
        ('{"type":"message","text":"hi","client_id":"c"}', "the first frame must be"),
        ('{"type":"hello"}', 'field "session"'),
        ('{"type":"hello","session":"short"}', 'field "session"'),
        ('{"type":"hello","session":["sess-1234"]}', "got list"),
        ('{"type":"hello","session":"sess-1234\\u0000"}', 'field "session"'),
        ("[" * 1000 + "]" * 1000, "nested"),
        ('{"type":"hello","session":"' + "s" * 200_000 + '"}', "bytes"),
    ]:
        with pytest.raises(BadRequestError, match=says):
            parse_hello(frame, 10)


# -- the connector on the real app ---------------------------------------------------------------


@pytest.mark.slow
async def test_demo_page_script_and_stylesheet_are_served(client: TestClient[Any, Any]) -> None:
    page = await client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "default-src 'none'" in policy
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
    # The site's icon: browsers ask for /favicon.ico on every page (the console's too).
    assert 'rel="icon" href="/favicon.svg"' in body
    for path in ("/favicon.ico", "/favicon.svg"):
        icon = await client.get(path)
        assert icon.status == 200 and icon.content_type == "image/svg+xml"
        assert (await icon.text()).startswith("<svg")


@pytest.mark.slow
async def test_waiting_is_said_honestly_and_messages_meanwhile_are_acknowledged(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> None:
    settings = runtime_settings(runtime_models, sqlite_url, handoff={"ack_interval_s": 0})
    client = await aiohttp_client(create_app(settings))
    ws, _ = await history(client, "session-w1")
    _, handoff, status = await say(ws, "i want to talk to a human", "w-1")
    assert handoff["route"] == "handoff" and handoff["rateable"] is False
    assert status == {"type": "status", "status": "waiting", "agent": None}
    _, queued, status = await say(ws, "hello? anyone?", "w-2")
    assert (queued["role"], queued["text"]) == (
        "system",
        "Got it, it's in the queue: an agent will see it.",
    )
    assert status == {"type": "status", "status": "waiting", "agent": None}
    await ws.close()


@pytest.mark.slow
async def test_connect_gets_history_and_a_message_gets_ack_reply_and_status(
    client: TestClient[Any, Any],
) -> None:
    ws, first = await history(client, "session-a1")
    assert first == {"type": "history", "status": "bot", "agent": None, "messages": []}
    # Opening the widget is not a conversation: nothing is written until the visitor writes.
    store = client.server.app[RUNTIME].store
    assert await store.find_conversation("widget", "session-a1") is None
    ack, reply, status = await say(ws, "hello there", "c-1")
    assert await store.find_conversation("widget", "session-a1") is not None
    assert ack["type"] == "ack" and ack["client_id"] == "c-1" and ack["duplicate"] is False
    assert reply["type"] == "reply" and reply["role"] == "bot" and reply["route"] == "response"
    assert reply["rateable"] is False and reply["text"]  # a greeting: no thumbs
    assert status == {"type": "status", "status": "bot", "agent": None}
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
    assert bot["rateable"] is False and bot["role"] == "bot"
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
    ack, reply, _ = await say(ws, "how long does a refund take to reach my card?", "c-1")
    assert reply["route"] == "answer" and reply["rateable"] is True
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
    assert handoff["route"] == "handoff"
    assert status == {"type": "status", "status": "waiting", "agent": None}
    # The other tab is brought up to date with the whole transcript.
    refreshed = await receive(tab2)
    assert refreshed["type"] == "history" and refreshed["status"] == "waiting"
    assert [m["role"] for m in refreshed["messages"]] == ["customer", "bot"]

    conversation = await runtime.store.conversation("widget", "session-d1")
    console, ana = await console_as(client.app, "agent-ana")
    await console.claim(conversation.id, ana)
    for tab in (tab1, tab2):  # the claim is told: who joined, and the state
        joined = await receive(tab)
        assert (joined["role"], joined["text"]) == ("system", "agent-ana joined the conversation.")
        assert await receive(tab) == {"type": "status", "status": "claimed", "agent": "agent-ana"}
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
        assert await receive(tab) == {"type": "status", "status": "claimed", "agent": "agent-ana"}
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
    assert (restored["status"], restored["agent"]) == ("claimed", "agent-ana")
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


# -- malformed input: an error frame or a 403, never a dropped socket or a 500 ------------------

# Frames a browser's devtools (or a broken client) can send; each must be answered with an
# error frame, the socket staying open. (id, frame, what the error says)
MALFORMED_FRAMES = [
    ("surrogate", '{"type":"message","text":"hi \\ud800","client_id":"bad-1"}', "lone surrogate"),
    ("surrogate-id", '{"type":"message","text":"hi","client_id":"\\udfff"}', "client_id"),
    ("surrogate-type", '{"type":"\\ud800"}', "unknown frame type"),
    ("nul", '{"type":"message","text":"a\\u0000b","client_id":"bad-2"}', "NUL"),
    ("deep-list", '{"type":"message","text":' + "[" * 1500 + "]" * 1500 + "}", "nested"),
    ("deep-object", '{"a":' * 10_000 + "1" + "}" * 10_000, "nested"),
    ("big-int", '{"type":"feedback","message_id":' + "7" * 5000 + ',"rating":"up"}', "digits"),
    ("id-2^63", '{"type":"feedback","message_id":9223372036854775808,"rating":"up"}', "id"),
    ("id-zero", '{"type":"feedback","message_id":0,"rating":"up"}', "id"),
    ("id-float", '{"type":"feedback","message_id":1e400,"rating":"up"}', "id"),
    ("id-nan", '{"type":"feedback","message_id":NaN,"rating":"up"}', "id"),
    ("empty-client-id", '{"type":"message","text":"hi","client_id":""}', "client_id"),
    ("blank-client-id", '{"type":"message","text":"hi","client_id":"  "}', "client_id"),
    ("not-object", '"hello"', "JSON object"),
    ("empty", "", "not valid JSON"),
]


@pytest.mark.slow
async def test_malformed_frames_get_an_error_frame_and_the_socket_stays_open(
    client: TestClient[Any, Any],
) -> None:
    ws, _ = await history(client, "session-m1")
    answers: dict[str, Any] = {}
    for name, data, _ in MALFORMED_FRAMES:
        await ws.send_str(data)
        answer = await ws.receive(timeout=TIMEOUT)
        answers[name] = answer.json() if answer.type == WSMsgType.TEXT else answer
        if ws.closed:
            ws, _ = await history(client, "session-m1")
    for name, _, says in MALFORMED_FRAMES:
        answer = answers[name]
        assert isinstance(answer, dict) and answer["type"] == "error", (name, answer)
        assert says in answer["error"], (name, answer)
    # The client id is echoed when the frame has a usable one, so the widget can drop it.
    assert answers["surrogate"]["client_id"] == "bad-1" and answers["surrogate"]["retry"] is False
    assert answers["nul"]["client_id"] == "bad-2"
    assert "client_id" not in answers["empty-client-id"]

    # Binary frames, and frames larger than the limit (not buffered past it: 1009 beyond).
    await ws.send_bytes(b"\xff" * 10)
    assert "binary frames" in (await receive(ws))["error"]
    limit = client.app[WIDGET].max_frame_bytes
    padding = "x" * (limit + 1)
    await ws.send_str('{"type":"typing","padding":"' + padding + '"}')
    too_big = await receive(ws)
    assert too_big["type"] == "error" and f"at most {limit} bytes" in too_big["error"]

    # Still the same socket, and the next real message is stored and answered.
    ack, reply, _ = await say(ws, "hello there", "good-1")
    assert ack["type"] == "ack" and ack["duplicate"] is False and reply["type"] == "reply"
    assert not ws.closed
    ack2, *_ = await say(ws, "where is my order", "good-2")
    assert ack2["type"] == "ack" and ack2["duplicate"] is False
    runtime = client.app[RUNTIME]
    conversation = await runtime.store.conversation("widget", "session-m1")
    customer = [
        m.text for m in await runtime.store.transcript(conversation.id) if m.role == Role.CUSTOMER
    ]
    assert customer == ["hello there", "where is my order"]
    await ws.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("payload", "code"),
    [
        # RFC 6455 says to fail the connection on a text frame that is not UTF-8 (a lone
        # surrogate written as raw bytes), and the server never reads a frame this large.
        (b'{"type":"typing","x":"\xed\xa0\x80"}', WSCloseCode.INVALID_TEXT),
        (None, WSCloseCode.MESSAGE_TOO_BIG),
    ],
    ids=["not-utf8", "past-the-hard-limit"],
)
async def test_protocol_violations_close_with_their_code_not_1006(
    client: TestClient[Any, Any], payload: bytes | None, code: WSCloseCode
) -> None:
    ws, _ = await history(client, "session-m2")
    if payload is None:
        hard = client.app[WIDGET].max_frame_bytes * 4
        payload = ('{"type":"typing","padding":"' + "x" * hard + '"}').encode()
    await ws.send_frame(payload, WSMsgType.TEXT)
    closing = await ws.receive(timeout=TIMEOUT)
    assert closing.type == WSMsgType.CLOSE and closing.data == code
    for _ in range(50):
        if not client.app[WIDGET].open_sockets("session-m2"):
            break
        await asyncio.sleep(0.05)
    assert client.app[WIDGET].open_sockets("session-m2") == []


async def test_malformed_origins_are_refused_with_403_never_500(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> None:
    client = await aiohttp_client(
        create_app(
            settings_for(runtime_models, sqlite_url, allowed_origins=["https://shop.example"])
        )
    )
    host = client.make_url("/").raw_authority
    origins = [
        f"http://{host}.evil.example",
        f"http://{host}evil.example",
        "null",
        "http://[::1",
        "http://[::1]:99999",
        "http://" + "a" * 3000 + ".example",
        "https://shop.example.evil.example",
        "https://" + "b" * 64 + ".example",
        "http://xn--.example",
        "",
        " ",
        "://",
        "http://",
        "https://shop.example@evil.example",
    ]
    for origin in origins:
        response = await client.get(
            "/ws",
            headers={
                "Origin": origin,
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        assert response.status == 403, (origin[:80], response.status, await response.text())
        assert len(await response.text()) < 600


async def test_an_origin_that_is_not_utf8_is_refused_with_403(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> None:
    client = await aiohttp_client(create_app(settings_for(runtime_models, sqlite_url)))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: "
        + client.make_url("/").raw_authority.encode()
        + b"\r\nOrigin: http://\xff\xfe.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), TIMEOUT)
    writer.close()
    assert status_line.split()[1] == b"403", status_line


# -- the hello frame: the session id never travels in the URL ------------------------------------


async def refused_before_hello(ws: Socket) -> str:
    """The error frame a socket gets before it is closed with 1008; returns its text."""
    error = await receive(ws)
    assert error["type"] == "error" and "client_id" not in error
    closing = await ws.receive(timeout=TIMEOUT)
    assert closing.type == WSMsgType.CLOSE and closing.data == WSCloseCode.POLICY_VIOLATION
    text: str = error["error"]
    return text


@pytest.mark.slow
async def test_the_history_comes_only_after_a_hello_frame(client: TestClient[Any, Any]) -> None:
    runtime = client.app[RUNTIME]
    ws, first = await history(client, "session-k1")
    _, reply, _ = await say(ws, "hello there", "k-1")
    # A second hello cannot switch the socket to another session.
    await ws.send_json({"type": "hello", "session": "session-k2"})
    assert "already said hello" in (await receive(ws))["error"]
    ack, *_ = await say(ws, "where is my order", "k-2")
    assert ack["type"] == "ack"
    await ws.close()
    assert await runtime.store.find_conversation("widget", "session-k2") is None

    # The URL's session is not a session: a socket must say hello, whatever its query says.
    for opening in (
        {"type": "message", "text": "hello there", "client_id": "x-1"},
        {"type": "feedback", "message_id": reply["message_id"], "rating": "down"},
        {"type": "typing"},
        {"type": "hello"},
        {"type": "hello", "session": "short"},
        {"type": "hello", "session": "session-k1/../x"},
        {"type": "hello", "session": 12345678},
        {"type": "hello", "session": "s" * 101},
    ):
        sneaky = await client.ws_connect("/ws?session=session-k1")
        await sneaky.send_json(opening)
        says = await refused_before_hello(sneaky)
        assert "hello" in says or "session" in says, says
    binary = await client.ws_connect("/ws")
    await binary.send_bytes(b'{"type": "hello", "session": "session-k1"}')
    assert "binary" in await refused_before_hello(binary)
    conversation = await runtime.store.conversation("widget", "session-k1")
    assert len(await runtime.store.transcript(conversation.id)) == 4  # nothing slipped in
    assert await runtime.store.feedback(reply["message_id"]) == []


@pytest.mark.slow
async def test_a_socket_that_never_says_hello_is_closed(client: TestClient[Any, Any]) -> None:
    client.app[WIDGET].hello_timeout_s = 0.3
    silent = await client.ws_connect("/ws")
    assert "no hello frame within 0.3 s" in await refused_before_hello(silent)
    assert client.app[WIDGET].open_sockets("session-k3") == []
