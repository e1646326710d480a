"""API users with their assignments, and ingest keys (issue 7).

Passwords are stored as argon2 hashes, ingest keys as the SHA-256 of their random token.

Revision ID: 0005_users_and_ingest_keys
Revises: 0003_sink_offsets
Create Date: 2024-06-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_users_and_ingest_keys"
down_revision: str | Sequence[str] | None = "0003_sink_offsets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MeterId = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_users"),
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_table(
        "user_meters",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("meter_id", MeterId, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.user_id"], name="fk_user_meters_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "meter_id", name="pk_user_meters"),
    )
    op.create_table(
        "user_regions",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("region", sa.Text, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.user_id"], name="fk_user_regions_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "region", name="pk_user_regions"),
    )
    op.create_table(
        "ingest_keys",
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("all_regions", sa.Boolean, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_ingest_keys"),
        sa.UniqueConstraint("key_hash", name="uq_ingest_keys_key_hash"),
    )
    op.create_table(
        "ingest_key_regions",
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("region", sa.Text, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["ingest_keys.key_id"], name="fk_ingest_key_regions_key_id_ingest_keys", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key_id", "region", name="pk_ingest_key_regions"),
    )


def downgrade() -> None:
    op.drop_table("ingest_key_regions")
    op.drop_table("ingest_keys")
    op.drop_table("user_regions")
    op.drop_table("user_meters")
    op.drop_table("users")
