"""Fixtures shared by the store's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers import PG_SKIP_REASON, pg_schema


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """An empty PostgreSQL schema, for what only a server can do (go away and come back,
    drop a connection)."""
    if PG_SKIP_REASON is not None:
        pytest.skip(PG_SKIP_REASON)
    async with pg_schema() as url:
        yield url
