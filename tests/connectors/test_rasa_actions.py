"""The Rasa action server for real: `supportbot rasa-actions` in a subprocess, a real supportbot
app on a real port that requires an API key, and the documented Rasa action-server webhook
payloads posted to it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.app.factory import RUNTIME, create_app
from bot.core.records import ConversationStatus, Reply, Role, Route
from bot.core.service import HandleResult
from bot.store.api_keys import SqlApiKeyStore
from connectors.rasa_actions import (
    APOLOGY,
    ActionServerSettings,
    AnswerSearch,
    parse_answer_search,
    parse_result,
)
from connectors.rasa_cli import KEY_ENV, URL_ENV
from connectors.rest import DEFAULT_CHANNELS, render_answers, render_result
from tests.helpers import runtime_settings

SUPPORTBOT = Path(sys.executable).with_name("supportbot")
RASA_VERSION = "3.21.0"
SLOTS = (
    "supportbot_answer_found",
    "supportbot_answer_source",
    "sentiment",
    "negativity",
    "supportbot_handoff",
    "supportbot_error",
)
DOMAIN: dict[str, Any] = {
    "version": "3.1",
    "session_config": {"session_expiration_time": 60, "carry_over_slots_to_new_session": True},
    "intents": ["greet", "complain", "nlu_fallback"],
    "entities": [],
    "slots": {
        "supportbot_answer_found": {"type": "bool", "mappings": [{"type": "custom"}]},
        "supportbot_answer_source": {"type": "text", "mappings": [{"type": "custom"}]},
        "sentiment": {
            "type": "categorical",
            "values": ["negative", "neutral", "positive"],
            "mappings": [{"type": "custom"}],
        },
        "negativity": {"type": "float", "mappings": [{"type": "custom"}]},
        "supportbot_handoff": {"type": "bool", "mappings": [{"type": "custom"}]},
        "supportbot_error": {"type": "text", "mappings": [{"type": "custom"}]},
    },
    "responses": {"utter_default": [{"text": "Sorry, could you rephrase?"}]},
    "actions": [
        "action_supportbot_answer",
        "action_supportbot_sentiment",
        "action_supportbot_handoff",
    ],
    "forms": {},
}

ServerFactory = Callable[..., Awaitable[TestServer]]


def action_call(
    action: str, sender: str, text: str, intent: str = "nlu_fallback"
) -> dict[str, Any]:
    """The request Rasa sends to an action server's /webhook to run `action`."""
    now = time.time()
    parse_data = {
        "text": text,
        "intent": {"name": intent, "confidence": 0.41},
        "intent_ranking": [{"name": intent, "confidence": 0.41}],
        "entities": [],
        "message_id": f"m-{int(now * 1000)}",
        "metadata": {},
    }
    return {
        "next_action": action,
        "sender_id": sender,
        "tracker": {
            "sender_id": sender,
            "slots": {slot: None for slot in SLOTS},
            "latest_message": parse_data,
            "latest_event_time": now,
            "followup_action": None,
            "paused": False,
            "events": [
                {"event": "action", "timestamp": now - 2, "name": "action_session_start"},
                {"event": "session_started", "timestamp": now - 2},
                {"event": "action", "timestamp": now - 2, "name": "action_listen"},
                {
                    "event": "user",
                    "timestamp": now - 1,
                    "text": text,
                    "parse_data": parse_data,
                    "input_channel": "rest",
                },
            ],
            "latest_input_channel": "rest",
            "active_loop": {},
            "latest_action": {"action_name": "action_listen"},
            "latest_action_name": "action_listen",
        },
        "domain": DOMAIN,
        "version": RASA_VERSION,
    }


def slots_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e["value"] for e in events if e["event"] == "slot"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ActionServerProcess:
    """`supportbot rasa-actions` as a subprocess, as an operator would run it."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.returncode: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def start(
        self,
        supportbot_url: str | None,
        env_url: str | None = None,
        api_key: str | None = None,
        key_flag: bool = False,
    ) -> None:
        args = [str(SUPPORTBOT), "rasa-actions", "--port", str(self.port), "--timeout", "20"]
        if supportbot_url is not None:
            args += ["--supportbot-url", supportbot_url]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop(URL_ENV, None)
        env.pop(KEY_ENV, None)
        if env_url is not None:
            env[URL_ENV] = env_url
        if api_key is not None and key_flag:
            args += ["--api-key", api_key]
        elif api_key is not None:
            env[KEY_ENV] = api_key
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"the action server exited early:\n{self.log()}")
                try:
                    async with http.get(f"{self.url}/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"the action server never became healthy:\n{self.log()}")
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.returncode = self.process.returncode


@asynccontextmanager
async def action_server(
    tmp_path: Path,
    supportbot_url: str | None,
    env_url: str | None = None,
    api_key: str | None = None,
    key_flag: bool = False,
) -> AsyncIterator[ActionServerProcess]:
    """`supportbot rasa-actions`; the key goes in SUPPORTBOT_RASA__API_KEY, or in --api-key
    with `key_flag`."""
    server = ActionServerProcess(tmp_path / f"rasa-actions-{time.monotonic_ns()}.log")
    try:
        await server.start(supportbot_url, env_url, api_key, key_flag)
        yield server
    finally:
        await server.stop()


async def webhook(server: ActionServerProcess, call: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{server.url}/webhook", json=call) as response,
    ):
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
    return body


@pytest.fixture
async def supportbot(
    aiohttp_server: ServerFactory, runtime_models: Path, tmp_path: Path
) -> TestServer:
    settings = runtime_settings(runtime_models, f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}")
    return await aiohttp_server(create_app(settings))


@pytest.fixture
async def rasa_key(supportbot: TestServer) -> str:
    """The action server's key, as `supportbot api-keys create rasa` makes it; from then on
    supportbot answers no caller without a key."""
    issued = await SqlApiKeyStore(supportbot.app[RUNTIME].store).create("rasa", DEFAULT_CHANNELS)
    return issued.key


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.mark.slow
async def test_answer_found_for_a_refund_question(
    supportbot: TestServer, rasa_key: str, tmp_path: Path
) -> None:
    async with action_server(
        tmp_path, url_of(supportbot), api_key=rasa_key, key_flag=True
    ) as server:
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/actions") as listed:
            assert [a["name"] for a in await listed.json()] == [
                "action_supportbot_answer",
                "action_supportbot_sentiment",
                "action_supportbot_handoff",
            ]
        call = action_call(
            "action_supportbot_answer", "cust-1", "how long does a refund take to reach my card?"
        )
        body = await webhook(server, call)
        unknown = action_call("action_nope", "cust-1", "hi")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{server.url}/webhook", json=unknown) as refused,
        ):
            assert refused.status == 404
            assert (await refused.json())["action_name"] == "action_nope"
    [response] = body["responses"]
    assert "5-7 business days" in response["text"]
    assert all(e["event"] == "slot" for e in body["events"])
    slots = slots_of(body["events"])
    assert set(slots) == {"supportbot_answer_found", "supportbot_answer_source"}
    assert slots["supportbot_answer_found"] is True
    assert slots["supportbot_answer_source"].endswith("conversations.jsonl:1")
    # Searching stores nothing in supportbot; the server stopped cleanly and closed its session.
    assert await supportbot.app[RUNTIME].store.open_escalations() == []
    assert server.returncode == 0, server.log()
    assert "closed the HTTP session to supportbot" in server.log()
    assert f"with API key {rasa_key[:11]}..." in server.log() and rasa_key not in server.log()


@pytest.mark.slow
async def test_no_answer_for_gibberish(
    supportbot: TestServer, rasa_key: str, tmp_path: Path
) -> None:
    async with action_server(tmp_path, url_of(supportbot), api_key=rasa_key) as server:
        body = await webhook(server, action_call("action_supportbot_answer", "c2", "zxqv blorp"))
        # A message with no text (e.g. an image) is not sent to supportbot at all.
        empty = await webhook(server, action_call("action_supportbot_answer", "c2", ""))
    assert body == {
        "events": [
            {"event": "slot", "timestamp": None, "name": "supportbot_answer_found", "value": False}
        ],
        "responses": [],
    }
    assert empty == body


@pytest.mark.slow
async def test_sentiment_slot_for_an_angry_message(
    supportbot: TestServer, rasa_key: str, tmp_path: Path
) -> None:
    # No --supportbot-url nor --api-key: the command reads SUPPORTBOT_RASA__SUPPORTBOT_URL and
    # SUPPORTBOT_RASA__API_KEY when it starts.
    async with action_server(
        tmp_path, None, env_url=url_of(supportbot), api_key=rasa_key
    ) as server:
        angry = await webhook(
            server,
            action_call(
                "action_supportbot_sentiment",
                "c3",
                "this is the worst service ever, i am furious",
                intent="complain",
            ),
        )
        happy = await webhook(
            server, action_call("action_supportbot_sentiment", "c3", "hi team, lovely day")
        )
    slots = slots_of(angry["events"])
    assert slots["sentiment"] == "negative"
    assert 0 < slots["negativity"] <= 1
    assert angry["responses"] == []
    assert slots_of(happy["events"])["sentiment"] == "positive"
    assert slots_of(happy["events"])["negativity"] < 0


@pytest.mark.slow
async def test_handoff_escalates_in_supportbot_and_pauses_rasa(
    supportbot: TestServer, rasa_key: str, tmp_path: Path
) -> None:
    async with action_server(tmp_path, url_of(supportbot), api_key=rasa_key) as server:
        body = await webhook(
            server,
            action_call("action_supportbot_handoff", "cust-4", "i want to talk to a human"),
        )
    [response] = body["responses"]
    assert "support agents" in response["text"]
    events = body["events"]
    assert events[0] == {
        "event": "slot",
        "timestamp": None,
        "name": "supportbot_handoff",
        "value": True,
    }
    assert events[1] == {"event": "pause", "timestamp": None}
    store = supportbot.app[RUNTIME].store
    [escalation] = await store.open_escalations()
    assert escalation.status == "open" and escalation.reason == "asked_for_human"
    conversation = await store.get_conversation(escalation.conversation_id)
    assert (conversation.channel, conversation.sender) == ("rasa", "cust-4")
    assert conversation.status == ConversationStatus.WAITING
    customer, bot = await store.transcript(conversation.id)
    assert customer.text == "i want to talk to a human" and bot.text == response["text"]


@pytest.mark.slow
async def test_without_a_valid_key_the_actions_apologise_and_say_why(
    supportbot: TestServer, rasa_key: str, tmp_path: Path
) -> None:
    async with action_server(tmp_path, url_of(supportbot)) as keyless:
        missing = await webhook(keyless, action_call("action_supportbot_handoff", "c9", "human"))
    async with action_server(tmp_path, url_of(supportbot), api_key="sb_" + "x" * 43) as wrong:
        invalid = await webhook(wrong, action_call("action_supportbot_answer", "c9", "refund?"))
    assert [r["text"] for r in missing["responses"]] == [APOLOGY]
    assert all(e["event"] != "pause" for e in missing["events"])
    error = slots_of(missing["events"])["supportbot_error"]
    assert "answered 401: this API needs an API key" in error and KEY_ENV in error
    assert (
        "answered 401: this API key is not valid" in slots_of(invalid["events"])["supportbot_error"]
    )
    assert await supportbot.app[RUNTIME].store.open_escalations() == []


@pytest.mark.slow
async def test_unreachable_supportbot_gets_an_apology_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    async with action_server(tmp_path, nowhere) as server:
        answer = await webhook(server, action_call("action_supportbot_answer", "c5", "refund?"))
        handoff = await webhook(server, action_call("action_supportbot_handoff", "c5", "human"))
        sentiment = await webhook(server, action_call("action_supportbot_sentiment", "c5", "ugh"))
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as health:
            assert health.status == 200
        assert server.process is not None and server.process.poll() is None
    for body in (answer, handoff, sentiment):
        assert [r["text"] for r in body["responses"]] == [APOLOGY]
        [event] = body["events"]
        assert event["name"] == "supportbot_error"
        assert f"cannot reach supportbot at {nowhere}" in event["value"]
    assert "action_supportbot_answer failed: cannot reach supportbot" in server.log()
    assert server.returncode == 0


@pytest.mark.slow
async def test_supportbot_errors_are_reported_not_crashed_on(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    # A supportbot that answers, but with an error status or a body of another version.
    keys_sent: list[str | None] = []

    async def unavailable(request: web.Request) -> web.Response:
        keys_sent.append(request.headers.get("Authorization"))
        return web.json_response({"error": "the database cannot be reached"}, status=503)

    async def odd(request: web.Request) -> web.Response:
        return web.json_response({"results": []})

    async def not_supportbot(request: web.Request) -> web.Response:
        return web.Response(text="<html>It works!</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/api/v1/answers/search", unavailable)
    app.router.add_post("/api/v1/understand", odd)
    app.router.add_post("/api/v1/handoff", not_supportbot)
    fake = await aiohttp_server(app)
    async with action_server(tmp_path, url_of(fake), api_key="sb_" + "k" * 43) as server:
        answer = await webhook(server, action_call("action_supportbot_answer", "c6", "refund?"))
        sentiment = await webhook(server, action_call("action_supportbot_sentiment", "c6", "ok"))
        handoff = await webhook(server, action_call("action_supportbot_handoff", "c6", "human"))
    assert answer["responses"][0]["text"] == APOLOGY
    assert slots_of(answer["events"])["supportbot_error"].endswith(
        "answered 503: the database cannot be reached"
    )
    assert (
        "unexpected body (KeyError: 'intent')" in slots_of(sentiment["events"])["supportbot_error"]
    )
    assert handoff["responses"][0]["text"] == APOLOGY
    assert "not a JSON object" in slots_of(handoff["events"])["supportbot_error"]
    assert all(e["event"] != "pause" for e in handoff["events"])
    assert keys_sent == ["Bearer sb_" + "k" * 43]


def test_settings_refuse_what_cannot_work() -> None:
    from bot.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="http\\(s\\) URL"):
        ActionServerSettings(supportbot_url="localhost:8080")
    with pytest.raises(ConfigurationError, match="positive"):
        ActionServerSettings(timeout_s=0)
    for key in ("", "sb_a b", "sb_a\r\nX-Evil: 1", "sb_é"):
        with pytest.raises(ConfigurationError, match="API key must be one word"):
            ActionServerSettings(api_key=key)
    # The key never shows in a repr (logs, tracebacks).
    assert "sb_secret" not in repr(ActionServerSettings(api_key="sb_secret"))


def test_parsers_read_what_the_rest_renderers_write() -> None:
    result = HandleResult(
        conversation_id="c-1",
        message_id=7,
        replies=(Reply("c-1", 8, Role.BOT, "An agent will reply.", Route.HANDOFF),),
        status=ConversationStatus.WAITING,
    )
    assert parse_result(render_result(result)) == result
    from bot.core.records import Answer

    answers = [Answer("Refunds take 5-7 days.", 0.81, "faq.csv:3", "refund time?")]
    search = parse_answer_search(render_answers(answers, 0.55))
    assert search == AnswerSearch(tuple(answers), 0.55)
    assert search.best == answers[0]
    assert AnswerSearch(tuple(answers), 0.9).best is None
