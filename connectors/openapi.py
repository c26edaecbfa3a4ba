"""The OpenAPI description of the REST API (served at /api/v1/openapi.json).

It says what the parsers and renderers of `connectors/rest.py` accept and answer: the
enumerations come from the records (`Route`, `Role`, `ConversationStatus`) and the limits from
`connectors/http.py` and `connectors/rest.py`, so the two cannot drift apart silently.
`tests/connectors/test_openapi.py` validates the document against the OpenAPI 3.0 schema and
`tests/connectors/test_api_properties.py` checks the running server against it.
"""

from __future__ import annotations

from typing import Any

from bot.core.records import ConversationStatus, Role, Route
from connectors.http import MAX_ID, MAX_INT_DIGITS, MAX_JSON_DEPTH
from connectors.rest import HANDOFF_CHANNEL, MAX_ID_CHARS, MAX_K

DEFAULT_MAX_MESSAGE_CHARS = 4000  # server.max_message_chars
MAX_COMMENT_CHARS = 2000  # connectors.rest.parse_feedback
# What `connectors.http.text_field` accepts: no NUL anywhere, and when the field is required,
# something besides white space. (Lone surrogates are refused too; JSON Schema cannot say so.)
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = r"^[^\x00]*[^\s\x00][^\x00]*$"
# The largest integer a body may hold (`connectors.http.MAX_INT_DIGITS` digits).
MAX_INTEGER = 10**MAX_INT_DIGITS - 1
# Conversation ids are uuid4 hex (bot/store/conversations.py).
CONVERSATION_ID = "^[0-9a-f]{32}$"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """`schema`, or null (OpenAPI 3.0 spelling; an enum must list null itself)."""
    out = {**schema, "nullable": True}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


# Who has the conversation: the agent's name while `status` is `claimed`, null otherwise.
_AGENT: Schema = {
    "type": "string",
    "nullable": True,
    "description": "the agent who claimed the conversation (status claimed), else null",
}


def _text(max_chars: int, description: str | None = None, *, required: bool = True) -> Schema:
    """A text field as `connectors.http.text_field` parses it (no NUL, no lone surrogate)."""
    schema: Schema = {
        "type": "string",
        "maxLength": max_chars,
        "pattern": NOT_BLANK if required else NO_NUL,
    }
    if description:
        schema["description"] = description
    return schema


def _id_text(description: str, *, required: bool = True) -> Schema:
    """An id some clients send as a number (a Telegram chat id): a string or an integer."""
    integer: Schema = {"type": "integer", "minimum": -MAX_INTEGER, "maximum": MAX_INTEGER}
    schema: Schema = {
        "description": description,
        "anyOf": [_text(MAX_ID_CHARS, required=required), integer],
    }
    return schema if required else _nullable(schema)


def _id(description: str) -> Schema:
    """A message id: a positive integer in the store's BIGINT range."""
    return {"type": "integer", "minimum": 1, "maximum": MAX_ID, "description": description}


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _json_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A required JSON object request body with these properties; others are ignored, but
    count towards the body's limits."""
    schema = {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": _ref("Ignored"),
    }
    return {"required": True, "content": _json(schema)}


def _answer(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": _json(schema)}


_RESPONSES: dict[str, Any] = {
    "BadRequest": _answer(
        "Malformed input (invalid JSON, a missing, empty or wrongly typed field, a text over "
        f"its limit, JSON nested deeper than {MAX_JSON_DEPTH} levels, an integer over "
        f"{MAX_INT_DIGITS} digits, invalid Unicode); the error says what to send",
        _ref("Error"),
    ),
    "Unauthorized": {
        "description": "No valid API key: one is needed once any key exists, and always from "
        "another machine or through a proxy (unless server.allow_unauthenticated_api)",
        "headers": {
            "WWW-Authenticate": {
                "description": '`Bearer realm="supportbot"`: send `Authorization: Bearer <key>`',
                "schema": {"type": "string"},
            }
        },
        "content": _json(_ref("Error")),
    },
    "Forbidden": _answer(
        "The API key may not act as this request's channel (`rest` for messages, `rasa-rest` "
        "for the Rasa webhook, the body's `channel` for a hand-off)",
        _ref("Error"),
    ),
    "NotFound": _answer(
        "No such conversation or message on the channels the caller may act as",
        _ref("Error"),
    ),
    "TooLarge": {
        "description": "Body larger than server.max_body_bytes",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    "Unavailable": {
        "description": "The database or the models cannot be reached; nothing was accepted, "
        "send the request again",
        "headers": {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        },
        "content": _json(_ref("Error")),
    },
}


# The HTTP status of each shared answer in components/responses.
_STATUS_OF = {
    "BadRequest": "400",
    "Unauthorized": "401",
    "Forbidden": "403",
    "NotFound": "404",
    "TooLarge": "413",
    "Unavailable": "503",
}


def _responses(ok: str, answer: dict[str, Any], *errors: str) -> dict[str, Any]:
    """The success answer and these shared error answers (components/responses names)."""
    out: dict[str, Any] = {ok: answer}
    for name, status in _STATUS_OF.items():
        if name in errors:
            out[status] = {"$ref": f"#/components/responses/{name}"}
    return out


def _schemas() -> dict[str, Schema]:
    routes = [r.value for r in Route]
    statuses = [s.value for s in ConversationStatus]
    number = {"type": "number"}
    return {
        "Ignored": {
            "description": "A field the server does not read. The whole body must still be "
            f"JSON nested at most {MAX_JSON_DEPTH} levels deep, with integers of at most "
            f"{MAX_INT_DIGITS} digits",
            "nullable": True,
            "anyOf": [
                {"type": "string"},
                {"type": "boolean"},
                {"type": "number", "minimum": -MAX_INTEGER, "maximum": MAX_INTEGER},
                {"type": "array", "items": _ref("Ignored")},
                {"type": "object", "additionalProperties": _ref("Ignored")},
            ],
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "description": "what to send instead"}},
        },
        "Reply": {
            "type": "object",
            "required": ["message_id", "role", "text", "route", "quick_replies", "rateable"],
            "properties": {
                "message_id": _id("the stored reply; rate it with /api/v1/feedback"),
                "role": {
                    "type": "string",
                    "enum": [Role.BOT.value, Role.AGENT.value, Role.SYSTEM.value],
                },
                "text": {"type": "string"},
                "route": _nullable(
                    {
                        "type": "string",
                        "enum": routes,
                        "description": "how the bot answered; null for agent and system messages",
                    }
                ),
                "quick_replies": {"type": "array", "items": {"type": "string"}},
                "rateable": {"type": "boolean", "description": "offer helpful / not helpful"},
            },
        },
        "Result": {
            "type": "object",
            "required": [
                "conversation_id",
                "message_id",
                "status",
                "agent",
                "duplicate",
                "replies",
            ],
            "properties": {
                "conversation_id": {"type": "string"},
                "message_id": _id("the stored customer message"),
                "status": {"type": "string", "enum": statuses},
                "agent": _AGENT,
                "duplicate": {
                    "type": "boolean",
                    "description": "true: client_id was seen before; replies are the ones "
                    "already given",
                },
                "replies": {"type": "array", "items": _ref("Reply")},
            },
        },
        "StoredMessage": {
            "type": "object",
            "required": [
                "id",
                "role",
                "text",
                "created_at",
                "intent",
                "intent_confidence",
                "sentiment",
                "negativity",
                "route",
                "model_versions",
                "latency_ms",
                "entities",
                "out_of_scope",
                "oos_score",
            ],
            "properties": {
                "id": _id("the message"),
                "role": {"type": "string", "enum": [r.value for r in Role]},
                "text": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "intent": _nullable({"type": "string", "description": "null: abstained"}),
                "intent_confidence": _nullable(number),
                "sentiment": _nullable({"type": "string"}),
                "negativity": _nullable(number),
                "route": _nullable({"type": "string", "enum": routes}),
                "model_versions": {"type": "object", "additionalProperties": {"type": "string"}},
                "latency_ms": _nullable(number),
                "entities": {
                    "type": "array",
                    "description": "details found in a customer message (empty for others)",
                    "items": _ref("Entity"),
                },
                "out_of_scope": {
                    "type": "boolean",
                    "description": "a customer message about none of the intents (false for "
                    "other roles)",
                },
                "oos_score": _nullable(
                    {
                        "type": "number",
                        "description": "the out-of-scope detector's score; null without one",
                    }
                ),
            },
        },
        "Entity": {
            "type": "object",
            "required": ["type", "value", "text", "start", "end"],
            "properties": {
                "type": {
                    "type": "string",
                    "description": "email, phone, url, money, date, time, card, iban or a "
                    "configured entity (routing `entities:`), e.g. order_id",
                },
                "value": {"type": "string", "description": "canonical, e.g. BC-204719"},
                "text": {"type": "string", "description": "as written in the message"},
                "start": {"type": "integer", "minimum": 0},
                "end": {"type": "integer", "minimum": 0},
            },
        },
        "Transcript": {
            "type": "object",
            "required": ["conversation_id", "channel", "status", "agent", "messages"],
            "properties": {
                "conversation_id": {"type": "string"},
                "channel": {"type": "string"},
                "status": {"type": "string", "enum": statuses},
                "agent": _AGENT,
                "messages": {
                    "type": "array",
                    "description": "oldest first",
                    "items": _ref("StoredMessage"),
                },
            },
        },
        "Answer": {
            "type": "object",
            "required": ["text", "score", "source", "question"],
            "properties": {
                "text": {"type": "string"},
                "score": {"type": "number", "description": "cosine similarity of the questions"},
                "source": {"type": "string", "description": "file and line it came from"},
                "question": {"type": "string", "description": "the past question it answered"},
            },
        },
        "Answers": {
            "type": "object",
            "required": ["answers", "min_score"],
            "properties": {
                "answers": {"type": "array", "items": _ref("Answer")},
                "min_score": {"type": "number", "description": "the bot uses an answer from here"},
            },
        },
        "Understanding": {
            "type": "object",
            "required": [
                "intent",
                "intent_confidence",
                "top_intents",
                "sentiment",
                "negativity",
                "sentiment_scores",
                "model_versions",
                "out_of_scope",
                "oos_score",
            ],
            "properties": {
                "intent": _nullable(
                    {"type": "string", "description": "null: abstained or out of scope"}
                ),
                "out_of_scope": {
                    "type": "boolean",
                    "description": "about none of the intents the model knows",
                },
                "oos_score": _nullable(
                    {
                        "type": "number",
                        "description": "the out-of-scope detector's score (higher: further "
                        "from anything trained); null without a detector",
                    }
                ),
                "intent_confidence": {"type": "number"},
                "top_intents": {
                    "type": "array",
                    "description": "[label, probability] pairs, best first",
                    "items": {
                        "type": "array",
                        "minItems": 2,
                        "maxItems": 2,
                        "items": {"anyOf": [{"type": "string"}, number]},
                    },
                },
                "sentiment": {
                    "type": "string",
                    "description": "the sentiment model's label (negative, neutral or positive "
                    "with the bundled data)",
                },
                "negativity": {
                    "type": "number",
                    "minimum": -1,
                    "maximum": 1,
                    "description": "P(negative) - P(positive)",
                },
                "sentiment_scores": {"type": "object", "additionalProperties": number},
                "model_versions": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "RasaReply": {
            "type": "object",
            "required": ["recipient_id", "text"],
            "properties": {"recipient_id": {"type": "string"}, "text": {"type": "string"}},
        },
        "Created": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": _id("the stored feedback")},
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok"]}},
        },
        "Readiness": {
            "type": "object",
            "required": ["ready", "checks", "models", "replica"],
            "properties": {
                "ready": {"type": "boolean"},
                "checks": {
                    "type": "object",
                    "description": '"ok", or what is wrong, per check (models, store)',
                    "additionalProperties": {"type": "string"},
                },
                "models": {"type": "object", "additionalProperties": {"type": "string"}},
                "bus": {"type": "string", "enum": ["ok", "reconnecting"]},
                "replica": {"type": "string"},
            },
        },
    }


def openapi_document(max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the REST API.

    Args:
        max_message_chars: `server.max_message_chars`, the longest accepted text.
    """
    message_text = _text(max_message_chars, f"at most {max_message_chars} characters")
    api_errors = ("BadRequest", "Unauthorized", "TooLarge")
    public: list[dict[str, list[str]]] = []
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "supportbot REST API",
            "version": "1",
            "description": "Send customer messages, read transcripts and rate bot replies. "
            'Errors are JSON `{"error"}`; every answer carries `X-Request-ID` (sent in or '
            "new), which the server's log lines carry too.",
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/v1/messages": {
                "post": {
                    "summary": "Send a customer message and get the bot's replies",
                    "requestBody": _json_body(
                        required=["sender", "text"],
                        properties={
                            "sender": _id_text("the customer's id; one conversation per sender"),
                            "text": message_text,
                            "client_id": _id_text(
                                "your id for this message; a retry with the same id is not "
                                "answered twice (empty: no id)",
                                required=False,
                            ),
                            "name": _id_text(
                                "the customer's display name, for greetings", required=False
                            ),
                        },
                    ),
                    "responses": _responses(
                        "200",
                        _answer(
                            "Stored and answered (replies may be empty while an agent has the "
                            "conversation)",
                            _ref("Result"),
                        ),
                        *api_errors,
                        "Forbidden",
                        "Unavailable",
                    ),
                }
            },
            "/api/v1/conversations/{conversation_id}": {
                "get": {
                    "summary": "Read a conversation's transcript",
                    "parameters": [
                        {
                            "name": "conversation_id",
                            "in": "path",
                            "required": True,
                            "description": "the conversation_id POST /api/v1/messages answered",
                            "schema": {"type": "string", "pattern": CONVERSATION_ID},
                        }
                    ],
                    "responses": _responses(
                        "200",
                        _answer("The conversation and its messages", _ref("Transcript")),
                        "Unauthorized",
                        "NotFound",
                        "Unavailable",
                    ),
                }
            },
            "/api/v1/feedback": {
                "post": {
                    "summary": "Rate a bot reply",
                    "requestBody": _json_body(
                        required=["message_id", "rating"],
                        properties={
                            "message_id": _id("a reply's message_id"),
                            "rating": {"type": "string", "enum": ["up", "down"]},
                            "comment": _nullable(_text(MAX_COMMENT_CHARS, required=False)),
                            "author": _nullable(
                                {
                                    "type": "string",
                                    "enum": ["customer"],
                                    "default": "customer",
                                    "description": "only the customer rates here; agents label "
                                    "in the console",
                                }
                            ),
                        },
                    ),
                    "responses": _responses(
                        "201",
                        _answer("Stored", _ref("Created")),
                        *api_errors,
                        "NotFound",
                        "Unavailable",
                    ),
                }
            },
            "/webhooks/rest/webhook": {
                "post": {
                    "summary": "Rasa REST channel compatible: {sender, message} -> "
                    "[{recipient_id, text}]",
                    "requestBody": _json_body(
                        required=["sender", "message"],
                        properties={
                            "sender": _id_text("the customer's id"),
                            "message": message_text,
                        },
                    ),
                    "responses": _responses(
                        "200",
                        _answer(
                            "The bot's replies",
                            {"type": "array", "items": _ref("RasaReply")},
                        ),
                        *api_errors,
                        "Forbidden",
                        "Unavailable",
                    ),
                }
            },
            "/api/v1/answers/search": {
                "post": {
                    "summary": "Search past agents' answers and the FAQ (nothing is stored)",
                    "requestBody": _json_body(
                        required=["text"],
                        properties={
                            "text": message_text,
                            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 3},
                            "intent": _nullable(
                                _text(
                                    MAX_ID_CHARS,
                                    "search this intent's answers only, when the index has any",
                                    required=False,
                                )
                            ),
                        },
                    ),
                    "responses": _responses(
                        "200",
                        _answer(
                            "The best answers, best first; the bot itself uses one only when "
                            "its score reaches min_score",
                            _ref("Answers"),
                        ),
                        *api_errors,
                        "Unavailable",
                    ),
                }
            },
            "/api/v1/understand": {
                "post": {
                    "summary": "Intent and sentiment of a text (nothing is stored)",
                    "requestBody": _json_body(required=["text"], properties={"text": message_text}),
                    "responses": _responses(
                        "200",
                        _answer("What the live models make of the text", _ref("Understanding")),
                        *api_errors,
                        "Unavailable",
                    ),
                }
            },
            "/api/v1/handoff": {
                "post": {
                    "summary": "Hand a customer's conversation to the agent queue",
                    "requestBody": _json_body(
                        required=["sender"],
                        properties={
                            "sender": _id_text("the customer's id within the channel"),
                            "text": _nullable(
                                _text(
                                    max_message_chars,
                                    "the customer's last message, stored for the agent",
                                    required=False,
                                )
                            ),
                            "channel": _nullable(
                                {
                                    **_id_text("the customer's channel"),
                                    "default": HANDOFF_CHANNEL,
                                }
                            ),
                        },
                    ),
                    "responses": _responses(
                        "200",
                        _answer(
                            "Escalated (or already with an agent); same body as "
                            "POST /api/v1/messages",
                            _ref("Result"),
                        ),
                        *api_errors,
                        "Forbidden",
                        "Unavailable",
                    ),
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": public,
                    "responses": {"200": _answer("OpenAPI 3.0", {"type": "object"})},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "security": public,
                    "responses": {"200": _answer("The process answers", _ref("Health"))},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: models loaded, store reachable",
                    "security": public,
                    "responses": {
                        "200": _answer("Ready", _ref("Readiness")),
                        "503": _answer("Not ready: `checks` says why", _ref("Readiness")),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of this replica",
                    "security": public,
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`sb_...`) from `supportbot api-keys create "
                    "NAME`, sent as `Authorization: Bearer <key>`; it acts as the channels it "
                    "was created for. While no key exists, callers on this machine (a loopback "
                    "peer, not through a proxy) need none.",
                }
            },
            "responses": _RESPONSES,
            "schemas": _schemas(),
        },
    }


OPENAPI: dict[str, Any] = openapi_document()
