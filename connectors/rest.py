"""The REST API, including a Rasa-REST-channel-compatible webhook and the endpoints the Rasa
action server (`connectors/rasa_actions.py`) calls: answer search, understanding, hand-off.

Only translation lives here: JSON payload -> `Message` / `Feedback` (the parsers) and
`HandleResult` / `StoredMessage` -> JSON (the renderers). Domain errors raised here or in the
core are mapped to HTTP status codes in one place, `bot.app.factory.error_middleware`.

Who may call: the API is two aiohttp sub-applications (`/api/v1`, `/webhooks/rest`) whose
middleware, `RestConnector.authenticate`, names the caller of every request before a handler
runs. A caller is an API key (`Authorization: Bearer sb_...`, made by `supportbot api-keys
create`) with the channels it may act as. While no key exists at all, a request from this
machine (a loopback peer, not relayed by a proxy) is a local caller with the default channels,
so `make run` and curl work with no set-up; others get 401 unless
`server.allow_unauthenticated_api` is set. A caller can only be what its channels allow: it
sends and hands off messages, reads transcripts and rates replies on those channels only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from bot.core.errors import BadRequestError, ForbiddenError, NotFoundError, UnauthorizedError
from bot.core.ports import ApiKeyStore
from bot.core.records import (
    Answer,
    ConversationStatus,
    Feedback,
    Message,
    Reply,
    Role,
    StoredMessage,
    Understanding,
)
from bot.core.service import ConversationService, HandleResult
from connectors.http import id_value, read_json, text_field

CHANNEL = "rest"
RASA_CHANNEL = "rasa-rest"
HANDOFF_CHANNEL = "rasa"
HANDOFF_TEXT = "(handed over by the Rasa assistant)"
MAX_ID_CHARS = 200
MAX_K = 20
# What a new API key may act as unless told otherwise, and what a caller without a key gets
# where none is needed: every channel this module itself creates conversations on.
DEFAULT_CHANNELS = (CHANNEL, HANDOFF_CHANNEL, RASA_CHANNEL)
# A loopback peer that sends one of these is a proxy relaying someone else's request.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
CHALLENGE = 'Bearer realm="supportbot"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling the REST API: an API key's name (or how a caller without one was let
    in) and the channels it may act as."""

    name: str
    channels: tuple[str, ...]

    def require(self, channel: str) -> None:
        """Raise ForbiddenError unless this caller may act as `channel`."""
        if channel not in self.channels:
            raise ForbiddenError(
                f"{self.name} may act as channels {', '.join(self.channels)}, not {channel!r}; "
                f"an operator can create a key for it: `supportbot api-keys create NAME "
                f"--channel {channel}`"
            )


CALLER = web.RequestKey("caller", Caller)
LOCAL_CALLER = Caller("a local caller without an API key", DEFAULT_CHANNELS)
ANONYMOUS_CALLER = Caller("a caller without an API key", DEFAULT_CHANNELS)


@dataclass(frozen=True, slots=True)
class AnswerQuery:
    """A request to search the answer index (`POST /api/v1/answers/search`)."""

    text: str
    k: int = 3
    intent: str | None = None


def _string(body: dict[str, Any], key: str, required: bool, max_chars: int) -> str | None:
    # REST clients may send ids as numbers (e.g. a Telegram chat id as `sender`).
    return text_field(body, key, required=required, max_chars=max_chars, numbers=True)


def parse_message(body: dict[str, Any], max_chars: int) -> Message:
    """`{"sender", "text", "client_id"?, "name"?}` -> Message."""
    sender = _string(body, "sender", True, MAX_ID_CHARS)
    text = _string(body, "text", True, max_chars)
    assert sender is not None and text is not None
    return Message(
        channel=CHANNEL,
        sender=sender,
        text=text,
        # An empty client id is no id: it must not make the next message a "duplicate".
        client_id=_string(body, "client_id", False, MAX_ID_CHARS) or None,
        sender_name=_string(body, "name", False, MAX_ID_CHARS),
    )


def parse_rasa_message(body: dict[str, Any], max_chars: int) -> Message:
    """Rasa REST channel `{"sender", "message"}` -> Message."""
    sender = _string(body, "sender", True, MAX_ID_CHARS)
    text = _string(body, "message", True, max_chars)
    assert sender is not None and text is not None
    return Message(channel=RASA_CHANNEL, sender=sender, text=text)


def parse_answer_query(body: dict[str, Any], max_chars: int) -> AnswerQuery:
    """`{"text", "k"?: 3, "intent"?}` -> AnswerQuery."""
    text = _string(body, "text", True, max_chars)
    assert text is not None
    k = body.get("k", 3)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise BadRequestError(
            f'field "k" must be an integer from 1 to {MAX_K} (how many answers), not {k!r}'
        )
    return AnswerQuery(text=text, k=k, intent=_string(body, "intent", False, MAX_ID_CHARS))


def parse_text(body: dict[str, Any], max_chars: int) -> str:
    """`{"text"}` -> the text (`POST /api/v1/understand`)."""
    text = _string(body, "text", True, max_chars)
    assert text is not None
    return text


def parse_handoff(body: dict[str, Any], max_chars: int) -> Message:
    """`{"sender", "text"?, "channel"?: "rasa"}` -> the Message that asks for a person."""
    sender = _string(body, "sender", True, MAX_ID_CHARS)
    assert sender is not None
    channel = _string(body, "channel", False, MAX_ID_CHARS)
    if channel == "":
        raise BadRequestError('field "channel" is empty; leave it out to use "rasa"')
    return Message(
        channel=channel or HANDOFF_CHANNEL,
        sender=sender,
        text=_string(body, "text", False, max_chars) or HANDOFF_TEXT,
    )


def parse_feedback(body: dict[str, Any]) -> Feedback:
    """`{"message_id", "rating": "up"|"down", "comment"?}` -> a customer's Feedback.

    `author` may still be sent, as "customer" only: agents' labels are training data and come
    from the console, where agents sign in.
    """
    message_id = id_value(body.get("message_id"), "message_id", "a bot reply")
    rating = body.get("rating")
    if rating not in ("up", "down"):
        raise BadRequestError('field "rating" must be "up" or "down"')
    author = _string(body, "author", False, MAX_ID_CHARS)
    if author not in (None, "customer"):
        raise BadRequestError(
            f'field "author" can only be "customer" (or be left out), not {author!r}: the REST '
            "API rates replies for customers; agents label messages in the console"
        )
    return Feedback(
        message_id=message_id,
        rating=rating,
        comment=_string(body, "comment", False, 2000),
    )


def is_loopback(address: str | None) -> bool:
    """Whether `address` (an IP address, or `localhost`) is this machine's loopback."""
    if address == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The API key of an `Authorization: Bearer <key>` header; None without the header.

    Raises:
        UnauthorizedError: the header is there but is not a bearer key.
    """
    value = headers.get(hdrs.AUTHORIZATION)
    if value is None:
        return None
    scheme, _, key = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise UnauthorizedError(
            'the Authorization header must be "Bearer <API key>", e.g. '
            '"Authorization: Bearer sb_..."; an operator creates keys with '
            "`supportbot api-keys create NAME`"
        )
    return key.strip()


def keyless_caller(
    peer: str | None, headers: Mapping[str, str], allow_unauthenticated: bool
) -> Caller:
    """Who a request without an API key is while no key exists at all.

    Args:
        peer: the TCP peer's address (`request.remote`), never a forwarded one.
        headers: the request's headers; proxy headers make a loopback peer a proxy.
        allow_unauthenticated: `server.allow_unauthenticated_api`.

    Raises:
        UnauthorizedError: the request came from another machine (or through a proxy) and
            unauthenticated access is not allowed.
    """
    if is_loopback(peer) and not any(header in headers for header in PROXY_HEADERS):
        return LOCAL_CALLER
    if allow_unauthenticated:
        return ANONYMOUS_CALLER
    raise UnauthorizedError(
        "the REST API takes requests without an API key only from this machine; send "
        '"Authorization: Bearer <key>" with a key an operator created with `supportbot '
        "api-keys create NAME`"
    )


async def challenge(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every 401 of the API says how to authenticate (RFC 6750)."""
    if response.status == 401 and hdrs.WWW_AUTHENTICATE not in response.headers:
        invalid = ', error="invalid_token"' if hdrs.AUTHORIZATION in request.headers else ""
        response.headers[hdrs.WWW_AUTHENTICATE] = CHALLENGE + invalid


def render_reply(reply: Reply) -> dict[str, Any]:
    return {
        "message_id": reply.message_id,
        "role": str(reply.role),
        "text": reply.text,
        "route": str(reply.route) if reply.route else None,
        "quick_replies": list(reply.quick_replies),
        "rateable": reply.rateable,
    }


def render_result(result: HandleResult) -> dict[str, Any]:
    return {
        "conversation_id": result.conversation_id,
        "message_id": result.message_id,
        "status": str(result.status),
        "agent": result.assignee,
        "duplicate": result.duplicate,
        "replies": [render_reply(r) for r in result.replies],
    }


def render_answers(answers: Sequence[Answer], min_score: float) -> dict[str, Any]:
    return {
        "answers": [
            {"text": a.text, "score": a.score, "source": a.source, "question": a.question}
            for a in answers
        ],
        "min_score": min_score,
    }


def render_understanding(understanding: Understanding) -> dict[str, Any]:
    return {
        "intent": understanding.intent,
        "intent_confidence": understanding.intent_confidence,
        "top_intents": [[s.label, s.score] for s in understanding.top_intents],
        "sentiment": understanding.sentiment,
        "negativity": understanding.negativity,
        "sentiment_scores": {s.label: s.score for s in understanding.sentiment_scores},
        "model_versions": understanding.model_versions,
        "out_of_scope": understanding.out_of_scope,
        "oos_score": understanding.oos_score,
    }


def render_stored(message: StoredMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "role": str(message.role),
        "text": message.text,
        "created_at": message.created_at.isoformat(),
        "intent": message.intent,
        "intent_confidence": message.intent_confidence,
        "sentiment": message.sentiment,
        "negativity": message.negativity,
        "route": message.route,
        "model_versions": message.model_versions,
        "latency_ms": message.latency_ms,
        "entities": render_entities(message),
        "out_of_scope": message.details.get("out_of_scope") is True,
        "oos_score": _number_or_none(message.details.get("oos_score")),
    }


def _number_or_none(value: Any) -> float | None:
    """A stored number as JSON gives it back (bool and anything else: None)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def render_entities(message: StoredMessage) -> list[dict[str, Any]]:
    """The details the bot found in a customer message (`{type, value, text, start, end}`,
    see bot/core/entities.py); malformed stored entries are left out, other roles have none."""
    if message.role != Role.CUSTOMER:
        return []
    entities = []
    for raw in message.details.get("entities") or ():
        if (
            isinstance(raw, dict)
            and all(isinstance(raw.get(k), str) for k in ("type", "value", "text"))
            and all(type(raw.get(k)) is int for k in ("start", "end"))
        ):
            entities.append({k: raw[k] for k in ("type", "value", "text", "start", "end")})
    return entities


class RestConnector:
    """HTTP endpoints for sending messages, reading transcripts and posting feedback, for
    callers with an API key (see the module's docstring).

    Args:
        service: the core.
        max_message_chars: longest accepted customer message.
        keys: the API keys callers are checked against.
        allow_unauthenticated: while no key exists, let callers from other machines in
            without one (`server.allow_unauthenticated_api`).
    """

    def __init__(
        self,
        service: ConversationService,
        max_message_chars: int,
        keys: ApiKeyStore,
        allow_unauthenticated: bool = False,
    ) -> None:
        self.service = service
        self.max_message_chars = max_message_chars
        self.keys = keys
        self.allow_unauthenticated = allow_unauthenticated

    def add_routes(self, app: web.Application) -> None:
        api = self._sub_app()
        api.router.add_post("/messages", self.post_message)
        api.router.add_get("/conversations/{conversation_id}", self.get_transcript)
        api.router.add_post("/feedback", self.post_feedback)
        # What the Rasa action server (connectors/rasa_actions.py) calls.
        api.router.add_post("/answers/search", self.search_answers)
        api.router.add_post("/understand", self.understand)
        api.router.add_post("/handoff", self.post_handoff)
        # GET /api/v1/openapi.json stays public: the parent app serves it, and its exact path
        # is matched before this prefix.
        app.add_subapp("/api/v1", api)
        rasa = self._sub_app()
        rasa.router.add_post("/webhook", self.rasa_webhook)
        app.add_subapp("/webhooks/rest", rasa)

    def _sub_app(self) -> web.Application:
        sub = web.Application(middlewares=[self.authenticate])
        sub.on_response_prepare.append(challenge)
        return sub

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Name the caller (`request[CALLER]`) before any handler runs, or refuse with 401."""
        key = bearer_key(request.headers)
        if key is not None:
            record = await self.keys.authenticate(key)
            caller = Caller(f"the API key {record.name!r}", record.channels)
        elif await self.keys.any_active():
            raise UnauthorizedError(
                'this API needs an API key: send "Authorization: Bearer <key>"; an operator '
                "creates one with `supportbot api-keys create NAME`"
            )
        else:
            caller = keyless_caller(request.remote, request.headers, self.allow_unauthenticated)
        request[CALLER] = caller
        return await handler(request)

    async def post_message(self, request: web.Request) -> web.Response:
        request[CALLER].require(CHANNEL)
        message = parse_message(await read_json(request), self.max_message_chars)
        result = await self.service.handle(message)
        return web.json_response(render_result(result))

    async def rasa_webhook(self, request: web.Request) -> web.Response:
        request[CALLER].require(RASA_CHANNEL)
        message = parse_rasa_message(await read_json(request), self.max_message_chars)
        result = await self.service.handle(message)
        return web.json_response(
            [{"recipient_id": message.sender, "text": r.text} for r in result.replies]
        )

    async def search_answers(self, request: web.Request) -> web.Response:
        query = parse_answer_query(await read_json(request), self.max_message_chars)
        answers, min_score = await self.service.search_answers(
            query.text, k=query.k, intent=query.intent
        )
        return web.json_response(render_answers(answers, min_score))

    async def understand(self, request: web.Request) -> web.Response:
        text = parse_text(await read_json(request), self.max_message_chars)
        understanding = await self.service.understand(text)
        return web.json_response(render_understanding(understanding))

    async def post_handoff(self, request: web.Request) -> web.Response:
        message = parse_handoff(await read_json(request), self.max_message_chars)
        request[CALLER].require(message.channel)
        result = await self.service.request_handoff(message)
        return web.json_response(render_result(result))

    async def get_transcript(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["conversation_id"]
        channels = request[CALLER].channels
        conversation, messages = await self.service.transcript_within(conversation_id, channels)
        return web.json_response(
            {
                "conversation_id": conversation.id,
                "channel": conversation.channel,
                "status": str(conversation.status),
                # Who has it, so a client can say "Ana joined", not "connected" while waiting.
                "agent": conversation.assignee
                if conversation.status == ConversationStatus.CLAIMED
                else None,
                "messages": [render_stored(m) for m in messages],
            }
        )

    async def post_feedback(self, request: web.Request) -> web.Response:
        feedback = parse_feedback(await read_json(request))
        caller = request[CALLER]
        if await self.keys.message_channel(feedback.message_id) not in caller.channels:
            # The same answer for an unknown message and another channel's.
            raise NotFoundError(
                f"message {feedback.message_id} was not found on the channels {caller.name} "
                f"may act as ({', '.join(caller.channels)}); rate a reply it received"
            )
        feedback_id = await self.service.record_feedback(feedback)
        return web.json_response({"id": feedback_id}, status=201)
