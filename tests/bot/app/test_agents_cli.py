"""`supportbot agents` as an operator runs it: the installed console script with the password
on standard input, and in-process for the rest."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from bot.app.agents_cli import read_password
from bot.app.cli import main
from bot.core.errors import BadRequestError
from bot.settings import ConsoleSettings
from bot.store.accounts import SqlAccountStore
from bot.store.conversations import SqlConversationStore
from tests.helpers import assert_refused, supportbot


def config_for(tmp_path: Path, db_url: str) -> Path:
    config = tmp_path / "supportbot.yml"
    config.write_text(f"store:\n  url: {db_url}\n")
    return config


def sign_in(db_url: str, name: str, password: str) -> str:
    async def attempt() -> str:
        store = SqlConversationStore(db_url)
        await store.start()
        try:
            signed = await SqlAccountStore(store, ConsoleSettings()).sign_in(name, password, "cli")
            return signed.session.agent.role.value
        finally:
            await store.stop()

    return asyncio.run(attempt())


def test_add_reads_the_password_from_stdin(tmp_path: Path, sqlite_url: str) -> None:
    env = {"SUPPORTBOT_STORE__URL": sqlite_url}
    result = supportbot(
        "agents", "add", "ana", "--role", "operator", stdin="piped password 1\n", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "added operator ana" in result.stdout
    assert sign_in(sqlite_url, "ana", "piped password 1") == "operator"

    short = supportbot("agents", "add", "bo", "--role", "agent", stdin="short\n", env=env)
    assert_refused(short, "at least 8")


def test_list_disable_and_password(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_for(tmp_path, sqlite_url))
    assert main(["agents", "list", "--config", config]) == 0
    assert "no accounts yet" in capsys.readouterr().out
    assert (
        main(["agents", "add", "ana", "--role", "agent", "--password", "x" * 8, "--config", config])
        == 0
    )
    assert (
        main(
            [
                "agents",
                "add",
                "olga",
                "--role",
                "operator",
                "--password",
                "y" * 8,
                "--config",
                config,
            ]
        )
        == 0
    )
    assert (
        main(["agents", "add", "ana", "--role", "agent", "--password", "x" * 8, "--config", config])
        == 2
    )
    assert "exists already" in capsys.readouterr().err

    assert main(["agents", "list", "--json", "--config", config]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["name"], a["role"], a["disabled_at"]) for a in listed] == [
        ("ana", "agent", None),
        ("olga", "operator", None),
    ]

    assert main(["agents", "disable", "ana", "--config", config]) == 0
    assert main(["agents", "list", "--config", config]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].split()[:3] == ["ana", "agent", "disabled"]
    assert lines[-1].split() == ["olga", "operator", "active"]

    assert main(["agents", "password", "olga", "--password", "z" * 8, "--config", config]) == 0
    assert sign_in(sqlite_url, "olga", "z" * 8) == "operator"
    assert main(["agents", "password", "nobody", "--password", "z" * 8, "--config", config]) == 2
    assert "no console account is named 'nobody'" in capsys.readouterr().err


def test_read_password_takes_one_line_and_refuses_nothing() -> None:
    assert read_password(io.StringIO("with spaces inside \nsecond line\n")) == "with spaces inside "
    with pytest.raises(BadRequestError, match="no password on standard input"):
        read_password(io.StringIO(""))
