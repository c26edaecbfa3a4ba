"""The `supportbot` command: one entry point for the offline and the runtime commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from bot.core.errors import ConfigurationError, SupportbotError
from bot.core.logs import quiet_http_clients


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every command registered explicitly."""
    from bot.app.agents_cli import add_parsers as add_agents_parsers
    from bot.app.api_keys_cli import add_parsers as add_api_keys_parsers
    from bot.app.index_cli import add_parsers as add_index_parsers
    from bot.app.privacy_cli import add_parsers as add_privacy_parsers
    from bot.app.serve import add_parsers as add_serve_parsers
    from connectors.rasa_cli import add_parsers as add_rasa_parsers
    from training.cli import add_parsers as add_training_parsers

    parser = argparse.ArgumentParser(
        prog="supportbot",
        description="A customer-service bot that learns from your support team's chat logs.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, including the database migrations' progress",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_parsers(commands)
    add_training_parsers(commands)
    add_index_parsers(commands)
    add_rasa_parsers(commands)
    add_agents_parsers(commands)
    add_api_keys_parsers(commands)
    add_privacy_parsers(commands)
    return parser


def package_version() -> str:
    """The installed supportbot's version (from the package metadata)."""
    try:
        return metadata.version("supportbot")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown (not installed; pip install -e .)"


def announce_models(models_dir: Path, config: Path | None = None) -> None:
    """Tell running replicas that the live models changed, when a bus (Redis) is configured.

    Replicas also poll the registry, so this only makes the switch immediate; a missing or
    unreachable Redis is reported, not an error.
    """
    from bot.nlu.artifacts import read_live_versions
    from bot.settings import load_settings

    try:
        bus = load_settings(config).bus
    except ConfigurationError as exc:
        print(f"replicas not notified (settings: {exc}); they pick the change up by polling")
        return
    if not bus.url:
        return
    from bot.infra.redis import publish_once

    event = {"versions": read_live_versions(models_dir)}
    if asyncio.run(publish_once(bus.url, bus.prefix, "models", event)):
        print("running replicas notified through Redis; they reload now")
    else:
        print("Redis unreachable: running replicas pick the change up by polling")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors become a one-paragraph message and exit status 2."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_http_clients()  # httpx logs every request URL at INFO
    if not ns.verbose:
        # Alembic logs "Context impl SQLiteImpl" and every step at INFO on each migration
        # check, which every `agents` and `api-keys` command runs.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        status = int(ns.handler(ns))
        if status == 0 and ns.command == "models" and ns.action in ("promote", "rollback"):
            announce_models(ns.models_dir, ns.config)
        return status
    except SupportbotError as exc:
        print(f"supportbot {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"supportbot {ns.command}: interrupted; nothing half-written was kept", file=sys.stderr
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
