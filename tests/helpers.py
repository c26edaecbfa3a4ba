"""Helpers shared by the tests: the local PostgreSQL and Redis they run against, records to
store, and the real app."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from bot.app.factory import RUNTIME
from bot.core.desk import AgentDesk
from bot.core.records import Agent, Escalation, Scored, Understanding
from bot.settings import ConsoleSettings, Settings, load_settings
from bot.store.accounts import SqlAccountStore
from connectors.console import CONSOLE

# -- the local PostgreSQL (fixture `database_url` in tests/conftest.py) --

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_skip_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when the server answers."""

    async def probe() -> None:
        connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError) as exc:
        return (
            f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({type(exc).__name__}: {exc}); "
            "start a server there (user postgres, trust auth, database test) to run these"
        )
    return None


PG_SKIP_REASON = postgres_skip_reason()
needs_postgres = pytest.mark.skipif(PG_SKIP_REASON is not None, reason=PG_SKIP_REASON or "")


async def pg_admin(sql: str) -> None:
    """Run `sql` on the test database as its superuser."""
    connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """The URL of a new login role whose tables land in a schema of its own.

    The schema is named after the role, and `"$user"` comes first on PostgreSQL's default
    search path, so the store needs no option for it; both are dropped afterwards. Much faster
    than a database per test, and just as isolated.
    """
    role = f"supportbot_test_{uuid4().hex[:12]}"
    await pg_admin(f'CREATE ROLE "{role}" LOGIN; CREATE SCHEMA "{role}" AUTHORIZATION "{role}"')
    try:
        yield f"postgresql+asyncpg://{role}@127.0.0.1:5432/test"
    finally:
        await pg_admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';"
            f'DROP SCHEMA "{role}" CASCADE; DROP ROLE "{role}"'
        )


# -- the local Redis --

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_skip_reason() -> str | None:
    """Why the Redis tests cannot run here, or None when Redis answers."""

    async def probe() -> None:
        client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            await client.ping()  # type: ignore[misc]  # typed for sync and async clients
        finally:
            await client.aclose()

    try:
        asyncio.run(probe())
    except Exception as exc:  # any failure means: no usable Redis here
        return f"Redis is not reachable at {REDIS_URL} ({type(exc).__name__}: {exc})"
    return None


REDIS_SKIP_REASON = redis_skip_reason()


# -- records to store --


def understanding(**overrides: Any) -> Understanding:
    """What the models made of an unhappy refund question (fields overridable)."""
    values: dict[str, Any] = {
        "intent": "refund_status",
        "intent_confidence": 0.91,
        "top_intents": (Scored("refund_status", 0.91), Scored("order_status", 0.05)),
        "sentiment": "negative",
        "negativity": 0.62,
        "sentiment_scores": (Scored("negative", 0.7), Scored("positive", 0.08)),
        "model_versions": {"intent": "v3", "sentiment": "v1"},
    }
    values.update(overrides)
    return Understanding(**values)


def angry(priority: float = 0.8) -> Escalation:
    """An escalation of a very upset customer, as urgent as `priority`."""
    return Escalation(
        reason="negative_message",
        priority=priority,
        explanation="The customer is very upset about a missing refund.",
        scores={"negativity": priority},
    )


# -- the real app --


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
) -> tuple[AgentDesk, Agent]:
    """The app's console service and an account for `name`, as `supportbot agents add` makes
    it; the caller then acts as that agent (claim, reply, resolve) the way the console does."""
    agent = await SqlAccountStore(app[RUNTIME].store, ConsoleSettings()).add(
        name, role, "a long enough password"
    )
    return app[CONSOLE].console, agent


# An in-process app's test client, as the `aiohttp_client` fixture (pytest-aiohttp) makes it.
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


# -- the `supportbot` command as a user runs it --

SUPPORTBOT = Path(sys.executable).with_name("supportbot")


def supportbot(
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script in a subprocess, offline (`HF_HUB_OFFLINE=1`), with
    `env` added to this process's environment and `stdin` as its standard input."""
    return subprocess.run(
        [str(SUPPORTBOT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


def assert_refused(
    result: subprocess.CompletedProcess[str], *expected: str, wrote: Path | None = None
) -> None:
    """The command refused its input the way a user should see it: exit status 2, each of
    `expected` on stderr, no traceback, and (when given) nothing written at `wrote`."""
    assert result.returncode == 2, result.stderr
    for text in expected:
        assert text in result.stderr
    assert "Traceback" not in result.stderr
    if wrote is not None:
        assert not wrote.exists()
