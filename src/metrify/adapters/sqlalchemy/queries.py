"""Reading the stream's outcomes back, in the same order and with the same filters as the
in-memory store: each export ordered by meter, then time (DESIGN §3), streamed in chunks
(a server-side cursor on PostgreSQL) so that millions of rows never sit in memory at once.
One meter's rows (a meter filter) are few enough to fetch in one go, which saves the server-side
cursor's round trips: that is the dashboards' and the API's common query."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from metrify.adapters.sqlalchemy import tables as t
from metrify.adapters.sqlalchemy.codec import decode_raw, extra_from_columns
from metrify.adapters.sqlalchemy.engine import SQLITE_TEMP_STORE
from metrify.adapters.sqlalchemy.errors import transient_errors
from metrify.adapters.sqlalchemy.hours import meter_readings, time_range
from metrify.adapters.sqlalchemy.windows import meter_windows, window_sizes
from metrify.application.ports import ExportFilter, GapRow
from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, ReadingTooLate, WindowUpdated

CHUNK_ROWS = 5_000


_NO_EXTRAS = (None,) * 6


def _reading(r: Any) -> ReadingAccepted:
    extras = r[6:]
    return ReadingAccepted(
        r[0], r[1], r[2], r[3], r[4], r[5], None if extras == _NO_EXTRAS else extra_from_columns(extras)
    )


def _where(
    stmt: sa.Select[Any], meter: sa.ColumnElement[Any], time: sa.ColumnElement[Any], where: ExportFilter
) -> sa.Select[Any]:
    """meter_id equal, start <= time < end; a NULL time passes only when no bound is set."""
    if where.meter_id is not None:
        stmt = stmt.where(meter == where.meter_id)
    if where.start is not None:
        stmt = stmt.where(time >= where.start)
    if where.end is not None:
        stmt = stmt.where(time < where.end)
    return stmt


def gaps_overlapping(stmt: sa.Select[Any], start: int | None, end: int | None) -> sa.Select[Any]:
    """The statement on the gaps table kept to the gaps that overlap [start, end) (GapRow.overlaps)."""
    c = t.gaps.c
    if end is not None:
        stmt = stmt.where(c.missing_from < end)
    if start is not None:
        stmt = stmt.where(sa.or_(c.missing_to.is_(None), c.missing_to > start))
    return stmt


# keeps a statement to some meters, given the meter id column of the table it selects from
MeterFilter = Callable[[sa.Select[Any], sa.ColumnElement[Any]], sa.Select[Any]]


def one_snapshot(connection: sa.Connection) -> None:
    """The connection's reads from here to the end of its transaction (its rollback when it goes
    back to the pool) see the store as of one moment. Python's sqlite3 runs each SELECT outside a
    transaction, and PostgreSQL's READ COMMITTED takes a snapshot per statement: a read of several
    statements saw a commit made between two of them in one and not in the other."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


class SqlAlchemyOutcomeQueries:
    def __init__(self, engine: sa.Engine, chunk_rows: int = CHUNK_ROWS) -> None:
        self.engine = engine
        self.chunk_rows = chunk_rows

    def _stream(self, stmt: sa.Select[Any], build: Callable[[Any], Any], where: ExportFilter) -> Iterator[Any]:
        with transient_errors(), self.engine.connect() as connection:
            if where.meter_id is not None:  # one meter: a bounded set, fetched at once
                rows = connection.execute(stmt).all()
                yield from map(build, rows)
                return
            result = connection.execution_options(yield_per=self.chunk_rows).execute(stmt)
            for rows in result.partitions():
                for row in rows:
                    yield build(row)

    def readings(self, where: ExportFilter) -> Iterator[ReadingAccepted]:
        if self.engine.dialect.name == "sqlite":
            return self._sqlite_readings(where)
        c = t.readings.c
        stmt = _where(sa.select(*t.readings.columns), c.meter_id, c.ts, where).order_by(c.meter_id, c.ts)
        return self._stream(stmt, _reading, where)

    def _sqlite_readings(self, where: ExportFilter) -> Iterator[ReadingAccepted]:
        """SQLite finds readings through an index by hour (hours.py): one meter's are looked up
        hour by hour; all meters' are read through that index (the time range's hours) and sorted
        by meter in temporary files, as the aggregates are. In one read transaction."""
        with transient_errors(), self.engine.connect() as connection:
            one_snapshot(connection)
            if where.meter_id is not None:
                yield from map(_reading, meter_readings(connection, where.meter_id, where.start, where.end))
                return
            c = t.readings.c
            stmt = sa.select(*t.readings.columns)
            during = time_range(where.start, where.end)
            if during is not None:
                stmt = stmt.where(during)
            yield from self._sorted_on_disk(connection, stmt.order_by(c.meter_id, c.ts), _reading)

    def rejected(self, where: ExportFilter) -> Iterator[ReadingRejected]:
        c = t.rejected_readings.c
        stmt = _where(
            sa.select(c.meter_id, c.raw_timestamp, c.raw_consumption, c.reason, c.partition, c.parsed_ts, c.position),
            c.meter_id,
            c.parsed_ts,
            where,
        ).order_by(c.meter_id, c.parsed_ts.asc().nulls_first(), c.partition, c.position)
        return self._stream(
            stmt, lambda r: ReadingRejected(r[0], decode_raw(r[1]), decode_raw(r[2]), r[3], r[4], r[5], r[6]), where
        )

    def too_late(self, where: ExportFilter) -> Iterator[ReadingTooLate]:
        c = t.too_late_readings.c
        stmt = _where(
            sa.select(c.meter_id, c.ts, c.consumption_kwh, c.delay_us, c.partition, c.position),
            c.meter_id,
            c.ts,
            where,
        ).order_by(c.meter_id, c.ts, c.partition, c.position)
        return self._stream(stmt, lambda r: ReadingTooLate(*r), where)

    def gaps(self, where: ExportFilter) -> Iterator[GapRow]:
        """The gaps that overlap [start, end) (an open one runs on), as the API's gap queries."""
        c = t.gaps.c
        stmt: sa.Select[Any] = sa.select(c.meter_id, c.missing_from, c.missing_to, c.missing_intervals)
        if where.meter_id is not None:
            stmt = stmt.where(c.meter_id == where.meter_id)
        stmt = gaps_overlapping(stmt, where.start, where.end).order_by(c.meter_id, c.missing_from)
        return self._stream(stmt, lambda r: GapRow(*r), where)

    def aggregates(self, where: ExportFilter) -> Iterator[WindowUpdated]:
        if self.engine.dialect.name == "sqlite":
            return self._sqlite_aggregates(where)
        c = t.aggregates.c
        stmt = _where(sa.select(*t.aggregates.columns), c.meter_id, c.window_start, where)
        if where.window is not None:
            stmt = stmt.where(c.window_us == where.window)
        stmt = stmt.order_by(c.meter_id, c.window_start, c.window_us)
        return self._stream(stmt, lambda r: WindowUpdated(*r), where)

    def _sqlite_aggregates(self, where: ExportFilter) -> Iterator[WindowUpdated]:
        """SQLite keys the aggregates window first (windows.py): one meter's windows are looked up
        start by start, size by size; all meters' are read through the key by size and time, then
        sorted by meter, in temporary files rather than in memory (the connection's temp_store),
        so that an export of any size holds only the sorter's pages. The sizes and the windows are
        read in one read transaction (Python's sqlite3 runs each SELECT in a snapshot of its own):
        the export is the store as it was when it began, whatever is committed meanwhile."""
        with transient_errors(), self.engine.connect() as connection:
            one_snapshot(connection)
            sizes = window_sizes(connection) if where.window is None else [where.window]
            if where.meter_id is not None:
                rows = [
                    row
                    for size in sizes
                    for row in meter_windows(connection, where.meter_id, size, where.start, where.end)
                ]
                rows.sort(key=lambda row: (row[2], row[1]))
                yield from (WindowUpdated(*r) for r in rows)
                return
            if not sizes:
                return
            c = t.aggregates.c
            stmt = _where(
                sa.select(*t.aggregates.columns).where(c.window_us.in_(sizes)), c.meter_id, c.window_start, where
            )
            stmt = stmt.order_by(c.meter_id, c.window_start, c.window_us)
            yield from self._sorted_on_disk(connection, stmt, lambda r: WindowUpdated(*r))

    def _sorted_on_disk(
        self, connection: sa.Connection, stmt: sa.Select[Any], build: Callable[[Any], Any]
    ) -> Iterator[Any]:
        """A SQLite statement whose ORDER BY sorts, its sorter's pages in temporary files rather
        than in memory (the connection's temp_store), in chunks: an export of any size holds only
        those pages."""
        connection.exec_driver_sql("PRAGMA temp_store = FILE")
        try:
            result = connection.execution_options(yield_per=self.chunk_rows).execute(stmt)
            for chunk in result.partitions():
                yield from map(build, chunk)
        finally:
            connection.rollback()
            connection.exec_driver_sql(f"PRAGMA temp_store = {SQLITE_TEMP_STORE}")

    def stream_summary(self, narrow: MeterFilter | None = None, *, few_meters: bool = False) -> dict[str, Any]:
        """Counts per table, readings per status, rejected per reason, open gaps, and each
        partition's watermark source and next input offset. `narrow` (a statement and a table's
        meter id column -> the statement kept to some meters) limits the counts, not the partitions;
        `few_meters`: it keeps a short list of meters (a USER's), not a region's."""
        counted = (t.readings, t.rejected_readings, t.too_late_readings, t.gaps, t.aggregates, t.meter_states)
        with transient_errors(), self.engine.connect() as connection:
            one_snapshot(connection)  # counts of one moment: readings by status add up to readings

            def kept(stmt: sa.Select[Any], table: sa.Table) -> sa.Select[Any]:
                if narrow is None:
                    return stmt
                meter: sa.ColumnElement[Any] = table.c.meter_id
                if table is t.aggregates and connection.dialect.name == "sqlite" and not few_meters:
                    # Keyed window first (windows.py): a region's meters are checked row by row,
                    # never looked up one by one under every window start (the skip-scan SQLite's
                    # statistics may pick: windows x meters look-ups); CAST keeps the key out of
                    # the plan. A few meters' are looked up so (400k rows: 1.5 ms against 32 ms).
                    meter = sa.cast(meter, sa.Text)
                return narrow(stmt, meter)

            def scalar(stmt: sa.Select[Any]) -> int:
                return int(connection.execute(stmt).scalar_one())

            def grouped(column: sa.ColumnElement[Any], table: sa.Table) -> dict[str, int]:
                stmt = kept(sa.select(column, sa.func.count()), table)
                rows = connection.execute(stmt.group_by(column).order_by(column))
                return {key: int(n) for key, n in rows}

            p = t.stream_partitions.c
            partitions = [
                {"stream": s, "partition": n, "max_event_time": m, "next_offset": o}
                for s, n, m, o in connection.execute(
                    sa.select(p.stream, p.partition, p.max_event_time, p.next_offset).order_by(p.stream, p.partition)
                )
            ]
            return {
                "tables": {
                    table.name: scalar(kept(sa.select(sa.func.count()).select_from(table), table)) for table in counted
                },
                "readings_by_status": grouped(t.readings.c.status, t.readings),
                "rejected_by_reason": grouped(t.rejected_readings.c.reason, t.rejected_readings),
                "open_gaps": scalar(
                    kept(sa.select(sa.func.count()).select_from(t.gaps).where(t.gaps.c.missing_to.is_(None)), t.gaps)
                ),
                "partitions": partitions,
            }
