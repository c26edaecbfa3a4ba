"""The REST API, including a Rasa-REST-channel-compatible webhook and the endpoints the Rasa
action server (`connectors/rasa_actions.py`) calls: answer search, understanding, hand-off.

Only translation lives here: JSON payload -> `Message` / `Feedback` (the parsers) and
`HandleResult` / `StoredMessage` -> JSON (the renderers). Domain errors raised here or in the
core are mapped to HTTP status codes in one place, `bot.app.factory.error_middleware`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bot.core.errors import BadRequestError
from bot.core.records import Answer, Feedback, Message, Reply, StoredMessage, Understanding
from bot.core.service import ConversationService, HandleResult
from connectors.http import id_value, read_json, text_field

CHANNEL = "rest"
RASA_CHANNEL = "rasa-rest"
HANDOFF_CHANNEL = "rasa"
HANDOFF_TEXT = "(handed over by the Rasa assistant)"
MAX_ID_CHARS = 200
MAX_K = 20


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
    """`{"message_id", "rating": "up"|"down", "comment"?}` -> Feedback."""
    message_id = id_value(body.get("message_id"), "message_id", "a bot reply")
    rating = body.get("rating")
    if rating not in ("up", "down"):
        raise BadRequestError('field "rating" must be "up" or "down"')
    return Feedback(
        message_id=message_id,
        rating=rating,
        comment=_string(body, "comment", False, 2000),
        author=_string(body, "author", False, MAX_ID_CHARS) or "customer",
    )


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
    }


class RestConnector:
    """HTTP endpoints for sending messages, reading transcripts and posting feedback.

    Args:
        service: the core.
        max_message_chars: longest accepted customer message.
    """

    def __init__(self, service: ConversationService, max_message_chars: int) -> None:
        self.service = service
        self.max_message_chars = max_message_chars

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/messages", self.post_message)
        app.router.add_get("/api/v1/conversations/{conversation_id}", self.get_transcript)
        app.router.add_post("/api/v1/feedback", self.post_feedback)
        app.router.add_post("/webhooks/rest/webhook", self.rasa_webhook)
        # What the Rasa action server (connectors/rasa_actions.py) calls.
        app.router.add_post("/api/v1/answers/search", self.search_answers)
        app.router.add_post("/api/v1/understand", self.understand)
        app.router.add_post("/api/v1/handoff", self.post_handoff)

    async def post_message(self, request: web.Request) -> web.Response:
        message = parse_message(await read_json(request), self.max_message_chars)
        result = await self.service.handle(message)
        return web.json_response(render_result(result))

    async def rasa_webhook(self, request: web.Request) -> web.Response:
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
        result = await self.service.request_handoff(message)
        return web.json_response(render_result(result))

    async def get_transcript(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["conversation_id"]
        conversation, messages = await self.service.transcript(conversation_id)
        return web.json_response(
            {
                "conversation_id": conversation.id,
                "channel": conversation.channel,
                "status": str(conversation.status),
                "messages": [render_stored(m) for m in messages],
            }
        )

    async def post_feedback(self, request: web.Request) -> web.Response:
        feedback = parse_feedback(await read_json(request))
        feedback_id = await self.service.record_feedback(feedback)
        return web.json_response({"id": feedback_id}, status=201)
