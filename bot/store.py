"""`SqlConversationStore`: the `ConversationStore` port on SQLite or PostgreSQL.

SQLite (through aiosqlite) is the embedded default; PostgreSQL (through asyncpg) is for
several replicas sharing one database. Both run the same SQLAlchemy code and the same Alembic
migrations, which `start()` applies, so a fresh database is ready as soon as the bot starts.

Every race the port allows (two replicas creating the same conversation, a retried delivery
arriving twice at once, two agents claiming the same escalation) is settled by the database:
a unique constraint or a row lock, never by process memory.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from bot.errors import (
    BadRequestError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    StoreUnavailableError,
)
from bot.events import (
    Conversation,
    ConversationStatus,
    Escalation,
    EscalationRecord,
    Feedback,
    Received,
    Role,
    StoredMessage,
    Turn,
    Understanding,
)
from bot.schema import (
    ConversationRow,
    EscalationRow,
    FeedbackRow,
    MessageRow,
    utcnow,
)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
RATINGS = ("up", "down")
UNRESOLVED = ("open", "claimed")

# Any constant works, as long as every replica uses the same one.
PG_MIGRATION_LOCK = 7_305_162_401

# Execution option marking transactions that only read. On SQLite every other transaction
# starts with BEGIN IMMEDIATE (see `create_store_engine`).
READ_ONLY_OPTION = "supportbot_read_only"
# Conversation ids remembered per process (`conversation_id`): about 10 MB at most.
KNOWN_CONVERSATIONS = 50_000

# The async driver each accepted URL scheme is mapped to.
DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}

# Failures that mean "the database did not answer", as opposed to "it refused the request".
# A pool timeout (every connection busy for `timeout` seconds: an overloaded replica) is one
# too: the client should come back later (503), not be told the message failed (500).
CONNECTION_ERRORS = (OperationalError, InterfaceError, OSError, PoolTimeoutError)

# PostgreSQL SQLSTATE classes that mean no session could be had: connection exception (08),
# bad user or password (28), no such database (3D), too many connections (53), server
# shutting down or starting up (57P).
UNAVAILABLE_SQLSTATES = ("08", "28", "3D", "53", "57P")

T = TypeVar("T")

URL_EXAMPLES = "sqlite+aiosqlite:///supportbot.db or postgresql+asyncpg://user@host:5432/db"

# Alembic installs `alembic.context` and `alembic.op` as process-wide proxies while it runs,
# so two stores migrating at once on one event loop would use each other's context. One lock
# per event loop keeps them apart (a lock is bound to the loop it is used on).
_migration_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def normalize_url(url: str | URL) -> URL:
    """Parse a store URL and map it to the async driver of its database.

    Args:
        url: `sqlite:///path.db`, `postgresql://user@host/db`, or the same with the async
            driver (`sqlite+aiosqlite`, `postgresql+asyncpg`) already named.

    Raises:
        ConfigurationError: the URL is malformed, names another database or a synchronous
            driver, or asks for an in-memory SQLite database.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(
            f"store URL {str(url)!r} is not a database URL ({exc}); expected e.g. {URL_EXAMPLES}"
        ) from exc
    driver = DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigurationError(
            f"store URL uses {parsed.drivername!r}, which supportbot does not support; "
            f"use SQLite (aiosqlite) or PostgreSQL (asyncpg), e.g. {URL_EXAMPLES}"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("sqlite"):
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            # Each pooled connection would see its own empty database, so the schema that
            # start() creates would vanish; a file in a temporary directory works for tests.
            raise ConfigurationError(
                f"store URL {parsed.render_as_string()!r} is an in-memory SQLite database, "
                "which the store cannot share between its connections; give a file path, "
                "e.g. sqlite+aiosqlite:///supportbot.db (in tests: a file under tmp_path)"
            )
    return parsed


def create_store_engine(
    url: str | URL, *, echo: bool = False, timeout: float = 10.0, read_only: bool = False
) -> AsyncEngine:
    """An async engine for the store's database, with the store's connection settings.

    On SQLite every connection gets WAL (readers never block the writer), a busy timeout and
    foreign keys, and every transaction not marked read-only takes the write lock up front.

    Args:
        url: see `normalize_url`.
        echo: log every SQL statement.
        timeout: seconds to wait for a connection (PostgreSQL) or a lock (SQLite).
        read_only: SQLite: an engine for read transactions only, with connections of its own.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            parsed,
            echo=echo,
            # A replica outlives database restarts: test pooled connections before use.
            pool_pre_ping=True,
            pool_timeout=timeout,
            connect_args={
                "timeout": timeout,
                "server_settings": {"application_name": "supportbot"},
            },
        )

    # One connection: SQLite has one writer at a time anyway, and a writer waiting in SQLite's
    # busy handler sleeps in steps of up to 100 ms, while a coroutine waiting for the pooled
    # connection resumes the moment it is free (measured: benchmarks/runtime_benchmark.py).
    # Readers get connections of their own (`read_only`): in WAL mode they never wait for
    # the writer, so a lookup does not queue behind the writes.
    # No rollback when a connection goes back to the pool: every session ends its
    # transaction itself, and on the one writer connection that extra round trip to the
    # driver's thread was time the next writer waited for.
    engine = create_async_engine(
        parsed,
        echo=echo,
        pool_size=2 if read_only else 1,
        max_overflow=0,
        pool_timeout=timeout,
        pool_reset_on_return=None,
    )
    configure_sqlite(engine.sync_engine, timeout, read_only)
    return engine


def create_sqlite_thread_engine(
    url: str | URL, *, echo: bool = False, timeout: float = 10.0
) -> Engine:
    """A synchronous engine (the sqlite3 driver) on the store's SQLite file, for transactions
    that run whole in the store's database thread (`SqlConversationStore._transaction`)."""
    parsed = normalize_url(url).set(drivername="sqlite")
    engine = create_engine(
        parsed,
        echo=echo,
        pool_size=1,
        max_overflow=0,
        pool_timeout=timeout,
        pool_reset_on_return=None,
        # Used by one thread at a time (the store's database thread); closed from another.
        connect_args={"check_same_thread": False},
    )
    configure_sqlite(engine, timeout, read_only=False)
    return engine


def configure_sqlite(engine: Engine, timeout: float, read_only: bool) -> None:
    """WAL, a busy timeout and foreign keys on every connection; writers lock at BEGIN."""
    busy_ms = max(1, int(timeout * 1000))

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        # Hand BEGIN over to SQLAlchemy (below): the driver's own legacy transaction handling
        # does not begin before SELECT or DDL, which breaks transactional migrations.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # The busy timeout first, so that switching a fresh file to WAL waits for a
            # concurrent starter instead of failing.
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL still survives a crash of the process (a commit is in the
            # WAL file before it returns); only a power cut can lose the last commits. FULL
            # would fsync every commit, and the write lock is held meanwhile.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_sqlite(connection: Connection) -> None:
        # A deferred transaction that reads and then writes fails at once with "database is
        # locked" if another connection committed in between (the busy timeout does not
        # apply); taking the write lock at BEGIN makes writers queue instead.
        if read_only or connection.get_execution_options().get(READ_ONLY_OPTION, False):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def lock_for_migration(connection: Connection) -> None:
    """Serialise migrations of one database across processes (PostgreSQL only).

    SQLite needs nothing: the migration transaction holds the database's write lock.
    The PostgreSQL lock is released when the surrounding transaction ends.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})


def upgrade_schema(connection: Connection, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` on an open connection, in its transaction.

    Raises:
        ConfigurationError: the database carries a revision this code does not know (it was
            migrated by a newer supportbot).
    """
    lock_for_migration(connection)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, revision)
    except CommandError as exc:
        raise ConfigurationError(
            f"cannot migrate the store's schema to {revision!r}: {exc}; if the database was "
            "upgraded by a newer supportbot, run that version (or downgrade the database "
            "with it first)"
        ) from exc


def _migration_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _migration_locks.get(loop)
    if lock is None:
        lock = _migration_locks[loop] = asyncio.Lock()
    return lock


class SqlConversationStore:
    """The `ConversationStore` port on SQLite or PostgreSQL (SQLAlchemy 2, asyncio).

    Args:
        url: `sqlite+aiosqlite:///path/to/file.db` (the default deployment) or
            `postgresql+asyncpg://user@host:5432/db`; `sqlite:///...` and `postgresql://...`
            are mapped to those drivers.
        echo: log every SQL statement.
        timeout: seconds to wait for a connection (PostgreSQL), for SQLite's write lock, and
            for `ping` to get an answer.

    Raises:
        ConfigurationError: the URL cannot work (see `normalize_url`).
    """

    def __init__(self, url: str, echo: bool = False, *, timeout: float = 10.0) -> None:
        if not timeout > 0:
            raise ConfigurationError(
                f"store timeout must be a positive number of seconds; got {timeout!r}"
            )
        self._url = normalize_url(url)
        self._echo = echo
        self._timeout = timeout
        self._engine: AsyncEngine | None = None
        self._reader: AsyncEngine | None = None  # SQLite: separate read connections
        # SQLite: the hot transactions run whole in one thread (see `_transaction`).
        self._thread_engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        # (channel, sender) -> (conversation id, sender name), least recently used first.
        self._ids: OrderedDict[tuple[str, str], tuple[str, str | None]] = OrderedDict()
        self._writes: async_sessionmaker[AsyncSession] | None = None
        self._reads: async_sessionmaker[AsyncSession] | None = None
        self._started = False

    @property
    def url(self) -> str:
        """The database URL, with any password hidden (for logs and error messages)."""
        return self._url.render_as_string(hide_password=True)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and migrate the schema to the newest revision (creating it if needed).

        Safe to call on an up-to-date database and from several processes at once.

        Raises:
            StoreUnavailableError: the database cannot be reached.
            ConfigurationError: the database was migrated by a newer supportbot.
        """
        engine = self._engine_or_create()
        async with self._unavailable_as_error("migrate the schema"):
            if self._url.get_backend_name() == "sqlite" and self._url.database:
                Path(self._url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            async with _migration_lock(), engine.begin() as connection:
                await connection.run_sync(upgrade_schema)
        self._started = True

    async def stop(self) -> None:
        """Close all connections. The store can be started again afterwards."""
        self._started = False
        engine, self._engine = self._engine, None
        reader, self._reader = self._reader, None
        thread, self._thread = self._thread, None
        thread_engine, self._thread_engine = self._thread_engine, None
        self._writes = self._reads = None
        for closing in (engine, reader):
            if closing is not None:
                await closing.dispose()
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.shutdown)
        if thread_engine is not None:
            thread_engine.dispose()

    async def ping(self) -> None:
        """Check that the database answers a trivial query within the timeout.

        Works before `start()` too: it opens the connection it needs.

        Raises:
            StoreUnavailableError: no answer, or an error, within `timeout` seconds.
        """
        reader = self._engine_or_create().execution_options(**{READ_ONLY_OPTION: True})
        async with (
            self._unavailable_as_error("ping the database"),
            asyncio.timeout(self._timeout),
            reader.connect() as connection,
        ):
            await connection.execute(text("SELECT 1"))

    # -- conversations -----------------------------------------------------------------------

    async def find_conversation(self, channel: str, sender: str) -> Conversation | None:
        """The conversation of (channel, sender) if the customer ever wrote, else None.

        Read-only: opening the widget or a transcript must not create conversations (a page
        view is not a conversation, and a burst of page views must not queue for writes).
        """
        where = (ConversationRow.channel == channel, ConversationRow.sender == sender)
        async with self._read("look up a conversation") as session:
            row = await session.scalar(select(ConversationRow).where(*where))
        return None if row is None else _conversation(row)

    async def conversation_id(
        self, channel: str, sender: str, sender_name: str | None = None
    ) -> str:
        """The id of the conversation of (channel, sender), created on first contact.

        What handling a message needs before it takes the conversation's turn lock. The ids
        of recent senders are remembered in this process (a conversation's id never changes
        and conversations are never deleted), which saves a read transaction per message;
        a new `sender_name` still goes to the database.

        Raises:
            BadRequestError: `channel` or `sender` is empty.
        """
        key = (channel, sender)
        known = self._ids.get(key)
        if known is not None and (sender_name is None or sender_name == known[1]):
            self._ids.move_to_end(key)
            return known[0]
        conversation = await self.conversation(channel, sender, sender_name)
        self._ids[key] = (conversation.id, conversation.sender_name)
        if len(self._ids) > KNOWN_CONVERSATIONS:
            self._ids.popitem(last=False)
        return conversation.id

    async def conversation(
        self, channel: str, sender: str, sender_name: str | None = None
    ) -> Conversation:
        """The conversation of (channel, sender), created on first contact.

        A new `sender_name` replaces the stored one (people rename themselves).

        Raises:
            BadRequestError: `channel` or `sender` is empty.
        """
        if not channel or not sender:
            raise BadRequestError(
                f"a conversation needs a channel and a sender id; got channel={channel!r}, "
                f"sender={sender!r}"
            )
        where = (ConversationRow.channel == channel, ConversationRow.sender == sender)
        async with self._read("look up a conversation") as session:
            row = await session.scalar(select(ConversationRow).where(*where))
        if row is not None:
            if sender_name is not None and sender_name != row.sender_name:
                return await self._rename(row.id, sender_name)
            return _conversation(row)

        now = utcnow()
        row = ConversationRow(
            id=uuid4().hex,
            channel=channel,
            sender=sender,
            sender_name=sender_name,
            status=ConversationStatus.BOT.value,
            failed_turns=0,
            assignee=None,
            created_at=now,
            updated_at=now,
        )
        try:
            await self._transaction("create a conversation", lambda session: session.add(row))
        except IntegrityError:
            # Another coroutine or replica created it between our read and our insert.
            async with self._read("look up a conversation") as session:
                existing = await session.scalar(select(ConversationRow).where(*where))
            if existing is None:
                raise
            return _conversation(existing)
        return _conversation(row)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        """A conversation by id.

        Raises:
            NotFoundError: no conversation has this id.
        """
        async with self._read("read a conversation") as session:
            row = await session.get(ConversationRow, conversation_id)
        if row is None:
            raise _no_conversation(conversation_id)
        return _conversation(row)

    async def set_failed_turns(self, conversation_id: str, failed_turns: int) -> None:
        """Record how many bot turns in a row failed (fallback ladder).

        Raises:
            BadRequestError: `failed_turns` is negative.
            NotFoundError: no conversation has this id.
        """
        if failed_turns < 0:
            raise BadRequestError(
                f"failed_turns counts turns and cannot be negative; got {failed_turns}"
            )
        async with self._write("update a conversation") as session:
            row = await self._locked_conversation(session, conversation_id)
            row.failed_turns = failed_turns
            row.updated_at = utcnow()

    # -- messages ----------------------------------------------------------------------------

    async def add_customer_message(
        self, conversation_id: str, text: str, client_id: str | None = None
    ) -> tuple[StoredMessage, bool]:
        """Persist a customer message.

        Returns:
            (the message, True), or (the message stored earlier, False) when `client_id` was
            already stored for this conversation: a retried delivery.

        Raises:
            NotFoundError: no conversation has this id.
        """
        received = await self.receive(conversation_id, text, client_id)
        return received.message, received.new

    async def receive(
        self, conversation_id: str, text: str, client_id: str | None = None, recent: int = 0
    ) -> Received:
        """Persist a customer message; in the same transaction read the conversation's state
        and its last `recent` messages, so handling a message costs one round of locking.

        Raises:
            NotFoundError: no conversation has this id.
        """
        now = utcnow()

        def store_message(session: Session) -> Received:
            # Core statements, not the ORM (this runs for every message, see `_transaction`).
            # Touching the conversation first locks its row (PostgreSQL) and reads its state
            # in the same statement; a retried delivery touches it too, which is harmless.
            state = session.execute(
                update(ConversationRow)
                .where(ConversationRow.id == conversation_id)
                .values(updated_at=now)
                .returning(*ConversationRow.__table__.columns)
            ).first()
            if state is None:
                raise _no_conversation(conversation_id)
            earlier = None
            if client_id is not None:
                earlier = session.execute(
                    select(*MessageRow.__table__.columns).where(
                        MessageRow.conversation_id == conversation_id,
                        MessageRow.client_id == client_id,
                    )
                ).first()
            if earlier is not None:
                message = _message(earlier)
            else:
                inserted = session.execute(
                    insert(MessageRow)
                    .values(
                        conversation_id=conversation_id,
                        role=Role.CUSTOMER.value,
                        text=text,
                        client_id=client_id,
                        created_at=now,
                    )
                    .returning(MessageRow.id)
                )
                message = StoredMessage(
                    id=int(inserted.scalar_one()),
                    conversation_id=conversation_id,
                    role=Role.CUSTOMER,
                    text=text,
                    created_at=now,
                    client_id=client_id,
                )
            last: list[StoredMessage] = []
            if recent > 0:
                query = (
                    select(*MessageRow.__table__.columns)
                    .where(MessageRow.conversation_id == conversation_id)
                    .order_by(MessageRow.id.desc())
                    .limit(recent)
                )
                last = [_message(row) for row in reversed(session.execute(query).all())]
            return Received(_conversation(state), message, earlier is None, tuple(last))

        try:
            return await self._transaction("store a customer message", store_message)
        except IntegrityError:
            # The same delivery, stored by another replica after our check (PostgreSQL only:
            # on SQLite the write lock already serialised us).
            if client_id is None:
                raise
            async with self._read("look up a message") as session:
                existing = await session.scalar(_by_client_id(conversation_id, client_id))
                state = await session.get(ConversationRow, conversation_id)
            if existing is None or state is None:
                raise
            return Received(_conversation(state), _message(existing), False)

    async def annotate(
        self,
        message_id: int,
        understanding: Understanding,
        route: str,
        latency_ms: float,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Attach model output, the route taken and the latency to a customer message.

        Args:
            details: replaces the stored details; None keeps them.

        Raises:
            NotFoundError: no message has this id.
        """
        async with self._write("annotate a message") as session:
            row = await session.get(MessageRow, message_id, with_for_update=True)
            if row is None:
                raise _no_message(message_id)
            row.intent = understanding.intent
            # float(): model output is often a numpy scalar, which the drivers cannot bind.
            row.intent_confidence = float(understanding.intent_confidence)
            row.sentiment = understanding.sentiment
            row.negativity = float(understanding.negativity)
            row.model_versions = dict(understanding.model_versions)
            row.route = str(route)
            row.latency_ms = float(latency_ms)
            if details is not None:
                row.details = dict(details)

    async def record_turn(self, conversation_id: str, turn: Turn) -> StoredMessage | None:
        """Record what the bot did with a customer message, in one transaction.

        Annotates the customer message, sets the failed-turn count, opens the escalation
        (unless one is already unresolved) and stores the bot's reply. One transaction
        instead of four keeps the write lock short, which is what bounds throughput on SQLite.

        Returns:
            The stored reply, or None when the turn has no reply (the bot stayed silent).

        Raises:
            NotFoundError: the conversation or the customer message does not exist.
            BadRequestError: the message belongs to another conversation, or the failed-turn
                count or the escalation priority is invalid.
        """
        if turn.failed_turns is not None and turn.failed_turns < 0:
            raise BadRequestError(
                f"failed_turns counts turns and cannot be negative; got {turn.failed_turns}"
            )
        priority = float(turn.escalation.priority) if turn.escalation else 0.0
        if not math.isfinite(priority):
            raise BadRequestError(f"escalation priority must be a finite number; got {priority}")
        try:
            return await self._record_turn(conversation_id, turn, priority, turn.escalation)
        except IntegrityError:
            if turn.escalation is None:
                raise
            # Another replica opened an escalation first (PostgreSQL's partial unique index
            # refused ours): keep theirs and record the rest of the turn.
            return await self._record_turn(conversation_id, turn, priority, None)

    async def _record_turn(
        self,
        conversation_id: str,
        turn: Turn,
        priority: float,
        escalation: Escalation | None,
    ) -> StoredMessage | None:
        now = utcnow()
        u = turn.understanding
        # Core statements, not the ORM: this runs for every message while the (SQLite)
        # write lock is held, and three statements instead of five keep it short.
        changes: dict[str, Any] = {"updated_at": now}
        if turn.failed_turns is not None:
            changes["failed_turns"] = turn.failed_turns

        def record(session: Session) -> int | None:
            # Locks the conversation row first (PostgreSQL), as every state change does.
            touched = session.execute(
                update(ConversationRow)
                .where(ConversationRow.id == conversation_id)
                .values(**changes)
                .execution_options(synchronize_session=False)
            )
            if _rowcount(touched) == 0:
                raise _no_conversation(conversation_id)
            annotated = session.execute(
                update(MessageRow)
                .where(
                    MessageRow.id == turn.message_id,
                    MessageRow.conversation_id == conversation_id,
                )
                .values(
                    intent=u.intent,
                    # float(): model output is often a numpy scalar, which drivers cannot bind.
                    intent_confidence=float(u.intent_confidence),
                    sentiment=u.sentiment,
                    negativity=float(u.negativity),
                    model_versions=dict(u.model_versions),
                    route=str(turn.route),
                    latency_ms=float(turn.latency_ms),
                    details=dict(turn.details),
                )
                .execution_options(synchronize_session=False)
            )
            if _rowcount(annotated) == 0:
                owner = session.scalar(
                    select(MessageRow.conversation_id).where(MessageRow.id == turn.message_id)
                )
                if owner is None:
                    raise _no_message(turn.message_id)
                raise BadRequestError(
                    f"message {turn.message_id} belongs to conversation {owner}, not "
                    f"{conversation_id}"
                )
            if escalation is not None and session.scalar(_unresolved(conversation_id)) is None:
                conversation = _lock_conversation(session, conversation_id)
                _open_escalation(session, conversation, escalation, priority, now)
            if turn.reply_text is None:
                return None
            reply = {
                "conversation_id": conversation_id,
                "role": Role.BOT.value,
                "text": turn.reply_text,
                "reply_to": turn.message_id,
                "route": str(turn.route),
                "details": dict(turn.reply_details) or None,
                "created_at": now,
            }
            inserted = session.execute(insert(MessageRow).values(**reply).returning(MessageRow.id))
            return int(inserted.scalar_one())

        reply_id = await self._transaction("record a turn", record)
        if reply_id is None or turn.reply_text is None:
            return None
        return StoredMessage(
            id=reply_id,
            conversation_id=conversation_id,
            role=Role.BOT,
            text=turn.reply_text,
            created_at=now,
            route=str(turn.route),
            details=dict(turn.reply_details),
        )

    async def add_message(
        self,
        conversation_id: str,
        role: Role,
        text: str,
        reply_to: int | None = None,
        route: str | None = None,
        details: dict[str, Any] | None = None,
        claimed_by: str | None = None,
    ) -> StoredMessage:
        """Persist a bot, agent or system message (a reply to `reply_to`, if given).

        Args:
            claimed_by: store the message only if this agent holds the conversation's claim,
                checked under the conversation's row lock, so a release or another agent's
                claim landing at the same moment cannot let the reply through.

        Raises:
            NotFoundError: the conversation, or the message `reply_to`, does not exist.
            BadRequestError: `role` is not a `Role`, or `reply_to` belongs to another
                conversation.
            ConflictError: `claimed_by` is given and that agent does not hold the claim.
        """
        try:
            role_value = Role(role).value
        except ValueError as exc:
            raise BadRequestError(
                f"message role must be one of {[r.value for r in Role]}; got {role!r}"
            ) from exc
        now = utcnow()
        async with self._write("store a message") as session:
            conversation = await self._locked_conversation(session, conversation_id)
            if claimed_by is not None and (
                conversation.status != ConversationStatus.CLAIMED.value
                or conversation.assignee != claimed_by
            ):
                holder = conversation.assignee
                raise ConflictError(
                    f"claimed by {holder}: conversation {conversation_id} is theirs"
                    if holder and holder != claimed_by
                    else f"claim it first: conversation {conversation_id} is not claimed by "
                    f"{claimed_by}"
                )
            if reply_to is not None:
                parent = await session.scalar(
                    select(MessageRow.conversation_id).where(MessageRow.id == reply_to)
                )
                if parent is None:
                    raise _no_message(reply_to)
                if parent != conversation_id:
                    raise BadRequestError(
                        f"message {reply_to} belongs to conversation {parent}, not "
                        f"{conversation_id}; a reply must stay in the conversation it answers"
                    )
            row = MessageRow(
                conversation_id=conversation_id,
                role=role_value,
                text=text,
                reply_to=reply_to,
                route=None if route is None else str(route),
                details=None if details is None else dict(details),
                created_at=now,
            )
            session.add(row)
            conversation.updated_at = now
            await session.flush()
        return _message(row)

    async def replies_to(self, message_id: int) -> list[StoredMessage]:
        """Messages stored as replies to `message_id`, oldest first (empty if none or unknown)."""
        query = select(MessageRow).where(MessageRow.reply_to == message_id).order_by(MessageRow.id)
        async with self._read("read replies") as session:
            rows = (await session.scalars(query)).all()
        return [_message(row) for row in rows]

    async def transcript(
        self, conversation_id: str, limit: int | None = None
    ) -> list[StoredMessage]:
        """A conversation's messages, oldest first (the last `limit` when given).

        Raises:
            BadRequestError: `limit` is negative.
            NotFoundError: no conversation has this id.
        """
        if limit is not None and limit < 0:
            raise BadRequestError(f"transcript limit must be 0 or more messages; got {limit}")
        # Ids grow in commit order within a conversation (inserts hold its row lock), so they
        # order the transcript even when two messages share a timestamp.
        query = (
            select(MessageRow)
            .where(MessageRow.conversation_id == conversation_id)
            .order_by(MessageRow.id.desc())
            .limit(limit)
        )
        async with self._read("read a transcript") as session:
            if await session.get(ConversationRow, conversation_id) is None:
                raise _no_conversation(conversation_id)
            rows = (await session.scalars(query)).all()
        return [_message(row) for row in reversed(rows)]

    # -- escalations -------------------------------------------------------------------------

    async def escalate(self, conversation_id: str, escalation: Escalation) -> EscalationRecord:
        """Open an escalation and set the conversation to `waiting`, in one transaction.

        Returns:
            The new escalation, or the unresolved one unchanged if there already is one.

        Raises:
            NotFoundError: no conversation has this id.
            BadRequestError: the priority is not a finite number.
        """
        priority = float(escalation.priority)
        if not math.isfinite(priority):
            raise BadRequestError(f"escalation priority must be a finite number; got {priority}")
        now = utcnow()
        try:
            async with self._write("open an escalation") as session:
                conversation = await self._locked_conversation(session, conversation_id)
                current = await session.scalar(_unresolved(conversation_id))
                if current is not None:
                    return _escalation(current)
                row = _open_escalation(session, conversation, escalation, priority, now)
                await session.flush()
        except IntegrityError:
            # Another replica opened one first (the partial unique index refused ours).
            async with self._read("read escalations") as session:
                current = await session.scalar(_unresolved(conversation_id))
            if current is None:
                raise
            return _escalation(current)
        return _escalation(row)

    async def claim(self, conversation_id: str, agent: str) -> EscalationRecord:
        """An agent takes the unresolved escalation; claiming it again is a no-op.

        Raises:
            BadRequestError: `agent` is empty.
            NotFoundError: the conversation does not exist or has no unresolved escalation.
            ConflictError: another agent has already claimed it.
        """
        if not agent:
            raise BadRequestError("claiming an escalation needs the agent's name; got an empty one")
        now = utcnow()
        async with self._write("claim an escalation") as session:
            conversation = await self._locked_conversation(session, conversation_id)
            row = await session.scalar(_unresolved(conversation_id))
            if row is None:
                raise NotFoundError(
                    f"conversation {conversation_id} has no open escalation to claim; it was "
                    "resolved already or never escalated (see open_escalations())"
                )
            if row.status == "claimed":
                if row.assignee != agent:
                    raise ConflictError(
                        f"conversation {conversation_id} is already claimed by {row.assignee!r}; "
                        f"{agent!r} cannot claim it until it is resolved"
                    )
                return _escalation(row)
            row.status = "claimed"
            row.assignee = agent
            row.claimed_at = now
            conversation.status = ConversationStatus.CLAIMED.value
            conversation.assignee = agent
            conversation.updated_at = now
        return _escalation(row)

    async def resolve(self, conversation_id: str, agent: str) -> None:
        """Close the unresolved escalation and give the conversation back to the bot.

        The conversation returns to `bot` with no assignee and no failed turns. Any agent may
        resolve (e.g. a supervisor closing a colleague's case); `agent` is recorded.

        Raises:
            NotFoundError: the conversation does not exist or has no unresolved escalation.
        """
        now = utcnow()
        async with self._write("resolve an escalation") as session:
            conversation = await self._locked_conversation(session, conversation_id)
            row = await session.scalar(_unresolved(conversation_id))
            if row is None:
                raise NotFoundError(
                    f"conversation {conversation_id} has no open escalation to resolve; it was "
                    "resolved already or never escalated"
                )
            row.status = "resolved"
            row.resolved_at = now
            row.resolved_by = agent
            row.outcome = "resolved"
            conversation.status = ConversationStatus.BOT.value
            conversation.assignee = None
            conversation.failed_turns = 0
            conversation.updated_at = now

    async def open_escalations(self) -> list[EscalationRecord]:
        """Escalations not yet resolved (open or claimed), highest priority first, then oldest."""
        query = (
            select(EscalationRow)
            .where(EscalationRow.status.in_(UNRESOLVED))
            .order_by(EscalationRow.priority.desc(), EscalationRow.created_at, EscalationRow.id)
        )
        async with self._read("read escalations") as session:
            rows = (await session.scalars(query)).all()
        return [_escalation(row) for row in rows]

    # -- feedback ----------------------------------------------------------------------------

    async def record_feedback(self, feedback: Feedback) -> int:
        """Store feedback on a message.

        Returns:
            The id of the stored feedback.

        Raises:
            BadRequestError: the rating is not "up", "down" or None, or the feedback carries
                neither a rating, a comment nor a correction.
            NotFoundError: the message does not exist.
        """
        if feedback.rating is not None and feedback.rating not in RATINGS:
            raise BadRequestError(
                f'feedback rating must be "up", "down" or None; got {feedback.rating!r}'
            )
        if all(
            value is None
            for value in (
                feedback.rating,
                feedback.comment,
                feedback.corrected_intent,
                feedback.corrected_sentiment,
            )
        ):
            raise BadRequestError(
                f"feedback on message {feedback.message_id} carries nothing; give a rating, "
                "a comment or a corrected intent/sentiment"
            )
        async with self._write("store feedback") as session:
            found = await session.scalar(
                select(MessageRow.id).where(MessageRow.id == feedback.message_id)
            )
            if found is None:
                raise _no_message(feedback.message_id)
            row = FeedbackRow(
                message_id=feedback.message_id,
                rating=feedback.rating,
                comment=feedback.comment,
                corrected_intent=feedback.corrected_intent,
                corrected_sentiment=feedback.corrected_sentiment,
                author=feedback.author,
                created_at=utcnow(),
            )
            session.add(row)
            await session.flush()
            return row.id

    async def feedback(self, message_id: int) -> list[Feedback]:
        """Feedback stored for a message, oldest first (empty if none or unknown)."""
        query = (
            select(FeedbackRow)
            .where(FeedbackRow.message_id == message_id)
            .order_by(FeedbackRow.created_at, FeedbackRow.id)
        )
        async with self._read("read feedback") as session:
            rows = (await session.scalars(query)).all()
        return [_feedback(row) for row in rows]

    # -- internals ---------------------------------------------------------------------------

    def _engine_or_create(self) -> AsyncEngine:
        if self._engine is None:
            engine = create_store_engine(self._url, echo=self._echo, timeout=self._timeout)
            reader = engine.execution_options(**{READ_ONLY_OPTION: True})
            if self._url.get_backend_name() == "sqlite":
                reader = self._reader = create_store_engine(
                    self._url, echo=self._echo, timeout=self._timeout, read_only=True
                )
                self._thread_engine = create_sqlite_thread_engine(
                    self._url, echo=self._echo, timeout=self._timeout
                )
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
            self._engine = engine
            self._writes = async_sessionmaker(engine, expire_on_commit=False)
            self._reads = async_sessionmaker(reader, expire_on_commit=False)
        return self._engine

    def writing(self, action: str) -> AbstractAsyncContextManager[AsyncSession]:
        """A session in a transaction that commits on exit, for repositories that share this
        store's database and connection pool (console accounts, labels, retraining data).

        `action` completes "could not ..." in the StoreUnavailableError raised when the
        database is unreachable.
        """
        return self._write(action)

    def reading(self, action: str) -> AbstractAsyncContextManager[AsyncSession]:
        """A read-only session (see `writing`)."""
        return self._read(action)

    async def _transaction(self, action: str, body: Callable[[Session], T]) -> T:
        """Run `body(session)` in one write transaction, committed when it returns.

        For the statements every message costs. On SQLite the whole transaction runs in the
        store's database thread on the sqlite3 driver: one hop there and back, where
        aiosqlite makes one (or more) per statement, each waiting for the busy event loop
        while the write lock is held; measured, the store alone did 108 -> 202 messages/s and
        5.2 -> 3.2 ms CPU per message. On PostgreSQL it runs in the async session
        (`run_sync`).
        """
        if self._thread_engine is not None and self._thread is not None and self._started:
            async with self._unavailable_as_error(action):
                return await asyncio.get_running_loop().run_in_executor(
                    self._thread, self._run_transaction, body
                )
        async with self._write(action) as session:
            return await session.run_sync(body)

    def _run_transaction(self, body: Callable[[Session], T]) -> T:
        assert self._thread_engine is not None
        with Session(self._thread_engine, expire_on_commit=False) as session, session.begin():
            return body(session)

    @asynccontextmanager
    async def _write(self, action: str) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that commits on exit (rolls back on error)."""
        async with self._session(self._writes, action) as session:
            yield session

    @asynccontextmanager
    async def _read(self, action: str) -> AsyncIterator[AsyncSession]:
        """A session in a read-only transaction (SQLite: no write lock taken)."""
        async with self._session(self._reads, action) as session:
            yield session

    @asynccontextmanager
    async def _session(
        self, factory: async_sessionmaker[AsyncSession] | None, action: str
    ) -> AsyncIterator[AsyncSession]:
        if not self._started or factory is None:
            raise StoreUnavailableError(
                f"cannot {action}: the store is not started; call `await store.start()` first"
            )
        async with self._unavailable_as_error(action), factory() as session, session.begin():
            yield session

    @asynccontextmanager
    async def _unavailable_as_error(self, action: str) -> AsyncIterator[None]:
        """Turn "the database did not answer" into StoreUnavailableError, keeping the cause."""
        try:
            yield
        except CONNECTION_ERRORS as exc:
            raise self._unavailable(action, exc) from exc
        except DBAPIError as exc:
            sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
            if exc.connection_invalidated or sqlstate.startswith(UNAVAILABLE_SQLSTATES):
                raise self._unavailable(action, exc) from exc
            raise

    def _unavailable(self, action: str, exc: BaseException) -> StoreUnavailableError:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        detail = str(cause).strip() or f"no answer within {self._timeout:g}s"
        if self._url.get_backend_name() == "sqlite":
            fix = "check that the file's directory exists and is writable"
        else:
            fix = (
                "check that PostgreSQL is running and reachable and that the user and "
                "database in the URL exist"
            )
        return StoreUnavailableError(
            f"cannot {action}: database {self.url} is unavailable "
            f"({type(cause).__name__}: {detail}); {fix}, then retry"
        )

    async def _locked_conversation(
        self, session: AsyncSession, conversation_id: str
    ) -> ConversationRow:
        """The conversation row, locked until the transaction ends (PostgreSQL).

        Every state change of a conversation locks its row first, so concurrent changes from
        several replicas queue up instead of interleaving. SQLite's write lock does the same.
        """
        row = await session.get(ConversationRow, conversation_id, with_for_update=True)
        if row is None:
            raise _no_conversation(conversation_id)
        return row

    async def _rename(self, conversation_id: str, sender_name: str) -> Conversation:
        async with self._write("update a conversation") as session:
            row = await self._locked_conversation(session, conversation_id)
            row.sender_name = sender_name
            row.updated_at = utcnow()
        return _conversation(row)


def _lock_conversation(session: Session, conversation_id: str) -> ConversationRow:
    """`SqlConversationStore._locked_conversation` inside a synchronous transaction."""
    row = session.get(ConversationRow, conversation_id, with_for_update=True)
    if row is None:
        raise _no_conversation(conversation_id)
    return row


def _open_escalation(
    session: Session | AsyncSession,
    conversation: ConversationRow,
    escalation: Escalation,
    priority: float,
    now: datetime,
) -> EscalationRow:
    """Add an open escalation and hand the (locked) conversation to the agents' queue."""
    row = EscalationRow(
        conversation_id=conversation.id,
        reason=escalation.reason,
        priority=priority,
        explanation=escalation.explanation,
        scores={name: float(score) for name, score in escalation.scores.items()},
        status="open",
        created_at=now,
    )
    session.add(row)
    conversation.status = ConversationStatus.WAITING.value
    conversation.assignee = None
    conversation.updated_at = now
    return row


def _by_client_id(conversation_id: str, client_id: str) -> Select[MessageRow]:
    return select(MessageRow).where(
        MessageRow.conversation_id == conversation_id, MessageRow.client_id == client_id
    )


def _unresolved(conversation_id: str) -> Select[EscalationRow]:
    return select(EscalationRow).where(
        EscalationRow.conversation_id == conversation_id, EscalationRow.status.in_(UNRESOLVED)
    )


def _no_conversation(conversation_id: str) -> NotFoundError:
    return NotFoundError(
        f"conversation {conversation_id!r} does not exist; use an id returned by "
        "conversation() or listed by open_escalations()"
    )


def _no_message(message_id: int) -> NotFoundError:
    return NotFoundError(
        f"message {message_id} does not exist; refer to an id returned when the message was "
        "stored (e.g. Reply.message_id)"
    )


def _conversation(row: ConversationRow | Row[Any]) -> Conversation:
    return Conversation(
        id=row.id,
        channel=row.channel,
        sender=row.sender,
        status=ConversationStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
        sender_name=row.sender_name,
        failed_turns=row.failed_turns,
        assignee=row.assignee,
    )


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _message(row: MessageRow | Row[Any]) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        conversation_id=row.conversation_id,
        role=Role(row.role),
        text=row.text,
        created_at=row.created_at,
        client_id=row.client_id,
        intent=row.intent,
        intent_confidence=row.intent_confidence,
        sentiment=row.sentiment,
        negativity=row.negativity,
        route=row.route,
        model_versions=dict(row.model_versions or {}),
        latency_ms=row.latency_ms,
        details=dict(row.details or {}),
    )


def _escalation(row: EscalationRow) -> EscalationRecord:
    return EscalationRecord(
        id=row.id,
        conversation_id=row.conversation_id,
        reason=row.reason,
        priority=row.priority,
        explanation=row.explanation,
        scores=dict(row.scores or {}),
        status=row.status,
        created_at=row.created_at,
        assignee=row.assignee,
        resolved_at=row.resolved_at,
        claimed_at=row.claimed_at,
        timed_out_at=row.timed_out_at,
        outcome=row.outcome,
    )


def _feedback(row: FeedbackRow) -> Feedback:
    return Feedback(
        message_id=row.message_id,
        rating=row.rating,
        comment=row.comment,
        corrected_intent=row.corrected_intent,
        corrected_sentiment=row.corrected_sentiment,
        author=row.author,
    )
