"""A meter's windows read back as stored, on both databases: SQLite keys them window first and
finds one meter's window start by start, a span at a time (windows.py); PostgreSQL reads them
through its key, meter first. The windows here lie where the spans break: sparse over thousands
of starts, before 1970, at the ends of a time range, of two sizes."""

from __future__ import annotations

import random
from typing import Any

import pytest
import sqlalchemy as sa
from tests.integration.conftest import store_events

from metrify.adapters.sqlalchemy import SqlAlchemyOutcomeQueries, create_engine_for
from metrify.adapters.sqlalchemy.api_queries import SqlAlchemyFleetQueries
from metrify.adapters.sqlalchemy.windows import PROBES_FIRST
from metrify.application.ports import ExportFilter
from metrify.application.queries import TimeRange
from metrify.domain.stream.events import ReadingAccepted, WindowUpdated

pytestmark = pytest.mark.integration

US = 1_000_000
QUARTER, HOUR = 900 * US, 3600 * US
T0 = 1_709_510_400 * US  # 2024-03-04T00:00:00Z


def _fleet() -> list[WindowUpdated]:
    pick = random.Random(7)
    windows = [WindowUpdated("DENSE", QUARTER, T0 + i * QUARTER, 1, 0.5, 0.5, 0.5) for i in range(300)]
    # one window in every few hundred starts, over about 40 times the first span's starts
    sparse = sorted(pick.sample(range(40 * PROBES_FIRST), 25))
    windows += [WindowUpdated("SPARSE", QUARTER, T0 + i * QUARTER, 2, 1.0 + i, 0.25, 0.75) for i in sparse]
    windows += [WindowUpdated("SPARSE", HOUR, T0 + i * HOUR, 4, 2.0, 0.25, 0.75) for i in range(0, 600, 7)]
    windows += [WindowUpdated("OLD", QUARTER, -T0 + i * QUARTER, 1, 0.1, 0.1, 0.1) for i in range(-3, 3)]
    return windows


@pytest.fixture
def stored(store_url: str) -> tuple[sa.Engine, list[WindowUpdated]]:
    engine = create_engine_for(store_url)
    windows = _fleet()
    store_events(engine, windows)
    return engine, windows


def _expected(windows: list[WindowUpdated], meter: str, size: int | None, start: int | None, end: int | None) -> list:
    kept = [
        w
        for w in windows
        if w.meter_id == meter
        and (size is None or w.window == size)
        and (start is None or w.window_start >= start)
        and (end is None or w.window_start < end)
    ]
    return sorted(kept, key=lambda w: (w.window_start, w.window))


RANGES = [
    (None, None),
    (T0 + 1, None),  # from just after a start: that window is out
    (None, T0 + 2000 * QUARTER),  # to a start: that window is out
    (T0 + 17 * QUARTER + 5, T0 + 4000 * QUARTER + 1),
    (-T0 - 2 * QUARTER - 1, -T0 + QUARTER),  # before 1970
    (T0 + 10**6 * QUARTER, None),  # after every window
]


@pytest.mark.parametrize("meter", ["DENSE", "SPARSE", "OLD", "NONE"])
@pytest.mark.parametrize(("start", "end"), RANGES)
def test_a_meter_s_windows_page_by_page_are_those_stored(
    stored: tuple[sa.Engine, list[WindowUpdated]], meter: str, start: int | None, end: int | None
) -> None:
    engine, windows = stored
    queries = SqlAlchemyFleetQueries(engine)
    for size in (QUARTER, HOUR):
        for limit in (1, 7, PROBES_FIRST + 1) if meter != "DENSE" else (PROBES_FIRST - 1,):
            pages, after = [], None
            while True:
                page = queries.aggregates(meter, size, TimeRange(start, end), after, limit)
                assert len(page) <= limit
                pages += page
                if len(page) < limit:
                    break
                after = page[-1].window_start
            assert pages == _expected(windows, meter, size, start, end), (size, limit)
    engine.dispose()


@pytest.mark.parametrize(("start", "end"), RANGES)
def test_exports_of_windows_are_ordered_by_meter_then_time(
    stored: tuple[sa.Engine, list[WindowUpdated]], start: int | None, end: int | None
) -> None:
    engine, windows = stored
    queries = SqlAlchemyOutcomeQueries(engine, chunk_rows=10)
    for size in (None, QUARTER):
        for meter in ("SPARSE", "OLD", "NONE"):
            got = list(queries.aggregates(ExportFilter(meter_id=meter, start=start, end=end, window=size)))
            assert got == _expected(windows, meter, size, start, end)
        everyone = list(queries.aggregates(ExportFilter(start=start, end=end, window=size)))
        meters = sorted({w.meter_id for w in windows})
        assert everyone == [w for m in meters for w in _expected(windows, m, size, start, end)]
    engine.dispose()


def test_an_export_of_every_meter_leaves_its_connection_sorting_in_memory_again(migrated_sqlite_url: str) -> None:
    """SQLite sorts an export of every meter in temporary files (windows first on disk, the
    export meter first): the connection goes back to the pool with its sorts in memory, whether
    the export was read to its end or left early."""
    engine = create_engine_for(migrated_sqlite_url)
    windows = _fleet()
    store_events(engine, windows)
    queries = SqlAlchemyOutcomeQueries(engine, chunk_rows=10)
    for read in (len(windows), 3):
        exported = queries.aggregates(ExportFilter())
        assert len([w for _, w in zip(range(read), exported, strict=False)]) == read
        exported.close()
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY
    engine.dispose()


def test_an_export_of_every_meter_is_one_snapshot_sizes_included(
    migrated_sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's export of every meter reads the window sizes, then the windows of those sizes:
    both in one read transaction. Windows committed in between (of a new size, or of a size
    read) are in neither: the export is the store as it was when the export began."""
    from metrify.adapters.sqlalchemy import queries as sql_queries

    engine = create_engine_for(migrated_sqlite_url)
    store_events(engine, [WindowUpdated("M1", QUARTER, T0, 1, 0.5, 0.5, 0.5)])
    other = create_engine_for(migrated_sqlite_url)
    read_sizes = sql_queries.window_sizes

    def sizes_then_a_commit_elsewhere(connection: sa.Connection) -> list[int]:
        sizes = read_sizes(connection)
        newer = [WindowUpdated("M0", HOUR, T0, 4, 2.0, 0.5, 0.5), WindowUpdated("M2", QUARTER, T0, 1, 1, 1, 1)]
        store_events(other, newer)
        return sizes

    monkeypatch.setattr(sql_queries, "window_sizes", sizes_then_a_commit_elsewhere)
    exported = list(SqlAlchemyOutcomeQueries(engine).aggregates(ExportFilter()))
    assert exported == [WindowUpdated("M1", QUARTER, T0, 1, 0.5, 0.5, 0.5)]
    monkeypatch.undo()
    assert [w.meter_id for w in SqlAlchemyOutcomeQueries(engine).aggregates(ExportFilter())] == ["M0", "M1", "M2"]
    other.dispose()
    engine.dispose()


@pytest.mark.parametrize("few_meters", [False, True])
def test_sqlite_looks_up_only_a_few_meters_under_every_window(migrated_sqlite_url: str, few_meters: bool) -> None:
    """An OPERATOR's counts of aggregates on SQLite, keyed window first, read the rows and check
    each one's meter: with statistics, SQLite would otherwise look each of the region's meters up
    under every window start stored (a skip-scan: windows x meters look-ups, hours for years of
    data). A USER's few meters are looked up so, which is far quicker than reading every row."""
    engine = create_engine_for(migrated_sqlite_url)
    windows = [
        WindowUpdated(f"M{m}", QUARTER, T0 + i * QUARTER, 1, 0.5, 0.5, 0.5) for m in range(40) for i in range(50)
    ]
    store_events(engine, windows)
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "FROM aggregates" in statement and not statement.startswith("EXPLAIN"):
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", seen)
    summary = SqlAlchemyOutcomeQueries(engine).stream_summary(
        lambda stmt, meter: stmt.where(meter.in_(["M1", "M2"])), few_meters=few_meters
    )
    sa.event.remove(engine, "before_cursor_execute", seen)
    assert summary["tables"]["aggregates"] == 100
    assert len(statements) == 1
    with engine.connect() as connection:
        statement, parameters = statements[0]
        plan = " ".join(row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
    assert ("ANY(" in plan) is few_meters, plan
    engine.dispose()


@pytest.mark.parametrize("after", [2**63 - 2, 2**63 - QUARTER, 2**63 - 1])
def test_a_cursor_at_the_end_of_time_gives_an_empty_page(
    stored: tuple[sa.Engine, list[WindowUpdated]], after: int
) -> None:
    """The next window start after such a cursor lies beyond what the key's column holds: nothing
    to look up (SQLite raised OverflowError binding it, a 500 at the API)."""
    engine, _ = stored
    queries = SqlAlchemyFleetQueries(engine)
    for size in (QUARTER, HOUR):
        assert queries.aggregates("SPARSE", size, TimeRange(), after, 10) == []
        assert queries.aggregates("SPARSE", size, TimeRange(start=after), None, 10) == []
        assert queries.region_aggregates("R", size, TimeRange(), after, 10) == []
    engine.dispose()


def test_a_silent_region_s_page_reads_no_further_than_its_meters_readings(migrated_sqlite_url: str) -> None:
    """SQLite reads a region's windows in time order, every meter's, until the page is full. A
    region whose meters went silent cannot fill it: the read stops a week past their latest
    reading instead of running on through the rest of the fleet's windows (counted here in
    SQLite's virtual machine steps, which do not depend on the machine's speed)."""
    engine = create_engine_for(migrated_sqlite_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO meters (meter_id, region, interval_seconds, created_at) VALUES "
            "('Q1', 'quiet', 1800, 0), ('B1', 'busy', NULL, 0), ('B2', 'busy', NULL, 0), ('B3', 'busy', NULL, 0)"
        )
    events: list[Any] = [
        ReadingAccepted("Q1", T0 + i * 1800 * US, T0 + i * 1800 * US, 0.5, "ON_TIME", 0) for i in range(4)
    ]
    events += [WindowUpdated("Q1", HOUR, T0 + i * HOUR, 2, 1.0, 0.5, 0.5) for i in range(2)]
    events += [WindowUpdated(f"B{m}", HOUR, T0 + i * HOUR, 2, 1.0, 0.5, 0.5) for m in (1, 2, 3) for i in range(3000)]
    store_events(engine, events)
    queries = SqlAlchemyFleetQueries(engine)
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    with engine.connect() as connection:  # the pool's one connection, then used by the queries
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.set_progress_handler(step, 100)
    quiet = queries.region_aggregates("quiet", HOUR, TimeRange(), None, 100)
    quiet_steps, steps = steps, 0
    busy = queries.region_aggregates("busy", HOUR, TimeRange(), T0 + 2900 * HOUR, 100)
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.set_progress_handler(None, 100)
    assert [(w.window_start, w.meters, w.count) for w in quiet] == [(T0, 1, 2), (T0 + HOUR, 1, 2)]
    assert len(busy) == 99 and all(w.meters == 3 for w in busy)
    # the quiet page reads a week of windows (3 x 169 rows), the busy one its 99 windows (297 rows)
    assert 0 < quiet_steps < 4 * steps
    assert queries.region_aggregates("nowhere", HOUR, TimeRange(), None, 100) == []
    engine.dispose()
