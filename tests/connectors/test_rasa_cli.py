"""`supportbot rasa-actions`: flags, defaults read at start, and clear errors."""

from __future__ import annotations

import pytest

from bot.app.cli import build_parser, main
from connectors.rasa_cli import URL_ENV


def test_flags_and_defaults() -> None:
    ns = build_parser().parse_args(["rasa-actions"])
    assert (ns.port, ns.host, ns.supportbot_url, ns.timeout) == (5055, "127.0.0.1", None, 10.0)
    ns = build_parser().parse_args(
        ["rasa-actions", "--port", "6000", "--supportbot-url", "http://bot:8080"]
    )
    assert (ns.port, ns.supportbot_url) == (6000, "http://bot:8080")


def test_a_bad_url_is_a_clear_error_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The environment is read when the command starts, and checked like the flag.
    monkeypatch.setenv(URL_ENV, "bot:8080")
    assert main(["rasa-actions", "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("supportbot rasa-actions: error: the supportbot URL must be an")
    assert "'bot:8080'" in error and "--supportbot-url" in error
