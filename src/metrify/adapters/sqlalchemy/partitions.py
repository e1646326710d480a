"""Time partitions of the stream's time-series tables, and their retention (issue 5).

Four tables hold time series: readings (by `ts`), rejected_readings (by `received_at`: a rejected
reading has no reliable event time), too_late_readings (by `ts`) and aggregates (by
`window_start`). How they are kept depends on the database (Alembic 0006 decides, once):

- `native`: PostgreSQL declarative partitioning, RANGE on the time column, one partition per UTC
  calendar month, named `<table>_pYYYYMMDD` after its first day, in the schema
  `metrify_partitions`, plus a DEFAULT partition `<table>_default` that catches any row no month
  partition takes, so that a write never fails.
- `timescaledb`: hypertables; TimescaleDB creates chunks itself, and compresses old ones.
- `plain`: PostgreSQL tables not partitioned (a schema older than 0006: run `metrify db upgrade`).
- `sqlite`: one table each; retention deletes rows there.

Partitions come from three places: the migration (months holding data, the current month - 1 ..
+ 3), `create_ahead` (the current month .. + N, and every month with rows in a DEFAULT
partition: the rows move into the new month), and `ensure_partitions`, which the PostgreSQL sink
calls before each batch with the batch's times: a per-process record of the partitions known to
exist makes that a couple of comparisons per table, and a month without its partition gets one
before the batch is written. A new month partition is created as a table of its own, filled with
the matching rows of the DEFAULT partition, then ATTACHed: that takes SHARE UPDATE EXCLUSIVE on
the parent (readers and writers go on), ACCESS EXCLUSIVE on the DEFAULT partition only. It runs in
its own short transaction (lock_timeout) under an advisory lock per table, so concurrent processes
never collide; if it cannot get its locks in time, the rows land in the DEFAULT partition, not
lost, and a later `create_ahead` moves them out.

Retention drops whole partitions (TimescaleDB: `drop_chunks`) whose upper bound is at or before
the table's cut-off, never deleting rows; DROP takes ACCESS EXCLUSIVE on the parent for a moment
(lock_timeout, retried). A DEFAULT partition is never dropped: `create_ahead` empties it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from metrify.adapters.sqlalchemy.errors import transient_errors
from metrify.adapters.sqlalchemy.hours import EXPIRED
from metrify.application.storage import PartitionInfo

log = logging.getLogger("metrify.storage")

PARTITION_SCHEMA = "metrify_partitions"
TIME_COLUMNS = {
    "readings": "ts",
    "rejected_readings": "received_at",
    "too_late_readings": "ts",
    "aggregates": "window_start",
}
# Rewritten in this order once their month is over (reorder): a meter's rows then sit together.
ORDERED_KEYS = {"readings": ("meter_id", "ts"), "aggregates": ("meter_id", "window_us", "window_start")}
ORDERED_MARK = "metrify: rows ordered by key"
LOCK_TIMEOUT_S = 2.0  # creating a partition: give up (rows go to DEFAULT) rather than stall writers
DROP_LOCK_TIMEOUT_S = 5.0
DROP_ATTEMPTS = 3
KNOWN_TTL_S = 600.0  # how long this process trusts what it read of the catalog
SQLITE_ANALYSIS_LIMIT = 1000  # rows ANALYZE reads per index on SQLite (an estimate is enough)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = 1_000_000
DAY_US = 86400 * US


class StorageLayoutError(Exception):
    """The database's tables are not in a shape maintenance can work on (e.g. not migrated)."""


class StorageBusyError(StorageLayoutError):
    """Maintenance could not get its locks in time (long queries on the table): try again."""


# ------------------------------------------------------------------------------------- months


def to_us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime | None:
    try:
        return EPOCH + timedelta(microseconds=us)
    except OverflowError:
        return None


def add_months(month: datetime, n: int) -> datetime | None:
    year, index = divmod(month.year * 12 + month.month - 1 + n, 12)
    if not 1 <= year <= 9999:
        return None
    return month.replace(year=year, month=index + 1)


def month_bounds(us: int) -> tuple[int, int] | None:
    """The UTC calendar month holding `us`: (first microsecond, first of the next month); None
    outside the years 1..9999."""
    moment = from_us(us)
    if moment is None:
        return None
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = add_months(start, 1)
    return to_us(start), (to_us(following) if following is not None else to_us(start) + 31 * DAY_US)


def months_around(now_us: int, before: int, after: int) -> list[tuple[int, int]]:
    moment = from_us(now_us)
    assert moment is not None
    current = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    months = []
    for n in range(-before, after + 1):
        month = add_months(current, n)
        if month is not None and (bounds := month_bounds(to_us(month))) is not None:
            months.append(bounds)
    return months


def free_ranges(lower: int, upper: int, taken: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [lower, upper) that no range in `taken` covers."""
    free, cursor = [], lower
    for a, b in sorted(taken):
        if b <= cursor or a >= upper:
            continue
        if a > cursor:
            free.append((cursor, a))
        cursor = max(cursor, b)
        if cursor >= upper:
            break
    if cursor < upper:
        free.append((cursor, upper))
    return free


def _holding(ranges: Sequence[tuple[int, int]], low: int, high: int) -> tuple[int, int] | None:
    """The range of the sorted, disjoint `ranges` that holds both `low` and `high`, if one does."""
    lo, hi = 0, len(ranges)
    while lo < hi:  # the last range starting at or before `low`
        mid = (lo + hi) // 2
        if ranges[mid][0] <= low:
            lo = mid + 1
        else:
            hi = mid
    if lo > 0 and ranges[lo - 1][0] <= low and high < ranges[lo - 1][1]:
        return ranges[lo - 1]
    return None


def _covered(ranges: Sequence[tuple[int, int]], low: int, high: int) -> bool:
    """Whether one range of the sorted, disjoint `ranges` holds both `low` and `high`."""
    return _holding(ranges, low, high) is not None


def _month_name(us: int) -> str:
    moment = from_us(us)
    return f"{moment:%Y-%m}" if moment is not None else str(us)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_BOUND = re.compile(r"FOR VALUES FROM \((?P<lower>[^)]*)\) TO \((?P<upper>[^)]*)\)")


def _bound_value(text: str) -> int | None:
    text = text.strip().strip("'")
    return None if text.upper() in ("MINVALUE", "MAXVALUE") else int(text)


# -------------------------------------------------------------------------------- the catalog


def _layouts(connection: sa.Connection) -> dict[str, str]:
    if connection.dialect.name == "sqlite":
        present = set(sa.inspect(connection).get_table_names())
        return {table: "sqlite" for table in TIME_COLUMNS if table in present}
    if connection.dialect.name != "postgresql":
        raise StorageLayoutError(f"no storage maintenance for the {connection.dialect.name!r} database")
    kinds: dict[str, str] = dict(
        connection.execute(
            sa.text(
                "SELECT c.relname, c.relkind FROM pg_class c "
                "WHERE c.oid = ANY (ARRAY[to_regclass('readings'), to_regclass('rejected_readings'), "
                "to_regclass('too_late_readings'), to_regclass('aggregates')]::oid[])"
            )
        ).all()
    )
    hypertables: set[str] = set()
    if connection.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first():
        hypertables = set(
            connection.execute(
                sa.text(
                    "SELECT hypertable_name FROM timescaledb_information.hypertables "
                    "WHERE hypertable_schema = current_schema()"
                )
            ).scalars()
        )
    layouts = {}
    for table in TIME_COLUMNS:
        if table in hypertables:
            layouts[table] = "timescaledb"
        elif kinds.get(table) == "p":
            layouts[table] = "native"
        elif table in kinds:
            layouts[table] = "plain"
    return layouts


def _required(layouts: dict[str, str]) -> dict[str, str]:
    missing = [table for table in TIME_COLUMNS if table not in layouts]
    if missing:
        raise StorageLayoutError(f"no table {', '.join(missing)}: run `metrify db upgrade` first")
    return layouts


def _size_rows(reltuples: float, size: int) -> int | None:
    if reltuples >= 0:
        return round(reltuples)
    return 0 if size == 0 else None  # never analysed: empty, or unknown


def _native_partitions(connection: sa.Connection, table: str) -> list[PartitionInfo]:
    rows = connection.execute(
        sa.text(
            "SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples, "
            "pg_relation_size(c.oid), pg_total_relation_size(c.oid) "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = to_regclass(:table)"
        ),
        {"table": table},
    )
    found = []
    for schema, name, bound, reltuples, heap, total in rows:
        match = _BOUND.search(bound or "")
        if match:
            lower, upper, kind = _bound_value(match["lower"]), _bound_value(match["upper"]), "month"
        else:
            lower, upper, kind = None, None, "default"
        found.append(PartitionInfo(table, f"{schema}.{name}", kind, lower, upper, _size_rows(reltuples, heap), total))
    return sorted(found, key=lambda p: (p.kind == "default", p.lower if p.lower is not None else -(2**63)))


def _timescale_chunks(connection: sa.Connection, table: str) -> list[PartitionInfo]:
    rows = connection.execute(
        sa.text(
            "SELECT ch.chunk_schema, ch.chunk_name, ch.range_start_integer, ch.range_end_integer, "
            "ch.is_compressed, c.reltuples, pg_relation_size(c.oid), s.total_bytes "
            "FROM timescaledb_information.chunks ch "
            "JOIN pg_class c ON c.oid = format('%I.%I', ch.chunk_schema, ch.chunk_name)::regclass "
            "LEFT JOIN chunks_detailed_size(to_regclass(:table)) s "
            "ON s.chunk_schema = ch.chunk_schema AND s.chunk_name = ch.chunk_name "
            "WHERE ch.hypertable_schema = current_schema() AND ch.hypertable_name = :table "
            "ORDER BY ch.range_start_integer"
        ),
        {"table": table},
    )
    return [
        PartitionInfo(
            table,
            f"{schema}.{name}",
            "chunk",
            lower,
            upper,
            None if compressed else _size_rows(reltuples, heap),
            total,
            bool(compressed),
        )
        for schema, name, lower, upper, compressed, reltuples, heap, total in rows
    ]


def _sqlite_tables(connection: sa.Connection) -> list[PartitionInfo]:
    found = []
    for table in TIME_COLUMNS:
        rows = connection.execute(sa.text(f"SELECT count(*) FROM {_q(table)}")).scalar_one()
        try:
            size = connection.execute(sa.text("SELECT sum(pgsize) FROM dbstat WHERE name = :t"), {"t": table}).scalar()
        except sa.exc.OperationalError:  # SQLite built without the dbstat table
            size = None
        found.append(PartitionInfo(table, table, "table", None, None, int(rows), size))
    return found


def _advisory_lock(connection: sa.Connection, table: str) -> None:
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"{PARTITION_SCHEMA}.{table}"})


def _set_lock_timeout(connection: sa.Connection, seconds: float) -> None:
    connection.execute(sa.text(f"SET LOCAL lock_timeout = '{max(1, round(seconds * 1000))}ms'"))


def _is_lock_timeout(exc: BaseException) -> bool:
    import psycopg

    return isinstance(getattr(exc, "orig", exc), psycopg.errors.LockNotAvailable)


def _is_deadlock(exc: BaseException) -> bool:
    import psycopg

    return isinstance(getattr(exc, "orig", exc), psycopg.errors.DeadlockDetected)


def _create_month_partitions(
    connection: sa.Connection, table: str, lower: int, upper: int, lock_timeout: float
) -> list[PartitionInfo]:
    """Partitions for the parts of [lower, upper) no partition of `table` covers yet, each with
    the rows of that range taken out of the DEFAULT partition; one transaction."""
    column = _q(TIME_COLUMNS[table])
    created = []
    with connection.begin():
        _set_lock_timeout(connection, lock_timeout)
        _advisory_lock(connection, table)  # one creator per table at a time, in any process
        existing = _native_partitions(connection, table)  # read again, under the lock
        taken = [
            (p.lower, p.upper) for p in existing if p.kind == "month" and p.lower is not None and p.upper is not None
        ]
        default = next((p.name for p in existing if p.kind == "default"), None)
        for a, b in free_ranges(lower, upper, taken):  # type: ignore[arg-type]
            moment = from_us(a)
            assert moment is not None
            name = f"{table}_p{moment:%Y%m%d}"
            qualified = f"{_q(PARTITION_SCHEMA)}.{_q(name)}"
            connection.execute(
                sa.text(f"CREATE TABLE {qualified} (LIKE {_q(table)} INCLUDING DEFAULTS INCLUDING STORAGE)")
            )
            # A constraint matching the bound lets ATTACH skip scanning the new table.
            connection.execute(
                sa.text(
                    f"ALTER TABLE {qualified} ADD CONSTRAINT {_q(name + '_bound')} "
                    f"CHECK ({column} >= {a} AND {column} < {b})"
                )
            )
            if default is not None:
                schema, default_name = default.split(".", 1)
                # No row may enter DEFAULT between the move and the ATTACH (which checks that none
                # of the month is left there): a writer routed there meanwhile, committing before
                # the ATTACH got its lock, failed the creation with a check violation. Writers wait
                # here instead (readers do not); within the lock timeout, or the month waits.
                connection.execute(sa.text(f"LOCK TABLE {_q(schema)}.{_q(default_name)} IN SHARE ROW EXCLUSIVE MODE"))
                connection.execute(
                    sa.text(
                        f"WITH moved AS (DELETE FROM {_q(schema)}.{_q(default_name)} "
                        f"WHERE {column} >= {a} AND {column} < {b} RETURNING *) "
                        f"INSERT INTO {qualified} SELECT * FROM moved"
                    )
                )
            connection.execute(
                sa.text(f"ALTER TABLE {_q(table)} ATTACH PARTITION {qualified} FOR VALUES FROM ({a}) TO ({b})")
            )
            connection.execute(sa.text(f"ALTER TABLE {qualified} DROP CONSTRAINT {_q(name + '_bound')}"))
            created.append(PartitionInfo(table, f"{PARTITION_SCHEMA}.{name}", "month", a, b, None, None))
    return created


def _default_months(connection: sa.Connection, table: str, default: str) -> list[tuple[int, int]]:
    schema, name = default.split(".", 1)
    days = connection.execute(
        sa.text(
            f"SELECT DISTINCT floor({_q(TIME_COLUMNS[table])} / {float(DAY_US)})::bigint FROM {_q(schema)}.{_q(name)}"
        )
    ).scalars()
    return sorted({bounds for day in days if (bounds := month_bounds(day * DAY_US)) is not None})


# ------------------------------------------------------------------------ the maintenance port


class SqlAlchemyStorageMaintenance:
    """StorageMaintenance on PostgreSQL (native partitions or TimescaleDB) and SQLite."""

    def __init__(self, engine: sa.Engine, lock_timeout: float = 3.0) -> None:
        self.engine = engine
        self.lock_timeout = lock_timeout

    def layouts(self) -> dict[str, str]:
        with transient_errors(), self.engine.connect() as connection:
            return _layouts(connection)

    def layout(self) -> str:
        """One word for all four tables; `mixed` if they differ, `missing` before any migration."""
        kinds = set(self.layouts().values())
        if not kinds:
            return "missing"
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def partitions(self) -> list[PartitionInfo]:
        with transient_errors(), self.engine.connect() as connection:
            layouts = _required(_layouts(connection))
            if connection.dialect.name == "sqlite":
                return _sqlite_tables(connection)
            found: list[PartitionInfo] = []
            for table, layout in layouts.items():
                if layout == "native":
                    found.extend(_native_partitions(connection, table))
                elif layout == "timescaledb":
                    found.extend(_timescale_chunks(connection, table))
                else:
                    size = connection.execute(
                        sa.text(
                            "SELECT c.reltuples, pg_relation_size(c.oid), pg_total_relation_size(c.oid) "
                            "FROM pg_class c WHERE c.oid = to_regclass(:t)"
                        ),
                        {"t": table},
                    ).one()
                    found.append(
                        PartitionInfo(table, table, "table", None, None, _size_rows(size[0], size[1]), size[2])
                    )
            return found

    def create_ahead(self, months: int, now_us: int) -> list[PartitionInfo]:
        created: list[PartitionInfo] = []
        busy: list[str] = []
        with transient_errors(), self.engine.connect() as connection:
            layouts = _required(_layouts(connection))
            connection.commit()
            for table, layout in layouts.items():
                if layout != "native":
                    continue
                wanted = set(months_around(now_us, 0, months))
                default = next((p.name for p in _native_partitions(connection, table) if p.kind == "default"), None)
                if default is not None:
                    wanted.update(_default_months(connection, table, default))
                connection.commit()
                for lower, upper in sorted(wanted):
                    try:
                        created.extend(_create_month_partitions(connection, table, lower, upper, self.lock_timeout))
                    except sa.exc.DBAPIError as exc:
                        if not _is_lock_timeout(exc):
                            raise
                        busy.append(f"{table} {_month_name(lower)}")
        forget(self.engine)
        if busy:
            raise StorageBusyError(
                f"created {len(created)} partition(s), but no lock within {self.lock_timeout:g} s for: "
                f"{', '.join(busy)} (long-running queries?); try again"
            )
        return created

    def expire(self, cutoffs: Mapping[str, int], dry_run: bool = False) -> list[PartitionInfo]:
        with transient_errors(), self.engine.connect() as connection:
            layouts = _required(_layouts(connection))
            connection.commit()
            if connection.dialect.name == "sqlite":
                return self._expire_rows(connection, cutoffs, dry_run)
            plain = [t for t in cutoffs if layouts.get(t) not in ("native", "timescaledb")]
            if plain:
                raise StorageLayoutError(
                    f"{', '.join(plain)}: not partitioned (run `metrify db upgrade`); retention drops partitions only"
                )
            gone: list[PartitionInfo] = []
            for table, cutoff in cutoffs.items():
                if layouts[table] == "native":
                    old = [
                        p
                        for p in _native_partitions(connection, table)
                        if p.kind == "month" and p.upper is not None and p.upper <= cutoff
                    ]
                    connection.commit()
                    for partition in old:
                        if not dry_run:
                            self._drop(connection, table, partition)
                        gone.append(partition)
                else:
                    old = [p for p in _timescale_chunks(connection, table) if p.upper is not None and p.upper <= cutoff]
                    if old and not dry_run:
                        connection.execute(
                            sa.text("SELECT drop_chunks(CAST(:t AS regclass), older_than => CAST(:c AS bigint))"),
                            {"t": table, "c": cutoff},
                        )
                    connection.commit()
                    gone.extend(old)
        if not dry_run:
            forget(self.engine)
        return gone

    def _drop(self, connection: sa.Connection, table: str, partition: PartitionInfo) -> None:
        schema, name = partition.name.split(".", 1)
        for attempt in range(1, DROP_ATTEMPTS + 1):
            try:
                with connection.begin():
                    _set_lock_timeout(connection, DROP_LOCK_TIMEOUT_S)
                    _advisory_lock(connection, table)
                    connection.execute(sa.text(f"DROP TABLE IF EXISTS {_q(schema)}.{_q(name)}"))
                log.info("retention dropped %s (%s rows)", partition.name, partition.rows)
                return
            except sa.exc.DBAPIError as exc:
                if not _is_lock_timeout(exc):
                    raise
                if attempt == DROP_ATTEMPTS:
                    raise StorageBusyError(
                        f"could not drop {partition.name}: no lock on {table} within {DROP_LOCK_TIMEOUT_S:g} s, "
                        f"{DROP_ATTEMPTS} times (long-running queries?); try again"
                    ) from None
                log.warning("retention: %s is busy, trying again (%d/%d)", partition.name, attempt, DROP_ATTEMPTS)
                time.sleep(attempt)

    @staticmethod
    def _expire_rows(connection: sa.Connection, cutoffs: Mapping[str, int], dry_run: bool) -> list[PartitionInfo]:
        """SQLite has no partitions: the rows older than the cut-off are deleted."""
        gone = []
        for table, cutoff in cutoffs.items():
            # the readings through their index by hour (hours.py), the others by a scan or skip-scan
            where = EXPIRED if table == "readings" else f"{_q(TIME_COLUMNS[table])} < :cutoff"
            if dry_run:
                count = connection.execute(
                    sa.text(f"SELECT count(*) FROM {_q(table)} WHERE {where}"), {"cutoff": cutoff}
                ).scalar_one()
            else:
                count = connection.execute(
                    sa.text(f"DELETE FROM {_q(table)} WHERE {where}"), {"cutoff": cutoff}
                ).rowcount
            if count:
                gone.append(PartitionInfo(table, table, "rows", None, cutoff, int(count), None))
        connection.rollback() if dry_run else connection.commit()
        return gone

    def reorder(self, now_us: int, settle_us: int = DAY_US) -> list[PartitionInfo]:
        """Rewrite each closed month of readings and aggregates (its upper bound `settle_us` in
        the past) in key order, meter then time, once. Rows arrive time after time, so a meter's
        month is spread over one page per reading; ordered, it sits in a few pages, and reading it
        back touches ~40 pages instead of ~1,500 (TimescaleDB's compression does the same, by
        segment). Online: the month is copied under a SHARE lock (reads go on, writes into that
        month wait), then swapped for the copy with ACCESS EXCLUSIVE on the table for a moment.

        SQLite has no months to rewrite: there the step refreshes the query planner's statistics
        instead, with an ANALYZE bounded to `SQLITE_ANALYSIS_LIMIT` rows per index (tens of ms
        whatever the size). Knowing that each meter has many rows, SQLite reads a time range
        without a meter by skip-scan through an index that begins with the meter (too-late and
        rejected readings), meter after meter, instead of scanning it all (one day of 30 over
        2.2M rows, 400 -> 120 ms, measured on the aggregates when they were keyed meter first);
        the aggregates, keyed by window size first since Alembic 0011, size after size
        (retention's delete). Readings are found by hour since Alembic 0012 (hours.py)."""
        done: list[PartitionInfo] = []
        with transient_errors(), self.engine.connect() as connection:
            layouts = _required(_layouts(connection))
            connection.commit()
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql(f"PRAGMA analysis_limit = {SQLITE_ANALYSIS_LIMIT}")
                connection.exec_driver_sql("ANALYZE")
                connection.commit()
                return done
            for table, key in ORDERED_KEYS.items():
                if layouts[table] != "native":
                    continue
                candidates = []
                for p in _native_partitions(connection, table):
                    if p.kind != "month" or p.upper is None or p.upper + settle_us > now_us:
                        continue
                    schema, name = p.name.split(".", 1)
                    qualified = f"{_q(schema)}.{_q(name)}"
                    marked = connection.execute(
                        sa.text(f"SELECT obj_description('{qualified}'::regclass, 'pg_class')")
                    ).scalar()
                    if (
                        marked != ORDERED_MARK
                        and connection.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {qualified})")).scalar()
                    ):
                        candidates.append(p)
                connection.commit()
                for partition in candidates:
                    self._reorder_one(connection, table, key, partition)
                    done.append(partition)
        return done

    def _reorder_one(self, connection: sa.Connection, table: str, key: Sequence[str], p: PartitionInfo) -> None:
        schema, name = p.name.split(".", 1)
        old, new = f"{_q(schema)}.{_q(name)}", f"{_q(schema)}.{_q(name + '_ordered')}"
        column = _q(TIME_COLUMNS[table])
        indexes = connection.execute(
            sa.text("SELECT pg_get_indexdef(indexrelid), indisprimary FROM pg_index WHERE indrelid = to_regclass(:t)"),
            {"t": table},
        ).all()
        connection.commit()
        started = time.monotonic()
        with connection.begin():
            _set_lock_timeout(connection, self.lock_timeout)
            connection.execute(sa.text(f"LOCK TABLE {old} IN SHARE MODE"))  # no writes into it meanwhile
            connection.execute(sa.text(f"CREATE TABLE {new} (LIKE {_q(table)} INCLUDING DEFAULTS INCLUDING STORAGE)"))
            connection.execute(
                sa.text(
                    f"ALTER TABLE {new} ADD CONSTRAINT {_q(name + '_bound')} "
                    f"CHECK ({column} >= {p.lower} AND {column} < {p.upper})"
                )
            )
            connection.execute(sa.text(f"INSERT INTO {new} SELECT * FROM {old} ORDER BY {', '.join(map(_q, key))}"))
            for definition, primary in indexes:  # built now, so that ATTACH only has to adopt them
                unique = "UNIQUE " if definition.startswith("CREATE UNIQUE") else ""
                using = definition.split(" USING ", 1)[1]
                if primary:
                    columns = using[using.index("(") :]
                    connection.execute(
                        sa.text(f"ALTER TABLE {new} ADD CONSTRAINT {_q(name + '_ordered_pkey')} PRIMARY KEY {columns}")
                    )
                else:
                    connection.execute(sa.text(f"CREATE {unique}INDEX ON {new} USING {using}"))
            _advisory_lock(connection, table)
            for attempt in range(1, DROP_ATTEMPTS + 1):  # the swap: ACCESS EXCLUSIVE on the table
                try:
                    with connection.begin_nested():
                        connection.execute(sa.text(f"ALTER TABLE {_q(table)} DETACH PARTITION {old}"))
                    break
                except sa.exc.DBAPIError as exc:
                    # A writer of this table waiting for the month we hold is a deadlock: let it go on.
                    deadlock = _is_deadlock(exc)
                    if not deadlock and not _is_lock_timeout(exc):
                        raise
                    if deadlock or attempt == DROP_ATTEMPTS:
                        raise StorageBusyError(
                            f"could not swap {p.name} for its ordered copy: no lock on {table} (long-running "
                            "queries, or a write into that month); try again"
                        ) from None
                    time.sleep(attempt)
            connection.execute(
                sa.text(f"ALTER TABLE {_q(table)} ATTACH PARTITION {new} FOR VALUES FROM ({p.lower}) TO ({p.upper})")
            )
            connection.execute(sa.text(f"DROP TABLE {old}"))
            connection.execute(sa.text(f"ALTER TABLE {new} RENAME TO {_q(name)}"))
            connection.execute(
                sa.text(f"ALTER INDEX {_q(schema)}.{_q(name + '_ordered_pkey')} RENAME TO {_q(name + '_pkey')}")
            )
            connection.execute(sa.text(f"ALTER TABLE {old} DROP CONSTRAINT {_q(name + '_bound')}"))
            connection.execute(sa.text(f"COMMENT ON TABLE {old} IS '{ORDERED_MARK}'"))
        connection.execute(sa.text(f"ANALYZE {old}"))
        connection.commit()
        log.info("reordered %s by %s in %.1f s", p.name, ", ".join(key), time.monotonic() - started)

    def features(self) -> str:
        """One line for `metrify info`: how the time-series tables are kept."""
        layout = self.layout()
        if layout in ("sqlite", "plain", "missing", "mixed"):
            return {
                "sqlite": "no partitions (retention deletes rows)",
                "plain": "tables not partitioned yet (run `metrify db upgrade`)",
                "missing": "schema not created yet (run `metrify db upgrade`)",
                "mixed": "partly partitioned: " + ", ".join(f"{t} {k}" for t, k in self.layouts().items()),
            }[layout]
        parts = self.partitions()
        if layout == "timescaledb":
            compressed = sum(p.compressed for p in parts)
            return f"TimescaleDB hypertables, {len(parts)} chunks ({compressed} compressed)"
        months = [p for p in parts if p.kind == "month"]
        in_default = sum(p.rows or 0 for p in parts if p.kind == "default")
        text = f"native monthly partitioning, {len(months)} partitions"
        if months:
            first, last = (
                from_us(min(p.lower for p in months if p.lower is not None)),
                from_us(max(p.upper for p in months if p.upper is not None) - 1),
            )
            if first is not None and last is not None:
                text += f" ({first:%Y-%m} .. {last:%Y-%m})"
        if in_default:
            text += f", ~{in_default} rows in DEFAULT partitions"
        return text


# ------------------------------------------------------------- partitions on the fly, for the sink


class _Known:
    """What this process read of one database's partitions: per native table, the sorted ranges
    its month partitions cover, and each range's partition (schema-qualified, quoted)."""

    def __init__(
        self, ranges: dict[str, list[tuple[int, int]]], ttl: float, names: dict[tuple[str, int], str] | None = None
    ) -> None:
        self.ranges = ranges
        self.names = names or {}  # (table, lower bound) -> the partition's name, quoted for SQL
        self.expires = time.monotonic() + ttl


_known: dict[str, _Known] = {}
_known_lock = threading.Lock()


def _key(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def forget(engine: sa.Engine) -> None:
    """Drop what this process knows of the engine's partitions (read again on next use)."""
    with _known_lock:
        _known.pop(_key(engine), None)


def _read_known(engine: sa.Engine) -> _Known:
    with engine.connect() as connection:
        layouts = _layouts(connection)
        months = {
            table: [
                p
                for p in _native_partitions(connection, table)
                if p.kind == "month" and p.lower is not None and p.upper is not None
            ]
            for table, layout in layouts.items()
            if layout == "native"
        }
    ranges = {table: sorted((p.lower, p.upper) for p in found) for table, found in months.items()}
    names = {
        (table, p.lower): ".".join(_q(part) for part in p.name.split(".", 1))
        for table, found in months.items()
        for p in found
    }
    # Tables not partitioned yet (before Alembic 0006) are asked about again at once: a migration
    # in another process can change that at any moment.
    ttl = 0.0 if "plain" in layouts.values() or not layouts else KNOWN_TTL_S
    return _Known(ranges, ttl, names)  # type: ignore[arg-type]


def _known_for(engine: sa.Engine, fresh: bool = False) -> _Known:
    key = _key(engine)
    with _known_lock:
        known = _known.get(key)
    if known is None or fresh or time.monotonic() >= known.expires:
        known = _read_known(engine)
        with _known_lock:
            _known[key] = known
    return known


def partition_holding(engine: sa.Engine, table: str, low: int, high: int) -> str | None:
    """The month partition (quoted, schema-qualified) that holds every time from `low` to `high`,
    as this process knows the catalog; None when no one partition does, or the table has none.
    Rows written straight into it skip the parent's routing of each row (a tenth of the server's
    time on a COPY of readings); the caller falls back to the parent if it is gone meanwhile."""
    known = _known_for(engine)
    month = _holding(known.ranges.get(table, []), low, high)
    return None if month is None else known.names.get((table, month[0]))


def _missing_months(ranges: Sequence[tuple[int, int]], times: Sequence[int]) -> set[tuple[int, int]]:
    if _covered(ranges, min(times), max(times)):
        return set()
    months = set()
    for day in {t // DAY_US for t in times}:
        start, end = day * DAY_US, day * DAY_US + DAY_US - 1
        if not _covered(ranges, start, end):
            bounds = month_bounds(start)
            if bounds is not None:
                months.add(bounds)
    return months


def ensure_partitions(
    engine: sa.Engine, times: Mapping[str, Sequence[int]], lock_timeout: float | None = None
) -> list[PartitionInfo]:
    """Before a batch is written: a month partition for every month among `times` (per table)
    that has none. Cheap when they exist (compared with what this process knows); creates the
    missing ones in a transaction of their own. If that cannot be done now (locks, rights), the
    rows go to the DEFAULT partition; a lost connection raises TransientStoreError."""
    times = {table: values for table, values in times.items() if values}
    if not times or engine.dialect.name != "postgresql":
        return []
    lock_timeout = LOCK_TIMEOUT_S if lock_timeout is None else lock_timeout
    with transient_errors():
        known = _known_for(engine)
        missing = {
            table: months
            for table, values in times.items()
            if table in known.ranges and (months := _missing_months(known.ranges[table], values))
        }
        if not missing:
            return []
        known = _known_for(engine, fresh=True)  # another process may have made them meanwhile
        created: list[PartitionInfo] = []
        with engine.connect() as connection:
            for table, months in missing.items():
                for lower, upper in sorted(months):
                    if _covered(known.ranges.get(table, []), lower, upper - 1):
                        continue
                    try:
                        created.extend(_create_month_partitions(connection, table, lower, upper, lock_timeout))
                    except sa.exc.DBAPIError as exc:
                        if not _is_lock_timeout(exc) and not isinstance(exc, sa.exc.ProgrammingError):
                            raise
                        log.warning(
                            "no partition for %s %s yet (%s); its rows go to the DEFAULT partition",
                            table,
                            _month_name(lower),
                            str(exc.orig).strip().splitlines()[0] if exc.orig else exc,
                        )
        if created:
            for partition in created:
                log.info("created partition %s", partition.name)
            _known_for(engine, fresh=True)
        return created
