"""Replays over the in-memory store: resumable, deterministic network, a running tally."""

from __future__ import annotations

from collections.abc import Iterator

from tests.support.core_runner import FixedClock

from metrify.adapters.memory.stream_store import InMemoryStreamStore, InMemoryStreamUnitOfWork
from metrify.application.network import NetworkProfile, through_network
from metrify.application.replay import ReplayOptions, Tally, run_replay
from metrify.application.simulator import FleetProfile, fleet_rows
from metrify.application.stream import StreamPipeline
from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig

NOW = 2_000_000_000 * 1_000_000


class ListSource:
    def __init__(self, rows: list[RawReading], fingerprint: str = "f1") -> None:
        self.rows = rows
        self.fingerprint = fingerprint

    def __iter__(self) -> Iterator[RawReading]:
        return iter(self.rows)


class Crash(Exception):
    pass


def fleet(meters: int = 10, days: int = 2) -> list[RawReading]:
    return [RawReading(*row) for row in fleet_rows(FleetProfile(meters=meters, days=days, seed=3))]


def pipeline_on(store: InMemoryStreamStore, partitions: int = 1) -> StreamPipeline:
    return StreamPipeline(StreamConfig(), partitions, lambda: InMemoryStreamUnitOfWork(store), FixedClock(NOW))


def test_a_replay_that_died_resumes_after_its_last_commit_with_the_same_outcome() -> None:
    rows = fleet()
    whole = InMemoryStreamStore()
    run_replay(ListSource(rows), pipeline_on(whole), ReplayOptions(batch_size=100))

    broken = InMemoryStreamStore()
    calls = {"n": 0}

    def dying_batch(_tally) -> None:
        calls["n"] += 1
        if calls["n"] == 7:
            raise Crash

    try:
        run_replay(ListSource(rows), pipeline_on(broken), ReplayOptions(batch_size=100), on_batch=dying_batch)
    except Crash:
        pass
    report = run_replay(ListSource(rows), pipeline_on(broken), ReplayOptions(batch_size=100))
    assert report.skipped_rows == 700
    assert broken.readings == whole.readings
    assert broken.gaps == whole.gaps
    assert broken.windows == whole.windows
    assert broken.rejected == whole.rejected


def test_a_finished_source_is_not_replayed_twice() -> None:
    store = InMemoryStreamStore()
    rows = fleet(3, 1)
    run_replay(ListSource(rows), pipeline_on(store), ReplayOptions())
    again = run_replay(ListSource(rows), pipeline_on(store), ReplayOptions())
    assert again.already_done and again.skipped_rows == len(rows)


def test_the_tally_counts_what_the_store_holds() -> None:
    store = InMemoryStreamStore()
    report = run_replay(ListSource(fleet()), pipeline_on(store, partitions=2), ReplayOptions(partitions=2))
    tally = report.tally
    assert sum(tally.accepted.values()) == len(store.readings)
    assert sum(tally.rejected.values()) == len(store.rejected)
    assert tally.too_late == len(store.too_late)
    assert len(tally.gaps) == len(store.gaps)
    assert tally.windows_emitted == len(store.windows)


def test_the_tally_forgets_settled_windows_and_still_counts_each_once() -> None:
    """Windows no reading can reach any more are counted, not kept: bounded memory on a replay
    of any length, the same count. Late rows re-emit windows, which must not count twice."""
    store = InMemoryStreamStore()
    pipeline = pipeline_on(store, partitions=2)
    pipeline.load()
    rows = list(through_network(fleet(6, 3), NetworkProfile(delay_prob=0.3, max_delay=3000, seed=4)))
    tally = Tally()
    peak = 0
    for start in range(0, len(rows), 20):
        tally.add(pipeline.process(rows[start : start + 20]))
        peak = max(peak, tally.windows_held)
        tally.settle(pipeline.late_horizon())
    assert tally.windows_emitted == len(store.windows)
    assert tally.windows_settled > 0 and peak < len(store.windows) // 2


def test_the_simulated_network_is_deterministic_for_a_seed_and_loses_what_it_drops() -> None:
    rows = fleet(5, 1)
    profile = NetworkProfile(delay_prob=0.1, max_delay=300, drop_prob=0.05, seed=9)
    first, second = list(through_network(rows, profile)), list(through_network(rows, profile))
    assert first == second
    assert 0.9 * len(rows) < len(first) < len(rows)
    assert first != [r for r in rows if r in first], "some rows should arrive out of their file order"
    other = list(through_network(rows, NetworkProfile(delay_prob=0.1, max_delay=300, drop_prob=0.05, seed=10)))
    assert other != first
