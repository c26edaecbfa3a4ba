"""The real service in-process: aiohttp test client, real models, real SQLite / PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.app.factory import RUNTIME, create_app
from bot.core.records import ConversationStatus
from bot.settings import Settings
from tests.helpers import console_as, runtime_settings

pytestmark = pytest.mark.slow

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def settings_for(models: Path, db_url: str, **escalation: Any) -> Settings:
    return runtime_settings(models, db_url, escalation={"max_failed_turns": 2, **escalation})


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings_for(runtime_models, sqlite_url)))


async def send(
    client: TestClient[Any, Any], sender: str, text: str, **extra: Any
) -> dict[str, Any]:
    response = await client.post("/api/v1/messages", json={"sender": sender, "text": text, **extra})
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def test_greeting_gets_a_configured_response_with_the_name(
    client: TestClient[Any, Any],
) -> None:
    body = await send(client, "u1", "hello there", name="Ana")
    [reply] = body["replies"]
    # A greeting is small talk, not an answer: no thumbs under it.
    assert reply["route"] == "response" and reply["rateable"] is False
    assert "Ana" in reply["text"]
    assert body["status"] == "bot"


async def test_question_is_answered_from_past_agent_answers(client: TestClient[Any, Any]) -> None:
    body = await send(client, "u2", "how long does a refund take to reach my card?")
    [reply] = body["replies"]
    assert reply["route"] == "answer" and reply["rateable"] is True
    assert "5-7 business days" in reply["text"]
    transcript = await (await client.get(f"/api/v1/conversations/{body['conversation_id']}")).json()
    customer, bot = transcript["messages"]
    assert customer["intent"] == "refund_status" and customer["route"] == "answer"
    assert customer["model_versions"] == {"intent": "v1", "sentiment": "v1"}
    assert customer["latency_ms"] > 0 and customer["sentiment"] in (
        "negative",
        "neutral",
        "positive",
    )
    assert bot["role"] == "bot" and bot["text"] == reply["text"]
    [stored, _] = await client.app[RUNTIME].store.transcript(body["conversation_id"])
    assert stored.details["top_intents"][0][0] == "refund_status"
    assert set(stored.details["sentiment_scores"]) == {"negative", "neutral", "positive"}
    assert stored.details["source"].endswith("conversations.jsonl:1")


OFF_TOPIC = [
    "what's the weather like in Paris tomorrow?",
    "can you recommend a good lasagne recipe",
    "who won the football world cup in 1998",
]
ON_TOPIC = ["where is my order", "when will I get my refund", "hello!"]


async def test_out_of_scope_questions_are_declined_and_in_scope_ones_still_served(
    client: TestClient[Any, Any],
) -> None:
    """Through the real intent model and its detector, trained on the small shop."""
    # The answer index's encoder is in the shared forward: the whole detector is served.
    assert client.app[RUNTIME].understander.oos_method == "knn+energy+sentence-knn"
    for i, text in enumerate(OFF_TOPIC):
        body = await send(client, f"off-{i}", text)
        [reply] = body["replies"]
        assert reply["route"] == "response", (text, reply)
        assert "not something I can help with" in reply["text"]
        assert "Talk to a person" in reply["quick_replies"] and reply["rateable"] is False
        transcript = await (
            await client.get(f"/api/v1/conversations/{body['conversation_id']}")
        ).json()
        customer = transcript["messages"][0]
        assert customer["out_of_scope"] is True and customer["intent"] is None
        assert customer["oos_score"] > 0
    for i, text in enumerate(ON_TOPIC):
        body = await send(client, f"on-{i}", text)
        transcript = await (
            await client.get(f"/api/v1/conversations/{body['conversation_id']}")
        ).json()
        customer = transcript["messages"][0]
        assert customer["out_of_scope"] is False and customer["intent"] is not None, text
        # "where is my order" is asked for its order number first (routing `requires:`).
        assert body["replies"][0]["route"] in ("answer", "response", "slot_question"), (text, body)
    understood = await client.post("/api/v1/understand", json={"text": OFF_TOPIC[0]})
    assert (await understood.json())["out_of_scope"] is True
    metrics = await (await client.get("/metrics")).text()
    assert f'supportbot_out_of_scope_total{{channel="rest"}} {float(len(OFF_TOPIC))}' in metrics


async def test_fallback_ladder_then_handoff_then_silence_until_resolved(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str, tmp_path: Path
) -> None:
    # The ladder as deployments that send out-of-scope messages to it have it.
    routing = tmp_path / "routing.yml"
    packaged = (Path(__file__).parents[3] / "bot/core/routing.yml").read_text()
    routing.write_text(
        re.sub(r"\nout_of_scope:\n  response:\n    - .*\n", "\nout_of_scope: rephrase\n", packaged)
    )
    assert "out_of_scope: rephrase" in routing.read_text()
    settings = runtime_settings(
        runtime_models,
        sqlite_url,
        escalation={"max_failed_turns": 2},
        routing={"config": routing},
    )
    client = await aiohttp_client(create_app(settings))
    first = await send(client, "u3", "zxqv blorp frumious")
    assert first["replies"][0]["route"] == "rephrase"
    second = await send(client, "u3", "qwpz vlorn grabble")
    assert second["replies"][0]["route"] == "handoff" and second["status"] == "waiting"
    # escalated: the bot stays silent, the message is still stored for the agent
    third = await send(client, "u3", "hello?")
    assert third["replies"] == [] and third["status"] == "waiting"
    runtime = client.app[RUNTIME]
    [escalation] = await runtime.store.open_escalations()
    assert escalation.reason == "repeated_fallback" and escalation.scores["failed_turns"] == 2
    transcript = await runtime.store.transcript(first["conversation_id"])
    assert [m.route for m in transcript if m.role == "customer"] == ["rephrase", "handoff", "agent"]
    # an agent claims and resolves it in the console: the bot answers again
    console, ana = await console_as(client.app, "agent-ana")
    await console.claim(first["conversation_id"], ana)
    await console.resolve(first["conversation_id"], ana)
    fourth = await send(client, "u3", "hello there")
    assert fourth["replies"][0]["route"] == "response" and fourth["status"] == "bot"


async def test_asking_for_a_person_hands_off_with_the_reason(client: TestClient[Any, Any]) -> None:
    body = await send(client, "u4", "can i speak to a person please")
    assert body["replies"][0]["route"] == "handoff" and body["status"] == "waiting"
    [escalation] = await client.app[RUNTIME].store.open_escalations()
    assert escalation.reason == "asked_for_human"
    assert "talk_to_human" in escalation.explanation


async def test_an_angry_message_escalates_with_its_scores(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
) -> None:
    app = create_app(settings_for(runtime_models, sqlite_url, negative_message=0.5))
    client = await aiohttp_client(app)
    body = await send(client, "u5", "this is the worst service ever, i am furious")
    assert body["replies"][0]["route"] == "handoff"
    [escalation] = await client.app[RUNTIME].store.open_escalations()
    assert escalation.reason == "negative_message"
    assert escalation.scores["negativity"] >= 0.5


async def test_a_retried_delivery_is_not_answered_twice(client: TestClient[Any, Any]) -> None:
    first = await send(client, "u6", "where is my order", client_id="m-1")
    again = await send(client, "u6", "where is my order", client_id="m-1")
    assert again["duplicate"] is True and again["message_id"] == first["message_id"]
    assert [r["message_id"] for r in again["replies"]] == [
        r["message_id"] for r in first["replies"]
    ]
    transcript = await client.app[RUNTIME].store.transcript(first["conversation_id"])
    assert len(transcript) == 2


async def test_feedback_is_stored_and_validated(client: TestClient[Any, Any]) -> None:
    body = await send(client, "u7", "hello there")
    reply_id = body["replies"][0]["message_id"]
    response = await client.post(
        "/api/v1/feedback",
        json={"message_id": reply_id, "rating": "down", "comment": "too cheerful"},
    )
    assert response.status == 201
    [stored] = await client.app[RUNTIME].store.feedback(reply_id)
    assert stored.rating == "down" and stored.comment == "too cheerful"
    missing = await client.post("/api/v1/feedback", json={"message_id": 999999, "rating": "up"})
    assert missing.status == 404 and "999999" in (await missing.json())["error"]
    bad = await client.post("/api/v1/feedback", json={"message_id": reply_id, "rating": "meh"})
    assert bad.status == 400 and "rating" in (await bad.json())["error"]


async def test_bad_requests_get_clear_4xx(client: TestClient[Any, Any]) -> None:
    not_json = await client.post(
        "/api/v1/messages", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert not_json.status == 400 and "not valid JSON" in (await not_json.json())["error"]
    no_text = await client.post("/api/v1/messages", json={"sender": "x"})
    assert no_text.status == 400 and '"text" is missing' in (await no_text.json())["error"]
    long_text = await client.post("/api/v1/messages", json={"sender": "x", "text": "a" * 4001})
    assert long_text.status == 400 and "limit is 4000" in (await long_text.json())["error"]
    huge = await client.post(
        "/api/v1/messages", data=b"x" * 70000, headers={"Content-Type": "application/json"}
    )
    assert huge.status == 413
    unknown = await client.get(f"/api/v1/conversations/{uuid.uuid4().hex}")
    assert unknown.status == 404


async def test_rasa_rest_channel_contract(client: TestClient[Any, Any]) -> None:
    response = await client.post("/webhooks/rest/webhook", json={"sender": "r1", "message": "hi"})
    assert response.status == 200
    body = await response.json()
    assert isinstance(body, list) and body[0]["recipient_id"] == "r1" and body[0]["text"]


async def test_health_readiness_metrics_and_openapi(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"models": "ok", "store": "ok"}
    await send(client, "u8", "hello there")
    await send(client, "u8", "i want to talk to a human")
    text = await (await client.get("/metrics")).text()
    assert 'supportbot_messages_total{channel="rest",route="response"} 1.0' in text
    assert 'supportbot_escalations_total{reason="asked_for_human"} 1.0' in text
    assert 'supportbot_stage_seconds_count{stage="nlu"}' in text
    spec = await (await client.get("/api/v1/openapi.json")).json()
    assert "/api/v1/messages" in spec["paths"] and "/webhooks/rest/webhook" in spec["paths"]


async def test_concurrent_conversations_share_model_batches(client: TestClient[Any, Any]) -> None:
    runtime = client.app[RUNTIME]
    batches_before = runtime.understander._batcher.batches
    bodies = await asyncio.gather(*(send(client, f"c{i}", "where is my order") for i in range(24)))
    assert all(b["replies"] for b in bodies)
    assert runtime.understander._batcher.batches - batches_before < 24


async def test_models_reload_without_failed_requests(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(runtime_models, models)
    client = await aiohttp_client(create_app(settings_for(models, sqlite_url)))
    runtime = client.app[RUNTIME]
    assert runtime.understander.versions == {"intent": "v1", "sentiment": "v1"}
    # A new version appears and is promoted while customers keep writing.
    shutil.copytree(models / "intent" / "v1", models / "intent" / "v2")
    from training.registry import FileModelRegistry

    FileModelRegistry(models).promote("intent", "v2")
    for i in range(40):
        body = await send(client, f"r{i}", "where is my order")
        assert body["replies"], body
        if runtime.understander.versions["intent"] == "v2":
            break
        await asyncio.sleep(0.1)
    assert runtime.understander.versions["intent"] == "v2"
    body = await send(client, "after", "where is my order")
    transcript = await runtime.store.transcript(body["conversation_id"])
    assert transcript[0].model_versions["intent"] == "v2"


async def test_restart_loses_nothing(runtime_models: Path, sqlite_url: str) -> None:
    settings = settings_for(runtime_models, sqlite_url)
    conversation_id = await _talk_then_stop(settings)
    app = create_app(settings)
    async with _running(app) as client:
        transcript = await (await client.get(f"/api/v1/conversations/{conversation_id}")).json()
        assert transcript["status"] == str(ConversationStatus.WAITING)
        texts = [m["text"] for m in transcript["messages"] if m["role"] == "customer"]
        assert texts == ["hello there", "can i speak to a person please"]
        body = await send(client, "restart-user", "anyone?")
        assert body["replies"] == [] and body["conversation_id"] == conversation_id


async def _talk_then_stop(settings: Settings) -> str:
    async with _running(create_app(settings)) as client:
        await send(client, "restart-user", "hello there")
        body = await send(client, "restart-user", "can i speak to a person please")
        return str(body["conversation_id"])


class _running:
    """Start an app on a real port and give a test client; stop it afterwards."""

    def __init__(self, app: web.Application) -> None:
        from aiohttp.test_utils import TestServer

        self.client: TestClient[Any, Any] = TestClient(TestServer(app))

    async def __aenter__(self) -> TestClient[Any, Any]:
        await self.client.start_server()
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    asyncpg = pytest.importorskip("asyncpg")
    try:
        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test", timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    name = f"supportbot_app_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_the_same_flow_on_postgresql(
    aiohttp_client: ClientFactory, runtime_models: Path, postgres_url: str
) -> None:
    client = await aiohttp_client(create_app(settings_for(runtime_models, postgres_url)))
    greeting = await send(client, "pg1", "hello there")
    assert greeting["replies"][0]["route"] == "response"
    handoff = await send(client, "pg1", "can i speak to a person please")
    assert handoff["status"] == "waiting"
    silent = await send(client, "pg1", "hello?")
    assert silent["replies"] == []
    duplicate = await send(client, "pg1", "hello?", client_id="x")
    again = await send(client, "pg1", "hello?", client_id="x")
    assert again["duplicate"] and again["message_id"] == duplicate["message_id"]
    assert (await client.get("/readyz")).status == 200


async def test_consoles_hear_about_messages_and_escalations(
    client: TestClient[Any, Any],
) -> None:
    bus = client.server.app[RUNTIME].bus
    async with bus.subscribe("console") as events:
        await send(client, "u-bus", "hello")
        first = await asyncio.wait_for(events.get(), timeout=5)
        assert first["type"] == "message" and first["status"] == "bot"
        body = await send(client, "u-bus", "I want to talk to a human")
        assert body["status"] == "waiting"
        kinds = [(await asyncio.wait_for(events.get(), timeout=5))["type"] for _ in range(2)]
        assert kinds == ["message", "escalation.opened"]
        console, ana = await console_as(client.app, "ana", "operator")
        closed = await console.resolve(body["conversation_id"], ana)  # operators need no claim
        resolved = await asyncio.wait_for(events.get(), timeout=5)
        assert resolved == {
            "type": "escalation.resolved",
            "conversation_id": body["conversation_id"],
            "escalation_id": closed.escalation.id,
            "agent": "ana",
            "outcome": "resolved",
        }


async def test_a_card_number_sent_through_rest_is_masked_in_the_store_console_and_logs(
    aiohttp_client: ClientFactory,
    runtime_models: Path,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    settings = runtime_settings(runtime_models, sqlite_url, privacy={"redact": ["email"]})
    client = await aiohttp_client(create_app(settings))
    body = await send(
        client, "pay-1", "my card 4111-1111-1111-1111 was charged twice, I'm ada@example.org"
    )
    masked = "my card [CARD] was charged twice, I'm [EMAIL]"
    transcript = await (await client.get(f"/api/v1/conversations/{body['conversation_id']}")).json()
    assert transcript["messages"][0]["text"] == masked
    [stored, *_] = await client.app[RUNTIME].store.transcript(body["conversation_id"])
    assert stored.text == masked
    assert "4111" not in caplog.text and "ada@example.org" not in caplog.text


async def test_declared_learned_entity_types_the_model_does_not_find_are_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bot.app.factory import LearnedEntityCheck

    with caplog.at_level(logging.WARNING, logger="bot.app.factory"):
        await LearnedEntityCheck(("product",), lambda: ("product", "city")).start()
        assert caplog.records == []
        await LearnedEntityCheck(("product", "colour"), lambda: ("product",)).start()
        await LearnedEntityCheck(("product",), tuple).start()
    first, second = (r.getMessage() for r in caplog.records)
    assert "does not find colour (it finds product)" in first
    assert "does not find product (no entity model is live)" in second
    assert "supportbot train entity" in first
