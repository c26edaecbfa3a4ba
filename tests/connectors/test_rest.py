"""The REST endpoints the Rasa action server calls: real app in-process, real models, SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bot.app.factory import RUNTIME, create_app
from bot.core.records import ConversationStatus
from bot.settings import Settings
from connectors.rest import HANDOFF_TEXT
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
    client: TestClient[Any, Any], path: str, body: Any, status: int = 200
) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status == status, await response.text()
    payload: dict[str, Any] = await response.json()
    return payload


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
    body = await post(client, "/api/v1/handoff", {"sender": "w-9", "channel": "widget"})
    conversation = await client.app[RUNTIME].store.get_conversation(body["conversation_id"])
    assert conversation.channel == "widget"
    no_sender = await post(client, "/api/v1/handoff", {"text": "help"}, status=400)
    assert no_sender["error"] == 'field "sender" is missing; it is required'
    bad_channel = await post(
        client, "/api/v1/handoff", {"sender": "x", "channel": {"a": 1}}, status=400
    )
    assert 'field "channel" must be a string' in bad_channel["error"]
    empty_channel = await post(client, "/api/v1/handoff", {"sender": "x", "channel": " "}, 400)
    assert 'field "channel" is empty' in empty_channel["error"]


async def test_openapi_describes_the_new_endpoints(client: TestClient[Any, Any]) -> None:
    spec = await (await client.get("/api/v1/openapi.json")).json()
    for path in ("/api/v1/answers/search", "/api/v1/understand", "/api/v1/handoff"):
        assert "post" in spec["paths"][path], path
