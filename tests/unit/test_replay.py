"""Replays over the in-memory store: resumable, deterministic network, a running tally."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.core_runner import FixedClock

import metrify.application.replay as replay_module
from metrify.adapters.memory.stream_store import InMemoryStreamStore, InMemoryStreamUnitOfWork
from metrify.application.network import NetworkProfile, through_network
from metrify.application.ports import TransientStoreError
from metrify.application.replay import ReplayOptions, Tally, run_replay
from metrify.application.serial import BoundedBackoff, SerialPipeline
from metrify.application.simulator import FleetProfile, fleet_rows
from metrify.application.stream import Backoff, PartitionCountMismatch, ReplayedElsewhere, StreamPipeline
from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig
from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, WindowUpdated
from metrify.domain.stream.partitioner import partition_for

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


def test_the_tally_counts_each_window_once_however_often_late_readings_re_emit_it() -> None:
    """Late rows re-emit windows, which must not count twice; a run that died and the run that
    resumed it count every window once between them."""
    rows = list(through_network(fleet(6, 3), NetworkProfile(delay_prob=0.3, max_delay=3000, seed=4)))
    store = InMemoryStreamStore()
    pipeline = pipeline_on(store, partitions=2)
    pipeline.load()
    events = []
    for start in range(0, len(rows), 20):
        events += pipeline.process(rows[start : start + 20])
    emissions = sum(1 for event in events if type(event) is WindowUpdated)
    assert pipeline.windows_emitted == len(store.windows) < emissions

    options = ReplayOptions(partitions=2, batch_size=50)
    source = ListSource(rows)
    broken = InMemoryStreamStore()
    try:
        run_replay(source, pipeline_on(broken, partitions=2), options, on_batch=_dying_after(9))
    except Crash:
        pass
    first = len(broken.windows)
    assert 0 < first < len(store.windows)
    resumed = run_replay(source, pipeline_on(broken, partitions=2), options)
    assert resumed.tally.windows_emitted == len(store.windows) - first


def test_the_simulated_network_is_deterministic_for_a_seed_and_loses_what_it_drops() -> None:
    rows = fleet(5, 1)
    profile = NetworkProfile(delay_prob=0.1, max_delay=300, drop_prob=0.05, seed=9)
    first, second = list(through_network(rows, profile)), list(through_network(rows, profile))
    assert first == second
    assert 0.9 * len(rows) < len(first) < len(rows)
    assert first != [r for r in rows if r in first], "some rows should arrive out of their file order"
    other = list(through_network(rows, NetworkProfile(delay_prob=0.1, max_delay=300, drop_prob=0.05, seed=10)))
    assert other != first


def outcome_of(store: InMemoryStreamStore) -> tuple:
    """All that a replay leaves: outcomes and stream state (positions aside)."""
    return (
        store.readings,
        store.rejected,
        store.too_late,
        store.gaps,
        store.windows,
        store.partitions,
        store.meter_states,
    )


def exported_by(store: InMemoryStreamStore) -> tuple:
    """What the exports show and each partition's watermark and offset: all that DESIGN §3 says
    depends only on the arrival order. Saved meter states also depend on where batches were
    cut (a meter is pruned when a batch changes it), so they are left out here."""
    return outcome_of(store)[:6]


NETWORK = NetworkProfile(delay_prob=0.2, max_delay=3000, drop_prob=0.05, seed=8)


def replay_in_workers(store: InMemoryStreamStore, rows: list[RawReading], shares: list[list[int]], **kwargs) -> list:
    """The workers of a parallel replay, one after the other (each its own pipeline, as a process)."""
    options = ReplayOptions(partitions=3, network=NETWORK, batch_size=kwargs.pop("batch_size", 90))
    return [
        run_replay(ListSource(rows), pipeline_on(store, partitions=3), options, partitions=share, **kwargs)
        for share in shares
    ]


def test_workers_each_replaying_their_partitions_leave_the_outcome_of_one_replay() -> None:
    rows = fleet(12, 2)
    whole = InMemoryStreamStore()
    single = run_replay(
        ListSource(rows), pipeline_on(whole, partitions=3), ReplayOptions(partitions=3, network=NETWORK, batch_size=90)
    )
    shared = InMemoryStreamStore()
    reports = replay_in_workers(shared, rows, [[0, 2], [1]])
    assert outcome_of(shared) == outcome_of(whole)
    merged = Tally()
    for report in reports:
        merged.merge(report.tally.compacted())
    assert merged.rows == single.tally.rows
    assert (merged.accepted, merged.rejected, merged.too_late) == (
        single.tally.accepted,
        single.tally.rejected,
        single.tally.too_late,
    )
    assert (merged.gaps_open, merged.gaps_closed, merged.windows_emitted) == (
        single.tally.gaps_open,
        single.tally.gaps_closed,
        single.tally.windows_emitted,
    )
    light = Tally()  # what workers report while they run: gaps counted, not sent
    for report in reports:
        light.merge(report.tally.compacted(gaps=False))
    assert light.gaps == {} and light.gaps_seen == len(single.tally.gaps) == len(whole.gaps)
    again = run_replay(
        ListSource(rows), pipeline_on(shared, partitions=3), ReplayOptions(partitions=3, network=NETWORK)
    )
    assert again.already_done


def test_a_parallel_replay_that_died_resumes_with_any_number_of_workers() -> None:
    rows = fleet(12, 2)
    whole = InMemoryStreamStore()
    run_replay(ListSource(rows), pipeline_on(whole, partitions=3), ReplayOptions(partitions=3, network=NETWORK))
    for resumed_by in ([[0, 1, 2]], [[2], [0], [1]], None):
        broken = InMemoryStreamStore()
        calls = {"n": 0}

        def dying_batch(_tally: Tally, calls: dict = calls) -> None:
            calls["n"] += 1
            if calls["n"] == 4:
                raise Crash

        try:
            replay_in_workers(broken, rows, [[1], [0, 2]], on_batch=dying_batch)
        except Crash:
            pass
        assert 0 < len(broken.readings) < len(whole.readings)
        if resumed_by is None:  # one process, no partitions named: the plain `metrify replay`
            options = ReplayOptions(partitions=3, network=NETWORK, batch_size=70)
            report = run_replay(ListSource(rows), pipeline_on(broken, partitions=3), options)
            assert 0 < report.skipped_rows < len(rows)
        else:
            replay_in_workers(broken, rows, resumed_by, batch_size=70)
        assert outcome_of(broken) == outcome_of(whole)


def test_workers_resume_a_replay_of_one_process_that_died() -> None:
    rows = fleet(12, 2)
    whole = InMemoryStreamStore()
    options = ReplayOptions(partitions=3, network=NETWORK, batch_size=90)
    run_replay(ListSource(rows), pipeline_on(whole, partitions=3), options)
    broken = InMemoryStreamStore()

    def dying_batch(tally: Tally) -> None:
        if tally.rows >= 500:
            raise Crash

    try:
        run_replay(ListSource(rows), pipeline_on(broken, partitions=3), options, on_batch=dying_batch)
    except Crash:
        pass
    reports = replay_in_workers(broken, rows, [[0], [1, 2]], batch_size=50)
    assert all(report.skipped_rows == 540 for report in reports)  # six batches of 90 committed
    assert outcome_of(broken) == outcome_of(whole)


def _dying_after(batches: int):
    calls = {"n": 0}

    def on_batch(_tally: Tally) -> None:
        calls["n"] += 1
        if calls["n"] == batches:
            raise Crash

    return on_batch


def _run_until_crash(
    store: InMemoryStreamStore, rows: list[RawReading], share: list[int], batches: int, batch_size: int = 40
) -> None:
    try:
        replay_in_workers(store, rows, [share], on_batch=_dying_after(batches), batch_size=batch_size)
    except Crash:
        pass


def test_a_worker_behind_on_one_partition_keeps_the_position_of_another_that_is_further() -> None:
    """Worker [2] of one run commits far; worker [0] of it little. A worker [0, 2] of the next run
    starts at partition 0's position and dies before it passes partition 2's: partition 2's
    position must not go back to where that worker got, or the next run processes partition 2's
    rows in between again (found by the CI: duplicates after a replay killed with workers)."""
    rows = fleet(12, 2)
    whole = InMemoryStreamStore()
    run_replay(ListSource(rows), pipeline_on(whole, partitions=3), ReplayOptions(partitions=3, network=NETWORK))
    broken = InMemoryStreamStore()
    _run_until_crash(broken, rows, [0], 1)
    _run_until_crash(broken, rows, [2], 12)
    _run_until_crash(broken, rows, [0, 2], 1)
    replay_in_workers(broken, rows, [[0, 1, 2]])
    assert outcome_of(broken) == outcome_of(whole)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([[0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2]]),
            st.integers(1, 12),
            st.sampled_from([7, 20, 50]),
        ),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_workers_dying_in_any_order_and_any_share_leave_the_outcome_of_one_replay(
    deaths: list[tuple[list[int], int, int]], last_in_one_process: bool
) -> None:
    """Each worker dies after its n-th commit (or finishes first); then the rest is replayed."""
    rows = WORKER_ROWS
    broken = InMemoryStreamStore()
    for share, batches, batch_size in deaths:
        _run_until_crash(broken, rows, share, batches, batch_size)
    if last_in_one_process:
        options = ReplayOptions(partitions=3, network=NETWORK, batch_size=70)
        run_replay(ListSource(rows), pipeline_on(broken, partitions=3), options)
    else:
        replay_in_workers(broken, rows, [[0], [1], [2]])
    assert exported_by(broken) == WORKER_OUTCOME


WORKER_ROWS = fleet(8, 1)
_whole = InMemoryStreamStore()
run_replay(ListSource(WORKER_ROWS), pipeline_on(_whole, partitions=3), ReplayOptions(partitions=3, network=NETWORK))
WORKER_OUTCOME = exported_by(_whole)


class _AcknowledgementLost(InMemoryStreamUnitOfWork):
    """Commits, then fails as a connection dropped during COMMIT would: on the `lose`-th commit."""

    def __init__(self, store: InMemoryStreamStore, commits: list[int], lose: int) -> None:
        super().__init__(store)
        self.commits = commits
        self.lose = lose

    def commit(self) -> None:
        super().commit()
        self.commits[0] += 1
        if self.commits[0] == self.lose:
            raise TransientStoreError("server closed the connection unexpectedly")


def _losing_acknowledgement(
    store: InMemoryStreamStore, lose: int, partitions: int = 3, **kwargs: Any
) -> StreamPipeline:
    commits = [0]
    return StreamPipeline(
        StreamConfig(),
        partitions,
        lambda: _AcknowledgementLost(store, commits, lose),
        FixedClock(NOW),
        backoff=kwargs.pop("backoff", Backoff(sleep=lambda seconds: None)),
    )


def test_a_commit_whose_acknowledgement_was_lost_is_not_processed_twice() -> None:
    """The retry finds the partitions moved on (StreamWrittenElsewhere), by this very batch: it
    is taken as committed, not processed again on the state that holds it (found by a review:
    every reading of the batch was stored a second time, as a duplicate or too late)."""
    rows = fleet(12, 2)
    options = ReplayOptions(partitions=3, network=NETWORK, batch_size=90)
    whole = InMemoryStreamStore()
    expected = run_replay(ListSource(rows), pipeline_on(whole, partitions=3), options)
    store = InMemoryStreamStore()
    report = run_replay(ListSource(rows), _losing_acknowledgement(store, lose=4), options)
    assert exported_by(store) == exported_by(whole)
    assert (report.tally.accepted, report.tally.rejected) == (expected.tally.accepted, expected.tally.rejected)


def test_an_ingest_request_whose_commit_lost_its_acknowledgement_gets_its_own_outcomes() -> None:
    rows = fleet(4, 1)[:40]
    store = InMemoryStreamStore()
    serial = SerialPipeline(
        lambda: _losing_acknowledgement(store, lose=1, partitions=1, backoff=BoundedBackoff(sleep=lambda s: None))
    )
    outcomes = serial.submit(rows)
    assert [type(event) for event in outcomes] == [ReadingAccepted] * 40
    assert len(store.readings) == 40 and not store.rejected and not store.too_late


@pytest.mark.parametrize("partitions", [1, 2])
def test_a_request_of_rejected_readings_alone_in_a_partition_is_not_stored_twice_after_a_lost_acknowledgement(
    partitions: int,
) -> None:
    """The commit's token tells (found by a review): comparing the store with the batch could not
    recognise a partition that got only a malformed reading, so the batch went again on the state
    that held it: the malformed reading stored twice, the accepted one answered as a duplicate."""
    store = InMemoryStreamStore()
    commits = [0]
    serial = SerialPipeline(
        lambda: StreamPipeline(
            StreamConfig(),
            partitions,
            lambda: _AcknowledgementLost(store, commits, lose=2),
            FixedClock(NOW),
            backoff=BoundedBackoff(sleep=lambda s: None),
        )
    )
    serial.submit([RawReading("A", "2024-03-04T10:00:00Z", "0.5")])
    other = next(m for m in (f"B{i}" for i in range(100)) if partition_for(m, 2) != partition_for("A", 2))
    rows = [RawReading("A", "2024-03-04T10:30:00Z", "0.5"), RawReading(other, "2024-03-04T10:00:00Z", "abc")]
    if partitions == 1:
        rows = rows[1:]  # one partition: a request of a malformed reading alone
    outcomes = serial.submit(rows)
    assert commits[0] == 2  # the second commit's acknowledgement was lost, and nothing committed again
    assert [type(event) for event in outcomes] == [ReadingAccepted, ReadingRejected][2 - len(rows) :]
    assert outcomes[-1].reason == "invalid_consumption"
    assert len(store.rejected) == 1 and len(store.readings) == len(rows)


def test_a_lost_acknowledgement_after_the_retry_budget_is_not_a_503_for_a_committed_batch() -> None:
    """The try whose acknowledgement was lost spent the whole budget (it waited on a lock first):
    the store is asked once more before the client is told 503 and invited to send it again."""
    store = InMemoryStreamStore()
    now, lose = [0.0], [0]

    class SlowAcknowledgementLost(InMemoryStreamUnitOfWork):
        def commit(self) -> None:
            super().commit()
            if lose[0]:
                lose[0] -= 1
                now[0] += 6.0
                raise TransientStoreError("server closed the connection unexpectedly")

    serial = SerialPipeline(
        lambda: StreamPipeline(
            StreamConfig(),
            1,
            lambda: SlowAcknowledgementLost(store),
            FixedClock(NOW),
            backoff=BoundedBackoff(sleep=lambda s: None, clock=lambda: now[0]),
        )
    )
    serial.submit([RawReading("A", "2024-03-04T10:00:00Z", "0.5")])
    lose[0] = 1
    outcomes = serial.submit([RawReading("A", "2024-03-04T10:30:00Z", "0.5"), RawReading("B", "x", "0.5")])
    assert [type(event) for event in outcomes] == [ReadingAccepted, ReadingRejected]
    assert (len(store.readings), len(store.rejected)) == (2, 1)


def test_a_second_writer_s_commit_is_still_processed_on_its_state() -> None:
    """Another process's commit (not this batch's) after a failed try: loaded, and the batch
    processed again on it, as before."""
    rows = fleet(4, 1)
    store = InMemoryStreamStore()
    first, second = pipeline_on(store), _losing_acknowledgement(store, lose=1, partitions=1)
    first.load()
    second.load()
    first.process(rows[:30])
    commits = [0]

    class FailsOnce(InMemoryStreamUnitOfWork):
        def commit(self) -> None:
            commits[0] += 1
            if commits[0] == 1:
                raise TransientStoreError("database is locked")
            super().commit()

    second.uow_factory = lambda: FailsOnce(store)
    events = second.process(rows[30:60])
    reference = InMemoryStreamStore()
    alone = pipeline_on(reference)
    alone.load()
    alone.process(rows[:30])
    assert events == alone.process(rows[30:60])
    assert exported_by(store) == exported_by(reference)


def test_a_paced_replay_killed_while_it_waits_does_not_skip_the_row_it_holds() -> None:
    """With --speed, the batch before a wait is committed first; the row the cursor already gave
    (the one waiting for its time) is not in it, and is not counted as done (found by a review:
    a kill during the wait lost that reading, on a resume where partitions stood apart)."""
    rows = fleet(12, 2)
    options = ReplayOptions(partitions=3, network=NETWORK, batch_size=90)
    whole = InMemoryStreamStore()
    run_replay(ListSource(rows), pipeline_on(whole, partitions=3), options)
    store = InMemoryStreamStore()
    _run_until_crash(store, rows, [0], 1)  # partitions stand apart: the cursor path
    waits = [0]

    def killed_in_fifth_wait(seconds: float) -> None:
        waits[0] += 1
        if waits[0] == 5:
            raise Crash

    paced = ReplayOptions(partitions=3, network=NETWORK, batch_size=90, speed=1000.0)
    original = replay_module.EventTimePacer
    replay_module.EventTimePacer = lambda speed: original(speed, killed_in_fifth_wait)  # type: ignore[assignment,misc]
    try:
        with pytest.raises(Crash):
            run_replay(ListSource(rows), pipeline_on(store, partitions=3), paced)
    finally:
        replay_module.EventTimePacer = original  # type: ignore[misc]
    run_replay(ListSource(rows), pipeline_on(store, partitions=3), options)
    assert exported_by(store) == exported_by(whole)


@pytest.mark.parametrize("share", [None, [0, 1, 2]])
def test_a_replay_that_finds_another_run_of_itself_committing_stops_instead_of_writing_on(share) -> None:
    """Two replays of one file at once (the same command started twice, or a worker outliving
    its replay where PR_SET_PDEATHSIG does not exist): the second finishes while the first
    waits; the first must not process its batch again on the rows the second stored (found by
    a review: every row then stored twice), but stop, leaving the outcome of one replay."""
    rows = fleet(12, 2)
    options = ReplayOptions(partitions=3, network=NETWORK, batch_size=90)
    whole = InMemoryStreamStore()
    run_replay(ListSource(rows), pipeline_on(whole, partitions=3), options)
    store = InMemoryStreamStore()
    batches = [0]

    def another_run_starts_and_finishes(_tally: Tally) -> None:
        batches[0] += 1
        if batches[0] == 2:
            run_replay(ListSource(rows), pipeline_on(store, partitions=3), options, partitions=share)

    with pytest.raises(ReplayedElsewhere):
        run_replay(
            ListSource(rows), pipeline_on(store, partitions=3), options, on_batch=another_run_starts_and_finishes
        )
    assert exported_by(store) == exported_by(whole)


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 3), (3, 2), (4, 2)])
def test_a_stream_cut_into_other_partitions_is_refused_with_the_count_it_was_cut_into(before: int, after: int) -> None:
    """More partitions than the saved stream was cut into went unnoticed before: every saved
    partition exists among more, but its meters are routed elsewhere and would start afresh."""
    store = InMemoryStreamStore()
    run_replay(ListSource(fleet(6, 1)), pipeline_on(store, partitions=before), ReplayOptions(partitions=before))
    plural = "s" if before > 1 else ""
    with pytest.raises(
        PartitionCountMismatch, match=f"cut into {before} partition{plural}, not {after}; use --partitions {before} "
    ):
        pipeline_on(store, partitions=after).load()
    pipeline_on(store, partitions=before).load()


def test_another_writer_s_batch_of_as_many_rows_is_not_taken_for_a_batch_that_changes_no_meter() -> None:
    """X's first try fails without committing; meanwhile Y commits as many rows, which leave the
    watermark where it was. X's batch (two rejected readings) changes no meter: nothing of its
    own to recognise in the store, so it is processed again on Y's state, not taken as committed
    (found by a review: X's rejected readings were lost, and its state lacked Y's rows)."""

    def reading(meter: str, hour: str, kwh: str) -> RawReading:
        return RawReading(meter, f"2024-03-04T{hour}:00Z", kwh)

    store = InMemoryStreamStore()
    seed = pipeline_on(store, partitions=1)
    seed.load()
    seed.process([reading(m, t, "1") for m, t in (("A", "10:00"), ("B", "10:00"), ("C", "12:00"))])
    other = pipeline_on(store, partitions=1)
    other.load()
    fails = [True]

    class FailsBeforeCommitting(InMemoryStreamUnitOfWork):
        def commit(self) -> None:
            if fails[0]:
                fails[0] = False
                other.process([reading("A", "11:30", "2"), reading("B", "11:30", "2")])  # two LATE rows
                raise TransientStoreError("server closed the connection unexpectedly")
            super().commit()

    writer = StreamPipeline(
        StreamConfig(), 1, lambda: FailsBeforeCommitting(store), FixedClock(NOW), backoff=Backoff(sleep=lambda s: None)
    )
    writer.load()
    writer.process([reading("A", "11:00", "abc"), reading("", "11:00", "1")])
    assert sorted(r.reason for r in store.rejected.values()) == ["invalid_consumption", "missing_meter_id"]
    again = writer.process([reading("A", "11:30", "2")])
    assert [e.reason for e in again if isinstance(e, ReadingRejected)] == ["duplicate"]


def test_a_replay_that_another_run_overtakes_while_it_loads_stops() -> None:
    """Another run of the replay commits between this run's reading of its positions and its
    loading of the state: this run would process those rows again on that state (found by a
    review); it stops instead, leaving the other run's outcome."""
    rows = fleet(12, 2)
    options = ReplayOptions(partitions=3, network=NETWORK, batch_size=90)
    whole = InMemoryStreamStore()
    run_replay(ListSource(rows), pipeline_on(whole, partitions=3), options)
    store = InMemoryStreamStore()
    late = pipeline_on(store, partitions=3)
    load = late.load

    def overtaken_while_loading() -> None:
        run_replay(ListSource(rows), pipeline_on(store, partitions=3), options)
        load()

    late.load = overtaken_while_loading  # type: ignore[method-assign]
    with pytest.raises(ReplayedElsewhere):
        run_replay(ListSource(rows), late, options)
    assert exported_by(store) == exported_by(whole)
