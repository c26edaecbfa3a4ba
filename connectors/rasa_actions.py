"""The Rasa SDK action server: custom actions that let an existing Rasa assistant use supportbot.

Rasa runs custom actions in a process of their own (the action server) and calls it over HTTP.
These actions in turn call a running supportbot over its REST API (`connectors/rest.py`), so
the action server needs no models and no database. Only translation lives here: a Rasa
tracker -> a supportbot request, and supportbot's answer -> dispatcher messages and Rasa events
(slots, pause). The REST responses are parsed back into the core's own types. Every request
carries the action server's API key (`Authorization: Bearer`), made with `supportbot api-keys
create rasa`; the default channels of a key cover the hand-off channel `rasa`.

Each action server process owns one `SupportbotClient` (one HTTP session), made by
`create_client` and closed when the server stops; `create_action_app` is the composition root
of that process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from rasa_sdk import Action, Tracker
from rasa_sdk.constants import DEFAULT_KEEP_ALIVE_TIMEOUT
from rasa_sdk.endpoint import create_app
from rasa_sdk.events import ConversationPaused, EventType, SlotSet
from rasa_sdk.executor import ActionExecutor, CollectingDispatcher
from rasa_sdk.types import DomainDict
from sanic import Sanic
from yarl import URL

from bot.core.errors import ConfigurationError, SupportbotError
from bot.core.records import (
    Answer,
    ConversationStatus,
    Reply,
    Role,
    Route,
    Scored,
    Understanding,
)
from bot.core.service import HandleResult
from connectors.rasa_cli import KEY_ENV

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SUPPORTBOT_URL = "http://127.0.0.1:8080"
HANDOFF_CHANNEL = "rasa"
APOLOGY = "Sorry, I can't reach our support system right now. Please try again in a few minutes."
KEY_HINT = (
    f"; give the action server an API key for channel {HANDOFF_CHANNEL!r} (`supportbot api-keys "
    f"create rasa`, then {KEY_ENV} or --api-key)"
)

# The slots these actions set; a Rasa domain declares them (see docs/rasa.md).
ANSWER_FOUND_SLOT = "supportbot_answer_found"
ANSWER_SOURCE_SLOT = "supportbot_answer_source"
SENTIMENT_SLOT = "sentiment"
NEGATIVITY_SLOT = "negativity"
HANDOFF_SLOT = "supportbot_handoff"
ERROR_SLOT = "supportbot_error"


class SupportbotApiError(SupportbotError):
    """A call to supportbot's REST API failed: unreachable, timed out, or an error answer."""


@dataclass(frozen=True, slots=True)
class ActionServerSettings:
    """What one action server process needs to know.

    Attributes:
        supportbot_url: where `supportbot serve` runs (scheme, host, port).
        timeout_s: longest wait for one supportbot request.
        api_key: sent with every request; None sends none (a supportbot on the same machine
            with no keys at all accepts that). Never shown in the repr.

    Raises:
        ConfigurationError: the URL is not an http(s) URL, the timeout is not positive, or the
            key could not be sent in a header.
    """

    supportbot_url: str = DEFAULT_SUPPORTBOT_URL
    timeout_s: float = 10.0
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        url = URL(self.supportbot_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                f"the supportbot URL must be an http(s) URL such as {DEFAULT_SUPPORTBOT_URL}, "
                f"not {self.supportbot_url!r}; pass --supportbot-url"
            )
        if self.timeout_s <= 0:
            raise ConfigurationError(
                f"the request timeout must be a positive number of seconds, not {self.timeout_s}"
            )
        key = self.api_key
        if key is not None and not (key and key.isascii() and key.isprintable() and " " not in key):
            raise ConfigurationError(
                "the API key must be one word of printable ASCII, as `supportbot api-keys create` "
                f"prints it (sb_...); check {KEY_ENV} or --api-key"
            )


@dataclass(frozen=True, slots=True)
class AnswerSearch:
    """The answer index's best answers for a text, and the score the bot requires."""

    answers: tuple[Answer, ...]
    min_score: float

    @property
    def best(self) -> Answer | None:
        """The best answer if it is good enough for the bot to use, else None."""
        if self.answers and self.answers[0].score >= self.min_score:
            return self.answers[0]
        return None


def parse_answer_search(body: dict[str, Any]) -> AnswerSearch:
    """`POST /api/v1/answers/search` response -> AnswerSearch."""
    answers = tuple(
        Answer(
            text=str(a["text"]),
            score=float(a["score"]),
            source=str(a["source"]),
            question=str(a["question"]),
        )
        for a in body["answers"]
    )
    return AnswerSearch(answers, float(body["min_score"]))


def parse_understanding(body: dict[str, Any]) -> Understanding:
    """`POST /api/v1/understand` response -> Understanding."""
    return Understanding(
        intent=None if body["intent"] is None else str(body["intent"]),
        intent_confidence=float(body["intent_confidence"]),
        top_intents=tuple(Scored(str(label), float(score)) for label, score in body["top_intents"]),
        sentiment=str(body["sentiment"]),
        negativity=float(body["negativity"]),
        sentiment_scores=tuple(
            Scored(str(label), float(score)) for label, score in body["sentiment_scores"].items()
        ),
        model_versions={str(k): str(v) for k, v in body["model_versions"].items()},
    )


def parse_result(body: dict[str, Any]) -> HandleResult:
    """`POST /api/v1/messages` or `/api/v1/handoff` response -> HandleResult."""
    conversation_id = str(body["conversation_id"])
    replies = tuple(
        Reply(
            conversation_id=conversation_id,
            message_id=int(r["message_id"]),
            role=Role(r["role"]),
            text=str(r["text"]),
            route=Route(r["route"]) if r.get("route") else None,
            quick_replies=tuple(str(q) for q in r.get("quick_replies", ())),
            rateable=bool(r.get("rateable", False)),
        )
        for r in body["replies"]
    )
    return HandleResult(
        conversation_id=conversation_id,
        message_id=int(body["message_id"]),
        replies=replies,
        status=ConversationStatus(body["status"]),
        duplicate=bool(body.get("duplicate", False)),
    )


class SupportbotClient:
    """supportbot's REST API as the actions need it, over one HTTP session.

    The session is opened on first use, inside the action server's event loop, and closed by
    `close`, which the action server calls when it stops.

    Args:
        base_url: where supportbot runs, e.g. `http://127.0.0.1:8080`.
        timeout_s: longest wait for one request.
        api_key: sent as `Authorization: Bearer <key>` with every request, when given.
    """

    def __init__(self, base_url: str, timeout_s: float = 10.0, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), headers=self._headers
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session (a later call opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(
        self, path: str, body: dict[str, Any], parse: Callable[[dict[str, Any]], T]
    ) -> T:
        url = f"{self.base_url}{path}"
        try:
            async with self._http().post(url, json=body) as response:
                status = response.status
                raw = await response.text()
        except TimeoutError as exc:
            raise SupportbotApiError(
                f"supportbot at {self.base_url} did not answer POST {path} within "
                f"{self.timeout_s:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise SupportbotApiError(
                f"cannot reach supportbot at {self.base_url} ({exc}); check that "
                "`supportbot serve` runs there, or pass another --supportbot-url"
            ) from exc
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if status >= 400:
            detail = payload.get("error") if isinstance(payload, dict) else None
            hint = KEY_HINT if status in (401, 403) else ""
            raise SupportbotApiError(f"POST {url} answered {status}: {detail or raw[:200]}{hint}")
        if not isinstance(payload, dict):
            raise SupportbotApiError(
                f"POST {url} answered {status} with {raw[:80]!r}, not a JSON object; is "
                f"{self.base_url} supportbot?"
            )
        try:
            return parse(payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise SupportbotApiError(
                f"POST {url} answered with an unexpected body ({type(exc).__name__}: {exc}); "
                "the action server and supportbot are probably different versions"
            ) from exc

    async def search_answers(self, text: str, k: int = 3) -> AnswerSearch:
        """The best answers for `text` from supportbot's answer index.

        Raises:
            SupportbotApiError: the request failed or the answer was not understood.
        """
        body = {"text": text, "k": k}
        return await self._post("/api/v1/answers/search", body, parse_answer_search)

    async def understand(self, text: str) -> Understanding:
        """Intent and sentiment of `text` from supportbot's live models (nothing is stored).

        Raises:
            SupportbotApiError: the request failed or the answer was not understood.
        """
        return await self._post("/api/v1/understand", {"text": text}, parse_understanding)

    async def request_handoff(
        self, sender: str, text: str | None = None, channel: str = HANDOFF_CHANNEL
    ) -> HandleResult:
        """Hand the conversation of (`channel`, `sender`) to supportbot's agent queue.

        Raises:
            SupportbotApiError: the request failed or the answer was not understood.
        """
        body: dict[str, Any] = {"sender": sender, "channel": channel}
        if text:
            body["text"] = text
        return await self._post("/api/v1/handoff", body, parse_result)


def latest_text(tracker: Tracker) -> str:
    """The text of the customer's latest message ("" when there is none)."""
    text = (tracker.latest_message or {}).get("text")
    return text.strip() if isinstance(text, str) else ""


def apologise(
    dispatcher: CollectingDispatcher, action: str, exc: SupportbotApiError
) -> list[EventType]:
    """The boundary of one action call: log the failure, tell the customer, set the error slot.

    The action server keeps serving; a Rasa rule can react to `supportbot_error`.
    """
    log.error("%s failed: %s", action, exc, exc_info=exc)
    dispatcher.utter_message(text=APOLOGY)
    return [SlotSet(ERROR_SLOT, str(exc))]


class SupportbotAnswerAction(Action):
    """`action_supportbot_answer`: answer the latest message from supportbot's answer index.

    Utters the best past answer when its score reaches supportbot's threshold and sets
    `supportbot_answer_found` (True) and `supportbot_answer_source`; otherwise utters nothing
    and sets `supportbot_answer_found` to False, so a Rasa rule can fall back.
    """

    def __init__(self, client: SupportbotClient) -> None:
        self.client = client

    def name(self) -> str:
        return "action_supportbot_answer"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        text = latest_text(tracker)
        if not text:
            return [SlotSet(ANSWER_FOUND_SLOT, False)]
        try:
            search = await self.client.search_answers(text)
        except SupportbotApiError as exc:
            return apologise(dispatcher, self.name(), exc)
        best = search.best
        if best is None:
            return [SlotSet(ANSWER_FOUND_SLOT, False)]
        dispatcher.utter_message(text=best.text)
        return [SlotSet(ANSWER_FOUND_SLOT, True), SlotSet(ANSWER_SOURCE_SLOT, best.source)]


class SupportbotSentimentAction(Action):
    """`action_supportbot_sentiment`: classify the latest message's sentiment into slots.

    Sets `sentiment` (negative / neutral / positive) and `negativity` (P(negative) -
    P(positive), in [-1, 1]).
    """

    def __init__(self, client: SupportbotClient) -> None:
        self.client = client

    def name(self) -> str:
        return "action_supportbot_sentiment"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        text = latest_text(tracker)
        if not text:
            return []
        try:
            understanding = await self.client.understand(text)
        except SupportbotApiError as exc:
            return apologise(dispatcher, self.name(), exc)
        return [
            SlotSet(SENTIMENT_SLOT, understanding.sentiment),
            SlotSet(NEGATIVITY_SLOT, round(understanding.negativity, 4)),
        ]


class SupportbotHandoffAction(Action):
    """`action_supportbot_handoff`: hand the conversation to supportbot's agent queue.

    The customer's latest message is stored with the escalation for the agent; supportbot's
    hand-off message is uttered; the Rasa conversation is paused (the agent has it now).
    """

    def __init__(self, client: SupportbotClient) -> None:
        self.client = client

    def name(self) -> str:
        return "action_supportbot_handoff"

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[EventType]:
        try:
            result = await self.client.request_handoff(
                str(tracker.sender_id), latest_text(tracker) or None
            )
        except SupportbotApiError as exc:
            return apologise(dispatcher, self.name(), exc)
        for reply in result.replies:
            dispatcher.utter_message(text=reply.text)
        return [SlotSet(HANDOFF_SLOT, True), ConversationPaused()]


def create_client(settings: ActionServerSettings) -> SupportbotClient:
    """The one supportbot client of an action server process."""
    return SupportbotClient(settings.supportbot_url, settings.timeout_s, settings.api_key)


def supportbot_actions(client: SupportbotClient) -> list[Action]:
    """The three actions, sharing `client`."""
    return [
        SupportbotAnswerAction(client),
        SupportbotSentimentAction(client),
        SupportbotHandoffAction(client),
    ]


def create_action_app(settings: ActionServerSettings) -> Sanic[Any, Any]:
    """rasa-sdk's action server app (`POST /webhook`, `GET /health`, `GET /actions`) with
    exactly supportbot's actions registered, and the process's client closed at shutdown.

    Only one can exist per process: rasa-sdk names its Sanic app `rasa_sdk`.
    """
    client = create_client(settings)
    executor = ActionExecutor()
    for action in supportbot_actions(client):
        executor.register_action(action)
    # Rasa calls the action server from its own server, never from a browser: no CORS.
    app = create_app(executor, cors_origins=None)
    # Rasa keeps its connection to the action server open between calls.
    app.config.KEEP_ALIVE_TIMEOUT = DEFAULT_KEEP_ALIVE_TIMEOUT

    async def close_client(_: Sanic[Any, Any]) -> None:
        await client.close()
        log.info("closed the HTTP session to supportbot at %s", client.base_url)

    app.register_listener(close_client, "after_server_stop")
    return app
