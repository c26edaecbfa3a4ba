"""API keys of the server-to-server REST API, kept in the store's database so that every
replica knows them.

A key is `sb_` and 43 URL-safe characters (32 random bytes from `secrets`), shown once when it
is created. The database keeps its first 11 characters (`prefix`: finds the row and tells keys
apart in `supportbot api-keys list`) and the SHA-256 of the whole key, compared in constant
time, so a copy of the table gives no working key. No slow hash as for console passwords: a
key is 256 random bits, not something a person chose, so its hash cannot be guessed back.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import ColumnElement, and_, exists, select, update
from sqlalchemy.exc import IntegrityError

from bot.core.errors import BadRequestError, ConflictError, NotFoundError, UnauthorizedError
from bot.core.records import ApiKey, IssuedApiKey
from bot.store.conversations import SqlConversationStore
from bot.store.remembered import Remembered
from bot.store.schema import ApiKeyRow, ConversationRow, MessageRow

KEY_START = "sb_"
KEY_BYTES = 32
KEY_PATTERN = re.compile(r"sb_[A-Za-z0-9_-]{43}")
PREFIX_CHARS = 11
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A key's last use is written at most this often: not one database write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
#: How long `any_active` trusts its last answer (it is asked for every request without a
#: key): the first key created, or the last one revoked, by another process (`supportbot
#: api-keys`) takes effect on a running bot within this.
ANY_ACTIVE_REMEMBERED_S = 1.0
# `any_active`'s last answer per store (a process's view of its database), shared by every
# `SqlApiKeyStore` on it, so a key created or revoked through one is seen by all at once; when
# it expires under many requests (100 concurrent conversations), they share the next read.
_ANY_ACTIVE: Remembered[bool] = Remembered()
INVALID_KEY = (
    "this API key is not valid: it is unknown, or was not copied whole; `supportbot api-keys "
    "list` shows the keys (by their first characters)"
)


def new_key() -> str:
    """A fresh random key: `sb_` and 43 URL-safe characters."""
    return KEY_START + secrets.token_urlsafe(KEY_BYTES)


def key_digest(key: str) -> str:
    """SHA-256 (hex) of a key: what the database keeps of it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_key(key: str) -> str:
    """A key given by the operator (e.g. from the environment) if it has the format of one
    `new_key` draws, else BadRequestError saying how to make one."""
    if not KEY_PATTERN.fullmatch(key):
        raise BadRequestError(
            f"an API key is {KEY_START!r} followed by 43 characters of A-Z, a-z, 0-9, '-' and "
            f"'_' (the given one has {len(key)} characters in all); make one with `python3 -c "
            "'import secrets; print(\"sb_\" + secrets.token_urlsafe(32))'`"
        )
    return key


def check_key_name(name: str) -> str:
    """A valid key name, or BadRequestError saying what a name may contain."""
    if not NAME_PATTERN.fullmatch(name):
        raise BadRequestError(
            f"API key name {name!r} is not allowed; use 1-64 letters, digits, '.', '_', '@' or "
            "'-', starting with a letter or digit (e.g. the client's name: rasa, crm)"
        )
    return name


def check_channels(channels: Iterable[str]) -> tuple[str, ...]:
    """The channels a key may act as, without repeats, or BadRequestError."""
    scope = tuple(dict.fromkeys(channels))
    if not scope:
        raise BadRequestError("an API key needs at least one channel to act as (--channel)")
    for channel in scope:
        if not CHANNEL_PATTERN.fullmatch(channel):
            raise BadRequestError(
                f"channel {channel!r} is not a channel name; use 1-64 letters, digits, '.', "
                "'_' or '-' (e.g. rest, rasa)"
            )
    return scope


def _to_api_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        channels=tuple(row.channels),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


class SqlApiKeyStore:
    """REST API keys in the store's database (the `ApiKeyStore` port of the REST API).

    Args:
        store: the conversation store whose database and connection pool are shared, and
            whose `clock` stamps creation, last use and revocation.
        remembered_s: how long `any_active` trusts its last answer.
    """

    def __init__(
        self, store: SqlConversationStore, remembered_s: float = ANY_ACTIVE_REMEMBERED_S
    ) -> None:
        self.store = store
        self.remembered_s = remembered_s

    async def create(
        self, name: str, channels: Iterable[str], key: str | None = None
    ) -> IssuedApiKey:
        """Store a new key for `channels`; a random one unless `key` is given.

        Raises:
            BadRequestError: the name, a channel or the given key is not acceptable.
            ConflictError: a key that is not revoked has this name, or the given key was
                stored before.
        """
        check_key_name(name)
        scope = check_channels(channels)
        key = new_key() if key is None else check_key(key)
        row = ApiKeyRow(
            name=name,
            prefix=key[:PREFIX_CHARS],
            key_hash=key_digest(key),
            channels=list(scope),
            created_at=self.store.clock(),
        )
        try:
            async with self.store.writing("create an API key") as session:
                if await session.scalar(select(exists().where(_active_named(name)))):
                    raise ConflictError(
                        f"an API key named {name!r} exists already; pick another name, or "
                        f"revoke it first with `supportbot api-keys revoke {name}`"
                    )
                session.add(row)
                await session.flush()
        except IntegrityError as exc:
            raise ConflictError(
                f"API key {name!r} was not stored: a key with this name was created at the same "
                "moment, or a key starting with the same characters exists; run the command "
                "again (a new key is drawn) or pick another name"
            ) from exc
        _ANY_ACTIVE.forget(self.store)
        return IssuedApiKey(key, _to_api_key(row))

    async def keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, by name, then oldest first."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.name, ApiKeyRow.id)
        async with self.store.reading("list API keys") as session:
            rows = (await session.scalars(query)).all()
        return [_to_api_key(row) for row in rows]

    async def revoke(self, name: str) -> ApiKey:
        """Revoke the key named `name` that is not revoked yet (NotFoundError when none is)."""
        async with self.store.writing("revoke an API key") as session:
            row = await session.scalar(
                select(ApiKeyRow).where(_active_named(name)).with_for_update()
            )
            if row is None:
                raise NotFoundError(
                    f"no API key named {name!r} is in use (never created, or revoked already); "
                    "see `supportbot api-keys list`"
                )
            row.revoked_at = self.store.clock()
        _ANY_ACTIVE.forget(self.store)
        return _to_api_key(row)

    async def find(self, key: str) -> ApiKey | None:
        """The record of `key`, revoked or not; None when no stored key matches it."""
        if not KEY_PATTERN.fullmatch(key):
            return None
        query = select(ApiKeyRow).where(ApiKeyRow.prefix == key[:PREFIX_CHARS])
        async with self.store.reading("check an API key") as session:
            row = await session.scalar(query)
        if row is None or not hmac.compare_digest(row.key_hash, key_digest(key)):
            return None
        return _to_api_key(row)

    async def authenticate(self, key: str) -> ApiKey:
        """The record of a key in use, with its use noted (at most once a minute).

        Raises:
            UnauthorizedError: no stored key matches, or it was revoked.
        """
        found = await self.find(key)
        if found is None:
            raise UnauthorizedError(INVALID_KEY)
        if found.revoked_at is not None:
            raise UnauthorizedError(
                f"the API key {found.name!r} was revoked on {found.revoked_at:%Y-%m-%d %H:%M} "
                "UTC; ask the operator for a new one (`supportbot api-keys create`)"
            )
        now = self.store.clock()
        if found.last_used_at is None or now - found.last_used_at >= LAST_USED_RESOLUTION:
            async with self.store.writing("note an API key's use") as session:
                await session.execute(
                    update(ApiKeyRow).where(ApiKeyRow.id == found.id).values(last_used_at=now)
                )
        return found

    async def any_active(self) -> bool:
        """Whether any key is not revoked: read again once `remembered_s` has passed, or at
        once after a key was created or revoked through this process's store; callers that
        find the answer expired together share one read."""
        return await _ANY_ACTIVE.get(self.store, self.remembered_s, self._read_any_active)

    async def _read_any_active(self) -> bool:
        query = select(exists().where(ApiKeyRow.revoked_at.is_(None)))
        async with self.store.reading("check for API keys") as session:
            return bool(await session.scalar(query))

    async def message_channel(self, message_id: int) -> str | None:
        """The channel of the conversation holding a message (None when there is none)."""
        query = (
            select(ConversationRow.channel)
            .join(MessageRow, MessageRow.conversation_id == ConversationRow.id)
            .where(MessageRow.id == message_id)
        )
        async with self.store.reading("read a message's channel") as session:
            return await session.scalar(query)


def _active_named(name: str) -> ColumnElement[bool]:
    return and_(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
