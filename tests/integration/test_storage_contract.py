"""One contract for every stream store: the in-memory fake, SQLite and PostgreSQL are fed the
same event batches and must answer every query identically (DESIGN §4: idempotent sink by
natural keys; exports ordered by meter, then time)."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration.conftest import empty_stream_tables
from tests.support.core_runner import FixedClock, run_core
from tests.support.strategies import streams

from metrify.adapters.memory.stream_store import InMemoryOutcomeQueries, InMemoryStreamStore, InMemoryStreamUnitOfWork
from metrify.adapters.sqlalchemy import SqlAlchemyOutcomeQueries, SqlAlchemyStreamUnitOfWork, create_engine_for
from metrify.application.exports import EXPORT_KINDS, export_rows
from metrify.application.ports import ExportFilter, GapRow, SourceProgress, TransientStoreError
from metrify.application.stream import StreamPipeline
from metrify.domain.readings import LongInteger
from metrify.domain.stream.config import US
from metrify.domain.stream.events import (
    GapChanged,
    GapClosed,
    GapHealed,
    GapOpened,
    ReadingAccepted,
    ReadingRejected,
    ReadingTooLate,
    WindowUpdated,
)

pytestmark = pytest.mark.integration

T0 = 1_709_589_600 * US  # 2024-03-04T22:00:00Z
HALF_HOUR = 1800 * US
HOUR = 3600 * US
DAY = 24 * HOUR


@dataclass
class Store:
    """A stream store under test: a unit-of-work factory and the queries over the same data."""

    kind: str
    uow: Callable[[], Any]
    queries: Any
    reset: Callable[[], None]


def memory_store() -> Store:
    holder = {"store": InMemoryStreamStore()}

    def reset() -> None:
        holder["store"] = InMemoryStreamStore()

    class Queries:
        def __getattr__(self, name: str) -> Any:
            return getattr(InMemoryOutcomeQueries(holder["store"]), name)

    return Store("memory", lambda: InMemoryStreamUnitOfWork(holder["store"]), Queries(), reset)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield memory_store()
        return
    url = request.getfixturevalue("migrated_sqlite_url" if request.param == "sqlite" else "migrated_postgres_url")
    empty_stream_tables(url)
    engine = create_engine_for(url)
    yield Store(
        request.param,
        lambda: SqlAlchemyStreamUnitOfWork(engine),
        SqlAlchemyOutcomeQueries(engine),
        lambda: empty_stream_tables(url),
    )
    engine.dispose()


def write(store: Store, events: list[Any]) -> None:
    with store.uow() as uow:
        uow.outcomes.add_events(events)
        uow.commit()


def everything(store: Store, where: ExportFilter = ExportFilter()) -> dict[str, list[Any]]:
    q = store.queries
    return {
        "readings": list(q.readings(where)),
        "rejected": list(q.rejected(where)),
        "too_late": list(q.too_late(where)),
        "gaps": list(q.gaps(where)),
        "aggregates": list(q.aggregates(where)),
    }


def expected_after(*batches: list[Any], where: ExportFilter = ExportFilter()) -> dict[str, list[Any]]:
    reference = memory_store()
    for batch in batches:
        write(reference, batch)
    return everything(reference, where)


def reading(
    meter: str,
    t: int,
    kwh: float = 0.5,
    status: str = "ON_TIME",
    partition: int = 0,
    extra: dict[str, Any] | None = None,
) -> ReadingAccepted:
    slot = (2 * t + HALF_HOUR) // (2 * HALF_HOUR) * HALF_HOUR
    return ReadingAccepted(meter, t, slot, kwh, status, partition, extra)


# Meter ids whose byte order differs from a locale's order: case, digits, accents, symbols.
METERS = ("M2", "M10", "m1", "MTR-1", "Z", "a", "\u00e9lan", "\u00c9", "_x", "M 1", "\u4e2d")

MIXED_BATCH: list[Any] = [
    *(reading(m, T0 + i * HALF_HOUR + 7 * US, 0.25 * i) for m in METERS for i in range(3)),
    reading(
        "E",
        T0,
        1.5,
        "LATE",
        2,
        {"voltage": 230.5, "current": 4.0, "power_kw": 0.9, "power_factor": 0.95, "frequency": 50.0, "region": "north"},
    ),
    reading("E", T0 + HALF_HOUR, 1.0, extra={"voltage": 231.0}),
    ReadingRejected("", " 2024-03-04T10:00:00Z", "0.5", "missing_meter_id", 0, T0 - HOUR, 1),
    ReadingRejected("M2", "garbage", 1.25, "invalid_timestamp", 0, None, 2),
    ReadingRejected("M2", None, None, "invalid_timestamp", 1, None, 3),
    ReadingRejected("M2", 1709546400, "abc", "invalid_consumption", 0, T0, 4),
    ReadingRejected("M2", 1709546400000, "-1e400", "negative_consumption", 0, T0, 5),
    ReadingRejected("M2", 1709546400.5, 10**400, "out_of_range", 0, T0 + US // 2, 6),
    ReadingRejected("M10", "2024-03-04T22:00:00Z", True, "invalid_consumption", 1, T0, 7),
    ReadingRejected("M10", "2024-03-04T22:00:00Z", "0.5", "duplicate", 0, T0, 8),
    ReadingTooLate("M2", T0 - 5 * HOUR, 0.75, 4 * HOUR, 0, 9),
    ReadingTooLate("M2", T0 - 5 * HOUR, 0.5, 4 * HOUR, 1, 10),
    ReadingTooLate("a", T0 - 9 * HOUR, 0.0, 8 * HOUR + 1, 0, 11),
    GapOpened("M2", T0 + 4 * HALF_HOUR, None, 2),
    GapClosed("M10", T0 - 4 * HALF_HOUR, T0, 4),
    GapOpened("a", T0 - 10 * HALF_HOUR, T0 - 8 * HALF_HOUR, 2),
    WindowUpdated("M2", 900 * US, T0, 1, 0.0, 0.0, 0.0),
    WindowUpdated("M2", HOUR, T0, 2, 0.25, 0.0, 0.25),
    WindowUpdated("M2", 86400 * US, T0 - 22 * HOUR, 3, 0.75, 0.0, 0.5),
    WindowUpdated("a", HOUR, T0, 2, 0.1 + 0.2, 0.1, 0.2),
]


def test_a_batch_reads_back_exactly_as_the_in_memory_store_gives_it(store: Store) -> None:
    write(store, MIXED_BATCH)
    got = everything(store)
    assert got == expected_after(MIXED_BATCH)
    assert [r.meter_id for r in got["readings"]] == sorted(r.meter_id for r in got["readings"])
    assert got["aggregates"][-1].sum_kwh == 0.1 + 0.2  # doubles come back bit for bit


def test_rejected_raw_values_come_back_with_their_json_type(store: Store) -> None:
    raws = [
        "0.5",
        " 7 ",
        "",
        0.5,
        7,
        -0.0,
        True,
        False,
        None,
        10**400,
        -(10**400),
        float("inf"),
        float("nan"),
        "\x00nul",
        "\ud800",
        "\u00e9",
        '"quoted"',
        "back\\slash",
        [1, "a"],
        {"k": None},
    ]
    events = [ReadingRejected("M1", raw, raw, "invalid_consumption", 0, None, i) for i, raw in enumerate(raws)]
    write(store, events)
    back = list(store.queries.rejected(ExportFilter()))
    assert [r.position for r in back] == list(range(len(raws)))
    for sent, got in zip(raws, back, strict=True):
        for value in (got.timestamp, got.consumption_kwh):
            assert type(value) is type(sent)
            assert repr(value) == repr(sent) or (isinstance(sent, float) and math.isnan(sent) and math.isnan(value))


def test_rejected_rows_without_a_parsed_time_come_first_then_by_partition_and_position(store: Store) -> None:
    events = [
        ReadingRejected("M1", "x", "1", "duplicate", 1, T0, 5),
        ReadingRejected("M1", "x", "1", "duplicate", 0, T0, 9),
        ReadingRejected("M1", "bad", "1", "invalid_timestamp", 1, None, 1),
        ReadingRejected("M1", "bad", "1", "invalid_timestamp", 0, None, 7),
        ReadingRejected("M1", "x", "1", "duplicate", 0, T0 - 1, 8),
        ReadingRejected("M0", "x", "1", "duplicate", 3, T0 + 1, 2),
    ]
    write(store, events)
    got = [(r.meter_id, r.parsed_timestamp, r.partition, r.position) for r in store.queries.rejected(ExportFilter())]
    assert got == [
        ("M0", T0 + 1, 3, 2),
        ("M1", None, 0, 7),
        ("M1", None, 1, 1),
        ("M1", T0 - 1, 0, 8),
        ("M1", T0, 0, 9),
        ("M1", T0, 1, 5),
    ]
    # A time bound leaves out the rows that have no time.
    bounded = list(store.queries.rejected(ExportFilter(start=0)))
    assert all(r.parsed_timestamp is not None for r in bounded) and len(bounded) == 4


@pytest.mark.parametrize(
    "where",
    [
        ExportFilter(meter_id="M2"),
        ExportFilter(meter_id="nobody"),
        ExportFilter(start=T0),
        ExportFilter(end=T0 + HALF_HOUR),
        ExportFilter(start=T0 - 5 * HOUR, end=T0 + US // 2),
        ExportFilter(meter_id="M2", start=T0, end=T0 + 2 * HOUR),
        ExportFilter(window=HOUR),
        ExportFilter(meter_id="M2", window=86400 * US, end=T0),
    ],
    ids=lambda w: repr(w),
)
def test_filters_keep_the_same_rows_as_the_in_memory_store(store: Store, where: ExportFilter) -> None:
    write(store, MIXED_BATCH)
    assert everything(store, where) == expected_after(MIXED_BATCH, where=where)


def test_writing_the_same_batch_twice_changes_nothing(store: Store) -> None:
    write(store, MIXED_BATCH)
    once = everything(store)
    write(store, MIXED_BATCH)
    with store.uow() as uow:  # and twice within one unit of work
        uow.outcomes.add_events(MIXED_BATCH)
        uow.outcomes.add_events(MIXED_BATCH)
        uow.commit()
    assert everything(store) == once


def test_first_reading_wins_and_last_window_value_wins(store: Store) -> None:
    first = [reading("M1", T0, 1.0), WindowUpdated("M1", HOUR, T0, 1, 1.0, 1.0, 1.0)]
    second = [reading("M1", T0, 9.0, "LATE"), WindowUpdated("M1", HOUR, T0, 2, 3.0, 1.0, 2.0)]
    write(store, first)
    write(store, second)
    got = everything(store)
    assert got == expected_after(first, second)
    assert got["readings"] == [reading("M1", T0, 1.0)]
    assert got["aggregates"] == [WindowUpdated("M1", HOUR, T0, 2, 3.0, 1.0, 2.0)]


@pytest.mark.parametrize("meters", [1, 400], ids=["one-statement", "many-statements"])
def test_a_window_emitted_twice_in_one_batch_keeps_its_later_value(store: Store, meters: int) -> None:
    """A window closes and a LATE reading updates it within one batch: the batch holds both of
    its values (SQLite takes them in one multi-row statement, in order; PostgreSQL the last)."""
    batch: list[Any] = []
    for n in range(meters):
        batch.append(WindowUpdated(f"M{n:03d}", HOUR, T0, 1, 1.0, 1.0, 1.0))
    for n in range(meters):
        batch.append(WindowUpdated(f"M{n:03d}", HOUR, T0, 2, 3.0, 1.0, 2.0))
        batch.append(WindowUpdated(f"M{n:03d}", DAY, T0, 2, 3.0, 1.0, 2.0))
    write(store, batch)
    got = everything(store)
    assert got == expected_after(batch)
    assert len(got["aggregates"]) == 2 * meters
    assert {(w.window, w.count, w.sum_kwh) for w in got["aggregates"]} == {(HOUR, 2, 3.0), (DAY, 2, 3.0)}


def test_a_gap_whose_first_slot_moved_replaces_its_old_row(store: Store) -> None:
    s = [T0 + i * HALF_HOUR for i in range(10)]
    batches = [
        [GapOpened("M1", s[1], s[5], 4), GapOpened("M2", s[0], None, 3)],
        [GapChanged("M1", s[2], s[5], 3, previous_from=s[1])],  # the first slot healed
        [
            GapChanged("M1", s[3], s[5], 2, previous_from=s[2]),
            GapOpened("M1", s[2], s[3], 1),  # noqa: E501
            GapChanged("M2", s[0], None, 5),
        ],
    ]
    for batch in batches:
        write(store, batch)
    got = list(store.queries.gaps(ExportFilter()))
    assert got == expected_after(*batches)["gaps"]
    assert got == [GapRow("M1", s[2], s[3], 1), GapRow("M1", s[3], s[5], 2), GapRow("M2", s[0], None, 5)]


def test_a_healed_gap_is_deleted_even_within_the_batch_that_opened_it(store: Store) -> None:
    s = [T0 + i * HALF_HOUR for i in range(6)]
    batches = [
        [GapOpened("M1", s[1], s[3], 2), GapOpened("M3", s[0], s[2], 2)],
        [
            GapHealed("M1", s[1]),
            GapOpened("M2", s[4], s[5], 1),
            GapHealed("M2", s[4]),
            GapClosed("M3", s[0], s[2], 2),
            GapHealed("M3", s[0]),
            GapOpened("M3", s[0], s[1], 1),
        ],
    ]
    for batch in batches:
        write(store, batch)
    got = list(store.queries.gaps(ExportFilter()))
    assert got == expected_after(*batches)["gaps"] == [GapRow("M3", s[0], s[1], 1)]


def test_large_batches_take_the_bulk_path_with_the_same_result(store: Store) -> None:
    meters = [f"M{i:03d}" for i in range(100)]
    batch: list[Any] = []
    for n, meter in enumerate(meters):
        batch += [
            reading(meter, T0 + i * HALF_HOUR, i / 4, extra={"voltage": 230 + i} if i % 2 else None) for i in range(3)
        ]
        batch.append(ReadingRejected(meter, f"bad{n}", n, "invalid_timestamp", n % 3, None, 1000 + n))
        batch.append(ReadingTooLate(meter, T0 - 9 * HOUR, 0.5, 8 * HOUR, n % 3, 2000 + n))
        batch.append(GapOpened(meter, T0 + 5 * HALF_HOUR, None, n))
        batch.append(WindowUpdated(meter, HOUR, T0, 2, 0.25, 0.0, 0.25))
    heal = [GapHealed(meter, T0 + 5 * HALF_HOUR) for meter in meters[::2]]
    heal += [WindowUpdated(meter, HOUR, T0, 3, 0.75, 0.0, 0.5) for meter in meters[::3]]
    write(store, batch)
    write(store, batch)
    write(store, heal)
    got = everything(store)
    assert got == expected_after(batch, heal)
    assert len(got["readings"]) == 300 and len(got["gaps"]) == 50


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_unit_of_work_prepared_ahead_writes_what_it_would_have_written(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The sink's write-behind: rows built and COPY data encoded by `prepare`, written by `commit`
    (on the first write by a direct COPY, on the second, all conflicts, through the stage with the
    same encoded data); anything staged after `prepare` is written too."""
    url = request.getfixturevalue(f"migrated_{kind}_url")
    empty_stream_tables(url)
    engine = create_engine_for(url)
    meters = [f"M{i:03d}" for i in range(100)]
    batch = [
        reading(meter, T0 + i * HALF_HOUR, i / 4, extra={"voltage": 230 + i} if i % 2 else None)
        for meter in meters
        for i in range(3)
    ]
    batch += [WindowUpdated(meter, HOUR, T0, 2, 0.25, 0.0, 0.25) for meter in meters]
    late = [reading("M999", T0, 9.5)]
    try:
        for _ in range(2):
            with SqlAlchemyStreamUnitOfWork(engine) as uow:
                uow.outcomes.add_events(batch)
                uow.prepare()
                uow.outcomes.add_events(late)
                uow.commit()
        got = everything(Store(kind, lambda: None, SqlAlchemyOutcomeQueries(engine), lambda: None))
    finally:
        engine.dispose()
    assert got == expected_after(batch + late)
    assert len(got["readings"]) == 301 and len(got["aggregates"]) == 100


def test_leaving_without_commit_leaves_nothing(store: Store) -> None:
    with store.uow() as uow:
        uow.outcomes.add_events(MIXED_BATCH)
        uow.state.save("main", 0, T0, 42, {"M1": [1, 2, 3]})
        uow.progress.set(SourceProgress("file.csv", 10, False))
    with store.uow() as uow:
        uow.outcomes.add_events(MIXED_BATCH)
        uow.rollback()
        uow.commit()  # commits nothing: the rollback dropped it all
    with store.uow() as uow:
        assert uow.state.load("main", 0) is None
        assert uow.state.partitions("main") == []
        assert uow.progress.get("file.csv") is None
    assert everything(store) == {kind: [] for kind in ("readings", "rejected", "too_late", "gaps", "aggregates")}


def test_an_error_inside_the_block_rolls_back(store: Store) -> None:
    with pytest.raises(RuntimeError), store.uow() as uow:
        uow.outcomes.add_events(MIXED_BATCH)
        raise RuntimeError("boom")
    assert list(store.queries.readings(ExportFilter())) == []


def test_a_header_keeps_the_token_of_the_unit_of_work_that_saved_it_last(store: Store) -> None:
    """How a writer whose commit lost its acknowledgement learns whether it went through."""
    with store.uow() as uow:
        assert uow.state.commit_token("main", 0) is None
        uow.state.save("main", 0, T0, 5, {}, "first")
        uow.state.save("main", 1, T0, 5, {"M1": [1]}, "first")
        uow.commit()
    with store.uow() as uow:
        uow.state.save("main", 0, T0, 9, {}, "second")
        uow.rollback()
    with store.uow() as uow:
        assert (uow.state.commit_token("main", 0), uow.state.commit_token("main", 1)) == ("first", "first")
        uow.state.save("main", 1, T0, 9, {"M1": [2]})
        uow.commit()
    with store.uow() as uow:
        assert (uow.state.commit_token("main", 0), uow.state.commit_token("main", 1)) == ("first", None)


def test_state_saves_and_loads_back_exactly(store: Store) -> None:
    big = (1 << 70) + 1  # a slot bitmask can outgrow 64 bits
    meters = {
        "M1": [HALF_HOUR, T0, T0 + HOUR, big, 0, [T0 + HALF_HOUR, 1], [T0 << 3, 2, 0.1 + 0.2, 0.1, 0.2]],
        " odd id\u00e9": [HALF_HOUR, None, None, 0, 0, [], []],
    }
    with store.uow() as uow:
        uow.state.save("main", 1, T0 + HOUR, 17, meters)
        uow.state.save("main", 0, None, 0, {})
        uow.state.save("other", 4, T0, 3, {"M9": [1, 2]})
        uow.commit()
    with store.uow() as uow:
        uow.state.save("main", 1, T0 + 2 * HOUR, 20, {"M2": [5]})  # a later save adds and moves on
        uow.state.save("main", 1, T0 + 3 * HOUR, 21, {"M1": [6]})  # and the last one wins
        uow.commit()
    with store.uow() as uow:
        assert uow.state.partitions("main") == [0, 1]
        assert uow.state.partitions("other") == [4]
        assert uow.state.partitions("nothing") == []
        loaded = uow.state.load("main", 1)
        assert loaded is not None
        assert (loaded.partition, loaded.max_event_time, loaded.next_offset) == (1, T0 + 3 * HOUR, 21)
        assert dict(loaded.meters) == {"M1": [6], " odd id\u00e9": meters[" odd id\u00e9"], "M2": [5]}
        empty = uow.state.load("main", 0)
        assert empty is not None and (empty.max_event_time, empty.next_offset, dict(empty.meters)) == (None, 0, {})
        assert uow.state.load("main", 7) is None
    with store.uow() as uow:
        uow.state.save("x", 0, 1, 1, {"M1": meters["M1"]})
        uow.commit()
        reloaded = uow.state.load("x", 0)
    assert reloaded is not None and reloaded.meters["M1"] == meters["M1"]
    assert type(reloaded.meters["M1"][3]) is int and reloaded.meters["M1"][3] == big


def test_progress_is_saved_and_the_last_value_wins(store: Store) -> None:
    with store.uow() as uow:
        uow.progress.set(SourceProgress("a.csv", 10, False))
        uow.progress.set(SourceProgress("a.csv", 20, False))
        uow.progress.set(SourceProgress("b.csv", 5, True))
        uow.commit()
    with store.uow() as uow:
        assert uow.progress.get("a.csv") == SourceProgress("a.csv", 20, False)
        assert uow.progress.get("b.csv") == SourceProgress("b.csv", 5, True)
        assert uow.progress.get("c.csv") is None
        uow.progress.set(SourceProgress("a.csv", 30, True))
        uow.commit()
    with store.uow() as uow:
        assert uow.progress.get("a.csv") == SourceProgress("a.csv", 30, True)


def replay(store: Store, rows: list[Any], config: Any, now_us: int, partitions: int, size: int) -> dict[str, Any]:
    """The pipeline over `store`, restarted from the store after every other batch."""

    def fresh() -> StreamPipeline:
        pipeline = StreamPipeline(config, partitions, store.uow, FixedClock(now_us))
        pipeline.load()
        return pipeline

    pipeline = fresh()
    for index, start in enumerate(range(0, len(rows), size)):
        pipeline.process(rows[start : start + size])
        if index % 2:
            pipeline = fresh()
    return {kind: list(export_rows(store.queries, kind, ExportFilter())) for kind in EXPORT_KINDS}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=streams())
def test_a_replay_through_the_pipeline_exports_the_same_on_every_store(store: Store, drawn: Any) -> None:
    rows, config, now_us, partitions = drawn
    store.reset()
    expected = run_core(rows, config, now_us, partitions)
    got = replay(store, rows, config, now_us, partitions, size=3)
    # repr: the same values AND types (an int stays an int, -0.0 stays -0.0, NaN stays NaN)
    assert repr(got) == repr(expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=streams(), writers=st.lists(st.integers(0, 1), min_size=1, max_size=12))
def test_two_writers_of_one_stream_give_the_one_writers_outcome(store: Store, drawn: Any, writers: list[int]) -> None:
    """`metrify api` and `metrify replay` on one data folder: each commit expects the offsets its
    writer last saw, and a writer that finds others loads the stream again and processes its
    batch on it, so no outcome is lost or overwritten and the offsets never go back."""
    rows, config, now_us, partitions = drawn
    store.reset()
    expected = run_core(rows, config, now_us, partitions)
    pipelines = [StreamPipeline(config, partitions, store.uow, FixedClock(now_us)) for _ in range(2)]
    for pipeline in pipelines:
        pipeline.load()  # both start from the same (empty) stream
    size = 3
    for index, start in enumerate(range(0, len(rows), size)):
        pipelines[writers[index % len(writers)]].process(rows[start : start + size])
    got = {kind: list(export_rows(store.queries, kind, ExportFilter())) for kind in EXPORT_KINDS}
    assert repr(got) == repr(expected)


# ------------------------------------------------------------------- SQL stores only


@pytest.fixture
def sql_url(store_url: str) -> str:
    return store_url


def test_readings_keep_their_electrical_extras(sql_url: str) -> None:
    engine = create_engine_for(sql_url)
    try:
        uow = SqlAlchemyStreamUnitOfWork(engine)
        with uow:
            uow.outcomes.add_events(
                [
                    reading(
                        "M1",
                        T0,
                        extra={"voltage": "230.5", "current": 3, "frequency": None, "region": "north", "unknown": 1},
                    ),
                    reading("M1", T0 + HALF_HOUR, extra={"voltage": "n/a"}),
                    # not finite: stored as the Kafka path's envelope carries them (null)
                    reading(
                        "M1",
                        T0 + 2 * HALF_HOUR,
                        extra={
                            "voltage": float("inf"),
                            "current": float("nan"),
                            "power_kw": "-inf",
                            "power_factor": 0.9,
                            "frequency": "1e999",
                        },
                    ),
                ]
            )
            uow.commit()
        got = list(SqlAlchemyOutcomeQueries(engine).readings(ExportFilter()))
        assert [r.extra for r in got] == [
            {"voltage": 230.5, "current": 3.0, "region": "north"},
            None,
            {"power_factor": 0.9},
        ]
    finally:
        engine.dispose()


def test_readings_of_every_shape_of_extras_keep_them_in_one_batch(sql_url: str) -> None:
    """SQLite names only the extra columns some reading of a run holds: readings without extras,
    with one, with all, and with none it stores, mixed in a batch long enough for many statements."""
    full = {"voltage": 229.5, "current": 1.5, "power_kw": 0.3, "power_factor": 0.9, "frequency": 50.0}
    # runs of readings with extras (each cut into statements): some columns held by none of a run
    runs: list[list[dict[str, Any] | None]] = [
        [{"voltage": 230.0}, {"region": "north"}, {"unknown": 1}],
        [None],
        [{**full, "region": "south"}],
        [{"frequency": 49.9}, {"unknown": 2}],
        [{"unknown": 3}],
    ]
    shapes = [run[index % len(run)] for run in runs for index in range(300)]
    events = [reading(f"M{index:04d}", T0 + HALF_HOUR * (index % 3), extra=shape) for index, shape in enumerate(shapes)]
    expected = {
        (event.meter_id, event.timestamp): ({k: v for k, v in event.extra.items() if k != "unknown"} or None)
        if event.extra
        else None
        for event in events
    }
    engine = create_engine_for(sql_url)
    try:
        with SqlAlchemyStreamUnitOfWork(engine) as uow:
            uow.outcomes.add_events(events)
            uow.commit()
        got = {(r.meter_id, r.timestamp): r.extra for r in SqlAlchemyOutcomeQueries(engine).readings(ExportFilter())}
        assert got == expected
    finally:
        engine.dispose()


def test_stream_summary_counts_what_was_written(sql_url: str) -> None:
    engine = create_engine_for(sql_url)
    try:
        with SqlAlchemyStreamUnitOfWork(engine) as uow:
            uow.outcomes.add_events(MIXED_BATCH)
            uow.state.save("main", 0, T0, 12, {"M2": [1]})
            uow.commit()
        summary = SqlAlchemyOutcomeQueries(engine).stream_summary()
        assert summary["tables"]["readings"] == 3 * len(METERS) + 2
        assert summary["readings_by_status"] == {"LATE": 1, "ON_TIME": 3 * len(METERS) + 1}
        assert summary["rejected_by_reason"]["invalid_timestamp"] == 2
        assert summary["open_gaps"] == 1
        assert summary["partitions"] == [{"stream": "main", "partition": 0, "max_event_time": T0, "next_offset": 12}]
    finally:
        engine.dispose()


def test_a_stream_summary_counts_one_moment_of_the_store(sql_url: str) -> None:
    """A batch committed while the summary runs (here: right after its first statement) is in
    none of its counts or in all of them: the readings by status add up to the readings."""
    engine, writer = create_engine_for(sql_url), create_engine_for(sql_url)
    late_batch = [reading("LATE-1", T0, 1.0), reading("LATE-2", T0, 2.0, "LATE")]

    committed: list[bool] = []

    def commit_a_batch_once(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if committed or "count(" not in statement:  # after the summary's first count
            return
        committed.append(True)
        with SqlAlchemyStreamUnitOfWork(writer) as uow:
            uow.outcomes.add_events(late_batch)
            uow.commit()

    try:
        with SqlAlchemyStreamUnitOfWork(engine) as uow:
            uow.outcomes.add_events(MIXED_BATCH)
            uow.commit()
        sa.event.listen(engine, "after_cursor_execute", commit_a_batch_once)
        summary = SqlAlchemyOutcomeQueries(engine).stream_summary()
        assert committed
        assert summary["tables"]["readings"] == sum(summary["readings_by_status"].values()) == 3 * len(METERS) + 2
        assert SqlAlchemyOutcomeQueries(engine).stream_summary()["tables"]["readings"] == 3 * len(METERS) + 4
    finally:
        engine.dispose()
        writer.dispose()


def test_an_unreachable_server_is_a_transient_error() -> None:
    engine = create_engine_for("postgresql+psycopg://nobody:secret@127.0.0.1:9/none?connect_timeout=2")
    try:
        with pytest.raises(TransientStoreError), SqlAlchemyStreamUnitOfWork(engine):
            pass
        with pytest.raises(TransientStoreError):
            list(SqlAlchemyOutcomeQueries(engine).readings(ExportFilter()))
    finally:
        engine.dispose()


@pytest.mark.parametrize("bulk", [False, True], ids=["small", "bulk"])
def test_a_connection_killed_mid_transaction_is_transient_and_the_retry_succeeds(
    migrated_postgres_url: str, bulk: bool
) -> None:
    empty_stream_tables(migrated_postgres_url)
    engine = create_engine_for(migrated_postgres_url)
    admin = create_engine_for(migrated_postgres_url)
    events = [reading("M1", T0 + i * HALF_HOUR) for i in range(200 if bulk else 2)]
    try:
        with pytest.raises(TransientStoreError), SqlAlchemyStreamUnitOfWork(engine) as uow:
            pid = uow.connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            with admin.begin() as connection:  # what a server restart does to every session
                connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            uow.outcomes.add_events(events)
            uow.commit()
        with SqlAlchemyStreamUnitOfWork(engine) as uow:  # the pool hands out a live connection
            uow.outcomes.add_events(events)
            uow.commit()
        assert len(list(SqlAlchemyOutcomeQueries(engine).readings(ExportFilter()))) == len(events)
    finally:
        engine.dispose()
        admin.dispose()


def test_a_bulk_batch_that_partly_overlaps_what_is_stored_adds_only_the_new_rows(store: Store) -> None:
    rows: list[Any] = [reading(f"M{i % 7}", T0 + i * US, i / 8) for i in range(300)]
    rows += [ReadingRejected(f"M{i % 7}", f"t{i}", i, "invalid_timestamp", 0, None, i) for i in range(200)]
    earlier = rows[100:150] + rows[400:420]
    changed = [r._replace(consumption_kwh=99.0) if isinstance(r, ReadingAccepted) else r for r in earlier]
    write(store, changed)
    write(store, rows)
    got = everything(store)
    assert got == expected_after(changed, rows)
    assert len(got["readings"]) == 300 and len(got["rejected"]) == 200
    assert sum(r.consumption_kwh == 99.0 for r in got["readings"]) == 50  # the first write won


def test_a_bulk_set_of_windows_partly_stored_already_takes_the_new_values(store: Store) -> None:
    """Closed windows are tried straight into the table on PostgreSQL; a set in which some are
    stored already (a LATE reading re-emitted them) must still upsert every one."""
    stored = [WindowUpdated(f"M{i:03d}", HOUR, T0, 1, 0.25, 0.25, 0.25) for i in range(0, 200, 5)]
    batch = [WindowUpdated(f"M{i:03d}", HOUR, T0, 2, 0.5, 0.1, 0.4) for i in range(200)]
    write(store, stored)
    write(store, batch)
    got = everything(store)
    assert got == expected_after(stored, batch)
    assert len(got["aggregates"]) == 200 and all(row.count == 2 for row in got["aggregates"])


def test_the_sink_commits_without_waiting_for_the_disk_and_the_stream_writers_wait(migrated_postgres_url: str) -> None:
    """The Kafka sink's commits may skip the WAL flush (its input stays in Kafka and its offsets
    commit with its rows); replay and API ingest, whose input is gone once committed, may not."""
    from metrify.adapters.sqlalchemy.sink_offsets import SqlAlchemySinkUnitOfWork

    empty_stream_tables(migrated_postgres_url)
    # sessions start with it on, whatever the test server's own setting (services.sh: off)
    engine = create_engine_for(migrated_postgres_url, connect_args={"options": "-c synchronous_commit=on"})
    show = "SHOW synchronous_commit"
    try:
        with SqlAlchemySinkUnitOfWork(engine) as sink:
            assert sink.connection.exec_driver_sql(show).scalar_one() == "off"
            sink.outcomes.add_events([reading("M1", T0)])
            sink.offsets.advance("sink", {("readings", 0): (None, 1)})
            sink.commit()
        with SqlAlchemyStreamUnitOfWork(engine) as uow:
            assert uow.connection.exec_driver_sql(show).scalar_one() == "on"
        with engine.connect() as connection:  # SET LOCAL: the pooled session keeps the server's setting
            assert connection.exec_driver_sql(show).scalar_one() == "on"
        with SqlAlchemySinkUnitOfWork(engine) as sink:
            assert sink.offsets.load("sink", [("readings", 0)]) == {("readings", 0): 1}
        assert len(list(SqlAlchemyOutcomeQueries(engine).readings(ExportFilter()))) == 1
    finally:
        engine.dispose()


def test_sink_offsets_move_only_from_the_offsets_the_sink_expects(sql_url: str) -> None:
    from metrify.adapters.sqlalchemy.sink_offsets import SqlAlchemySinkUnitOfWork
    from metrify.application.kafka_stream import StaleSinkOffsets

    consumer, source = f"sink-{uuid.uuid4().hex[:8]}", ("readings", 0)
    engine = create_engine_for(sql_url)
    try:
        with SqlAlchemySinkUnitOfWork(engine) as sink:
            sink.offsets.advance(consumer, {source: (None, 5)})
            sink.commit()
        for stale in (None, 3):  # as if another sink had moved them, or first stored them, meanwhile
            with SqlAlchemySinkUnitOfWork(engine) as sink, pytest.raises(StaleSinkOffsets):
                sink.offsets.advance(consumer, {source: (stale, 9)})
        with SqlAlchemySinkUnitOfWork(engine) as sink:
            assert sink.offsets.load(consumer, [source]) == {source: 5}
            sink.offsets.advance(consumer, {source: (5, 9)})
            sink.commit()
        with SqlAlchemySinkUnitOfWork(engine) as sink:
            assert sink.offsets.load(consumer, [source]) == {source: 9}
    finally:
        engine.dispose()


def test_of_two_sinks_storing_a_partitions_first_offsets_at_once_the_later_is_refused(
    migrated_postgres_url: str,
) -> None:
    """No row to lock yet: both find none, as they expect. The later insert meets the earlier on
    the key and must be refused, not write its offsets over the other's."""
    from metrify.adapters.sqlalchemy.sink_offsets import SqlAlchemySinkUnitOfWork
    from metrify.application.kafka_stream import StaleSinkOffsets

    consumer, source = f"sink-{uuid.uuid4().hex[:8]}", ("readings", 3)
    engine = create_engine_for(migrated_postgres_url)
    outcome: list[BaseException | None] = []

    def second_sink() -> None:
        try:
            with SqlAlchemySinkUnitOfWork(engine) as sink:
                sink.offsets.advance(consumer, {source: (None, 7)})  # waits for the first one's key
                sink.commit()
            outcome.append(None)
        except BaseException as error:  # handed to the test's thread
            outcome.append(error)

    try:
        with SqlAlchemySinkUnitOfWork(engine) as first:
            first.offsets.advance(consumer, {source: (None, 5)})
            later = threading.Thread(target=second_sink)
            later.start()
            time.sleep(0.5)  # the second sink is now waiting on the key the first inserted
            first.commit()
        later.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], StaleSinkOffsets), outcome
        with SqlAlchemySinkUnitOfWork(engine) as sink:
            assert sink.offsets.load(consumer, [source]) == {source: 5}
    finally:
        engine.dispose()


def test_rejected_raw_values_of_every_json_kind_export_as_json_in_both_formats(store: Store) -> None:
    import io

    from metrify.adapters.files.writers import write_export

    raw = [("J1", 10**23, True), ("J2", {"a": [1, None]}, float("nan")), ("J3", "\ud800", "0.5")]
    raw.append(("J4", [LongInteger("7" * 5000)], LongInteger("-" + "9" * 4500)))  # beyond what int() converts
    write(store, [ReadingRejected(m, t, k, "invalid_timestamp", 0, None, i) for i, (m, t, k) in enumerate(raw)])
    jsonl, table = io.StringIO(), io.StringIO()
    write_export(store.queries, "rejected", ExportFilter(), "jsonl", jsonl)
    write_export(store.queries, "rejected", ExportFilter(), "csv", table)
    assert (
        jsonl.getvalue().splitlines()
        == [  # integers beyond 64 bits and lone surrogates, exactly
            '{"meter_id":"J1","timestamp":100000000000000000000000,"consumption_kwh":true,'
            '"reason":"invalid_timestamp","partition":0}',
            '{"meter_id":"J2","timestamp":{"a":[1,null]},"consumption_kwh":null,"reason":"invalid_timestamp","partition":0}',
            '{"meter_id":"J3","timestamp":"\\ud800","consumption_kwh":"0.5","reason":"invalid_timestamp","partition":0}',
            '{"meter_id":"J4","timestamp":[' + "7" * 5000 + '],"consumption_kwh":-' + "9" * 4500 + ","
            '"reason":"invalid_timestamp","partition":0}',
        ]
    )
    assert table.getvalue().splitlines()[1:3] == [  # JSON's spelling, not Python's
        "J1,100000000000000000000000,true,invalid_timestamp,0",
        'J2,"{""a"":[1,null]}",nan,invalid_timestamp,0',
    ]
    assert table.getvalue().splitlines()[4] == "J4,[" + "7" * 5000 + "],-" + "9" * 4500 + ",invalid_timestamp,0"
