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
from metrify.adapters.sqlalchemy.meters import meters_of_regions, scope_filter
from metrify.adapters.sqlalchemy.queries import SqlAlchemyOutcomeQueries, gaps_overlapping
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


_BIGINT_MAX = 2**63 - 1
_WIDEST = 4  # a region page's span: at most this many times the windows still wanted


def _first_region_window(region: str, window: int, lower: int | None, end: int | None) -> sa.Select[Any]:
    """The earliest window start at or after `lower` (before `end`) of any meter of the region."""
    a, m = t.aggregates.c, t.meters.c
    first = sa.select(a.window_start).where(a.meter_id == m.meter_id, a.window_us == window)
    first = _during(first, a.window_start, TimeRange(lower, end))
    earliest = first.order_by(a.window_start).limit(1).correlate(t.meters).scalar_subquery()
    return sa.select(sa.func.min(earliest)).where(m.region == region)


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


def _region_page(
    region: str, window: int, connection: sa.Connection, windows: sa.Select[Any], limit: int
) -> list[RegionWindow]:
    return [
        RegionWindow(region, window, start, int(meters), int(count), float(total))
        for start, meters, count, total in connection.execute(windows.limit(limit))
    ]


class SqlAlchemyFleetQueries:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _all(self, stmt: sa.Select[Any]) -> list[Any]:
        with transient_errors(), self.engine.connect() as connection:
            return list(connection.execute(stmt))

    def readings(self, meter_id: str, when: TimeRange, after: int | None, limit: int) -> list[ReadingAccepted]:
        c = t.readings.c
        stmt = _during(sa.select(*t.readings.columns).where(c.meter_id == meter_id), c.ts, when)
        if after is not None:
            stmt = stmt.where(c.ts > after)
        rows = self._all(stmt.order_by(c.ts).limit(limit))
        return [ReadingAccepted(r[0], r[1], r[2], r[3], r[4], r[5], extra_from_columns(tuple(r[6:]))) for r in rows]

    def aggregates(
        self, meter_id: str, window: int, when: TimeRange, after: int | None, limit: int
    ) -> list[WindowUpdated]:
        c = t.aggregates.c
        stmt = sa.select(*t.aggregates.columns).where(c.meter_id == meter_id, c.window_us == window)
        stmt = _during(stmt, c.window_start, when)
        if after is not None:
            stmt = stmt.where(c.window_start > after)
        return [WindowUpdated(*r) for r in self._all(stmt.order_by(c.window_start).limit(limit))]

    def region_aggregates(
        self, region: str, window: int, when: TimeRange, after: int | None, limit: int
    ) -> list[RegionWindow]:
        """A page of the region's windows, in order. On PostgreSQL, one GROUP BY through the index
        by window (kept there by Alembic 0007), which walks the windows in order and stops once
        the page is full. SQLite has no such index: so that a page never sums a region's whole
        history, it first finds the page's first window (one seek per meter of the region,
        through the primary key) and sums only the `limit` window lengths from there, through the
        key again. Windows are aligned tumbling windows, so no more than `limit` of them start in
        that span. Where the span holds fewer (stretches with no window, or windows shorter than
        the meters' interval), the next span starts at the next window there is and is twice as
        wide, up to `_WIDEST` times the windows still wanted: wide enough to fill a page of
        15-minute windows of 30-minute meters in two spans, never so wide that a few stray
        windows ahead of the data make a page sum months of it."""
        lower = when.start
        if after is not None:
            if after >= _BIGINT_MAX:
                return []
            lower = after + 1 if lower is None else max(lower, after + 1)
        found: list[RegionWindow] = []
        widen = 1
        with transient_errors(), self.engine.connect() as connection:
            if connection.dialect.name != "sqlite":
                return _region_page(region, window, connection, _region_windows(region, window, lower, when.end), limit)
            while len(found) < limit:
                first = connection.execute(_first_region_window(region, window, lower, when.end)).scalar()
                if first is None:
                    break
                reach = first + window * (limit - len(found)) * widen
                if when.end is not None:
                    reach = min(reach, when.end)
                upper = reach if reach <= _BIGINT_MAX else None  # None: the rest of time
                found += _region_page(
                    region, window, connection, _region_windows(region, window, first, upper), limit - len(found)
                )
                if upper is None:
                    break
                lower, widen = upper, min(widen * 2, _WIDEST)
        return found

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
        return SqlAlchemyOutcomeQueries(self.engine).stream_summary(
            None if subjects.scope.everything else lambda stmt, meter: _of(stmt, meter, subjects)
        )
