"""The Kafka worker and sink use cases (application/kafka_stream.py) against in-memory fakes of
their ports: the edge cases the process-level tests reach only by chance. No services needed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import pytest

from metrify.application.kafka_stream import (
    FeedBatch,
    FeedMessage,
    Malformed,
    NullSinkMetrics,
    OutcomeSink,
    PolledPartition,
    StaleSinkOffsets,
    StreamWorker,
    TransactionAborted,
)
from metrify.application.ports import PartitionState, TransientStoreError
from metrify.application.stream import Backoff, PartitionCountMismatch, StopRequested
from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig
from metrify.domain.stream.core import PartitionStream
from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, WindowUpdated
from metrify.domain.stream.partitioner import partition_of

NOW = 1_800_000_000_000_000


class Clock:
    def now_us(self) -> int:
        return NOW


def reading(meter: str, hour: int, offset: int) -> RawReading:
    return RawReading(meter, f"2024-03-04T{hour:02d}:00:00Z", "0.5", None, offset)


class FakeLog:
    """A log with a changelog that only committed transactions reach."""

    def __init__(self) -> None:
        self.batches: list[dict[int, PolledPartition]] = []
        self.changelog: dict[int, PartitionState] = {}
        self.outputs: list[Any] = []
        self.staged: list[tuple[int, list[Any], PartitionState]] = []
        self.fail_next_commit = False
        self.rewinds: list[tuple[int, int]] = []
        self.listener: Any = None
        self.count: int | None = None  # the input's partition count, as partition_count tells it

    def start(self, listener: Any) -> None:
        self.listener = listener

    def poll(self, max_records: int, timeout: float) -> dict[int, PolledPartition]:
        return self.batches.pop(0) if self.batches else {}

    def restore(self, partition: int) -> PartitionState:
        return self.changelog.get(partition, PartitionState(partition, None, 0, {}))

    def begin(self) -> None:
        self.staged = []

    def write(self, partition: int, events: list[Any], state: PartitionState, inputs: int) -> None:
        self.staged.append((partition, events, state))

    def commit(self, offsets: Mapping[int, int]) -> None:
        if self.fail_next_commit:
            self.fail_next_commit = False
            raise TransactionAborted("injected")
        for partition, events, state in self.staged:
            self.outputs.extend(events)
            saved = self.changelog.get(partition, PartitionState(partition, None, 0, {}))
            self.changelog[partition] = PartitionState(
                partition, state.max_event_time, state.next_offset, {**saved.meters, **state.meters}
            )

    def rewind(self, partition: int, offset: int) -> None:
        self.rewinds.append((partition, offset))

    def lag(self) -> dict[int, int]:
        return {}

    def partition_count(self) -> int | None:
        return self.count

    def close(self) -> None:
        pass


def worker_with(log: FakeLog, partitions: list[int]) -> StreamWorker:
    worker = StreamWorker(StreamConfig(), log, Clock())
    log.start(worker)
    assert worker.partitions_assigned(partitions) == {p: log.restore(p).next_offset for p in partitions}
    return worker


def test_a_batch_commits_outputs_state_and_offsets_together() -> None:
    log = FakeLog()
    worker = worker_with(log, [0])
    log.batches.append({0: PolledPartition([reading("M", 10, 0), reading("M", 11, 1)], [], 2)})
    assert worker.run_once() == 2
    assert [type(e) for e in log.outputs].count(ReadingAccepted) == 2
    assert log.changelog[0].next_offset == 2 and "M" in log.changelog[0].meters
    assert worker.expected[0] == 2


def test_an_aborted_transaction_restores_the_partition_and_rewinds_the_input() -> None:
    log = FakeLog()
    worker = worker_with(log, [0])
    log.batches.append({0: PolledPartition([reading("M", 10, 0)], [], 1)})
    worker.run_once()
    log.fail_next_commit = True
    log.batches.append({0: PolledPartition([reading("M", 11, 1)], [], 2)})
    assert worker.run_once() == 0
    assert log.rewinds == [(0, 1)] and worker.expected[0] == 1
    # The core forgot the aborted reading: the same reading again is accepted, not a duplicate.
    log.batches.append({0: PolledPartition([reading("M", 11, 1)], [], 2)})
    worker.run_once()
    assert [e.status for e in log.outputs if type(e) is ReadingAccepted] == ["ON_TIME", "ON_TIME"]


def test_a_partition_beyond_the_count_the_state_is_cut_into_is_refused_before_anything_is_restored() -> None:
    log = FakeLog()
    log.count = 4  # partitions added to the input: the group hands out the new ones
    worker = StreamWorker(StreamConfig(), log, Clock(), partitions=2)
    log.start(worker)
    with pytest.raises(PartitionCountMismatch, match="now has 4 partitions but the stream state is cut into 2"):
        worker.partitions_assigned([1, 2])
    assert worker.cores == {}


def test_a_worker_stops_once_the_input_has_another_partition_count_than_its_state() -> None:
    log = FakeLog()
    log.count = 2
    worker = StreamWorker(StreamConfig(), log, Clock(), partitions=2, recount_every=0.0)
    log.start(worker)
    worker.partitions_assigned([0, 1])
    log.batches.append({0: PolledPartition([reading("M", 10, 0)], [], 1)})
    assert worker.run_once() == 1
    log.count = None  # the broker does not answer now: nothing to go by
    assert worker.run_once() == 0
    log.count = 3
    log.batches.append({0: PolledPartition([reading("M", 11, 1)], [], 2)})
    with pytest.raises(PartitionCountMismatch, match="now has 3 partitions but the stream state is cut into 2"):
        worker.run_once()
    assert log.changelog[0].next_offset == 1  # the batch polled meanwhile was not processed


def test_a_changelog_holding_meters_the_partition_count_routes_elsewhere_is_refused() -> None:
    log = FakeLog()
    meters = [f"M{i}" for i in range(20)]
    core = PartitionStream(StreamConfig(), 0)
    core.process([reading(meter, 10, offset) for offset, meter in enumerate(meters)], NOW)
    # the state of one partition that held every meter: a stream of 1 partition, now read with 4
    log.changelog[0] = PartitionState(0, core.max_event_time, 20, {m: core.snapshot_meter(m) for m in meters})
    worker = StreamWorker(StreamConfig(), log, Clock(), partitions=4)
    log.start(worker)
    with pytest.raises(PartitionCountMismatch, match="holds meters that 4 partitions route elsewhere"):
        worker.partitions_assigned([0])
    assert worker.cores == {}
    assert StreamWorker(StreamConfig(), log, Clock(), partitions=1).partitions_assigned([0]) == {0: 20}


def test_a_few_meters_a_producer_put_in_the_wrong_partition_do_not_block_it(caplog: pytest.LogCaptureFixture) -> None:
    """One reading placed by hand (another partitioner, an explicit partition) is processed where
    it came, as it always was: its meter's state in that changelog must not refuse the partition
    at every restore thereafter."""
    log = FakeLog()
    home = [m for m in (f"M{i}" for i in range(200)) if partition_of(m, 4) == 0][:20]
    stray = next(m for m in (f"S{i}" for i in range(200)) if partition_of(m, 4) != 0)
    meters = [*home, stray]
    core = PartitionStream(StreamConfig(), 0)
    core.process([reading(meter, 10, offset) for offset, meter in enumerate(meters)], NOW)
    log.changelog[0] = PartitionState(0, core.max_event_time, 21, {m: core.snapshot_meter(m) for m in meters})
    worker = StreamWorker(StreamConfig(), log, Clock(), partitions=4)
    log.start(worker)
    with caplog.at_level(logging.WARNING, logger="metrify.worker"):
        assert worker.partitions_assigned([0]) == {0: 21}
    assert f"holds 1 of its 21 meters that 4 partitions route elsewhere (e.g. {stray!r}" in caplog.text


def test_records_of_revoked_partitions_and_records_already_processed_are_skipped() -> None:
    log = FakeLog()
    worker = worker_with(log, [0, 1])
    log.batches.append({0: PolledPartition([reading("M", 10, 0), reading("M", 11, 1)], [], 2)})
    worker.run_once()
    worker.partitions_revoked([1])
    stale = PolledPartition([reading("M", 11, 1), reading("M", 12, 2)], [], 3)
    log.batches.append({0: stale, 1: PolledPartition([reading("N", 10, 0)], [], 1)})
    assert worker.run_once() == 1  # only offset 2 of partition 0
    assert not any(e.meter_id == "N" for e in log.outputs)
    assert worker.expected == {0: 3}


def test_poison_becomes_a_malformed_message_reject_and_moves_the_offset() -> None:
    log = FakeLog()
    worker = worker_with(log, [2])
    log.batches.append({2: PolledPartition([reading("M", 10, 0)], [Malformed("K", 1, "not JSON")], 2)})
    worker.run_once()
    rejects = [e for e in log.outputs if type(e) is ReadingRejected]
    assert [(r.meter_id, r.reason, r.partition, r.position) for r in rejects] == [("K", "malformed_message", 2, 1)]
    assert log.changelog[2].next_offset == 2


def test_restoring_from_the_changelog_gives_the_same_core_as_never_stopping() -> None:
    log = FakeLog()
    worker = worker_with(log, [0])
    rows = [reading(f"M{i % 3}", 8 + i // 3, i) for i in range(12)]
    log.batches.append({0: PolledPartition(rows[:6], [], 6)})
    worker.run_once()
    second = worker_with(log, [0])  # the partition moved to another worker
    log.batches.append({0: PolledPartition(rows[6:], [], 12)})
    second.run_once()
    reference = PartitionStream(StreamConfig(), 0)
    expected = reference.process(rows[:6], NOW) + reference.process(rows[6:], NOW)
    assert log.outputs == expected


class FakeFeed:
    def __init__(self) -> None:
        self.batches: list[FeedBatch] = []
        self.rewinds: list[tuple[Any, int | None]] = []
        self.acknowledged: list[Mapping[Any, int]] = []

    def start(self, listener: Any) -> None:
        pass

    def poll(self, max_messages: int, timeout: float) -> FeedBatch:
        return self.batches.pop(0) if self.batches else FeedBatch([], {})

    def rewind(self, source: Any, offset: int | None) -> None:
        self.rewinds.append((source, offset))

    def acknowledge(self, offsets: Mapping[Any, int]) -> None:
        self.acknowledged.append(dict(offsets))

    def lag(self) -> dict[Any, int]:
        return {}

    def close(self) -> None:
        pass


class Store:
    def __init__(self) -> None:
        self.offsets: dict[Any, int] = {}
        self.events: list[Any] = []
        self.log: list[tuple[str, int]] = []  # ("prepare" | "commit", transaction number)
        self.prepared = 0
        self.transient_failures = 0  # commits that fail as if the database went away
        self.enter_failures = 0  # units of work that cannot reach the database at all
        self.on_prepare: Callable[[int], None] | None = None
        self.before_commit: Callable[[int], None] | None = None


class FakeSinkUow:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.outcomes = self
        self.offsets = self
        self.staged: list[Any] = []
        self.moves: dict[Any, int] = {}

    def __enter__(self) -> FakeSinkUow:
        if self.store.enter_failures:
            self.store.enter_failures -= 1
            raise TransientStoreError("the database does not answer")
        self.number = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.staged, self.moves = [], {}

    def prepare(self) -> None:
        self.store.prepared += 1
        self.number = self.store.prepared
        self.store.log.append(("prepare", self.number))
        if self.store.on_prepare is not None:
            self.store.on_prepare(self.number)

    def add_events(self, events: list[Any]) -> None:
        self.staged.extend(events)

    def load(self, consumer: str, sources: Collection[Any]) -> dict[Any, int]:
        return {s: o for s, o in self.store.offsets.items() if s in sources}

    def advance(self, consumer: str, moves: Mapping[Any, tuple[int | None, int]]) -> None:
        for source, (expected, new) in moves.items():
            if self.store.offsets.get(source) != expected:
                raise StaleSinkOffsets(str(source))
            self.moves[source] = new

    def commit(self, on_sending: Callable[[], None] | None = None) -> None:
        if on_sending is not None:
            on_sending()
        if self.store.before_commit is not None:
            self.store.before_commit(self.number)
        if self.store.transient_failures:
            self.store.transient_failures -= 1
            raise TransientStoreError("the database went away")
        self.store.log.append(("commit", self.number))
        self.store.events.extend(self.staged)
        self.store.offsets.update(self.moves)


def sink_with(feed: FakeFeed, store: Store, sources: list[Any], metrics: Any = None, **options: Any) -> OutcomeSink:
    """A sink over the fake feed and store that retries at once, given `sources`."""
    sink = OutcomeSink(
        feed, lambda: FakeSinkUow(store), "sink", metrics, backoff=Backoff(sleep=lambda _: None), **options
    )
    sink.sources_assigned(sources)
    return sink


def test_the_sink_stores_rows_and_offsets_together_and_skips_what_it_has() -> None:
    feed, store = FakeFeed(), Store()
    a = ("readings", 0)
    sink = sink_with(feed, store, [a])
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"]), FeedMessage(a, 1, ["e1"])], {a: 3}))
    sink.run_once()
    assert store.events == ["e0", "e1"] and store.offsets == {a: 3}  # 3: past the commit marker
    feed.batches.append(FeedBatch([FeedMessage(a, 1, ["e1"]), FeedMessage(a, 3, ["e3"])], {}))
    sink.run_once()
    assert store.events == ["e0", "e1", "e3"] and store.offsets == {a: 4}
    assert feed.acknowledged == [{a: 3}, {a: 4}]


def test_a_sink_whose_offsets_moved_behind_its_back_writes_nothing_and_rereads() -> None:
    feed, store = FakeFeed(), Store()
    a = ("gaps", 1)
    sink = sink_with(feed, store, [a])
    store.offsets[a] = 7  # another sink took the partition over and wrote meanwhile
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["old"])], {}))
    assert sink.run_once() == 0
    assert store.events == [] and feed.rewinds == [(a, 7)] and sink.expected[a] == 7


@pytest.mark.parametrize("end", [0, 5])
def test_the_end_of_an_empty_partition_is_stored_only_when_it_moved(end: int) -> None:
    feed, store = FakeFeed(), Store()
    a = ("aggregates", 2)
    sink = sink_with(feed, store, [a])
    feed.batches.append(FeedBatch([], {a: end}))
    sink.run_once()
    assert store.offsets == ({a: 5} if end else {})


def window(meter: str, start: int) -> WindowUpdated:
    return WindowUpdated(meter, 900_000_000, start, 1, 0.5, 0.5, 0.5)


def test_the_sink_stores_readings_then_windows_each_with_their_own_offsets() -> None:
    feed, store = FakeFeed(), Store()
    a, w = ("readings", 0), ("aggregates", 0)
    sink = sink_with(feed, store, [a, w])
    feed.batches.append(FeedBatch([FeedMessage(w, 0, [window("M1", 0)]), FeedMessage(a, 0, ["e0"])], {}))
    feed.batches.append(FeedBatch([FeedMessage(w, 1, [window("M1", 900_000_000)]), FeedMessage(a, 1, ["e1"])], {}))
    sink.run(stop_when_idle=0.0)
    assert store.events[0] == "e0"  # the readings did not wait for the windows before them
    assert sorted(map(str, store.events)) == sorted(map(str, ["e0", "e1", window("M1", 0), window("M1", 900_000_000)]))
    assert store.offsets == {a: 2, w: 2} and sink.expected == {a: 2, w: 2}
    assert sink.totals.records == 4


def test_windows_whose_offsets_moved_behind_the_sinks_back_are_reread_and_the_readings_kept() -> None:
    feed, store = FakeFeed(), Store()
    a, w = ("readings", 0), ("aggregates", 1)
    sink = sink_with(feed, store, [a, w])
    store.offsets[w] = 7  # another sink took the windows partition over and wrote meanwhile
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"]), FeedMessage(w, 0, [window("M1", 0)])], {}))
    sink.run(stop_when_idle=0.0)
    assert store.events == ["e0"] and store.offsets == {a: 1, w: 7}
    assert (w, 7) in feed.rewinds and sink.expected[w] == 7


def sliced_sink(feed: FakeFeed, store: Store, sources: list[Any], metrics: Any = None, **options: Any) -> OutcomeSink:
    """A sink that stores one window message per round (no time budget at all)."""
    return sink_with(feed, store, sources, metrics, window_seconds=0.0, **options)


def test_waiting_windows_are_stored_a_slice_a_round_and_readings_polled_later_go_first() -> None:
    feed, store = FakeFeed(), Store()
    a, w = ("readings", 0), ("aggregates", 0)
    sink = sliced_sink(feed, store, [a, w])
    closing = [FeedMessage(w, offset, [window(f"M{offset}", 0)]) for offset in range(3)]
    feed.batches.append(FeedBatch([*closing, FeedMessage(a, 0, ["e0"])], {w: 4}))  # 4: past the marker
    feed.batches.append(FeedBatch([FeedMessage(a, 1, ["e1"])], {}))
    sink.run_once()
    assert store.events == ["e0", window("M0", 0)] and store.offsets == {a: 1, w: 1} and sink.backlog == 2
    sink.run_once()
    assert store.events[2:] == ["e1", window("M1", 0)]  # the later reading did not wait for M2
    assert store.offsets == {a: 2, w: 2}
    sink.run_once()
    assert store.events[4:] == [window("M2", 0)] and sink.backlog == 0
    assert store.offsets == {a: 2, w: 4}  # the end behind the backlog moves with its last slice
    assert sink.run_once() == 0


def test_a_crash_between_slices_rereads_only_the_windows_not_stored() -> None:
    feed, store = FakeFeed(), Store()
    w = ("aggregates", 3)
    sink = sliced_sink(feed, store, [w])
    feed.batches.append(FeedBatch([FeedMessage(w, offset, [window("M1", offset)]) for offset in range(3)], {}))
    sink.run_once()
    assert store.offsets == {w: 1}
    # the process dies here; a new sink reads from the offset the database holds
    feed2 = FakeFeed()
    again = sliced_sink(feed2, store, [w])
    assert again.expected == {w: 1}
    feed2.batches.append(FeedBatch([FeedMessage(w, offset, [window("M1", offset)]) for offset in (1, 2)], {}))
    again.run(stop_when_idle=0.0)
    assert store.events == [window("M1", 0), window("M1", 1), window("M1", 2)] and store.offsets == {w: 3}


def test_windows_of_revoked_partitions_stop_waiting_and_stale_offsets_clear_the_backlog() -> None:
    feed, store = FakeFeed(), Store()
    w0, w1 = ("aggregates", 0), ("aggregates", 1)
    sink = sliced_sink(feed, store, [w0, w1])
    both = [FeedMessage(source, offset, [window("M1", offset)]) for offset in range(2) for source in (w0, w1)]
    feed.batches.append(FeedBatch(both, {}))
    sink.run_once()
    assert sink.backlog == 3
    sink.sources_revoked([w1])
    assert sink.backlog == 1
    store.offsets[w0] = 9  # another sink wrote w0 meanwhile
    assert sink.run_once() == 0
    assert sink.backlog == 0 and (w0, 9) in feed.rewinds and sink.expected == {w0: 9}


def test_a_full_backlog_pauses_reading_until_the_database_catches_up() -> None:
    feed, store = FakeFeed(), Store()
    a, w = ("readings", 0), ("aggregates", 0)
    metrics = BacklogMetrics()
    sink = sliced_sink(feed, store, [a, w], max_backlog=2, metrics=metrics)
    feed.batches.append(FeedBatch([FeedMessage(w, offset, [window("M1", offset)]) for offset in range(4)], {}))
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"])], {}))
    sink.run_once()
    assert sink.backlog == 3 and metrics.reported == [3]
    sink.run_once()  # 3 waiting >= 2: no poll, one more slice
    assert len(feed.batches) == 1 and sink.backlog == 2
    sink.run_once()
    assert len(feed.batches) == 1 and sink.backlog == 1
    sink.run_once()  # below the bound again: the reading is read and stored first
    assert feed.batches == [] and store.events[-2:] == ["e0", window("M1", 3)]
    assert metrics.reported == [3, 2, 1, 0]


class BacklogMetrics(NullSinkMetrics):
    def __init__(self) -> None:
        self.reported: list[int] = []

    def backlog(self, records: int) -> None:
        self.reported.append(records)


def test_messages_delivered_again_while_their_windows_wait_are_skipped() -> None:
    feed, store = FakeFeed(), Store()
    w = ("aggregates", 0)
    sink = sliced_sink(feed, store, [w])
    closing = [FeedMessage(w, offset, [window("M1", offset)]) for offset in range(3)]
    feed.batches.append(FeedBatch(closing, {}))
    feed.batches.append(FeedBatch(closing[1:], {}))  # the feed hands w:1 and w:2 over again
    sink.run(stop_when_idle=0.0)
    assert store.events == [window("M1", 0), window("M1", 1), window("M1", 2)]  # once each, in order
    assert store.offsets == {w: 3}


def test_a_source_carrying_events_then_windows_stores_the_events_and_moves_past_them() -> None:
    feed, store = FakeFeed(), Store()
    w = ("aggregates", 0)
    sink = sliced_sink(feed, store, [w])
    feed.batches.append(FeedBatch([FeedMessage(w, 0, ["r0"]), FeedMessage(w, 1, [window("M1", 0)])], {}))
    sink.run_once()
    assert store.events == ["r0", window("M1", 0)] and store.offsets == {w: 2}


def test_an_end_reached_in_a_later_poll_moves_with_the_last_waiting_window() -> None:
    feed, store = FakeFeed(), Store()
    w = ("aggregates", 0)
    sink = sliced_sink(feed, store, [w])
    feed.batches.append(FeedBatch([FeedMessage(w, offset, [window("M1", offset)]) for offset in range(3)], {}))
    feed.batches.append(FeedBatch([], {w: 4}))  # the commit marker after w:2
    sink.run_once()
    assert store.offsets == {w: 1}
    sink.run_once()
    assert store.offsets == {w: 2}  # w:2 still waits: the end does not move yet
    sink.run_once()
    assert store.offsets == {w: 4} and sink.backlog == 0


def test_after_a_revocation_the_other_partitions_windows_go_on_and_the_revoked_end_is_dropped() -> None:
    feed, store = FakeFeed(), Store()
    w0, w1 = ("aggregates", 0), ("aggregates", 1)
    sink = sliced_sink(feed, store, [w0, w1])
    both = [FeedMessage(s, offset, [window(f"M{s[1]}", offset)]) for offset in range(2) for s in (w0, w1)]
    feed.batches.append(FeedBatch(both, {w0: 3, w1: 3}))
    sink.run_once()  # stores w0:0
    sink.sources_revoked([w1])
    sink.run(stop_when_idle=0.0)
    assert store.events == [window("M0", 0), window("M0", 1)]
    assert store.offsets == {w0: 3} and sink.backlog == 0


# -- write-behind: the next transaction prepared while the one before is written ---------------


def behind_sink(feed: FakeFeed, store: Store, sources: list[Any]) -> OutcomeSink:
    return sink_with(feed, store, sources, write_behind=True)


def mixed_batches(a: Any, w: Any) -> list[FeedBatch]:
    return [
        FeedBatch([FeedMessage(w, 0, [window("M1", 0)]), FeedMessage(a, 0, ["e0"])], {}),
        FeedBatch([FeedMessage(a, 0, ["e0"]), FeedMessage(a, 1, ["e1"])], {a: 3}),  # e0 delivered again
        FeedBatch([FeedMessage(w, 1, [window("M1", 900_000_000)]), FeedMessage(a, 3, ["e3"])], {}),
    ]


def test_a_write_behind_sink_stores_exactly_what_a_sink_writing_in_its_own_thread_stores() -> None:
    a, w = ("readings", 0), ("aggregates", 0)
    results = []
    for make in (sink_with, behind_sink):
        feed, store = FakeFeed(), Store()
        sink = make(feed, store, [a, w])
        feed.batches.extend(mixed_batches(a, w))
        totals = sink.run(stop_when_idle=0.0)
        results.append((list(map(str, store.events)), store.offsets, sink.expected, totals.records))
    assert results[0] == results[1]
    assert results[1][1] == {a: 4, w: 2}


def test_a_write_behind_sink_prepares_the_next_transaction_while_the_one_before_is_written() -> None:
    feed, store = FakeFeed(), Store()
    a = ("readings", 0)
    sink = behind_sink(feed, store, [a])
    second_prepared = threading.Event()
    waited: list[bool] = []
    store.on_prepare = lambda n: second_prepared.set() if n == 2 else None
    # the first write holds until the second transaction is prepared: a sink that prepared only
    # after the write before it was in would leave it waiting in vain
    store.before_commit = lambda n: waited.append(second_prepared.wait(5.0)) if n == 1 else None
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"])], {}))
    feed.batches.append(FeedBatch([FeedMessage(a, 1, ["e1"])], {}))
    sink.run(stop_when_idle=0.0)
    assert waited == [True]
    assert store.log == [("prepare", 1), ("prepare", 2), ("commit", 1), ("commit", 2)]
    assert store.events == ["e0", "e1"] and store.offsets == {a: 2}
    assert feed.acknowledged == [{a: 1}, {a: 2}]


def test_a_write_behind_sink_whose_write_found_other_offsets_drops_the_next_and_rereads() -> None:
    feed, store = FakeFeed(), Store()
    a = ("gaps", 1)
    sink = behind_sink(feed, store, [a])
    store.offsets[a] = 7  # another sink took the partition over and wrote meanwhile
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["old"])], {}))
    feed.batches.append(FeedBatch([FeedMessage(a, 1, ["older"])], {}))
    assert sink.run_once() == 1  # written behind: the check comes with the next transaction
    assert sink.run_once() == 0  # ... which is dropped, and the offsets reloaded
    assert store.events == [] and store.offsets == {a: 7}
    assert feed.rewinds == [(a, 7)] and sink.expected[a] == 7 and sink.backlog == 0


def test_a_write_behind_sink_writes_again_from_scratch_when_the_database_went_away() -> None:
    feed, store = FakeFeed(), Store()
    a = ("readings", 0)
    sink = behind_sink(feed, store, [a])
    store.transient_failures = 2  # the prepared commit, then the first patient attempt
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"]), FeedMessage(a, 1, ["e1"])], {}))
    sink.run(stop_when_idle=0.0)
    assert store.events == ["e0", "e1"] and store.offsets == {a: 2}
    assert sink.totals.records == 2 and sink.totals.batches == 1


def test_a_write_behind_sink_finishes_its_write_before_it_gives_a_partition_up() -> None:
    feed, store = FakeFeed(), Store()
    a, b = ("readings", 0), ("readings", 1)
    sink = behind_sink(feed, store, [a, b])
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"]), FeedMessage(b, 0, ["f0"])], {}))
    sink.run_once()
    sink.sources_revoked([b])  # inside the next poll, as the consumer calls it
    assert store.events == ["e0", "f0"] and store.offsets == {a: 1, b: 1}
    assert feed.acknowledged == [{a: 1, b: 1}]  # acknowledged while b was still this sink's
    assert sink.expected == {a: 1}


def test_a_write_behind_sink_that_cannot_reach_the_database_to_prepare_writes_the_patient_way() -> None:
    feed, store = FakeFeed(), Store()
    a = ("readings", 0)
    sink = behind_sink(feed, store, [a])
    store.enter_failures = 2  # the prepared unit of work, then the first patient attempt
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"])], {}))
    feed.batches.append(FeedBatch([FeedMessage(a, 1, ["e1"])], {}))
    sink.run(stop_when_idle=0.0)
    assert store.events == ["e0", "e1"] and store.offsets == {a: 2}
    assert store.log == [("commit", 0), ("prepare", 1), ("commit", 1)]  # the first one unprepared


def test_an_idle_write_behind_sink_accounts_for_its_last_write_at_once() -> None:
    feed, store = FakeFeed(), Store()
    a = ("readings", 0)
    sink = behind_sink(feed, store, [a])
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"])], {}))
    sink.run_once()
    sink.run_once()  # polls nothing
    assert feed.acknowledged == [{a: 1}] and sink.totals.batches == 1 and sink.totals.records == 1


def test_a_write_behind_sink_rereads_after_a_rebalance_whose_waited_write_found_other_offsets() -> None:
    feed, store = FakeFeed(), Store()
    a, b = ("readings", 0), ("readings", 1)
    sink = behind_sink(feed, store, [a, b])
    store.offsets[a] = 7  # another sink wrote there meanwhile
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["old"]), FeedMessage(b, 0, ["f0"])], {}))
    sink.run_once()
    sink.sources_revoked([b])  # inside a poll: the write is waited for, the reload must wait
    assert feed.rewinds == [] and store.events == []
    assert sink.run_once() == 0  # the next round reloads first
    assert feed.rewinds == [(a, 7)] and sink.expected == {a: 7}


class FailingFeed(FakeFeed):
    """Gives its batches, then fails as a fatal broker error does."""

    def poll(self, max_messages: int, timeout: float) -> FeedBatch:
        if self.batches:
            return self.batches.pop(0)
        raise RuntimeError("fatal broker error")


def _running(sink: OutcomeSink) -> tuple[threading.Thread, list[BaseException]]:
    """The sink's run() started on a thread of its own, and the list its error will be put in."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            sink.run()
        except BaseException as error:  # handed to the test's thread
            failed.append(error)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    return runner, failed


def test_a_write_behind_sink_that_fails_while_the_database_is_away_says_so_at_once() -> None:
    feed, store = FailingFeed(), Store()
    a = ("readings", 0)
    sink = OutcomeSink(
        feed, lambda: FakeSinkUow(store), "sink", backoff=Backoff(sleep=lambda _: time.sleep(0.01)), write_behind=True
    )
    sink.sources_assigned([a])
    store.transient_failures = 10**9  # the database went away, for as long as it takes
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"])], {}))
    runner, failed = _running(sink)
    runner.join(5.0)
    assert not runner.is_alive(), "run() waited for the database instead of raising"
    assert len(failed) == 1 and isinstance(failed[0], RuntimeError)
    assert store.events == [] and feed.acknowledged == [] and store.offsets == {}  # given up, unaccounted
    sink.sources_revoked([a])  # the consumer's close, after: nothing left to wait for


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_sink_asked_to_stop_while_the_database_is_away_stops_without_waiting_for_it(write_behind: bool) -> None:
    feed, store = FakeFeed(), Store()
    a = ("readings", 0)
    stop = threading.Event()
    backoff = Backoff(first=0.5, cap=5.0, stopped=stop.is_set)  # real sleeps: 0.5 s, 1 s, 2 s ...
    sink = OutcomeSink(feed, lambda: FakeSinkUow(store), "sink", backoff=backoff, write_behind=write_behind)
    sink.sources_assigned([a])
    store.transient_failures = 10**9  # the database went away, for as long as it takes
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"])], {}))
    runner, failed = _running(sink)
    time.sleep(1.0)  # retrying by now
    stop.set()  # what SIGTERM does (Stopper): the flag, then the loop's stop()
    sink.stop()
    runner.join(1.0)
    alive = runner.is_alive()
    store.transient_failures = 0  # a sink still waiting ends now, not at the test process's exit
    assert not alive, "the sink kept waiting for the database after SIGTERM"
    assert len(failed) == 1 and isinstance(failed[0], StopRequested)
    assert store.events == [] and feed.acknowledged == [] and store.offsets == {}  # given up, unaccounted


class CountedSinkUow(FakeSinkUow):
    open = 0

    def __enter__(self) -> CountedSinkUow:
        super().__enter__()
        CountedSinkUow.open += 1
        return self

    def __exit__(self, *exc: object) -> None:
        CountedSinkUow.open -= 1
        super().__exit__(*exc)


def test_a_write_behind_sink_closes_the_prepared_transaction_when_the_one_before_fails_for_good() -> None:
    feed, store = FakeFeed(), Store()
    a = ("readings", 0)
    CountedSinkUow.open = 0
    sink = OutcomeSink(feed, lambda: CountedSinkUow(store), "sink", write_behind=True)
    sink.sources_assigned([a])

    def refuse(number: int) -> None:
        if number == 1:
            raise ValueError("a constraint the rows break")

    store.before_commit = refuse
    feed.batches.append(FeedBatch([FeedMessage(a, 0, ["e0"])], {}))
    feed.batches.append(FeedBatch([FeedMessage(a, 1, ["e1"])], {}))
    sink.run_once()
    with pytest.raises(ValueError):
        sink.run_once()  # prepares the second, then finds the first failed
    assert CountedSinkUow.open == 0


def test_a_write_behind_sink_prepares_the_next_window_slice_while_the_one_before_is_written() -> None:
    feed, store = FakeFeed(), Store()
    w = ("aggregates", 0)
    sink = sink_with(feed, store, [w], write_behind=True, window_seconds=0.0)  # one message a slice
    second_prepared = threading.Event()
    waited: list[bool] = []
    store.on_prepare = lambda n: second_prepared.set() if n == 2 else None
    store.before_commit = lambda n: waited.append(second_prepared.wait(5.0)) if n == 1 else None
    feed.batches.append(FeedBatch([FeedMessage(w, i, [window(f"M{i}", 0)]) for i in range(3)], {}))
    sink.run(stop_when_idle=0.0)
    assert waited == [True]
    assert store.log[:3] == [("prepare", 1), ("prepare", 2), ("commit", 1)]
    assert len(store.events) == 3 and store.offsets == {w: 3}
