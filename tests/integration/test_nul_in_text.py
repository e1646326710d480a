"""A NUL (U+0000) in a meter id or a region. The stream contract accepts such a reading as one of
its own meter (DESIGN §3: an id is any text not blank once trimmed), and SQLite stores the text
exactly. PostgreSQL's text cannot hold NUL at all: there each NUL is stored as U+FFFD, and an id
looked up is spelled so too. Before, a batch holding one such reading failed as a whole there: an
API batch was a 500, and the sink stopped on it, for good, as often as it was started again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import empty_stream_tables, store_events
from tests.integration.test_api_http_ingest import URL, empty_api_tables
from tests.support.api import api_settings, database_container, running_api
from tests.support.core_runner import FixedClock, run_core

from metrify.adapters.sqlalchemy import SqlAlchemyOutcomeQueries, SqlAlchemyStreamUnitOfWork, create_engine_for
from metrify.adapters.sqlalchemy.api_queries import SqlAlchemyFleetQueries
from metrify.adapters.sqlalchemy.meters import SqlAlchemyMeterRegistry
from metrify.adapters.sqlalchemy.sink_offsets import SqlAlchemySinkUnitOfWork
from metrify.application.exports import EXPORT_KINDS, export_rows
from metrify.application.kafka_stream import FeedBatch, FeedMessage, OutcomeSink
from metrify.application.ports import ExportFilter
from metrify.application.queries import TimeRange
from metrify.application.stream import StreamPipeline
from metrify.domain.readings import RawReading
from metrify.domain.stream.config import US, StreamConfig
from metrify.domain.stream.events import (
    GapOpened,
    ReadingAccepted,
    ReadingRejected,
    ReadingTooLate,
    WindowUpdated,
)
from metrify.domain.users import Role, Scope

pytestmark = pytest.mark.integration

T0 = 1_709_589_600 * US  # 2024-03-04T22:00:00Z
HALF_HOUR = 1800 * US
HOUR = 3600 * US
METER, REGION = "A\x00B", "n\x00rth"


def stored(text: str, url: str) -> str:
    """The text as the database at `url` holds it."""
    return text.replace("\x00", "\ufffd") if url.startswith("postgres") else text


@pytest.fixture
def engine(store_url: str) -> Iterator[Any]:
    engine = create_engine_for(store_url)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("readings", [1, 100], ids=["small", "bulk"])  # executemany, COPY
def test_every_outcome_of_a_meter_whose_id_holds_nul_is_stored_and_found_by_its_id(
    store_url: str, engine: Any, readings: int
) -> None:
    events: list[Any] = [
        ReadingAccepted(METER, T0 + i * HALF_HOUR, T0 + i * HALF_HOUR, 0.5, "ON_TIME", 0, {"region": REGION})
        for i in range(readings)
    ]
    events += [
        ReadingRejected(METER, "bad\x00", "0.5", "invalid_timestamp", 0, None, 1),
        ReadingTooLate(METER, T0 - 5 * HOUR, 0.25, 4 * HOUR, 0, 2),
        GapOpened(METER, T0 - 4 * HALF_HOUR, T0, 4),
        WindowUpdated(METER, HOUR, T0, 2, 1.0, 0.5, 0.5),
    ]
    store_events(engine, events)
    store_events(engine, events)  # written twice, nothing changes
    meter, region = stored(METER, store_url), stored(REGION, store_url)
    queries = SqlAlchemyOutcomeQueries(engine)
    for where in (ExportFilter(), ExportFilter(meter_id=METER)):
        got = {kind: list(export_rows(queries, kind, where)) for kind in EXPORT_KINDS}
        assert {kind: len(rows) for kind, rows in got.items()} == {
            "readings": readings,
            "rejected": 1,
            "late": 1,
            "gaps": 1,
            "aggregates": 1,
        }
        assert {row["meter_id"] for rows in got.values() for row in rows} == {meter}
        assert got["rejected"][0]["timestamp"] == "bad\x00"  # raw values are JSON text: kept exactly
    assert [r.extra for r in queries.readings(ExportFilter())] == [{"region": region}] * readings
    fleet = SqlAlchemyFleetQueries(engine)  # the API's queries, looked up by the id as sent
    assert len(fleet.readings(METER, TimeRange(None, None), None, 1000)) == readings
    assert len(fleet.aggregates(METER, HOUR, TimeRange(None, None), None, 10)) == 1


def test_ids_that_differ_only_by_nul_and_its_replacement_share_their_rows_on_postgresql(
    store_url: str, engine: Any
) -> None:
    """A NUL stored as U+FFFD: two such ids are one key there. A batch holding both must still go
    in, the later value of a window or gap winning as within one id (70 windows: the bulk path)."""
    twin = METER.replace("\x00", "\ufffd")
    events: list[Any] = []
    for meter in (METER, twin):
        events += [WindowUpdated(meter, HOUR, T0 + i * HOUR, 1, 0.5, 0.5, 0.5) for i in range(70)]
        events += [GapOpened(meter, T0, None, len(meter)), ReadingAccepted(meter, T0, T0, 0.5, "ON_TIME", 0, None)]
    events += [WindowUpdated(twin, HOUR, T0, 2, 2.0, 0.5, 1.5), GapOpened(twin, T0, None, 9)]
    store_events(engine, events)
    queries = SqlAlchemyOutcomeQueries(engine)
    windows, gaps = list(queries.aggregates(ExportFilter())), list(queries.gaps(ExportFilter()))
    ids = 1 if store_url.startswith("postgres") else 2
    assert (len(windows), len(gaps), len(list(queries.readings(ExportFilter())))) == (70 * ids, ids, ids)
    assert (windows[-70].count, gaps[-1].missing_intervals) == (2, 9)  # the twin's last values


def test_a_meter_state_whose_id_holds_nul_loads_back_under_that_very_id(store_url: str, engine: Any) -> None:
    """The state is the stream's own: its ids come back exactly, however the outcomes spell them."""
    meters = {METER: [1, 2], METER.replace("\x00", "\ufffd"): [3], " lead": [4], '"A\\u0000B"': [5], "M1": [6]}
    with SqlAlchemyStreamUnitOfWork(engine) as uow:
        uow.state.save("main", 0, T0, 5, meters)
        uow.commit()
    with SqlAlchemyStreamUnitOfWork(engine) as uow:
        loaded = uow.state.load("main", 0)
    assert loaded is not None and dict(loaded.meters) == meters


def test_a_pipeline_restarted_from_the_store_goes_on_with_a_nul_meter_as_if_it_never_stopped(
    store_url: str, engine: Any
) -> None:
    config, now = StreamConfig(), T0 + 30 * HOUR
    slots = (0, 1, 2, 6, 7, 5)  # a gap of three slots, then a LATE reading heals one
    rows = [RawReading(f" {METER} ", (T0 + i * HALF_HOUR) // US, 0.5 + i, {"region": REGION}) for i in slots]
    expected = run_core(rows, config, now)

    def fresh() -> StreamPipeline:
        pipeline = StreamPipeline(config, 1, lambda: SqlAlchemyStreamUnitOfWork(engine), FixedClock(now))
        pipeline.load()
        return pipeline

    for start in range(0, len(rows), 2):  # a restart after every batch
        fresh().process(rows[start : start + 2])
    queries = SqlAlchemyOutcomeQueries(engine)
    got = {kind: list(export_rows(queries, kind, ExportFilter())) for kind in EXPORT_KINDS}
    assert got == {
        kind: [{**row, "meter_id": stored(row["meter_id"], store_url)} for row in expected[kind]]
        for kind in EXPORT_KINDS
    }
    assert [g["missing_intervals"] for g in got["gaps"]] == [2]  # the state was there to heal it


def test_the_registry_answers_for_ids_holding_nul_as_they_were_asked(store_url: str, engine: Any) -> None:
    empty_api_tables(store_url)
    registry = SqlAlchemyMeterRegistry(engine)
    registry.register_missing({METER: REGION, "M1": None}, T0)
    assert registry.regions_of([METER, "M1", "M2"]) == {METER: stored(REGION, store_url), "M1": None}
    store_events(engine, [ReadingAccepted("B\x00", T0, T0, 0.5, "ON_TIME", 0, {"region": REGION})])
    assert registry.history_regions(["B\x00", "B"]) == {"B\x00": stored(REGION, store_url)}
    meter = registry.get(METER)
    assert meter is not None and (meter.meter_id, meter.region) == (stored(METER, store_url), stored(REGION, store_url))
    assert [m.meter_id for m in registry.list(Scope(everything=True), REGION, None, 10)] == [stored(METER, store_url)]


# ------------------------------------------------------------------------------ the processes


class Feed:
    """Output messages of one partition, then nothing: what the sink polls from Kafka."""

    def __init__(self, messages: list[list[Any]]) -> None:
        self.source = ("readings", 0)
        self.batches = [FeedBatch([FeedMessage(self.source, i, events)], {}) for i, events in enumerate(messages)]

    def start(self, listener: Any) -> None:
        listener.sources_assigned([self.source])

    def poll(self, max_messages: int, timeout: float) -> FeedBatch:
        return self.batches.pop(0) if self.batches else FeedBatch([], {})

    def rewind(self, source: Any, offset: int | None) -> None:
        pass

    def acknowledge(self, offsets: Mapping[Any, int]) -> None:
        pass

    def lag(self) -> dict[Any, int]:
        return {}

    def close(self) -> None:
        pass


def test_the_sink_stores_a_nul_meters_outputs_and_everything_after_them(migrated_postgres_url: str) -> None:
    """`metrify sink` (write-behind): the poison batch stopped it, and a restart stopped again on
    the same batch, so nothing after it was ever stored."""
    empty_stream_tables(migrated_postgres_url)
    engine = create_engine_for(migrated_postgres_url)
    before = [ReadingAccepted("M1", T0, T0, 0.5, "ON_TIME", 0, None)]
    poison = [ReadingAccepted(METER, T0 + i * US, T0, 0.5, "ON_TIME", 0, {"region": REGION}) for i in range(200)]
    after = [ReadingAccepted("M2", T0, T0, 0.5, "ON_TIME", 0, None)]
    consumer = f"sink-{uuid.uuid4().hex[:8]}"
    try:
        feed = Feed([before, poison, after])
        sink = OutcomeSink(feed, lambda: SqlAlchemySinkUnitOfWork(engine), consumer, write_behind=True)
        sink.run(stop_when_idle=0.2)
        meters = [r.meter_id for r in SqlAlchemyOutcomeQueries(engine).readings(ExportFilter())]
        assert meters == ["A\ufffdB"] * 200 + ["M1", "M2"]
        with SqlAlchemySinkUnitOfWork(engine) as uow:
            assert uow.offsets.load(consumer, [feed.source]) == {feed.source: 3}
    finally:
        engine.dispose()


def test_an_api_batch_with_a_nul_meter_and_region_is_stored_on_postgresql(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    empty_stream_tables(migrated_postgres_url)
    empty_api_tables(migrated_postgres_url)
    settings = api_settings(tmp_path, database_url=migrated_postgres_url)
    container = database_container(settings)
    readings = [
        {"meter_id": METER, "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1, "region": REGION},
        {"meter_id": "M1", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1, "region": "north"},
    ]
    try:
        with running_api(container, settings) as api:
            response = api.client.post(URL, json={"readings": readings}, headers={"X-API-Key": api.ingest_key()})
            assert response.status_code == 202, response.text
            assert response.json()["accepted"] == 2
            admin = api.headers(Role.ADMIN)
            listed = api.client.get("/api/v1/meters", headers=admin).json()["items"]
            assert [(m["meter_id"], m["region"]) for m in listed] == [("A\ufffdB", "n\ufffdrth"), ("M1", "north")]
            found = api.client.get("/api/v1/meters/A%EF%BF%BDB/readings", headers=admin)
            assert [r["consumption_kwh"] for r in found.json()["items"]] == [1.0]
    finally:
        container.shutdown_resources()
