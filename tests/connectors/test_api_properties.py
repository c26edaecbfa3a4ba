"""Property-based tests of everything that parses outside input: the REST API against its own
OpenAPI document (schemathesis), the widget's frame parser and the console's JSON API
(hypothesis).

The REST and console tests run the real app (real models, real SQLite) on 127.0.0.1 and a free
port, served by an event loop of its own in a thread, so that schemathesis' synchronous client
can call it. Every property is bounded (a fixed number of examples, derandomized, no deadline):
the same run finds the same examples every time, in well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bot.app.factory import RUNTIME, create_app
from bot.core.errors import BadRequestError
from bot.core.records import Feedback, Message
from bot.settings import ConsoleSettings
from bot.store.accounts import SqlAccountStore
from bot.store.api_keys import SqlApiKeyStore
from connectors.console import CSRF_HEADER
from connectors.http import MAX_ID
from connectors.openapi import OPENAPI
from connectors.rest import DEFAULT_CHANNELS
from connectors.widget import CHANNEL, MAX_ID_CHARS, parse_frame
from tests.helpers import runtime_settings

T = TypeVar("T")

# One bound for every property: the same examples on every run, and no deadline (a model call
# on a busy CI core can take a second).
BOUNDED = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
# Every REST answer: never a 5xx; a documented status, content type, headers and body; a body
# the document allows is not refused; what needs an API key refuses a request without one or
# with a wrong one. Not checked: that every body the document refuses is refused (the server
# is lenient where that does no harm, e.g. it strips white space before counting characters).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    ignored_auth,
]
TIMEOUT_S = 60
PASSWORD = "a long enough password"
MAX_CHARS = 4000
SECURED = [
    (method.upper(), path)
    for path, item in OPENAPI["paths"].items()
    for method, operation in item.items()
    if operation.get("security") != []
]
PUBLIC = [
    (method.upper(), path)
    for path, item in OPENAPI["paths"].items()
    for method, operation in item.items()
    if operation.get("security") == []
]
# A body each secured operation accepts, for the tests that are about who calls.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/api/v1/messages": {"sender": "keys-1", "text": "hello there"},
    "/webhooks/rest/webhook": {"sender": "keys-2", "message": "hello there"},
    "/api/v1/answers/search": {"text": "where is my refund"},
    "/api/v1/understand": {"text": "where is my refund"},
    "/api/v1/handoff": {"sender": "keys-3", "channel": "rest"},
    "/api/v1/feedback": {"message_id": 1, "rating": "up"},
}


# -- the real app in a thread ------------------------------------------------------------------


class LiveServer:
    """The real app on 127.0.0.1 and a free port, run by its own event loop in a thread.

    Args:
        make_app: builds the app (called on the server's loop).
    """

    def __init__(self, make_app: Callable[[], web.Application]) -> None:
        self.make_app = make_app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-server")
        self.runner: web.AppRunner | None = None
        self.url = ""

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT_S)

    @property
    def app(self) -> web.Application:
        assert self.runner is not None
        return self.runner.app

    def start(self) -> None:
        self.thread.start()
        self.url = self.run(self._start())

    async def _start(self) -> str:
        self.runner = web.AppRunner(self.make_app())
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        try:
            if self.runner is not None:
                self.run(self.runner.cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT_S)
            self.loop.close()


@dataclass(frozen=True)
class Keys:
    """API keys of the live server: one for the REST API's own channels, one for Telegram's."""

    default: str
    telegram: str

    def bearer(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.default}"}


@pytest.fixture(scope="module")
def live(runtime_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    db = tmp_path_factory.mktemp("api-properties") / "supportbot.db"
    settings_ = runtime_settings(runtime_models, f"sqlite+aiosqlite:///{db}")
    server = LiveServer(lambda: create_app(settings_))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keys(live: LiveServer) -> Keys:
    """Keys, as `supportbot api-keys create` makes them: from now on every caller needs one."""
    store = SqlApiKeyStore(live.app[RUNTIME].store)
    default = live.run(store.create("properties", DEFAULT_CHANNELS))
    telegram = live.run(store.create("telegram-only", ["telegram"]))
    return Keys(default.key, telegram.key)


@pytest.fixture(scope="module")
def api(live: LiveServer) -> schemathesis.BaseSchema:
    """The document the server serves, as schemathesis reads it."""
    schema = schemathesis.openapi.from_url(f"{live.url}/api/v1/openapi.json")
    # Requests carry our key (below), never made-up `Authorization` headers.
    schema.config.generation.update(with_security_parameters=False)
    return schema


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


# -- REST: the server against its OpenAPI document ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("method,path", SECURED + PUBLIC)
def test_the_rest_api_answers_as_documented(
    api: schemathesis.BaseSchema,
    live: LiveServer,
    keys: Keys,
    http: requests.Session,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = api[path][method]
    if mode == GenerationMode.NEGATIVE and not (operation.body or operation.path_parameters):
        pytest.skip("nothing to get wrong: no body, no parameters")
    headers = keys.bearer() if (method, path) in SECURED else None

    @BOUNDED
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers_as_documented(case: Case) -> None:
        case.call_and_validate(
            base_url=live.url, session=http, headers=headers, checks=CHECKS, timeout=TIMEOUT_S
        )

    answers_as_documented()


def _routes(router: web.UrlDispatcher) -> Iterator[tuple[str, str]]:
    for resource in router.resources():
        info = resource.get_info()
        if "app" in info:  # a sub-application (the REST API's, with its own middleware)
            yield from _routes(info["app"].router)
            continue
        for route in resource:
            yield route.method.lower(), resource.canonical


@pytest.mark.slow
def test_every_api_route_is_documented(live: LiveServer) -> None:
    served = {
        (method, path)
        for method, path in _routes(live.app.router)
        if method != "head"
        and (
            path.startswith(("/api/", "/webhooks/")) or path in ("/healthz", "/readyz", "/metrics")
        )
    }
    documented = {(m, p) for p, item in OPENAPI["paths"].items() for m in item}
    assert served == documented


@pytest.mark.slow
@pytest.mark.parametrize("method,path", [op for op in SECURED if op[0] == "POST"])
def test_a_body_over_the_limit_gets_the_documented_413(
    api: schemathesis.BaseSchema,
    live: LiveServer,
    keys: Keys,
    http: requests.Session,
    method: str,
    path: str,
) -> None:
    limit = live.app[RUNTIME].settings.server.max_body_bytes
    body = json.dumps({**VALID_BODIES[path], "padding": "a" * limit})
    headers = {"Content-Type": "application/json", **keys.bearer()}
    response = http.post(f"{live.url}{path}", data=body, headers=headers)
    assert response.status_code == 413
    api[path][method].validate_response(response)


@pytest.mark.slow
@pytest.mark.parametrize("method,path", SECURED)
@pytest.mark.parametrize("authorization", [None, "Bearer sb_notakey", "Basic b2xnYTpwdw=="])
def test_without_a_valid_key_the_api_answers_the_documented_401(
    api: schemathesis.BaseSchema,
    live: LiveServer,
    keys: Keys,
    http: requests.Session,
    method: str,
    path: str,
    authorization: str | None,
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    url = f"{live.url}{path}".replace("{conversation_id}", "0" * 32)
    response = http.request(method, url, json=VALID_BODIES.get(path), headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    api[path][method].validate_response(response)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/api/v1/messages", "/webhooks/rest/webhook", "/api/v1/handoff"])
def test_a_key_for_other_channels_gets_the_documented_403(
    api: schemathesis.BaseSchema, live: LiveServer, keys: Keys, http: requests.Session, path: str
) -> None:
    headers = keys.bearer(keys.telegram)
    response = http.post(f"{live.url}{path}", json=VALID_BODIES[path], headers=headers)
    assert response.status_code == 403, response.text
    api[path]["POST"].validate_response(response)


# -- strategies for anything a client may send -------------------------------------------------

# Text with everything JSON can carry: controls, NUL, astral characters and lone surrogates.
texts = st.lists(
    st.one_of(
        st.characters(),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
        st.sampled_from(["\x00", " ", "\n", "\u2028", "²", "\ufeff"]),
    ),
    max_size=30,
).map("".join)
integers = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 1, MAX_ID, MAX_ID + 1, 2**64, -(2**63), 10**19, 10**20]),
)
scalars = st.one_of(
    st.none(), st.booleans(), integers, st.floats(), texts, st.sampled_from(["up", "down"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Raw bodies no JSON encoder writes: deep nesting, huge numbers, bytes that are not UTF-8.
raw_bodies = st.one_of(
    st.integers(30, 3000).map(nested),
    st.integers(30, 3000).map(lambda d: '{"a":' * d + "1" + "}" * d),
    st.integers(1, 6000).map(lambda n: '{"message_id": 1' + "0" * n + "}"),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    texts,
)


def objects(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects with any of these fields, each a likely value or any JSON at all."""
    return st.fixed_dictionaries(
        {}, optional={name: st.one_of(likely, json_values) for name, likely in fields.items()}
    )


# -- the widget's frame parser -----------------------------------------------------------------

frames = st.one_of(
    objects(
        {
            "type": st.sampled_from(["message", "feedback", "typing", "Message", ""]),
            "text": texts,
            "client_id": st.text(max_size=MAX_ID_CHARS + 2) | texts,
            "message_id": integers,
            "rating": st.sampled_from(["up", "down", "UP", ""]),
        }
    ).map(json.dumps),
    json_values.map(json.dumps),
    raw_bodies,
)


@settings(BOUNDED, max_examples=300)
@given(data=frames)
@example(data='{"type": "message", "text": "\\ud800", "client_id": "c1"}')
@example(data='{"type": "message", "text": "hi", "client_id": "\\udfff"}')
@example(data='{"type": "message", "text": "hi", "client_id": "\\u0000"}')
@example(data=nested(5000))
@example(data='{"type": "feedback", "message_id": 9223372036854775808, "rating": "up"}')
@example(data='{"type": "feedback", "message_id": 1' + "0" * 5000 + ', "rating": "up"}')
def test_the_widget_parser_gives_an_event_or_a_clear_refusal(data: str) -> None:
    try:
        event = parse_frame(data, "session-1234", MAX_CHARS)
    except BadRequestError as exc:
        assert str(exc)
        return
    assert event is None or isinstance(event, Message | Feedback)
    if isinstance(event, Message):
        assert event.channel == CHANNEL and event.sender == "session-1234"
        assert event.text.strip() and len(event.text) <= MAX_CHARS
        assert event.client_id and len(event.client_id) <= MAX_ID_CHARS
        for value in (event.text, event.client_id):
            value.encode("utf-8")  # storable: no lone surrogate
            assert "\x00" not in value
    if isinstance(event, Feedback):
        assert 0 < event.message_id <= MAX_ID and event.rating in ("up", "down")


# -- the console's JSON API --------------------------------------------------------------------


@dataclass
class Operator:
    """A signed-in operator (a cookie jar and the CSRF token), and what there is to work on:
    an escalated conversation the operator has claimed, and its customer, bot and agent
    message ids."""

    http: requests.Session
    csrf: str
    conversation_id: str
    message_ids: list[int]

    def post(self, url: str, body: str) -> requests.Response:
        headers = {"Content-Type": "application/json", CSRF_HEADER: self.csrf}
        return self.http.post(url, data=body.encode("utf-8", "surrogatepass"), headers=headers)


@pytest.fixture(scope="module")
def operator(live: LiveServer, keys: Keys) -> Iterator[Operator]:
    accounts = SqlAccountStore(live.app[RUNTIME].store, ConsoleSettings())
    live.run(accounts.add("olga", "operator", PASSWORD))
    with requests.Session() as session:
        signed = session.post(
            f"{live.url}/console/api/session", json={"name": "olga", "password": PASSWORD}
        )
        assert signed.status_code == 200, signed.text
        handoff = requests.post(
            f"{live.url}/api/v1/handoff",
            json={"sender": "prop-1", "channel": "rest", "text": "my parcel never came"},
            headers=keys.bearer(),
        ).json()
        cid = handoff["conversation_id"]
        ids = [handoff["message_id"], handoff["replies"][0]["message_id"]]
        operator = Operator(session, signed.json()["csrf_token"], cid, ids)
        conversation = f"{live.url}/console/api/conversations/{cid}"
        assert operator.post(f"{conversation}/claim", "{}").status_code == 200
        reply = operator.post(f"{conversation}/reply", json.dumps({"text": "Let me check."}))
        assert reply.status_code == 201, reply.text
        ids.append(reply.json()["message"]["id"])
        yield operator


def refused_clearly(response: requests.Response) -> None:
    """Anything but a server error; a refusal says why, as JSON `{"error"}`."""
    assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    if response.status_code >= 400 and "json" in response.headers.get("Content-Type", ""):
        assert isinstance(response.json()["error"], str)


def encoded(body: Any) -> str:
    return body if isinstance(body, str) else json.dumps(body)


ids = st.one_of(integers, texts)
sentiments = st.sampled_from(["negative", "neutral", "positive", "furious"])
intents = st.sampled_from(["refund_status", "new_intent", "../../evil", "a" * 65, "Bad Name"])
CONSOLE_BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "session": objects({"name": texts, "password": texts}),
    "reply": objects({"text": texts}),
    "message labels": objects({"intent": intents, "sentiment": sentiments, "rating": texts}),
    "conversation labels": objects({"sentiment": sentiments}),
    "approved answers": objects(
        {
            "answer_message_id": ids,
            "question_message_id": ids,
            "question": texts,
            "intent": intents,
        }
    ),
}


def console_url(live: LiveServer, operator: Operator, endpoint: str, message: int) -> str:
    api = f"{live.url}/console/api"
    conversation = f"{api}/conversations/{operator.conversation_id}"
    return {
        "session": f"{api}/session",
        "reply": f"{conversation}/reply",
        "message labels": f"{api}/messages/{message}/labels",
        "conversation labels": f"{conversation}/labels",
        "approved answers": f"{api}/approved-answers",
    }[endpoint]


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", sorted(CONSOLE_BODIES))
def test_the_console_api_never_fails_on_a_body(
    live: LiveServer, operator: Operator, endpoint: str
) -> None:
    @BOUNDED
    @given(
        body=st.one_of(CONSOLE_BODIES[endpoint], json_values, raw_bodies),
        message=st.sampled_from(operator.message_ids),
    )
    def never_fails(body: Any, message: int) -> None:
        url = console_url(live, operator, endpoint, message)
        refused_clearly(operator.post(url, encoded(body)))

    never_fails()


path_segments = st.one_of(
    texts.filter(lambda s: s not in ("", ".", "..")),
    integers.map(str),
    st.sampled_from(["²", "1²", "0", "-1", str(MAX_ID + 1), "9" * 30, "%00", "%ED%A0%80"]),
)


def _quoted(segment: str) -> str:
    return quote(segment.encode("utf-8", "surrogatepass"), safe="%")


@pytest.mark.slow
def test_the_console_api_never_fails_on_ids_in_the_path(
    live: LiveServer, operator: Operator
) -> None:
    api = f"{live.url}/console/api"

    @BOUNDED
    @given(segment=path_segments)
    @example(segment="²")
    @example(segment=str(MAX_ID + 1))
    @example(segment="\ud800")
    def never_fails(segment: str) -> None:
        quoted = _quoted(segment)
        refused_clearly(operator.post(f"{api}/messages/{quoted}/labels", '{"rating": "good"}'))
        refused_clearly(operator.post(f"{api}/conversations/{quoted}/claim", "{}"))
        refused_clearly(operator.http.get(f"{api}/conversations/{quoted}"))
        refused_clearly(operator.http.get(f"{api}/dashboard?days={_quoted(segment)}"))

    never_fails()


# -- REST: what schemathesis does not send -----------------------------------------------------


def _fields(path: str) -> list[str]:
    body = OPENAPI["paths"][path]["post"]["requestBody"]
    return list(body["content"]["application/json"]["schema"]["properties"])


EDGES: list[Any] = [
    MAX_ID,
    MAX_ID + 1,
    -MAX_ID - 1,
    10**20,
    "\ud800",
    "\x00",
    "a" * (MAX_CHARS + 1),
    " ",
    1.5,
    True,
]
edge_texts = st.sampled_from(["a" * MAX_CHARS, "a" * (MAX_CHARS + 1), " " * 9, "\ud800", "\x00"])


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(VALID_BODIES))
def test_the_rest_api_never_fails_on_a_body(
    api: schemathesis.BaseSchema, live: LiveServer, keys: Keys, http: requests.Session, path: str
) -> None:
    """Bodies with lone surrogates, ids past the store's range, deep nesting and huge numbers
    (schemathesis writes valid UTF-8 JSON within the document's types): a documented 4xx."""
    operation = api[path]["POST"]
    documented = {int(code) for code in OPENAPI["paths"][path]["post"]["responses"]}
    likely = st.one_of(texts, integers, edge_texts)
    bodies = objects({name: likely for name in _fields(path)})

    @BOUNDED
    @given(body=st.one_of(bodies, bodies.map(lambda b: {**VALID_BODIES[path], **b}), raw_bodies))
    def never_fails(body: Any) -> None:
        response = http.post(
            f"{live.url}{path}",
            data=encoded(body).encode("utf-8", "surrogatepass"),
            headers={"Content-Type": "application/json", **keys.bearer()},
            timeout=TIMEOUT_S,
        )
        refused_clearly(response)
        assert response.status_code in documented, response.text
        operation.validate_response(response)

    # Every field of a good body at each edge, always tried.
    for name in _fields(path):
        for edge in EDGES:
            never_fails = example(body={**VALID_BODIES[path], name: edge})(never_fails)
    never_fails()
