"""The OpenAPI document: valid OpenAPI 3.0, and what the REST connector's parsers accept and
renderers answer (no server, no models: these run in a second).

The running server is checked against the served document in `test_api_properties.py`.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import APIOperation

from bot.core.records import (
    Answer,
    ConversationStatus,
    Reply,
    Role,
    Route,
    Scored,
    StoredMessage,
    Understanding,
)
from bot.core.service import HandleResult
from connectors import rest
from connectors.openapi import OPENAPI, openapi_document

# Every operation that needs an API key, and the public ones.
SECURED = {
    ("post", "/api/v1/messages"),
    ("get", "/api/v1/conversations/{conversation_id}"),
    ("post", "/api/v1/feedback"),
    ("post", "/webhooks/rest/webhook"),
    ("post", "/api/v1/answers/search"),
    ("post", "/api/v1/understand"),
    ("post", "/api/v1/handoff"),
}
PUBLIC = {
    ("get", "/api/v1/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}
# Operations that act as a channel (their own, or the body's): an API key limited to other
# channels gets 403. (Another channel's transcript or message is a 404, as an unknown one.)
CHANNELLED = {
    ("post", "/api/v1/messages"),
    ("post", "/webhooks/rest/webhook"),
    ("post", "/api/v1/handoff"),
}
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CONVERSATION = "0123456789abcdef0123456789abcdef"
MAX_CHARS = 4000


def load() -> schemathesis.BaseSchema:
    # As a client sees it: through JSON (the loader also edits the dict it is given).
    return schemathesis.openapi.from_dict(json.loads(json.dumps(OPENAPI)))


def operation(path: str, method: str) -> APIOperation:
    found: APIOperation = load()[path][method.upper()]
    return found


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in OPENAPI["paths"].items():
        for method, op in item.items():
            yield method, path, op


def answer(path: str, method: str, body: Any, status: int = 200) -> httpx.Response:
    request = httpx.Request(method, f"http://127.0.0.1:8080{path}")
    response = httpx.Response(status, json=body, request=request)
    response.elapsed = timedelta(0)  # a client sets it; schemathesis reads it
    return response


def conforms(path: str, method: str, body: Any, status: int = 200) -> None:
    """Raise unless `body` is what the document says `method path` answers with `status`."""
    operation(path, method).validate_response(answer(path, method, body, status))


# -- the document itself -------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3() -> None:
    load().validate()  # against the OpenAPI 3.0 JSON Schema that schemathesis ships
    assert json.loads(json.dumps(OPENAPI)) == OPENAPI, "the document must be plain JSON"
    assert openapi_document() == OPENAPI
    assert len(list(load().get_all_operations())) == len(SECURED | PUBLIC)


def test_validation_catches_a_broken_document() -> None:
    broken = copy.deepcopy(OPENAPI)
    broken["paths"]["/healthz"]["get"]["responses"]["2000"] = {"description": "no such code"}
    with pytest.raises(ValueError, match="2000"):
        schemathesis.openapi.from_dict(broken).validate()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_every_reference_resolves_and_every_path_parameter_is_declared() -> None:
    for ref in _refs(OPENAPI):
        node: Any = OPENAPI
        assert ref.startswith("#/"), ref
        for part in ref[2:].split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]
    for method, path, op in operations():
        in_path = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert in_path == declared, f"{method.upper()} {path}"


def test_the_api_needs_a_bearer_key_and_says_so() -> None:
    scheme = OPENAPI["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert OPENAPI["security"] == [{"bearerAuth": []}]
    assert {(m, p) for m, p, _ in operations()} == SECURED | PUBLIC
    unauthorized = OPENAPI["components"]["responses"]["Unauthorized"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    for method, path, op in operations():
        if (method, path) in PUBLIC:
            assert op["security"] == [], f"{method.upper()} {path} is public"
            assert "401" not in op["responses"]
            continue
        assert "security" not in op, f"{method.upper()} {path} inherits the API key"
        assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}
        assert ("403" in op["responses"]) == ((method, path) in CHANNELLED), path


def test_feedback_takes_no_author_but_the_customer() -> None:
    body = OPENAPI["paths"]["/api/v1/feedback"]["post"]["requestBody"]
    author = body["content"]["application/json"]["schema"]["properties"]["author"]
    assert author["enum"] == ["customer", None]


def test_enumerations_are_the_records() -> None:
    schemas = OPENAPI["components"]["schemas"]
    routes = [r.value for r in Route]
    assert schemas["Reply"]["properties"]["route"]["enum"] == [*routes, None]
    assert schemas["StoredMessage"]["properties"]["route"]["enum"] == [*routes, None]
    statuses = [s.value for s in ConversationStatus]
    assert schemas["Result"]["properties"]["status"]["enum"] == statuses
    assert schemas["Transcript"]["properties"]["status"]["enum"] == statuses
    assert schemas["StoredMessage"]["properties"]["role"]["enum"] == [r.value for r in Role]


def test_limits_follow_the_setting() -> None:
    small = openapi_document(max_message_chars=500)
    body = small["paths"]["/api/v1/messages"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["properties"]["text"]["maxLength"] == 500


# -- what the renderers answer -------------------------------------------------------------------


@pytest.mark.parametrize("route", [*Route, None], ids=str)
@pytest.mark.parametrize("role", [Role.BOT, Role.AGENT, Role.SYSTEM], ids=str)
def test_every_reply_the_service_gives_is_documented(route: Route | None, role: Role) -> None:
    reply = Reply(CONVERSATION, 7, role, "Hi!", route, ("Yes", "No"), rateable=True)
    for status in ConversationStatus:
        result = HandleResult(CONVERSATION, 6, (reply,), status, duplicate=True)
        for path in ("/api/v1/messages", "/api/v1/handoff"):
            conforms(path, "POST", rest.render_result(result))


@pytest.mark.parametrize("route", [r.value for r in Route] + [None])
def test_transcripts_are_documented(route: str | None) -> None:
    bare = StoredMessage(1, CONVERSATION, Role.CUSTOMER, "hi", NOW)
    full = StoredMessage(
        2,
        CONVERSATION,
        Role.BOT,
        "Hello!",
        NOW,
        intent="greeting",
        intent_confidence=0.93,
        sentiment="positive",
        negativity=-0.8,
        route=route,
        model_versions={"intent": "v1", "sentiment": "v1"},
        latency_ms=12.5,
    )
    body = {
        "conversation_id": CONVERSATION,
        "channel": "rest",
        "status": "claimed",
        "agent": "ana",
        "messages": [rest.render_stored(bare), rest.render_stored(full)],
    }
    conforms("/api/v1/conversations/{conversation_id}", "GET", body)


@pytest.mark.parametrize("intent", ["refund_status", None])
def test_understanding_and_answers_are_documented(intent: str | None) -> None:
    understanding = Understanding(
        intent=intent,
        intent_confidence=0.4,
        top_intents=(Scored("refund_status", 0.4), Scored("greeting", 0.3)),
        sentiment="neutral",
        negativity=0.1,
        sentiment_scores=(Scored("negative", 0.3), Scored("neutral", 0.5), Scored("positive", 0.2)),
        model_versions={"intent": "v2", "sentiment": "v1"},
    )
    conforms("/api/v1/understand", "POST", rest.render_understanding(understanding))
    answers = [Answer("5-7 business days.", 0.71, "data/conversations.jsonl:3", "refund?")]
    conforms("/api/v1/answers/search", "POST", rest.render_answers(answers, 0.55))
    conforms("/api/v1/answers/search", "POST", rest.render_answers([], 0.55))


def test_an_undocumented_answer_is_caught() -> None:
    reply = rest.render_reply(Reply(CONVERSATION, 7, Role.BOT, "Hi!", Route.ANSWER))
    body = {"conversation_id": CONVERSATION, "message_id": "6", "status": "bot", "agent": None}
    wrong = {**body, "duplicate": False, "replies": [reply]}
    assert not operation("/api/v1/messages", "POST").is_valid_response(answer("/", "POST", wrong))
    assert operation("/api/v1/messages", "POST").is_valid_response(
        answer("/", "POST", {**wrong, "message_id": 6})
    )


def test_errors_are_documented() -> None:
    for method, path, op in operations():
        for status in op["responses"]:
            if status.startswith(("4", "5")) and status != "413" and path != "/readyz":
                conforms(path, method, {"error": "what was wrong and what to send"}, int(status))
