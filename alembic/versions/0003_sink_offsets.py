"""Kafka sink offsets: the next offset of each output partition, stored with the rows read there.

Revision ID: 0003_sink_offsets
Revises: 0002_stream_outcomes
Create Date: 2024-06-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_sink_offsets"
down_revision: str | Sequence[str] | None = "0002_stream_outcomes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sink_offsets",
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("consumer", "topic", "partition", name="pk_sink_offsets"),
    )


def downgrade() -> None:
    op.drop_table("sink_offsets")
