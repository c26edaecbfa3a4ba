"""Redis for several replicas: the event bus across processes, and per-conversation turn locks.

`RedisBus` implements `EventBus` on Redis pub/sub. Every topic is the Redis channel
`<prefix><topic>`; one pattern subscription (`<prefix>*`) per replica receives them all, so
topics need no subscribe round trip of their own. An event is handed to this replica's own
subscribers at once (in memory, so local delivery works even while Redis is away) and sent to
Redis for the others; each replica skips the copies it published itself.

Pub/sub is at-most-once: while a replica is disconnected, events for it are lost. That is
what the bus promises (events are hints; the store is the truth): after a reconnect every
subscriber gets `{"type": "lagged"}` and reloads what it shows from the store.

`RedisTurnLocks` serialises the turns of one conversation across replicas (see its docstring
for why a Redis lock and not a PostgreSQL advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from uuid import uuid4

from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.backoff import NoBackoff
from redis.exceptions import LockError, RedisError
from redis.retry import Retry

from bot.core.bus import Event, LocalBus, QueueSubscription
from bot.core.errors import ConfigurationError, StoreUnavailableError
from bot.core.ports import TurnLocks

log = logging.getLogger(__name__)

# Redis failures the bus and the locks survive (OSError: refused or reset connections that
# the client did not wrap).
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

PUBLISH_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 2.0
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
# The subscriber connection is idle between events; a PING this often finds a dead one (a
# restarted Redis, a dropped NAT entry) instead of waiting forever on a silent socket.
HEALTH_CHECK_S = 5
# Longest wait for a lock renewal in flight when a turn ends (a Redis command's timeout).
RENEW_STOP_S = PUBLISH_TIMEOUT_S + 1


def check_redis_url(url: str) -> str:
    """`url` if it names a Redis server, else a ConfigurationError saying what to give."""
    if not re.match(r"^(redis|rediss|unix)://", url):
        raise ConfigurationError(
            f"bus URL {url!r} is not a Redis URL; expected redis://HOST:6379/0 (or rediss:// "
            "for TLS), or leave SUPPORTBOT_BUS__URL unset for a single process"
        )
    return url


def _pattern_escape(text: str) -> str:
    """`text` with Redis glob characters escaped, for a PSUBSCRIBE pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class RedisBus:
    """`EventBus` across replicas on Redis pub/sub.

    Args:
        url: `redis://host:6379/0`.
        prefix: put before every channel name, so deployments (or tests) share one Redis.
        replica: this process's name, for logs.
        on_lost: called with the topic of each event that could not be sent to Redis
            (a metrics counter); publish itself never raises.
        on_reconnect: called after each reconnection (a metrics counter).
    """

    def __init__(
        self,
        url: str,
        prefix: str = "supportbot:",
        replica: str = "",
        on_lost: Callable[[str], None] | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.url = check_redis_url(url)
        self.prefix = prefix
        self.replica = replica
        # Tells this process's own events apart when Redis hands them back.
        self.origin = uuid4().hex
        self._on_lost = on_lost or (lambda topic: None)
        self._on_reconnect = on_reconnect or (lambda: None)
        # This process's subscribers; Redis only carries events between processes.
        self._local = LocalBus()
        self._client: Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self.reconnects = 0

    @property
    def client(self) -> Redis:
        """The command connection pool (also used by the turn locks)."""
        if self._client is None:
            raise RuntimeError("RedisBus.start() has not been called")
        return self._client

    @property
    def connected(self) -> bool:
        """Whether the subscriber connection is up (events from other replicas arrive)."""
        return self._connected.is_set()

    def channel(self, topic: str) -> str:
        return f"{self.prefix}{topic}"

    async def start(self, wait_s: float = CONNECT_TIMEOUT_S) -> None:
        """Connect; keep trying in the background if Redis does not answer within `wait_s`.

        A replica without Redis still serves its own customers (events are hints), so a
        missing Redis is logged, not fatal.
        """
        self._stopping = False
        # One retry: a pooled connection that Redis closed meanwhile is replaced once.
        self._client = Redis.from_url(
            self.url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=PUBLISH_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
        )
        self._reader = asyncio.create_task(self._read(), name="redis-bus")
        try:
            await asyncio.wait_for(self._connected.wait(), wait_s)
        except TimeoutError:
            log.error(
                "event bus: Redis at %s does not answer; serving this replica's own customers "
                "and retrying in the background",
                self._safe_url(),
            )

    async def stop(self) -> None:
        self._stopping = True
        if self._reader is not None:
            self._reader.cancel()
            # Bounded: the reader ends at its next check of _stopping even if redis-py
            # swallowed the cancellation.
            await asyncio.wait({self._reader}, timeout=HEALTH_CHECK_S + 1)
            self._reader = None
        self._connected.clear()
        if self._client is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._client.aclose()
            self._client = None
        await self._local.stop()

    async def publish(self, topic: str, event: Event) -> None:
        """Hand `event` to this replica's subscribers, then to the other replicas.

        Never raises: an event Redis does not take is logged and counted as lost.
        """
        self.deliver_local(topic, event)
        if self._client is None or not self._connected.is_set():
            # Down: do not make every message wait for a connect timeout.
            self._lost(topic, "Redis is not connected")
            return
        payload = json.dumps({"origin": self.origin, "event": event}, default=str)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._client.publish(self.channel(topic), payload)
        except REDIS_ERRORS as exc:
            self._lost(topic, f"{type(exc).__name__}: {exc}")

    def deliver_local(self, topic: str, event: Event) -> None:
        """Hand `event` to this process's subscribers of `topic`."""
        self._local.deliver_local(topic, event)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[QueueSubscription]:
        return self._local.subscribe(topic)

    def subscriber_count(self, topic: str) -> int:
        return self._local.subscriber_count(topic)

    # -- internals -------------------------------------------------------------------------

    def _lost(self, topic: str, why: str) -> None:
        self._on_lost(topic)
        log.warning("event bus: %s event not sent to other replicas (%s)", topic, why)

    def _safe_url(self) -> str:
        return re.sub(r"//[^@/]*@", "//***@", self.url)

    async def _read(self) -> None:
        """Receive other replicas' events; reconnect with backoff whenever the link breaks."""
        delay = BACKOFF_FIRST_S
        connected_before = False
        while not self._stopping:
            # Its own connection without retries: a broken link must surface here, so that
            # subscribers learn they lagged.
            client = Redis.from_url(
                self.url,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                health_check_interval=HEALTH_CHECK_S,
                retry=Retry(NoBackoff(), 0),
                # Named, so an operator (or a test) finds it in CLIENT LIST.
                client_name=f"supportbot-bus-{self.replica or 'replica'}-{self.origin[:8]}",
            )
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(f"{_pattern_escape(self.prefix)}*")
                self._connected.set()
                delay = BACKOFF_FIRST_S
                if connected_before:
                    self.reconnects += 1
                    self._on_reconnect()
                    log.warning("event bus: reconnected to Redis; subscribers resynchronise")
                    self._announce_lag()
                connected_before = True
                # Checked each round, not only cancelled: redis-py may swallow a cancellation
                # that lands while it reads.
                while not self._stopping:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=HEALTH_CHECK_S
                    )
                    if message is not None and message.get("type") == "pmessage":
                        self._receive(message["channel"], message["data"])
            except REDIS_ERRORS as exc:
                was_connected = self._connected.is_set()
                self._connected.clear()
                if was_connected:
                    log.error("event bus: lost Redis (%s); reconnecting", exc)
                    # Events published while we were away are gone: say so now, not only
                    # after the reconnect, so that views do not trust stale state meanwhile.
                    self._announce_lag()
                else:
                    log.warning("event bus: Redis unavailable (%s); retry in %.1f s", exc, delay)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()
                with contextlib.suppress(*REDIS_ERRORS):
                    await client.aclose()
            if self._stopping:
                break
            await asyncio.sleep(delay)
            delay = min(BACKOFF_MAX_S, delay * 2)

    def _receive(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        topic = name[len(self.prefix) :]
        try:
            envelope = json.loads(data)
            origin, event = envelope["origin"], envelope["event"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("event bus: ignoring a malformed event on %s: %s", name, exc)
            return
        if origin != self.origin and isinstance(event, dict):
            self.deliver_local(topic, event)

    def _announce_lag(self) -> None:
        # "models" subscribers treat any event as "check the registry now".
        self._local.announce_lag()


class RedisTurnLocks:
    """Holds one conversation's turn at a time across all replicas (a Redis lock per turn).

    Why Redis and not a PostgreSQL advisory lock: a session-level advisory lock must be held
    on one database connection for the whole turn, model call included, so every turn in
    flight would pin a pooled connection (100 concurrent conversations = 100 connections per
    replica, or requests queueing for the pool), and a transaction-level lock would need the
    whole turn in one transaction. A Redis lock (SET NX PX, released by a compare-and-delete
    script: redis-py's `Lock`) costs one round trip and no connection while held. Within a
    replica, turns queue on an asyncio lock first, so only one coroutine per conversation and
    replica polls Redis. The lock has a TTL, renewed while the turn runs, so a replica killed
    mid-turn blocks its conversation for at most `ttl_s`.

    If Redis is unreachable the turn proceeds under the replica's local lock only (logged):
    customers keep being answered; the store still keeps every message, in order.

    Args:
        bus: the connected RedisBus whose client to use.
        local: the per-process keyed locks (held around the Redis lock).
        ttl_s: lock lifetime without renewal.
        wait_s: longest wait for the lock; then StoreUnavailableError (503, retry later:
            the message is not stored yet).
    """

    def __init__(
        self,
        bus: RedisBus,
        local: TurnLocks,
        ttl_s: float = 10.0,
        wait_s: float = 30.0,
    ) -> None:
        self._bus = bus
        self._local = local
        self.ttl_s = ttl_s
        self.wait_s = wait_s

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        async with self._local.hold(key):
            lock = Lock(
                self._bus.client,
                f"{self._bus.prefix}turn:{key}",
                timeout=self.ttl_s,
                sleep=0.02,
                blocking_timeout=self.wait_s,
            )
            try:
                held = await lock.acquire()
            except REDIS_ERRORS as exc:
                log.warning(
                    "turn lock for %s not taken (Redis: %s); ordering across replicas is not "
                    "guaranteed until Redis is back",
                    key,
                    exc,
                )
                held = False
            else:
                if not held:
                    raise StoreUnavailableError(
                        f"conversation {key} is busy on another replica for over "
                        f"{self.wait_s:g} s; the message was not stored, send it again"
                    )
            done = asyncio.Event()
            renewer = asyncio.create_task(self._renew(lock, key, done)) if held else None
            try:
                yield
            finally:
                done.set()
                if renewer is not None:
                    # Not cancelled: redis-py may swallow a cancellation that lands mid-command
                    # (then a cancelled renewer renews forever and the turn never ends). The
                    # event ends it at once, or right after a renewal in flight.
                    await asyncio.wait({renewer}, timeout=RENEW_STOP_S)
                if held:
                    try:
                        await lock.release()
                    except (LockError, *REDIS_ERRORS) as exc:
                        # Expired (and maybe taken by another replica) or Redis away: the
                        # TTL frees it either way.
                        log.warning("turn lock for %s not released cleanly: %s", key, exc)

    async def _renew(self, lock: Lock, key: str, done: asyncio.Event) -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                # not wait_for: see bot/nlu/understander.py
                async with asyncio.timeout(self.ttl_s / 3):
                    await done.wait()
            if done.is_set():
                return
            try:
                await lock.reacquire()
            except (LockError, *REDIS_ERRORS) as exc:
                log.warning("turn lock for %s could not be renewed: %s", key, exc)
                return


async def publish_once(url: str, prefix: str, topic: str, event: Event) -> bool:
    """Publish one event from a short-lived command (e.g. `supportbot models promote`).

    Returns:
        Whether Redis took it (the command tells the operator; replicas poll anyway).
    """
    client = Redis.from_url(
        check_redis_url(url), socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=2
    )
    payload = json.dumps({"origin": "cli", "event": event})
    try:
        await client.publish(f"{prefix}{topic}", payload)
        return True
    except REDIS_ERRORS as exc:
        log.warning("could not publish the %s notice to Redis: %s", topic, exc)
        return False
    finally:
        with contextlib.suppress(*REDIS_ERRORS):
            await client.aclose()
