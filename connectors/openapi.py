"""The OpenAPI description of the REST API (served at /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "A clear error",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}}
        }
    },
}

_REPLY = {
    "type": "object",
    "properties": {
        "message_id": {"type": "integer", "description": "id to rate with /api/v1/feedback"},
        "role": {"type": "string", "enum": ["bot", "agent", "system"]},
        "text": {"type": "string"},
        "route": {
            "type": "string",
            "nullable": True,
            "enum": ["response", "answer", "handler", "rephrase", "handoff", None],
        },
        "quick_replies": {"type": "array", "items": {"type": "string"}},
        "rateable": {"type": "boolean"},
    },
}

_RESULT = {
    "type": "object",
    "properties": {
        "conversation_id": {"type": "string"},
        "message_id": {"type": "integer"},
        "status": {"type": "string", "enum": ["bot", "waiting", "claimed"]},
        "duplicate": {"type": "boolean"},
        "replies": {"type": "array", "items": _REPLY},
    },
}

_ANSWER = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "score": {"type": "number", "description": "cosine similarity of the questions"},
        "source": {"type": "string", "description": "file and line it came from"},
        "question": {"type": "string", "description": "the past question it answered"},
    },
}

_UNDERSTANDING = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "nullable": True, "description": "null: abstained"},
        "intent_confidence": {"type": "number"},
        "top_intents": {
            "type": "array",
            "description": "[label, probability] pairs, best first",
            "items": {"type": "array", "items": {}},
        },
        "sentiment": {"type": "string", "enum": ["negative", "neutral", "positive"]},
        "negativity": {"type": "number", "description": "P(negative) - P(positive)"},
        "sentiment_scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "model_versions": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _json_body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A required JSON object request body with these properties."""
    schema: dict[str, Any] = {"type": "object"}
    if required is not None:
        schema["required"] = required
    schema["properties"] = properties
    return {"required": True, "content": {"application/json": {"schema": schema}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "supportbot REST API",
        "version": "1",
        "description": "Send customer messages, read transcripts and rate bot replies.",
    },
    "paths": {
        "/api/v1/messages": {
            "post": {
                "summary": "Send a customer message and get the bot's replies",
                "requestBody": _json_body(
                    required=["sender", "text"],
                    properties={
                        "sender": {
                            "type": "string",
                            "description": "the customer's id; one conversation per sender",
                        },
                        "text": {"type": "string", "maxLength": 4000},
                        "client_id": {
                            "type": "string",
                            "description": "your id for this message; a retry "
                            "with the same id is not answered twice",
                        },
                        "name": {"type": "string"},
                    },
                ),
                "responses": {
                    "200": {
                        "description": "Stored and answered (replies may be empty while an "
                        "agent has the conversation)",
                        "content": {"application/json": {"schema": _RESULT}},
                    },
                    "400": _ERROR,
                    "413": {"description": "Body larger than server.max_body_bytes"},
                    "503": _ERROR,
                },
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
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {"200": {"description": "The transcript"}, "404": _ERROR},
            }
        },
        "/api/v1/feedback": {
            "post": {
                "summary": "Rate a bot reply",
                "requestBody": _json_body(
                    required=["message_id", "rating"],
                    properties={
                        "message_id": {"type": "integer"},
                        "rating": {"type": "string", "enum": ["up", "down"]},
                        "comment": {"type": "string", "maxLength": 2000},
                    },
                ),
                "responses": {
                    "201": {"description": "Stored"},
                    "400": _ERROR,
                    "404": _ERROR,
                },
            }
        },
        "/webhooks/rest/webhook": {
            "post": {
                "summary": "Rasa REST channel compatible: {sender, message} -> "
                "[{recipient_id, text}]",
                "requestBody": _json_body(
                    required=["sender", "message"],
                    properties={
                        "sender": {"type": "string"},
                        "message": {"type": "string"},
                    },
                ),
                "responses": {"200": {"description": "The bot's replies"}, "400": _ERROR},
            }
        },
        "/api/v1/answers/search": {
            "post": {
                "summary": "Search past agents' answers and the FAQ (nothing is stored)",
                "requestBody": _json_body(
                    required=["text"],
                    properties={
                        "text": {"type": "string", "maxLength": 4000},
                        "k": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 20,
                            "default": 3,
                        },
                        "intent": {
                            "type": "string",
                            "description": "search this intent's answers only, "
                            "when the index has any",
                        },
                    },
                ),
                "responses": {
                    "200": {
                        "description": "The best answers, best first; the bot itself uses one "
                        "only when its score reaches min_score",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "answers": {"type": "array", "items": _ANSWER},
                                        "min_score": {"type": "number"},
                                    },
                                }
                            }
                        },
                    },
                    "400": _ERROR,
                },
            }
        },
        "/api/v1/understand": {
            "post": {
                "summary": "Intent and sentiment of a text (nothing is stored)",
                "requestBody": _json_body(
                    required=["text"],
                    properties={"text": {"type": "string", "maxLength": 4000}},
                ),
                "responses": {
                    "200": {
                        "description": "What the live models make of the text",
                        "content": {"application/json": {"schema": _UNDERSTANDING}},
                    },
                    "400": _ERROR,
                    "503": _ERROR,
                },
            }
        },
        "/api/v1/handoff": {
            "post": {
                "summary": "Hand a customer's conversation to the agent queue",
                "requestBody": _json_body(
                    required=["sender"],
                    properties={
                        "sender": {"type": "string"},
                        "text": {
                            "type": "string",
                            "description": "the customer's last message, stored for the agent",
                        },
                        "channel": {"type": "string", "default": "rasa"},
                    },
                ),
                "responses": {
                    "200": {
                        "description": "Escalated (or already with an agent); same body as "
                        "POST /api/v1/messages",
                        "content": {"application/json": {"schema": _RESULT}},
                    },
                    "400": _ERROR,
                    "503": _ERROR,
                },
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: models loaded, store reachable",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not"}},
            }
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "ok"}}}
        },
    },
}
