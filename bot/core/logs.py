"""Log lines an operator can follow across replicas: request and conversation ids, JSON.

`server.log_format: json` prints one JSON object per line (time, level, logger, message,
replica, request_id, conversation_id, exception), which log collectors (Loki, Elasticsearch,
CloudWatch) read without a parser. The ids come from context variables: the request
middleware sets `request_id` (the caller's `X-Request-ID`, or a new one, echoed in the
response), the service sets `conversation_id` once it knows the conversation, and every log
call in that request's task carries them, in text logs too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

REQUEST_ID_HEADER = "X-Request-ID"
# What a request id from outside may look like: a proxy's or a client's id, never a payload.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
conversation_id: ContextVar[str | None] = ContextVar("conversation_id", default=None)

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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(log_format: str, replica: str, level: int = logging.INFO) -> None:
    """Send every log record to stderr in `log_format` ("text" or "json").

    Replaces the root logger's handlers (the CLI's provisional set-up before the settings
    were read).
    """
    handler = logging.StreamHandler(sys.stderr)
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


def new_request_id(given: str | None) -> str:
    """The caller's request id if it is a sane one, else a fresh one."""
    if given and REQUEST_ID_PATTERN.fullmatch(given):
        return given
    return uuid4().hex
