"""What the store holds about one customer: export it whole, or erase it in one transaction.

A customer is a sender (on one channel or on every channel) or one conversation. Their data
is their conversations and every row hanging off them: messages (with the models'
annotations in `details`), feedback on those messages (ratings and the labels agents gave),
escalations, the conversation labels and private notes agents wrote, and approved answers
made from their messages. Exports and erasures go through the same selection, so what is
exported is exactly what an erasure removes.

Retention (`privacy.retention_days`) removes the same rows of every conversation older than
that (`SqlPrivacyStore.purge`, in batches, each one transaction), on a schedule inside
`serve` (`RetentionPurge`), once per interval across replicas (a lease in the database).

On SQLite the erasing transactions run with `PRAGMA secure_delete` (deleted content is
overwritten with zeros) and are followed by a `wal_checkpoint(TRUNCATE)`, so no copy of the
rows is left in the database file or its write-ahead log. PostgreSQL keeps deleted tuples in
its data files until (auto)vacuum reuses the space (see docs/privacy.md).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    delete,
    false,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.background import cancel_and_wait
from bot.core.errors import BadRequestError, NotFoundError, StoreUnavailableError
from bot.core.records import Role
from bot.store.conversations import SqlConversationStore
from bot.store.desk import forget_answer_controls
from bot.store.lease import SqlLease
from bot.store.schema import (
    AnswerControlRow,
    ApprovedAnswerRow,
    Base,
    ConversationLabelRow,
    ConversationNoteRow,
    ConversationRow,
    ErasureRow,
    EscalationRow,
    FeedbackRow,
    MessageRow,
)

log = logging.getLogger(__name__)

# `erased_by` of the purges that retention does.
RETENTION = "retention"
# The lease that makes a scheduled purge run on one replica per interval.
PURGE_LEASE = "retention-purge"

# The tables of a customer's data, in the order an erasure deletes them (rows that point
# at others first, conversations last).
CUSTOMER_TABLES: tuple[type[Base], ...] = (
    FeedbackRow,
    ApprovedAnswerRow,
    ConversationLabelRow,
    ConversationNoteRow,
    EscalationRow,
    MessageRow,
    ConversationRow,
)


@dataclass(frozen=True, slots=True)
class Customer:
    """Whose data: a sender (on `channel`, or on every channel) or one conversation."""

    sender: str | None = None
    channel: str | None = None
    conversation_id: str | None = None

    def __post_init__(self) -> None:
        if (self.sender is None) == (self.conversation_id is None):
            raise BadRequestError(
                "name the customer either by sender (--sender ID, optionally --channel C) or "
                "by conversation (--conversation ID), not both and not neither"
            )
        if self.channel is not None and self.sender is None:
            raise BadRequestError(
                "--channel narrows --sender; a conversation id names one conversation already"
            )

    def describe(self) -> str:
        """The customer in words, for reports and errors (`sender 'u1' on channel 'rest'`)."""
        if self.conversation_id is not None:
            return f"conversation {self.conversation_id!r}"
        where = f" on channel {self.channel!r}" if self.channel else " on every channel"
        return f"sender {self.sender!r}{where}"


@dataclass(frozen=True, slots=True)
class CustomerData:
    """Every stored row of one customer, table by table, as column -> value."""

    customer: Customer
    tables: Mapping[str, list[dict[str, Any]]]

    def to_json(self) -> dict[str, Any]:
        """The export document: JSON types only (timestamps as ISO 8601, in UTC)."""
        return {
            "customer": {
                "sender": self.customer.sender,
                "channel": self.customer.channel,
                "conversation": self.customer.conversation_id,
            },
            **{
                table: [{k: _jsonable(v) for k, v in row.items()} for row in rows]
                for table, rows in self.tables.items()
            },
        }


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure removed (or, in a dry run, would remove) from the store.

    The texts are kept only in memory, so that the caller can remove them from files outside
    the database (the models' replay pools and test sets, the answer index).

    Attributes:
        texts: the customer's message texts (and the questions of approved answers made
            from them).
        answers: the agents' replies in the customer's conversations (and the approved
            answers made from them).
        approved: ids of the approved answers erased (index sources
            `store:approved_answers:<id>`).
        checkpointed: SQLite: the write-ahead log was emptied into the database file after
            the erasure (False: a reader kept it busy; the next checkpoint does it).
    """

    customer: Customer
    counts: Mapping[str, int]
    texts: frozenset[str] = field(default_factory=frozenset)
    dry_run: bool = False
    answers: frozenset[str] = field(default_factory=frozenset)
    approved: frozenset[int] = field(default_factory=frozenset)
    checkpointed: bool = True


@dataclass(frozen=True, slots=True)
class Purge:
    """What a retention purge removed (or, in a dry run, would remove).

    Attributes:
        cutoff: conversations last active before this went.
        counts: rows per table (`conversations`, `messages`, ...).
        batches: transactions committed (0 in a dry run or when nothing was old enough).
        erasure_id: the `erasures` record (None when nothing was removed).
        complete: False when the lease was lost midway (another replica carries on).
    """

    cutoff: datetime
    counts: Mapping[str, int]
    batches: int = 0
    dry_run: bool = False
    erasure_id: int | None = None
    complete: bool = True
    checkpointed: bool = True

    @property
    def conversations(self) -> int:
        return int(self.counts.get(ConversationRow.__tablename__, 0))


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _row_dict(row: Base) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


class SqlPrivacyStore:
    """Export and erasure of one customer's data, in the store's database.

    Args:
        store: the conversation store whose database and connection pool are shared, and
            whose `clock` stamps the erasure record.
    """

    def __init__(self, store: SqlConversationStore) -> None:
        self.store = store

    async def export(self, customer: Customer) -> CustomerData:
        """Every stored row of `customer` (NotFoundError when the store holds none)."""
        async with self.store.reading("export a customer's data") as session:
            ids = await self._conversation_ids(session, customer)
            tables: dict[str, list[dict[str, Any]]] = {}
            for table in reversed(CUSTOMER_TABLES):
                query = self._rows(table, ids).order_by(*inspect(table).primary_key)
                rows = (await session.scalars(query)).all()
                tables[table.__tablename__] = [_row_dict(row) for row in rows]
        return CustomerData(customer, tables)

    async def erase(self, customer: Customer, erased_by: str, *, dry_run: bool = False) -> Erasure:
        """Delete every stored row of `customer` and record the erasure, in one transaction.

        On SQLite the deleted content is overwritten (`secure_delete`) and the write-ahead log
        emptied afterwards, so a byte search of the files finds nothing.

        Args:
            customer: whose data.
            erased_by: who asked for it (kept in the `erasures` record).
            dry_run: count what would be removed and change nothing.

        Raises:
            NotFoundError: the store holds nothing of `customer`.
        """
        async with self.store.writing("erase a customer's data") as session:
            ids = await self._conversation_ids(session, customer)
            found = await self._texts(session, ids)
            counts: dict[str, int] = {}
            for table in CUSTOMER_TABLES:
                matching = self._rows(table, ids).subquery()
                count = await session.scalar(select(func.count()).select_from(matching))
                counts[table.__tablename__] = int(count or 0)
            controls = _controls_of(found)
            counts[AnswerControlRow.__tablename__] = int(
                await session.scalar(
                    select(func.count()).select_from(
                        select(AnswerControlRow.id).where(controls).subquery()
                    )
                )
                or 0
            )
            counts[ApprovedAnswerRow.__tablename__] += len(found.edited)
            if not dry_run:
                await self._secure_delete(session)
                await self._delete(session, ids)
                for table, condition in (
                    (AnswerControlRow, controls),
                    (ApprovedAnswerRow, ApprovedAnswerRow.id.in_(sorted(found.edited))),
                ):
                    await session.execute(
                        delete(table).where(condition),
                        execution_options={"synchronize_session": False},
                    )
                session.add(
                    ErasureRow(erased_by=erased_by, counts=counts, created_at=self.store.clock())
                )
        if not dry_run:
            forget_answer_controls(self.store)
        checkpointed = True if dry_run else await self.checkpoint()
        return Erasure(
            customer,
            counts,
            found.texts,
            dry_run,
            found.answers,
            found.approved,
            checkpointed,
        )

    async def purge(
        self,
        cutoff: datetime,
        *,
        batch_size: int = 500,
        dry_run: bool = False,
        erased_by: str = RETENTION,
        keep_going: Callable[[], Awaitable[bool]] | None = None,
    ) -> Purge:
        """Delete every conversation last active before `cutoff`, with all its rows.

        The conversations go `batch_size` at a time, each batch one transaction that also
        adds its counts to the purge's `erasures` record, so a purge stopped midway (the
        process died) leaves whole conversations, never half of one, and a record of what
        went. Model files are not touched.

        Args:
            cutoff: conversations whose last message (`updated_at`) is older go.
            batch_size: conversations per transaction.
            dry_run: count what would go and change nothing.
            erased_by: who purges (`retention` for the schedule).
            keep_going: asked before each batch after the first (the schedule renews its
                lease there); False stops the purge.

        Raises:
            BadRequestError: `batch_size` is below 1.
        """
        if batch_size < 1:
            raise BadRequestError(f"batch_size must be 1 or more, got {batch_size}")
        old = select(ConversationRow.id).where(ConversationRow.updated_at < cutoff)
        if dry_run:
            async with self.store.reading("count the conversations to purge") as session:
                counts = {}
                for table in CUSTOMER_TABLES:
                    if table is ApprovedAnswerRow:  # kept, unlinked (see `_delete`)
                        counts[table.__tablename__] = 0
                        continue
                    matching = select(table).where(self._condition(table, old)).subquery()
                    count = await session.scalar(select(func.count()).select_from(matching))
                    counts[table.__tablename__] = int(count or 0)
            return Purge(cutoff, counts, dry_run=True)
        totals = {table.__tablename__: 0 for table in CUSTOMER_TABLES}
        batches = 0
        record: int | None = None
        complete = True
        while True:
            if batches and keep_going is not None and not await keep_going():
                complete = False
                break
            async with self.store.writing("purge old conversations") as session:
                query = old.order_by(ConversationRow.id).limit(batch_size)
                if (await session.connection()).dialect.name == "postgresql":
                    # A replica's customer writing right now keeps their conversation.
                    query = query.with_for_update(skip_locked=True)
                ids = list((await session.scalars(query)).all())
                if not ids:
                    break
                await self._secure_delete(session)
                counts = await self._delete(session, ids, keep_approved=True)
                totals = {t: totals[t] + counts[t] for t in totals}
                if record is None:
                    row = ErasureRow(
                        erased_by=erased_by, counts=totals, created_at=self.store.clock()
                    )
                    session.add(row)
                    await session.flush()
                    record = row.id
                else:
                    kept = await session.get(ErasureRow, record)
                    assert kept is not None
                    kept.counts = totals
            batches += 1
        checkpointed = await self.checkpoint() if batches else True
        return Purge(cutoff, totals, batches, False, record, complete, checkpointed)

    async def checkpoint(self) -> bool:
        """SQLite: move the write-ahead log into the database file and truncate it, so the
        deleted rows' old pages are overwritten and the log holds none of them.

        Returns:
            True when done (always on PostgreSQL); False when a reader kept the log busy
            for the store's busy timeout (the next checkpoint empties it).
        """
        url = make_url(self.store.url)
        if url.get_backend_name() != "sqlite" or not url.database:
            return True

        def run() -> bool:
            connection = sqlite3.connect(url.database or "", timeout=10.0)
            try:
                busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                return not busy
            finally:
                connection.close()

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            log.warning("write-ahead log not checkpointed after an erasure: %s", exc)
            return False

    async def erasures(self) -> list[ErasureRow]:
        """Every erasure record, oldest first."""
        async with self.store.reading("list erasures") as session:
            return list((await session.scalars(select(ErasureRow).order_by(ErasureRow.id))).all())

    async def _conversation_ids(self, session: AsyncSession, customer: Customer) -> list[str]:
        query = select(ConversationRow.id)
        if customer.conversation_id is not None:
            query = query.where(ConversationRow.id == customer.conversation_id)
        else:
            query = query.where(ConversationRow.sender == customer.sender)
            if customer.channel is not None:
                query = query.where(ConversationRow.channel == customer.channel)
        ids = list((await session.scalars(query.order_by(ConversationRow.id))).all())
        if not ids:
            raise NotFoundError(
                f"the store holds no conversation of {customer.describe()}; check the id and "
                "the channel (the agent console shows each conversation's channel and sender), "
                "or it was erased already"
            )
        return ids

    async def _texts(self, session: AsyncSession, ids: Sequence[str]) -> _Texts:
        """The customer's texts, the agents' answers to them and their approved answers."""
        rows = await session.execute(
            select(MessageRow.role, MessageRow.text).where(MessageRow.conversation_id.in_(ids))
        )
        texts: set[str] = set()
        answers: set[str] = set()
        for role, message in rows.all():
            if role == Role.CUSTOMER.value:
                texts.add(message)
            elif role == Role.AGENT.value:
                answers.add(message)
        approved = await session.execute(
            select(
                ApprovedAnswerRow.id, ApprovedAnswerRow.question, ApprovedAnswerRow.answer
            ).where(self._condition(ApprovedAnswerRow, ids))
        )
        approved_ids: set[int] = set()
        for approved_id, question, answer in approved.all():
            approved_ids.add(approved_id)
            texts.add(question)
            answers.add(answer)
        # An agent's edit in the answer library of a pair made from the customer's question
        # is saved as another approved answer, holding that question: it goes too.
        found = _Texts(frozenset(texts), frozenset(answers), frozenset(approved_ids))
        edited = await session.execute(
            select(ApprovedAnswerRow.id, ApprovedAnswerRow.answer).where(
                ApprovedAnswerRow.id.in_(
                    select(AnswerControlRow.approved_answer_id).where(_controls_of(found))
                ),
                ApprovedAnswerRow.id.not_in(sorted(approved_ids)),
            )
        )
        extra: set[int] = set()
        for approved_id, answer in edited.all():
            extra.add(approved_id)
            answers.add(answer)
        return _Texts(
            frozenset(texts),
            frozenset(answers),
            frozenset(approved_ids | extra),
            frozenset(extra),
        )

    async def _delete(
        self, session: AsyncSession, ids: Sequence[str], *, keep_approved: bool = False
    ) -> dict[str, int]:
        """Delete the rows of the conversations `ids` in every customer table; rows per table.

        With `keep_approved` (the retention purge) the approved answers made from them stay,
        no longer linked to the conversation: an agent reviewed each pair before saving it as
        the team's answer (the console's dialog asks to remove the customer's details), so it
        is the team's content; an erasure request removes it with the rest."""
        counts: dict[str, int] = {}
        for table in CUSTOMER_TABLES:
            if keep_approved and table is ApprovedAnswerRow:
                await session.execute(
                    update(ApprovedAnswerRow)
                    .where(self._condition(ApprovedAnswerRow, ids))
                    .values(conversation_id=None, question_message_id=None, answer_message_id=None),
                    execution_options={"synchronize_session": False},
                )
                counts[table.__tablename__] = 0
                continue
            result = await session.execute(
                delete(table).where(self._condition(table, ids)),
                execution_options={"synchronize_session": False},
            )
            counts[table.__tablename__] = int(getattr(result, "rowcount", 0) or 0)
        return counts

    async def _secure_delete(self, session: AsyncSession) -> None:
        """SQLite: overwrite deleted content with zeros on this connection from now on."""
        if (await session.connection()).dialect.name == "sqlite":
            await session.execute(text("PRAGMA secure_delete = ON"))

    def _rows(self, table: type[Base], ids: Sequence[str] | Select[Any]) -> Select[Any]:
        return select(table).where(self._condition(table, ids))

    def _condition(
        self, table: type[Base], ids: Sequence[str] | Select[Any]
    ) -> ColumnElement[bool]:
        """Rows of `table` that belong to the conversations `ids` (a list or a query)."""
        messages = select(MessageRow.id).where(MessageRow.conversation_id.in_(ids))
        if table is ConversationRow:
            return ConversationRow.id.in_(ids)
        if table is FeedbackRow:
            return FeedbackRow.message_id.in_(messages)
        if table is ApprovedAnswerRow:
            # Made from the customer's question: it holds their text, wherever it points.
            return or_(
                ApprovedAnswerRow.conversation_id.in_(ids),
                ApprovedAnswerRow.question_message_id.in_(messages),
                ApprovedAnswerRow.answer_message_id.in_(messages),
            )
        conversation_id = getattr(table, "conversation_id", None)
        if conversation_id is None:  # pragma: no cover - every customer table has one
            return false()
        return conversation_id.in_(ids)


@dataclass(frozen=True, slots=True)
class _Texts:
    texts: frozenset[str]
    answers: frozenset[str]
    approved: frozenset[int]
    # Approved answers saved by an agent's edit of the customer's pair (not linked to their
    # conversation, so not among the rows `_condition` finds).
    edited: frozenset[int] = frozenset()


def _controls_of(found: _Texts) -> ColumnElement[bool]:
    """The answer library's decisions that hold the customer's data: about their approved
    answers (an agent's edit of one may repeat their details) or about a pair made from their
    question."""
    sources = [f"store:approved_answers:{i}" for i in sorted(found.approved)]
    return or_(
        AnswerControlRow.approved_answer_id.in_(sorted(found.approved)),
        AnswerControlRow.source.in_(sources),
        AnswerControlRow.question.in_(sorted(found.texts)),
    )


class RetentionPurge:
    """`privacy.retention_days` inside `serve`: purges old conversations on a schedule.

    Every `interval_s` (the first time right after start) the replica tries to take the
    purge lease for one interval; the one that gets it purges and renews the lease between
    batches, the others skip that round. So across replicas the purge runs once per
    interval, and one that dies midway is taken over when its lease expires.

    Args:
        privacy: the privacy queries on the started store.
        lease: the `retention-purge` lease of this process.
        retention_days: conversations last active longer ago than this are purged.
        interval_s: seconds between purges.
        batch_size: conversations per transaction.
    """

    def __init__(
        self,
        privacy: SqlPrivacyStore,
        lease: SqlLease,
        retention_days: int,
        interval_s: float,
        batch_size: int = 500,
    ) -> None:
        if retention_days < 1 or not interval_s > 0:
            raise BadRequestError(
                f"retention needs retention_days >= 1 and interval_s > 0, got "
                f"{retention_days} and {interval_s}"
            )
        self.privacy = privacy
        self.lease = lease
        self.retention = timedelta(days=retention_days)
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.last: Purge | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the schedule (the store must be started)."""
        self._task = asyncio.create_task(self._run(), name="retention-purge")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def purge_once(self) -> Purge | None:
        """One scheduled round: the purge, or None when another replica holds the lease."""
        ttl = timedelta(seconds=self.interval_s)
        if not await self.lease.acquire(ttl):
            return None
        cutoff = self.privacy.store.clock() - self.retention
        purge = await self.privacy.purge(
            cutoff, batch_size=self.batch_size, keep_going=lambda: self.lease.acquire(ttl)
        )
        self.last = purge
        if purge.batches:
            log.info(
                "retention: purged %d conversations (%d messages) last active before %s",
                purge.conversations,
                purge.counts.get(MessageRow.__tablename__, 0),
                cutoff.isoformat(timespec="seconds"),
            )
        return purge

    async def _run(self) -> None:
        while True:
            try:
                await self.purge_once()
            except StoreUnavailableError as exc:
                log.warning("retention purge skipped: %s", exc)
            except Exception:  # a background loop's boundary: log, keep the schedule
                log.exception("retention purge failed")
            await asyncio.sleep(self.interval_s)
