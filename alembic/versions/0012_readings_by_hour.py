"""SQLite finds readings through a unique index on (ts / 3600000000, meter_id, ts): hour first.

A fleet's batch holds one reading of each of many meters, all of about the same time. Keyed
(meter_id, ts), those readings went to as many places in the key as there were meters, and once a
meter's readings filled a page, one page each: every such page was written to the write-ahead log
at commit. For batches of 1,000 of 10,000 half-hourly meters that was ~80 pages per batch on a
fresh database and ~1,050 (4 MB) after 1.2 million readings, the more the longer the history,
with the CPU time per batch up by half. Hour first, a batch's readings sit side by side in the
index: ~110-150 pages per batch however long the history. The table keeps its rowid (rows in the
order they arrive) and loses its primary key; the index keeps the same readings apart, since the
hour is a function of ts, so an insert that meets a reading stored already still does nothing.

One meter's readings are then read hour by hour (adapters/sqlalchemy/hours.py), and
`reading_meters` (one row per meter with readings, written with them) says which meters to look
for at all: a meter with no readings costs one look-up, not one per hour of the history.
PostgreSQL is unchanged: its readings lie in monthly partitions, each keyed (meter_id, ts).

Revision ID: 0012_readings_by_hour
Revises: 0011_aggregates_by_window
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012_readings_by_hour"
down_revision: str | Sequence[str] | None = "0011_aggregates_by_window"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "meter_id, ts, slot, consumption_kwh, status, partition, "
    "voltage, current, power_kw, power_factor, frequency, region"
)
HOUR = "ts / 3600000000"


def _rebuild(primary_key: str | None, order: str) -> None:
    """The readings table again, with `primary_key` (None: none), holding the same rows."""
    constraint = f", CONSTRAINT pk_readings PRIMARY KEY ({primary_key})" if primary_key else ""
    op.execute(
        "CREATE TABLE readings_rekeyed ("
        "meter_id TEXT NOT NULL, ts BIGINT NOT NULL, slot BIGINT NOT NULL, consumption_kwh DOUBLE NOT NULL, "
        "status TEXT NOT NULL, partition INTEGER NOT NULL, voltage DOUBLE, current DOUBLE, power_kw DOUBLE, "
        f"power_factor DOUBLE, frequency DOUBLE, region TEXT{constraint})"
    )
    op.execute(f"INSERT INTO readings_rekeyed ({COLUMNS}) SELECT {COLUMNS} FROM readings ORDER BY {order}")
    op.execute("DROP TABLE readings")
    op.execute("ALTER TABLE readings_rekeyed RENAME TO readings")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _rebuild(None, f"{HOUR}, meter_id, ts")
    op.execute(f"CREATE UNIQUE INDEX ux_readings_hour ON readings ({HOUR}, meter_id, ts)")
    op.execute("CREATE TABLE reading_meters (meter_id TEXT NOT NULL, PRIMARY KEY (meter_id)) WITHOUT ROWID")
    op.execute("INSERT INTO reading_meters (meter_id) SELECT DISTINCT meter_id FROM readings ORDER BY meter_id")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TABLE reading_meters")
    op.execute("DROP INDEX ux_readings_hour")
    _rebuild("meter_id, ts", "meter_id, ts")
