"""The `supportbot` command: one entry point for the offline and the runtime commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bot.errors import SupportbotError


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every command registered explicitly."""
    from bot.retrieval_cli import add_parsers as add_index_parsers
    from bot.serve import add_parsers as add_serve_parsers
    from connectors.rasa_cli import add_parsers as add_rasa_parsers
    from training.cli import add_parsers as add_training_parsers

    parser = argparse.ArgumentParser(
        prog="supportbot",
        description="A customer-service bot that learns from your support team's chat logs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_parsers(commands)
    add_training_parsers(commands)
    add_index_parsers(commands)
    add_rasa_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors become a one-paragraph message and exit status 2."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(ns.handler(ns))
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
