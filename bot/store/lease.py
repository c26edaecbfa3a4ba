"""Leases in the store's database: periodic work that one replica of several does.

Every replica runs the same schedule (the retention purge, every `privacy.purge_interval_s`);
before each run it tries to take the lease for the interval. The one that gets it does the
work and the others skip until it expires, so the work runs once per interval across
replicas, and a replica that dies holding the lease is replaced when it expires.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import func, select

from bot.core.errors import BadRequestError
from bot.store.conversations import SqlConversationStore
from bot.store.schema import LeaseRow


def lease_holder(replica: str | None = None) -> str:
    """A holder name unique to this process: replica (or host) name, pid, random suffix."""
    return f"{replica or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SqlLease:
    """One named lease, taken and renewed by `holder`.

    Args:
        store: the started store whose database keeps the lease (and whose clock says now).
        name: the work, e.g. `retention-purge`.
        holder: this process (see `lease_holder`).
    """

    def __init__(self, store: SqlConversationStore, name: str, holder: str) -> None:
        if not 0 < len(name) <= 64:
            raise BadRequestError(f"a lease name has 1-64 characters, got {name!r}")
        self.store = store
        self.name = name
        self.holder = holder

    async def acquire(self, ttl: timedelta) -> bool:
        """Take (or renew) the lease until now + `ttl`; False when another holder has it.

        One transaction: on PostgreSQL a transaction-scoped advisory lock on the name makes
        two replicas asking at once take turns (the first inserts the row, the second then
        finds it held); on SQLite the write transaction does the same.
        """
        now = self.store.clock()
        async with self.store.writing(f"take the {self.name} lease") as session:
            if (await session.connection()).dialect.name == "postgresql":
                await session.execute(select(func.pg_advisory_xact_lock(self._key())))
            row = await session.get(LeaseRow, self.name, with_for_update=True)
            if row is None:
                session.add(LeaseRow(name=self.name, holder=self.holder, expires_at=now + ttl))
                return True
            if row.holder != self.holder and row.expires_at > now:
                return False
            row.holder, row.expires_at = self.holder, now + ttl
            return True

    async def holder_now(self) -> str | None:
        """Who holds the lease now (None: nobody, or it expired)."""
        async with self.store.reading(f"read the {self.name} lease") as session:
            row = await session.get(LeaseRow, self.name)
        return row.holder if row is not None and row.expires_at > self.store.clock() else None

    def _key(self) -> int:
        digest = hashlib.blake2b(f"supportbot lease {self.name}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)
