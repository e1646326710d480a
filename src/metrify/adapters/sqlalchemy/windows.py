"""Reading the aggregates on SQLite, where the table is keyed window first: (window_us,
window_start, meter_id), WITHOUT ROWID (Alembic 0011), so that the windows a batch closes
fleet-wide are written side by side.

One meter's windows are then found window start by window start: windows are tumbling and
aligned to the epoch, so the starts between two times are known without reading anything, and
each is one look-up through the key. A page looks up a span of starts at a time, then a span twice
as wide, up to `PROBES_MOST` starts a statement. Each span begins at the next start that any
meter has a window at, and none goes past the last (one seek each), so a stretch of time without
windows costs nothing however long, and a meter with few windows among a fleet's many costs one
look-up per window start of the fleet's (a page of 15-minute windows over two years: 70,000
look-ups, about 0.1 s).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from metrify.adapters.sqlalchemy import tables as t
from metrify.adapters.sqlalchemy.spans import probe_spans

PROBES_FIRST = 128  # window starts the first statement looks up (or the page's size, if more)

_COLUMNS = "a.meter_id, a.window_us, a.window_start, a.count, a.sum_kwh, a.min_kwh, a.max_kwh"

# The starts first, first + w, ..., last, each looked up through the key; CROSS JOIN makes SQLite
# walk the starts outside and the table inside, as written.
_PROBE = sa.text(
    "WITH RECURSIVE starts(s) AS (SELECT :first UNION ALL SELECT s + :w FROM starts WHERE s + :w <= :last) "
    f"SELECT {_COLUMNS} FROM starts CROSS JOIN aggregates AS a "
    "WHERE a.window_us = :w AND a.window_start = starts.s AND a.meter_id = :meter"
)


def _first_start_from(time: int, window: int) -> int:
    """The first window start at or after `time`."""
    return -(-time // window) * window


def window_sizes(connection: sa.Connection) -> list[int]:
    """The window sizes stored, one seek each (a DISTINCT would read the whole key)."""
    a = t.aggregates.c
    sizes: list[int] = []
    while True:
        stmt = sa.select(sa.func.min(a.window_us))
        if sizes:
            stmt = stmt.where(a.window_us > sizes[-1])
        size = connection.execute(stmt).scalar()
        if size is None:
            return sizes
        sizes.append(int(size))


def meter_windows(
    connection: sa.Connection,
    meter_id: str,
    window: int,
    start: int | None,
    end: int | None,
    limit: int | None = None,
) -> list[Any]:
    """One meter's windows of one size starting in [start, end), in order of their start, the
    first `limit` of them (None: all), as aggregates rows."""
    a = t.aggregates.c
    last_stored = connection.execute(sa.select(sa.func.max(a.window_start)).where(a.window_us == window)).scalar()
    if last_stored is None:
        return []
    last = last_stored if end is None else min(last_stored, _first_start_from(end, window) - window)
    first: int | None = None if start is None else _first_start_from(start, window)

    def following(start: int | None) -> int | None:
        stmt = sa.select(sa.func.min(a.window_start)).where(a.window_us == window)
        if start is not None:
            stmt = stmt.where(a.window_start >= start)
        found: int | None = connection.execute(stmt).scalar()
        return found

    def probe(start: int, upto: int) -> list[Any]:
        rows = connection.execute(_PROBE, {"first": start, "last": upto, "w": window, "meter": meter_id}).all()
        return sorted(rows, key=lambda row: row[2])

    probes = PROBES_FIRST if limit is None else max(PROBES_FIRST, limit)
    return probe_spans(first, last, window, limit, probes, following, probe)
