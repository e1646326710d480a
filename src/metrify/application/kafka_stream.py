"""Metrify on a partitioned log (Kafka in production): the stream worker, the database sink and
the producer of raw readings, written against ports only (DESIGN §4, exactly-once).

Worker: it owns input partitions through a consumer group. On assignment it restores each
partition's stream state from the state changelog (the state of the last committed transaction,
with the input offset it was committed with) and starts reading the input there. Each batch runs
through the same stream core as the embedded profile, and its outputs, state changes and input
offsets are written in ONE transaction. A transaction that fails is aborted, nothing of it is
visible, and the partitions it touched are restored again from the changelog and re-read.

Sink: it reads the committed outputs and writes them into the database in batches, together with
the next offset of every output partition, in ONE database transaction (compare-and-set on the
offsets, so that a sink that lost its partitions to another cannot write behind its back). On
assignment it seeks to the offsets the database holds. Rows are upserted by natural keys, so a
batch that is written twice changes nothing either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from metrify.application.network import NetworkProfile, through_network
from metrify.application.ports import Clock, OutcomeRepository, PartitionState, TransientStoreError
from metrify.application.replay import EventTimePacer
from metrify.application.stream import Backoff, PartitionCountMismatch, gc_paused
from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig
from metrify.domain.stream.core import PartitionStream
from metrify.domain.stream.events import ReadingRejected, WindowUpdated
from metrify.domain.stream.partitioner import partition_of

log = logging.getLogger("metrify.worker")
sink_log = logging.getLogger("metrify.sink")

MALFORMED_MESSAGE = "malformed_message"
_TO_GROW = (
    "State does not move between partitions and Kafka cannot remove them: to run with {count}, create new "
    "topics (`metrify topics create --partitions {count}` under a new METRIFY_KAFKA__TOPIC_PREFIX) and send "
    "the readings there"
)


# -- what the log gives and takes ------------------------------------------------------------------


class Malformed(NamedTuple):
    """An input record that is not a reading at all (not JSON, not an object): a poison message.
    It becomes a `malformed_message` reject; it never reaches the stream core."""

    meter_id: str
    position: int
    detail: str


class PolledPartition(NamedTuple):
    """What one poll returned for one input partition, in offset order."""

    readings: list[RawReading]  # .position = the record's offset
    malformed: list[Malformed]
    next_offset: int  # the last record's offset + 1


class TransactionAborted(Exception):
    """The batch's transaction was aborted: none of its outputs, state or offsets is visible."""


class PartitionListener(Protocol):
    def partitions_assigned(self, partitions: list[int]) -> dict[int, int]:
        """Get ready to process these input partitions; return the offset to read each from."""
        ...

    def partitions_revoked(self, partitions: list[int]) -> None: ...


class StreamLog(Protocol):
    """The worker's side of the log: input partitions owned through a consumer group, their state
    changelog, and transactions that cover outputs, state and input offsets together."""

    def start(self, listener: PartitionListener) -> None: ...

    def poll(self, max_records: int, timeout: float) -> dict[int, PolledPartition]: ...

    def restore(self, partition: int) -> PartitionState:
        """The partition's state as of its last committed transaction (empty: offset 0)."""
        ...

    def begin(self) -> None: ...

    def write(self, partition: int, events: list[Any], state: PartitionState, inputs: int) -> None:
        """Stage a partition's outputs and state changes (`state.meters`: the changed meters)."""
        ...

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit what was written with these next input offsets; TransactionAborted if it failed."""
        ...

    def rewind(self, partition: int, offset: int) -> None: ...

    def lag(self) -> dict[int, int]: ...

    def partition_count(self) -> int | None:
        """The input's partition count as the log tells it now; None when it cannot tell now."""
        ...

    def close(self) -> None: ...


class WorkerMetrics(Protocol):
    def batch_done(self, readings: int, seconds: float) -> None: ...

    def restored(self, partition: int, meters: int, seconds: float) -> None: ...

    def aborted(self) -> None: ...

    def owned(self, partitions: Collection[int]) -> None: ...

    def lag(self, lags: Mapping[int, int]) -> None: ...


class NullWorkerMetrics:
    def batch_done(self, readings: int, seconds: float) -> None:
        pass

    def restored(self, partition: int, meters: int, seconds: float) -> None:
        pass

    def aborted(self) -> None:
        pass

    def owned(self, partitions: Collection[int]) -> None:
        pass

    def lag(self, lags: Mapping[int, int]) -> None:
        pass


@dataclass(slots=True)
class RunTotals:
    """What a worker or sink did: records in, batches committed, and when the first record came
    and the last commit went (monotonic seconds), for throughput figures."""

    records: int = 0
    batches: int = 0
    aborted: int = 0
    first_record_at: float | None = None
    last_commit_at: float | None = None
    first_record_cpu: float | None = None  # process CPU time (all threads), same two moments
    last_commit_cpu: float | None = None

    def started(self, now: float) -> None:
        if self.first_record_at is None:
            self.first_record_at = now
            self.first_record_cpu = time.process_time()

    def committed(self) -> None:
        self.last_commit_at = time.monotonic()
        self.last_commit_cpu = time.process_time()

    @property
    def busy_cpu_seconds(self) -> float:
        if self.first_record_cpu is None or self.last_commit_cpu is None:
            return 0.0
        return max(self.last_commit_cpu - self.first_record_cpu, 0.0)

    @property
    def busy_seconds(self) -> float:
        if self.first_record_at is None or self.last_commit_at is None:
            return 0.0
        return max(self.last_commit_at - self.first_record_at, 0.0)

    @property
    def rate(self) -> float:
        seconds = self.busy_seconds
        return self.records / seconds if seconds > 0 else 0.0


# -- the worker ------------------------------------------------------------------------------------


class StreamWorker:
    """The exactly-once stream worker: per owned input partition one stream core, restored from
    the changelog on assignment; per batch one transaction (outputs + state + input offsets)."""

    def __init__(
        self,
        config: StreamConfig,
        log: StreamLog,
        clock: Clock,
        metrics: WorkerMetrics | None = None,
        *,
        max_batch: int = 5000,
        max_wait: float = 0.1,
        intervals: Mapping[str, int] | None = None,
        lag_every: float = 1.0,
        partitions: int | None = None,
        recount_every: float = 5.0,
    ) -> None:
        self.config = config
        self.log = log
        self.clock = clock
        self.metrics = metrics or NullWorkerMetrics()
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.intervals = intervals
        self.lag_every = lag_every
        self.cores: dict[int, PartitionStream] = {}
        self.expected: dict[int, int] = {}  # partition -> the next input offset to process
        self.totals = RunTotals()
        self.stopping = False
        self._last_lag = 0.0
        # The input's partition count the state is cut into (the topics' count at start; None:
        # not checked), and how often the log is asked whether the input still has it.
        self.partitions = partitions
        self.recount_every = recount_every
        self._last_count = time.monotonic()

    # -- assignment (called by the log, from inside poll) -------------------------------------------

    def partitions_assigned(self, partitions: list[int]) -> dict[int, int]:
        if self.partitions is not None and partitions and max(partitions) >= self.partitions:
            self._refuse(self.log.partition_count() or max(partitions) + 1)
        offsets = {}
        for partition in partitions:
            offsets[partition] = self._restore(partition)
        self.metrics.owned(sorted(self.cores))
        return offsets

    def partitions_revoked(self, partitions: list[int]) -> None:
        # No transaction is ever open here: each batch commits (or aborts) before the next poll.
        for partition in partitions:
            self.cores.pop(partition, None)
            self.expected.pop(partition, None)
        if partitions:
            log.info("partitions released: %s", sorted(partitions))
        self.metrics.owned(sorted(self.cores))

    def _restore(self, partition: int) -> int:
        started = time.monotonic()
        state = self.log.restore(partition)
        if self.partitions is not None:
            self._check_routes(state)
        core = PartitionStream(self.config, partition, self.intervals)
        core.restore(state.max_event_time, state.meters)
        self.cores[partition] = core
        self.expected[partition] = state.next_offset
        seconds = time.monotonic() - started
        self.metrics.restored(partition, len(state.meters), seconds)
        log.info(
            "partition %s restored from the changelog: %s meters, next offset %s (%.2fs)",
            partition,
            len(state.meters),
            state.next_offset,
            seconds,
        )
        return state.next_offset

    # -- the partition count (DESIGN §3: a meter's partition is murmur2(id) % the input's count) ---

    def _recount(self) -> None:
        """Stop (PartitionCountMismatch) once the input has another partition count than the state
        is cut into: partitions added to it while this runs."""
        assert self.partitions is not None
        count = self.log.partition_count()
        if count is not None and count != self.partitions:
            self._refuse(count)

    def _refuse(self, count: int) -> None:
        raise PartitionCountMismatch(
            f"the input topic now has {count} partitions but the stream state is cut into {self.partitions} "
            f"(partitions were added while workers ran): meters route by murmur2(meter_id) % partitions, so "
            f"many would reach a partition without their state; the worker stopped rather than process them. "
            f"{_TO_GROW.format(count=count)}"
        )

    def _check_routes(self, state: PartitionState) -> None:
        """Refuse a partition whose saved meters the input's partition count mostly routes
        elsewhere: its state was built with another count (partitions were added to every topic
        meanwhile). Adding partitions moves at least half of each partition's meters (doubling
        the count moves half, any other growth more), so more than a quarter is that. A few
        meters out of place are readings some producer put there by hand (another partitioner,
        an explicit partition): they are processed where they came, as before, with a warning."""
        count = self.partitions
        assert count is not None
        misrouted = [
            (meter_id, routed)
            for meter_id in state.meters
            if (routed := partition_of(meter_id, count)) != state.partition
        ]
        if not misrouted:
            return
        meter_id, routed = misrouted[0]
        if len(misrouted) * 4 > len(state.meters):
            raise PartitionCountMismatch(
                f"the changelog of input partition {state.partition} holds meters that {count} partitions "
                f"route elsewhere ({len(misrouted)} of {len(state.meters)}, e.g. {meter_id!r} to partition "
                f"{routed}): the stream state was built with another partition count (partitions were added "
                f"to the topics); the worker stopped rather than process them. {_TO_GROW.format(count=count)}"
            )
        log.warning(
            "input partition %d holds %d of its %d meters that %d partitions route elsewhere (e.g. %r to %d): "
            "a producer does not partition by murmur2(meter id) %% %d; their readings are processed where they came",
            state.partition,
            len(misrouted),
            len(state.meters),
            count,
            meter_id,
            routed,
            count,
        )

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop_when_idle: float | None = None) -> RunTotals:
        """Process until `stop()` (SIGTERM), or until nothing came for `stop_when_idle` seconds."""
        self.log.start(self)
        idle_since = time.monotonic()
        while not self.stopping:
            if self.run_once():
                idle_since = time.monotonic()
            elif stop_when_idle is not None and time.monotonic() - idle_since >= stop_when_idle:
                log.info("no input for %.1fs: stopping", stop_when_idle)
                break
        return self.totals

    def stop(self) -> None:
        self.stopping = True

    def run_once(self) -> int:
        """One batch: poll, process, commit in one transaction. Returns the records committed.
        The garbage collector waits until the batch is done (see gc_paused): with thousands of
        meters' state on the heap, collections set off inside it took a quarter of the time."""
        with gc_paused():
            return self._run_once()

    def _run_once(self) -> int:
        polled = self.log.poll(self.max_batch, self.max_wait)
        now_mono = time.monotonic()
        if now_mono - self._last_lag >= self.lag_every:
            self._last_lag = now_mono
            self.metrics.lag(self.log.lag())
        if self.partitions is not None and now_mono - self._last_count >= self.recount_every:
            self._last_count = now_mono
            self._recount()
        if not polled:
            return 0
        self.totals.started(now_mono)
        work = []
        for partition, batch in polled.items():
            core = self.cores.get(partition)
            if core is None:  # revoked while this batch was on its way
                continue
            expected = self.expected[partition]
            if batch.next_offset <= expected:
                continue
            readings, malformed = batch.readings, batch.malformed
            if (readings and readings[0].position < expected) or (malformed and malformed[0].position < expected):
                readings = [r for r in readings if r.position >= expected]
                malformed = [m for m in malformed if m.position >= expected]
            work.append((partition, core, readings, malformed, batch.next_offset))
        if not work:
            return 0
        started = time.perf_counter()
        now = self.clock.now_us()
        offsets: dict[int, int] = {}
        count = 0
        try:
            self.log.begin()
            for partition, core, readings, malformed, next_offset in work:
                events = core.process(readings, now) if readings else []
                if malformed:
                    events.extend(
                        ReadingRejected(m.meter_id, None, None, MALFORMED_MESSAGE, partition, None, m.position)
                        for m in malformed
                    )
                    for m in malformed:
                        log.warning("malformed message at partition %s offset %s: %s", partition, m.position, m.detail)
                dirty = core.take_dirty()
                state = PartitionState(partition, core.max_event_time, next_offset, core.snapshot_meters(dirty))
                inputs = len(readings) + len(malformed)
                self.log.write(partition, events, state, inputs)
                offsets[partition] = next_offset
                count += inputs
            self.log.commit(offsets)
        except TransactionAborted as exc:
            self.totals.aborted += 1
            self.metrics.aborted()
            touched = [partition for partition, *_ in work]
            log.warning("transaction aborted (%s); restoring partitions %s from the changelog", exc, touched)
            self._reload(touched)
            return 0
        self.expected.update(offsets)
        self.totals.records += count
        self.totals.batches += 1
        self.totals.committed()
        self.metrics.batch_done(count, time.perf_counter() - started)
        return count

    def _reload(self, partitions: Iterable[int]) -> None:
        """Forget what an aborted transaction did: state from the changelog, input from its offset."""
        for partition in partitions:
            if partition in self.cores:
                self.log.rewind(partition, self._restore(partition))


# -- the sink --------------------------------------------------------------------------------------

Source = tuple[str, int]  # (output topic, partition)


class FeedMessage(NamedTuple):
    source: Source
    offset: int
    events: list[Any]


class FeedBatch(NamedTuple):
    messages: list[FeedMessage]
    ends: dict[Source, int]  # sources whose end the feed reached in this poll: the offset there


class StaleSinkOffsets(Exception):
    """The database holds other offsets than this sink expected: another sink wrote there."""


class SourceListener(Protocol):
    def sources_assigned(self, sources: list[Source]) -> dict[Source, int | None]:
        """Return where to read each source from (None: from its beginning)."""
        ...

    def sources_revoked(self, sources: list[Source]) -> None: ...


class OutcomeFeed(Protocol):
    """The sink's side of the log: committed outputs only (read_committed), through a group."""

    def start(self, listener: SourceListener) -> None: ...

    def poll(self, max_messages: int, timeout: float) -> FeedBatch: ...

    def rewind(self, source: Source, offset: int | None) -> None: ...

    def acknowledge(self, offsets: Mapping[Source, int]) -> None: ...

    def lag(self) -> dict[Source, int]: ...

    def close(self) -> None: ...


class SinkOffsetRepository(Protocol):
    def load(self, consumer: str, sources: Collection[Source]) -> dict[Source, int]: ...

    def advance(self, consumer: str, moves: Mapping[Source, tuple[int | None, int]]) -> None:
        """Move each source from the expected offset to the new one, in the unit of work's
        transaction; StaleSinkOffsets when the stored offset is not the expected one."""
        ...


class SinkUnitOfWork(Protocol):
    outcomes: OutcomeRepository
    offsets: SinkOffsetRepository

    def __enter__(self) -> SinkUnitOfWork: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def prepare(self) -> None:
        """Do the commit's work that needs no word with the database (folding, rows, encoding),
        so that `commit` may run on another thread while this one prepares the next."""
        ...

    def commit(self, on_sending: Callable[[], None] | None = None) -> None:
        """Write and commit; `on_sending` is called once, when the checks are done and the bulk
        of the data starts to flow (or at the end)."""
        ...


class SinkMetrics(Protocol):
    def batch_done(self, messages: int, events: int, seconds: float) -> None: ...

    def lag(self, lags: Mapping[Source, int]) -> None: ...

    def store_retry(self) -> None: ...

    def store_ok(self) -> None: ...

    def stale(self) -> None: ...

    def backlog(self, records: int) -> None:
        """Closed-window records read and waiting for their slice (see OutcomeSink)."""
        ...


class NullSinkMetrics:
    def batch_done(self, messages: int, events: int, seconds: float) -> None:
        pass

    def lag(self, lags: Mapping[Source, int]) -> None:
        pass

    def store_retry(self) -> None:
        pass

    def store_ok(self) -> None:
        pass

    def stale(self) -> None:
        pass

    def backlog(self, records: int) -> None:
        pass


class SinkStopped(Exception):
    """A transaction given up because the sink stopped on another error (write-behind)."""


@dataclass(slots=True)
class _Write:
    """A sink transaction: its offset moves and counts, and its write when one is under way."""

    future: Future[float] | None
    moves: dict[Source, int]
    records: int
    messages: int
    windows: bool


class OutcomeSink:
    """Committed outputs -> the database, with the read offsets in the same transaction.

    Readings are never kept waiting by windows. When windows close, one poll can bring ten
    aggregate upserts per reading (the hour's windows of every meter at once): written in one
    transaction they held the readings polled after them for 0.4 s at 5,000 readings/s. So window
    messages wait in a backlog, in offset order, and each round writes the polled readings first,
    then one slice of the backlog sized to take about `window_seconds` at the rate the last
    slices were written. Each transaction moves only the offsets of the messages it stored in
    full, so a crash between slices re-reads the rest: nothing is lost, nothing doubled.

    With `write_behind` (what `metrify sink` runs), transactions are written by a writer thread:
    once one's data flows to the database, this thread polls and prepares the next (rows built,
    COPY data encoded), so the server does not wait for the client between transactions. They
    still commit one at a time, in order (see `_store`)."""

    def __init__(
        self,
        feed: OutcomeFeed,
        uow_factory: Callable[[], SinkUnitOfWork],
        consumer: str,
        metrics: SinkMetrics | None = None,
        *,
        backoff: Backoff | None = None,
        max_batch: int = 500,
        max_wait: float = 0.1,
        lag_every: float = 1.0,
        window_seconds: float = 0.05,
        max_backlog: int = 200_000,
        write_behind: bool = False,
    ) -> None:
        self.feed = feed
        self.uow_factory = uow_factory
        self.consumer = consumer
        self.metrics = metrics or NullSinkMetrics()
        self.backoff = backoff or Backoff()
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.lag_every = lag_every
        self.window_seconds = window_seconds
        self.max_backlog = max_backlog  # window records held before polling pauses
        self.expected: dict[Source, int | None] = {}
        self.totals = RunTotals()
        self.stopping = False
        self._last_lag = 0.0
        self._backlog: deque[FeedMessage] = deque()  # window messages not stored yet, in poll order
        self._backlog_records = 0
        self._backlog_ends: dict[Source, int] = {}  # ends reached behind a source's backlog
        self._backlog_next: dict[Source, int] = {}  # per source with waiting messages: the next offset
        self._window_rate = 50_000.0  # window records per second of the last slices
        self._reported_backlog = 0
        self.write_behind = write_behind
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: _Write | None = None  # write-behind: the transaction being written
        self._reload_due = False  # write-behind: a write found stale offsets inside a callback
        self._abandoned = threading.Event()  # write-behind: run() failed, the writer stops retrying

    def sources_assigned(self, sources: list[Source]) -> dict[Source, int | None]:
        self._settle(reload_now=False)
        stored = self._load(sources)
        for source in sources:
            self.expected[source] = stored.get(source)
        sink_log.info("reading %s output partitions from the offsets the database holds", len(sources))
        return {source: stored.get(source) for source in sources}

    def sources_revoked(self, sources: list[Source]) -> None:
        # Their waiting windows are dropped with them: the next owner reads them from the offsets
        # the database holds, which never moved past them. A write still under way finishes
        # first, while the partitions are still this sink's.
        self._settle(reload_now=False)
        gone = set(sources)
        if any(message.source in gone for message in self._backlog):
            self._backlog = deque(m for m in self._backlog if m.source not in gone)
            self._backlog_records = sum(len(m.events) for m in self._backlog)
        for source in sources:
            self.expected.pop(source, None)
            self._backlog_ends.pop(source, None)
            self._backlog_next.pop(source, None)

    def _load(self, sources: Collection[Source]) -> dict[Source, int]:
        def read() -> dict[Source, int]:
            with self.uow_factory() as uow:
                return uow.offsets.load(self.consumer, sources)

        return self.backoff.run(read)

    def run(self, stop_when_idle: float | None = None) -> RunTotals:
        self.feed.start(self)
        idle_since = time.monotonic()
        try:
            while not self.stopping:
                if self.run_once():
                    idle_since = time.monotonic()
                elif stop_when_idle is not None and time.monotonic() - idle_since >= stop_when_idle:
                    if self._in_flight is not None:  # not idle until the last write is in
                        self._settle()
                        continue
                    sink_log.info("no input for %.1fs: stopping", stop_when_idle)
                    break
            self._settle()
        except BaseException:
            # Something else failed (a fatal broker error, a signal): say so now, not once the
            # database answers again. A write retrying the patient way gives up at its next try,
            # unaccounted: whether it went in or not, the offsets in the database tell the next run.
            self._abandoned.set()
            self._in_flight = None
            raise
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
        return self.totals

    def stop(self) -> None:
        self.stopping = True

    @property
    def backlog(self) -> int:
        """Window records polled and not stored yet."""
        return self._backlog_records

    def run_once(self) -> int:
        """One round: poll, store the readings (and the other events) with their offsets in one
        transaction, then a slice of the waiting windows in another, acknowledge; no garbage
        collection inside (see gc_paused). Returns the messages handled (1 for a round that only
        moved offsets or the backlog), 0 when idle."""
        with gc_paused():
            handled = self._run_once()
        if self._backlog_records != self._reported_backlog:
            self._reported_backlog = self._backlog_records
            self.metrics.backlog(self._backlog_records)
        return handled

    def _run_once(self) -> int:
        if self._backlog_records < self.max_backlog:
            batch = self.feed.poll(self.max_batch, self.max_wait if not self._backlog else 0.0)
        else:  # the database is behind on windows: let it catch up before reading more
            batch = FeedBatch([], {})
        if self._reload_due:  # a write under way at a rebalance found other offsets
            self._reload_due = False
            self._reload()
            return 0
        if self._in_flight is not None and not batch.messages and not batch.ends and not self._backlog:
            # nothing new: account for the last write now (acknowledged, counted), so an idle
            # sink shows no lag, rather than with the next transaction, whenever that comes (a
            # round with windows waiting is not idle: their next slice is prepared meanwhile)
            if not self._settle():
                return 0
        now_mono = time.monotonic()
        if now_mono - self._last_lag >= self.lag_every:
            self._last_lag = now_mono
            self.metrics.lag(self.feed.lag())
        events: list[Any] = []
        moves: dict[Source, int] = {}
        messages = 0
        expected = self.expected
        backlog = self._backlog
        queued = self._backlog_next
        waiting = {message.source for message in backlog}
        for message in batch.messages:
            source = message.source
            if source not in expected:
                continue
            floor = queued.get(source, moves.get(source, expected[source]))  # next offset not seen yet
            if floor is not None and message.offset < floor:
                continue
            if source in waiting or (message.events and type(message.events[0]) is WindowUpdated):
                # from here on this source's messages wait their turn; a move already made for
                # its events before this one stays (they are stored this round)
                backlog.append(message)
                self._backlog_records += len(message.events)
                waiting.add(source)
                queued[source] = message.offset + 1
                continue
            events.extend(message.events)
            messages += 1
            moves[source] = message.offset + 1
        for source, end in batch.ends.items():
            if source not in expected:
                continue
            if source in waiting:
                self._backlog_ends[source] = max(end, self._backlog_ends.get(source, end))
                continue
            current = moves.get(source, expected[source])
            if end > (current or 0):
                moves[source] = end
        if messages:
            self.totals.started(now_mono)
        handled = messages
        if moves and not self._store(events, moves, messages):
            return 0
        if backlog:
            self.totals.started(now_mono)
            stored = self._store_windows()
            if stored is None:
                return 0
            handled += stored
        return handled or (1 if moves else 0)

    def _store_windows(self) -> int | None:
        """Store the head of the backlog: whole messages, about `window_seconds` of work at the
        rate of the last slices, at least one message. Returns the messages stored, None when the
        offsets were stale (everything was reloaded)."""
        backlog = self._backlog
        budget = max(1, int(self._window_rate * self.window_seconds))
        events: list[Any] = []
        moves: dict[Source, int] = {}
        taken = 0
        while backlog and (not taken or len(events) + len(backlog[0].events) <= budget):
            message = backlog.popleft()
            events.extend(message.events)
            moves[message.source] = message.offset + 1
            taken += 1
        self._backlog_records -= len(events)
        left = {message.source for message in backlog}
        done = [source for source in moves if source not in left]
        for source in done:
            end = self._backlog_ends.pop(source, None)
            if end is not None:
                moves[source] = max(moves[source], end)
        if not self._store(events, moves, taken, windows=True):
            return None
        for source in done:
            self._backlog_next.pop(source, None)
        return taken

    def _store(self, events: list[Any], moves: dict[Source, int], messages: int, windows: bool = False) -> bool:
        """Store events with their sources' offsets in one transaction; False when the database
        holds other offsets than expected (they are reloaded).

        Write-behind: the transaction is prepared here (rows built, COPY data encoded), written
        by the writer thread once the one before it is in, and this returns as soon as its data
        flows; False then means that the transaction before found other offsets (this one is
        dropped, everything reloaded). Transactions go in order, each from the offsets the one before moved to, so
        exactly-once holds as when they are written here: a write that fails makes the next one
        fail its offset check, never skip."""
        expected = self.expected
        transitions = {source: (expected[source], new) for source, new in moves.items()}

        def write() -> None:
            if self._abandoned.is_set():
                raise SinkStopped("the sink stopped on an error before this transaction went in")
            with self.uow_factory() as uow:
                if events:
                    uow.outcomes.add_events(events)
                uow.offsets.advance(self.consumer, transitions)
                uow.commit()

        if not self.write_behind:
            started = time.perf_counter()
            try:
                self.backoff.run(write)
            except StaleSinkOffsets as exc:
                self._stale(exc)
                return False
            expected.update(moves)
            self._stored(_Write(None, moves, len(events), messages, windows), time.perf_counter() - started)
            return True
        prepared = self._prepare(events)
        try:
            settled = self._settle()
        except BaseException:  # the write before failed for good: this one will never be written
            if prepared is not None:
                prepared.__exit__(None, None, None)
            raise
        if not settled:
            if prepared is not None:
                prepared.__exit__(None, None, None)
            return False
        expected.update(moves)  # the next transaction starts where this one ends
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrify-sink-writer")
        sending = threading.Event()
        future = self._writer.submit(self._write_prepared, prepared, transitions, write, sending)
        self._in_flight = _Write(future, moves, len(events), messages, windows)
        # The next transaction is prepared once this one's data flows: its checks and offsets
        # before that are round trips of the writer thread, slow while this thread holds the GIL
        # (bench_sink.py: 115k rows/s preparing at once, against 129k writing in this thread).
        while not sending.wait(0.1) and not future.done():
            continue
        return True

    def _prepare(self, events: list[Any]) -> SinkUnitOfWork | None:
        """A unit of work holding the events, prepared; None when the database cannot be reached
        now (the writer thread then writes them the patient way)."""
        uow = self.uow_factory()
        try:
            uow.__enter__()
        except TransientStoreError:
            return None
        try:
            if events:
                uow.outcomes.add_events(events)
            uow.prepare()
        except BaseException:
            uow.__exit__(None, None, None)
            raise
        return uow

    def _write_prepared(
        self,
        uow: SinkUnitOfWork | None,
        transitions: dict[Source, tuple[int | None, int]],
        write: Callable[[], None],
        sending: threading.Event,
    ) -> float:
        """On the writer thread: the prepared unit of work, or, if the database went away, the
        whole transaction again with backoff; `sending` is set once its data flows, or when it
        gives up on the prepared one. Returns the seconds it took."""
        started = time.perf_counter()
        try:
            return self._write_attempts(uow, transitions, write, sending.set, started)
        finally:
            sending.set()

    def _write_attempts(
        self,
        uow: SinkUnitOfWork | None,
        transitions: dict[Source, tuple[int | None, int]],
        write: Callable[[], None],
        on_sending: Callable[[], None],
        started: float,
    ) -> float:
        if uow is not None:
            try:
                uow.offsets.advance(self.consumer, transitions)
                uow.commit(on_sending)
                return time.perf_counter() - started
            except TransientStoreError:
                pass  # written again below, from scratch
            finally:
                try:
                    uow.__exit__(None, None, None)
                except TransientStoreError:
                    pass  # a connection lost after its commit, or one already given up above
        on_sending()  # the patient way may take long: the next transaction is prepared meanwhile
        self.backoff.run(write)
        return time.perf_counter() - started

    def _settle(self, reload_now: bool = True) -> bool:
        """Wait for the write under way, if any, and account for it; False when it found other
        offsets than expected. Then everything is reloaded, at once or, inside a rebalance
        callback (`reload_now` False: the feed is inside its poll), at the start of the next round."""
        write, self._in_flight = self._in_flight, None
        if write is None or write.future is None:
            return True
        try:
            seconds = write.future.result()
        except StaleSinkOffsets as exc:
            self._stale(exc, reload_now)
            return False
        self._stored(write, seconds)
        return True

    def _stale(self, exc: StaleSinkOffsets, reload_now: bool = True) -> None:
        self.metrics.stale()
        sink_log.warning("the database holds other offsets than expected (%s): reloading them", exc)
        if reload_now:
            self._reload()
        else:
            self._reload_due = True

    def _stored(self, write: _Write, seconds: float) -> None:
        self.metrics.store_ok()
        self.feed.acknowledge(write.moves)
        self.totals.records += write.records
        self.totals.batches += 1
        self.totals.committed()
        self.metrics.batch_done(write.messages, write.records, seconds)
        if write.windows and write.records and seconds > 0:
            self._window_rate = 0.5 * self._window_rate + 0.5 * max(write.records / seconds, 1000.0)

    def _reload(self) -> None:
        """Back to the offsets the database holds, for every source: what waited is read again."""
        self._settle(reload_now=False)  # a write under way finishes first (its outcome changes nothing here)
        self._reload_due = False
        self._backlog.clear()
        self._backlog_records = 0
        self._backlog_ends.clear()
        self._backlog_next.clear()
        sources = list(self.expected)
        stored = self._load(sources)
        for source in sources:
            self.expected[source] = stored.get(source)
            self.feed.rewind(source, stored.get(source))


# -- producing raw readings ------------------------------------------------------------------------


class ReadingPublisher(Protocol):
    partitions: int

    def publish(self, reading: RawReading) -> None: ...

    def flush(self) -> None:
        """Wait until every reading is stored by the log; raise if any could not be."""
        ...


def publish_readings(
    rows: Iterable[RawReading],
    publisher: ReadingPublisher,
    network: NetworkProfile,
    speed: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 5000,
) -> int:
    """Send rows to the raw input in the order the (simulated) network delivers them, paced by
    event time when `speed` is set. Returns the number of readings sent."""
    pacer = EventTimePacer(speed) if speed else None
    sent = 0
    for row in through_network(rows, network):
        if pacer is not None:
            delay = pacer.delay_for(row)
            if delay > 0:
                pacer.sleep(delay)
        publisher.publish(row)
        sent += 1
        if on_progress is not None and sent % progress_every == 0:
            on_progress(sent)
    publisher.flush()
    if on_progress is not None:
        on_progress(sent)
    return sent
