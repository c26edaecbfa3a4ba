from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.errors import ConfigurationError
from bot.settings import load_settings


def test_defaults_are_the_embedded_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SUPPORTBOT_SERVER__PORT", "SUPPORTBOT_STORE__URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.store.url.startswith("sqlite+aiosqlite:///")
    assert settings.server.port == 8080 and settings.models.dir == Path("models")
    assert settings.telegram.token is None and settings.telegram.mode == "polling"


def test_file_then_environment_then_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "supportbot.yml"
    config.write_text(
        "server:\n  port: 9000\n  host: 0.0.0.0\nstore:\n  url: postgresql+asyncpg://db/x\n"
    )
    settings = load_settings(config)
    assert (settings.server.port, settings.server.host) == (9000, "0.0.0.0")
    monkeypatch.setenv("SUPPORTBOT_SERVER__PORT", "9100")
    monkeypatch.setenv("SUPPORTBOT_TELEGRAM__TOKEN", "123:secret")
    settings = load_settings(config)
    assert settings.server.port == 9100 and settings.server.host == "0.0.0.0"
    assert settings.store.url == "postgresql+asyncpg://db/x"
    assert settings.telegram.token is not None
    assert settings.telegram.token.get_secret_value() == "123:secret"
    assert "123:secret" not in repr(settings) and "123:secret" not in str(settings.telegram)
    assert load_settings(config, server={"port": 9200}).server.port == 9200


def test_invalid_values_are_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORTBOT_SERVER__PORT", "not-a-port")
    with pytest.raises(ConfigurationError, match="server.port"):
        load_settings()
    monkeypatch.delenv("SUPPORTBOT_SERVER__PORT")
    config = tmp_path / "bad.yml"
    config.write_text("telegram:\n  mode: carrier-pigeon\n")
    with pytest.raises(ConfigurationError, match=r"telegram.mode.*bad.yml|bad.yml.*telegram.mode"):
        load_settings(config)
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "missing.yml")


def test_empty_variables_mean_unset_and_replicas_get_their_own_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What docker-compose passes for `${TELEGRAM_TOKEN:-}` when the operator set nothing.
    monkeypatch.setenv("SUPPORTBOT_TELEGRAM__TOKEN", "")
    monkeypatch.setenv("SUPPORTBOT_BUS__URL", "")
    monkeypatch.delenv("SUPPORTBOT_SERVER__REPLICA", raising=False)
    settings = load_settings()
    assert settings.telegram.token is None and settings.bus.url is None
    assert settings.server.replica  # the host name by default
    assert settings.server.log_format == "text"
    monkeypatch.setenv("SUPPORTBOT_BUS__URL", "redis://redis:6379/0")
    monkeypatch.setenv("SUPPORTBOT_SERVER__LOG_FORMAT", "json")
    settings = load_settings()
    assert settings.bus.url == "redis://redis:6379/0" and settings.server.log_format == "json"
