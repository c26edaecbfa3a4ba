"""`supportbot api-keys`: create, list and revoke the keys of the server-to-server REST API.

The commands work on the database in the settings (`--config FILE`, then `SUPPORTBOT_*`
variables, as for `supportbot serve`) and migrate it first, so they also work before the first
`serve`. A running server sees a new or revoked key at its next request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.core.errors import BadRequestError, ConflictError
from bot.core.records import ApiKey, IssuedApiKey
from bot.settings import Settings, load_settings
from bot.store.api_keys import SqlApiKeyStore, check_channels, check_key
from bot.store.conversations import opened_store
from connectors.rest import DEFAULT_CHANNELS


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    """Register `api-keys` and its subcommands."""
    api_keys = commands.add_parser(
        "api-keys",
        help="manage the REST API's keys (create, list, revoke)",
        description="Manage who may call the REST API (/api/v1, /webhooks/rest): each client "
        "sends its key as `Authorization: Bearer <key>`. Settings (the database) come from "
        "--config (YAML) and SUPPORTBOT_* variables, as for serve.",
    )
    actions = api_keys.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--config", type=Path, help="YAML settings file")
        return parser

    create = action(
        "create", "create a key and print it on standard output (it is shown only this once)"
    )
    create.add_argument(
        "name", help="what the key is for, e.g. rasa or crm (letters, digits, .-_@)"
    )
    create.add_argument(
        "--channel",
        action="append",
        dest="channels",
        metavar="C",
        help="a channel the key may act as (send, hand off, read and rate conversations of); "
        f"repeat for several (default: {' '.join(DEFAULT_CHANNELS)})",
    )
    create.add_argument(
        "--key-from-env",
        metavar="VAR",
        help="store the key held in environment variable VAR (sb_ and 43 characters) instead of "
        "drawing one, e.g. a secret of docker compose; the same name and key again change nothing",
    )
    create.set_defaults(handler=run_create)

    listing = action("list", "list keys: name, first characters, channels, created, last used")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    listing.set_defaults(handler=run_list)

    revoke = action("revoke", "revoke a key: requests with it are refused from then on")
    revoke.add_argument("name", help="the key's name, as `supportbot api-keys list` shows it")
    revoke.set_defaults(handler=run_revoke)


@asynccontextmanager
async def opened_keys(settings: Settings) -> AsyncIterator[SqlApiKeyStore]:
    """The API keys in the settings' database, migrated first; closed on exit."""
    async with opened_store(settings.store.url) as store:
        yield SqlApiKeyStore(store)


def key_from_env(variable: str) -> str:
    """The key held in environment variable `variable` (BadRequestError when unset or not a
    key)."""
    value = os.environ.get(variable, "").strip()
    if not value:
        raise BadRequestError(
            f"environment variable {variable} is empty or not set; put the key to store there "
            "(sb_ and 43 characters), or leave out --key-from-env to have one drawn"
        )
    return check_key(value)


async def store_given_key(
    keys: SqlApiKeyStore, name: str, channels: tuple[str, ...], key: str, variable: str
) -> IssuedApiKey | None:
    """Store an operator's key; None when it is stored already as `name` for `channels`.

    Raises:
        ConflictError: the key is stored under another name or channels, or was revoked.
    """
    existing = await keys.find(key)
    if existing is None:
        return await keys.create(name, channels, key)
    if existing.revoked_at is not None:
        raise ConflictError(
            f"the key in {variable} was revoked on {existing.revoked_at:%Y-%m-%d} (as "
            f"{existing.name!r}) and cannot be used again; put a new key in {variable}"
        )
    if existing.name != name or set(existing.channels) != set(channels):
        raise ConflictError(
            f"the key in {variable} is stored already as {existing.name!r} for channels "
            f"{' '.join(existing.channels)}; revoke it first (`supportbot api-keys revoke "
            f"{existing.name}`) to store it otherwise, with a new key"
        )
    return None


def run_create(ns: argparse.Namespace) -> int:
    channels = check_channels(ns.channels or DEFAULT_CHANNELS)
    given = key_from_env(ns.key_from_env) if ns.key_from_env else None

    async def create() -> IssuedApiKey | None:
        async with opened_keys(load_settings(ns.config)) as keys:
            if given is None:
                return await keys.create(ns.name, channels)
            return await store_given_key(keys, ns.name, channels, given, ns.key_from_env)

    issued = asyncio.run(create())
    scope = " ".join(channels)
    if given is not None:
        if issued is None:
            print(f"API key {ns.name!r} from {ns.key_from_env} is stored already; nothing changed")
        else:
            print(f"stored API key {ns.name!r} from {ns.key_from_env} for channels {scope}")
        return 0
    assert issued is not None
    # The key alone on standard output, so that `KEY=$(supportbot api-keys create crm)` works.
    print(issued.key)
    print(
        f"created API key {ns.name!r} for channels {scope}; it is shown only this once, so "
        "store it now. Clients send it as `Authorization: Bearer <key>`; revoke it with "
        f"`supportbot api-keys revoke {ns.name}`.",
        file=sys.stderr,
    )
    return 0


def _when(moment: datetime | None, never: str = "never") -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment is not None else never


def _row(key: ApiKey) -> dict[str, Any]:
    return {
        "name": key.name,
        "prefix": key.prefix,
        "channels": list(key.channels),
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def run_list(ns: argparse.Namespace) -> int:
    async def listed() -> list[ApiKey]:
        async with opened_keys(load_settings(ns.config)) as keys:
            return await keys.keys()

    keys = asyncio.run(listed())
    if ns.json:
        print(json.dumps([_row(k) for k in keys], indent=2))
        return 0
    if not keys:
        print(
            "no API keys yet: the REST API takes requests only from this machine; create one "
            "with `supportbot api-keys create NAME`"
        )
        return 0
    table = [("NAME", "KEY", "CHANNELS", "CREATED (UTC)", "LAST USED", "STATE")]
    table += [
        (
            k.name,
            f"{k.prefix}...",
            ",".join(k.channels),
            _when(k.created_at),
            _when(k.last_used_at),
            f"revoked {_when(k.revoked_at)}" if k.revoked_at else "active",
        )
        for k in keys
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def run_revoke(ns: argparse.Namespace) -> int:
    async def revoke() -> tuple[ApiKey, bool]:
        async with opened_keys(load_settings(ns.config)) as keys:
            revoked = await keys.revoke(ns.name)
            return revoked, await keys.any_active()

    key, others = asyncio.run(revoke())
    print(f"revoked API key {key.name!r} ({key.prefix}...); requests with it are refused now")
    if not others:
        print(
            "no API key is left in use: the REST API again takes requests without a key from "
            "this machine only, and `supportbot serve` on a non-loopback address refuses to "
            "start until a key exists"
        )
    return 0
