"""A meter's readings read back as stored, on both databases: SQLite finds them through an index
by hour and looks one meter's up hour by hour, a span at a time (hours.py); PostgreSQL reads them
through its key, meter first. The readings here lie where the spans break: sparse over thousands
of hours, around and before 1970, at the ends of a time range; and the meters that have readings,
the region of each one's newest, and retention's cut-off within an hour."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
from tests.integration.conftest import store_events

from metrify.adapters.sqlalchemy import SqlAlchemyOutcomeQueries, create_engine_for
from metrify.adapters.sqlalchemy.api_queries import SqlAlchemyFleetQueries
from metrify.adapters.sqlalchemy.hours import PROBES_FIRST
from metrify.adapters.sqlalchemy.meters import SqlAlchemyMeterRegistry
from metrify.adapters.sqlalchemy.partitions import SqlAlchemyStorageMaintenance
from metrify.application.ports import ExportFilter
from metrify.application.queries import TimeRange
from metrify.domain.stream.events import ReadingAccepted

pytestmark = pytest.mark.integration

US = 1_000_000
HALF, HOUR = 1800 * US, 3600 * US
T0 = 1_709_510_400 * US  # 2024-03-04T00:00:00Z


def _reading(meter: str, ts: int, region: str | None = None, kwh: float = 0.5) -> ReadingAccepted:
    return ReadingAccepted(meter, ts, ts - ts % HALF, kwh, "ON_TIME", 0, None if region is None else {"region": region})


def _fleet() -> list[ReadingAccepted]:
    pick = random.Random(11)
    readings = [_reading("DENSE", T0 + i * HALF + 7 * US, "north") for i in range(400)]
    # one reading in every few hundred hours, over about 40 times the first span's hours
    sparse = sorted(pick.sample(range(40 * PROBES_FIRST), 25))
    readings += [_reading("SPARSE", T0 + i * HOUR + i, "south" if i % 2 else None, 1.0 + i) for i in sparse]
    # around 1970: SQLite's division truncates, so the hour around 0 spans two hours
    readings += [_reading("OLD", i * HALF + 3, "east") for i in range(-5, 5)]
    return readings


@pytest.fixture
def stored(store_url: str) -> tuple[sa.Engine, list[ReadingAccepted]]:
    engine = create_engine_for(store_url)
    readings = _fleet()
    store_events(engine, readings)
    return engine, readings


def _expected(readings: list[ReadingAccepted], meter: str, start: int | None, end: int | None) -> list:
    kept = [
        r
        for r in readings
        if r.meter_id == meter and (start is None or r.timestamp >= start) and (end is None or r.timestamp < end)
    ]
    return sorted(kept, key=lambda r: r.timestamp)


RANGES = [
    (None, None),
    (T0 + 7 * US + 1, None),  # from just after a reading: it is out
    (None, T0 + 100 * HALF + 7 * US),  # to a reading: it is out
    (T0 + 17 * HOUR + 5, T0 + 2000 * HOUR + 1),
    (-3 * HALF, HALF + 3),  # around 1970, one reading at each end (in, out)
    (T0 + 10**6 * HOUR, None),  # after every reading
    (T0, T0),  # empty
]


@pytest.mark.parametrize("meter", ["DENSE", "SPARSE", "OLD", "NONE"])
@pytest.mark.parametrize(("start", "end"), RANGES)
def test_a_meter_s_readings_page_by_page_are_those_stored(
    stored: tuple[sa.Engine, list[ReadingAccepted]], meter: str, start: int | None, end: int | None
) -> None:
    engine, readings = stored
    queries = SqlAlchemyFleetQueries(engine)
    for limit in (1, 7, PROBES_FIRST + 1) if meter != "DENSE" else (PROBES_FIRST - 1, 1000):
        pages, after = [], None
        while True:
            page = queries.readings(meter, TimeRange(start, end), after, limit)
            assert len(page) <= limit
            pages += page
            if len(page) < limit:
                break
            after = page[-1].timestamp
        assert pages == _expected(readings, meter, start, end), limit
    engine.dispose()


@pytest.mark.parametrize(("start", "end"), RANGES)
def test_exports_of_readings_are_ordered_by_meter_then_time(
    stored: tuple[sa.Engine, list[ReadingAccepted]], start: int | None, end: int | None
) -> None:
    engine, readings = stored
    queries = SqlAlchemyOutcomeQueries(engine, chunk_rows=10)
    for meter in ("SPARSE", "OLD", "NONE"):
        assert list(queries.readings(ExportFilter(meter_id=meter, start=start, end=end))) == _expected(
            readings, meter, start, end
        )
    everyone = list(queries.readings(ExportFilter(start=start, end=end)))
    meters = sorted({r.meter_id for r in readings})
    assert everyone == [r for m in meters for r in _expected(readings, m, start, end)]
    engine.dispose()


@pytest.mark.parametrize("after", [2**63 - 2, 2**63 - 1])
def test_a_reading_cursor_at_the_end_of_time_gives_an_empty_page(
    stored: tuple[sa.Engine, list[ReadingAccepted]], after: int
) -> None:
    engine, _ = stored
    queries = SqlAlchemyFleetQueries(engine)
    assert queries.readings("SPARSE", TimeRange(), after, 10) == []
    assert queries.readings("SPARSE", TimeRange(start=after), None, 10) == []
    engine.dispose()


def test_the_history_of_a_meter_is_the_region_of_its_newest_reading(
    stored: tuple[sa.Engine, list[ReadingAccepted]],
) -> None:
    """Newest by time, not by arrival: LATE readings stored last, of an older time, with another
    region (one in the newest reading's hour, before it), do not make the history another region's."""
    engine, readings = stored
    store_events(engine, [_reading("DENSE", T0 + 3 * HALF, "west"), _reading("DENSE", T0 + 199 * HOUR + 1, "west")])
    newest_sparse = max((r for r in readings if r.meter_id == "SPARSE"), key=lambda r: r.timestamp)
    expected_sparse = (newest_sparse.extra or {}).get("region")
    history = SqlAlchemyMeterRegistry(engine).history_regions(["DENSE", "SPARSE", "OLD", "NONE"])
    assert history == {"DENSE": "north", "SPARSE": expected_sparse, "OLD": "east"}
    engine.dispose()


def test_sqlite_retention_cuts_readings_within_an_hour(migrated_sqlite_url: str) -> None:
    """Retention deletes the readings before the cut-off through the index by hour: the whole
    hours before it, and in its own hour those before it, none after; a meter whose readings all
    went has no history left."""
    engine = create_engine_for(migrated_sqlite_url)
    readings = [_reading("M1", T0 + i * 10 * 60 * US, "north") for i in range(12)]  # 2 hours, 10 min apart
    readings += [_reading("GONE", T0 - HOUR, "south"), _reading("OLD", -HOUR // 2, "east")]
    store_events(engine, readings)
    cutoff = T0 + HOUR + 25 * 60 * US  # within the second hour
    gone = SqlAlchemyStorageMaintenance(engine).expire({"readings": cutoff})
    assert [p.rows for p in gone] == [2 + 6 + 3]
    kept = list(SqlAlchemyOutcomeQueries(engine).readings(ExportFilter()))
    assert kept == [r for r in readings if r.timestamp >= cutoff]
    assert SqlAlchemyMeterRegistry(engine).history_regions(["M1", "GONE", "OLD"]) == {"M1": "north"}
    engine.dispose()


def test_sqlite_lists_each_meter_with_readings_once(migrated_sqlite_url: str) -> None:
    engine = create_engine_for(migrated_sqlite_url)
    store_events(engine, [_reading("B", T0), _reading("A", T0), _reading("B", T0 + HALF)])
    store_events(engine, [_reading("A", T0 + HALF), _reading("C", T0 + HALF)])
    with engine.connect() as connection:
        listed = connection.exec_driver_sql("SELECT meter_id FROM reading_meters ORDER BY meter_id").scalars().all()
    assert listed == ["A", "B", "C"]
    engine.dispose()
