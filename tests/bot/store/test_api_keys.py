"""REST API keys in the real database (SQLite and PostgreSQL): stored hashed, found in constant
time, revoked for good, names reusable once revoked, and the migration that makes the table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event, inspect, select
from sqlalchemy.engine import Engine

from bot.core.errors import BadRequestError, ConflictError, NotFoundError, UnauthorizedError
from bot.core.ports import ApiKeyStore
from bot.core.records import Role
from bot.store.api_keys import (
    KEY_PATTERN,
    SqlApiKeyStore,
    check_channels,
    key_digest,
    new_key,
)
from bot.store.conversations import SqlConversationStore
from bot.store.engine import MIGRATIONS_DIR
from bot.store.schema import ApiKeyRow, Base
from tests.fakes.clock import ManualClock

DEFAULT = ("rest", "rasa", "rasa-rest")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def keys(database_url: str, clock: ManualClock) -> AsyncIterator[SqlApiKeyStore]:
    """The keys on a fresh database of each backend; `keys.store` is its conversation store."""
    keys = SqlApiKeyStore(SqlConversationStore(database_url, clock=clock))
    await keys.store.start()
    yield keys
    await keys.store.stop()


def test_the_store_implements_the_port(keys: SqlApiKeyStore) -> None:
    port: ApiKeyStore = keys
    assert port is keys


def test_new_keys_are_long_random_and_url_safe() -> None:
    drawn = {new_key() for _ in range(200)}
    assert len(drawn) == 200
    assert all(KEY_PATTERN.fullmatch(key) and len(key) == 46 for key in drawn)


async def test_a_key_is_stored_as_its_hash_only(keys: SqlApiKeyStore) -> None:
    issued = await keys.create("rasa", DEFAULT)
    assert issued.record.name == "rasa" and issued.record.channels == DEFAULT
    assert issued.record.prefix == issued.key[:11] and issued.record.revoked_at is None
    async with keys.store.reading("read keys") as session:
        row = (await session.scalars(select(ApiKeyRow))).one()
    stored = [str(getattr(row, column.key)) for column in ApiKeyRow.__table__.columns]
    assert all(issued.key not in value for value in stored)
    assert row.key_hash == key_digest(issued.key) and row.prefix == issued.key[:11]
    assert (await keys.authenticate(issued.key)).id == issued.record.id


async def test_only_the_whole_key_opens(keys: SqlApiKeyStore) -> None:
    issued = await keys.create("crm", ["rest"])
    # Same first characters (the row is found), the rest wrong: the hash comparison refuses.
    forged = issued.key[:11] + ("A" if issued.key[11] != "A" else "B") + issued.key[12:]
    for wrong in (forged, issued.key[:-1], issued.key + "x", "", "Bearer " + issued.key, "sb_"):
        assert await keys.find(wrong) is None, wrong
        with pytest.raises(UnauthorizedError, match="not valid"):
            await keys.authenticate(wrong)


async def test_revoked_keys_are_refused_and_their_names_free_again(
    keys: SqlApiKeyStore, clock: ManualClock
) -> None:
    assert await keys.any_active() is False
    first = await keys.create("rasa", DEFAULT)
    assert await keys.any_active() is True
    with pytest.raises(ConflictError, match="exists already"):
        await keys.create("rasa", ["rest"])
    clock.advance(hours=1)
    revoked = await keys.revoke("rasa")
    assert revoked.revoked_at == clock.now
    assert await keys.any_active() is False
    with pytest.raises(UnauthorizedError, match="'rasa' was revoked on 2026-11-30 10:00 UTC"):
        await keys.authenticate(first.key)
    with pytest.raises(NotFoundError, match="no API key named 'rasa' is in use"):
        await keys.revoke("rasa")
    second = await keys.create("rasa", ["rasa"])
    assert (await keys.authenticate(second.key)).channels == ("rasa",)
    listed = await keys.keys()
    assert [(k.name, k.revoked_at is None) for k in listed] == [("rasa", False), ("rasa", True)]


async def test_a_key_made_by_another_process_counts_within_the_remembered_time(
    keys: SqlApiKeyStore, database_url: str
) -> None:
    """`any_active` is asked for every request without a key, so its answer is remembered:
    a key made through this process's store counts at once, one made by another process
    (`supportbot api-keys create` on the same database) once `remembered_s` has passed."""
    same = SqlApiKeyStore(keys.store, remembered_s=60)
    assert await same.any_active() is False
    other = SqlConversationStore(database_url)  # another process's view of the database
    await other.start()
    try:
        await SqlApiKeyStore(other).create("crm", DEFAULT)
        assert await same.any_active() is False  # remembered
        assert await SqlApiKeyStore(keys.store, remembered_s=0).any_active() is True
        # Read again (above): every store of this process sees it now.
        assert await same.any_active() is True
        await SqlApiKeyStore(keys.store).revoke("crm")  # through this process's store
        assert await same.any_active() is False  # at once
    finally:
        await other.stop()


async def test_requests_that_find_the_answer_expired_together_share_one_read(
    keys: SqlApiKeyStore,
) -> None:
    """At 100 concurrent conversations the remembered answer expires under up to 100
    requests at once: they wait for one query instead of making 100."""
    statements: list[str] = []

    def count(_conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys" in statement:
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        store = SqlApiKeyStore(keys.store, remembered_s=60)
        assert await asyncio.gather(*(store.any_active() for _ in range(40))) == [False] * 40
        assert len(statements) == 1
        await SqlApiKeyStore(keys.store).create("crm", DEFAULT)  # forgets the answer
        statements.clear()
        assert await asyncio.gather(*(store.any_active() for _ in range(40))) == [True] * 40
        assert len(statements) == 1
    finally:
        event.remove(Engine, "before_cursor_execute", count)


async def test_last_use_is_written_at_most_once_a_minute(
    keys: SqlApiKeyStore, clock: ManualClock
) -> None:
    issued = await keys.create("rasa", DEFAULT)
    start = clock.now
    await keys.authenticate(issued.key)
    clock.advance(seconds=30)
    await keys.authenticate(issued.key)
    [key] = await keys.keys()
    assert key.last_used_at == start
    clock.advance(seconds=31)
    await keys.authenticate(issued.key)
    [key] = await keys.keys()
    assert key.last_used_at == clock.now


async def test_what_is_not_acceptable_is_refused_clearly(keys: SqlApiKeyStore) -> None:
    with pytest.raises(BadRequestError, match="name 'two words' is not allowed"):
        await keys.create("two words", DEFAULT)
    with pytest.raises(BadRequestError, match="at least one channel"):
        await keys.create("none", [])
    with pytest.raises(BadRequestError, match="'tele gram' is not a channel name"):
        await keys.create("odd", ["rest", "tele gram"])
    with pytest.raises(BadRequestError, match="'sb_' followed by 43 characters"):
        await keys.create("weak", DEFAULT, key="sb_password")
    assert check_channels(["rest", "rasa", "rest"]) == ("rest", "rasa")
    assert await keys.keys() == []


async def test_an_operators_key_is_stored_once(keys: SqlApiKeyStore) -> None:
    key = new_key()
    issued = await keys.create("compose", DEFAULT, key=key)
    assert issued.key == key and (await keys.authenticate(key)).name == "compose"
    with pytest.raises(ConflictError):
        await keys.create("again", DEFAULT, key=key)


async def test_the_channel_of_a_message(keys: SqlApiKeyStore) -> None:
    store = keys.store
    conversation = await store.conversation("telegram", "555001")
    message, _ = await store.add_customer_message(conversation.id, "hello")
    reply = await store.add_message(conversation.id, Role.BOT, "hi!", reply_to=message.id)
    assert await keys.message_channel(message.id) == "telegram"
    assert await keys.message_channel(reply.id) == "telegram"
    assert await keys.message_channel(reply.id + 1000) is None


def migrate_down_to_0002(connection: Connection) -> tuple[list[object], str, list[str]]:
    """The differences between the models and the migrated schema, its revision, and the
    tables left after downgrading to 0002."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    differences = list(compare_metadata(context, Base.metadata))
    revision = str(context.get_current_revision())
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    command.downgrade(config, "0002")
    return differences, revision, inspect(connection).get_table_names()


async def test_the_migration_makes_exactly_the_table_of_the_models(
    keys: SqlApiKeyStore,
) -> None:
    async with keys.store.writing("downgrade") as session:
        connection = await session.connection()
        differences, revision, tables = await connection.run_sync(migrate_down_to_0002)
    assert differences == []
    assert revision >= "0003"
    assert "api_keys" not in tables and "agents" in tables

    await keys.store.stop()
    await keys.store.start()  # and up again
    assert (await keys.create("rasa", DEFAULT)).record.id
