"""The relational schema, as SQLAlchemy Core tables: the domain stays free of any mapping.

Times are integer microseconds since the Unix epoch (the stream core's unit), so that a value
read back is exactly the value written. Meter ids compare byte-wise (COLLATE "C" on PostgreSQL,
SQLite's default BINARY), which for UTF-8 is code-point order: exports sort exactly as Python does.
PostgreSQL's text cannot hold U+0000: there meter ids and regions are stored, and looked up, with
each NUL replaced by U+FFFD (pg_text.py; `NulFreeText` for statements, the sink's writer for rows).
The migrations in alembic/versions create these same tables; a test checks that they agree.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from metrify.adapters.sqlalchemy.pg_text import without_nul

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)


class NulFreeText(sa.TypeDecorator[str]):
    """PostgreSQL's text for ids and regions: a value bound to a statement has each NUL replaced
    by U+FFFD, as the sink's writer stores it (pg_text.py), so that an id holding one is stored
    and found again. SQLite's columns keep such text exactly."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return without_nul(value) if type(value) is str else value


# Byte-order text on PostgreSQL whatever the database's locale; SQLite compares bytes already.
MeterId = sa.Text().with_variant(NulFreeText(collation="C"), "postgresql")
Region = sa.Text().with_variant(NulFreeText(), "postgresql")
Micros = sa.BigInteger
Kwh = sa.Double

# Keys of ReadingAccepted.extra that have a column of their own (all numbers but `region`).
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1  # a BIGINT column's bounds (times, offsets)
ELECTRICAL = ("voltage", "current", "power_kw", "power_factor", "frequency")
EXTRA_KEYS = (*ELECTRICAL, "region")

meters = sa.Table(
    "meters",
    metadata,
    sa.Column("meter_id", MeterId, primary_key=True),
    sa.Column("region", Region, nullable=True, index=True),
    sa.Column("interval_seconds", sa.Integer, nullable=True),
    sa.Column("created_at", Micros, nullable=False),
)

regions = sa.Table(
    "regions",
    metadata,
    sa.Column("region_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("capacity_kw", sa.Double, nullable=False),
)

# On SQLite (Alembic 0012) the table has no primary key: a unique index on (ts / 3600000000,
# meter_id, ts), hour first, keeps the same readings apart and writes a batch's side by side (keyed
# meter first, each meter's reading went to a page of its own once a meter's readings filled one:
# ~1,000 pages of log per batch of 1,000 meters), and `reading_meters` says which meters have any.
# Reads go hour by hour (hours.py). PostgreSQL keeps the key (meter_id, ts) in each month's partition.
readings = sa.Table(
    "readings",
    metadata,
    sa.Column("meter_id", MeterId, primary_key=True),
    sa.Column("ts", Micros, primary_key=True),
    sa.Column("slot", Micros, nullable=False),
    sa.Column("consumption_kwh", Kwh, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    *(sa.Column(name, sa.Double, nullable=True) for name in ELECTRICAL),
    sa.Column("region", Region, nullable=True),
)

# SQLite's only (Alembic 0012): each meter that has readings, written with them (see readings).
reading_meters = sa.Table(
    "reading_meters",
    metadata,
    sa.Column("meter_id", MeterId, primary_key=True),
    sqlite_with_rowid=False,
    info={"only_on": "sqlite"},
)

rejected_readings = sa.Table(
    "rejected_readings",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("meter_id", MeterId, nullable=False),
    # The raw values as JSON text, so that a string stays a string and a number a number.
    sa.Column("raw_timestamp", sa.Text, nullable=False),
    sa.Column("raw_consumption", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("parsed_ts", Micros, nullable=True),
    sa.Column("received_at", Micros, nullable=False),
    sa.Index("ix_rejected_readings_meter_id_parsed_ts", "meter_id", "parsed_ts"),
)

too_late_readings = sa.Table(
    "too_late_readings",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("meter_id", MeterId, nullable=False),
    sa.Column("ts", Micros, nullable=False),
    sa.Column("consumption_kwh", Kwh, nullable=False),
    sa.Column("delay_us", Micros, nullable=False),
    sa.Index("ix_too_late_readings_meter_id_ts", "meter_id", "ts"),
)

gaps = sa.Table(
    "gaps",
    metadata,
    sa.Column("meter_id", MeterId, primary_key=True),
    sa.Column("missing_from", Micros, primary_key=True),
    sa.Column("missing_to", Micros, nullable=True),
    sa.Column("missing_intervals", sa.Integer, nullable=False),
)

aggregates = sa.Table(
    "aggregates",
    metadata,
    sa.Column("meter_id", MeterId, primary_key=True),
    sa.Column("window_us", Micros, primary_key=True),
    sa.Column("window_start", Micros, primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("sum_kwh", Kwh, nullable=False),
    sa.Column("min_kwh", Kwh, nullable=False),
    sa.Column("max_kwh", Kwh, nullable=False),
    # Every meter's value of one window (regional load, tariffs), on PostgreSQL only (Alembic
    # 0007): there the rows lie in the order they arrived, window after window, and this index
    # reads a region's windows from a few pages. SQLite keys the table window first instead,
    # (window_us, window_start, meter_id) WITHOUT ROWID (Alembic 0011), so that the windows
    # closed fleet-wide by one batch are written side by side; it reads one meter's windows
    # window start by window start (windows.py).
    sa.Index("ix_aggregates_window_us_window_start", "window_us", "window_start").ddl_if(dialect="postgresql"),
)

stream_partitions = sa.Table(
    "stream_partitions",
    metadata,
    sa.Column("stream", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("max_event_time", Micros, nullable=True),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    # The unit of work that wrote the header last (Alembic 0008): a writer whose commit's
    # acknowledgement was lost reads it back to learn whether its commit went through.
    sa.Column("commit_token", sa.Text, nullable=True),
    # Where the partition's meter states stand when saved behind the header (Alembic 0014; the
    # API's stream writer saves them every N batches): NULL when they are as far as the header.
    sa.Column("states_max_event_time", Micros, nullable=True),
    sa.Column("states_next_offset", sa.BigInteger, nullable=True),
)

meter_states = sa.Table(
    "meter_states",
    metadata,
    sa.Column("stream", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("meter_id", MeterId, primary_key=True),
    sa.Column("data", sa.Text, nullable=False),  # JSON (orjson) of MeterState.to_data()
)

# SQLite's only (Alembic 0013): the states a batch changed, as one row per partition (a JSON object
# of meter id -> MeterState.to_data()), read after meter_states in `seq` order, and folded into it
# as they age (state_log.py). A meter's first state goes to meter_states itself, so that table
# names every meter that has a state.
meter_state_log = sa.Table(
    "meter_state_log",
    metadata,
    sa.Column("stream", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("meters", sa.Text, nullable=False),
    info={"only_on": "sqlite"},
)

replay_progress = sa.Table(
    "replay_progress",
    metadata,
    sa.Column("source_key", sa.Text, primary_key=True),
    sa.Column("rows_done", sa.BigInteger, nullable=False),
    sa.Column("finished", sa.Boolean, nullable=False),
    sa.Column("updated_at", Micros, nullable=False),
)

STREAM_TABLES = (
    readings,
    rejected_readings,
    too_late_readings,
    gaps,
    aggregates,
    stream_partitions,
    meter_states,
    replay_progress,
)

# Kafka mode: the next offset of every output partition the database sink has stored, written in
# the same transaction as the rows it read there (so a crash can neither lose nor double a row).
sink_offsets = sa.Table(
    "sink_offsets",
    metadata,
    sa.Column("consumer", sa.Text, primary_key=True),  # the sink's consumer group
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
    sa.Column("updated_at", Micros, nullable=False),
)

# -- API: users, their assignments, and ingest keys (issue 7) ------------------------------------

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("email", sa.Text, nullable=False, unique=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("updated_at", Micros, nullable=False),
    # changes with the password and at deactivation; a token carries it (Alembic 0010)
    sa.Column("security_stamp", sa.Text, nullable=False, server_default=""),
)

user_meters = sa.Table(
    "user_meters",
    metadata,
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.user_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("meter_id", MeterId, primary_key=True),
)

user_regions = sa.Table(
    "user_regions",
    metadata,
    sa.Column("user_id", sa.Text, sa.ForeignKey("users.user_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("region", Region, primary_key=True),
)

ingest_keys = sa.Table(
    "ingest_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),  # SHA-256 of the token, hex
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("all_regions", sa.Boolean, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("revoked_at", Micros, nullable=True),
)

ingest_key_regions = sa.Table(
    "ingest_key_regions",
    metadata,
    sa.Column("key_id", sa.Text, sa.ForeignKey("ingest_keys.key_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("region", Region, primary_key=True),
)

# Revocations of tokens (logged-out sessions, used refresh tokens) when there is no Redis to keep
# them (Alembic 0009): the API keeps them in memory and here, and reads them back when it starts.
revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("expires_at", Micros, nullable=False, index=True),
)

API_TABLES = (user_meters, user_regions, ingest_key_regions, users, ingest_keys, revoked_tokens)
