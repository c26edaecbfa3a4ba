"""The composition root: builds every part from the settings and wires them into one app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.batching import MicroBatcher
from bot.bus import EventBus, LocalBus
from bot.delivery import Dispatcher
from bot.errors import (
    BadRequestError,
    ConfigurationError,
    ConflictError,
    ModelNotFoundError,
    NotFoundError,
    StoreUnavailableError,
    SupportbotError,
)
from bot.escalation import EscalationPolicy
from bot.metrics import Metrics
from bot.nlu import TransformerUnderstander
from bot.openapi import OPENAPI
from bot.retrieval import EmbeddingAnswerIndex, SentenceEmbedder, Vectors, index_model
from bot.router import Router, RoutingConfig
from bot.service import ConversationService
from bot.settings import Settings
from bot.store import SqlConversationStore
from connectors.rest import RestConnector
from connectors.telegram import TelegramConnector
from connectors.widget import WidgetConnector

log = logging.getLogger(__name__)

STATUS_OF: list[tuple[type[SupportbotError], int]] = [
    (BadRequestError, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
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
        return web.json_response({"error": str(exc)}, status=status, headers=headers)


@dataclass
class Runtime:
    """The running parts of one process, kept on the app for handlers and tests."""

    settings: Settings
    store: SqlConversationStore
    understander: TransformerUnderstander
    answers: EmbeddingAnswerIndex
    embedder: SentenceEmbedder
    embed_batcher: MicroBatcher[str, Vectors]
    service: ConversationService
    metrics: Metrics
    executor: ThreadPoolExecutor
    dispatcher: Dispatcher
    bus: EventBus


RUNTIME = web.AppKey("runtime", Runtime)


def build_runtime(settings: Settings) -> Runtime:
    """Choose and construct the concrete parts (nothing is started yet)."""
    # Serving runs torch on one thread by default: with two, OpenMP's spinning workers and
    # the event loop fight over the cores (measured: 59 -> 92 messages/s at 100 conversations).
    torch.set_num_threads(settings.nlu.threads)
    # One worker thread for every model call: torch already uses all cores inside one call,
    # and two concurrent forwards would only fight over them.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    metrics = Metrics()
    store = SqlConversationStore(settings.store.url)
    understander = TransformerUnderstander(
        settings.models.dir,
        executor,
        max_batch=settings.nlu.max_batch,
        max_wait_ms=settings.nlu.max_wait_ms,
        quantized=settings.models.quantize,
        reload_interval_s=settings.models.reload_interval_s,
    )
    # Query embeddings for the answer index go through the same worker, micro-batched too.
    embedder = SentenceEmbedder(index_model(settings.retrieval.index_dir))
    embed_batcher: MicroBatcher[str, Vectors] = MicroBatcher(
        lambda texts: list(embedder(texts)),
        executor,
        settings.nlu.max_batch,
        settings.nlu.max_wait_ms,
        name="embed",
    )
    metrics.model_reloads.set_function(lambda: understander.reloads)
    answers = EmbeddingAnswerIndex.load(
        settings.retrieval.index_dir, embed=embedder, embed_async=embed_batcher.submit
    )
    router = Router(RoutingConfig.load(settings.routing.config))
    router.check()
    dispatcher = Dispatcher()
    bus = LocalBus()
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
        dispatcher,
        bus,
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
    return web.json_response(body, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    body = generate_latest(runtime.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def create_app(settings: Settings, runtime: Runtime | None = None) -> web.Application:
    """The aiohttp application for `settings` (app-factory style).

    Args:
        settings: loaded once by the caller.
        runtime: already constructed parts (tests pass their own store URL through settings
            instead; this is for embedding supportbot in a larger app).
    """
    runtime = runtime or build_runtime(settings)
    app = web.Application(
        client_max_size=settings.server.max_body_bytes, middlewares=[error_middleware]
    )
    app[RUNTIME] = runtime

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await runtime.bus.start()
        await runtime.store.start()
        await runtime.understander.start()
        # Load the encoder now, not on the first customer's question.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(runtime.executor, runtime.embedder, ["warm-up"])
        await runtime.embed_batcher.start()
        try:
            yield
        finally:
            await runtime.embed_batcher.stop()
            await runtime.understander.stop()
            await runtime.store.stop()
            await runtime.bus.stop()
            runtime.executor.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/api/v1/openapi.json", openapi)
    RestConnector(runtime.service, settings.server.max_message_chars).add_routes(app)
    WidgetConnector(
        runtime.service, settings.widget, runtime.dispatcher, settings.server.max_message_chars
    ).add_routes(app)
    if settings.telegram.token is not None:
        telegram = TelegramConnector(runtime.service, settings.telegram, runtime.dispatcher)
        telegram.add_routes(app)

        async def telegram_lifecycle(app: web.Application) -> AsyncIterator[None]:
            await telegram.start()
            try:
                yield
            finally:
                await telegram.stop()

        app.cleanup_ctx.append(telegram_lifecycle)
    return app
