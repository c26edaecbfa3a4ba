"""Log set-up: secrets masked in every record, HTTP clients' request lines left out."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bot.core.logs import (
    QUIET_LOGGERS,
    REDACTED,
    SecretFilter,
    configure_logging,
    mask_secrets,
)

# The shape of a real token: the bot's id, a colon, 35 characters.
TOKEN = "7012345678:AAF3kq9Zx_TqLw8vN2pR5sYb-0cHdJeMiUo"


@contextmanager
def configured(log_format: str, level: int) -> Iterator[io.StringIO]:
    """configure_logging writing to a buffer; undone afterwards (root level, quiet loggers)."""
    root, buffer = logging.getLogger(), io.StringIO()
    before = root.level
    handler = configure_logging(log_format, "replica-1", level, stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


class Url:
    """Stands for httpx.URL: an argument that is not a string."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("httpx", logging.INFO, __file__, 1, msg, args or None, None)
    made.__dict__.update(extra)
    return made


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            f'HTTP Request: POST http://127.0.0.1:8081/bot{TOKEN}/getUpdates "HTTP/1.1 200 OK"',
            f'HTTP Request: POST http://127.0.0.1:8081/bot{REDACTED}/getUpdates "HTTP/1.1 200 OK"',
        ),
        # A path masks whatever token it holds, even one not shaped like a real one.
        ("POST http://h/bot123:abc/getMe", f"POST http://h/bot{REDACTED}/getMe"),
        ("Set Bot API URL: http://h/bot123456:x-y_z", f"Set Bot API URL: http://h/bot{REDACTED}"),
        (f"The token `{TOKEN}` was rejected", f"The token `{REDACTED}` was rejected"),
        (f"token={TOKEN}&x=1", f"token={REDACTED}&x=1"),
        # Not tokens: times, ids, short pairs, a word ending in "bot".
        ("12:30:45 2024-01-01T10:00:00 id 12345:abc", "12:30:45 2024-01-01T10:00:00 id 12345:abc"),
        ("http://h/robot/12345:abc", "http://h/robot/12345:abc"),
    ],
)
def test_tokens_are_masked_in_text(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def test_the_filter_masks_message_arguments_and_traceback_in_place() -> None:
    secret_filter = SecretFilter()
    by_args = record(
        'HTTP Request: %s %s "%s %d"', "POST", Url(f"http://h/bot{TOKEN}/getMe"), "HTTP/1.1", 200
    )
    assert secret_filter.filter(by_args)
    assert by_args.getMessage() == f'HTTP Request: POST http://h/bot{REDACTED}/getMe "HTTP/1.1 200"'
    by_dict = record("%(url)s failed", {"url": f"http://h/bot{TOKEN}/x"})
    secret_filter.filter(by_dict)
    assert by_dict.getMessage() == f"http://h/bot{REDACTED}/x failed"
    plain = record("%s messages handled", 12)
    secret_filter.filter(plain)
    assert plain.args == (12,)  # nothing to mask: the record is left as it was

    try:
        raise RuntimeError(f"The token `{TOKEN}` was rejected by the server.")
    except RuntimeError:
        failed = record("start failed", exc_info=sys.exc_info(), stack_info=f"at /bot{TOKEN}/x")
    secret_filter.filter(failed)
    assert TOKEN not in (failed.exc_text or "") and "RuntimeError" in (failed.exc_text or "")
    assert TOKEN not in (failed.stack_info or "")
    broken = record("%d apples", "not a number")
    assert secret_filter.filter(broken)  # a malformed call is not the filter's to raise


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_configured_logging_masks_tokens_and_leaves_out_request_lines(log_format: str) -> None:
    with configured(log_format, logging.DEBUG) as buffer:
        assert all(logging.getLogger(name).level == logging.WARNING for name in QUIET_LOGGERS)
        httpx = logging.getLogger("httpx")
        httpx.info("HTTP Request: POST %s", f"http://h/bot{TOKEN}/getUpdates")
        logging.getLogger("httpcore.http11").debug("send_request_headers.started")
        logging.getLogger("telegram.Bot").debug("Set Bot API URL: %s", f"http://h/bot{TOKEN}")
        httpx.warning("retrying %s", Url(f"http://h/bot{TOKEN}/getMe"))
        try:
            raise RuntimeError(f"The token `{TOKEN}` was rejected by the server.")
        except RuntimeError:
            logging.getLogger("connectors.telegram").exception("Telegram start failed")
    lines = buffer.getvalue().splitlines()
    output = "\n".join(lines)
    assert TOKEN not in output and TOKEN.split(":")[1] not in output
    assert "HTTP Request" not in output and "send_request_headers" not in output
    assert f"Set Bot API URL: http://h/bot{REDACTED}" in output
    assert f"retrying http://h/bot{REDACTED}/getMe" in output
    assert f"The token `{REDACTED}` was rejected" in output
    if log_format == "json":
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        assert [e["message"] for e in entries][-1] == "Telegram start failed"
        assert REDACTED in entries[-1]["exception"]
