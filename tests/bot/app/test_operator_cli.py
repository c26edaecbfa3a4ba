"""The operator's `supportbot` as issue 18 found it: every command reads the same settings as
`serve`, errors are one line, every flag is explained, `--version` exists."""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.app.cli import build_parser, main, package_version
from bot.app.serve import check_port_free
from bot.core.errors import ConfigurationError
from tests.helpers import assert_refused, supportbot


def _walk(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.Action, dict[str, str | None]]]:
    """Every action of every (sub)command, with the help of the subcommands beside it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", action, helps
                yield from _walk(sub, f"{path} {name}")
        else:
            yield path, action, {}


def test_every_flag_and_command_has_help() -> None:
    missing = []
    for path, action, helps in _walk(build_parser(), "supportbot"):
        if isinstance(action, argparse._SubParsersAction):
            name = path.rsplit(" ", 1)[-1]
            if not helps.get(name):
                missing.append(f"{path} (command)")
        elif not action.help:  # argparse.SUPPRESS (a hidden alias) is a choice, not a gap
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_the_deprecated_out_flag_is_hidden_from_help() -> None:
    hidden = [
        path
        for path, action, _ in _walk(build_parser(), "supportbot")
        if "--out" in action.option_strings
    ]
    assert hidden  # still accepted where it was (models, train, evaluate, index build)
    for path, action, _ in _walk(build_parser(), "supportbot"):
        if "--out" in action.option_strings:
            assert action.help == argparse.SUPPRESS, path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"supportbot {package_version()}" and out[-1].isdigit()


def test_serve_on_a_busy_port_says_so_in_one_line_before_loading_models(
    tmp_path: Path,
) -> None:
    # A models directory with nothing in it: were the port checked after `prepare`, serve
    # would first spend minutes training (and print that it does).
    config = tmp_path / "supportbot.yml"
    config.write_text(
        f"models:\n  dir: {tmp_path / 'models'}\n  train_data: [{tmp_path / 'none'}]\n"
        f"store:\n  url: sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = supportbot("serve", "--config", str(config), "--port", str(port), cwd=tmp_path)
    assert_refused(result, f"cannot listen on 127.0.0.1:{port}: the port is in use", "--port")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "training" not in result.stdout and not (tmp_path / "models").exists()
    assert time.monotonic() - started < 60


def test_check_port_free_passes_a_free_port_and_port_0() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    check_port_free("127.0.0.1", free)
    check_port_free("127.0.0.1", 0)
    with pytest.raises(ConfigurationError, match="check --host"):
        check_port_free("no-such-host.invalid", 8080)


def test_serve_with_a_broken_routing_file_says_where_in_one_line(tmp_path: Path) -> None:
    routing = tmp_path / "routing.yml"
    routing.write_text("intents:\n  greeting: {response: hello\n")
    config = tmp_path / "supportbot.yml"
    config.write_text(f"routing:\n  config: {routing}\nmodels:\n  dir: {tmp_path / 'models'}\n")
    result = supportbot("serve", "--config", str(config), "--port", "0", cwd=tmp_path)
    assert_refused(result, f"routing config {routing} line 3, column 1: invalid YAML")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()


def test_a_misspelt_setting_stops_every_command(tmp_path: Path) -> None:
    config = tmp_path / "supportbot.yml"
    config.write_text("server:\n  prot: 9000\n")
    for command in (["serve"], ["models", "list"], ["agents", "list"], ["index", "search", "x"]):
        result = supportbot(*command, "--config", str(config), cwd=tmp_path)
        assert_refused(result, "server.prot is not a setting; did you mean server.port?")


def test_agents_commands_print_no_migration_log_unless_verbose(
    tmp_path: Path, sqlite_url: str
) -> None:
    env = {"SUPPORTBOT_STORE__URL": sqlite_url}
    quiet = supportbot("agents", "list", env=env, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "alembic" not in quiet.stderr and quiet.stderr.strip() == ""
    assert "no accounts yet" in quiet.stdout
    verbose = supportbot("--verbose", "agents", "list", env=env, cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert "alembic" in verbose.stderr


@pytest.mark.slow
def test_index_commands_use_the_index_dir_of_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    faq = tmp_path / "faq.csv"
    faq.write_text(
        "question,answer\nHow long does delivery take?,Three to five business days.\n"
        "Can I get a refund?,Yes: within 30 days of delivery.\n"
    )
    index = tmp_path / "served" / "answers"
    config = tmp_path / "supportbot.yml"
    config.write_text(f"retrieval:\n  index_dir: {index}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert main(["index", "build", "--faq", str(faq), "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(index)
    assert (index / "index.json").is_file() and not (elsewhere / "models").exists()

    monkeypatch.setenv("SUPPORTBOT_RETRIEVAL__INDEX_DIR", str(index))
    assert main(["index", "search", "refund please", "-k", "1", "--json"]) == 0
    assert '"index": "' + str(index) in capsys.readouterr().out
