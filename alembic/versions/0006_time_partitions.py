"""Time partitioning of the stream's time-series tables on PostgreSQL (issue 5); SQLite unchanged.

readings (by ts), rejected_readings (by received_at), too_late_readings (by ts) and aggregates
(by window_start) become, on PostgreSQL:

- with the `timescaledb` extension installed in the database (detected here, at migration time):
  hypertables with 30-day chunks of integer time (microseconds), and native compression of chunks
  older than 7 days (segmented by meter, ordered by time; TimescaleDB >= 2.11 accepts the late
  inserts and upserts that may still reach a compressed chunk);
- else: native declarative partitioning, PARTITION BY RANGE on the time column, one partition per
  UTC calendar month in the schema `metrify_partitions` (so that the public schema lists only the
  logical tables), plus a DEFAULT partition that catches any row outside the months created, so a
  write never fails. The months holding data and the current month - 1 .. + 3 are created here;
  later months are created ahead by `metrify db partitions --create-ahead N` and on the fly by the
  sink (metrify.adapters.sqlalchemy.partitions).

A partitioned table's primary key must hold its partition column, so the keys become:
readings (meter_id, ts) and aggregates (meter_id, window_us, window_start), unchanged;
too_late_readings (partition, position, ts): a given input position always carries the same ts,
so a repeated write still meets its row; rejected_readings (partition, position, received_at):
a rejected reading has no reliable event time (its timestamp may be missing, unparseable, or
years off, which is often why it was rejected), so it is partitioned by when it was stored, which
is what its 30-day retention means; the writer keeps (partition, position) unique itself.

The conversion copies each table's rows into the new table (one transaction; for a large table
plan a maintenance window). Downgrade copies them back into plain tables with the old keys.

Revision ID: 0006_time_partitions
Revises: 0005_users_and_ingest_keys
Create Date: 2024-07-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0006_time_partitions"
down_revision: str | Sequence[str] | None = "0005_users_and_ingest_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTITION_SCHEMA = "metrify_partitions"
MONTHS_AHEAD = 3  # at migration time; the maintenance command extends it

# table: (time column, primary key when partitioned, primary key of 0002, secondary indexes)
TABLES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], dict[str, tuple[str, ...]]]] = {
    "readings": ("ts", ("meter_id", "ts"), ("meter_id", "ts"), {}),
    "rejected_readings": (
        "received_at",
        ("partition", "position", "received_at"),
        ("partition", "position"),
        {"ix_rejected_readings_meter_id_parsed_ts": ("meter_id", "parsed_ts")},
    ),
    "too_late_readings": (
        "ts",
        ("partition", "position", "ts"),
        ("partition", "position"),
        {"ix_too_late_readings_meter_id_ts": ("meter_id", "ts")},
    ),
    "aggregates": (
        "window_start",
        ("meter_id", "window_us", "window_start"),
        ("meter_id", "window_us", "window_start"),
        {"ix_aggregates_window_us_window_start": ("window_us", "window_start")},
    ),
}

# TimescaleDB: chunk width and compression (integer time in microseconds)
CHUNK_US = 30 * 86400 * 1_000_000
COMPRESS_AFTER_US = 7 * 86400 * 1_000_000
COMPRESSION = {  # segmentby, orderby: together they cover each unique key, as TimescaleDB advises
    "readings": ("meter_id", "ts"),
    "rejected_readings": ("partition", "position, received_at"),
    "too_late_readings": ("partition", "position, ts"),
    "aggregates": ("meter_id, window_us", "window_start"),
}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_US = 86400 * 1_000_000


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cols(names: Sequence[str]) -> str:
    return ", ".join(_q(n) for n in names)


def _us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _month_of_day(day: int) -> datetime | None:
    try:
        moment = EPOCH + timedelta(days=day)
    except OverflowError:
        return None
    return moment.replace(day=1)


def _add_months(month: datetime, n: int) -> datetime | None:
    index = month.year * 12 + month.month - 1 + n
    year, month_index = divmod(index, 12)
    if not 1 <= year <= 9999:
        return None
    return month.replace(year=year, month=month_index + 1)


def _execute(sql: str) -> None:
    op.execute(sa.text(sql))


def _timescaledb() -> bool:
    if op.get_context().as_sql:  # offline SQL: no database to ask
        return False
    return (
        op.get_bind().execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first() is not None
    )


def _data_months(table: str, column: str) -> set[datetime]:
    if op.get_context().as_sql:
        return set()
    days = op.get_bind().execute(
        sa.text(f"SELECT DISTINCT floor({_q(column)} / {float(DAY_US)})::bigint FROM {_q(table)}")
    )
    return {month for (day,) in days if (month := _month_of_day(day)) is not None}


def _rebuild(table: str, partitioned: bool) -> None:
    """Replace `table` by a copy of itself, partitioned by month or plain, rows and names kept."""
    column, partitioned_key, plain_key, indexes = TABLES[table]
    new = f"{table}_rebuild"
    clause = f" PARTITION BY RANGE ({_q(column)})" if partitioned else ""
    _execute(f"CREATE TABLE {_q(new)} (LIKE {_q(table)} INCLUDING DEFAULTS INCLUDING STORAGE){clause}")
    key = partitioned_key if partitioned else plain_key
    _execute(f"ALTER TABLE {_q(new)} ADD CONSTRAINT {_q(f'pk_{new}')} PRIMARY KEY ({_cols(key)})")
    for name, columns in indexes.items():
        _execute(f"CREATE INDEX {_q(name + '_rebuild')} ON {_q(new)} ({_cols(columns)})")
    if partitioned:
        now = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        months = _data_months(table, column)
        months.update(m for n in range(-1, MONTHS_AHEAD + 1) if (m := _add_months(now, n)) is not None)
        schema = _q(PARTITION_SCHEMA)
        _execute(f"CREATE TABLE {schema}.{_q(table + '_default')} PARTITION OF {_q(new)} DEFAULT")
        for month in sorted(months):
            following = _add_months(month, 1)
            upper = _us(following) if following is not None else _us(month) + 31 * DAY_US
            _execute(
                f"CREATE TABLE {schema}.{_q(f'{table}_p{month:%Y%m%d}')} PARTITION OF {_q(new)} "
                f"FOR VALUES FROM ({_us(month)}) TO ({upper})"
            )
    conflict = "" if partitioned else " ON CONFLICT DO NOTHING"  # keys only shrink going down
    _execute(f"INSERT INTO {_q(new)} SELECT * FROM {_q(table)}{conflict}")
    _execute(f"DROP TABLE {_q(table)}")
    _execute(f"ALTER TABLE {_q(new)} RENAME TO {_q(table)}")
    _execute(f"ALTER TABLE {_q(table)} RENAME CONSTRAINT {_q(f'pk_{new}')} TO {_q(f'pk_{table}')}")
    for name in indexes:
        _execute(f"ALTER INDEX {_q(name + '_rebuild')} RENAME TO {_q(name)}")


def _to_hypertable(table: str) -> None:
    column, partitioned_key, plain_key, _ = TABLES[table]
    if partitioned_key != plain_key:
        _execute(f"ALTER TABLE {_q(table)} DROP CONSTRAINT {_q(f'pk_{table}')}")
        _execute(f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(f'pk_{table}')} PRIMARY KEY ({_cols(partitioned_key)})")
    _execute(
        f"SELECT create_hypertable('{table}', '{column}', chunk_time_interval => {CHUNK_US}::bigint, "
        "create_default_indexes => false, migrate_data => true)"  # the keys and indexes of 0002 serve
    )
    _execute(f"SELECT set_integer_now_func('{table}', 'metrify_now_us')")
    segment_by, order_by = COMPRESSION[table]
    _execute(
        f"ALTER TABLE {_q(table)} SET (timescaledb.compress, timescaledb.compress_segmentby = '{segment_by}', "
        f"timescaledb.compress_orderby = '{order_by}')"
    )
    _execute(f"SELECT add_compression_policy('{table}', compress_after => {COMPRESS_AFTER_US}::bigint)")


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return  # SQLite: no partitions; retention deletes rows there
    if _timescaledb():
        _execute(
            "CREATE OR REPLACE FUNCTION metrify_now_us() RETURNS bigint LANGUAGE sql STABLE AS "
            "$$ SELECT (extract(epoch FROM now()) * 1000000)::bigint $$"
        )
        for table in TABLES:
            _to_hypertable(table)
        return
    _execute(f"CREATE SCHEMA IF NOT EXISTS {_q(PARTITION_SCHEMA)}")
    for table in TABLES:
        _rebuild(table, partitioned=True)


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table in TABLES:  # from partitioned tables or hypertables alike
        _rebuild(table, partitioned=False)
    _execute("DROP FUNCTION IF EXISTS metrify_now_us()")
    _execute(f"DROP SCHEMA IF EXISTS {_q(PARTITION_SCHEMA)}")
