"""`supportbot agents`: create, list, disable console accounts and reset their passwords.

The commands work on the database in the settings (`--config FILE`, then `SUPPORTBOT_*`
variables, as for `supportbot serve`) and migrate it first, so they also work before the first
`serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

from bot.core.errors import BadRequestError
from bot.core.records import Agent
from bot.settings import load_settings
from bot.store.accounts import SqlAccountStore, check_password
from bot.store.conversations import opened_store

T = TypeVar("T")


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    """Register `agents` and its subcommands."""
    agents = commands.add_parser(
        "agents",
        help="manage agent console accounts (add, list, disable, password)",
        description="Manage who can sign in to the agent console at /console. Settings (the "
        "database) come from --config (YAML) and SUPPORTBOT_* variables, as for serve.",
    )
    actions = agents.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--config", type=Path, help="YAML settings file")
        return parser

    add = action("add", "create an account")
    add.add_argument("name", help="sign-in name (letters, digits, . _ @ -)")
    add.add_argument(
        "--role",
        choices=("agent", "operator"),
        required=True,
        help="agent: queue, replies, labels; operator: also the dashboard",
    )
    add.add_argument(
        "--password",
        help="the password (at least 8 characters); default: read from standard input, asked "
        "twice without echo on a terminal",
    )
    add.set_defaults(handler=run_add)

    listing = action("list", "list accounts")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    listing.set_defaults(handler=run_list)

    disable = action("disable", "disable an account and end its sessions")
    disable.add_argument("name", help="the account's sign-in name")
    disable.set_defaults(handler=run_disable)

    password = action("password", "reset an account's password (ends its sessions)")
    password.add_argument("name", help="the account's sign-in name")
    password.add_argument("--password", help="the new password; default: read from standard input")
    password.set_defaults(handler=run_password)


def read_password(stdin: TextIO | None = None) -> str:
    """A password from standard input: asked twice without echo on a terminal, else one line.

    Raises:
        BadRequestError: the two entries differ, nothing was given, or it is too short.
    """
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            raise BadRequestError("the two passwords differ; nothing was changed, try again")
        return check_password(first)
    line = stdin.readline()
    if not line:
        raise BadRequestError(
            "no password on standard input; pipe one line, e.g. `printf '%s\\n' \"$PW\" | "
            "supportbot agents add NAME --role agent`, or pass --password"
        )
    return check_password(line.rstrip("\r\n"))


def _with_accounts(config: Path | None, work: Callable[[SqlAccountStore], Awaitable[T]]) -> T:
    settings = load_settings(config)

    async def run() -> T:
        async with opened_store(settings.store.url) as store:
            return await work(SqlAccountStore(store, settings.console))

    return asyncio.run(run())


def _row(agent: Agent) -> dict[str, Any]:
    return {
        "name": agent.name,
        "role": agent.role.value,
        "created_at": agent.created_at.isoformat(),
        "disabled_at": agent.disabled_at.isoformat() if agent.disabled_at else None,
    }


def run_add(ns: argparse.Namespace) -> int:
    password = check_password(ns.password) if ns.password is not None else read_password()
    agent = _with_accounts(ns.config, lambda accounts: accounts.add(ns.name, ns.role, password))
    print(f"added {agent.role.value} {agent.name}; they can sign in at /console")
    return 0


def run_list(ns: argparse.Namespace) -> int:
    agents = _with_accounts(ns.config, lambda accounts: accounts.agents())
    if ns.json:
        print(json.dumps([_row(a) for a in agents], indent=2))
        return 0
    if not agents:
        print("no accounts yet; add one with `supportbot agents add NAME --role operator`")
        return 0
    width = max(len(a.name) for a in agents)
    for agent in agents:
        state = f"disabled {agent.disabled_at:%Y-%m-%d}" if agent.disabled_at else "active"
        print(f"{agent.name:<{width}}  {agent.role.value:<8}  {state}")
    return 0


def run_disable(ns: argparse.Namespace) -> int:
    agent = _with_accounts(ns.config, lambda accounts: accounts.disable(ns.name))
    print(f"disabled {agent.name}; their sessions are ended")
    return 0


def run_password(ns: argparse.Namespace) -> int:
    password = check_password(ns.password) if ns.password is not None else read_password()
    agent = _with_accounts(ns.config, lambda accounts: accounts.set_password(ns.name, password))
    print(f"new password set for {agent.name}; their sessions are ended")
    return 0
