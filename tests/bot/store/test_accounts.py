"""Console accounts on a real SQLite file and a real PostgreSQL server: password hashing,
sessions and their expiry, and the sign-in rate limit."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest

from bot.core.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
)
from bot.core.ports import SessionStore
from bot.settings import ConsoleSettings
from bot.store import accounts as accounts_module
from bot.store.accounts import (
    AgentRole,
    SqlAccountStore,
    hash_password,
    token_digest,
    verify_password,
)
from bot.store.conversations import SqlConversationStore
from bot.store.schema import AgentSessionRow
from tests.fakes.clock import ManualClock

PASSWORD = "correct horse battery"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def accounts(database_url: str, clock: ManualClock) -> AsyncIterator[SqlAccountStore]:
    store = SqlConversationStore(database_url, clock=clock)
    await store.start()
    try:
        yield SqlAccountStore(
            store, ConsoleSettings(session_hours=1, max_failed_sign_ins=3, sign_in_window_s=60)
        )
    finally:
        await store.stop()


def test_the_account_store_implements_the_sign_in_port(tmp_path: Path) -> None:
    # mypy checks every method's signature against the Protocol on this assignment.
    store = SqlConversationStore(f"sqlite:///{tmp_path / 'bot.db'}")
    sessions: SessionStore = SqlAccountStore(store, ConsoleSettings())
    assert sessions is not None


# -- hashing (no database) -----------------------------------------------------------------------


def test_hash_is_scrypt_with_the_documented_parameters_and_format() -> None:
    salt = bytes(range(16))
    encoded = hash_password("s3cret-pass", salt=salt)
    scheme, n, r, p, salt_b64, hash_b64 = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert base64.b64decode(salt_b64) == salt
    expected = hashlib.scrypt(b"s3cret-pass", salt=salt, n=2**14, r=8, p=1, dklen=32)
    assert base64.b64decode(hash_b64) == expected


def test_verify_accepts_the_password_only_and_never_a_malformed_hash() -> None:
    encoded = hash_password(PASSWORD)
    assert verify_password(PASSWORD, encoded)
    assert not verify_password(PASSWORD + "!", encoded)
    assert not verify_password(PASSWORD, "bcrypt$whatever")
    assert not verify_password(PASSWORD, encoded.replace("$16384$", "$abc$"))
    assert not verify_password(PASSWORD, encoded.rsplit("$", 1)[0] + "$%%%")
    # Two hashes of one password differ (random salt), both verify.
    again = hash_password(PASSWORD)
    assert again != encoded and verify_password(PASSWORD, again)


def test_verify_compares_in_constant_time() -> None:
    encoded = hash_password(PASSWORD)
    with mock.patch.object(
        accounts_module.hmac, "compare_digest", wraps=accounts_module.hmac.compare_digest
    ) as compare:
        verify_password("wrong password", encoded)
    compare.assert_called_once()


# -- accounts ------------------------------------------------------------------------------------


async def test_add_list_disable_and_reset_a_password(accounts: SqlAccountStore) -> None:
    ana = await accounts.add("ana", "agent", PASSWORD)
    olga = await accounts.add("olga", "operator", PASSWORD)
    assert ana.role == AgentRole.AGENT and not ana.is_operator
    assert olga.is_operator
    assert [a.name for a in await accounts.agents()] == ["ana", "olga"]

    with pytest.raises(ConflictError, match="exists already"):
        await accounts.add("ana", "agent", PASSWORD)
    with pytest.raises(BadRequestError, match="at least 8"):
        await accounts.add("bo", "agent", "short")
    with pytest.raises(BadRequestError, match="not a console role"):
        await accounts.add("bo", "admin", PASSWORD)
    with pytest.raises(BadRequestError, match="not allowed"):
        await accounts.add("customer", "agent", PASSWORD)
    with pytest.raises(BadRequestError, match="not allowed"):
        await accounts.add("has space", "agent", PASSWORD)

    signed = await accounts.sign_in("ana", PASSWORD, "10.0.0.1")
    await accounts.set_password("ana", "a brand new password")
    with pytest.raises(UnauthorizedError):  # a new password ends the old sessions
        await accounts.session(signed.token)
    with pytest.raises(UnauthorizedError, match="wrong name or password"):
        await accounts.sign_in("ana", PASSWORD, "10.0.0.1")
    assert (await accounts.sign_in("ana", "a brand new password", "10.0.0.1")).token

    signed = await accounts.sign_in("olga", PASSWORD, "10.0.0.1")
    disabled = await accounts.disable("olga")
    assert disabled.disabled_at is not None
    with pytest.raises(UnauthorizedError):
        await accounts.session(signed.token)
    with pytest.raises(UnauthorizedError, match="wrong name or password"):
        await accounts.sign_in("olga", PASSWORD, "10.0.0.1")
    with pytest.raises(NotFoundError, match="supportbot agents list"):
        await accounts.disable("nobody")


# -- sessions ------------------------------------------------------------------------------------


async def test_a_session_keeps_only_the_tokens_digest_and_expires(
    accounts: SqlAccountStore, clock: ManualClock
) -> None:
    await accounts.add("ana", "agent", PASSWORD)
    signed = await accounts.sign_in("ana", PASSWORD, "10.0.0.1")
    assert len(signed.token) >= 43  # 32 random bytes, urlsafe base64
    session = await accounts.session(signed.token)
    assert session.agent.name == "ana" and session.csrf_token == signed.session.csrf_token
    assert session.id == token_digest(signed.token) != signed.token
    assert timedelta(minutes=59) < session.expires_at - session.created_at <= timedelta(hours=1)
    async with accounts.store.reading("test") as db:
        stored = await db.get(AgentSessionRow, token_digest(signed.token))
        assert stored is not None
        assert await db.get(AgentSessionRow, signed.token) is None

    clock.advance(hours=1, seconds=1)
    with pytest.raises(UnauthorizedError, match="ended"):
        await accounts.session(signed.token)
    with pytest.raises(UnauthorizedError, match="not signed in"):
        await accounts.session("made-up-token")

    await accounts.sign_out(signed.token)
    with pytest.raises(UnauthorizedError):
        await accounts.session(signed.token)


# -- the rate limit ------------------------------------------------------------------------------


async def test_failures_are_counted_per_name_and_lock_out_even_the_right_password(
    accounts: SqlAccountStore, clock: ManualClock
) -> None:
    await accounts.add("ana", "agent", PASSWORD)
    for _ in range(3):
        with pytest.raises(UnauthorizedError):
            await accounts.sign_in("ana", "guess-guess", "10.0.0.1")
    assert await accounts.failures(name="ana") == 3
    with pytest.raises(RateLimitedError) as limited:
        await accounts.sign_in("ana", PASSWORD, "10.0.0.2")
    assert 1 <= limited.value.retry_after <= 60
    # Other names are not locked out by ana's failures.
    await accounts.add("bo", "agent", PASSWORD)
    assert (await accounts.sign_in("bo", PASSWORD, "10.0.0.1")).token

    # Once the window has passed, ana may sign in again, and success clears her count.
    clock.advance(seconds=61)
    signed = await accounts.sign_in("ana", PASSWORD, "10.0.0.1")
    assert signed.session.agent.name == "ana"
    assert await accounts.failures(name="ana") == 0


async def test_failures_are_counted_per_address_at_four_times_the_name_limit(
    accounts: SqlAccountStore,
) -> None:
    await accounts.add("ana", "agent", PASSWORD)
    for i in range(12):  # 4 x 3, spread over names so no name reaches its own limit
        with pytest.raises(UnauthorizedError):
            await accounts.sign_in(f"name{i}", "guess-guess", "10.9.9.9")
    assert await accounts.failures(address="10.9.9.9") == 12
    with pytest.raises(RateLimitedError, match="this address"):
        await accounts.sign_in("ana", PASSWORD, "10.9.9.9")
    assert (await accounts.sign_in("ana", PASSWORD, "10.0.0.1")).token


# -- the rate limit under concurrency ------------------------------------------------------------


def _verdicts(results: list[object]) -> list[str]:
    """What each sign-in came to: "session", "401" or "429" (anything else fails the test)."""
    kinds = {UnauthorizedError: "401", RateLimitedError: "429"}
    verdicts = []
    for result in results:
        if isinstance(result, BaseException):
            assert type(result) in kinds, repr(result)
            verdicts.append(kinds[type(result)])
        else:
            verdicts.append("session")
    return verdicts


async def test_parallel_guesses_get_at_most_the_limit_of_answers(
    accounts: SqlAccountStore,
) -> None:
    # Every attempt is counted before its password is checked, in one transaction with the
    # check: a burst cannot all pass the check while the slow hashes run.
    await accounts.add("ana", "agent", PASSWORD)
    limit = accounts.settings.max_failed_sign_ins
    guesses = [accounts.sign_in("ana", f"guess {i}", f"10.0.{i}.1") for i in range(40)]
    verdicts = _verdicts(await asyncio.gather(*guesses, return_exceptions=True))
    assert verdicts.count("401") == limit and verdicts.count("429") == 40 - limit
    assert await accounts.failures(name="ana") == limit

    # Spread over names, one address gets four times the limit.
    guesses = [accounts.sign_in(f"name{i}", "guess", "10.9.9.9") for i in range(40)]
    verdicts = _verdicts(await asyncio.gather(*guesses, return_exceptions=True))
    assert verdicts.count("401") == 4 * limit and verdicts.count("429") == 40 - 4 * limit


async def test_the_right_password_amid_a_burst_of_guesses_is_refused_once_the_limit_is_hit(
    accounts: SqlAccountStore,
) -> None:
    await accounts.add("ana", "agent", PASSWORD)
    limit = accounts.settings.max_failed_sign_ins
    burst = [
        asyncio.create_task(accounts.sign_in("ana", f"guess {i}", f"10.0.{i}.1"))
        for i in range(150)
    ]
    # The limit is reached as soon as `limit` guesses are being checked, before any of
    # them has failed.
    while await accounts.failures(name="ana") < limit:
        await asyncio.sleep(0.001)
    with pytest.raises(RateLimitedError):
        await accounts.sign_in("ana", PASSWORD, "10.1.1.1")
    verdicts = _verdicts(list(await asyncio.gather(*burst, return_exceptions=True)))
    assert verdicts.count("401") == limit and verdicts.count("429") == 150 - limit


async def test_a_success_forgives_nothing_that_others_counted(
    accounts: SqlAccountStore, clock: ManualClock
) -> None:
    # A success uncounts its own attempt only: the owner signing in between an attacker's
    # guesses does not give the attacker a fresh set of them.
    await accounts.add("ana", "agent", PASSWORD)
    limit = accounts.settings.max_failed_sign_ins
    for _ in range(limit - 1):
        with pytest.raises(UnauthorizedError):
            await accounts.sign_in("ana", "guess-guess", "10.6.6.6")
    for _ in range(3):
        assert (await accounts.sign_in("ana", PASSWORD, "10.0.0.1")).token
    assert await accounts.failures(name="ana") == limit - 1
    with pytest.raises(UnauthorizedError):
        await accounts.sign_in("ana", "guess-guess", "10.6.6.6")
    with pytest.raises(RateLimitedError):
        await accounts.sign_in("ana", PASSWORD, "10.0.0.1")
    clock.advance(seconds=61)
    assert (await accounts.sign_in("ana", PASSWORD, "10.0.0.1")).token


async def test_a_long_name_is_counted_under_the_name_it_is_stored_as(
    accounts: SqlAccountStore,
) -> None:
    limit = accounts.settings.max_failed_sign_ins
    long_name = "n" * 300
    for i in range(limit):
        with pytest.raises(UnauthorizedError):
            await accounts.sign_in(long_name, "guess", f"10.0.{i}.1")
    with pytest.raises(RateLimitedError):
        await accounts.sign_in(long_name, "guess", "10.0.99.1")
