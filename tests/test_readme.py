"""The README is the user's manual: it must document every setting and command that exists."""

from __future__ import annotations

from pathlib import Path

from bot.app.cli import build_parser
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


def test_the_configuration_table_gives_each_settings_default() -> None:
    """A row `| SUPPORTBOT_X__Y | default | ... |` must show the setting's real default."""
    rows = {
        cells[0].strip("`"): cells[1].strip("`")
        for line in README.splitlines()
        if line.startswith("| `SUPPORTBOT_")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    wrong = {}
    for section, field in Settings.model_fields.items():
        for key, sub in field.annotation.model_fields.items():  # type: ignore[union-attr]
            name = f"SUPPORTBOT_{section.upper()}__{key.upper()}"
            default = sub.get_default()
            # Computed defaults (the host name) and lists are described in words.
            if name not in rows or sub.default_factory or default is None:
                continue
            if isinstance(default, (list, tuple)):
                continue
            shown = rows[name]
            if isinstance(default, bool):
                ok = shown.lower() == str(default).lower()
            elif isinstance(default, (int, float)):
                try:
                    ok = float(shown) == float(default)
                except ValueError:
                    ok = False
            else:
                ok = shown == str(default)
            if not ok:
                wrong[name] = (shown, default)
    assert wrong == {}
