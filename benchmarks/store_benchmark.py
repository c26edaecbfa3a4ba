"""What a message costs the store alone: no HTTP, no models.

N coroutines act as N concurrent conversations, each doing per message what the bot does:
look up the conversation id, store the customer message (reading the conversation's state and
recent messages in the same transaction), and record the bot's turn with its reply. A
conversation is replaced by a new sender every --length messages. Prints messages per second,
this process's CPU time per message (event loop plus the driver threads), and how many writes
each transaction committed on average (group commit, `SqlConversationStore.group_commits`).

    .venv/bin/python benchmarks/store_benchmark.py [--url postgresql+asyncpg://...] \\
        [--conversations 100] [--seconds 8]

Without --url it uses a fresh SQLite file in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bot.core.records import Route, Scored, Turn, Understanding
from bot.store.conversations import GroupCommits, SqlConversationStore

UNDERSTOOD = Understanding(
    "order_status",
    0.91,
    (Scored("order_status", 0.91), Scored("delivery_problem", 0.05)),
    "neutral",
    0.02,
    (Scored("neutral", 0.8), Scored("negative", 0.11), Scored("positive", 0.09)),
    {"intent": "v1", "sentiment": "v1"},
)


async def run(
    url: str, conversations: int, seconds: float, length: int
) -> tuple[int, float, float, GroupCommits]:
    store = SqlConversationStore(url)
    await store.start()
    done = 0
    deadline = time.perf_counter() + seconds

    async def conversation(number: int) -> None:
        nonlocal done
        sent = 0
        while time.perf_counter() < deadline:
            sender = f"bench-{number}-{sent // length}"
            conversation_id = await store.conversation_id("rest", sender)
            received = await store.receive(
                conversation_id, "where is my order? it was due on monday", recent=12
            )
            await store.record_turn(
                conversation_id,
                Turn(
                    received.message.id,
                    UNDERSTOOD,
                    Route.ANSWER,
                    12.5,
                    {"source": "conversation:42", "score": 0.83},
                    "It left our warehouse yesterday; you will have it tomorrow.",
                ),
            )
            done += 1
            sent += 1

    try:
        started, cpu = time.perf_counter(), time.process_time()
        before = store.group_commits
        await asyncio.gather(*(conversation(i) for i in range(conversations)))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        after = store.group_commits
        commits = GroupCommits(
            after.writes - before.writes, after.transactions - before.transactions, after.largest
        )
        return done, wall, cpu, commits
    finally:
        await store.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--length", type=int, default=5, help="messages per conversation")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = ns.url or f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
        done, wall, cpu, commits = asyncio.run(run(url, ns.conversations, ns.seconds, ns.length))
    print(
        f"{ns.conversations} conversations: {done} messages in {wall:.1f} s = "
        f"{done / wall:.1f} messages/s; CPU {cpu / max(done, 1) * 1000:.2f} ms per message; "
        f"{commits.writes} writes in {commits.transactions} transactions = "
        f"{commits.writes / max(commits.transactions, 1):.1f} per commit "
        f"(largest {commits.largest})"
    )


if __name__ == "__main__":
    main()
