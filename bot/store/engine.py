"""The store's database plumbing: URLs and drivers, engines and their SQLite settings, and
the Alembic migrations that `SqlConversationStore.start()` applies.

Shared by the stores, the Alembic environment (`bot/store/migrations/env.py`), the retraining
job and the benchmarks, so every connection to the database is made the same way.
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.core.errors import ConfigurationError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Any constant works, as long as every replica uses the same one.
PG_MIGRATION_LOCK = 7_305_162_401

# Execution option marking transactions that only read. On SQLite every other transaction
# starts with BEGIN IMMEDIATE (see `create_store_engine`).
READ_ONLY_OPTION = "supportbot_read_only"

# The async driver each accepted URL scheme is mapped to.
DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}

# Failures that mean "the database did not answer", as opposed to "it refused the request".
# A pool timeout (every connection busy for `timeout` seconds: an overloaded replica) is one
# too: the client should come back later (503), not be told the message failed (500).
CONNECTION_ERRORS = (OperationalError, InterfaceError, OSError, PoolTimeoutError)

# PostgreSQL SQLSTATE classes that mean no session could be had: connection exception (08),
# bad user or password (28), no such database (3D), too many connections (53), server
# shutting down or starting up (57P).
UNAVAILABLE_SQLSTATES = ("08", "28", "3D", "53", "57P")

URL_EXAMPLES = "sqlite+aiosqlite:///supportbot.db or postgresql+asyncpg://user@host:5432/db"

# Alembic installs `alembic.context` and `alembic.op` as process-wide proxies while it runs,
# so two stores migrating at once on one event loop would use each other's context. One lock
# per event loop keeps them apart (a lock is bound to the loop it is used on).
_migration_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def normalize_url(url: str | URL) -> URL:
    """Parse a store URL and map it to the async driver of its database.

    Args:
        url: `sqlite:///path.db`, `postgresql://user@host/db`, or the same with the async
            driver (`sqlite+aiosqlite`, `postgresql+asyncpg`) already named.

    Raises:
        ConfigurationError: the URL is malformed, names another database or a synchronous
            driver, or asks for an in-memory SQLite database.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(
            f"store URL {str(url)!r} is not a database URL ({exc}); expected e.g. {URL_EXAMPLES}"
        ) from exc
    driver = DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigurationError(
            f"store URL uses {parsed.drivername!r}, which supportbot does not support; "
            f"use SQLite (aiosqlite) or PostgreSQL (asyncpg), e.g. {URL_EXAMPLES}"
        )
    parsed = parsed.set(drivername=driver)
    if driver.startswith("sqlite"):
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            # Each pooled connection would see its own empty database, so the schema that
            # start() creates would vanish; a file in a temporary directory works for tests.
            raise ConfigurationError(
                f"store URL {parsed.render_as_string()!r} is an in-memory SQLite database, "
                "which the store cannot share between its connections; give a file path, "
                "e.g. sqlite+aiosqlite:///supportbot.db (in tests: a file under tmp_path)"
            )
    return parsed


def create_store_engine(
    url: str | URL, *, echo: bool = False, timeout: float = 10.0, read_only: bool = False
) -> AsyncEngine:
    """An async engine for the store's database, with the store's connection settings.

    On SQLite every connection gets WAL (readers never block the writer), a busy timeout and
    foreign keys, and every transaction not marked read-only takes the write lock up front.

    Args:
        url: see `normalize_url`.
        echo: log every SQL statement.
        timeout: seconds to wait for a connection (PostgreSQL) or a lock (SQLite).
        read_only: SQLite: an engine for read transactions only, with connections of its own.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            parsed,
            echo=echo,
            # A replica outlives database restarts: test pooled connections before use.
            pool_pre_ping=True,
            pool_timeout=timeout,
            connect_args={
                "timeout": timeout,
                "server_settings": {"application_name": "supportbot"},
            },
        )

    # One connection: SQLite has one writer at a time anyway, and a writer waiting in SQLite's
    # busy handler sleeps in steps of up to 100 ms, while a coroutine waiting for the pooled
    # connection resumes the moment it is free (measured: benchmarks/runtime_benchmark.py).
    # Readers get connections of their own (`read_only`): in WAL mode they never wait for
    # the writer, so a lookup does not queue behind the writes.
    # No rollback when a connection goes back to the pool: every session ends its
    # transaction itself, and on the one writer connection that extra round trip to the
    # driver's thread was time the next writer waited for.
    engine = create_async_engine(
        parsed,
        echo=echo,
        pool_size=2 if read_only else 1,
        max_overflow=0,
        pool_timeout=timeout,
        pool_reset_on_return=None,
    )
    configure_sqlite(engine.sync_engine, timeout, read_only)
    return engine


def create_sqlite_thread_engine(
    url: str | URL, *, echo: bool = False, timeout: float = 10.0
) -> Engine:
    """A synchronous engine (the sqlite3 driver) on the store's SQLite file, for transactions
    that run whole in the store's database thread (`SqlConversationStore._transaction`)."""
    parsed = normalize_url(url).set(drivername="sqlite")
    engine = create_engine(
        parsed,
        echo=echo,
        pool_size=1,
        max_overflow=0,
        pool_timeout=timeout,
        pool_reset_on_return=None,
        # Used by one thread at a time (the store's database thread); closed from another.
        connect_args={"check_same_thread": False},
    )
    configure_sqlite(engine, timeout, read_only=False)
    return engine


def configure_sqlite(engine: Engine, timeout: float, read_only: bool) -> None:
    """WAL, a busy timeout and foreign keys on every connection; writers lock at BEGIN."""
    busy_ms = max(1, int(timeout * 1000))

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        # Hand BEGIN over to SQLAlchemy (below): the driver's own legacy transaction handling
        # does not begin before SELECT or DDL, which breaks transactional migrations.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # The busy timeout first, so that switching a fresh file to WAL waits for a
            # concurrent starter instead of failing.
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL still survives a crash of the process (a commit is in the
            # WAL file before it returns); only a power cut can lose the last commits. FULL
            # would fsync every commit, and the write lock is held meanwhile.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_sqlite(connection: Connection) -> None:
        # A deferred transaction that reads and then writes fails at once with "database is
        # locked" if another connection committed in between (the busy timeout does not
        # apply); taking the write lock at BEGIN makes writers queue instead.
        if read_only or connection.get_execution_options().get(READ_ONLY_OPTION, False):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def lock_for_migration(connection: Connection) -> None:
    """Serialise migrations of one database across processes (PostgreSQL only).

    SQLite needs nothing: the migration transaction holds the database's write lock.
    The PostgreSQL lock is released when the surrounding transaction ends.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})


def upgrade_schema(connection: Connection, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` on an open connection, in its transaction.

    Raises:
        ConfigurationError: the database carries a revision this code does not know (it was
            migrated by a newer supportbot).
    """
    lock_for_migration(connection)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, revision)
    except CommandError as exc:
        raise ConfigurationError(
            f"cannot migrate the store's schema to {revision!r}: {exc}; if the database was "
            "upgraded by a newer supportbot, run that version (or downgrade the database "
            "with it first)"
        ) from exc


def migration_lock() -> asyncio.Lock:
    """This event loop's lock around running migrations (see `_migration_locks`)."""
    loop = asyncio.get_running_loop()
    lock = _migration_locks.get(loop)
    if lock is None:
        lock = _migration_locks[loop] = asyncio.Lock()
    return lock
