"""The composition root: builds every part from the settings and wires them into one app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.core import logs
from bot.core.bus import EventBus, LocalBus
from bot.core.delivery import Dispatcher
from bot.core.demotion import RatedAnswers
from bot.core.desk import AgentDesk
from bot.core.errors import (
    BadRequestError,
    ConfigurationError,
    ConflictError,
    ForbiddenError,
    ModelNotFoundError,
    NotFoundError,
    RateLimitedError,
    StoreUnavailableError,
    SupportbotError,
    UnauthorizedError,
)
from bot.core.escalation import EscalationPolicy
from bot.core.locks import KeyedLocks
from bot.core.metrics import Metrics
from bot.core.ports import ApiKeyStore
from bot.core.router import Router, RoutingConfig
from bot.core.service import ConversationService
from bot.infra.batching import MicroBatcher
from bot.infra.memory import trim_heap
from bot.infra.redis import RedisBus, RedisTurnLocks
from bot.nlu.understander import TransformerUnderstander
from bot.retrieval.embedder import SentenceEmbedder, Vectors
from bot.retrieval.index import EmbeddingAnswerIndex, ReloadingAnswerIndex, index_model
from bot.settings import ServerSettings, Settings
from bot.store.accounts import SqlAccountStore
from bot.store.api_keys import SqlApiKeyStore
from bot.store.conversations import SqlConversationStore
from bot.store.desk import SqlDeskStore
from bot.store.lease import SqlLease, lease_holder
from bot.store.privacy import PURGE_LEASE, RetentionPurge, SqlPrivacyStore
from connectors.console import ConsoleConnector
from connectors.openapi import OPENAPI
from connectors.rest import RestConnector, is_loopback
from connectors.telegram import TelegramConnector
from connectors.widget import WidgetConnector

log = logging.getLogger(__name__)

STATUS_OF: list[tuple[type[SupportbotError], int]] = [
    (BadRequestError, 400),
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (RateLimitedError, 429),
    (StoreUnavailableError, 503),
    (ModelNotFoundError, 503),
    (ConfigurationError, 500),
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map domain errors to HTTP status codes, in this one place."""
    try:
        return await handler(request)
    except SupportbotError as exc:
        status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 500)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc)
        headers = {"Retry-After": "1"} if status == 503 else None
        if isinstance(exc, RateLimitedError):
            headers = {"Retry-After": str(exc.retry_after)}
        return web.json_response({"error": str(exc)}, status=status, headers=headers)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tag everything logged for this request with its id (`X-Request-ID` in, or a new one),
    and echo the id in the response."""
    rid = logs.new_request_id(request.headers.get(logs.REQUEST_ID_HEADER))
    request_token = logs.request_id.set(rid)
    conversation_token = logs.conversation_id.set(None)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers[logs.REQUEST_ID_HEADER] = rid
            raise
        if not response.prepared:
            response.headers[logs.REQUEST_ID_HEADER] = rid
        return response
    finally:
        logs.conversation_id.reset(conversation_token)
        logs.request_id.reset(request_token)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the id on responses a handler prepares itself (WebSocket)."""
    rid = logs.request_id.get()
    if rid is not None and logs.REQUEST_ID_HEADER not in response.headers:
        response.headers[logs.REQUEST_ID_HEADER] = rid


@dataclass
class Runtime:
    """The running parts of one process, kept on the app for handlers and tests."""

    settings: Settings
    store: SqlConversationStore
    understander: TransformerUnderstander
    answers: ReloadingAnswerIndex
    embedder: SentenceEmbedder
    embed_batcher: MicroBatcher[str, Vectors]
    service: ConversationService
    metrics: Metrics
    executor: ThreadPoolExecutor
    embed_executor: ThreadPoolExecutor
    dispatcher: Dispatcher
    bus: EventBus
    router: Router
    rated: RatedAnswers


RUNTIME = web.AppKey("runtime", Runtime)


def build_runtime(settings: Settings) -> Runtime:
    """Choose and construct the concrete parts (nothing is started yet)."""
    # Serving runs torch on one thread by default: with two, OpenMP's spinning workers and
    # the event loop fight over the cores (measured: 59 -> 92 messages/s at 100 conversations).
    torch.set_num_threads(settings.nlu.threads)
    # One worker thread for every model call: torch already uses all cores inside one call,
    # and two concurrent forwards would only fight over them.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    # With two workers the answer-index encoder gets its own thread, so the embedding batch
    # of some messages runs while the intent/sentiment batch of the next ones does.
    embed_executor = (
        executor
        if settings.nlu.workers == 1
        else ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
    )
    metrics = Metrics(replica=settings.server.replica)
    bus: EventBus
    locks: KeyedLocks[str] = KeyedLocks()
    remote: RedisBus | None = None
    if settings.bus.url:
        remote = RedisBus(
            settings.bus.url,
            settings.bus.prefix,
            replica=settings.server.replica,
            on_lost=lambda topic: metrics.bus_events_lost.labels(topic).inc(),
            on_reconnect=metrics.bus_reconnects.inc,
        )
        bus = remote
    else:
        bus = LocalBus()
    store = SqlConversationStore(settings.store.url)
    # The answer index's encoder. When the classifiers were trained with the lower layers
    # frozen (the default), the understander runs its shared layers once for all three
    # models and hands the query embedding along with intent and sentiment.
    embedder = SentenceEmbedder(index_model(settings.retrieval.index_dir))
    understander = TransformerUnderstander(
        settings.models.dir,
        executor,
        max_batch=settings.nlu.max_batch,
        max_wait_ms=settings.nlu.max_wait_ms,
        quantized=settings.models.quantize,
        reload_interval_s=settings.models.reload_interval_s,
        bus=bus,
        query_encoder=embedder if settings.nlu.share_encoder else None,
        when_idle=trim_heap if settings.server.trim_memory_when_idle else None,
    )
    # Otherwise query embeddings go through the same worker, micro-batched too.
    embed_batcher: MicroBatcher[str, Vectors] = MicroBatcher(
        lambda texts: list(embedder(texts)),
        embed_executor,
        settings.nlu.max_batch,
        settings.nlu.max_wait_ms,
        name="embed",
    )
    metrics.model_reloads.set_function(lambda: understander.reloads)
    # A rebuilt index (`supportbot retrain`, `index build`) is picked up without a restart.
    answers = ReloadingAnswerIndex(
        settings.retrieval.index_dir,
        lambda directory: EmbeddingAnswerIndex.load(
            directory, embed=embedder, embed_async=embed_batcher.submit
        ),
        settings.models.reload_interval_s,
    )
    router = Router(RoutingConfig.load(settings.routing.config))
    router.check()
    # One process delivers pushed replies directly; replicas send them over the bus to
    # whichever replica holds the customer's socket.
    dispatcher = Dispatcher(remote)
    # The demoted answers: the service reads them, its ratings and the desk's touch them.
    rated = RatedAnswers()
    service = ConversationService(
        store,
        understander,
        answers,
        router,
        EscalationPolicy(settings.escalation),
        metrics,
        settings.retrieval.min_score,
        dispatcher,
        bus,
        # Per process by default: no cost on the embedded default. Across replicas a Redis
        # lock per turn (see RedisTurnLocks for why not a PostgreSQL advisory lock).
        RedisTurnLocks(remote, locks) if remote is not None else locks,
        hours=settings.handoff.business_hours(),
        ack_interval_s=settings.handoff.ack_interval_s,
        redact=settings.privacy.redact,
        min_margin=settings.retrieval.min_margin,
        # The answer library's disabled and edited answers, read from the database.
        controls=SqlDeskStore(store),
        rated=rated,
    )
    return Runtime(
        settings,
        store,
        understander,
        answers,
        embedder,
        embed_batcher,
        service,
        metrics,
        executor,
        embed_executor,
        dispatcher,
        bus,
        router,
        rated,
    )


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: models loaded and the store reachable."""
    runtime = request.app[RUNTIME]
    checks: dict[str, str] = {}
    checks["models"] = "ok" if runtime.understander.ready() else "loading"
    try:
        await runtime.store.ping()
        checks["store"] = "ok"
    except StoreUnavailableError as exc:
        checks["store"] = str(exc)
    ready = all(v == "ok" for v in checks.values())
    body = {"ready": ready, "checks": checks, "models": runtime.understander.versions}
    if isinstance(runtime.bus, RedisBus):
        # Reported, not required: without Redis a replica still serves its own customers.
        body["bus"] = "ok" if runtime.bus.connected else "reconnecting"
    body["replica"] = runtime.settings.server.replica
    return web.json_response(body, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    body = generate_latest(runtime.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


class Component(Protocol):
    """A part with a lifecycle: started once before serving, stopped once after."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def start_all(stack: contextlib.AsyncExitStack, components: Sequence[Component]) -> None:
    """Start `components` in order; each started one is stopped by `stack`, in reverse order,
    also when a later start fails (then the failure propagates after the stops)."""
    for component in components:
        await component.start()
        stack.push_async_callback(component.stop)


class Warmup:
    """Loads the answer-index encoder at start-up, not on the first customer's question."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        runtime = self.runtime
        await loop.run_in_executor(runtime.embed_executor, runtime.embedder, ["warm-up"])

    async def stop(self) -> None:
        return None


class LearnedEntityCheck:
    """Warns at start when the routing file declares learned entity types
    (`entities.learned`) that the live entity model does not find: a route requiring one
    then asks for it every time, since nothing in a message can fill it. Needs the started
    understander. A warning, not a refusal: the entity model may be trained after the
    routing file is written."""

    def __init__(self, declared: Sequence[str], found: Callable[[], Sequence[str]]) -> None:
        self.declared = tuple(declared)
        self.found = found

    async def start(self) -> None:
        missing = [name for name in self.declared if name not in set(self.found())]
        if missing:
            found = self.found()
            log.warning(
                "entities.learned: the live entity model does not find %s (%s); routes "
                "requiring them ask every time: train one with `supportbot train entity "
                "--data FILE` whose annotations use those types",
                ", ".join(missing),
                "it finds " + ", ".join(found) if found else "no entity model is live",
            )

    async def stop(self) -> None:
        return None


class ApiExposureCheck:
    """Refuses to start when the REST API would be open to other machines with nothing to
    check callers against: `server.host` is not loopback, no API key exists, and
    `server.allow_unauthenticated_api` is off. Needs the started store."""

    def __init__(self, server: ServerSettings, keys: ApiKeyStore) -> None:
        self.server = server
        self.keys = keys

    async def start(self) -> None:
        server = self.server
        if is_loopback(server.host) or server.allow_unauthenticated_api:
            return
        if await self.keys.any_active():
            return
        raise ConfigurationError(
            f"server.host is {server.host!r}, which other machines can reach, but no API key "
            f"exists, so anyone reaching port {server.port} could use the REST API (send "
            "messages as any customer, read transcripts); create a key first, on the same "
            "database (same --config or SUPPORTBOT_STORE__URL), with `supportbot api-keys "
            "create NAME` and give it to the API's clients, or bind to 127.0.0.1, or, only on "
            "a network you trust, set SUPPORTBOT_SERVER__ALLOW_UNAUTHENTICATED_API=true"
        )

    async def stop(self) -> None:
        return None


def create_app(settings: Settings, runtime: Runtime | None = None) -> web.Application:
    """The aiohttp application for `settings` (app-factory style).

    Args:
        settings: loaded once by the caller.
        runtime: already constructed parts (tests pass their own store URL through settings
            instead; this is for embedding supportbot in a larger app).
    """
    runtime = runtime or build_runtime(settings)
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[request_id_middleware, error_middleware],
    )
    app.on_response_prepare.append(echo_request_id)
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/api/v1/openapi.json", openapi)
    api_keys = SqlApiKeyStore(runtime.store)
    RestConnector(
        runtime.service,
        settings.server.max_message_chars,
        api_keys,
        settings.server.allow_unauthenticated_api,
    ).add_routes(app)
    WidgetConnector(
        runtime.service, settings.widget, runtime.dispatcher, settings.server.max_message_chars
    ).add_routes(app)
    desk = AgentDesk(
        runtime.store,
        SqlDeskStore(runtime.store),
        runtime.router,
        runtime.dispatcher,
        runtime.bus,
        runtime.metrics,
        runtime.understander.intent_labels,
        settings.escalation.unclaimed_timeout_s,
        hours=settings.handoff.business_hours(),
        ask_rating=settings.handoff.csat,
        answer_pairs=lambda: runtime.answers.current.pairs,
        excluded_answers=lambda: runtime.answers.current.excluded,
        rated=runtime.rated,
    )
    ConsoleConnector(
        desk,
        SqlAccountStore(runtime.store, settings.console),
        runtime.bus,
        settings.console,
        settings.server.public_url,
        settings.server.max_message_chars,
        settings.server.trusted_proxies,
    ).add_routes(app)
    # Started in this order and stopped in reverse; the exposure check and the desk's
    # unclaimed-timeout watcher need the started store (the check comes before the models
    # load, so a refusal is quick), Telegram needs everything.
    components: list[Component] = [
        runtime.bus,
        runtime.dispatcher,
        runtime.store,
        ApiExposureCheck(settings.server, api_keys),
        runtime.understander,
        LearnedEntityCheck(
            runtime.router.config.entities.learned, runtime.understander.entity_types
        ),
        Warmup(runtime),
        runtime.embed_batcher,
        runtime.answers,
        desk,
    ]
    if settings.privacy.retention_days is not None:
        # Needs the started store; one replica per interval purges (a lease in the database).
        holder = lease_holder(settings.server.replica)
        components.append(
            RetentionPurge(
                SqlPrivacyStore(runtime.store),
                SqlLease(runtime.store, PURGE_LEASE, holder),
                settings.privacy.retention_days,
                settings.privacy.purge_interval_s,
            )
        )
    if settings.telegram.token is not None:
        telegram = TelegramConnector(runtime.service, settings.telegram, runtime.dispatcher)
        telegram.add_routes(app)
        components.append(telegram)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(runtime.embed_executor.shutdown, wait=False, cancel_futures=True)
            stack.callback(runtime.executor.shutdown, wait=False, cancel_futures=True)
            await start_all(stack, components)
            yield

    app.cleanup_ctx.append(lifecycle)
    return app
