"""Reading the readings on SQLite, where they are found through a unique index on (hour, meter_id,
ts), the hour being `ts / 3600000000` (Alembic 0012), so that a batch's readings are written side
by side instead of one B-tree page per meter.

The hour is SQLite's integer division, which truncates: every hour is one run of timestamps, in
order (the hour around 0 spans two, which changes nothing here). It is computed by SQLite, never
here, so that a bound and a row are always divided the same way.

One meter's readings are found hour by hour, as windows.py finds its windows window start by
window start: a statement looks up a span of hours, then a span twice as wide, up to `PROBES_MOST`
hours. Each span begins at the next hour any meter has a reading in (one seek), so a stretch of
time without readings costs nothing however long; a meter among a fleet costs one look-up per hour
of the fleet's (a page of a year of readings: 8,760 look-ups, about 15 ms).

Whether a meter has readings at all is in `reading_meters` (one row per meter, written with its
readings): the newest reading of a meter is then looked for hour by hour from the newest hour down,
and a meter without any is not looked for through the whole history. Retention leaves the list as
it is: a meter whose readings it all deleted is looked for through every hour still held (about
a millisecond per thousand hours), and found to have none.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from metrify.adapters.sqlalchemy.spans import probe_spans
from metrify.adapters.sqlalchemy.tables import BIGINT_MAX, BIGINT_MIN, reading_meters

HOUR_US = 3_600_000_000
HOUR = f"ts / {HOUR_US}"  # the index's expression, spelled the same in every statement that uses it

PROBES_FIRST = 64  # hours the first statement looks up

_COLUMNS = (
    "r.meter_id, r.ts, r.slot, r.consumption_kwh, r.status, r.partition, "
    "r.voltage, r.current, r.power_kw, r.power_factor, r.frequency, r.region"
)

# The hours first .. last, each looked up through the index; CROSS JOIN makes SQLite walk the
# hours outside and the index inside, as written.
_PROBE = sa.text(
    "WITH RECURSIVE hours(h) AS (SELECT :first UNION ALL SELECT h + 1 FROM hours WHERE h < :last) "
    f"SELECT {_COLUMNS} FROM hours CROSS JOIN readings AS r "
    f"WHERE r.{HOUR} = hours.h AND r.meter_id = :meter AND r.ts >= :low AND r.ts < :high ORDER BY r.ts"
)
_NEXT_HOUR = sa.text(f"SELECT min({HOUR}) FROM readings WHERE {HOUR} >= :first")
_HOUR_OF = sa.text(f"SELECT CAST(:ts AS INTEGER) / {HOUR_US}")
_LAST_HOUR = sa.text(f"SELECT max({HOUR}) FROM readings")
_FIRST_HOUR = sa.text(f"SELECT min({HOUR}) FROM readings")
# The newest hour, from :newest down to :oldest, that holds a reading of the meter.
_NEWEST_HOUR_OF = sa.text(
    "WITH RECURSIVE hours(h) AS (SELECT :newest UNION ALL SELECT h - 1 FROM hours WHERE h > :oldest) "
    f"SELECT h FROM hours WHERE EXISTS (SELECT 1 FROM readings WHERE {HOUR} = hours.h AND meter_id = :meter) LIMIT 1"
)
_NEWEST_REGION = sa.text(
    f"SELECT region FROM readings WHERE {HOUR} = :hour AND meter_id = :meter ORDER BY ts DESC LIMIT 1"
)

# Retention: every hour before the cut-off's, and the part of its hour before it.
EXPIRED = f"{HOUR} <= CAST(:cutoff AS INTEGER) / {HOUR_US} AND ts < :cutoff"


def time_range(start: int | None, end: int | None) -> sa.TextClause | None:
    """start <= ts < end through the index (the rows' hours first, then their timestamps), or None
    when neither bound is set."""
    terms, params = [], {}
    if start is not None:
        terms.append(f"{HOUR} >= CAST(:hour_start AS INTEGER) / {HOUR_US} AND ts >= :hour_start")
        params["hour_start"] = start
    if end is not None:
        terms.append(f"{HOUR} <= CAST(:hour_end AS INTEGER) / {HOUR_US} AND ts < :hour_end")
        params["hour_end"] = end
    return sa.text(" AND ".join(terms)).bindparams(**params) if terms else None


def meter_readings(
    connection: sa.Connection, meter_id: str, start: int | None, end: int | None, limit: int | None = None
) -> list[Any]:
    """One meter's readings with start <= ts < end, in order of ts, the first `limit` of them (None:
    all), as readings rows."""
    low = BIGINT_MIN if start is None else start
    high = BIGINT_MAX if end is None else end
    if low >= high:
        return []
    last = connection.execute(_LAST_HOUR).scalar()
    if last is None:
        return []
    if end is not None:
        last = min(last, connection.execute(_HOUR_OF, {"ts": end - 1}).scalar_one())
    if start is None:
        first = connection.execute(_FIRST_HOUR).scalar_one()
    else:
        first = connection.execute(_HOUR_OF, {"ts": start}).scalar_one()
    params = {"meter": meter_id, "low": low, "high": high}
    return probe_spans(
        first,
        last,
        1,
        limit,
        PROBES_FIRST if limit is None else max(PROBES_FIRST, limit),
        lambda hour: connection.execute(_NEXT_HOUR, {"first": hour}).scalar(),
        lambda hour, upto: connection.execute(_PROBE, {**params, "first": hour, "last": upto}).all(),
    )


def latest_regions(connection: sa.Connection, meter_ids: list[str]) -> dict[str, str | None]:
    """Those of these meters (a few hundred at most: one IN list) that have readings, with the
    region of the newest (by ts)."""
    r = reading_meters.c
    known = connection.execute(sa.select(r.meter_id).where(r.meter_id.in_(meter_ids))).scalars().all()
    if not known:
        return {}
    newest, oldest = connection.execute(_LAST_HOUR).scalar(), connection.execute(_FIRST_HOUR).scalar()
    found: dict[str, str | None] = {}
    if newest is None:
        return found
    for meter_id in known:
        hour = connection.execute(_NEWEST_HOUR_OF, {"newest": newest, "oldest": oldest, "meter": meter_id}).scalar()
        if hour is not None:  # else its readings went with retention
            found[meter_id] = connection.execute(_NEWEST_REGION, {"hour": hour, "meter": meter_id}).scalar()
    return found
