"""`supportbot api-keys` as an operator runs it (the installed console script on a real SQLite
file), and `supportbot serve` refusing to open the REST API to the network without a key."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.app.api_keys_cli import opened_keys
from bot.app.cli import main
from bot.core.errors import UnauthorizedError
from bot.core.records import ApiKey
from bot.settings import load_settings
from bot.store.api_keys import KEY_PATTERN, key_digest, new_key

SUPPORTBOT = Path(sys.executable).with_name("supportbot")


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SUPPORTBOT), *args], capture_output=True, text=True, env=env, timeout=180
    )


def authenticate(db_url: str, key: str) -> ApiKey:
    async def check() -> ApiKey:
        async with opened_keys(load_settings(store={"url": db_url})) as keys:
            return await keys.authenticate(key)

    return asyncio.run(check())


def test_create_list_revoke_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "supportbot.db"
    db_url = f"sqlite+aiosqlite:///{db}"
    env = {**os.environ, "SUPPORTBOT_STORE__URL": db_url}
    monkeypatch.setenv("SUPPORTBOT_STORE__URL", db_url)

    created = run("api-keys", "create", "rasa", env=env)
    assert created.returncode == 0, created.stderr
    # The key alone on standard output (KEY=$(supportbot api-keys create ...)), shown once.
    key = created.stdout.strip()
    assert KEY_PATTERN.fullmatch(key), created.stdout
    assert "shown only this once" in created.stderr
    assert "Authorization: Bearer" in created.stderr
    assert main(["api-keys", "create", "crm", "--channel", "rest"]) == 0
    crm = capsys.readouterr().out.strip()

    listed = run("api-keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "KEY", "CHANNELS"]
    assert rows[0].split()[:3] == ["crm", f"{crm[:11]}...", "rest"]
    assert rows[1].split()[:3] == ["rasa", f"{key[:11]}...", "rest,rasa,rasa-rest"]
    assert rows[1].split()[-2:] == ["never", "active"]
    assert key not in listed.stdout

    assert authenticate(db_url, key).channels == ("rest", "rasa", "rasa-rest")
    assert main(["api-keys", "list", "--json"]) == 0
    used = json.loads(capsys.readouterr().out)
    assert [k["name"] for k in used] == ["crm", "rasa"] and used[1]["last_used_at"]

    revoked = run("api-keys", "revoke", "rasa", env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked API key 'rasa' ({key[:11]}...)" in revoked.stdout
    assert "no API key is left" not in revoked.stdout  # crm is still in use
    with pytest.raises(UnauthorizedError, match="revoked"):
        authenticate(db_url, key)
    assert main(["api-keys", "revoke", "rasa"]) == 2
    assert "no API key named 'rasa' is in use" in capsys.readouterr().err
    assert main(["api-keys", "list"]) == 0
    after = capsys.readouterr().out.splitlines()
    assert after[2].split()[0] == "rasa" and "revoked" in after[2]

    # What the database file holds: the keys' SHA-256, never a key.
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("supportbot.db*"))
    for plain in (key, crm):
        assert plain.encode() not in stored
        assert key_digest(plain).encode() in stored


def test_channels_json_and_refusals(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "supportbot.yml"
    config.write_text(f"store:\n  url: {sqlite_url}\n")
    base = ["--config", str(config)]
    assert main(["api-keys", "list", *base]) == 0
    assert "no API keys yet" in capsys.readouterr().out
    assert (
        main(["api-keys", "create", "tg", "--channel", "telegram", "--channel", "rest", *base]) == 0
    )
    key = capsys.readouterr().out.strip()
    assert authenticate(sqlite_url, key).channels == ("telegram", "rest")
    assert main(["api-keys", "create", "tg", *base]) == 2
    assert "an API key named 'tg' exists already" in capsys.readouterr().err
    assert main(["api-keys", "create", "x y", *base]) == 2
    assert "name 'x y' is not allowed" in capsys.readouterr().err
    assert main(["api-keys", "list", "--json", *base]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["channels"] == ["telegram", "rest"] and listed["revoked_at"] is None
    assert listed["prefix"] == key[:11] and key not in json.dumps(listed)
    assert main(["api-keys", "revoke", "tg", *base]) == 0
    assert "no API key is left in use" in capsys.readouterr().out


def test_a_key_from_the_environment_is_stored_once(
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What docker compose's `prepare` job runs on every start.
    monkeypatch.setenv("SUPPORTBOT_STORE__URL", sqlite_url)
    key = new_key()
    monkeypatch.setenv("RASA_API_KEY", key)
    create = ["api-keys", "create", "rasa", "--key-from-env", "RASA_API_KEY"]
    assert main(create) == 0
    out = capsys.readouterr().out
    assert "stored API key 'rasa' from RASA_API_KEY" in out and key not in out
    assert main(create) == 0
    assert "is stored already; nothing changed" in capsys.readouterr().out
    assert authenticate(sqlite_url, key).name == "rasa"
    assert main([*create[:2], "other", *create[3:]]) == 2
    assert "stored already as 'rasa'" in capsys.readouterr().err
    assert main(["api-keys", "revoke", "rasa"]) == 0
    assert main(create) == 2
    assert "was revoked" in capsys.readouterr().err
    monkeypatch.setenv("RASA_API_KEY", "letmein")
    assert main(create) == 2
    assert "'sb_' followed by 43 characters" in capsys.readouterr().err
    monkeypatch.delenv("RASA_API_KEY")
    assert main(create) == 2
    assert "RASA_API_KEY is empty or not set" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_on_all_interfaces_without_a_key_refuses_to_start(
    tmp_path: Path, runtime_models: Path
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'supportbot.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTBOT_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "SUPPORTBOT_STORE__URL": db_url,
            "SUPPORTBOT_MODELS__DIR": str(runtime_models),
            "SUPPORTBOT_MODELS__TRAIN_IF_MISSING": "false",
            "SUPPORTBOT_RETRIEVAL__INDEX_DIR": str(runtime_models / "answers"),
            "SUPPORTBOT_RETRIEVAL__BUILD_IF_MISSING": "false",
        }
    )
    refused = run("serve", "--host", "0.0.0.0", "--port", "0", env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    [error] = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert error.startswith("supportbot serve: error: server.host is '0.0.0.0'")
    assert "supportbot api-keys create" in error
    assert "SUPPORTBOT_SERVER__ALLOW_UNAUTHENTICATED_API" in error
