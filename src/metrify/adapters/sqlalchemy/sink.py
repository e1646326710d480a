"""Bulk, idempotent writes of a folded batch (OutcomeBatch) plus state and progress rows.

Both writers send the same rows with the same conflict rules (DESIGN §4: the sink upserts by
natural keys, so a batch written twice changes nothing):

- readings: insert or ignore by (meter_id, ts); rejected and too-late: by (partition, position);
- gaps: the identities healing retired are deleted, then the gap rows are upserted;
- aggregates, partition headers, meter states, progress: upserted, the last value winning.

SQLite takes them through the driver's executemany, many rows to a statement. PostgreSQL takes
them through binary COPY: insert-or-ignore rows, and aggregates (a window is new when it closes),
straight into their table while none of them is there yet, else (and for the other upserts) into
a temporary staging table, then one INSERT ... SELECT ... ON CONFLICT per table.
Small sets go through executemany, which psycopg pipelines.

On PostgreSQL the time-series tables are partitioned by time (Alembic 0006), and a partitioned
table's unique keys must hold its partition column. Insert-or-ignore therefore names no conflict
target (any key met is a duplicate): too-late readings are keyed (partition, position, ts), the
same for a repeated input position. Rejected readings are partitioned by the time they were
stored, which differs between two writes of the same batch, so their key (partition, position)
is kept by the writer: rows whose key is already stored are left out (NOT EXISTS). Before each
batch the months its rows fall in get their partitions where missing (partitions.py).

PostgreSQL's text cannot hold NUL, which a contract meter id or region may: there each NUL is
stored as U+FFFD, and meter states are keyed so as to give their ids back exactly (pg_text.py).
SQLite stores any text exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import chain
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

from metrify.adapters.sqlalchemy import tables as t
from metrify.adapters.sqlalchemy.codec import encode_raw, encode_state, extra_columns
from metrify.adapters.sqlalchemy.partitions import ensure_partitions, forget, partition_holding
from metrify.adapters.sqlalchemy.pg_text import NUL, nul_free
from metrify.application.outcomes import OutcomeBatch
from metrify.application.ports import SourceProgress, StateSave


class Target:
    """One kind of row: its table, columns, conflict key and the columns an upsert replaces
    (none: insert or ignore), or a delete by key when `delete` is set."""

    def __init__(
        self,
        name: str,
        table: sa.Table,
        columns: Sequence[str],
        key: Sequence[str],
        update: Sequence[str] = (),
        delete: bool = False,
        time_column: str | None = None,
        mostly_new: bool = False,
        plain: bool = False,
    ) -> None:
        self.name, self.table, self.columns, self.key = name, table, tuple(columns), tuple(key)
        self.update, self.delete = tuple(update), delete
        # upserts whose keys are nearly always new (a window's first emission, when it closes)
        self.mostly_new = mostly_new
        self.plain = plain  # an insert whose key is new, or the transaction fails (no conflict clause)
        # the column a partitioned table is split on (PostgreSQL), as an index into a row
        self.time_index = None if time_column is None else self.columns.index(time_column)

    def sql(
        self, placeholder: str, width: int | None = None, rows: int = 1, columns: Sequence[str] | None = None
    ) -> str:
        """The statement for `rows` rows of the first `width` columns, or of `columns` when named
        (the others, nullable, are left NULL), with `placeholder` as the driver spells a parameter."""
        table = _q(self.table.name)
        if self.delete:
            where = " AND ".join(f"{_q(c)} = {placeholder}" for c in self.columns)
            return f"DELETE FROM {table} WHERE {where}"
        if columns is None:
            columns = self.columns[:width]
        values = ", ".join(["(" + ", ".join([placeholder] * len(columns)) + ")"] * rows)
        return f"INSERT INTO {table} ({_cols(columns)}) VALUES {values} {self.conflict()}"

    def conflict(self) -> str:
        if self.plain:
            return ""
        if not self.update:  # no target: a partitioned table's key may hold more than `key`
            return "ON CONFLICT DO NOTHING"
        sets = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in self.update)
        return f"ON CONFLICT ({_cols(self.key)}) DO UPDATE SET {sets}"


def _q(name: str) -> str:
    return f'"{name}"'


def _cols(names: Sequence[str]) -> str:
    return ", ".join(_q(n) for n in names)


def _runs(values: list[tuple[Any, ...]], ragged: bool = True) -> list[tuple[int, list[tuple[Any, ...]]]]:
    """Consecutive rows of the same width, in order. Readings without extras are sent as their
    six leading columns: binding six NULLs per row costs a third of SQLite's insert time. Rows
    that are not `ragged` all have one width (not looked at: 1 ms for 20,000 windows)."""
    if not ragged or len(set(map(len, values))) == 1:
        return [(len(values[0]), values)]
    runs: list[tuple[int, list[tuple[Any, ...]]]] = []
    for row in values:
        if not runs or runs[-1][0] != len(row):
            runs.append((len(row), []))
        runs[-1][1].append(row)
    return runs


READINGS = Target("readings", t.readings, [c.name for c in t.readings.columns], ["meter_id", "ts"], time_column="ts")
REJECTED = Target(
    "rejected",
    t.rejected_readings,
    [c.name for c in t.rejected_readings.columns],
    ["partition", "position"],
    time_column="received_at",
)
TOO_LATE = Target(
    "too_late",
    t.too_late_readings,
    [c.name for c in t.too_late_readings.columns],
    ["partition", "position"],
    time_column="ts",
)
GAP_DELETES = Target("gap_deletes", t.gaps, ["meter_id", "missing_from"], ["meter_id", "missing_from"], delete=True)
GAP_UPSERTS = Target(
    "gap_upserts",
    t.gaps,
    ["meter_id", "missing_from", "missing_to", "missing_intervals"],
    ["meter_id", "missing_from"],
    ["missing_to", "missing_intervals"],
)
AGGREGATES = Target(
    "aggregates",
    t.aggregates,
    [c.name for c in t.aggregates.columns],
    ["meter_id", "window_us", "window_start"],
    ["count", "sum_kwh", "min_kwh", "max_kwh"],
    time_column="window_start",
    mostly_new=True,
)
PARTITIONS = Target(
    "partitions",
    t.stream_partitions,
    [
        "stream",
        "partition",
        "max_event_time",
        "next_offset",
        "commit_token",
        "states_max_event_time",
        "states_next_offset",
    ],
    ["stream", "partition"],
    ["max_event_time", "next_offset", "commit_token", "states_max_event_time", "states_next_offset"],
)
METER_STATES = Target(
    "meter_states",
    t.meter_states,
    ["stream", "partition", "meter_id", "data"],
    ["stream", "partition", "meter_id"],
    ["data"],
)
# SQLite's only (Alembic 0013): a batch's meter states, one row per partition (state_log.py).
STATE_LOG_DELETES = Target(
    "state_log_deletes", t.meter_state_log, ["stream", "partition", "seq"], ["stream", "partition", "seq"], delete=True
)
STATE_LOG = Target(
    "state_log", t.meter_state_log, ["stream", "partition", "seq", "meters"], ["stream", "partition", "seq"], plain=True
)
PROGRESS = Target(
    "progress",
    t.replay_progress,
    ["source_key", "rows_done", "finished", "updated_at"],
    ["source_key"],
    ["rows_done", "finished", "updated_at"],
)

# SQLite's only (Alembic 0012): the meters that have readings, each once (see hours.py).
READING_METERS = Target("reading_meters", t.reading_meters, ["meter_id"], ["meter_id"])
_REGION = READINGS.columns.index("region")

# Written in this order: gap deletes strictly before gap upserts.
TARGETS = (
    READINGS,
    REJECTED,
    TOO_LATE,
    GAP_DELETES,
    GAP_UPSERTS,
    AGGREGATES,
    PARTITIONS,
    METER_STATES,
    STATE_LOG_DELETES,
    STATE_LOG,
    PROGRESS,
)
TIME_SERIES = tuple(target for target in TARGETS if target.time_index is not None)


def _by_meter(rows: list[Any], look_for_nul: bool = False) -> tuple[list[tuple[Any, ...]], bool]:
    """The rows grouped by their first column (the meter), meters in order, each meter's rows in
    the order they came: what a stable sort by meter gives, in one pass over the rows and a sort
    of the meters alone (a batch holds each meter many times: half the time of the sort). And,
    when asked to look, whether a meter id holds NUL: one look per meter, not per row."""
    groups: dict[Any, list[tuple[Any, ...]]] = {}
    for row in rows:
        group = groups.get(row[0])
        if group is None:
            groups[row[0]] = [row]
        else:
            group.append(row)
    nul = look_for_nul and any(NUL in meter for meter in groups)
    if len(groups) == 1:
        return rows, nul
    return list(chain.from_iterable(groups[meter] for meter in sorted(groups))), nul


@dataclass(slots=True)
class Prepared:
    """A writer's work done ahead of the transaction (see `PostgresWriter.prepare`): per target,
    the width and COPY data already encoded, and the time-series rows' times per table."""

    encoded: dict[Target, tuple[int, bytes]] = field(default_factory=dict)
    times: dict[str, list[Any]] | None = None


def _times(rows: dict[Target, list[tuple[Any, ...]]]) -> dict[str, list[Any]]:
    """The times of the time-series rows, per table: which partitions they need."""
    return {
        x.table.name: [row[at] for row in rows[x]]
        for x in TIME_SERIES
        if rows.get(x) and (at := x.time_index) is not None
    }


def batch_rows(
    batch: OutcomeBatch,
    saves: Sequence[StateSave],
    progress: Sequence[SourceProgress],
    now_us: int | None = None,
    *,
    holds_nul: bool = True,
    windows_by_meter: bool = True,
    states: bool = True,
) -> dict[Target, list[tuple[Any, ...]]]:
    """The rows each target receives, in column order; upserts deduplicated, the last one winning.
    A row may hold only its leading columns (a reading without extras); the rest are NULL. Without
    `holds_nul` (PostgreSQL), text is made NUL-free as pg_text.nul_free says. `windows_by_meter`:
    closed windows grouped by meter, for a table keyed meter first (PostgreSQL's). Without `states`
    the meter states saved are left out (SQLite's go through state_log.py), their headers not."""
    now = time.time_ns() // 1000 if now_us is None else now_us
    rows: dict[Target, list[tuple[Any, ...]]] = {}
    readings_nul = windows_nul = False  # whether a meter id of theirs holds NUL (looked for on PostgreSQL)
    if batch.readings:
        # Meter by meter: a fleet's batch arrives time after time, so as it comes, consecutive
        # rows land all over the (meter_id, ts) key (SQLite's (hour, meter_id, ts) index: within
        # an hour, all over it too); grouped, they go through it in one sweep
        # (about a third less of SQLite's CPU per row, a quarter less of PostgreSQL's) and each
        # meter's rows of a batch end up side by side. A meter's rows keep their order (mostly
        # time order already), so of two rows with one key the first still wins.
        rows[READINGS], readings_nul = _by_meter(
            [r[:6] if r[6] is None else r[:6] + extra_columns(r[6], holds_nul) for r in batch.readings], not holds_nul
        )
    if batch.rejected:
        rows[REJECTED] = [
            (
                j.partition,
                j.position,
                j.meter_id,
                encode_raw(j.timestamp),
                encode_raw(j.consumption_kwh),
                j.reason,
                j.parsed_timestamp,
                now,
            )
            for j in batch.rejected
        ]
    if batch.too_late:
        rows[TOO_LATE] = [
            (x.partition, x.position, x.meter_id, x.timestamp, x.consumption_kwh, x.delay) for x in batch.too_late
        ]
    if batch.gap_deletes:
        rows[GAP_DELETES] = sorted(batch.gap_deletes)
    if batch.gap_upserts:
        rows[GAP_UPSERTS] = [
            (g.meter_id, g.missing_from, g.missing_to, g.missing_intervals) for g in batch.gap_upserts.values()
        ]
    if batch.windows:
        # The events are the rows: a WindowUpdated is a tuple in the table's column order.
        # Closed windows arrive time after time as well: grouped by meter for a table keyed meter
        # first, for the same reason (a replay of a 1,500-meter week: PostgreSQL's COPY of them
        # 9.2 s -> 6.2 s). SQLite keys them window first (Alembic 0011): there they go as they come.
        # SQLite takes them in order, one key twice included (the later row updates the earlier);
        # PostgreSQL's upsert cannot touch a row twice in one statement: it gets the last of each.
        if windows_by_meter:
            rows[AGGREGATES], windows_nul = _by_meter(list(batch.latest_windows().values()), not holds_nul)
        else:
            # NUL not looked for: checked when it matters
            rows[AGGREGATES], windows_nul = list(batch.windows), not holds_nul
    if saves:
        headers: dict[tuple[str, int], tuple[Any, ...]] = {}
        meter_states: dict[tuple[str, int, str], tuple[Any, ...]] = {}
        for stream, partition, max_event_time, next_offset, meters, token, states_at in saves:
            at = (None, None) if states_at is None else states_at
            headers[(stream, partition)] = (stream, partition, max_event_time, next_offset, token, *at)
            if not states:
                continue
            for meter_id, data in meters.items():
                meter_states[(stream, partition, meter_id)] = (stream, partition, meter_id, encode_state(data))
        rows[PARTITIONS] = list(headers.values())
        if meter_states:
            rows[METER_STATES] = list(meter_states.values())
    if progress:
        latest = {p.source_key: (p.source_key, p.rows_done, p.finished, now) for p in progress}
        rows[PROGRESS] = list(latest.values())
    if holds_nul:
        return rows
    # Known to hold no NUL already, not looked at again: the regions of readings (extra_columns
    # made them so) and the meter ids of readings and windows when _by_meter found none there.
    free = {READINGS: (_REGION,) if readings_nul else (_REGION, 0), AGGREGATES: () if windows_nul else (0,)}
    return nul_free(rows, free, METER_STATES)


def _driver(connection: sa.Connection) -> Any:
    """The driver's own connection under a SQLAlchemy one (already in its transaction)."""
    driver = connection.connection.driver_connection
    if driver is None:
        raise RuntimeError("the connection was closed")
    return driver


class SqliteWriter:
    """executemany on the raw sqlite3 connection, inside the SQLAlchemy transaction. Inserts go
    many rows to a statement (VALUES (...), (...), ...): 10-20% less of SQLite's CPU per row
    than one statement per row. SQLite applies a statement's rows in order, as it would apply
    the same rows one statement each, so the conflict rules are unchanged."""

    # bound parameters per statement: 999 is the lowest limit any SQLite build has
    max_parameters = 999
    holds_nul = True  # SQLite's text holds any text exactly
    windows_by_meter = False  # its aggregates are keyed window first (Alembic 0011)
    logs_states = True  # meter states go through state_log.py (Alembic 0013)

    def prepare(self, connection: sa.Connection, rows: dict[Target, list[tuple[Any, ...]]]) -> Prepared:
        """Nothing to encode ahead: sqlite3 binds the rows as it inserts them."""
        return Prepared()

    def write(
        self,
        connection: sa.Connection,
        rows: dict[Target, list[tuple[Any, ...]]],
        prepared: Prepared | None = None,
        on_sending: Callable[[], None] | None = None,
    ) -> None:
        if on_sending is not None:
            on_sending()  # the rows go in from here on
        if not rows:
            return
        cursor = _driver(connection).cursor()
        try:
            for target in TARGETS:
                values = rows.get(target)
                if not values:
                    continue
                for width, run in _runs(values, target is READINGS):
                    if target is READINGS and width > _FIXED_READING_COLUMNS:
                        columns, run = _held_columns(run, width)
                        self.insert(cursor, target, len(columns), run, columns)
                    else:
                        self.insert(cursor, target, width, run)
                if target is READINGS:  # the readings' meters, each once (grouped by meter already)
                    meters = dict.fromkeys(map(itemgetter(0), values))
                    self.insert(cursor, READING_METERS, 1, [(meter,) for meter in meters])
        finally:
            cursor.close()

    def insert(
        self,
        cursor: Any,
        target: Target,
        width: int,
        run: list[tuple[Any, ...]],
        columns: Sequence[str] | None = None,
    ) -> None:
        per = 1 if target.delete else self.max_parameters // width
        whole = len(run) - len(run) % per if per > 1 else 0
        if whole:
            # one flat list, cut into statements: a third of the time of flattening each slice
            flat = list(chain.from_iterable(run[:whole]))
            step = per * width
            cursor.executemany(
                target.sql("?", width, per, columns), [flat[i : i + step] for i in range(0, len(flat), step)]
            )
        if whole < len(run):
            cursor.executemany(target.sql("?", width, 1, columns), run[whole:])


_FIXED_READING_COLUMNS = 6  # meter_id .. partition: a reading always has them; the extras follow


def _held_columns(run: list[tuple[Any, ...]], width: int) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """The readings' columns that some row of the run holds a value in, and the rows cut down to
    them. A fleet's readings carry one or two of the six extras (voltage, region): binding the
    other columns' NULLs, row after row, took a third of SQLite's time for the readings (in a
    batch of 1,000 with voltage and region, 11.6 -> 7.6 ms, with the commit). Looked at column
    by column, in C: about 20 us per column for 1,000 rows."""
    held = list(range(_FIXED_READING_COLUMNS))
    for index in range(_FIXED_READING_COLUMNS, width):
        values = list(map(itemgetter(index), run))
        if values.count(None) < len(values):
            held.append(index)
    columns = tuple(READINGS.columns[i] for i in held)
    if len(held) == width:
        return columns, run
    return columns, list(map(itemgetter(*held), run))


_PG_TYPES = {sa.Text: "text", sa.BigInteger: "int8", sa.Integer: "int4", sa.Double: "float8", sa.Boolean: "bool"}


def _pg_type(column: sa.Column[Any]) -> str:
    for kind, name in _PG_TYPES.items():
        if isinstance(column.type, kind) or isinstance(getattr(column.type, "impl", None), kind):
            return name
    raise TypeError(f"no COPY type for {column.table.name}.{column.name}: {column.type!r}")


class PostgresWriter:
    """Binary COPY into per-session TEMP staging tables, then one set-based statement per table;
    sets below `copy_threshold` rows go through executemany. A stage is used once per
    transaction and emptied by the commit (ON COMMIT DELETE ROWS) or the rollback. Its rows hold no
    NUL (batch_rows without `holds_nul`): each became U+FFFD, as pg_text.py says."""

    holds_nul = False
    windows_by_meter = True  # its aggregates are keyed meter first
    logs_states = False  # meter states are rows of meter_states

    def __init__(self, copy_threshold: int = 64) -> None:
        self.copy_threshold = copy_threshold
        self.types = {target: [_pg_type(target.table.c[c]) for c in target.columns] for target in TARGETS}
        self.guarded = {REJECTED}  # keys the table cannot enforce once partitioned: kept here
        self._sending: Callable[[], None] | None = None  # see `write`

    @staticmethod
    def stage(target: Target) -> str:
        return f"metrify_stage_{target.name}"

    def prepare(self, connection: sa.Connection, rows: dict[Target, list[tuple[Any, ...]]]) -> Prepared:
        """Encode the COPY data of every set that will be copied, without a word to the server:
        psycopg's binary encoding through the connection's adapters, into memory. A thread that
        prepares the next transaction this way leaves the one writing the current transaction
        nothing to do but move bytes, so the server is never kept waiting for them (the sink's
        write-behind; the sets `any_stored` guards are encoded when written)."""
        from psycopg.copy import Copy

        prepared = Prepared(times=_times(rows))
        with _driver(connection).cursor() as cursor:  # its adapters only: nothing is sent through it
            for target, values in rows.items():
                if len(values) < self.copy_threshold or target in self.guarded:
                    continue
                width, full = _copy_rows(target, values)
                collected = _collecting_writer()()
                with Copy(cursor, binary=True, writer=collected) as copy:
                    self.put_rows(copy, target, width, full)
                prepared.encoded[target] = (width, b"".join(collected.parts))
        return prepared

    def write(
        self,
        connection: sa.Connection,
        rows: dict[Target, list[tuple[Any, ...]]],
        prepared: Prepared | None = None,
        on_sending: Callable[[], None] | None = None,
    ) -> None:
        """Write the rows in the connection's transaction. `on_sending` is called once, when the
        first COPY data starts to flow (the checks before it done), or at the end if none does:
        from there on the server has the work, and the caller's thread may prepare the next."""
        self._sending = on_sending
        try:
            self._write(connection, rows, prepared or Prepared())
        finally:
            sending, self._sending = self._sending, None
        if sending is not None:
            sending()

    def _write(self, connection: sa.Connection, rows: dict[Target, list[tuple[Any, ...]]], prepared: Prepared) -> None:
        if not rows:
            return
        encoded = prepared.encoded
        times = prepared.times if prepared.times is not None else _times(rows)
        if times:
            ensure_partitions(connection.engine, times)
        with _driver(connection).cursor() as cursor:
            # stages for the upserts (one round trip); a direct COPY makes its own only if it fails
            staged = [
                target
                for target in TARGETS
                if len(rows.get(target, ())) >= self.copy_threshold and not self.direct(target)
            ]
            if staged:
                cursor.execute("; ".join(self.create_stage(x) for x in staged))
            for target in TARGETS:
                values = rows.get(target)
                if not values:
                    continue
                if target in self.guarded and self.any_stored(cursor, target, values):
                    self.insert_new(cursor, target, values)
                    continue
                if len(values) < self.copy_threshold:
                    for width, run in _runs(values, target is READINGS):
                        cursor.executemany(target.sql("%s", width), run)
                    continue
                width, data = encoded[target] if target in encoded else _copy_rows(target, values)
                if self.direct(target):
                    into = self.month_partition(cursor, connection.engine, target, times)
                    stored = self.copy_direct(cursor, target, width, data, into)
                    if stored is None:  # that partition no longer takes these rows
                        forget(connection.engine)
                        stored = self.copy_direct(cursor, target, width, data)
                    if stored:
                        continue
                    cursor.execute(self.create_stage(target))
                self.copy(cursor, self.stage(target), target, width, data)
                cursor.execute(self.set_sql(target, width))

    def direct(self, target: Target) -> bool:
        """Rows tried straight into the table (`copy_direct`): insert-or-ignore rows, and upserts
        whose keys are nearly always new. While no key is there yet, inserting them is the upsert,
        without the staging table and the speculative insertion of ON CONFLICT (on 10,000 closed
        windows, 40 % less time); any key already there sends the set through the stage."""
        return target.mostly_new or (not target.update and not target.delete)

    def create_stage(self, target: Target) -> str:
        return (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.stage(target)} ON COMMIT DELETE ROWS AS "
            f"SELECT {_cols(target.columns)} FROM {_q(target.table.name)} WITH NO DATA"
        )

    def copy(self, cursor: Any, into: str, target: Target, width: int, data: list[tuple[Any, ...]] | bytes) -> None:
        """COPY rows, or COPY data that `prepare` encoded (the whole binary stream)."""
        columns = _cols(target.columns[:width])
        with cursor.copy(f"COPY {into} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            sending, self._sending = self._sending, None
            if sending is not None:
                sending()
            if isinstance(data, bytes):
                copy.write(data)
            else:
                self.put_rows(copy, target, width, data)

    def put_rows(self, copy: Any, target: Target, width: int, rows: list[tuple[Any, ...]]) -> None:
        """Rows into a COPY of their first `width` columns, in binary with the columns' types."""
        copy.set_types(self.types[target][:width])
        for row in rows:
            copy.write_row(row)

    @staticmethod
    def month_partition(cursor: Any, engine: sa.Engine, target: Target, times: dict[str, list[Any]]) -> str | None:
        """The one month partition that takes all of a set's rows, if there is one, and stays a
        partition of the table until the commit: the lock on the table (what any insert into it
        takes) keeps DETACH and DROP of its partitions waiting, so rows written into it are rows
        of the table. One detached or dropped since the process read the catalog is not used,
        and the catalog is read again next time."""
        values = times.get(target.table.name)
        if not values:
            return None
        partition = partition_holding(engine, target.table.name, min(values), max(values))
        if partition is None:
            return None
        table = _q(target.table.name)
        cursor.execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits "
            "WHERE inhrelid = to_regclass(%s) AND inhparent = to_regclass(%s))",
            (partition, table),
        )
        if not cursor.fetchone()[0]:
            forget(engine)
            return None
        return partition

    def copy_direct(
        self, cursor: Any, target: Target, width: int, values: list[tuple[Any, ...]] | bytes, into: str | None = None
    ) -> bool | None:
        """Insert-or-ignore rows are new rows nearly always (a batch is written twice only after a
        crash), and so are the windows a batch closes: COPY them straight into the table, half the
        server's work of a staged INSERT ... ON CONFLICT; into its month partition `into` when
        they all fall in one (the key holds the time, so a key is unique in its partition as in
        the table). Any key already there undoes it (a savepoint) and says False; a partition
        whose bounds no longer take these rows (made again under its name) says None."""
        import psycopg

        cursor.execute("SAVEPOINT metrify_copy")
        try:
            self.copy(cursor, into or _q(target.table.name), target, width, values)
        except psycopg.errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT metrify_copy")
            return False
        except psycopg.errors.CheckViolation:
            if into is None:
                raise
            cursor.execute("ROLLBACK TO SAVEPOINT metrify_copy")
            return None
        cursor.execute("RELEASE SAVEPOINT metrify_copy")
        return True

    def any_stored(self, cursor: Any, target: Target, values: list[tuple[Any, ...]]) -> bool:
        """Whether a row may already hold one of these keys: (first key column, range of the
        second), one probe of the key's index per value of the first (a batch's partitions)."""
        spans: dict[Any, tuple[Any, Any]] = {}
        for row in values:
            head, tail = row[0], row[1]
            low, high = spans.get(head, (tail, tail))
            spans[head] = (min(low, tail), max(high, tail))
        first, second = (_q(c) for c in target.key)
        where = " OR ".join(f"({first} = %s AND {second} BETWEEN %s AND %s)" for _ in spans)
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {_q(target.table.name)} WHERE {where})",
            [value for head, (low, high) in spans.items() for value in (head, low, high)],
        )
        return bool(cursor.fetchone()[0])

    def insert_new(self, cursor: Any, target: Target, values: list[tuple[Any, ...]]) -> None:
        """Through the stage: only rows whose key is not stored yet (nor earlier in `values`)."""
        width = len(target.columns)
        values = [row + (None,) * (width - len(row)) for row in values]
        stage, table, cols = self.stage(target), _q(target.table.name), _cols(target.columns)
        cursor.execute(self.create_stage(target))
        self.copy(cursor, stage, target, width, values)
        key = _cols(target.key)
        match = " AND ".join(f"t.{_q(c)} = s.{_q(c)}" for c in target.key)
        cursor.execute(
            f"INSERT INTO {table} ({cols}) SELECT DISTINCT ON ({key}) {cols} FROM {stage} AS s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {match}) ORDER BY {key}"
        )

    def set_sql(self, target: Target, width: int | None = None) -> str:
        stage, table = self.stage(target), _q(target.table.name)
        if target.delete:
            match = " AND ".join(f"t.{_q(c)} = s.{_q(c)}" for c in target.columns)
            return f"DELETE FROM {table} AS t USING {stage} AS s WHERE {match}"
        cols = _cols(target.columns[:width])
        return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} {target.conflict()}"


def _copy_rows(target: Target, values: list[tuple[Any, ...]]) -> tuple[int, list[tuple[Any, ...]]]:
    """The width one COPY of these rows uses, and the rows at that width: their own when they
    all have it, else every row padded with NULLs to the table's full width."""
    runs = _runs(values)
    if len(runs) == 1:
        return runs[0][0], values
    width = len(target.columns)
    return width, [row + (None,) * (width - len(row)) for row in values]


@cache
def _collecting_writer() -> type[Any]:
    """A psycopg COPY writer that keeps the encoded data in memory (see `PostgresWriter.prepare`);
    made on first use, so that SQLite-only processes never import psycopg."""
    from psycopg.copy import Writer

    class Collected(Writer):
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def write(self, data: Any) -> None:
            self.parts.append(bytes(data))

    return Collected


def writer_for(dialect_name: str) -> SqliteWriter | PostgresWriter:
    if dialect_name == "sqlite":
        return SqliteWriter()
    if dialect_name == "postgresql":
        return PostgresWriter()
    raise ValueError(f"no stream sink for the {dialect_name!r} database")
