"""API keys of the server-to-server REST API.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out here rather than imported from bot.store.schema (see 0001).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
ACTIVE_ONLY = "revoked_at IS NULL"


def upgrade() -> None:
    """Create `api_keys`: one row per key, its SHA-256 only, names unique among live keys."""
    op.create_table(
        "api_keys",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("channels", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_index(
        op.f("uq_api_keys_name_active"),
        "api_keys",
        ["name"],
        unique=True,
        sqlite_where=sa.text(ACTIVE_ONLY),
        postgresql_where=sa.text(ACTIVE_ONLY),
    )


def downgrade() -> None:
    """Drop `api_keys` (every key with it)."""
    op.drop_table("api_keys")
