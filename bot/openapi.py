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
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["sender", "text"],
                                "properties": {
                                    "sender": {
                                        "type": "string",
                                        "description": "the customer's id; one conversation "
                                        "per sender",
                                    },
                                    "text": {"type": "string", "maxLength": 4000},
                                    "client_id": {
                                        "type": "string",
                                        "description": "your id for this message; a retry "
                                        "with the same id is not answered twice",
                                    },
                                    "name": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Stored and answered (replies may be empty while an "
                        "agent has the conversation)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "conversation_id": {"type": "string"},
                                        "message_id": {"type": "integer"},
                                        "status": {
                                            "type": "string",
                                            "enum": ["bot", "waiting", "claimed"],
                                        },
                                        "duplicate": {"type": "boolean"},
                                        "replies": {"type": "array", "items": _REPLY},
                                    },
                                }
                            }
                        },
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
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["message_id", "rating"],
                                "properties": {
                                    "message_id": {"type": "integer"},
                                    "rating": {"type": "string", "enum": ["up", "down"]},
                                    "comment": {"type": "string", "maxLength": 2000},
                                },
                            }
                        }
                    },
                },
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
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["sender", "message"],
                                "properties": {
                                    "sender": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "The bot's replies"}, "400": _ERROR},
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
