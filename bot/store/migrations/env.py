"""Alembic environment of the store's schema, for SQLite and PostgreSQL.

`SqlConversationStore.start()` runs the migrations itself: it hands Alembic an open connection
in `config.attributes["connection"]`. Operators and developers can also run Alembic directly,
giving the database URL with `-x url=...`::

    alembic -c bot/store/migrations/alembic.ini -x url=sqlite:///supportbot.db upgrade head
    alembic -c bot/store/migrations/alembic.ini -x url=sqlite:///dev.db \
        revision --autogenerate -m "..."
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

from bot.core.errors import ConfigurationError
from bot.store.schema import Base, UTCDateTime


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Write `UTCDateTime` columns as plain `sa.DateTime(timezone=True)` in new revisions.

    Revisions must keep working after the model code changes, so they never import it.
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def configure_options(dialect_name: str) -> dict[str, Any]:
    """Options shared by online, offline and programmatic runs."""
    return {
        "target_metadata": Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
        "render_item": render_item,
    }


def run_on(connection: Connection) -> None:
    """Migrate to the requested revision on an open connection, inside its transaction.

    The caller holds the migration lock (see `bot.store.engine.lock_for_migration`).
    """
    context.configure(connection=connection, **configure_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


def command_line_url() -> str:
    """The database URL given on the Alembic command line."""
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise ConfigurationError(
            "no database URL for Alembic; pass one with -x url=sqlite:///supportbot.db "
            "(or postgresql://user@host/db)"
        )
    return url


async def run_online(url: str) -> None:
    """Open the store's own engine (same drivers and SQLite pragmas) and migrate."""
    from bot.store.engine import create_store_engine, lock_for_migration

    engine = create_store_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lock_for_migration)
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def run_offline(url: str) -> None:
    """Write the migration SQL to stdout instead of running it (`alembic upgrade --sql`)."""
    from bot.store.engine import normalize_url

    parsed = normalize_url(url)
    context.configure(
        url=parsed,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **configure_options(parsed.get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Entry point Alembic calls when it loads this file."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
    elif context.is_offline_mode():
        run_offline(command_line_url())
    else:
        asyncio.run(run_online(command_line_url()))


main()
