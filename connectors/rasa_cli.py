"""`supportbot rasa-actions`: run the Rasa action server with supportbot's actions."""

from __future__ import annotations

import argparse
import os
from typing import Any

URL_ENV = "SUPPORTBOT_RASA__SUPPORTBOT_URL"
KEY_ENV = "SUPPORTBOT_RASA__API_KEY"
DEFAULT_PORT = 5055  # Rasa's default action endpoint port


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    """Register `rasa-actions`."""
    parser = commands.add_parser(
        "rasa-actions",
        help="run a Rasa action server whose actions call a running supportbot",
        description="Start rasa-sdk's action server with three actions for an existing Rasa "
        "assistant: action_supportbot_answer, action_supportbot_sentiment and "
        "action_supportbot_handoff. They call supportbot's REST API, so `supportbot serve` must "
        "run too. Point Rasa's endpoints.yml action_endpoint at http://HOST:PORT/webhook.",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default 127.0.0.1; 0.0.0.0 in a container)",
    )
    parser.add_argument(
        "--supportbot-url",
        help=f"where supportbot runs (default: ${URL_ENV}, else http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--api-key",
        help=f"supportbot API key sent with every request (default: ${KEY_ENV}, which keeps it "
        "out of the process list; make one with `supportbot api-keys create rasa`)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for supportbot per request (default 10)",
    )
    parser.set_defaults(handler=run_rasa_actions)


def run_rasa_actions(ns: argparse.Namespace) -> int:
    # Imported here: rasa-sdk and Sanic are only needed by this command.
    from connectors.rasa_actions import (
        DEFAULT_SUPPORTBOT_URL,
        ActionServerSettings,
        create_action_app,
    )

    url = ns.supportbot_url or os.environ.get(URL_ENV) or DEFAULT_SUPPORTBOT_URL
    # A key pasted or read from a file often comes with a newline.
    key = (ns.api_key or os.environ.get(KEY_ENV) or "").strip() or None
    settings = ActionServerSettings(supportbot_url=url, timeout_s=ns.timeout, api_key=key)
    app = create_action_app(settings)
    base = f"http://{ns.host}:{ns.port}"
    how = f"without an API key (none in {KEY_ENV})"
    if key:
        # A long key's first characters tell which one it is, and are no use to a log reader.
        how = f"with API key {key[:11]}..." if len(key) >= 40 else "with an API key"
    print(f"Rasa action server on {base}/webhook (health: {base}/health)", flush=True)
    print(f"  actions call supportbot at {settings.supportbot_url} {how}", flush=True)
    # One process, as rasa-sdk runs by default: the actions only wait on HTTP, and the process
    # owns exactly one supportbot client.
    app.run(
        host=ns.host,
        port=ns.port,
        single_process=True,
        motd=False,
        access_log=False,
    )
    return 0
