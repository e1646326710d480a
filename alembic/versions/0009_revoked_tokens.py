"""Token revocations kept in the database when there is no Redis (revoked_tokens).

On the embedded profile the revocations of logged-out sessions and used refresh tokens lived in
the API process alone, while the JWT secret lives on in the data folder: a restart made every
token logged out before it work again. Now the process keeps them in memory as before and writes
each one here too, and reads those not yet expired back when it starts.

Revision ID: 0009_revoked_tokens
Revises: 0008_commit_token
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_revoked_tokens"
down_revision: str | Sequence[str] | None = "0008_commit_token"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "revoked_tokens",
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_revoked_tokens"),
    )
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_revoked_tokens_expires_at", table_name="revoked_tokens")
    op.drop_table("revoked_tokens")
