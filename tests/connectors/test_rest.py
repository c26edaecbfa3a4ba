"""The REST API: the endpoints the Rasa action server calls, and who may call what (API keys,
channels, the local caller, the start-up check); real app in-process, real models, SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.app.factory import RUNTIME, create_app
from bot.core.errors import ConfigurationError, UnauthorizedError
from bot.core.records import ConversationStatus, Role
from bot.settings import Settings
from bot.store.api_keys import SqlApiKeyStore
from bot.store.conversations import SqlConversationStore
from connectors.rest import (
    ANONYMOUS_CALLER,
    DEFAULT_CHANNELS,
    HANDOFF_TEXT,
    LOCAL_CALLER,
    bearer_key,
    is_loopback,
    keyless_caller,
)
from tests.helpers import runtime_settings

pytestmark = pytest.mark.slow

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
MIN_SCORE = 0.5


def settings_for(models: Path, db_url: str) -> Settings:
    return runtime_settings(models, db_url, retrieval={"min_score": MIN_SCORE})


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "supportbot.db"


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, runtime_models: Path, db_path: Path
) -> TestClient[Any, Any]:
    settings = settings_for(runtime_models, f"sqlite+aiosqlite:///{db_path}")
    return await aiohttp_client(create_app(settings))


async def post(
    client: TestClient[Any, Any],
    path: str,
    body: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    response = await client.post(path, json=body, headers=headers)
    assert response.status == status, await response.text()
    payload: dict[str, Any] = await response.json()
    return payload


async def issue(
    client: TestClient[Any, Any], name: str, channels: tuple[str, ...] = DEFAULT_CHANNELS
) -> dict[str, str]:
    """A new API key (as `supportbot api-keys create` makes it), as request headers."""
    issued = await SqlApiKeyStore(client.app[RUNTIME].store).create(name, channels)
    return {"Authorization": f"Bearer {issued.key}"}


async def telegram_chat(client: TestClient[Any, Any]) -> tuple[str, int]:
    """A Telegram customer's conversation, as the Telegram connector stores it: its id and
    the bot's reply's message id."""
    store = client.app[RUNTIME].store
    conversation = await store.conversation("telegram", "555001", "Tom")
    asked, _ = await store.add_customer_message(conversation.id, "my card ends in 4242")
    reply = await store.add_message(conversation.id, Role.BOT, "Thanks!", reply_to=asked.id)
    return conversation.id, reply.id


def count_rows(db_path: Path, table: str) -> int:
    with sqlite3.connect(db_path) as db:
        (count,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(count)


async def test_answer_search_finds_the_past_agent_answer(client: TestClient[Any, Any]) -> None:
    body = await post(
        client, "/api/v1/answers/search", {"text": "how long until my refund reaches my card?"}
    )
    assert body["min_score"] == MIN_SCORE
    best, *rest = body["answers"]
    assert "5-7 business days" in best["text"]
    assert best["score"] >= MIN_SCORE
    assert best["source"].endswith("conversations.jsonl:1")
    assert best["question"] == "how long does a refund take to reach my card?"
    assert all(other["score"] <= best["score"] for other in rest)
    assert len(body["answers"]) <= 3


async def test_answer_search_honours_k_and_intent(client: TestClient[Any, Any]) -> None:
    one = await post(client, "/api/v1/answers/search", {"text": "where is my refund", "k": 1})
    assert len(one["answers"]) == 1
    # Only order_status answers are searched, however refund-like the text is.
    orders = await post(
        client,
        "/api/v1/answers/search",
        {"text": "where is my refund", "k": 3, "intent": "order_status"},
    )
    assert [a["text"] for a in orders["answers"]] == [
        "Open My orders and click Track parcel; the tracking link is also in the shipping email."
    ]


async def test_gibberish_finds_nothing_good_enough(client: TestClient[Any, Any]) -> None:
    body = await post(client, "/api/v1/answers/search", {"text": "zxqv blorp frumious"})
    assert all(a["score"] < body["min_score"] for a in body["answers"])


async def test_answer_search_rejects_bad_requests_clearly(client: TestClient[Any, Any]) -> None:
    path = "/api/v1/answers/search"
    missing = await post(client, path, {"k": 2}, status=400)
    assert missing["error"] == 'field "text" is missing; it is required'
    blank = await post(client, path, {"text": "   "}, status=400)
    assert "empty" in blank["error"]
    for k in (0, 21, "3", True, 2.5):
        bad = await post(client, path, {"text": "refund", "k": k}, status=400)
        assert 'field "k" must be an integer from 1 to 20' in bad["error"], k
    wrong_intent = await post(client, path, {"text": "refund", "intent": ["a"]}, status=400)
    assert 'field "intent" must be a string' in wrong_intent["error"]
    too_long = await post(client, path, {"text": "a" * 4001}, status=400)
    assert "limit is 4000" in too_long["error"]
    not_object = await post(client, path, ["refund"], status=400)
    assert "must be a JSON object" in not_object["error"]


async def test_understand_classifies_without_storing(
    client: TestClient[Any, Any], db_path: Path
) -> None:
    angry = await post(
        client, "/api/v1/understand", {"text": "this is the worst service ever, i am furious"}
    )
    assert angry["sentiment"] == "negative" and angry["negativity"] > 0
    assert set(angry["sentiment_scores"]) == {"negative", "neutral", "positive"}
    assert abs(sum(angry["sentiment_scores"].values()) - 1) < 1e-3
    assert angry["model_versions"] == {"intent": "v1", "sentiment": "v1"}
    refund = await post(client, "/api/v1/understand", {"text": "where is my refund"})
    assert refund["intent"] == "refund_status"
    label, score = refund["top_intents"][0]
    assert label == "refund_status" and score == pytest.approx(refund["intent_confidence"])
    assert all(isinstance(pair, list) and len(pair) == 2 for pair in refund["top_intents"])
    assert count_rows(db_path, "conversations") == 0
    assert count_rows(db_path, "messages") == 0
    missing = await post(client, "/api/v1/understand", {"txt": "hi"}, status=400)
    assert '"text" is missing' in missing["error"]


async def test_handoff_escalates_and_answers_like_messages(
    client: TestClient[Any, Any],
) -> None:
    body = await post(
        client, "/api/v1/handoff", {"sender": "rasa-1", "text": "my parcel never came"}
    )
    assert body["status"] == str(ConversationStatus.WAITING) and body["duplicate"] is False
    [reply] = body["replies"]
    assert reply["route"] == "handoff" and reply["role"] == "bot"
    assert "support agents" in reply["text"]
    runtime = client.app[RUNTIME]
    [escalation] = await runtime.store.open_escalations()
    assert escalation.conversation_id == body["conversation_id"]
    assert escalation.reason == "asked_for_human" and escalation.status == "open"
    conversation = await runtime.store.get_conversation(body["conversation_id"])
    assert (conversation.channel, conversation.sender) == ("rasa", "rasa-1")
    customer, bot = await runtime.store.transcript(body["conversation_id"])
    assert customer.text == "my parcel never came" and bot.text == reply["text"]

    # Asking again while waiting: no second escalation, the customer is told to wait.
    again = await post(client, "/api/v1/handoff", {"sender": "rasa-1"})
    assert again["conversation_id"] == body["conversation_id"]
    assert again["replies"][0]["route"] == "agent" and again["status"] == "waiting"
    assert len(await runtime.store.open_escalations()) == 1
    transcript = await runtime.store.transcript(body["conversation_id"])
    assert transcript[2].text == HANDOFF_TEXT


async def test_handoff_takes_a_channel_and_validates(client: TestClient[Any, Any]) -> None:
    # A channel other than the API's own needs a key for it.
    key = await issue(client, "widget-bridge", ("widget",))
    body = await post(
        client, "/api/v1/handoff", {"sender": "w-9", "channel": "widget"}, headers=key
    )
    conversation = await client.app[RUNTIME].store.get_conversation(body["conversation_id"])
    assert conversation.channel == "widget"
    no_sender = await post(client, "/api/v1/handoff", {"text": "help"}, 400, key)
    assert no_sender["error"] == 'field "sender" is missing; it is required'
    bad_channel = await post(
        client, "/api/v1/handoff", {"sender": "x", "channel": {"a": 1}}, 400, key
    )
    assert 'field "channel" must be a string' in bad_channel["error"]
    empty_channel = await post(client, "/api/v1/handoff", {"sender": "x", "channel": " "}, 400, key)
    assert 'field "channel" is empty' in empty_channel["error"]


async def test_openapi_describes_the_new_endpoints(client: TestClient[Any, Any]) -> None:
    spec = await (await client.get("/api/v1/openapi.json")).json()
    for path in ("/api/v1/answers/search", "/api/v1/understand", "/api/v1/handoff"):
        assert "post" in spec["paths"][path], path


# -- who may call what (issue 15) ----------------------------------------------------------


async def test_a_caller_cannot_hand_off_as_a_telegram_customer(
    client: TestClient[Any, Any], db_path: Path
) -> None:
    as_telegram = {"sender": "555001", "channel": "telegram", "text": "send my refund to IBAN X"}
    # Without keys, from this machine: the default channels, which telegram is not one of.
    local = await post(client, "/api/v1/handoff", as_telegram, status=403)
    assert "not 'telegram'" in local["error"] and "--channel telegram" in local["error"]
    key = await issue(client, "crm")
    refused = await post(client, "/api/v1/handoff", as_telegram, status=403, headers=key)
    assert refused["error"].startswith("the API key 'crm' may act as channels rest, rasa")
    assert count_rows(db_path, "conversations") == 0
    assert count_rows(db_path, "messages") == 0
    # The Rasa action server's own channel is fine.
    own = await post(client, "/api/v1/handoff", {"sender": "r-1"}, headers=key)
    assert own["status"] == "waiting"


async def test_a_key_acts_only_as_its_channels(client: TestClient[Any, Any]) -> None:
    rasa_only = await issue(client, "rasa", ("rasa",))
    message = {"sender": "u1", "text": "hi"}
    refused = await post(client, "/api/v1/messages", message, 403, rasa_only)
    assert "may act as channels rasa, not 'rest'" in refused["error"]
    webhook = await client.post(
        "/webhooks/rest/webhook", json={"sender": "u1", "message": "hi"}, headers=rasa_only
    )
    assert webhook.status == 403
    # Searching and understanding touch no conversation: any valid key may.
    await post(client, "/api/v1/answers/search", {"text": "refund"}, headers=rasa_only)
    await post(client, "/api/v1/understand", {"text": "refund"}, headers=rasa_only)
    await post(client, "/api/v1/handoff", {"sender": "u1"}, headers=rasa_only)
    default = await issue(client, "bridge")
    await post(client, "/api/v1/messages", message, headers=default)
    answered = await client.post(
        "/webhooks/rest/webhook", json={"sender": "u1", "message": "hi"}, headers=default
    )
    assert answered.status == 200


async def test_a_transcript_only_of_the_callers_channels(client: TestClient[Any, Any]) -> None:
    telegram_id, _ = await telegram_chat(client)
    hidden = await client.get(f"/api/v1/conversations/{telegram_id}")
    unknown = await client.get("/api/v1/conversations/0123456789abcdef0123456789abcdef")
    assert hidden.status == unknown.status == 404
    hidden_error, unknown_error = (await hidden.json())["error"], (await unknown.json())["error"]
    # The same answer as for an id that does not exist: nothing about the conversation leaks.
    assert "4242" not in await hidden.text()
    assert hidden_error.replace(telegram_id, "ID") == unknown_error.replace(
        "0123456789abcdef0123456789abcdef", "ID"
    )
    crm = await issue(client, "crm")
    assert (await client.get(f"/api/v1/conversations/{telegram_id}", headers=crm)).status == 404
    own = await post(client, "/api/v1/messages", {"sender": "u2", "text": "hi"}, headers=crm)
    mine = await client.get(f"/api/v1/conversations/{own['conversation_id']}", headers=crm)
    assert mine.status == 200 and (await mine.json())["channel"] == "rest"
    telegram_key = await issue(client, "telegram-archive", ("telegram",))
    shown = await client.get(f"/api/v1/conversations/{telegram_id}", headers=telegram_key)
    assert shown.status == 200 and (await shown.json())["channel"] == "telegram"


async def test_feedback_is_a_customers_and_only_on_the_callers_channels(
    client: TestClient[Any, Any],
) -> None:
    body = await post(client, "/api/v1/messages", {"sender": "u3", "text": "hello there"})
    reply_id = body["replies"][0]["message_id"]
    store = client.app[RUNTIME].store
    as_agent = {"message_id": reply_id, "rating": "down", "author": "ana"}
    refused = await post(client, "/api/v1/feedback", as_agent, status=400)
    assert 'field "author" can only be "customer"' in refused["error"]
    assert "console" in refused["error"]
    assert await store.feedback(reply_id) == []
    await post(client, "/api/v1/feedback", {**as_agent, "author": "customer"}, status=201)
    await post(client, "/api/v1/feedback", {"message_id": reply_id, "rating": "up"}, status=201)
    assert [f.author for f in await store.feedback(reply_id)] == ["customer", "customer"]

    _, telegram_reply = await telegram_chat(client)
    other = await post(
        client, "/api/v1/feedback", {"message_id": telegram_reply, "rating": "down"}, status=404
    )
    missing = await post(
        client, "/api/v1/feedback", {"message_id": 10**12, "rating": "down"}, status=404
    )
    assert other["error"].replace(str(telegram_reply), "N") == missing["error"].replace(
        str(10**12), "N"
    )
    assert await store.feedback(telegram_reply) == []


API_CALLS = [
    ("POST", "/api/v1/messages", {"sender": "u", "text": "hi"}),
    ("GET", "/api/v1/conversations/0123456789abcdef0123456789abcdef", None),
    ("POST", "/api/v1/feedback", {"message_id": 1, "rating": "up"}),
    ("POST", "/api/v1/answers/search", {"text": "refund"}),
    ("POST", "/api/v1/understand", {"text": "refund"}),
    ("POST", "/api/v1/handoff", {"sender": "u"}),
    ("POST", "/webhooks/rest/webhook", {"sender": "u", "message": "hi"}),
]


async def test_once_a_key_exists_every_call_needs_one(client: TestClient[Any, Any]) -> None:
    # No key yet: this machine's curl works, as the README shows.
    await post(client, "/api/v1/answers/search", {"text": "refund"})
    key = await issue(client, "rasa")
    for method, path, body in API_CALLS:
        response = await client.request(method, path, json=body)
        assert response.status == 401, (path, await response.text())
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="supportbot"'
        assert "supportbot api-keys create" in (await response.json())["error"]
    for wrong in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer sb_nope", key["Authorization"] + "x"):
        response = await client.post(
            "/api/v1/understand", json={"text": "hi"}, headers={"Authorization": wrong}
        )
        assert response.status == 401, wrong
        challenge = response.headers["WWW-Authenticate"]
        assert challenge == 'Bearer realm="supportbot", error="invalid_token"'
    assert (await client.post("/api/v1/understand", json={"text": "hi"}, headers=key)).status == 200
    # What is public stays public.
    assert (await client.get("/api/v1/openapi.json")).status == 200
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/widget.js")).status == 200

    await SqlApiKeyStore(client.app[RUNTIME].store).revoke("rasa")
    revoked = await client.post("/api/v1/understand", json={"text": "hi"}, headers=key)
    assert revoked.status == 401 and "was revoked" in (await revoked.json())["error"]
    # No key is left in use: local callers need none again.
    assert (await client.post("/api/v1/understand", json={"text": "hi"})).status == 200


async def test_without_keys_only_this_machine_may_call(client: TestClient[Any, Any]) -> None:
    # A request a proxy on this machine relays is not a local caller's.
    relayed = await client.post(
        "/api/v1/understand", json={"text": "hi"}, headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert relayed.status == 401
    assert "only from this machine" in (await relayed.json())["error"]
    assert relayed.headers["WWW-Authenticate"] == 'Bearer realm="supportbot"'


def test_who_a_caller_without_a_key_is() -> None:
    for peer in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "localhost"):
        assert is_loopback(peer), peer
        assert keyless_caller(peer, {}, allow_unauthenticated=False) is LOCAL_CALLER
    others: list[str | None] = ["203.0.113.7", "10.0.0.5", "192.168.1.20", "::ffff:10.0.0.5"]
    for other in [*others, "", None, "x"]:
        assert not is_loopback(other), other
        with pytest.raises(UnauthorizedError, match="only from this machine"):
            keyless_caller(other, {}, allow_unauthenticated=False)
        assert keyless_caller(other, {}, allow_unauthenticated=True) is ANONYMOUS_CALLER
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        with pytest.raises(UnauthorizedError):
            keyless_caller("127.0.0.1", {header: "203.0.113.7"}, allow_unauthenticated=False)
    assert LOCAL_CALLER.channels == ANONYMOUS_CALLER.channels == ("rest", "rasa", "rasa-rest")


def test_bearer_keys_are_read_from_the_authorization_header() -> None:
    assert bearer_key({}) is None
    assert bearer_key({"Authorization": "Bearer sb_abc"}) == "sb_abc"
    assert bearer_key({"Authorization": "  bearer   sb_abc "}) == "sb_abc"
    for value in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "sb_abc", ""):
        with pytest.raises(UnauthorizedError, match='must be "Bearer <API key>"'):
            bearer_key({"Authorization": value})


async def test_start_up_refuses_all_interfaces_without_a_key(
    aiohttp_client: ClientFactory, runtime_models: Path, db_path: Path
) -> None:
    db_url = f"sqlite+aiosqlite:///{db_path}"
    exposed = settings_for(runtime_models, db_url).model_copy(deep=True)
    exposed.server.host = "0.0.0.0"
    server = TestServer(create_app(exposed))
    with pytest.raises(ConfigurationError) as refused:
        await server.start_server()
    await server.close()
    message = str(refused.value)
    assert message.startswith("server.host is '0.0.0.0', which other machines can reach")
    assert "`supportbot api-keys create NAME`" in message
    assert "SUPPORTBOT_SERVER__ALLOW_UNAUTHENTICATED_API=true" in message

    # Explicitly allowed: it starts, and callers from elsewhere need no key.
    allowed = exposed.model_copy(deep=True)
    allowed.server.allow_unauthenticated_api = True
    open_client = await aiohttp_client(create_app(allowed))
    relayed = await open_client.post(
        "/api/v1/understand", json={"text": "hi"}, headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert relayed.status == 200
    await open_client.close()

    # With a key, it starts, and the key is what lets callers in.
    store = SqlConversationStore(db_url)
    await store.start()
    try:
        issued = await SqlApiKeyStore(store).create("rasa", DEFAULT_CHANNELS)
    finally:
        await store.stop()
    keyed = await aiohttp_client(create_app(exposed))
    auth = {"Authorization": f"Bearer {issued.key}"}
    assert (await keyed.post("/api/v1/understand", json={"text": "hi"}, headers=auth)).status == 200
    assert (await keyed.post("/api/v1/understand", json={"text": "hi"})).status == 401


async def test_the_transcript_shows_the_entities_of_customer_messages(
    client: TestClient[Any, Any],
) -> None:
    text = "hello, my order bc 204719 is late, mail me at ada@example.com"
    sent = await post(client, "/api/v1/messages", {"sender": "u-entities", "text": text})
    transcript = await client.get(f"/api/v1/conversations/{sent['conversation_id']}")
    customer, *replies = (await transcript.json())["messages"]
    assert customer["entities"] == [
        {"type": "order_id", "value": "BC-204719", "text": "bc 204719", "start": 16, "end": 25},
        {
            "type": "email",
            "value": "ada@example.com",
            "text": "ada@example.com",
            "start": 46,
            "end": 61,
        },
    ]
    assert replies and all(reply["entities"] == [] for reply in replies)
