"""SQLite's aggregates table loses its index by (window_us, window_start) (issue 4).

Every closed window is a row of the aggregates table, one and a half per reading with the
default 15m, 1h and 1d windows: the most written table of all. On SQLite the index by window
made each of those rows cost a third more (a replay of a 1,500-meter week: 3.0 s -> 2.1 s for
its 758,000 windows) and served one query, a region's windows, which reads them as fast or
faster meter by meter through the primary key (meter_id, window_us, window_start), a page's span
at a time (api_queries.region_aggregates). PostgreSQL keeps the index: its tables hold rows in
the order they arrived, window after window, and the index reads a region's windows from a few
pages, where one meter's windows lie a page apart (bench_region_query.py).

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
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index(INDEX, table_name="aggregates", if_exists=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.create_index(INDEX, "aggregates", ["window_us", "window_start"], if_not_exists=True)
