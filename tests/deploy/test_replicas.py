"""Several real `supportbot serve` processes on one PostgreSQL and one Redis, as deployed.

What docker-compose.yml runs, without Docker: each replica is a subprocess (`python -m
bot.app.cli serve --port N`) configured only through SUPPORTBOT_* variables, on a PostgreSQL
schema of this module's own, the local Redis under a channel prefix of its own, and the test
models. The checks read the database directly: what a client was told was accepted must be
there exactly once, answered once.

The PostgreSQL restart test starts a private PostgreSQL (initdb + pg_ctl into a temporary
directory, as user postgres when run as root), so that stopping it disturbs nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from tests.helpers import PG_SKIP_REASON, REDIS_SKIP_REASON, REDIS_URL, pg_admin

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PG_SKIP_REASON is not None, reason=PG_SKIP_REASON or ""),
    pytest.mark.skipif(REDIS_SKIP_REASON is not None, reason=REDIS_SKIP_REASON or ""),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def replica_env(models: Path, store_url: str, prefix: str, name: str) -> dict[str, str]:
    """The environment of one replica: everything through SUPPORTBOT_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTBOT_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "SUPPORTBOT_STORE__URL": store_url,
            "SUPPORTBOT_BUS__URL": REDIS_URL,
            "SUPPORTBOT_BUS__PREFIX": prefix,
            "SUPPORTBOT_SERVER__REPLICA": name,
            "SUPPORTBOT_SERVER__LOG_FORMAT": "json",
            "SUPPORTBOT_MODELS__DIR": str(models),
            "SUPPORTBOT_MODELS__TRAIN_IF_MISSING": "false",
            "SUPPORTBOT_RETRIEVAL__INDEX_DIR": str(models / "answers"),
            "SUPPORTBOT_RETRIEVAL__BUILD_IF_MISSING": "false",
            "SUPPORTBOT_RETRIEVAL__MIN_SCORE": "0.5",
        }
    )
    return env


class Replica:
    """One `supportbot serve` process."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"replica-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.app.cli", "serve", "--port", str(self.port)],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"replica {self.name} exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"replica {self.name} not ready in {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """kill -9: no shutdown, no goodbye to clients."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records


def start_all(replicas: list[Replica]) -> None:
    """Start side by side (they migrate the same database at once, as in production)."""
    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            replica.wait_ready()
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise


@dataclass
class Cluster:
    a: Replica
    b: Replica
    store_dsn: str  # asyncpg DSN of the replicas' database role (its own schema)
    models: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def cluster(runtime_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    role = f"supportbot_test_{uuid4().hex[:12]}"
    asyncio.run(
        pg_admin(f'CREATE ROLE "{role}" LOGIN; CREATE SCHEMA "{role}" AUTHORIZATION "{role}"')
    )
    store_url = f"postgresql+asyncpg://{role}@127.0.0.1:5432/test"
    prefix = f"test-{uuid4().hex[:10]}:"
    logs = tmp_path_factory.mktemp("replicas")
    a = Replica("a", replica_env(runtime_models, store_url, prefix, "a"), logs)
    b = Replica("b", replica_env(runtime_models, store_url, prefix, "b"), logs)
    try:
        start_all([a, b])
        yield Cluster(a, b, f"postgresql://{role}@127.0.0.1:5432/test", runtime_models, a.env)
    finally:
        a.stop()
        b.stop()
        asyncio.run(
            pg_admin(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';"
                f'DROP SCHEMA "{role}" CASCADE; DROP ROLE "{role}"'
            )
        )


async def send(
    http: aiohttp.ClientSession, replica: Replica, sender: str, text: str, client_id: str
) -> dict[str, Any]:
    async with http.post(
        f"{replica.url}/api/v1/messages",
        json={"sender": sender, "text": text, "client_id": client_id},
    ) as answer:
        body: dict[str, Any] = await answer.json()
        assert answer.status == 200, body
        return body


async def rows(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def messages_of(dsn: str, conversation_id: str) -> list[asyncpg.Record]:
    return await rows(
        dsn,
        "SELECT id, role, text, client_id, reply_to, route FROM messages "
        "WHERE conversation_id = $1 ORDER BY id",
        conversation_id,
    )


# -- a conversation across replicas ----------------------------------------------------------


async def test_a_conversation_moves_between_replicas_mid_way(cluster: Cluster) -> None:
    sender = f"mover-{uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http:
        first = await send(http, cluster.a, sender, "hi", "m1")
        second = await send(http, cluster.b, sender, "i want to talk to a human", "m2")
        # Replica A sees the hand-off B's turn made: the bot stays silent now.
        third = await send(http, cluster.a, sender, "hello? is anyone there?", "m3")
        conversation_id = first["conversation_id"]
        assert second["conversation_id"] == third["conversation_id"] == conversation_id
        assert first["status"] == "bot" and first["replies"][0]["route"] == "response"
        assert second["status"] == "waiting" and second["replies"][0]["route"] == "handoff"
        assert third["status"] == "waiting" and third["replies"] == []
        async with http.get(f"{cluster.b.url}/api/v1/conversations/{conversation_id}") as got:
            transcript = await got.json()
    roles = [(m["role"], m["text"]) for m in transcript["messages"]]
    assert roles[0::2] == [
        ("customer", "hi"),
        ("customer", "i want to talk to a human"),
        ("customer", "hello? is anyone there?"),
    ]
    assert [role for role, _ in roles] == ["customer", "bot", "customer", "bot", "customer"]
    assert transcript["messages"][-1]["route"] == "agent"
    stored = await messages_of(cluster.store_dsn, conversation_id)
    assert [m["client_id"] for m in stored if m["role"] == "customer"] == ["m1", "m2", "m3"]


async def test_two_messages_at_once_on_two_replicas_are_handled_in_turn(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        for attempt in range(4):
            sender = f"racer-{uuid4().hex[:8]}"
            # Start the conversation, so that both messages only have the turn to race for.
            await send(http, cluster.a, sender, "hi", "start")
            human, order = await asyncio.gather(
                send(http, cluster.a, sender, "i want to talk to a human", f"h{attempt}"),
                send(http, cluster.b, sender, "where is my order", f"o{attempt}"),
            )
            stored = await messages_of(cluster.store_dsn, human["conversation_id"])
            customer = [m for m in stored if m["role"] == "customer"][1:]
            assert len(customer) == 2
            earlier, later = customer
            # The earlier message's turn was over before the later one was stored...
            after_earlier = [m for m in stored if earlier["id"] < m["id"] < later["id"]]
            if earlier["client_id"].startswith("h"):
                assert [m["route"] for m in after_earlier] == ["handoff"]
                # ...and the later decision saw it: the bot stays silent for the agent.
                assert later["route"] == "agent" and order["replies"] == []
            else:
                assert [m["reply_to"] for m in after_earlier] == [earlier["id"]]
                assert later["route"] == "handoff"
            # Every answer follows its own question, none interleaved.
            for message in stored:
                if message["reply_to"] is not None:
                    previous = [m for m in stored if m["id"] < message["id"]][-1]
                    assert previous["id"] == message["reply_to"]


# -- an agent on one replica, the customer's socket on another --------------------------------


async def add_agent(cluster: Cluster, name: str, password: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.app.cli",
        "agents",
        "add",
        name,
        "--role",
        "agent",
        "--password",
        password,
        cwd=REPO,
        env=cluster.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


async def receive_until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = await asyncio.wait_for(ws.receive_json(), 20)
        if frame["type"] == kind:
            return frame


async def test_an_agent_on_replica_a_answers_a_widget_customer_on_replica_b(
    cluster: Cluster,
) -> None:
    session = f"widget{uuid4().hex[:12]}"
    agent, password = f"bo{uuid4().hex[:6]}", "correct horse battery"
    await add_agent(cluster, agent, password)
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with (
        aiohttp.ClientSession(cookie_jar=jar) as http,
        http.ws_connect(f"{cluster.b.url}/ws") as ws,
    ):
        await ws.send_json({"type": "hello", "session": session})
        await receive_until(ws, "history")
        await ws.send_json(
            {"type": "message", "text": "i want to talk to a human", "client_id": "w1"}
        )
        ack = await receive_until(ws, "ack")
        assert (await receive_until(ws, "status"))["status"] == "waiting"
        stored = await rows(
            cluster.store_dsn,
            "SELECT conversation_id FROM messages WHERE id = $1",
            ack["message_id"],
        )
        conversation_id = stored[0]["conversation_id"]

        api = f"{cluster.a.url}/console/api"
        async with http.post(f"{api}/session", json={"name": agent, "password": password}) as r:
            assert r.status == 200, await r.text()
            csrf = {"X-CSRF-Token": (await r.json())["csrf_token"]}
        async with http.post(f"{api}/conversations/{conversation_id}/claim", headers=csrf) as r:
            assert r.status == 200, await r.text()
        async with http.post(
            f"{api}/conversations/{conversation_id}/reply",
            json={"text": "Hi, this is Bo from support."},
            headers=csrf,
        ) as r:
            assert r.status == 201, await r.text()
        # Pushed across replicas, in order: "<agent> joined" with the claimed status, then
        # the agent's reply.
        frames: list[dict[str, Any]] = []
        while not (frames and frames[-1]["type"] == "reply" and frames[-1]["role"] == "agent"):
            frames.append(await asyncio.wait_for(ws.receive_json(), 20))
        replies = [(f["role"], f["text"]) for f in frames if f["type"] == "reply"]
        assert replies == [
            ("system", f"{agent} joined the conversation."),
            ("agent", "Hi, this is Bo from support."),
        ]
        assert [f["status"] for f in frames if f["type"] == "status"][-1:] == ["claimed"]


# -- logs and metrics per replica --------------------------------------------------------------


async def test_each_replica_logs_json_with_ids_and_serves_its_own_metrics(
    cluster: Cluster,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{cluster.b.url}/api/v1/messages",
            json={"sender": f"log-{uuid4().hex[:6]}", "text": "hi", "client_id": "l1"},
            headers={"X-Request-ID": "req-from-proxy-42"},
        ) as answer:
            assert answer.headers["X-Request-ID"] == "req-from-proxy-42"
        async with http.get(f"{cluster.a.url}/healthz") as answer:
            assert len(answer.headers["X-Request-ID"]) == 32  # generated
        for replica in (cluster.a, cluster.b):
            async with http.get(f"{replica.url}/metrics") as answer:
                text = await answer.text()
            assert f'supportbot_replica_info{{replica="{replica.name}"}} 1.0' in text
    records = cluster.b.log_records()
    assert records, "replica b logs JSON lines"
    assert all({"time", "level", "logger", "message", "replica"} <= r.keys() for r in records)
    assert {r["replica"] for r in records} == {"b"}


# -- kill -9 under load -------------------------------------------------------------------------

LOAD_TEXTS = ("hi", "where is my order", "how long does a refund take", "hello there")


@dataclass
class LoadLog:
    """What the clients were told: accepted messages and feedback, and every reply seen."""

    accepted: dict[tuple[str, str], int] = field(default_factory=dict)  # (sender, cid) -> id
    replies: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    feedback: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    retries: int = 0

    def accept(self, key: tuple[str, str], message_id: int, replies: Iterable[int]) -> None:
        """Note a message accepted as `message_id`: the same one whenever the client sends it
        again, with the replies the client saw."""
        assert self.accepted.setdefault(key, message_id) == message_id
        self.replies.setdefault(key, set()).update(replies)


@dataclass
class Load:
    """What the load clients share: one HTTP session, the replicas they alternate between,
    the signal to stop and the log of what they were told."""

    http: aiohttp.ClientSession
    replicas: list[Replica]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    log: LoadLog = field(default_factory=LoadLog)

    async def run(
        self,
        clients: Iterable[Coroutine[Any, Any, None]],
        disruption: Callable[[], Awaitable[object]],
        before_s: float,
        after_s: float,
    ) -> int:
        """Run the clients `before_s` seconds, disrupt, run them `after_s` seconds more, then
        stop them and wait until each has stopped.

        Returns:
            How many messages were accepted before the disruption.
        """
        tasks = [asyncio.create_task(client) for client in clients]
        await asyncio.sleep(before_s)
        accepted = len(self.log.accepted)
        await disruption()
        await asyncio.sleep(after_s)
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        return accepted


async def rest_client(load: Load, name: str) -> None:
    """Sends messages one after another, alternating replicas; a failed send is retried, with
    the same client id, on the next replica (as a proxy or a client library would)."""
    http, replicas, log = load.http, load.replicas, load.log
    sender = f"{name}-{uuid4().hex[:6]}"
    for n in itertools.count():
        if load.stop.is_set():
            return
        client_id = f"{name}-{n}"
        payload = {
            "sender": sender,
            "text": LOAD_TEXTS[n % len(LOAD_TEXTS)],
            "client_id": client_id,
        }
        deadline = time.monotonic() + 60
        for attempt in itertools.count(n):
            replica = replicas[attempt % len(replicas)]
            try:
                async with http.post(f"{replica.url}/api/v1/messages", json=payload) as answer:
                    if answer.status == 200:
                        body = await answer.json()
                        break
                    if answer.status == 503:
                        assert answer.headers.get("Retry-After"), "503 without Retry-After"
                    else:
                        log.refused.append(f"{answer.status}: {await answer.text()}")
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            log.retries += 1
            assert time.monotonic() < deadline, f"{client_id} never accepted"
            await asyncio.sleep(0.2)
        replies = body["replies"]
        log.accept((sender, client_id), body["message_id"], (r["message_id"] for r in replies))
        rateable = [r for r in replies if r["rateable"]]
        if rateable and n % 2 == 0:
            await send_feedback(load, rateable[0]["message_id"])


async def send_feedback(load: Load, message_id: int) -> None:
    for replica in load.replicas:
        try:
            async with load.http.post(
                f"{replica.url}/api/v1/feedback", json={"message_id": message_id, "rating": "up"}
            ) as answer:
                if answer.status == 201:
                    load.log.feedback.append((await answer.json())["id"])
                    return
        except (TimeoutError, aiohttp.ClientError):
            continue


async def widget_client(load: Load, name: str) -> None:
    """A browser: one socket; when it breaks, reconnect to the next replica and send the
    unacknowledged message again with the same client id (as widget.js does)."""
    stop, log = load.stop, load.log
    session = f"{name}{uuid4().hex[:12]}"
    pending: list[tuple[str, str]] = []
    n = 0
    for attempt in itertools.count():
        if stop.is_set() and not pending:
            return
        replica = load.replicas[attempt % len(load.replicas)]
        try:
            async with load.http.ws_connect(f"{replica.url}/ws") as ws:
                await ws.send_json({"type": "hello", "session": session})
                await receive_until(ws, "history")
                while not (stop.is_set() and not pending):
                    if not pending:
                        pending.append((f"{name}-{n}", LOAD_TEXTS[n % len(LOAD_TEXTS)]))
                        n += 1
                    client_id, text = pending[0]
                    await ws.send_json({"type": "message", "text": text, "client_id": client_id})
                    ack = await receive_until(ws, "ack")
                    got: set[int] = set()
                    while True:
                        frame = await asyncio.wait_for(ws.receive_json(), 30)
                        if frame["type"] == "reply":
                            got.add(frame["message_id"])
                        elif frame["type"] == "status":
                            break
                    log.accept((session, client_id), ack["message_id"], got)
                    pending.pop(0)
        except (TimeoutError, aiohttp.ClientError, TypeError, ConnectionError):
            # TypeError: receive_json on a CLOSE frame (the replica died).
            log.retries += 1
            await asyncio.sleep(0.3)


async def check_nothing_lost_or_doubled(dsn: str, log: LoadLog) -> dict[str, int]:
    """Every accepted message stored once and answered once; every accepted feedback stored."""
    stored = await rows(
        dsn,
        "SELECT c.sender, m.client_id, m.id, m.route, "
        "(SELECT count(*) FROM messages r WHERE r.reply_to = m.id) AS answers "
        "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE m.role = 'customer'",
    )
    by_key: dict[tuple[str, str], list[asyncpg.Record]] = {}
    for row in stored:
        by_key.setdefault((row["sender"], row["client_id"]), []).append(row)
    problems = []
    for key, message_id in log.accepted.items():
        found = by_key.get(key, [])
        if [r["id"] for r in found] != [message_id]:
            problems.append(f"{key}: accepted as {message_id}, stored as {found}")
        elif found[0]["answers"] != (0 if found[0]["route"] == "agent" else 1):
            # Once, unless a hand-off before it made the bot wait for an agent.
            problems.append(f"{key}: answered {found[0]['answers']} times")
        elif len(log.replies.get(key, set())) > 1:
            problems.append(f"{key}: the client saw different replies {log.replies[key]}")
    feedback = {r["id"] for r in await rows(dsn, "SELECT id FROM feedback")}
    problems += [f"feedback {f} accepted but not stored" for f in log.feedback if f not in feedback]
    assert problems == [], "\n".join(problems[:20])
    return {"accepted": len(log.accepted), "feedback": len(log.feedback), "retries": log.retries}


async def test_killing_a_replica_under_load_loses_and_doubles_nothing(cluster: Cluster) -> None:
    # The last test on this cluster: replica B does not come back.
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        load = Load(http, [cluster.b, cluster.a])
        clients = [
            *(rest_client(load, f"rest{i}") for i in range(12)),
            *(widget_client(load, f"ws{i}") for i in range(8)),
        ]
        kill_b = partial(asyncio.to_thread, cluster.b.kill)
        accepted_before = await load.run(clients, kill_b, before_s=6, after_s=6)
    log = load.log
    assert log.refused == []
    assert accepted_before > 10 and len(log.accepted) > accepted_before
    figures = await check_nothing_lost_or_doubled(cluster.store_dsn, log)
    print(f"kill -9 under load: {figures}")


# -- PostgreSQL restart under load -----------------------------------------------------------


def pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    located = shutil.which(name)
    if located is None:
        pytest.skip(f"PostgreSQL's {name} is not installed (looked in /usr/lib/postgresql)")
    return located


class PrivatePostgres:
    """A throw-away PostgreSQL server in a temporary directory, on a free port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="supportbot-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user: str | None = "postgres" if os.geteuid() == 0 else None

    def run(self, *command: str) -> None:
        full = list(command)
        if self.user is not None:  # initdb refuses to run as root
            full = ["runuser", "-u", self.user, "--", *full]
        result = subprocess.run(full, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{' '.join(full)}:\n{result.stdout}\n{result.stderr}"

    def init(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, self.user)
        self.run(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run(
            pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l",
            str(self.root / "log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        # fast: what a restart or failover does to open connections.
        self.run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def remove(self) -> None:
        with contextlib.suppress(AssertionError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


async def test_a_postgresql_restart_under_load_fails_cleanly_and_loses_nothing(
    runtime_models: Path, tmp_path: Path
) -> None:
    postgres = PrivatePostgres()
    replica: Replica | None = None
    try:
        postgres.init()
        postgres.start()
        store_url = f"postgresql+asyncpg://postgres@127.0.0.1:{postgres.port}/postgres"
        prefix = f"test-{uuid4().hex[:10]}:"
        replica = Replica("p", replica_env(runtime_models, store_url, prefix, "p"), tmp_path)
        await asyncio.to_thread(start_all, [replica])

        async def restart_postgres() -> None:
            await asyncio.to_thread(postgres.stop)
            await asyncio.sleep(2)
            await asyncio.to_thread(postgres.start)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            load = Load(http, [replica])
            clients = [rest_client(load, f"pg{i}") for i in range(16)]
            accepted_before = await load.run(clients, restart_postgres, before_s=4, after_s=5)
        log = load.log
        assert log.refused == []
        assert accepted_before > 5 and len(log.accepted) > accepted_before
        assert log.retries > 0, "the restart was noticed (503 + Retry-After, then retried)"
        figures = await check_nothing_lost_or_doubled(postgres.dsn, log)
        print(f"PostgreSQL restart under load: {figures}")
    finally:
        if replica is not None:
            replica.stop()
        postgres.remove()
