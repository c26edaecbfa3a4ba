"""`supportbot rasa-actions`: flags, defaults read at start, and clear errors."""

from __future__ import annotations

import pytest

from bot.app.cli import build_parser, main
from connectors.rasa_cli import KEY_ENV, URL_ENV


def test_flags_and_defaults() -> None:
    ns = build_parser().parse_args(["rasa-actions"])
    assert (ns.port, ns.host, ns.supportbot_url, ns.timeout) == (5055, "127.0.0.1", None, 10.0)
    ns = build_parser().parse_args(
        ["rasa-actions", "--port", "6000", "--supportbot-url", "http://bot:8080"]
    )
    assert (ns.port, ns.supportbot_url) == (6000, "http://bot:8080")
    assert ns.api_key is None
    assert build_parser().parse_args(["rasa-actions", "--api-key", "sb_k"]).api_key == "sb_k"


def test_a_bad_url_is_a_clear_error_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The environment is read when the command starts, and checked like the flag.
    monkeypatch.setenv(URL_ENV, "bot:8080")
    assert main(["rasa-actions", "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("supportbot rasa-actions: error: the supportbot URL must be an")
    assert "'bot:8080'" in error and "--supportbot-url" in error


def test_a_key_that_cannot_be_sent_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The key is read from the environment when the command starts (a newline pasted with it
    # would otherwise break every request's headers).
    monkeypatch.setenv(KEY_ENV, "sb_abc\nmore")
    assert main(["rasa-actions", "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("supportbot rasa-actions: error: the API key must be one word")
    assert KEY_ENV in error and "sb_abc" not in error
