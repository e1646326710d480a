"""Closed windows held back and stored over later batches (StreamPipeline's `window_writes`):
the store ends as if each had been stored with the batch that closed it, through crashes too."""

from __future__ import annotations

import time

import pytest
from tests.support.core_runner import FixedClock

from metrify.adapters.memory.stream_store import InMemoryStreamStore, InMemoryStreamUnitOfWork
from metrify.application.network import NetworkProfile, through_network
from metrify.application.serial import QuietWindowWriter, SerialPipeline
from metrify.application.simulator import FleetProfile, fleet_rows
from metrify.application.stream import StreamPipeline
from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig

NOW = 2_000_000_000 * 1_000_000
BATCH = 40


def rows() -> list[RawReading]:
    """A fleet's readings, some late (they change windows already closed and re-emit them)."""
    fleet = [RawReading(*row) for row in fleet_rows(FleetProfile(meters=12, days=3, seed=5))]
    return list(through_network(fleet, NetworkProfile(delay_prob=0.2, max_delay=3000, seed=6)))


def pipeline_on(store: InMemoryStreamStore, window_writes: int | None) -> StreamPipeline:
    pipeline = StreamPipeline(
        StreamConfig(), 2, lambda: InMemoryStreamUnitOfWork(store), FixedClock(NOW), window_writes=window_writes
    )
    pipeline.load()
    return pipeline


def stored_with_their_batches(data: list[RawReading]) -> InMemoryStreamStore:
    store = InMemoryStreamStore()
    pipeline = pipeline_on(store, None)
    for start in range(0, len(data), BATCH):
        pipeline.process(data[start : start + BATCH])
    return store


def outcome(store: InMemoryStreamStore) -> tuple:
    return store.readings, store.rejected, store.too_late, store.gaps, store.windows


def test_windows_held_back_end_stored_as_if_stored_with_their_batch() -> None:
    data = rows()
    expected = stored_with_their_batches(data)
    store = InMemoryStreamStore()
    pipeline = pipeline_on(store, 3)
    most_held = 0
    for start in range(0, len(data), BATCH):
        pipeline.process(data[start : start + BATCH])
        most_held = max(most_held, pipeline.held_windows)
        assert pipeline.held_windows == sum(len(windows) for queue in pipeline.held for _, windows in queue)
    assert most_held > 3, "some windows must have waited"
    assert store.windows != expected.windows
    pipeline.write_held_windows()
    assert pipeline.held_windows == 0
    assert outcome(store) == outcome(expected)


@pytest.mark.parametrize("then_holding", [True, False], ids=["the API again", "a replay"])
def test_a_writer_that_stops_with_windows_held_loses_none(then_holding: bool) -> None:
    """Stopped without storing what it held (a crash), at several points: the next process to
    load the stream stores every closed window the meters' states hold."""
    data = rows()
    expected = stored_with_their_batches(data)
    batches = [data[start : start + BATCH] for start in range(0, len(data), BATCH)]
    for stop_after in (5, len(batches) // 2, len(batches) - 3):
        store = InMemoryStreamStore()
        first = pipeline_on(store, 2)
        for batch in batches[:stop_after]:
            first.process(batch)
        assert first.held_windows > 0
        second = pipeline_on(store, 2 if then_holding else None)
        for batch in batches[stop_after:]:
            second.process(batch)
        second.write_held_windows()
        assert outcome(store) == outcome(expected), f"stopped after batch {stop_after}"


def test_a_quiet_stream_gets_its_held_windows_stored_and_stop_stores_the_rest() -> None:
    data = rows()
    expected = stored_with_their_batches(data)
    store = InMemoryStreamStore()
    serial = SerialPipeline(
        lambda: StreamPipeline(
            StreamConfig(), 2, lambda: InMemoryStreamUnitOfWork(store), FixedClock(NOW), window_writes=1
        )
    )
    for start in range(0, len(data), BATCH):
        serial.submit(data[start : start + BATCH])
    assert serial.held_windows > 0
    writer = QuietWindowWriter(serial, limit=5, quiet=0.01).start()
    deadline = time.monotonic() + 10
    while serial.held_windows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert serial.held_windows == 0, "a quiet stream's windows must not wait for the next batch"
    assert writer.stop() == 0
    assert outcome(store) == outcome(expected)

    serial.submit(data[:BATCH])  # duplicates and too-late readings now: nothing new is held
    later = QuietWindowWriter(serial, limit=5, quiet=60).start()
    assert later.stop() == serial.held_windows == 0
