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
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar, cast
from uuid import uuid4

from sqlalchemy import Engine, Select, Table, bindparam, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, aliased

from bot.core import handoff, validation
from bot.core.clock import Clock, utcnow
from bot.core.errors import ConfigurationError, StoreUnavailableError
from bot.core.records import (
    AnswerRating,
    Conversation,
    ConversationStatus,
    Escalation,
    EscalationRecord,
    Feedback,
    Outcome,
    Received,
    Role,
    Route,
    StoredMessage,
    Turn,
    Understanding,
)
from bot.store.engine import (
    CONNECTION_ERRORS,
    READ_ONLY_OPTION,
    UNAVAILABLE_SQLSTATES,
    create_sqlite_thread_engine,
    create_store_engine,
    migration_lock,
    normalize_url,
    upgrade_schema,
)
from bot.store.mapping import (
    UNRESOLVED_VALUES,
    HandoffRows,
    apply_handoff,
    load_handoff,
    lock_conversation,
    no_conversation,
    no_message,
    select_unresolved,
    to_conversation,
    to_escalation,
    to_feedback,
    to_message,
)
from bot.store.schema import ConversationRow, EscalationRow, FeedbackRow, MessageRow

log = logging.getLogger(__name__)

# Conversation ids remembered per process (`conversation_id`): about 10 MB at most.
KNOWN_CONVERSATIONS = 50_000

# Per-message writes committed together at most (group commit, see `_transaction`). What a
# group saves per write (a BEGIN and COMMIT, a session, a hop back to the event loop) shrinks
# as it grows, while a bigger group holds SQLite's write lock and PostgreSQL's row locks
# longer (other writers wait for all of it: measured, a group of 48-64 held SQLite's lock
# 52 ms, the thread sharing the GIL with a busy event loop) and has more to redo one by one
# when it fails. Measured on SQLite (benchmarks/store_benchmark.py, 100 conversations):
# at most 16: 458-473 messages/s; 64: 506-512; 128 (groups reached 100): 525-535.
GROUP_COMMIT_LIMIT = 64

# Groups in flight at once on PostgreSQL, each on a pooled connection of its own (SQLite has
# one writer anyway). The statements of a group run one after another, each a round trip
# through the event loop, so a second group keeps the server busy meanwhile. Measured
# (benchmarks/store_benchmark.py, 100 conversations, a noisy 2-core machine): 1 group
# 291-293 messages/s; 2: 311-315; 4: 304-321; 8: 301. Two it is: as fast as four, with
# groups twice as large, fewer connections, and fewer groups to deadlock (see `_commit`).
PG_CONCURRENT_GROUPS = 2

T = TypeVar("T")

# The statements every message runs (`receive`, `record_turn`), built once on the tables with
# bound parameters: built per call through the ORM entities, making the statement, its cache
# key and the ORM's execution context cost more CPU than SQLite took to run them (one
# conversation at a time: about two thirds of the store's time per message).
_CONVERSATIONS = cast(Table, ConversationRow.__table__)
_MESSAGES = cast(Table, MessageRow.__table__)
_TOUCH = (
    update(_CONVERSATIONS)
    .where(_CONVERSATIONS.c.id == bindparam("b_conversation"))
    .values(updated_at=bindparam("b_now"))
)
_TOUCH_READ = _TOUCH.returning(*_CONVERSATIONS.columns)
_TOUCH_FAILED = _TOUCH.values(failed_turns=bindparam("b_failed"))
_BY_CLIENT = select(*_MESSAGES.columns).where(
    _MESSAGES.c.conversation_id == bindparam("b_conversation"),
    _MESSAGES.c.client_id == bindparam("b_client"),
)
_RECENT = (
    select(*_MESSAGES.columns)
    .where(_MESSAGES.c.conversation_id == bindparam("b_conversation"))
    .order_by(_MESSAGES.c.id.desc())
    .limit(bindparam("b_limit"))
)
_INSERT_MESSAGE = insert(_MESSAGES).returning(_MESSAGES.c.id)
_ANNOTATE = (
    update(_MESSAGES)
    .where(
        _MESSAGES.c.id == bindparam("b_message"),
        _MESSAGES.c.conversation_id == bindparam("b_conversation"),
    )
    .values(
        {
            name: bindparam(f"b_{name}", type_=_MESSAGES.c[name].type)
            for name in (
                "intent",
                "intent_confidence",
                "sentiment",
                "negativity",
                "model_versions",
                "route",
                "latency_ms",
                "details",
            )
        }
    )
)


@dataclass(frozen=True, slots=True)
class GroupCommits:
    """How the store's per-message writes were committed since it was created: `writes`
    bodies in `transactions` transactions, at most `largest` in one (see `_transaction`)."""

    writes: int
    transactions: int
    largest: int


@dataclass(frozen=True, slots=True)
class _Write(Generic[T]):
    """A caller's write body waiting for a transaction, and the future that gets its result."""

    action: str
    body: Callable[[Session], T]
    future: asyncio.Future[T]


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What a write's body returned, or the error it raised, for its caller (`_settle`)."""

    write: _Write[Any]
    value: Any = None
    error: Exception | None = None


class SqlConversationStore:
    """The `ConversationStore` port on SQLite or PostgreSQL (SQLAlchemy 2, asyncio).

    Args:
        url: `sqlite+aiosqlite:///path/to/file.db` (the default deployment) or
            `postgresql+asyncpg://user@host:5432/db`; `sqlite:///...` and `postgresql://...`
            are mapped to those drivers.
        echo: log every SQL statement.
        timeout: seconds to wait for a connection (PostgreSQL), for SQLite's write lock, and
            for `ping` to get an answer.
        clock: the time every row is stamped with (`created_at`, `claimed_at`, ...). The
            stores that share this one's database (`SqlDeskStore`, `SqlAccountStore`) read
            its `clock` too, so tests move one `ManualClock` for all of them.

    Raises:
        ConfigurationError: the URL cannot work (see `normalize_url`).
    """

    def __init__(
        self, url: str, echo: bool = False, *, timeout: float = 10.0, clock: Clock = utcnow
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError(
                f"store timeout must be a positive number of seconds; got {timeout!r}"
            )
        self.clock = clock
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
        # Group commit (see `_transaction`): the writes waiting for the next transaction,
        # whether a drain is committing them (the store thread on SQLite, a task on
        # PostgreSQL), and what it did. The lock is shared with the store thread.
        self._queue: deque[_Write[Any]] = deque()
        self._queue_lock = threading.Lock()
        self._drains = 0
        self._drain_tasks: set[asyncio.Task[None]] = set()
        self._group_commits = GroupCommits(0, 0, 0)

    @property
    def url(self) -> str:
        """The database URL, with any password hidden (for logs and error messages)."""
        return self._url.render_as_string(hide_password=True)

    @property
    def group_commits(self) -> GroupCommits:
        """How many per-message writes were committed in how many transactions (for
        benchmarks and tests: the mean group size is what group commit saves)."""
        return self._group_commits

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
            async with migration_lock(), engine.begin() as connection:
                await connection.run_sync(upgrade_schema)
        self._started = True

    async def stop(self) -> None:
        """Close all connections. The store can be started again afterwards."""
        self._started = False
        # Writes already queued are committed first (SQLite: `thread.shutdown` waits for them).
        drains, self._drain_tasks = self._drain_tasks, set()
        if drains:
            await asyncio.wait(drains)
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
        return None if row is None else to_conversation(row)

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
        validation.check_conversation_key(channel, sender)
        where = (ConversationRow.channel == channel, ConversationRow.sender == sender)
        async with self._read("look up a conversation") as session:
            row = await session.scalar(select(ConversationRow).where(*where))
        if row is not None:
            if sender_name is not None and sender_name != row.sender_name:
                return await self._rename(row.id, sender_name)
            return to_conversation(row)

        now = self.clock()
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
            return to_conversation(existing)
        return to_conversation(row)

    async def get_conversation(self, conversation_id: str) -> Conversation:
        """A conversation by id.

        Raises:
            NotFoundError: no conversation has this id.
        """
        async with self._read("read a conversation") as session:
            row = await session.get(ConversationRow, conversation_id)
        if row is None:
            raise no_conversation(conversation_id)
        return to_conversation(row)

    async def set_failed_turns(self, conversation_id: str, failed_turns: int) -> None:
        """Record how many bot turns in a row failed (fallback ladder).

        Raises:
            BadRequestError: `failed_turns` is negative.
            NotFoundError: no conversation has this id.
        """
        validation.check_failed_turns(failed_turns)
        async with self._write("update a conversation") as session:
            row = await self._locked_conversation(session, conversation_id)
            row.failed_turns = failed_turns
            row.updated_at = self.clock()

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
        # An empty client id is no id: it must not make the next message a "duplicate".
        client_id = client_id or None
        now = self.clock()

        def store_message(session: Session) -> Received:
            # Core statements, not the ORM (this runs for every message, see `_transaction`).
            # Touching the conversation first locks its row (PostgreSQL) and reads its state
            # in the same statement; a retried delivery touches it too, which is harmless.
            connection = session.connection()
            state = connection.execute(
                _TOUCH_READ, {"b_conversation": conversation_id, "b_now": now}
            ).first()
            if state is None:
                raise no_conversation(conversation_id)
            earlier = None
            if client_id is not None:
                earlier = connection.execute(
                    _BY_CLIENT, {"b_conversation": conversation_id, "b_client": client_id}
                ).first()
            if earlier is not None:
                message = to_message(earlier)
            else:
                inserted = connection.execute(
                    _INSERT_MESSAGE,
                    {
                        "conversation_id": conversation_id,
                        "role": Role.CUSTOMER.value,
                        "text": text,
                        "client_id": client_id,
                        "created_at": now,
                    },
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
                rows = connection.execute(
                    _RECENT, {"b_conversation": conversation_id, "b_limit": recent}
                ).all()
                last = [to_message(row) for row in reversed(rows)]
            return Received(to_conversation(state), message, earlier is None, tuple(last))

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
            return Received(to_conversation(state), to_message(existing), False)

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
                raise no_message(message_id)
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
        validation.check_failed_turns(turn.failed_turns)
        priority = validation.check_priority(turn.escalation.priority) if turn.escalation else 0.0
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
        now = self.clock()
        u = turn.understanding
        # Core statements, not the ORM: this runs for every message while the (SQLite)
        # write lock is held, and three statements instead of five keep it short.
        touch, touching = _TOUCH, {"b_conversation": conversation_id, "b_now": now}
        if turn.failed_turns is not None:
            touch, touching = _TOUCH_FAILED, {**touching, "b_failed": turn.failed_turns}
        annotation = {
            "b_message": turn.message_id,
            "b_conversation": conversation_id,
            "b_intent": u.intent,
            # float(): model output is often a numpy scalar, which drivers cannot bind.
            "b_intent_confidence": float(u.intent_confidence),
            "b_sentiment": u.sentiment,
            "b_negativity": float(u.negativity),
            "b_model_versions": dict(u.model_versions),
            "b_route": str(turn.route),
            "b_latency_ms": float(turn.latency_ms),
            "b_details": dict(turn.details),
        }

        def record(session: Session) -> int | None:
            connection = session.connection()
            # Locks the conversation row first (PostgreSQL), as every state change does.
            touched = connection.execute(touch, touching)
            if _rowcount(touched) == 0:
                raise no_conversation(conversation_id)
            annotated = connection.execute(_ANNOTATE, annotation)
            if _rowcount(annotated) == 0:
                owner = session.scalar(
                    select(MessageRow.conversation_id).where(MessageRow.id == turn.message_id)
                )
                if owner is None:
                    raise no_message(turn.message_id)
                raise validation.not_in_conversation(turn.message_id, owner, conversation_id)
            if escalation is not None:
                rows = load_handoff(session, conversation_id)
                _escalate(session, rows, escalation, priority, now)
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
            inserted = connection.execute(_INSERT_MESSAGE, reply)
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
            claimed_by: store the message only if this agent holds the conversation's claim
                (`handoff.check_claimed_by`), checked under the conversation's row lock, so a
                release or another agent's claim landing at the same moment cannot let the
                reply through.

        Raises:
            NotFoundError: the conversation, or the message `reply_to`, does not exist.
            BadRequestError: `role` is not a `Role`, or `reply_to` belongs to another
                conversation.
            ConflictError: `claimed_by` is given and that agent does not hold the claim ("claim
                it first", or "claimed by" whom).
        """
        role_value = validation.check_role(role).value
        now = self.clock()
        async with self._write("store a message") as session:
            conversation, _, current = await session.run_sync(load_handoff, conversation_id)
            if claimed_by is not None:
                handoff.check_claimed_by(current, conversation_id, claimed_by)
            if reply_to is not None:
                parent = await session.scalar(
                    select(MessageRow.conversation_id).where(MessageRow.id == reply_to)
                )
                if parent is None:
                    raise no_message(reply_to)
                validation.check_reply_to(reply_to, parent, conversation_id)
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
        return to_message(row)

    async def replies_to(self, message_id: int) -> list[StoredMessage]:
        """Messages stored as replies to `message_id`, oldest first (empty if none or unknown)."""
        query = select(MessageRow).where(MessageRow.reply_to == message_id).order_by(MessageRow.id)
        async with self._read("read replies") as session:
            rows = (await session.scalars(query)).all()
        return [to_message(row) for row in rows]

    async def transcript(
        self, conversation_id: str, limit: int | None = None
    ) -> list[StoredMessage]:
        """A conversation's messages, oldest first (the last `limit` when given).

        Raises:
            BadRequestError: `limit` is negative.
            NotFoundError: no conversation has this id.
        """
        validation.check_transcript_limit(limit)
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
                raise no_conversation(conversation_id)
            rows = (await session.scalars(query)).all()
        return [to_message(row) for row in reversed(rows)]

    # -- escalations -------------------------------------------------------------------------

    async def escalate(self, conversation_id: str, escalation: Escalation) -> EscalationRecord:
        """Open an escalation and set the conversation to `waiting`, in one transaction.

        Returns:
            The new escalation, or the unresolved one unchanged if there already is one
            (`handoff.escalate`).

        Raises:
            NotFoundError: no conversation has this id.
            BadRequestError: the priority is not a finite number.
        """
        priority = validation.check_priority(escalation.priority)
        now = self.clock()
        try:
            async with self._write("open an escalation") as session:
                rows = await session.run_sync(load_handoff, conversation_id)
                row = _escalate(session, rows, escalation, priority, now)
                await session.flush()
        except IntegrityError:
            # Another replica opened one first (the partial unique index refused ours).
            async with self._read("read escalations") as session:
                current = await session.scalar(select_unresolved(conversation_id))
            if current is None:
                raise
            return to_escalation(current)
        return to_escalation(row)

    async def claim(self, conversation_id: str, agent: str) -> EscalationRecord:
        """An agent takes the unresolved escalation (`handoff.claim`); claiming it again is a
        no-op.

        Raises:
            NotFoundError: the conversation does not exist or has no unresolved escalation.
            BadRequestError: `agent` is empty.
            ConflictError: another agent has already claimed it.
        """
        now = self.clock()
        async with self._write("claim an escalation") as session:
            conversation, row, current = await session.run_sync(load_handoff, conversation_id)
            state = handoff.claim(current, conversation_id, agent)
            claimed = apply_handoff(conversation, row, state, now)
        return to_escalation(claimed)

    async def resolve(self, conversation_id: str, agent: str) -> None:
        """Close the unresolved escalation and give the conversation back to the bot.

        The conversation returns to `bot` with no assignee and no failed turns. Any agent may
        resolve (e.g. a supervisor closing a colleague's case); `agent` is recorded.

        Raises:
            NotFoundError: the conversation does not exist or has no unresolved escalation.
        """
        now = self.clock()
        async with self._write("resolve an escalation") as session:
            conversation, row, current = await session.run_sync(load_handoff, conversation_id)
            state, outcome = handoff.close(
                current, conversation_id, agent, operator=True, outcome=Outcome.RESOLVED
            )
            apply_handoff(conversation, row, state, now, by=agent, outcome=outcome)

    async def open_escalations(self) -> list[EscalationRecord]:
        """Escalations not yet resolved (open or claimed), highest priority first, then oldest."""
        query = (
            select(EscalationRow)
            .where(EscalationRow.status.in_(UNRESOLVED_VALUES))
            .order_by(EscalationRow.priority.desc(), EscalationRow.created_at, EscalationRow.id)
        )
        async with self._read("read escalations") as session:
            rows = (await session.scalars(query)).all()
        return [to_escalation(row) for row in rows]

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
        validation.check_feedback(feedback)
        async with self._write("store feedback") as session:
            found = await session.scalar(
                select(MessageRow.id).where(MessageRow.id == feedback.message_id)
            )
            if found is None:
                raise no_message(feedback.message_id)
            row = FeedbackRow(
                message_id=feedback.message_id,
                rating=feedback.rating,
                comment=feedback.comment,
                corrected_intent=feedback.corrected_intent,
                corrected_sentiment=feedback.corrected_sentiment,
                author=feedback.author,
                created_at=self.clock(),
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
        return [to_feedback(row) for row in rows]

    async def answer_ratings(self, after: int = 0) -> list[AnswerRating]:
        """Every "up"/"down" on a bot reply of route `answer` with a feedback id above
        `after`, in id order, with the reply's index source and text and the intent of the
        question it answered.

        Ratings of replies without a source (none was recorded) are left out: there is no
        indexed answer to demote.
        """
        reply = aliased(MessageRow)
        question = aliased(MessageRow)
        query = (
            select(FeedbackRow.id, FeedbackRow.rating, reply.text, reply.details, question.intent)
            .join(reply, reply.id == FeedbackRow.message_id)
            .outerjoin(question, question.id == reply.reply_to)
            .where(
                FeedbackRow.id > after,
                FeedbackRow.rating.is_not(None),
                reply.role == Role.BOT.value,
                reply.route == Route.ANSWER.value,
            )
            .order_by(FeedbackRow.id)
        )
        async with self._read("read answer ratings") as session:
            rows = (await session.execute(query)).all()
        return [
            AnswerRating(str(details["source"]), text, intent, rating, feedback_id)
            for feedback_id, rating, text, details, intent in rows
            if details and details.get("source")
        ]

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
        """Run `body(session)` in a write transaction; return once that transaction committed.

        For the statements every message costs (a new conversation, a customer message, the
        bot's turn). On SQLite they run in the store's database thread on the sqlite3 driver:
        one hop there and back, where aiosqlite makes one (or more) per statement, each
        waiting for the busy event loop while the write lock is held; measured, the store
        alone did 108 -> 202 messages/s and 5.2 -> 3.2 ms CPU per message. On PostgreSQL
        they run in an async session (`run_sync`).

        Group commit: writes that arrive while a transaction is running queue up, and the
        next transaction runs them all (at most GROUP_COMMIT_LIMIT, in arrival order), then
        commits once. Under many concurrent conversations that saves, per write, a BEGIN and
        COMMIT (SQLite: a turn of the write lock; PostgreSQL: two round trips, a pooled
        connection's ping and a WAL flush), a session, and a hop back to the event loop
        (one per group). Nothing waits for a group to fill: a write arriving at an idle
        store starts its transaction at once, alone, exactly as without grouping. Measured
        with benchmarks/store_benchmark.py (100 conversations, 2 cores shared with other
        work, before and after back to back): SQLite 388-396 -> 551-567 messages/s and
        2.48 -> 1.75 ms CPU per message (58 writes a commit); PostgreSQL 260-264 -> 335-350
        messages/s and 3.35 -> 2.38 ms CPU per message (28-30 writes a commit).

        Every caller still hears back only after its rows are committed, and one caller's
        error stays its own: a group runs first without savepoints, and if a body raises it
        is rolled back and run again with each body in a savepoint of its own (`_run_group`),
        so the failing body's caller gets its error and the others commit. When the
        transaction as a whole fails (BEGIN or COMMIT fails, the connection is lost,
        PostgreSQL picks it as a deadlock victim: see `_loses_the_transaction`), nothing is
        lost: each body of the group runs again alone, in its own transaction, so each caller
        gets its own result or error. Bodies must therefore be safe to run again after a
        rollback (they are: they keep no state between runs, and an ORM row one added in a
        rolled-back transaction is new again). A caller cancelled before its write ran skips
        it; one cancelled later does not undo it (as with a thread that already began).

        Bodies of one group share one session, so they see each other's ORM objects: a body
        must not read through the ORM a column that another changes with a Core statement
        (today Core statements change `updated_at` and `failed_turns`, which no body reads
        through the ORM).

        Raises:
            StoreUnavailableError: the database is unreachable (also before `start()`).
        """
        if not self._started or self._writes is None:
            async with self._write(action) as session:  # raises: the store is not started
                return await session.run_sync(body)
        write = _Write(action, body, asyncio.get_running_loop().create_future())
        on_thread = self._thread is not None
        with self._queue_lock:
            self._queue.append(write)
            start = self._drains < (1 if on_thread else PG_CONCURRENT_GROUPS)
            self._drains += start
        if start and self._thread is not None:
            self._thread.submit(self._drain_in_thread)
        elif start:
            task = asyncio.create_task(self._drain())
            self._drain_tasks.add(task)
            task.add_done_callback(self._drain_tasks.discard)
        async with self._unavailable_as_error(action):
            return await write.future

    def _next_group(self) -> list[_Write[Any]]:
        """The next group of queued writes, oldest first, without those whose callers were
        cancelled meanwhile; empty, and the drain over, when none wait."""
        group: list[_Write[Any]] = []
        with self._queue_lock:
            while self._queue and len(group) < GROUP_COMMIT_LIMIT:
                write = self._queue.popleft()
                if not write.future.cancelled():
                    group.append(write)
            if not group:
                self._drains -= 1
        return group

    def _count(self, outcomes: list[_Outcome]) -> None:
        """Count one committed transaction and the writes that committed in it."""
        written = sum(outcome.error is None for outcome in outcomes)
        with self._queue_lock:
            done = self._group_commits
            self._group_commits = GroupCommits(
                done.writes + written, done.transactions + 1, max(done.largest, written)
            )

    def _log_group_failure(self, group: list[_Write[Any]], exc: Exception) -> None:
        log.info(
            "group commit of %d writes failed (%s: %s); committing each alone",
            len(group),
            type(exc).__name__,
            exc,
        )

    # SQLite: the drain runs in the store thread.

    def _drain_in_thread(self) -> None:
        """Commit groups until no write waits; hand the outcomes to the event loop."""
        while group := self._next_group():
            outcomes = self._commit_in_thread(group)
            # The callers of one store share its event loop (its async engines are bound to it).
            group[0].future.get_loop().call_soon_threadsafe(_settle, outcomes)

    def _commit_in_thread(self, group: list[_Write[Any]]) -> list[_Outcome]:
        if len(group) == 1:
            return [self._alone_in_thread(group[0])]
        try:
            try:
                outcomes = self._group_in_thread(group, savepoints=False)
            except _BodyFailed:
                outcomes = self._group_in_thread(group, savepoints=True)
        except Exception as exc:  # whatever broke the group, each write alone says what it does
            self._log_group_failure(group, exc)
            return [self._alone_in_thread(write) for write in group]
        self._count(outcomes)
        return outcomes

    def _group_in_thread(self, group: list[_Write[Any]], savepoints: bool) -> list[_Outcome]:
        with self._thread_session() as session:
            return _run_group(session, group, savepoints)

    def _alone_in_thread(self, write: _Write[Any]) -> _Outcome:
        try:
            value = self._run_transaction(write.body)
        except Exception as exc:  # the caller's own error, raised in its task by `_settle`
            return _Outcome(write, error=exc)
        outcome = _Outcome(write, value)
        self._count([outcome])
        return outcome

    def _run_transaction(self, body: Callable[[Session], T]) -> T:
        with self._thread_session() as session:
            return body(session)

    @contextmanager
    def _thread_session(self) -> Iterator[Session]:
        """A session in a write transaction on the store thread's connection, committed on
        exit (rolled back on error).

        The thread engine does not roll a connection back when it is checked in (see
        `create_store_engine`), and a COMMIT that fails (the commit of a group, a deferred
        constraint) leaves the sqlite3 connection inside its transaction, where every later
        BEGIN IMMEDIATE would fail ("cannot start a transaction within a transaction") and
        so would every write after it. Such a connection is rolled back here.
        """
        assert self._thread_engine is not None
        with self._thread_engine.connect() as connection:
            try:
                with Session(connection, expire_on_commit=False) as session, session.begin():
                    yield session
            except Exception:
                if not connection.invalidated:
                    driver = connection.connection.dbapi_connection
                    if driver is not None and driver.in_transaction:
                        driver.rollback()
                raise

    # PostgreSQL: the drain is a task on the event loop.

    async def _drain(self) -> None:
        """Commit groups until no write waits (up to PG_CONCURRENT_GROUPS drains at once)."""
        group: list[_Write[Any]] = []
        try:
            while group := self._next_group():
                _settle(await self._commit(group))
        except asyncio.CancelledError:
            # The event loop is closing: its callers are being cancelled too.
            with self._queue_lock:
                abandoned = [*group, *self._queue]
                self._queue.clear()
                self._drains -= 1
            for write in abandoned:
                write.future.cancel()
            raise

    async def _commit(self, group: list[_Write[Any]]) -> list[_Outcome]:
        """Commit a group in one transaction, or each of its writes alone if that fails.

        Two groups in flight at once (two drains of this replica, or groups of two replicas)
        can deadlock: each body locks its conversation's row first (`lock_conversation`, or
        the UPDATE that starts it), a group holds its locks to the end, and two groups that
        both hold writes of conversations X and Y may lock them in opposite orders. That
        needs two writes of one conversation in flight at once, which the per-conversation
        turn order makes rare. PostgreSQL then aborts one group with a deadlock error
        (after `deadlock_timeout`, 1 s by default), and its writes are retried alone: a
        transaction that locks a single conversation cannot close a cycle, so each caller
        still gets its own result.
        """
        if len(group) == 1:
            return [await self._alone(group[0])]
        try:
            try:
                outcomes = await self._group(group, savepoints=False)
            except _BodyFailed:
                outcomes = await self._group(group, savepoints=True)
        except Exception as exc:  # whatever broke the group, each write alone says what it does
            self._log_group_failure(group, exc)
            return list(await asyncio.gather(*(self._alone(write) for write in group)))
        self._count(outcomes)
        return outcomes

    async def _group(self, group: list[_Write[Any]], savepoints: bool) -> list[_Outcome]:
        assert self._writes is not None
        async with self._writes() as session, session.begin():
            return await session.run_sync(_run_group, group, savepoints)

    async def _alone(self, write: _Write[Any]) -> _Outcome:
        assert self._writes is not None
        try:
            async with self._writes() as session, session.begin():
                value = await session.run_sync(write.body)
        except Exception as exc:  # the caller's own error, raised in its task by `_settle`
            return _Outcome(write, error=exc)
        outcome = _Outcome(write, value)
        self._count([outcome])
        return outcome

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
        """The conversation row, locked until the transaction ends (see `lock_conversation`)."""
        return await session.run_sync(lock_conversation, conversation_id)

    async def _rename(self, conversation_id: str, sender_name: str) -> Conversation:
        async with self._write("update a conversation") as session:
            row = await self._locked_conversation(session, conversation_id)
            row.sender_name = sender_name
            row.updated_at = self.clock()
        return to_conversation(row)


def _escalate(
    session: Session | AsyncSession,
    rows: HandoffRows,
    escalation: Escalation,
    priority: float,
    now: datetime,
) -> EscalationRow:
    """The conversation's unresolved escalation after `handoff.escalate`: the one it has
    (its priority raised when `escalation` is more urgent, `handoff.raises_priority`), or a
    new one, opened now, that sends the (locked) conversation to the queue."""
    row = rows.escalation
    unresolved = row is not None and not handoff.needs_escalation(rows.state)
    if unresolved and row is not None and handoff.raises_priority(row.priority, priority):
        row.priority = priority
        row.explanation = handoff.raised_explanation(row.explanation, escalation.explanation)
    if handoff.needs_escalation(rows.state):
        row = EscalationRow(
            conversation_id=rows.conversation.id,
            reason=escalation.reason,
            priority=priority,
            explanation=escalation.explanation,
            scores={name: float(score) for name, score in escalation.scores.items()},
            created_at=now,
        )
        session.add(row)
    return apply_handoff(rows.conversation, row, handoff.escalate(rows.state), now)


class _BodyFailed(Exception):
    """A body of a group run without savepoints raised: run the group again with them."""


def _run_group(session: Session, group: list[_Write[Any]], savepoints: bool) -> list[_Outcome]:
    """Run the group's bodies in the session's transaction, in order.

    With `savepoints`, each body runs in a savepoint of its own: one that raises is rolled
    back to it and keeps its error for its caller, the others' changes stay. Without, the
    first body that raises ends the run (`_BodyFailed`, the transaction is rolled back):
    savepoints cost as much as the transactions they save (measured: SQLite 130 us a body,
    about what a transaction of its own costs; PostgreSQL two round trips), and a group
    where no body fails, nearly all of them, does not need them. Each body's ORM changes
    are flushed before the next body runs, so that what fails is the body that caused it.

    Raises:
        _BodyFailed: without `savepoints`, a body raised.
        Exception: an error that loses the transaction itself (`_loses_the_transaction`),
            so that the whole group is retried write by write.
    """
    outcomes: list[_Outcome] = []
    for write in group:
        savepoint = session.begin_nested() if savepoints else None
        try:
            value = write.body(session)
            if savepoint is None:
                session.flush()
            else:
                savepoint.commit()
        except Exception as exc:  # the body's own error, raised in its caller's task
            if _loses_the_transaction(exc):
                raise
            if savepoint is None:
                raise _BodyFailed(f"{write.action}: {type(exc).__name__}") from exc
            savepoint.rollback()
            outcomes.append(_Outcome(write, error=exc))
        else:
            outcomes.append(_Outcome(write, value))
    return outcomes


def _loses_the_transaction(exc: Exception) -> bool:
    """Whether an error inside one body dooms the group's transaction: the connection is
    gone or unusable, or PostgreSQL aborted it as a deadlock or serialization victim
    (SQLSTATE class 40). Alone, the body might well succeed, so it must not fail for the
    company it was in."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        return exc.connection_invalidated or sqlstate.startswith(("40", *UNAVAILABLE_SQLSTATES))
    return False


def _settle(outcomes: list[_Outcome]) -> None:
    """Hand each caller what its body returned or raised (on the event loop)."""
    for outcome in outcomes:
        future = outcome.write.future
        if future.done():  # cancelled while its write ran: the write stands
            continue
        if outcome.error is None:
            future.set_result(outcome.value)
        else:
            future.set_exception(outcome.error)


def _by_client_id(conversation_id: str, client_id: str) -> Select[MessageRow]:
    return select(MessageRow).where(
        MessageRow.conversation_id == conversation_id, MessageRow.client_id == client_id
    )


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


@asynccontextmanager
async def opened_store(url: str) -> AsyncIterator[SqlConversationStore]:
    """A started store on `url` (migrated first), stopped on exit: what the operator
    commands (`agents`, `api-keys`, `privacy`) open for one piece of work."""
    store = SqlConversationStore(url)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()
