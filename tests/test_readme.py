"""The README is the user's manual: it must document every setting and command that exists."""

from __future__ import annotations

from pathlib import Path

from bot.cli import build_parser
from bot.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented_with_its_environment_variable() -> None:
    missing = [
        f"SUPPORTBOT_{section.upper()}__{key.upper()}"
        for section, field in Settings.model_fields.items()
        for key in field.annotation.model_fields  # type: ignore[union-attr]
        if f"SUPPORTBOT_{section.upper()}__{key.upper()}" not in README
    ]
    assert missing == []


def test_every_command_is_documented() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert [c for c in commands if f"supportbot {c}" not in README] == []
