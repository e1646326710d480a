"""The API's read side: keyset pages of the stream's outcomes, filtered by the caller's scope.

Each list is ordered by a unique key that an index serves (the table's primary key, or the
meter-then-time index), and a page continues strictly after the previous page's last key.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from metrify.adapters.sqlalchemy import tables as t
from metrify.adapters.sqlalchemy.codec import decode_raw, extra_from_columns
from metrify.adapters.sqlalchemy.errors import transient_errors
from metrify.adapters.sqlalchemy.hours import meter_readings
from metrify.adapters.sqlalchemy.meters import meters_of_regions, scope_filter
from metrify.adapters.sqlalchemy.queries import SqlAlchemyOutcomeQueries, gaps_overlapping, one_snapshot
from metrify.adapters.sqlalchemy.windows import meter_windows
from metrify.application.ports import GapRow
from metrify.application.queries import RegionWindow, Subjects, TimeRange
from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, ReadingTooLate, WindowUpdated


def _during(stmt: sa.Select[Any], time: sa.ColumnElement[Any], when: TimeRange) -> sa.Select[Any]:
    if when.start is not None:
        stmt = stmt.where(time >= when.start)
    if when.end is not None:
        stmt = stmt.where(time < when.end)
    return stmt


def _of(stmt: sa.Select[Any], meter: sa.ColumnElement[Any], subjects: Subjects) -> sa.Select[Any]:
    allowed = scope_filter(meter, subjects.scope)
    if allowed is not None:
        stmt = stmt.where(allowed)
    if subjects.meter_id is not None:
        stmt = stmt.where(meter == subjects.meter_id)
    if subjects.region is not None:
        stmt = stmt.where(meter.in_(meters_of_regions([subjects.region])))
    return stmt


_FEW_METERS = 100  # a scope of at most this many meters, and no region, is looked up meter by meter


def _page_start(when: TimeRange, after: int | None) -> int | None:
    """Where a page begins: the range's start, or just past the cursor (the last window start or
    timestamp of the page before) when that is later (None: the beginning of time)."""
    if after is None:
        return when.start
    return after + 1 if when.start is None else max(when.start, after + 1)


def _region_windows(region: str, window: int, first: int | None, upper: int | None) -> sa.Select[Any]:
    """The region's windows of one size starting in [first, upper), summed over its meters, in order."""
    a, m = t.aggregates.c, t.meters.c
    stmt = (
        sa.select(a.window_start, sa.func.count(), sa.func.sum(a.count), sa.func.sum(a.sum_kwh))
        .select_from(t.meters.join(t.aggregates, a.meter_id == m.meter_id))
        .where(m.region == region, a.window_us == window)
    )
    stmt = _during(stmt, a.window_start, TimeRange(first, upper))
    return stmt.group_by(a.window_start).order_by(a.window_start)


# The same on SQLite: the aggregates read through the key (window first) from the first start
# on, each row kept if its meter is in the set of the region's meters, made once. The `+` keeps
# SQLite from looking the aggregates up meter by meter through that set (a skip-scan over every
# window, which its statistics may suggest), then grouping them all: keyed window first, the
# aggregates have no way in by meter.
_SQLITE_REGION_WINDOWS = (
    "SELECT a.window_start, count(*), sum(a.count), sum(a.sum_kwh) FROM aggregates AS a "
    "WHERE +a.meter_id IN (SELECT meter_id FROM meters WHERE region = :region) AND a.window_us = :window "
    "AND a.window_start >= :first AND a.window_start <= :last "
    "GROUP BY a.window_start ORDER BY a.window_start LIMIT :limit"
)


# On SQLite, where the region's windows end: the latest reading of its meters (one seek each,
# through the readings' key), as late as a window of theirs can start, give or take the meters'
# interval (a slot is a reading's time rounded to it). Retention takes the oldest readings
# first, so where any of the region's meters has readings left, this bounds every meter's
# windows. Without it, a page the region's windows cannot fill (its meters went silent) would
# read every meter's windows of that size to the end of the data.
_SQLITE_REGION_REACH = (
    "SELECT count(*), max((SELECT max(r.ts) FROM readings AS r WHERE r.meter_id = m.meter_id)), "
    "max(m.interval_seconds) FROM meters AS m WHERE m.region = :region"
)
_REACH_MARGIN = 7 * 86_400 * 1_000_000  # past the latest reading: any interval up to two weeks


def _region_page(
    region: str, window: int, connection: sa.Connection, first: int | None, end: int | None, limit: int
) -> list[RegionWindow]:
    if connection.dialect.name == "sqlite":
        meters, latest, interval = connection.execute(sa.text(_SQLITE_REGION_REACH), {"region": region}).one()
        if not meters:
            return []
        last = t.BIGINT_MAX if end is None else end - 1
        if latest is not None:
            last = min(last, latest + max(_REACH_MARGIN, (interval or 0) * 1_000_000))
        params = {"region": region, "window": window, "limit": limit, "last": last}
        params["first"] = t.BIGINT_MIN if first is None else first
        rows = connection.execute(sa.text(_SQLITE_REGION_WINDOWS), params)
    else:
        rows = connection.execute(_region_windows(region, window, first, end).limit(limit))
    return [
        RegionWindow(region, window, start, int(meters), int(count), float(total))
        for start, meters, count, total in rows
    ]


class SqlAlchemyFleetQueries:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _all(self, stmt: sa.Select[Any]) -> list[Any]:
        with transient_errors(), self.engine.connect() as connection:
            return list(connection.execute(stmt))

    def readings(self, meter_id: str, when: TimeRange, after: int | None, limit: int) -> list[ReadingAccepted]:
        if after is not None and after >= t.BIGINT_MAX:
            return []
        with transient_errors(), self.engine.connect() as connection:
            if connection.dialect.name == "sqlite":  # found through the index by hour: see hours.py
                one_snapshot(connection)
                rows = meter_readings(connection, meter_id, _page_start(when, after), when.end, limit)
            else:
                c = t.readings.c
                stmt = _during(sa.select(*t.readings.columns).where(c.meter_id == meter_id), c.ts, when)
                if after is not None:
                    stmt = stmt.where(c.ts > after)
                rows = list(connection.execute(stmt.order_by(c.ts).limit(limit)))
        return [ReadingAccepted(r[0], r[1], r[2], r[3], r[4], r[5], extra_from_columns(tuple(r[6:]))) for r in rows]

    def aggregates(
        self, meter_id: str, window: int, when: TimeRange, after: int | None, limit: int
    ) -> list[WindowUpdated]:
        if after is not None and after >= t.BIGINT_MAX:
            return []
        start = _page_start(when, after)
        with transient_errors(), self.engine.connect() as connection:
            if connection.dialect.name == "sqlite":  # keyed window first: see windows.py
                rows = meter_windows(connection, meter_id, window, start, when.end, limit)
            else:
                c = t.aggregates.c
                stmt = sa.select(*t.aggregates.columns).where(c.meter_id == meter_id, c.window_us == window)
                stmt = _during(stmt, c.window_start, TimeRange(start, when.end))
                rows = list(connection.execute(stmt.order_by(c.window_start).limit(limit)))
        return [WindowUpdated(*r) for r in rows]

    def region_aggregates(
        self, region: str, window: int, when: TimeRange, after: int | None, limit: int
    ) -> list[RegionWindow]:
        """A page of the region's windows, in order: one GROUP BY that reads the windows in order
        of their start, every meter's window of one start side by side (SQLite's key, Alembic
        0011; PostgreSQL's index by window), joined with the registry for the meters of the
        region, and stops once the page is full."""
        if after is not None and after >= t.BIGINT_MAX:
            return []
        with transient_errors(), self.engine.connect() as connection:
            return _region_page(region, window, connection, _page_start(when, after), when.end, limit)

    def gaps(
        self, subjects: Subjects, status: str | None, when: TimeRange, after: tuple[str, int] | None, limit: int
    ) -> list[GapRow]:
        c = t.gaps.c
        stmt = _of(sa.select(c.meter_id, c.missing_from, c.missing_to, c.missing_intervals), c.meter_id, subjects)
        if status == "open":
            stmt = stmt.where(c.missing_to.is_(None))
        elif status == "closed":
            stmt = stmt.where(c.missing_to.is_not(None))
        stmt = gaps_overlapping(stmt, when.start, when.end)
        if after is not None:
            stmt = stmt.where(sa.tuple_(c.meter_id, c.missing_from) > sa.tuple_(*after))
        stmt = stmt.order_by(c.meter_id, c.missing_from).limit(limit)
        return [GapRow(*r) for r in self._all(stmt)]

    def too_late(
        self, subjects: Subjects, when: TimeRange, after: tuple[str, int, int, int] | None, limit: int
    ) -> list[ReadingTooLate]:
        c = t.too_late_readings.c
        stmt = _of(
            sa.select(c.meter_id, c.ts, c.consumption_kwh, c.delay_us, c.partition, c.position), c.meter_id, subjects
        )
        stmt = _during(stmt, c.ts, when)
        if after is not None:
            stmt = stmt.where(sa.tuple_(c.meter_id, c.ts, c.partition, c.position) > sa.tuple_(*after))
        stmt = stmt.order_by(c.meter_id, c.ts, c.partition, c.position).limit(limit)
        return [ReadingTooLate(*r) for r in self._all(stmt)]

    def _rejected_where(self, stmt: sa.Select[Any], subjects: Subjects, when: TimeRange) -> sa.Select[Any]:
        c = t.rejected_readings.c
        return _during(_of(stmt, c.meter_id, subjects), c.parsed_ts, when)

    def rejected(
        self, subjects: Subjects, reason: str | None, when: TimeRange, after: tuple[int, int] | None, limit: int
    ) -> list[ReadingRejected]:
        c = t.rejected_readings.c
        stmt: sa.Select[Any] = sa.select(
            c.meter_id, c.raw_timestamp, c.raw_consumption, c.reason, c.partition, c.parsed_ts, c.position
        )
        stmt = self._rejected_where(stmt, subjects, when)
        if reason is not None:
            stmt = stmt.where(c.reason == reason)
        if after is not None:
            stmt = stmt.where(sa.tuple_(c.partition, c.position) > sa.tuple_(*after))
        stmt = stmt.order_by(c.partition, c.position).limit(limit)
        return [
            ReadingRejected(r[0], decode_raw(r[1]), decode_raw(r[2]), r[3], r[4], r[5], r[6]) for r in self._all(stmt)
        ]

    def rejected_counts(self, subjects: Subjects, when: TimeRange) -> dict[str, int]:
        c = t.rejected_readings.c
        stmt = self._rejected_where(sa.select(c.reason, sa.func.count()), subjects, when)
        return {reason: int(n) for reason, n in self._all(stmt.group_by(c.reason).order_by(c.reason))}

    def summary(self, subjects: Subjects) -> dict[str, Any]:
        scope = subjects.scope
        few = not scope.regions and subjects.region is None and len(scope.meters) <= _FEW_METERS
        return SqlAlchemyOutcomeQueries(self.engine).stream_summary(
            None if scope.everything else lambda stmt, meter: _of(stmt, meter, subjects), few_meters=few
        )
