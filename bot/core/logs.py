"""Log lines an operator can follow across replicas: request and conversation ids, JSON.

`server.log_format: json` prints one JSON object per line (time, level, logger, message,
replica, request_id, conversation_id, exception), which log collectors (Loki, Elasticsearch,
CloudWatch) read without a parser. The ids come from context variables: the request
middleware sets `request_id` (the caller's `X-Request-ID`, or a new one, echoed in the
response), the service sets `conversation_id` once it knows the conversation, and every log
call in that request's task carries them, in text logs too.

Secrets stay out: `SecretFilter` masks Telegram bot tokens in every record, and the HTTP
client libraries, which log each request's URL (a Bot API URL contains the token), only log
warnings.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO
from uuid import uuid4

REQUEST_ID_HEADER = "X-Request-ID"
# What a request id from outside may look like: a proxy's or a client's id, never a payload.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
conversation_id: ContextVar[str | None] = ContextVar("conversation_id", default=None)

# Third-party loggers that log every request URL at INFO/DEBUG: warnings and errors only.
QUIET_LOGGERS = ("httpx", "httpcore")
# Third-party loggers whose DEBUG lines carry customer texts before redaction (PTB logs every
# update and Bot API result whole, aiosqlite every statement with its parameters): INFO and
# above only, so that DEBUG logs hold no card number or e-mail address either.
PAYLOAD_LOGGERS = ("telegram.ext.ExtBot", "telegram.ext.Application", "aiosqlite")
REDACTED = "<redacted>"
# A Telegram bot token (`<bot id>:<35 characters>`), and the Bot API path that carries one
# (`/bot<token>/getUpdates`), whatever the token looks like.
TELEGRAM_TOKEN = re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}")
BOT_API_PATH = re.compile(r"(/bot)\d+:[^/\s\"'`]+")

TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [%(replica)s %(request_id)s %(conversation_id)s]: "
    "%(message)s"
)


class ContextFilter(logging.Filter):
    """Adds replica, request_id and conversation_id to every record."""

    def __init__(self, replica: str) -> None:
        super().__init__()
        self.replica = replica

    def filter(self, record: logging.LogRecord) -> bool:
        record.replica = self.replica
        record.request_id = request_id.get() or "-"
        record.conversation_id = conversation_id.get() or "-"
        return True


def mask_secrets(text: str) -> str:
    """`text` with Telegram bot tokens (alone or in a Bot API URL) replaced by REDACTED."""
    if ":" not in text:  # the common case: nothing to look for
        return text
    return TELEGRAM_TOKEN.sub(REDACTED, BOT_API_PATH.sub(rf"\1{REDACTED}", text))


class SecretFilter(logging.Filter):
    """Masks secrets (see `mask_secrets`) in a record's message, arguments and traceback.

    The record is rewritten in place, so handlers after the one this filter is on see the
    masked record too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call: left for the handler to report, not raised
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Exception messages can carry a token too (PTB's InvalidToken does).
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ids that are not known are left out."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "replica": getattr(record, "replica", None),
        }
        for key in ("request_id", "conversation_id"):
            value = getattr(record, key, None)
            if value and value != "-":
                entry[key] = value
        if record.exc_text:  # formatted (and masked) already by SecretFilter
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(
    log_format: str, replica: str, level: int = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record to stderr (or `stream`) in `log_format` ("text" or "json").

    Replaces the root logger's handlers (the CLI's provisional set-up before the settings
    were read). Secrets are masked (`SecretFilter`) and the HTTP clients' per-request lines
    left out (`QUIET_LOGGERS`), at any level.

    Returns:
        The handler now on the root logger.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(SecretFilter())
    handler.addFilter(ContextFilter(replica))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet_http_clients()
    return handler


def quiet_http_clients() -> None:
    """Let the HTTP client libraries log warnings and errors only (see QUIET_LOGGERS), and the
    libraries that log message payloads nothing below INFO (see PAYLOAD_LOGGERS)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in PAYLOAD_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def new_request_id(given: str | None) -> str:
    """The caller's request id if it is a sane one, else a fresh one."""
    if given and REQUEST_ID_PATTERN.fullmatch(given):
        return given
    return uuid4().hex
