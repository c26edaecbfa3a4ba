"""Soak test: many concurrent web-widget sessions against one or more running replicas.

Opens --sessions WebSocket sessions (spread over the --url replicas, connected over --ramp
seconds), each one a customer who sends a message, waits for the answer (ack, replies, status
frame), thinks for a random 0-2x --think seconds and sends the next, for --seconds. A session
whose socket breaks reconnects (to the next replica) and sends its unacknowledged message
again with the same client id, as widget.js does. Then it stops sending, waits up to --drain
seconds for answers in flight, and checks every message that was acknowledged but not seen
answered against the conversation's transcript.

Prints: messages/s (answered), p50/p90/p99 latency (send -> status frame), errors (error
frames, broken sockets), unacknowledged messages (never accepted: a browser would resend
them), and lost messages (accepted, never answered and not answered in the transcript;
target 0). Customer texts are the non-negative, non-hand-off rows of data/utterances.csv, so
the bot answers each one (a few may still be handed off, which is then a silent turn).

Start the replicas first (see README "Beyond one machine"), e.g. two on PostgreSQL + Redis:

    .venv/bin/python benchmarks/soak.py --url http://127.0.0.1:8081 \\
        --url http://127.0.0.1:8082 --sessions 1000 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import resource
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ANSWER_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 60.0
# Reconnect backoff as the widget does it (connectors/static/lib/backoff.js): doubling from
# 0.5 s to 15 s, +-25 % jitter.
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 15.0


def customer_texts(path: Path) -> list[str]:
    """Texts the bot answers itself: no negative sentiment, no request for a person."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [
        row["text"]
        for row in rows
        if row.get("sentiment") != "negative" and row.get("intent") not in ("talk_to_human",)
    ]


@dataclass
class Tally:
    """What all sessions saw."""

    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    errors: int = 0
    reconnects: int = 0
    # session -> client ids acknowledged but not (yet) seen answered
    unanswered: dict[str, set[str]] = field(default_factory=dict)
    unacknowledged: int = 0
    stuck: int = 0
    failures: Counter[str] = field(default_factory=Counter)


async def next_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    if message.type != aiohttp.WSMsgType.TEXT:
        raise ConnectionResetError(f"socket closed ({message.type.name} {message.data!r})")
    frame: dict[str, Any] = message.json()
    return frame


async def open_session(
    http: aiohttp.ClientSession, url: str, session: str
) -> aiohttp.ClientWebSocketResponse:
    """A widget socket that said hello for `session`, as widget.js does (the id travels in
    the first frame, never in the URL); the history frame comes next."""
    ws = await http.ws_connect(f"{url}/ws")
    await ws.send_json({"type": "hello", "session": session})
    return ws


async def think(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> None:
    """Pause, still reading the socket: aiohttp answers the server's pings only inside
    receive(), where a browser answers them at once."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        try:
            await next_frame(ws, left)  # other tabs' history refreshes: nothing to do
        except TimeoutError:
            return


async def customer(
    http: aiohttp.ClientSession,
    urls: list[str],
    index: int,
    texts: list[str],
    ns: argparse.Namespace,
    stop_at: float,
    tally: Tally,
) -> None:
    rng = random.Random(ns.seed * 100_003 + index)
    session = f"soak{uuid.uuid4().hex[:16]}"
    tally.unanswered[session] = set()
    pending: str | None = None
    text = ""
    n = 0
    attempt = index
    failures = 0
    give_up_at = stop_at + ns.drain
    await asyncio.sleep(rng.uniform(0, ns.ramp))
    while (time.monotonic() < stop_at or pending is not None) and time.monotonic() < give_up_at:
        url = urls[attempt % len(urls)]
        attempt += 1
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                # No client pings: browsers do not send any (the server pings every 30 s).
                ws = await open_session(http, url, session)
                while True:  # the history frame comes first
                    if (await next_frame(ws, ANSWER_TIMEOUT_S))["type"] == "history":
                        break
        except (aiohttp.ClientError, ConnectionResetError, TimeoutError) as exc:
            tally.failures[f"connect: {type(exc).__name__}: {exc}"[:80]] += 1
            if ws is not None:
                await ws.close()
            tally.errors += 1
            tally.reconnects += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2**failures)
            failures += 1
            await asyncio.sleep(delay * rng.uniform(0.75, 1.25))
            continue
        failures = 0
        try:
            async with ws:
                while (
                    time.monotonic() < stop_at or pending is not None
                ) and time.monotonic() < give_up_at:
                    if pending is None:
                        pending, text, n = f"m{n}", rng.choice(texts), n + 1
                        tally.sent += 1
                    started = time.perf_counter()
                    await ws.send_json({"type": "message", "text": text, "client_id": pending})
                    acked = False
                    while True:
                        left = max(1.0, give_up_at - time.monotonic())
                        frame = await next_frame(ws, min(ANSWER_TIMEOUT_S, left))
                        kind = frame["type"]
                        if kind == "ack" and frame.get("client_id") == pending:
                            acked = True
                            tally.unanswered[session].add(pending)
                        elif kind == "error":
                            tally.errors += 1
                            # retry: true means not stored: send it again after a pause
                            await asyncio.sleep(rng.uniform(1.0, 3.0))
                            break
                        elif kind == "status" and acked:
                            tally.latencies.append(time.perf_counter() - started)
                            tally.answered += 1
                            tally.unanswered[session].discard(pending)
                            pending = None
                            break
                    if pending is None and time.monotonic() < stop_at:
                        await think(ws, rng.uniform(0, 2 * ns.think))
        except (aiohttp.ClientError, ConnectionResetError, TimeoutError) as exc:
            tally.errors += 1
            tally.reconnects += 1
            tally.failures[f"{type(exc).__name__}: {exc}"[:80]] += 1
            await asyncio.sleep(BACKOFF_MIN_S * rng.uniform(0.75, 1.25))
    if pending is not None and pending not in tally.unanswered[session]:
        tally.unacknowledged += 1


async def check_transcripts(
    http: aiohttp.ClientSession, urls: list[str], tally: Tally
) -> tuple[int, int]:
    """(lost, answered late): acknowledged messages never seen answered, per the transcript."""
    lost = late = 0
    gate = asyncio.Semaphore(20)

    async def history_of(index: int, session: str) -> dict[str, Any]:
        async with gate:
            for attempt in range(5):
                url = urls[(index + attempt) % len(urls)]
                try:
                    async with asyncio.timeout(60), await open_session(http, url, session) as ws:
                        frame = await next_frame(ws, 60)
                        if frame["type"] == "history":
                            return frame
                except (aiohttp.ClientError, ConnectionResetError, TimeoutError):
                    pass
                await asyncio.sleep(2)
        raise RuntimeError(f"cannot read the transcript of session {session}")

    todo = [(s, ids) for s, ids in tally.unanswered.items() if ids]
    histories = await asyncio.gather(*(history_of(i, s) for i, (s, _) in enumerate(todo)))
    for (_, client_ids), history in zip(todo, histories, strict=True):
        messages = history["messages"]
        for client_id in client_ids:
            position = next(
                (i for i, m in enumerate(messages) if m.get("client_id") == client_id), None
            )
            answered = position is not None and any(
                m["role"] != "customer" for m in messages[position + 1 :]
            )
            # While an agent has the conversation the bot is silent on purpose.
            silent_on_purpose = position is not None and history["status"] != "bot"
            if answered or silent_on_purpose:
                late += 1
            else:
                lost += 1
    return lost, late


async def bounded(session: Coroutine[Any, Any, None], deadline: float, tally: Tally) -> None:
    """A session that has not finished 30 s after the drain is stopped and counted."""
    try:
        async with asyncio.timeout_at(
            asyncio.get_running_loop().time() + deadline + 30 - time.monotonic()
        ):
            await session
    except TimeoutError:
        tally.stuck += 1


async def progress(tally: Tally, began: float) -> None:
    """A line every 10 s, so a stuck run shows where it is."""
    while True:
        await asyncio.sleep(10)
        print(
            f"  {time.monotonic() - began:5.0f} s: sent {tally.sent}, answered {tally.answered}, "
            f"errors {tally.errors}",
            flush=True,
        )


async def soak(ns: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * ns.sessions + 256)), hard))
    texts = customer_texts(ns.data / "utterances.csv")
    urls = [u.rstrip("/") for u in ns.url]
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        for url in urls:
            async with http.get(f"{url}/readyz") as ready:
                if ready.status != 200:
                    print(f"{url} is not ready: {await ready.text()}")
                    return 2
        began = time.monotonic()
        stop_at = began + ns.ramp + ns.seconds
        reporter = asyncio.create_task(progress(tally, began))
        await asyncio.gather(
            *(
                bounded(
                    customer(http, urls, i, texts, ns, stop_at, tally), stop_at + ns.drain, tally
                )
                for i in range(ns.sessions)
            )
        )
        reporter.cancel()
        elapsed = time.monotonic() - began
        print(
            f"  checking the transcripts of {sum(1 for v in tally.unanswered.values() if v)} "
            "sessions with unanswered messages",
            flush=True,
        )
        lost, late = await check_transcripts(http, urls, tally)
    window = ns.seconds + ns.ramp
    latencies = np.array(tally.latencies) * 1000 if tally.latencies else np.array([0.0])
    print(
        f"soak: {ns.sessions} widget sessions on {len(urls)} replica(s) "
        f"({', '.join(urls)}), {window:.0f} s of traffic (ramp {ns.ramp:.0f} s), "
        f"think {ns.think:g} s, {elapsed:.0f} s wall"
    )
    print(
        f"  messages sent {tally.sent}, answered {tally.answered}, "
        f"{tally.answered / window:.1f} messages/s"
    )
    print(
        f"  latency p50 {np.percentile(latencies, 50):.0f} ms, "
        f"p90 {np.percentile(latencies, 90):.0f} ms, p99 {np.percentile(latencies, 99):.0f} ms"
    )
    print(
        f"  errors {tally.errors} (reconnects {tally.reconnects}), unacknowledged "
        f"{tally.unacknowledged}, stuck {tally.stuck}, answered only in the transcript {late}, "
        f"lost {lost}"
    )
    for failure, count in tally.failures.most_common(5):
        print(f"    {count} x {failure}")
    return 0 if lost == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", action="append", required=True, help="a replica's base URL (repeat for more)"
    )
    parser.add_argument("--sessions", type=int, default=1000, help="concurrent widget sessions")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to send")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds to open all sessions")
    parser.add_argument("--think", type=float, default=5.0, help="mean pause between messages")
    parser.add_argument("--drain", type=float, default=60.0, help="wait for answers in flight")
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="sample data folder")
    parser.add_argument("--seed", type=int, default=7)
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
