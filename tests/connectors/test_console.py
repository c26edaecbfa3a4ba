"""The agent console in-process: the real app (real models, real SQLite), the aiohttp test
server, one cookie jar per person, real WebSocket clients for the console's events and for the
customer's widget."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, make_mocked_request
from yarl import URL

from bot.app.factory import RUNTIME, create_app
from bot.core.csat import QUESTION, SCORES
from bot.core.delivery import DeliveryError
from bot.core.errors import ConfigurationError
from bot.core.records import Conversation, Reply
from connectors.console import (
    CONSOLE,
    came_over_https,
    client_address,
    parse_trusted_proxies,
    safe_next,
)
from connectors.http import MAX_ID
from tests.helpers import runtime_settings

pytestmark = pytest.mark.slow

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
TIMEOUT = 20.0
PASSWORD = "s3cret-enough"


class BrokenChannel:
    """A channel whose pushes fail (a `Deliverer`, like Telegram's when the API is down)."""

    async def deliver(self, conversation: Conversation, reply: Reply) -> None:
        raise DeliveryError("the channel is down (test)")


class Person:
    """One browser: its own cookie jar, and the CSRF token from signing in."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.http = aiohttp.ClientSession(
            str(client.make_url("")), cookie_jar=aiohttp.CookieJar(unsafe=True)
        )
        self.csrf = ""

    @property
    def origin(self) -> str:
        return str(self.client.make_url("").origin())

    async def sign_in(self, name: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
        response = await self.http.post(
            "/console/api/session", json={"name": name, "password": password}
        )
        if response.status == 200:
            self.csrf = (await response.json())["csrf_token"]
        return response

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(f"/console/api{path}") as response:
            return response.status, await response.json()

    async def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf}
        async with self.http.post(f"/console/api{path}", json=body or {}, headers=headers) as r:
            return r.status, await r.json()

    async def events(self) -> aiohttp.ClientWebSocketResponse:
        ws = await self.http.ws_connect("/console/api/events", origin=self.origin)
        assert await ws.receive_json(timeout=TIMEOUT) == {"type": "hello"}
        return ws


async def sign_in_as_if_proxied(olga: Person) -> str:
    """Olga's wrong password "forwarded for" 203.0.113.9, then her right one "forwarded" over
    https; the cookie header of the second."""
    proxied = await olga.http.post(
        "/console/api/session",
        json={"name": "olga", "password": "wrong password"},
        headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"},
    )
    assert proxied.status == 401
    secure = await olga.http.post(
        "/console/api/session",
        json={"name": "olga", "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert secure.status == 200
    return secure.headers["Set-Cookie"]


async def next_event(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """The next event of `kind` (events of other kinds in between are skipped)."""
    while True:
        event: dict[str, Any] = await ws.receive_json(timeout=TIMEOUT)
        if event["type"] == kind:
            return event


async def widget_frame(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = await ws.receive_json(timeout=TIMEOUT)
        if frame["type"] == kind:
            return frame


async def widget_customer(
    client: TestClient[Any, Any], session: str
) -> aiohttp.ClientWebSocketResponse:
    """A widget customer's socket, past its hello (the history frame comes next)."""
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "hello", "session": session})
    return ws


async def say(ws: aiohttp.ClientWebSocketResponse, text: str, client_id: str) -> list[Any]:
    """A customer message over the widget socket; the frames up to its status."""
    await ws.send_json({"type": "message", "text": text, "client_id": client_id})
    frames = [await ws.receive_json(timeout=TIMEOUT)]
    while frames[-1]["type"] not in ("status", "error"):
        frames.append(await ws.receive_json(timeout=TIMEOUT))
    return frames


@pytest.fixture
async def make_client(
    aiohttp_client: ClientFactory, runtime_models: Path, sqlite_url: str
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


# -- sessions, CSRF, roles, rate limit ---------------------------------------------------------


async def test_signing_in_csrf_roles_and_the_rate_limit(make_client: Any) -> None:
    client = await make_client(console={"max_failed_sign_ins": 2, "sign_in_window_s": 60})
    ana, olga, stranger = Person(client), Person(client), Person(client)
    try:
        page = await stranger.http.get("/console", allow_redirects=False)
        assert page.status == 302
        assert page.headers["Location"] == "/console/sign-in?next=/console"
        status, body = await stranger.get("/queue")
        assert status == 401 and "sign in" in body["error"]
        sign_in_page = await stranger.http.get("/console/sign-in")
        assert sign_in_page.status == 200 and sign_in_page.content_type == "text/html"
        script = await stranger.http.get("/console/static/console.js")
        assert script.status == 200 and script.content_type == "text/javascript"
        assert (await stranger.http.get("/console/static/secrets.txt")).status == 404

        wrong = await ana.sign_in("ana", "not the password")
        assert wrong.status == 401
        assert await wrong.json() == {"error": "wrong name or password"}
        signed = await ana.sign_in("ana")
        assert signed.status == 200
        assert (await signed.json())["agent"] == {"name": "ana", "role": "agent"}
        cookie = signed.headers["Set-Cookie"]
        assert cookie.startswith("supportbot_console=")
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=43200"):
            assert attribute in cookie
        assert "Secure" not in cookie  # plain http in this test
        page = await ana.http.get("/console", allow_redirects=False)
        assert page.status == 200 and page.content_type == "text/html"
        assert page.headers["X-Frame-Options"] == "DENY"
        status, me = await ana.get("/me")
        assert status == 200 and me == {"name": "ana", "role": "agent", "csrf_token": ana.csrf}

        # State changes need the CSRF token.
        no_token = await ana.http.post("/console/api/conversations/x/claim")
        assert no_token.status == 403 and "X-CSRF-Token" in (await no_token.json())["error"]
        bad = await ana.http.post(
            "/console/api/conversations/x/claim", headers={"X-CSRF-Token": "forged"}
        )
        assert bad.status == 403
        status, _ = await ana.post("/conversations/x/claim")
        assert status == 404  # with the token it gets through (and finds nothing)

        # The dashboard is for operators.
        status, body = await ana.get("/dashboard")
        assert status == 403 and "operators" in body["error"]
        assert (await olga.sign_in("olga")).status == 200
        status, _ = await olga.get("/dashboard?days=3")
        assert status == 200

        # The events socket wants the session and the console's own origin.
        refused = await stranger.http.get("/console/api/events")
        assert refused.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as foreign:
            await ana.http.ws_connect("/console/api/events", origin="https://evil.example")
        assert foreign.value.status == 403

        # Signing out ends the session and clears the cookie.
        status_out = await ana.http.delete(
            "/console/api/session", headers={"X-CSRF-Token": ana.csrf}
        )
        assert status_out.status == 204
        assert (await ana.get("/me"))[0] == 401

        # No proxy is configured: forwarded headers count for nothing, even from loopback.
        cookie = await sign_in_as_if_proxied(olga)
        accounts = client.server.app[CONSOLE].accounts
        assert await accounts.failures(address="203.0.113.9") == 0
        assert await accounts.failures(address="127.0.0.1") == 2  # with ana's typo above
        assert "Secure" not in cookie

        # Rate limit: 2 failures for a name, then 429 even for the right password. Olga's
        # wrong password above is one: signing in since then forgave nothing.
        assert (await stranger.sign_in("olga", "guessing-again")).status == 401
        limited = await stranger.sign_in("olga")
        assert limited.status == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert "too many failed sign-ins" in (await limited.json())["error"]
    finally:
        for person in (ana, olga, stranger):
            await person.http.close()


# -- the hand-off, end to end ------------------------------------------------------------------


async def test_escalation_claim_reply_labels_approve_resolve_and_the_bot_again(
    make_client: Any,
) -> None:
    client = await make_client()
    ana, bo = Person(client), Person(client)
    customer = await widget_customer(client, "customer-0001")
    try:
        await ana.sign_in("ana")
        await bo.sign_in("bo")
        events = await ana.events()
        assert (await customer.receive_json(timeout=TIMEOUT))["type"] == "history"

        frames = await say(customer, "i want to talk to a human", "m1")
        assert frames[-1] == {"type": "status", "status": "waiting", "agent": None}
        opened = await next_event(events, "escalation.opened")
        cid = opened["conversation_id"]

        status, queue = await ana.get("/queue")
        assert status == 200
        [item] = queue["escalations"]
        assert item["conversation_id"] == cid and item["channel"] == "widget"
        assert item["customer"] == "customer-0001"
        assert item["reason"] == "asked_for_human" and item["status"] == "open"
        assert item["last_message"] == "i want to talk to a human" and item["unread"] == 1
        assert item["urgency"] >= item["priority"] > 0 and item["waiting_s"] >= 0

        # Claim: one agent gets it, the other is told who has it.
        status, claimed = await ana.post(f"/conversations/{cid}/claim")
        assert status == 200 and claimed["escalation"]["assignee"] == "ana"
        assert (await next_event(events, "escalation.claimed"))["agent"] == "ana"
        status, conflict = await bo.post(f"/conversations/{cid}/claim")
        assert status == 409 and "ana" in conflict["error"]
        status, conflict = await bo.post(f"/conversations/{cid}/reply", {"text": "hi"})
        assert status == 409 and conflict["error"].startswith("claimed by ana")

        # The reply reaches the customer's widget, marked as an agent's.
        status, sent = await ana.post(
            f"/conversations/{cid}/reply", {"text": "Hi, Ana here. How can I help?"}
        )
        assert status == 201 and sent["delivered"] is True and sent["undelivered_reason"] is None
        assert sent["message"]["role"] == "agent" and sent["message"]["agent"] == "ana"
        joined = await widget_frame(customer, "reply")  # the claim is told first
        assert (joined["role"], joined["text"]) == ("system", "ana joined the conversation.")
        pushed = await widget_frame(customer, "reply")
        assert pushed["role"] == "agent" and pushed["text"] == "Hi, Ana here. How can I help?"
        assert (await widget_frame(customer, "status"))["status"] == "claimed"

        # While claimed the bot is silent; the agent sees the message.
        frames = await say(customer, "my refund never arrived", "m2")
        assert [f["type"] for f in frames] == ["ack", "status"]
        assert (await next_event(events, "message"))["conversation_id"] == cid
        [item] = (await ana.get("/queue"))[1]["escalations"]
        assert item["unread"] == 1 and item["last_message"] == "my refund never arrived"

        status, view = await ana.get(f"/conversations/{cid}")
        assert status == 200
        assert view["conversation"]["status"] == "claimed"
        assert view["escalation"]["status"] == "claimed" and view["escalation"]["reason"]
        roles = [m["role"] for m in view["messages"]]
        assert roles == ["customer", "bot", "system", "agent", "customer"]
        first, handoff_reply, _joined, agent_reply, last = view["messages"]
        assert first["intent"] == "talk_to_human" and first["confidence"] > 0
        assert view["guesses"] and isinstance(view["guesses"][0][1], float)

        # Labels, each stored with who gave it.
        status, _ = await ana.post(
            f"/messages/{last['id']}/labels", {"intent": "refund_status", "sentiment": "negative"}
        )
        assert status == 201
        status, _ = await ana.post(f"/messages/{first['id']}/labels", {"intent": "angry_refund"})
        assert status == 201  # a new intent name
        status, bad = await ana.post(f"/messages/{first['id']}/labels", {"intent": "Not OK"})
        assert status == 400 and "valid new name" in bad["error"]
        status, bad = await ana.post(f"/messages/{first['id']}/labels", {"rating": "good"})
        assert status == 400 and "bot's messages" in bad["error"]
        status, _ = await ana.post(f"/messages/{handoff_reply['id']}/labels", {"rating": "bad"})
        assert status == 201
        status, _ = await ana.post(f"/conversations/{cid}/labels", {"sentiment": "negative"})
        assert status == 201
        status, approved = await ana.post(
            "/approved-answers", {"answer_message_id": agent_reply["id"]}
        )
        assert status == 201 and approved["id"] > 0
        status, bad = await ana.post("/approved-answers", {"answer_message_id": first["id"]})
        assert status == 400

        view = (await ana.get(f"/conversations/{cid}"))[1]
        labels = {m["id"]: m["labels"] for m in view["messages"]}
        assert labels[last["id"]] == {
            "intent": "refund_status",
            "sentiment": "negative",
            "rating": None,
            "by": "ana",
        }
        assert labels[first["id"]]["intent"] == "angry_refund"
        assert labels[handoff_reply["id"]]["rating"] == "bad"
        assert view["labels"] == {"sentiment": "negative"}
        assert [m["approved"] for m in view["messages"]] == [False, False, False, True, False]
        store = client.server.app[RUNTIME].store
        stored = await store.feedback(last["id"])
        assert [(f.author, f.corrected_intent) for f in stored] == [("ana", "refund_status")]
        assert [(f.author, f.rating) for f in await store.feedback(handoff_reply["id"])] == [
            ("ana", "down")
        ]
        status, intents = await ana.get("/intents")
        assert "angry_refund" in intents["intents"] and "talk_to_human" in intents["intents"]
        assert intents["intents"] == sorted(intents["intents"])

        # Resolve: only the assignee (or an operator); the customer is told, the bot is back.
        status, _ = await bo.post(f"/conversations/{cid}/resolve")
        assert status == 409
        status, closed = await ana.post(f"/conversations/{cid}/resolve")
        assert status == 200 and closed["escalation"]["outcome"] == "resolved"
        resolved = await next_event(events, "escalation.resolved")
        assert resolved["outcome"] == "resolved" and resolved["agent"] == "ana"
        notice = await widget_frame(customer, "reply")
        assert notice["role"] == "system" and "resolved" in notice["text"]
        assert (await widget_frame(customer, "status"))["status"] == "bot"
        # Then the customer is asked to rate the help (CSAT), with the scores as buttons.
        question = await widget_frame(customer, "reply")
        assert question["text"] == QUESTION and question["quick_replies"] == list(SCORES)
        assert (await widget_frame(customer, "status"))["status"] == "bot"
        assert (await ana.get("/queue"))[1]["escalations"] == []
        frames = await say(customer, "hello there", "m3")
        reply = next(f for f in frames if f["type"] == "reply")
        assert reply["role"] == "bot" and reply["route"] == "response"
        await events.close()
    finally:
        await customer.close()
        await ana.http.close()
        await bo.http.close()


async def test_release_hand_back_and_the_dashboard_figures(make_client: Any) -> None:
    client = await make_client()
    ana, bo, olga = Person(client), Person(client), Person(client)
    try:
        for person, name in ((ana, "ana"), (bo, "bo"), (olga, "olga")):
            await person.sign_in(name)

        async def send(sender: str, text: str) -> dict[str, Any]:
            response = await client.post("/api/v1/messages", json={"sender": sender, "text": text})
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body

        await send("rest-1", "hello")
        other_id = (await send("rest-2", "where is my order"))["conversation_id"]
        body = await send("rest-1", "can i speak to a person please")
        assert body["status"] == "waiting"
        cid = body["conversation_id"]

        # Release: only the assignee or an operator.
        assert (await ana.post(f"/conversations/{cid}/claim"))[0] == 200
        status, conflict = await bo.post(f"/conversations/{cid}/release")
        assert status == 409 and "only they or an operator" in conflict["error"]
        status, released = await olga.post(f"/conversations/{cid}/release")
        assert status == 200 and released["escalation"]["status"] == "open"
        assert released["escalation"]["assignee"] is None
        assert (await ana.get("/queue"))[1]["escalations"][0]["status"] == "open"
        status, _ = await ana.post(f"/conversations/{cid}/handback")
        assert status == 409  # not claimed by her any more
        assert (await bo.post(f"/conversations/{cid}/claim"))[0] == 200
        status, sent = await bo.post(f"/conversations/{cid}/reply", {"text": "Bo here, hello!"})
        # REST has no push channel: the reply waits in the transcript, and the agent is told
        # it was not delivered.
        assert status == 201 and sent["delivered"] is False
        # A channel that fails: the reply is kept, and the agent is told it did not arrive.
        client.server.app[RUNTIME].dispatcher.register("rest", BrokenChannel())
        status, sent = await bo.post(f"/conversations/{cid}/reply", {"text": "Still there?"})
        assert status == 201 and sent["delivered"] is False
        status, closed = await bo.post(f"/conversations/{cid}/handback")
        assert status == 200 and closed["escalation"]["outcome"] == "handed_back"

        transcript = await (await client.get(f"/api/v1/conversations/{cid}")).json()
        assert transcript["status"] == "bot"
        texts = [(m["role"], m["text"]) for m in transcript["messages"]]
        assert ("agent", "Bo here, hello!") in texts and ("agent", "Still there?") in texts
        assert texts[-1][0] == "system" and "assistant" in texts[-1][1]
        after = await send("rest-1", "hello")
        assert after["replies"][0]["route"] == "response"

        # Dashboard: today's figures are what was sent above: 5 customer messages, each
        # answered by the bot (one hand-off), 2 agent replies and 1 notice.
        await send("rest-2", "good morning")
        routes = []
        for conversation_id in (cid, other_id):
            transcript = await (await client.get(f"/api/v1/conversations/{conversation_id}")).json()
            routes += [m["route"] for m in transcript["messages"] if m["role"] == "customer"]
        assert len(routes) == 5 and routes.count("handoff") == 1
        automated = sum(route in ("response", "answer", "handler") for route in routes)
        status, dashboard = await olga.get("/dashboard?days=7")
        assert status == 200 and len(dashboard["days"]) == 7
        today = dashboard["days"][-1]
        assert today["date"] == datetime.now(UTC).date().isoformat()
        assert today["customer_messages"] == 5
        # customer, bot, agent, system: the hand-back notice and "ana/bo joined"
        assert today["messages"] == 5 + 5 + 2 + 1 + 2
        assert today["automated"] == automated
        assert today["automation_rate"] == round(automated / 5, 4)
        assert today["escalations"] == {"asked_for_human": 1}
        assert dashboard["days"][0]["messages"] == 0
        totals = dashboard["totals"]
        assert totals["customer_messages"] == 5 and totals["automated"] == automated
        assert totals["outcomes"] == {"resolved": 0, "handed_back": 1}
        assert totals["open_escalations"] == 0
        intents = {i["intent"]: i for i in dashboard["intents"]}
        assert intents["greeting"]["messages"] >= 2
        assert 0 < intents["greeting"]["mean_confidence"] <= 1
        assert (await olga.get("/dashboard?days=0"))[0] == 400
        assert (await olga.get("/dashboard?days=week"))[0] == 400
    finally:
        for person in (ana, bo, olga):
            await person.http.close()


# -- the unclaimed timeout ---------------------------------------------------------------------


async def test_an_unclaimed_escalation_tells_the_customer_once(make_client: Any) -> None:
    client = await make_client(escalation={"unclaimed_timeout_s": 0.3})
    ana = Person(client)
    customer = await widget_customer(client, "customer-0002")
    try:
        await ana.sign_in("ana")
        events = await ana.events()
        await widget_frame(customer, "history")
        frames = await say(customer, "i want to talk to a human", "m1")
        assert frames[-1]["status"] == "waiting"
        timeout = await next_event(events, "escalation.timeout")
        notice = await widget_frame(customer, "reply")
        assert notice["role"] == "system" and "busy" in notice["text"]
        [item] = (await ana.get("/queue"))[1]["escalations"]
        assert item["conversation_id"] == timeout["conversation_id"] and item["timed_out"]

        # Told once: later checks (this replica's loop, or another replica) do nothing.
        await asyncio.sleep(0.5)
        console = client.server.app[CONSOLE].console
        assert await console.time_out_unclaimed() == []
        assert await console.desk.time_out(timeout["escalation_id"], "again") is None
        transcript = await client.server.app[RUNTIME].store.transcript(item["conversation_id"])
        assert [m.role.value for m in transcript].count("system") == 1
        await events.close()
    finally:
        await customer.close()
        await ana.http.close()


def test_forwarded_headers_count_only_from_a_configured_proxy() -> None:
    headers = {"X-Forwarded-For": "10.1.1.1, 203.0.113.9", "X-Forwarded-Proto": "https"}
    request = make_mocked_request("GET", "/", headers=headers)
    proxies = parse_trusted_proxies(["10.0.0.2", "fd00::/8"])
    proxy = request.clone(remote="10.0.0.2")
    assert client_address(proxy, proxies) == "203.0.113.9" and came_over_https(proxy, proxies)
    # A private or loopback peer is not a proxy unless it is configured as one.
    for peer in ("10.0.0.3", "127.0.0.1", "192.168.1.5", "93.184.216.34"):
        other = request.clone(remote=peer)
        assert client_address(other, proxies) == peer and not came_over_https(other, proxies)
    assert client_address(proxy, ()) == "10.0.0.2" and not came_over_https(proxy, ())
    # A chain of proxies: the first address from the right that is not a proxy is the client.
    chain = make_mocked_request(
        "GET", "/", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9, fd00::7"}
    ).clone(remote="10.0.0.2")
    assert client_address(chain, proxies) == "203.0.113.9"
    # What a proxy passes on that is no address is not believed either.
    garbage = make_mocked_request("GET", "/", headers={"X-Forwarded-For": "1.2.3.4, evil"})
    assert client_address(garbage.clone(remote="10.0.0.2"), proxies) == "10.0.0.2"


@pytest.mark.parametrize("value", ["10.0.0.300", "proxy.internal", "10.0.0.1/33", ""])
def test_a_trusted_proxy_that_is_no_address_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="server.trusted_proxies"):
        parse_trusted_proxies(["10.0.0.1", value])


def test_trusted_proxies_take_addresses_and_networks() -> None:
    assert parse_trusted_proxies(["172.28.0.10", "10.0.0.0/8", "::1"]) == (
        ipaddress.ip_network("172.28.0.10/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


@pytest.mark.parametrize(
    "raw",
    [
        "/\t/evil.example/x",
        "/\n/evil.example/x",
        "/\r/evil.example/x",
        "//evil.example/x",
        "/\\evil.example/x",
        "\\\\evil.example/x",
        "/\\/evil.example/x",
        "https://evil.example/x",
        "http:/evil.example/x",
        "javascript:alert(1)",
        "evil.example/x",
        " /console",
        "/console\x00",
        "/console\x7f",
        "",
    ],
)
def test_only_a_path_on_this_site_is_a_place_to_go_after_signing_in(raw: str) -> None:
    assert safe_next(raw) == "/console"


@pytest.mark.parametrize(
    "raw", ["/console", "/console#conversation=ab12", "/console?x=1#dashboard", "/healthz"]
)
def test_a_path_on_this_site_is_kept(raw: str) -> None:
    assert safe_next(raw) == raw


# -- hardening: the sign-in limit under a burst, content types, redirects, CSP, bad input --------


async def test_a_burst_of_parallel_sign_ins_gets_at_most_the_limit_of_answers(
    make_client: Any,
) -> None:
    client = await make_client(console={"max_failed_sign_ins": 3, "sign_in_window_s": 600})

    async def attempt(password: str) -> int:
        body = {"name": "ana", "password": password}
        async with client.post("/console/api/session", json=body) as response:
            return response.status

    # 150 wrong guesses at once, the right password last: three are checked, the rest wait.
    statuses = await asyncio.gather(*(attempt(f"guess {i}") for i in range(150)), attempt(PASSWORD))
    assert set(statuses) <= {200, 401, 429}
    assert statuses.count(401) + statuses.count(200) == 3
    assert statuses.count(429) == 151 - 3
    assert await attempt(PASSWORD) == 429


async def test_sign_in_wants_json_and_sends_back_to_this_site_only(make_client: Any) -> None:
    client = await make_client()
    ana = Person(client)
    try:
        # A cross-site form can post text/plain or a form encoding, never JSON: refused.
        credentials = json.dumps({"name": "ana", "password": PASSWORD})
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            async with ana.http.post(
                "/console/api/session", data=credentials.encode(), headers=headers
            ) as response:
                assert response.status == 415, content_type
                assert "application/json" in (await response.json())["error"]
        assert (await ana.get("/me"))[0] == 401
        signed = await ana.http.post(
            "/console/api/session",
            data=credentials,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert signed.status == 200
        ana.csrf = (await signed.json())["csrf_token"]
        # So do the API's other JSON bodies (the CSRF token is checked as before).
        async with ana.http.post(
            "/console/api/conversations/x/reply",
            data=json.dumps({"text": "hi"}),
            headers={"X-CSRF-Token": ana.csrf, "Content-Type": "text/plain"},
        ) as response:
            assert response.status == 415
        async with ana.http.post(
            "/console/api/conversations/x/reply",
            data=json.dumps({"text": "hi"}),
            headers={"Content-Type": "text/plain"},
        ) as response:
            assert response.status == 403

        # The sign-in page: an unsafe `next` is replaced by the console's own path.
        for bad in (
            "/%09/evil.example/x",
            "/%0a/evil.example/x",
            "/%0d/evil.example/x",
            "//evil.example/x",
            "/%5Cevil.example/x",
            "%5C%5Cevil.example/x",
            "https://evil.example/x",
            "javascript:alert(1)",
        ):
            url = URL(f"/console/sign-in?next={bad}", encoded=True)
            async with ana.http.get(url, allow_redirects=False) as response:
                assert response.status == 302, bad
                assert response.headers["Location"] == "/console/sign-in?next=/console", bad
        for good in ("/console", "%2Fconsole%23conversation%3Dab12"):
            url = URL(f"/console/sign-in?next={good}", encoded=True)
            async with ana.http.get(url, allow_redirects=False) as response:
                assert response.status == 200, good

        # Both pages run under a strict Content Security Policy.
        for path in ("/console", "/console/sign-in"):
            async with ana.http.get(path, allow_redirects=False) as response:
                assert response.status == 200
                policy = response.headers["Content-Security-Policy"]
                directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
                assert directives["default-src"] == "'none'"
                assert directives["script-src"] == "'self'"
                assert directives["style-src"] == "'self'"
                assert directives["connect-src"] == "'self'"
                assert directives["frame-ancestors"] == "'none'"
                assert directives["base-uri"] == "'none'"
                assert directives["form-action"] == "'self'"
                page = await response.text()
                # Nothing inline that the policy would block.
                assert not re.search(
                    r"<script(?![^>]*\ssrc=)|<style|<[^>]*\s(style|on[a-z]+)=", page
                )
    finally:
        await ana.http.close()


async def test_forwarded_headers_count_from_a_configured_proxy(make_client: Any) -> None:
    client = await make_client(server={"trusted_proxies": ["127.0.0.1"]})
    olga = Person(client)
    try:
        cookie = await sign_in_as_if_proxied(olga)
        accounts = client.server.app[CONSOLE].accounts
        assert await accounts.failures(address="203.0.113.9") == 1
        assert await accounts.failures(address="127.0.0.1") == 0
        assert "Secure" in cookie
    finally:
        await olga.http.close()


async def test_bad_numbers_ids_and_labels_are_400s_and_undelivered_replies_say_so(
    make_client: Any,
) -> None:
    client = await make_client()
    ana, olga = Person(client), Person(client)
    try:
        await ana.sign_in("ana")
        await olga.sign_in("olga")
        # Rasa hands a conversation over; nothing pushes to its channel.
        async with client.post(
            "/api/v1/handoff", json={"sender": "rasa-user-1", "text": "a person please"}
        ) as response:
            assert response.status in (200, 201), await response.text()
            cid = (await response.json())["conversation_id"]
        assert (await ana.post(f"/conversations/{cid}/claim"))[0] == 200
        status, sent = await ana.post(f"/conversations/{cid}/reply", {"text": "Ana here."})
        assert status == 201 and sent["delivered"] is False
        view = (await ana.get(f"/conversations/{cid}"))[1]
        question = next(m for m in view["messages"] if m["role"] == "customer")
        answer = sent["message"]
        assert view["messages"][-1]["text"] == "Ana here."  # stored all the same

        # Numbers: ASCII digits in range only.
        for days in ("%C2%B2", "%D9%A1", "1e3", "-1", "0", "367", "9" * 30, ""):
            async with olga.http.get(
                URL(f"/console/api/dashboard?days={days}", encoded=True)
            ) as response:
                assert response.status == 400, days
                assert "days" in (await response.json())["error"]
        for message_id in ("%C2%B2", str(MAX_ID + 1), "9" * 30, "0"):
            async with ana.http.post(
                URL(f"/console/api/messages/{message_id}/labels", encoded=True),
                json={"sentiment": "negative"},
                headers={"X-CSRF-Token": ana.csrf},
            ) as response:
                assert response.status == 400, message_id
        # Conversation ids: a NUL (PostgreSQL cannot even compare it) or pages of text.
        for bad_id in ("%00", "c" * 5000, "%ED%A0%80"):
            async with ana.http.get(
                URL(f"/console/api/conversations/{bad_id}", encoded=True)
            ) as response:
                assert response.status in (400, 404), bad_id[:20]
                assert len(await response.text()) < 1000
            status, _ = await ana.post(f"/conversations/{bad_id}/claim")
            assert status in (400, 404), bad_id[:20]
        async with ana.http.get("/console/api/conversations/%00") as response:
            assert response.status == 400 and "NUL" in (await response.json())["error"]
        for body in (
            {"answer_message_id": MAX_ID + 1},
            {"answer_message_id": answer["id"], "question_message_id": MAX_ID + 1},
            {"answer_message_id": 2**64},
            {"answer_message_id": "7"},
        ):
            status, refused = await ana.post("/approved-answers", body)
            assert status == 400 and "integer id" in refused["error"], body

        # Labels: a known intent or a new name of the documented form, nothing else.
        bad_labels: list[tuple[str, str]] = [
            ("../../evil", "neither a known intent nor a valid new name"),
            ("x" * 5000, "the limit is 64"),
            ("refund\\u0000status", "NUL"),
            ("refund\\ud800", "lone surrogate"),
            ("Refund Status", "neither a known intent nor a valid new name"),
        ]
        headers = {"X-CSRF-Token": ana.csrf, "Content-Type": "application/json"}
        for label, says in bad_labels:
            raw = '{"intent": "' + label + '"}'
            async with ana.http.post(
                f"/console/api/messages/{question['id']}/labels", data=raw, headers=headers
            ) as response:
                assert response.status == 400, label[:20]
                assert says in (await response.json())["error"], label[:20]
            raw = f'{{"answer_message_id": {answer["id"]}, "intent": "{label}"}}'
            async with ana.http.post(
                "/console/api/approved-answers", data=raw, headers=headers
            ) as response:
                assert response.status == 400, label[:20]
                assert says in (await response.json())["error"], label[:20]
        for sentiment in ("../../evil", "x" * 5000, "neutral\\u0000", "\\udfff"):
            raw = '{"sentiment": "' + sentiment + '"}'
            for path in (f"conversations/{cid}/labels", f"messages/{question['id']}/labels"):
                async with ana.http.post(
                    f"/console/api/{path}", data=raw, headers=headers
                ) as response:
                    assert response.status == 400, (path, sentiment[:20])
        # The same labels spelled right are taken.
        status, _ = await ana.post(
            "/approved-answers", {"answer_message_id": answer["id"], "intent": "refund_status"}
        )
        assert status == 201
        status, _ = await ana.post(f"/conversations/{cid}/labels", {"sentiment": "neutral"})
        assert status == 201
    finally:
        await ana.http.close()
        await olga.http.close()
