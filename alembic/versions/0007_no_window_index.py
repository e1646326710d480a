"""The aggregates table loses its index by (window_us, window_start) (issue 4).

Every closed window is a row of the aggregates table, one and a half per reading with the
default 15m, 1h and 1d windows: the most written table of all. The index by window made each of
those rows cost a third more of SQLite's time (a replay of a 1,500-meter week: 3.0 s -> 2.1 s
for its 758,000 windows) and served one query, a region's windows, which now goes meter by meter
through the primary key (meter_id, window_us, window_start) instead, a page at a time
(api_queries.region_aggregates). On a partitioned PostgreSQL table, dropping the parent's index
drops every partition's too.

Revision ID: 0007_no_window_index
Revises: 0006_time_partitions
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007_no_window_index"
down_revision: str | Sequence[str] | None = "0006_time_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_aggregates_window_us_window_start"


def upgrade() -> None:
    op.drop_index(INDEX, table_name="aggregates", if_exists=True)


def downgrade() -> None:
    op.create_index(INDEX, "aggregates", ["window_us", "window_start"], if_not_exists=True)
