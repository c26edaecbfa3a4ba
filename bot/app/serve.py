"""`supportbot serve`: prepare what is missing on the embedded default, then run the app."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.core.errors import ConfigurationError
from bot.core.logs import configure_logging
from bot.core.router import RoutingConfig
from bot.infra.memory import return_freed_memory
from bot.nlu.artifacts import TASKS, read_live_versions
from bot.settings import Settings, load_settings

log = logging.getLogger(__name__)


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    """Register `serve`."""
    serve = commands.add_parser(
        "serve",
        help="run the bot: REST API, widget socket, /healthz, /readyz, /metrics",
        description="Start the bot. Settings come from --config (YAML), then SUPPORTBOT_* "
        "environment variables (SUPPORTBOT_<SECTION>__<KEY>), then these flags.",
    )
    serve.add_argument("--config", type=Path, help="YAML settings file")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    serve.add_argument(
        "--prepare-only",
        action="store_true",
        help="train missing models, build a missing answer index, migrate the database, exit",
    )
    serve.set_defaults(handler=run_serve)


def prepare(settings: Settings) -> None:
    """Train models and build the answer index if they are missing and allowed to be made.

    This is what makes the first `make run` on a fresh machine work with no set-up.
    """
    models = settings.models
    live = read_live_versions(models.dir)
    missing = [task for task in TASKS if task not in live]
    if missing and models.train_if_missing:
        from training.arguments import TrainingArguments
        from training.pipeline import JOINT_TASKS, train_joint, train_task

        print(
            f"no live {' or '.join(missing)} model in {models.dir}: training on "
            f"{', '.join(map(str, models.train_data))} (first run only)",
            flush=True,
        )
        if set(missing) == set(JOINT_TASKS):
            # Both on one encoder: the bot then runs their tuned layers once per message.
            runs = train_joint(models.train_data, models.dir, TrainingArguments(), promote=True)
        else:
            runs = [
                train_task(task, models.train_data, models.dir, TrainingArguments(), promote=True)
                for task in missing
            ]
        for run in runs:
            print(run.report, flush=True)
    index = settings.retrieval
    if not (index.index_dir / "index.json").exists() and index.build_if_missing:
        from bot.app.index_cli import approved_from_store, build_index
        from bot.retrieval.sources import AnswerPair

        print(
            f"no answer index in {index.index_dir}: building it from "
            f"{', '.join(map(str, [*index.data, *index.faq]))}",
            flush=True,
        )
        from bot.core.router import RoutingConfig

        entities = RoutingConfig.load(settings.routing.config).entities
        said = []

        def approved() -> list[AnswerPair]:
            pairs, line = approved_from_store(settings)
            said.append(line)
            return pairs

        _, report = build_index(
            [*index.data, *index.faq], index.index_dir, entities=entities, approved=approved
        )
        print("\n".join([*said, *report.lines()]), flush=True)
    url = settings.store.url
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            Path(url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


async def migrate(settings: Settings) -> None:
    """Bring the database schema up to date (what every replica also does at start)."""
    from bot.store.conversations import SqlConversationStore

    store = SqlConversationStore(settings.store.url)
    await store.start()
    await store.stop()


def limit_blas_threads() -> None:
    """One thread for numpy's BLAS (OpenBLAS) in the serving process.

    Serving multiplies small matrices with numpy (the out-of-scope detector's nearest
    neighbours, the answer search), and OpenBLAS's extra threads spin after each one: measured
    on 2 cores, 74 ms of CPU per REST message against 31 ms with one BLAS thread, for 5 ms
    less wall time, the spinning taking the CPU that other conversations need (0.64x the
    throughput of release b03b01a at 100 conversations). torch keeps its own threads.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def run_serve(ns: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    server = {k: v for k, v in (("host", ns.host), ("port", ns.port)) if v is not None}
    if server:
        overrides["server"] = server
    settings = load_settings(ns.config, **overrides)
    configure_logging(
        settings.server.log_format, settings.server.replica, logging.getLogger().level
    )
    # Cheap checks first: a typo in the routing file or a busy port should not cost the
    # minutes of loading (or training) models before it is reported.
    RoutingConfig.load(settings.routing.config)
    if not ns.prepare_only:
        check_port_free(settings.server.host, settings.server.port)
    prepare(settings)
    if ns.prepare_only:
        asyncio.run(migrate(settings))
        print(f"ready: models in {settings.models.dir}, database migrated", flush=True)
        return 0
    from bot.app.factory import create_app

    limit_blas_threads()
    if settings.server.return_freed_memory and not return_freed_memory():
        logging.getLogger(__name__).warning(
            "server.return_freed_memory: this C library has no mallopt (not glibc); ignored"
        )
    app = create_app(settings)
    host, port = settings.server.host, settings.server.port
    base = settings.server.public_url or f"http://{host}:{port}"

    def announce(_: str) -> None:
        print(f"supportbot is running on {base}", flush=True)
        print(f"  web chat     {base}/  (demo page; embed {base}/widget.js on yours)")
        print(f"  agents       {base}/console  (accounts: supportbot agents add NAME --role agent)")
        print(f"  REST API     {base}/api/v1/messages  (OpenAPI: {base}/api/v1/openapi.json)")
        print(f"  health       {base}/healthz  {base}/readyz  {base}/metrics", flush=True)

    try:
        web.run_app(app, host=host, port=port, print=announce, access_log=None)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Taken between the check and now (another process started meanwhile).
        raise ConfigurationError(_busy(host, port)) from None
    return 0


def _busy(host: str, port: int) -> str:
    return (
        f"cannot listen on {host}:{port}: the port is in use (another supportbot?); stop "
        "that process or choose another port with --port or server.port (0 picks a free one)"
    )


def check_port_free(host: str, port: int) -> None:
    """Refuse early when `host:port` cannot be listened on.

    Binds (with SO_REUSEADDR, as aiohttp does) and closes again at once.

    Raises:
        ConfigurationError: the port is taken, or the address is not this machine's.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror}; check --host or server.host"
        ) from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigurationError(_busy(host, port)) from None
                raise ConfigurationError(
                    f"cannot listen on {host}:{port}: {exc.strerror}; check --host or "
                    "server.host (an address of this machine) and --port or server.port"
                ) from None
