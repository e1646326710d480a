"""Stream outcomes, state and replay progress.

Times are integer microseconds since the Unix epoch; raw values of rejected readings are JSON
text (a string stays a string, a number a number); meter states are JSON of the core's plain data.

Revision ID: 0002_stream_outcomes
Revises: 0001_meter_registry
Create Date: 2024-06-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_stream_outcomes"
down_revision: str | Sequence[str] | None = "0001_meter_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MeterId = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
ELECTRICAL = ("voltage", "current", "power_kw", "power_factor", "frequency")


def upgrade() -> None:
    op.create_table(
        "readings",
        sa.Column("meter_id", MeterId, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("slot", sa.BigInteger, nullable=False),
        sa.Column("consumption_kwh", sa.Double, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        *(sa.Column(name, sa.Double, nullable=True) for name in ELECTRICAL),
        sa.Column("region", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("meter_id", "ts", name="pk_readings"),
    )
    op.create_table(
        "rejected_readings",
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("meter_id", MeterId, nullable=False),
        sa.Column("raw_timestamp", sa.Text, nullable=False),
        sa.Column("raw_consumption", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("parsed_ts", sa.BigInteger, nullable=True),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("partition", "position", name="pk_rejected_readings"),
    )
    op.create_index("ix_rejected_readings_meter_id_parsed_ts", "rejected_readings", ["meter_id", "parsed_ts"])
    op.create_table(
        "too_late_readings",
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("meter_id", MeterId, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("consumption_kwh", sa.Double, nullable=False),
        sa.Column("delay_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("partition", "position", name="pk_too_late_readings"),
    )
    op.create_index("ix_too_late_readings_meter_id_ts", "too_late_readings", ["meter_id", "ts"])
    op.create_table(
        "gaps",
        sa.Column("meter_id", MeterId, nullable=False),
        sa.Column("missing_from", sa.BigInteger, nullable=False),
        sa.Column("missing_to", sa.BigInteger, nullable=True),
        sa.Column("missing_intervals", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("meter_id", "missing_from", name="pk_gaps"),
    )
    op.create_table(
        "aggregates",
        sa.Column("meter_id", MeterId, nullable=False),
        sa.Column("window_us", sa.BigInteger, nullable=False),
        sa.Column("window_start", sa.BigInteger, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("sum_kwh", sa.Double, nullable=False),
        sa.Column("min_kwh", sa.Double, nullable=False),
        sa.Column("max_kwh", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("meter_id", "window_us", "window_start", name="pk_aggregates"),
    )
    op.create_index("ix_aggregates_window_us_window_start", "aggregates", ["window_us", "window_start"])
    op.create_table(
        "stream_partitions",
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("max_event_time", sa.BigInteger, nullable=True),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("stream", "partition", name="pk_stream_partitions"),
    )
    op.create_table(
        "meter_states",
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("meter_id", MeterId, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("stream", "partition", "meter_id", name="pk_meter_states"),
    )
    op.create_table(
        "replay_progress",
        sa.Column("source_key", sa.Text, nullable=False),
        sa.Column("rows_done", sa.BigInteger, nullable=False),
        sa.Column("finished", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("source_key", name="pk_replay_progress"),
    )


def downgrade() -> None:
    op.drop_table("replay_progress")
    op.drop_table("meter_states")
    op.drop_table("stream_partitions")
    op.drop_index("ix_aggregates_window_us_window_start", table_name="aggregates")
    op.drop_table("aggregates")
    op.drop_table("gaps")
    op.drop_index("ix_too_late_readings_meter_id_ts", table_name="too_late_readings")
    op.drop_table("too_late_readings")
    op.drop_index("ix_rejected_readings_meter_id_parsed_ts", table_name="rejected_readings")
    op.drop_table("rejected_readings")
    op.drop_table("readings")
