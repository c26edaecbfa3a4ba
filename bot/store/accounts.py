"""Console accounts: agents and operators, their passwords, sign-in sessions and the sign-in
rate limit, kept in the store's database so that every replica knows them.

Passwords are hashed with scrypt (`hashlib.scrypt`, n=2**14, r=8, p=1, a 16-byte random salt)
into a self-describing string, `scrypt$16384$8$1$<salt b64>$<hash b64>`, and compared in
constant time. A session is a random token in the browser's cookie; the database keeps only
its SHA-256, so a copy of the table gives no working cookie.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from bot.core.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
)
from bot.core.records import Agent, AgentRole, AgentSession, SignIn
from bot.settings import ConsoleSettings
from bot.store.conversations import SqlConversationStore
from bot.store.mapping import to_agent, to_agent_session
from bot.store.schema import AgentRow, AgentSessionRow, SignInFailureRow

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
TOKEN_BYTES = 32
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# Customer feedback is stored with these authors (see connectors/rest.py and widget.py), so
# an agent may not be called the same: agents' labels are told apart by their author.
RESERVED_NAMES = frozenset({"customer", "system", "bot"})
# The per-address limit is this many times the per-name one: one office may share an address.
ADDRESS_FACTOR = 4
WRONG_CREDENTIALS = "wrong name or password"
# Names and addresses are stored (and so counted) cut to this length.
MAX_COUNTED_CHARS = 200


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The scrypt hash of `password` as `scrypt$N$r$p$<salt b64>$<hash b64>`.

    Args:
        salt: 16 random bytes are drawn when None (tests pass their own).
    """
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES
    )
    return "$".join(
        (
            "scrypt",
            str(SCRYPT_N),
            str(SCRYPT_R),
            str(SCRYPT_P),
            base64.b64encode(salt).decode("ascii"),
            base64.b64encode(digest).decode("ascii"),
        )
    )


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches a hash made by `hash_password` (constant-time compare).

    The parameters are read from the string, so hashes made with other costs still verify.
    A malformed string never matches.
    """
    try:
        scheme, n, r, p, salt_b64, hash_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except ValueError:  # wrong field count, bad base64 or numbers, parameters scrypt refuses
        return False
    return hmac.compare_digest(actual, expected)


def token_digest(token: str) -> str:
    """SHA-256 (hex) of a session token: the session's id in the database."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """A valid account name, or BadRequestError saying what a name may contain."""
    if not NAME_PATTERN.fullmatch(name) or name.lower() in RESERVED_NAMES:
        raise BadRequestError(
            f"agent name {name!r} is not allowed; use 1-64 letters, digits, '.', '_', '@' or "
            f"'-', starting with a letter or digit, and not one of {sorted(RESERVED_NAMES)}"
        )
    return name


def check_password(password: str) -> str:
    """A password long enough to keep, or BadRequestError."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise BadRequestError(
            f"the password has {len(password)} characters; use at least {MIN_PASSWORD_CHARS}"
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise BadRequestError(
            f"the password has {len(password)} characters; the limit is {MAX_PASSWORD_CHARS}"
        )
    return password


def check_role(role: str) -> AgentRole:
    try:
        return AgentRole(role)
    except ValueError as exc:
        raise BadRequestError(
            f"role {role!r} is not a console role; use {' or '.join(r.value for r in AgentRole)}"
        ) from exc


# Verified against when the name is unknown, so that an unknown name takes as long as a
# wrong password and response times do not tell which names exist.
_DUMMY_HASH = hash_password("not a password", salt=b"\0" * SALT_BYTES)


class SqlAccountStore:
    """Console accounts, sessions and sign-in failures, in the store's database (and the
    `SessionStore` port of the console's sign-in).

    Args:
        store: the conversation store whose database and connection pool are shared, and
            whose `clock` this store reads (account times, session expiry, the rate limit's
            window).
        settings: session lifetime and the sign-in rate limit.
    """

    def __init__(self, store: SqlConversationStore, settings: ConsoleSettings) -> None:
        self.store = store
        self.settings = settings

    # -- accounts ----------------------------------------------------------------------------

    async def add(self, name: str, role: str, password: str) -> Agent:
        """Create an account.

        Raises:
            BadRequestError: the name, role or password is not acceptable.
            ConflictError: an account with this name exists.
        """
        check_name(name)
        agent_role = check_role(role)
        encoded = await asyncio.to_thread(hash_password, check_password(password))
        row = AgentRow(
            name=name, role=agent_role.value, password_hash=encoded, created_at=self.store.clock()
        )
        try:
            async with self.store.writing("add a console account") as session:
                session.add(row)
                await session.flush()
        except IntegrityError as exc:
            raise ConflictError(
                f"an account named {name!r} exists already; pick another name, or reset its "
                f"password with `supportbot agents password {name}`"
            ) from exc
        return to_agent(row)

    async def agents(self) -> list[Agent]:
        """Every account, disabled ones included, by name."""
        async with self.store.reading("list console accounts") as session:
            rows = (await session.scalars(select(AgentRow).order_by(AgentRow.name))).all()
        return [to_agent(row) for row in rows]

    async def get(self, name: str) -> Agent:
        """An account by name (NotFoundError when there is none)."""
        async with self.store.reading("read a console account") as session:
            row = await session.scalar(select(AgentRow).where(AgentRow.name == name))
        if row is None:
            raise _no_agent(name)
        return to_agent(row)

    async def disable(self, name: str) -> Agent:
        """Disable an account and end its sessions (NotFoundError for an unknown name)."""
        async with self.store.writing("disable a console account") as session:
            row = await session.scalar(
                select(AgentRow).where(AgentRow.name == name).with_for_update()
            )
            if row is None:
                raise _no_agent(name)
            if row.disabled_at is None:
                row.disabled_at = self.store.clock()
            await session.execute(delete(AgentSessionRow).where(AgentSessionRow.agent_id == row.id))
        return to_agent(row)

    async def set_password(self, name: str, password: str) -> Agent:
        """Replace an account's password and end its sessions; a disabled account stays
        disabled.

        Raises:
            BadRequestError: the password is too short or too long.
            NotFoundError: no account has this name.
        """
        encoded = await asyncio.to_thread(hash_password, check_password(password))
        async with self.store.writing("change a password") as session:
            row = await session.scalar(
                select(AgentRow).where(AgentRow.name == name).with_for_update()
            )
            if row is None:
                raise _no_agent(name)
            row.password_hash = encoded
            await session.execute(delete(AgentSessionRow).where(AgentSessionRow.agent_id == row.id))
        return to_agent(row)

    # -- signing in --------------------------------------------------------------------------

    async def sign_in(self, name: str, password: str, address: str) -> SignIn:
        """Check the password and open a session.

        The attempt is counted against the limits before the (slow) password check, in the
        transaction that checks them, so a burst of parallel guesses gets at most the limit
        of answers and the rest 429. A failed attempt stays counted for the window; a
        successful one uncounts itself only (not the failures of others, nor its own
        earlier typos).

        Args:
            address: the client's address, for the per-address rate limit.

        Raises:
            RateLimitedError: too many attempts for this name or address in the window (also
                for the right password, or guessing could go on).
            UnauthorizedError: the name is unknown, the account is disabled, or the password
                is wrong (one message for all three).
        """
        now = self.store.clock()
        attempt, row = await self._count_attempt(name, address, now)
        encoded = row.password_hash if row is not None else _DUMMY_HASH
        matches = await asyncio.to_thread(verify_password, password, encoded)
        if row is None or row.disabled_at is not None or not matches:
            raise UnauthorizedError(WRONG_CREDENTIALS)  # the attempt stays counted
        return await self._open_session(row, attempt, now)

    async def failures(self, name: str | None = None, address: str | None = None) -> int:
        """Sign-in attempts counted against the limit within the window, for a name or for an
        address: the failed ones, and those whose password is still being checked."""
        since = self.store.clock() - timedelta(seconds=self.settings.sign_in_window_s)
        query = select(func.count()).select_from(SignInFailureRow)
        query = query.where(SignInFailureRow.created_at > since)
        if name is not None:
            query = query.where(SignInFailureRow.name == _stored_name(name))
        if address is not None:
            query = query.where(SignInFailureRow.address == _stored_address(address))
        async with self.store.reading("count failed sign-ins") as session:
            return int(await session.scalar(query) or 0)

    async def _count_attempt(
        self, name: str, address: str, now: datetime
    ) -> tuple[int, AgentRow | None]:
        """Check the limits and count one attempt, atomically; returns the attempt's row id
        and the account (None for an unknown name).

        SQLite: the write transaction holds the database's write lock from its start, so
        checks and inserts of concurrent attempts take turns. PostgreSQL (read committed):
        transaction-scoped advisory locks on the name, then on the address, make concurrent
        attempts for either take turns; the lock is released at commit, after the insert.
        """
        counted, address = _stored_name(name), _stored_address(address)
        window = timedelta(seconds=self.settings.sign_in_window_s)
        limit = self.settings.max_failed_sign_ins
        checks = (
            (SignInFailureRow.name == counted, limit, f"name {name!r}"),
            (SignInFailureRow.address == address, ADDRESS_FACTOR * limit, "this address"),
        )
        async with self.store.writing("check the sign-in rate limit") as session:
            if (await session.connection()).dialect.name == "postgresql":
                for key in (_lock_key("name", counted), _lock_key("address", address)):
                    await session.execute(select(func.pg_advisory_xact_lock(key)))
            for where, most, what in checks:
                # Once the `most`-th newest attempt leaves the window, the count is below the
                # limit again: that is when to retry.
                query = (
                    select(SignInFailureRow.created_at)
                    .where(where, SignInFailureRow.created_at > now - window)
                    .order_by(SignInFailureRow.created_at.desc())
                    .offset(most - 1)
                    .limit(1)
                )
                oldest = await session.scalar(query)
                if oldest is not None:
                    wait = max(1, math.ceil((oldest + window - now).total_seconds()))
                    raise RateLimitedError(
                        f"too many failed sign-ins for {what}; try again in {wait} s",
                        retry_after=wait,
                    )
            attempt = SignInFailureRow(name=counted, address=address, created_at=now)
            session.add(attempt)
            # Attempts that left the window count for nothing: keep the table small.
            await session.execute(
                delete(SignInFailureRow).where(SignInFailureRow.created_at <= now - window)
            )
            await session.flush()
            row = await session.scalar(select(AgentRow).where(AgentRow.name == name))
        return attempt.id, row

    async def _open_session(self, agent: AgentRow, attempt: int, now: datetime) -> SignIn:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        row = AgentSessionRow(
            id=token_digest(token),
            agent_id=agent.id,
            csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
            created_at=now,
            expires_at=now + timedelta(hours=self.settings.session_hours),
        )
        async with self.store.writing("open a console session") as session:
            session.add(row)
            # This attempt was no failure. Earlier failures stay counted: clearing them would
            # also clear guesses made meanwhile, and hand whoever makes them a fresh allowance.
            await session.execute(delete(SignInFailureRow).where(SignInFailureRow.id == attempt))
            await session.execute(delete(AgentSessionRow).where(AgentSessionRow.expires_at <= now))
        return SignIn(token, to_agent_session(row, agent))

    # -- sessions ----------------------------------------------------------------------------

    async def session(self, token: str) -> AgentSession:
        """The live session of a cookie's token.

        Raises:
            UnauthorizedError: no such session, it expired, or its account was disabled.
        """
        if not token:
            raise UnauthorizedError("not signed in; sign in at /console/sign-in")
        query = (
            select(AgentSessionRow, AgentRow)
            .join(AgentRow, AgentRow.id == AgentSessionRow.agent_id)
            .where(AgentSessionRow.id == token_digest(token))
        )
        async with self.store.reading("check a console session") as session:
            found = (await session.execute(query)).first()
        if found is None:
            raise UnauthorizedError("not signed in; sign in at /console/sign-in")
        row, agent = found
        if row.expires_at <= self.store.clock() or agent.disabled_at is not None:
            raise UnauthorizedError("the session has ended; sign in again at /console/sign-in")
        return to_agent_session(row, agent)

    async def sign_out(self, token: str) -> None:
        """End the session of a token (nothing happens for an unknown one)."""
        async with self.store.writing("end a console session") as session:
            await session.execute(
                delete(AgentSessionRow).where(AgentSessionRow.id == token_digest(token))
            )


def _stored_name(name: str) -> str:
    """A name as attempts are stored and counted under (long ones cut, so that they count)."""
    return name[:MAX_COUNTED_CHARS]


def _stored_address(address: str) -> str:
    return address[:MAX_COUNTED_CHARS]


def _lock_key(kind: str, value: str) -> int:
    """A PostgreSQL advisory lock key (signed 64-bit) for one name or one address."""
    digest = hashlib.blake2b(
        f"supportbot sign-in {kind} {value}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def _no_agent(name: str) -> NotFoundError:
    return NotFoundError(
        f"no console account is named {name!r}; see `supportbot agents list`, or create it "
        "with `supportbot agents add`"
    )
