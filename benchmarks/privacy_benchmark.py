"""Erasure and retention purge times on a full store: SQLite and PostgreSQL.

Fills a fresh database with --conversations conversations (4-8 messages each, customer and
bot taking turns; feedback on a tenth of the bot's answers, an escalation and an agent's
note on some), --old-share of them last active 400 days ago, through the store's own tables
(bulk inserts). Then times, on the store alone (no models, no files):

- erase: `SqlPrivacyStore.erase` of one customer (two conversations, on two channels),
  what `supportbot privacy erase` does in the database (one transaction, SQLite's
  secure_delete and WAL checkpoint included);
- purge: `SqlPrivacyStore.purge` of every conversation older than 365 days, in batches of
  --batch-size conversations (one transaction each), what `serve` does on its schedule.

    .venv/bin/python benchmarks/privacy_benchmark.py [--conversations 100000] \\
        [--old-share 0.3] [--batch-size 500] [--pg-admin postgresql://postgres@127.0.0.1/test]

SQLite uses a file in a temporary directory; PostgreSQL a database of its own, created on
the server of --pg-admin and dropped afterwards (--no-postgres skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url

from bot.store.conversations import SqlConversationStore
from bot.store.privacy import CUSTOMER_TABLES, Customer, SqlPrivacyStore
from bot.store.schema import (
    ConversationNoteRow,
    ConversationRow,
    EscalationRow,
    FeedbackRow,
    MessageRow,
)

QUESTIONS = (
    "where is my order {order}? it was due on monday and the tracking page shows nothing",
    "I was charged twice for order {order}, card [CARD], please refund one of them",
    "can I change the delivery address of {order} to my office, reach me at [EMAIL]",
    "the parcel {order} arrived damaged, the box was open and one item is missing",
    "how do I return the shoes from order {order}? they are one size too small",
    "my discount code did not apply to {order}, it should have been 15 percent off",
)
ANSWERS = (
    "Your parcel {order} left our warehouse yesterday; you will have it tomorrow.",
    "Sorry about that! The second charge on {order} is refunded within 3-5 working days.",
    "Done: {order} now goes to the new address. You will get a confirmation e-mail.",
    "I am sorry to hear that. I have opened a claim for {order}; an agent will follow up.",
)
CHUNK = 10_000


@dataclass
class Filled:
    rows: int
    seconds: float


async def fill(store: SqlConversationStore, conversations: int, old_share: float) -> Filled:
    """Bulk-insert the conversations and their rows; the erased customer is number 77."""
    rng = random.Random(16)
    now = datetime.now(UTC)
    started = time.perf_counter()
    message_id = 0
    rows = 0
    batch: dict[Any, list[dict[str, Any]]] = {
        t: [] for t in (ConversationRow, MessageRow, FeedbackRow, EscalationRow)
    }
    batch[ConversationNoteRow] = []

    async def flush() -> None:
        nonlocal rows
        async with store.writing("fill the benchmark database") as session:
            connection = await session.connection()
            for table, values in batch.items():
                if values:
                    # Core executemany on the table (the ORM's bulk path inserts row by row).
                    await connection.execute(insert(table.__table__), values)
                    rows += len(values)
                    values.clear()

    for number in range(conversations):
        old = rng.random() < old_share
        last = now - timedelta(days=400 if old else rng.uniform(0, 30), minutes=number % 500)
        # Customer 77 writes on two channels: the erased customer has two conversations.
        channel, sender = ("widget", "customer-77") if number == 78 else ("rest", None)
        conversation_id = uuid.uuid4().hex
        length = rng.randint(4, 8)
        start = last - timedelta(minutes=length)
        batch[ConversationRow].append(
            {
                "id": conversation_id,
                "channel": channel,
                "sender": sender or f"customer-{number}",
                "sender_name": f"Customer {number}",
                "status": "bot",
                "failed_turns": 0,
                "assignee": None,
                "created_at": start,
                "updated_at": last,
            }
        )
        order = f"BC-{100000 + number}"
        for turn in range(length):
            message_id += 1
            customer = turn % 2 == 0
            text = rng.choice(QUESTIONS if customer else ANSWERS).format(order=order)
            batch[MessageRow].append(
                {
                    "id": message_id,
                    "conversation_id": conversation_id,
                    "role": "customer" if customer else "bot",
                    "text": text,
                    "client_id": None,
                    "reply_to": None if customer else message_id - 1,
                    "intent": "order_status" if customer else None,
                    "intent_confidence": 0.9 if customer else None,
                    "sentiment": "neutral" if customer else None,
                    "negativity": 0.1 if customer else None,
                    "route": None if customer else "answer",
                    "model_versions": {"intent": "v1", "sentiment": "v1"} if customer else None,
                    "latency_ms": None if customer else 12.5,
                    "details": {"entities": ["ORDER_ID"]} if customer else None,
                    "created_at": start + timedelta(minutes=turn),
                }
            )
            if not customer and rng.random() < 0.1:
                batch[FeedbackRow].append(
                    {
                        "message_id": message_id,
                        "rating": rng.choice(("up", "down")),
                        "comment": None,
                        "corrected_intent": None,
                        "corrected_sentiment": None,
                        "author": f"customer-{number}",
                        "created_at": last,
                    }
                )
        if rng.random() < 0.05:
            batch[EscalationRow].append(
                {
                    "conversation_id": conversation_id,
                    "reason": "asked_for_human",
                    "priority": 1.0,
                    "explanation": "asked for a person",
                    "scores": {},
                    "status": "resolved",
                    "created_at": last,
                    "resolved_at": last,
                    "resolved_by": "ana",
                    "outcome": "resolved",
                }
            )
            batch[ConversationNoteRow].append(
                {
                    "conversation_id": conversation_id,
                    "author": "ana",
                    "text": f"called about {order}",
                    "created_at": last,
                }
            )
        if len(batch[MessageRow]) >= CHUNK:
            await flush()
    await flush()
    return Filled(rows, time.perf_counter() - started)


async def count_rows(store: SqlConversationStore) -> int:
    async with store.reading("count rows") as session:
        total = 0
        for table in CUSTOMER_TABLES:
            total += int(await session.scalar(select(func.count()).select_from(table)) or 0)
        return total


async def measure(url: str, conversations: int, old_share: float, batch: int) -> dict[str, Any]:
    store = SqlConversationStore(url)
    await store.start()
    try:
        filled = await fill(store, conversations, old_share)
        privacy = SqlPrivacyStore(store)
        await privacy.checkpoint()
        rows = await count_rows(store)

        started = time.perf_counter()
        erasure = await privacy.erase(Customer(sender="customer-77"), "benchmark")
        erase_s = time.perf_counter() - started

        cutoff = datetime.now(UTC) - timedelta(days=365)
        started = time.perf_counter()
        purge = await privacy.purge(cutoff, batch_size=batch)
        purge_s = time.perf_counter() - started
        purged = sum(purge.counts.values())
        return {
            "rows": rows,
            "fill_s": filled.seconds,
            "erased_rows": sum(erasure.counts.values()),
            "erase_s": erase_s,
            "purged_conversations": purge.conversations,
            "purged_rows": purged,
            "purge_s": purge_s,
            "batches": purge.batches,
        }
    finally:
        await store.stop()


@asynccontextmanager
async def pg_database(admin: str) -> AsyncIterator[str]:
    """A new database on the server of `admin` (a libpq URL), dropped afterwards."""
    name = f"supportbot_privacy_bench_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    parsed = make_url(admin)
    try:
        yield parsed.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


async def run(ns: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
        results.append(
            ("sqlite", await measure(url, ns.conversations, ns.old_share, ns.batch_size))
        )
    if not ns.no_postgres:
        async with pg_database(ns.pg_admin) as url:
            results.append(
                ("postgresql", await measure(url, ns.conversations, ns.old_share, ns.batch_size))
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--old-share", type=float, default=0.3, help="share older than 365 days")
    parser.add_argument("--batch-size", type=int, default=500, help="conversations per purge tx")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-postgres", action="store_true")
    ns = parser.parse_args()
    results = asyncio.run(run(ns))
    print(
        f"{ns.conversations} conversations, {ns.old_share:.0%} older than the retention, "
        f"purge batches of {ns.batch_size}"
    )
    print(
        f"{'database':<11} {'rows':>9} {'erase s':>8} {'(rows)':>7} {'purge s':>8} "
        f"{'(conversations':>15} {'rows)':>8} {'rows/s':>8}"
    )
    for name, r in results:
        print(
            f"{name:<11} {r['rows']:>9} {r['erase_s']:>8.3f} {r['erased_rows']:>7} "
            f"{r['purge_s']:>8.2f} {r['purged_conversations']:>15} {r['purged_rows']:>8} "
            f"{r['purged_rows'] / r['purge_s']:>8.0f}"
        )
    print("fill: " + ", ".join(f"{name} {r['fill_s']:.0f} s" for name, r in results))


if __name__ == "__main__":
    main()
