"""Meter registry: meters and regions.

Revision ID: 0001_meter_registry
Revises:
Create Date: 2024-06-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_meter_registry"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Meter ids compare byte-wise (code-point order) whatever the database's locale.
MeterId = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "regions",
        sa.Column("region_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("capacity_kw", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("region_id", name="pk_regions"),
    )
    op.create_table(
        "meters",
        sa.Column("meter_id", MeterId, nullable=False),
        sa.Column("region", sa.Text, nullable=True),
        sa.Column("interval_seconds", sa.Integer, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),  # microseconds since the epoch
        sa.PrimaryKeyConstraint("meter_id", name="pk_meters"),
    )
    op.create_index("ix_meters_region", "meters", ["region"])


def downgrade() -> None:
    op.drop_index("ix_meters_region", table_name="meters")
    op.drop_table("meters")
    op.drop_table("regions")
