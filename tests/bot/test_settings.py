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


# -- issue 18: a settings file that is wrong says where and how, in one line -------------


def test_a_misspelt_key_inside_a_section_is_named_with_the_nearest_valid_one(
    tmp_path: Path,
) -> None:
    # pydantic ignores unknown keys inside a section: the port silently stayed 8080.
    config = tmp_path / "supportbot.yml"
    config.write_text("server:\n  host: 0.0.0.0\n  prot: 9000\n")
    with pytest.raises(ConfigurationError) as refused:
        load_settings(config)
    message = str(refused.value)
    assert message == (f"{config} line 3: server.prot is not a setting; did you mean server.port?")


def test_unknown_keys_at_every_depth_are_all_listed(tmp_path: Path) -> None:
    config = tmp_path / "supportbot.yml"
    config.write_text(
        "escalaton:\n  negative_message: 0.9\n"
        "models:\n  dir: /srv/models\n  quantise: false\n"
        "retrieval:\n  zzz: 1\n"
    )
    with pytest.raises(ConfigurationError) as refused:
        load_settings(config)
    lines = str(refused.value).splitlines()
    assert lines[0] == f"3 keys in {config} are not settings:"
    assert "line 1: escalaton is not a setting; did you mean escalation?" in lines[1]
    assert "line 5: models.quantise is not a setting; did you mean models.quantize?" in lines[2]
    # Nothing close: the valid keys of that section instead of a guess.
    assert "line 7: retrieval.zzz is not a setting; valid keys in retrieval: " in lines[3]
    assert "index_dir" in lines[3]


def test_a_yaml_syntax_error_gives_file_line_column_and_fix(tmp_path: Path) -> None:
    config = tmp_path / "supportbot.yml"
    config.write_text("server:\n  port: 9000\n host: 0.0.0.0\n")
    with pytest.raises(ConfigurationError) as refused:
        load_settings(config)
    message = str(refused.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{config} line 3, column 2: invalid YAML: ")
    assert "indent with spaces" in message


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "supportbot.yml"
    config.write_text("- server\n- port\n")
    with pytest.raises(ConfigurationError, match="expected a mapping of sections"):
        load_settings(config)


def test_valid_nested_keys_and_an_empty_file_still_load(tmp_path: Path) -> None:
    config = tmp_path / "supportbot.yml"
    config.write_text("")
    assert load_settings(config).server.port == 8080
    config.write_text(
        "server:\n  port: 9001\n  trusted_proxies: [10.0.0.0/8]\n"
        "escalation:\n  max_failed_turns: 3\ntelegram:\n  token: null\n"
    )
    settings = load_settings(config)
    assert settings.server.port == 9001 and settings.escalation.max_failed_turns == 3


def test_the_routing_files_yaml_error_is_one_line(tmp_path: Path) -> None:
    from bot.core.router import RoutingConfig

    routing = tmp_path / "routing.yml"
    routing.write_text("intents:\n  greeting: {response: hello\n")
    with pytest.raises(ConfigurationError) as refused:
        RoutingConfig.load(routing)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"routing config {routing} line 3, column 1: invalid YAML: ")
