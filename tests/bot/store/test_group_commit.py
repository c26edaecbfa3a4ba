"""Group commit in SqlConversationStore, on a real SQLite file and a real PostgreSQL server.

The per-message writes (a new conversation, a customer message, the bot's turn) that arrive
while a transaction runs are committed together by the next one. These tests count the real
COMMITs and SAVEPOINTs the drivers are sent (SQLAlchemy events on every `Engine`), and check
what each caller gets back: its own result, or its own error, and never a lost write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import make_url

from bot.core.errors import NotFoundError
from bot.core.records import Conversation, Escalation, Received, Role, Route, Turn
from bot.store.conversations import SqlConversationStore
from bot.store.engine import READ_ONLY_OPTION
from tests.helpers import PG_ADMIN_DSN, understanding


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlConversationStore]:
    store = SqlConversationStore(database_url, timeout=5)
    await store.start()
    yield store
    await store.stop()


# Execution option marking the test's own lock-holding transaction (`writes_held`).
HOLDER = "group_commit_test_holder"


def is_write(connection: Connection) -> bool:
    """Whether the store's per-message writes go through this connection: on SQLite the
    store thread's engine (the sqlite3 driver), on PostgreSQL any connection not marked
    read-only (nor holding the test's lock)."""
    if connection.dialect.name == "sqlite":
        return connection.dialect.driver == "pysqlite"
    options = connection.get_execution_options()
    return not options.get(READ_ONLY_OPTION, False) and not options.get(HOLDER, False)


@dataclass
class Traffic:
    """What the store's write connections were sent while `watched` was open."""

    commits: int = 0
    savepoints: int = 0
    # Messages inserted by each connection's open transaction.
    inserts: dict[Connection, int] = field(default_factory=dict)


@contextmanager
def watched(refuse_a_group_commit: bool = False) -> Iterator[Traffic]:
    """Count COMMITs and SAVEPOINTs on write connections; optionally make the first COMMIT
    of a transaction that inserted more than one message fail, as a database can (the
    transaction is not committed), before the driver is asked to commit."""
    traffic = Traffic()
    refused: list[int] = []

    def on_begin(connection: Connection) -> None:
        traffic.inserts[connection] = 0

    def on_execute(connection: Connection, *args: Any) -> None:
        statement = str(args[1])
        if is_write(connection) and statement.lstrip().upper().startswith("INSERT INTO MESSAGES"):
            traffic.inserts[connection] = traffic.inserts.get(connection, 0) + 1

    def on_commit(connection: Connection) -> None:
        if not is_write(connection):
            return
        if refuse_a_group_commit and not refused and traffic.inserts.get(connection, 0) > 1:
            refused.append(traffic.inserts[connection])
            raise RuntimeError("COMMIT refused by the test")
        traffic.commits += 1

    def on_savepoint(connection: Connection, name: str) -> None:
        if is_write(connection):
            traffic.savepoints += 1

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("begin", on_begin),
        ("before_cursor_execute", on_execute),
        ("commit", on_commit),
        ("savepoint", on_savepoint),
    ]
    for name, listener in listeners:
        event.listen(Engine, name, listener)
    try:
        yield traffic
    finally:
        for name, listener in listeners:
            event.remove(Engine, name, listener)
    if refuse_a_group_commit:
        assert refused, "no transaction of several writes was committed"


@asynccontextmanager
async def writes_held(store: SqlConversationStore) -> AsyncIterator[None]:
    """Make the store's writes wait until exit: another transaction holds SQLite's write
    lock, or (PostgreSQL) a lock on the conversations table that every write's first
    statement (an UPDATE of its conversation) waits for. Reads go on."""
    async with store.writing("hold the writes") as session:
        connection = await session.connection(execution_options={HOLDER: True})
        if connection.dialect.name == "postgresql":
            await connection.execute(text("LOCK TABLE conversations IN EXCLUSIVE MODE"))
        else:
            await connection.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the write lock
        yield


async def queued_behind_a_pilot(
    store: SqlConversationStore, pilot: Conversation, *writes: Any
) -> tuple[Received, list[Any]]:
    """Run `writes` (coroutines) so that they all wait in the queue at once: a pilot message
    goes first and waits for a held lock, the writes queue behind it, then the lock goes."""
    async with writes_held(store):
        first = asyncio.create_task(store.receive(pilot.id, "pilot"))
        await asyncio.sleep(0.3)  # the pilot's transaction is waiting for the lock
        queued = [asyncio.create_task(write) for write in writes]
        await asyncio.sleep(0.1)  # every write is in the queue
    return await first, list(await asyncio.gather(*queued, return_exceptions=True))


def turn(message_id: int, reply: str, escalate: bool = False) -> Turn:
    return Turn(
        message_id,
        understanding(),
        Route.HANDOFF if escalate else Route.ANSWER,
        5.0,
        {"n": reply},
        reply,
        escalation=Escalation("asked_for_human", 0.5, "asked", {}) if escalate else None,
    )


async def test_concurrent_conversations_are_committed_together_and_completely(
    store: SqlConversationStore,
) -> None:
    before = store.group_commits
    with watched() as traffic:
        conversations = await asyncio.gather(
            *(store.conversation("rest", f"sender-{n}") for n in range(50))
        )

        async def talk(conversation: Conversation) -> list[int]:
            ids: list[int] = []
            for n in range(4):
                received = await store.receive(conversation.id, f"{conversation.sender} #{n}")
                # The third turn hands over (the ORM path: escalation rows), the fourth
                # asks again and must find the escalation the group already opened.
                reply = await store.record_turn(
                    conversation.id, turn(received.message.id, f"answer #{n}", escalate=n >= 2)
                )
                assert reply is not None
                ids += [received.message.id, reply.id]
            return ids

        ids = [i for talked in await asyncio.gather(*map(talk, conversations)) for i in talked]
    after = store.group_commits

    assert len(ids) == len(set(ids)) == 400
    for conversation in conversations:
        transcript = await store.transcript(conversation.id)
        assert [(m.role, m.text) for m in transcript] == [
            pair
            for n in range(4)
            for pair in (
                (Role.CUSTOMER, f"{conversation.sender} #{n}"),
                (Role.BOT, f"answer #{n}"),
            )
        ]
        for customer, bot in zip(transcript[0::2], transcript[1::2], strict=True):
            assert [reply.id for reply in await store.replies_to(customer.id)] == [bot.id]
        assert all(m.route == str(Route.ANSWER) for m in transcript[0:4:2])
    assert sorted(e.conversation_id for e in await store.open_escalations()) == sorted(
        c.id for c in conversations
    )
    writes = after.writes - before.writes
    transactions = after.transactions - before.transactions
    assert writes == 50 + 400  # the conversations, then a message and a turn each time
    assert traffic.commits == transactions < writes / 2
    assert after.largest > 1
    # Nothing failed, so no group needed savepoints.
    assert traffic.savepoints == 0


async def test_a_lone_write_is_committed_at_once_in_a_transaction_of_its_own(
    store: SqlConversationStore,
) -> None:
    conversation = await store.conversation("rest", "alone")
    before = store.group_commits
    with watched() as traffic:
        received = await asyncio.wait_for(store.receive(conversation.id, "hello"), 2)
    after = store.group_commits
    assert (traffic.commits, traffic.savepoints) == (1, 0)
    assert (after.writes - before.writes, after.transactions - before.transactions) == (1, 1)
    [stored] = await store.transcript(conversation.id)
    assert stored.id == received.message.id and stored.text == "hello"


async def test_a_failing_write_fails_its_caller_only_and_the_rest_of_its_group_commits(
    store: SqlConversationStore,
) -> None:
    pilot = await store.conversation("rest", "pilot")
    conversations = [await store.conversation("rest", f"s{n}") for n in range(20)]
    writes = [
        store.receive("no-such-conversation" if n == 10 else c.id, f"message {n}")
        for n, c in enumerate(conversations)
    ]
    before = store.group_commits

    with watched() as traffic:
        _, results = await queued_behind_a_pilot(store, pilot, *writes)

    assert isinstance(results[10], NotFoundError)
    assert "no-such-conversation" in str(results[10])
    for n, (conversation, result) in enumerate(zip(conversations, results, strict=True)):
        if n == 10:
            continue
        assert isinstance(result, Received) and result.new
        [stored] = await store.transcript(conversation.id)
        assert (stored.id, stored.text) == (result.message.id, f"message {n}")
    after = store.group_commits
    # The 19 good writes committed in one transaction: the group the failing write was in,
    # run again with a savepoint per write once it failed.
    assert after.largest >= 19
    assert after.writes - before.writes == 20  # with the pilot
    assert traffic.savepoints >= 20


async def test_a_group_whose_commit_fails_is_committed_write_by_write(
    store: SqlConversationStore,
) -> None:
    pilot = await store.conversation("rest", "pilot")
    conversations = [await store.conversation("rest", f"s{n}") for n in range(12)]
    before = store.group_commits

    with watched(refuse_a_group_commit=True) as traffic:
        writes = (store.receive(c.id, f"message {n}") for n, c in enumerate(conversations))
        _, results = await queued_behind_a_pilot(store, pilot, *writes)
        # The store still works afterwards (SQLite: its connection left the failed transaction).
        extra = await store.receive(pilot.id, "after the failure")

    assert all(isinstance(result, Received) for result in results), results
    ids = [result.message.id for result in results] + [extra.message.id]
    assert len(set(ids)) == len(ids)
    for n, conversation in enumerate(conversations):
        [stored] = await store.transcript(conversation.id)
        assert (stored.id, stored.text) == (results[n].message.id, f"message {n}")
    assert [m.text for m in await store.transcript(pilot.id)] == ["pilot", "after the failure"]
    after = store.group_commits
    # Every write of the refused group was committed alone (the pilot may have been in it).
    # 12 + the pilot + the extra message, each in a transaction of its own.
    assert after.writes - before.writes == after.transactions - before.transactions == 14
    assert traffic.commits == 14


async def test_a_group_whose_connection_is_lost_is_committed_write_by_write(pg_url: str) -> None:
    store = SqlConversationStore(pg_url, timeout=5)
    await store.start()
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        role = make_url(pg_url).username
        conversations = [await store.conversation("rest", f"s{n}") for n in range(10)]
        async with writes_held(store):
            # Queued in one turn of the event loop, the writes form one group, whose
            # connection then waits for the lock: that connection is the one cut.
            writes = [
                asyncio.create_task(store.receive(c.id, f"message {n}"))
                for n, c in enumerate(conversations)
            ]
            for _ in range(250):
                cut = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE usename = $1 AND wait_event_type = 'Lock'",
                    role,
                )
                if cut:
                    break
                await asyncio.sleep(0.02)
            assert cut == 1
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)]
        for n, conversation in enumerate(conversations):
            assert [m.text for m in await store.transcript(conversation.id)] == [f"message {n}"]
    finally:
        await admin.close()
        await store.stop()


async def until_blocked(raw: asyncpg.Connection, count: int, by_pid: int | None = None) -> None:
    """Return once `count` sessions of this role wait for a lock, or with `by_pid` for a lock
    that session holds. (Counting every waiting session of the role once let the test go on
    before the group it needed waited: the groups then ran one after the other, no deadlock.)
    A session queued behind another waiter is blocked by that waiter, not the lock holder."""
    for _ in range(250):
        blocked = await raw.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user AND "
            "cardinality(pg_blocking_pids(pid)) > 0 AND "
            "($1::int IS NULL OR $1::int = ANY(pg_blocking_pids(pid)))",
            by_pid,
        )
        if blocked >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} sessions never waited for a lock (holder: {by_pid})")


async def test_replicas_whose_groups_deadlock_commit_every_write(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Replica A's group writes to conversations X then Y, replica B's to Y then X. Two other
    # transactions hold X and Y until both groups wait, then let go: A takes X, B takes Y
    # (it asked first), and each then waits for the other. PostgreSQL aborts one group;
    # its writes must be committed alone, and no caller sees the deadlock.
    caplog.set_level(logging.INFO, logger="bot.store.conversations")
    a, b = SqlConversationStore(pg_url, timeout=10), SqlConversationStore(pg_url, timeout=10)
    await a.start()
    await b.start()
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(False)
    hold_x, hold_y = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        x, y = await a.conversation("rest", "x"), await a.conversation("rest", "y")
        lock = "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE"
        holding_x, holding_y = hold_x.transaction(), hold_y.transaction()
        await holding_x.start()
        await holding_y.start()
        await hold_x.execute(lock, x.id)
        await hold_y.execute(lock, y.id)
        group_a = [asyncio.create_task(a.receive(c.id, f"a to {c.sender}")) for c in (x, y)]
        await until_blocked(hold_x, 1, hold_x.get_server_pid())  # A's group waits for X
        group_b = [asyncio.create_task(b.receive(c.id, f"b to {c.sender}")) for c in (y, x)]
        await until_blocked(hold_y, 1, hold_y.get_server_pid())  # B's group waits for Y
        await holding_x.commit()  # A takes X, then waits for Y
        await until_blocked(hold_y, 2)  # ... behind B, who waits for hold_y
        await holding_y.commit()  # B takes Y (it asked first), then waits for X
        results = await asyncio.gather(*group_a, *group_b, return_exceptions=True)
        assert all(isinstance(result, Received) for result in results), results
        assert sorted(m.text for m in await a.transcript(x.id)) == ["a to x", "b to x"]
        assert sorted(m.text for m in await a.transcript(y.id)) == ["a to y", "b to y"]
        assert any("deadlock" in record.getMessage() for record in caplog.records)
    finally:
        await hold_x.close()
        await hold_y.close()
        await a.stop()
        await b.stop()
