"""Helpers shared by the tests that run the real app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.accounts import Agent, SqlAccountStore
from bot.app import RUNTIME
from bot.console import ConsoleService
from bot.settings import ConsoleSettings, Settings, load_settings
from connectors.console import CONSOLE


def runtime_settings(models: Path, db_url: str, **sections: dict[str, Any]) -> Settings:
    """Settings for an in-process app on test models: nothing trained or built on start.

    Args:
        models: a models directory with live models and `answers/` (the `runtime_models`
            fixture).
        db_url: the store URL (a tmp SQLite file or a PostgreSQL test database).
        sections: per-section overrides, merged into the defaults below.
    """
    base: dict[str, dict[str, Any]] = {
        "store": {"url": db_url},
        "models": {"dir": models, "train_if_missing": False, "reload_interval_s": 0.2},
        "retrieval": {"index_dir": models / "answers", "build_if_missing": False, "min_score": 0.5},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return load_settings(None, **base)


# -- browser tests (fixture `browser` in tests/connectors/conftest.py) --

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
# Screenshots of the browser tests, for a person to look at.
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

# pytestmark of every browser test module.
BROWSER_TESTS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is missing; install Debian's chromium (make chromium)",
    ),
]


async def console_as(
    app: web.Application, name: str, role: str = "agent"
) -> tuple[ConsoleService, Agent]:
    """The app's console service and an account for `name`, as `supportbot agents add` makes
    it; the caller then acts as that agent (claim, reply, resolve) the way the console does."""
    agent = await SqlAccountStore(app[RUNTIME].store, ConsoleSettings()).add(
        name, role, "a long enough password"
    )
    return app[CONSOLE].console, agent
