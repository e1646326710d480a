"""The one path every way in shares (DESIGN §4): a batch of readings -> the stream core ->
outcomes, state changes and input position committed together in one unit of work."""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from metrify.application.errors import Unavailable
from metrify.application.ports import (
    Clock,
    PartitionState,
    SourceProgress,
    StreamUnitOfWork,
    StreamWrittenElsewhere,
    TransientStoreError,
)
from metrify.domain.readings import RawReading, normalise_meter_id
from metrify.domain.stream.config import StreamConfig
from metrify.domain.stream.core import PartitionStream
from metrify.domain.stream.events import WindowUpdated
from metrify.domain.stream.meter_state import NO_HOLD
from metrify.domain.stream.partitioner import partition_for

_ROUTES_LIMIT = 1 << 20
_PARTITIONS_GUESSED = 256  # tried when telling a user the partition count a stream was cut into
_RELOADS = 3  # times a batch is processed again on state another writer committed
log = logging.getLogger("metrify.stream")


class _CollectorPause:
    """Who holds automatic garbage collection off, across threads: it comes back on when the last
    holder leaves, and only if it was on when the first came in. Per call, as before, one API
    request leaving turned it on again in the middle of another's batch (the next allocations of
    that batch then set off collections over its live readings and events)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders = 0
        self.resume = False

    def enter(self) -> None:
        with self.lock:
            if self.holders == 0:
                self.resume = gc.isenabled()
                gc.disable()
            self.holders += 1

    def leave(self) -> None:
        with self.lock:
            self.holders -= 1
            if self.holders == 0 and self.resume:
                gc.enable()


_PAUSE = _CollectorPause()


@contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic garbage collection inside: a batch allocates a few objects per reading, nearly
    all short-lived and without cycles, and collections triggered every few hundred of them would
    walk the whole heap (the meters' state, the process's modules) again and again. The collector
    runs once, after the batch (the last one, when threads overlap), if it is due. Collection
    turned off by other means stays off."""
    _PAUSE.enter()
    try:
        yield
    finally:
        _PAUSE.leave()


class StreamCannotLoad(Exception):
    """The stream's saved state cannot be loaded as it is: the operator's to mend (said, not a 500)."""


class PartitionCountMismatch(StreamCannotLoad):
    """The store holds a stream cut into another number of partitions than asked for."""


class StreamStatesBehind(StreamCannotLoad):
    """The stream's meter states were saved behind its outcomes by the API's stream writer
    (METRIFY_API__STATE_SAVE_BATCHES), whose journal holds the batches in between: only that
    writer can load it, and it saves them when it stops or is idle."""


def _cut_into(states: Mapping[int, PartitionState | None], count: int) -> bool:
    """Whether every saved meter lies in the partition that `count` partitions route it to."""
    return all(
        partition_for(meter_id, count) == p
        for p, state in states.items()
        if state is not None
        for meter_id in state.meters
    )


def _cut_otherwise(states: Mapping[int, PartitionState | None], asked: int) -> str:
    """What to say when the saved stream was cut into another number of partitions than `asked`:
    the smallest number under which every saved meter lies in the partition that holds it."""
    least = max(states) + 1
    for count in range(least, max(least, _PARTITIONS_GUESSED) + 1):
        if _cut_into(states, count):
            return (
                f"the database holds this stream cut into {count} partition{'s' if count > 1 else ''}, "
                f"not {asked}; use --partitions {count} or a fresh database"
            )
    return f"the database holds this stream cut into another number of partitions than {asked}; use a fresh database"


REPLAYED_ELSEWHERE = (
    "another run of this replay committed to the database meanwhile (two replays of one file at once): "
    "this one stopped; once the other has finished or stopped, run it again to go on"
)


class ReplayedElsewhere(Exception):
    """Another run of the same replay committed meanwhile (its progress moved): two replays of one
    file at once. Processing this batch on its state would store its rows twice: stop instead."""


class StopRequested(Exception):
    """The process was asked to stop (SIGTERM) while it waited for an unreachable store (the
    database, Kafka): the action it retried is given up, not done."""


class Backoff:
    """Capped exponential backoff for an unreachable store: 0.5 s, 1 s, 2 s ... up to `cap`.
    With `stopped`, a wait ends within a tenth of a second of it turning true, in StopRequested:
    a process asked to stop does not wait for the database (or the broker) first."""

    STEP = 0.1  # seconds slept at a time while `stopped` is watched

    def __init__(
        self,
        sleep: Callable[[float], None] = time.sleep,
        first: float = 0.5,
        cap: float = 15.0,
        on_retry: Callable[[int, float, Exception], None] | None = None,
        stopped: Callable[[], bool] | None = None,
    ) -> None:
        self.sleep = sleep
        self.first = first
        self.cap = cap
        self.on_retry = on_retry
        self.stopped = stopped

    def run(self, action: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return action()
            except TransientStoreError as exc:
                delay = self.delay(attempt)
                attempt += 1
                if self.on_retry is not None:
                    self.on_retry(attempt, delay, exc)
                self.wait(delay, f"the store was unreachable ({exc})", exc)

    def delay(self, attempt: int) -> float:
        """The wait after `attempt + 1` failed tries in a row: `first`, doubled each time, `cap` at most."""
        return min(self.cap, self.first * (2**attempt))

    def wait(self, delay: float, doing: str, error: Exception | None = None) -> None:
        """Sleep `delay` seconds; with `stopped`, a STEP at a time (see check)."""
        if self.stopped is None:
            self.sleep(delay)
            return
        while True:
            self.check(doing, error)
            if delay <= 0:
                return
            step = min(delay, self.STEP)
            self.sleep(step)
            delay -= step

    def check(self, doing: str, error: Exception | None = None) -> None:
        """StopRequested if `stopped` says so (`doing`: what is given up, for the message). For
        loops that wait otherwise than by sleeping (a request in flight, a changelog being read)."""
        if self.stopped is not None and self.stopped():
            raise StopRequested(f"stopped while {doing}") from error


# A partition's save in a batch: (partition, max_event_time, next_offset, meters' states, where its
# saved states stand when behind this header: None when these bring them up to it)
PartitionSave = tuple[int, int | None, int, dict[str, Any], tuple[int | None, int] | None]


@dataclass(slots=True)
class PreparedBatch:
    """A batch run through the cores and not stored yet (StreamPipeline.prepare, then commit)."""

    events: list[Any]  # every event of the batch, in order: each reading's outcome among them
    stored: list[Any]  # the events to store: held windows first, then the batch's own
    saves: list[PartitionSave]  # per partition touched (or whose states are saved): see PartitionSave
    progress: tuple[SourceProgress, ...]
    emitted: int  # windows emitted for the first time
    now: int  # the time future timestamps were judged against


class Closed:
    """Windows of one size ending at one time, closed by a core that holds windows back: their
    WindowUpdated events are made as they are stored, a share at a time, at each meter's value
    then (each stays in its meter's state until stored, see PartitionStream.hold_from)."""

    __slots__ = ("core", "end", "index", "meter_ids", "taken")

    def __init__(self, core: PartitionStream, end: int, index: int, meter_ids: list[str]) -> None:
        self.core = core
        self.end = end
        self.index = index
        self.meter_ids = meter_ids
        self.taken = 0  # meters taken out of the set: the rest follow in `meter_ids`

    def __len__(self) -> int:
        return len(self.meter_ids) - self.taken

    def take(self, count: int) -> list[Any]:
        """The events of the first `count` meters' windows, out of this set."""
        taken = self.taken
        meter_ids = self.meter_ids[taken : taken + count]
        self.taken = taken + len(meter_ids)
        return self.core.closed_values(self.end, self.index, meter_ids)


class Retries(Protocol):
    """How a store's transient failures are retried: Backoff, or serial.BoundedBackoff."""

    def run(self, action: Callable[[], Any]) -> Any: ...


class StreamPipeline:
    """N logical partitions of the stream core over one store (the embedded profile's engine)."""

    def __init__(
        self,
        config: StreamConfig,
        partitions: int,
        uow_factory: Callable[[], StreamUnitOfWork],
        clock: Clock,
        *,
        stream: str = "main",
        intervals: Mapping[str, int] | None = None,
        backoff: Retries | None = None,
        window_writes: int | None = None,
    ) -> None:
        self.config = config
        self.partition_count = partitions
        self.uow_factory = uow_factory
        self.clock = clock
        self.stream = stream
        self.backoff: Retries = backoff or Backoff()
        self.intervals = intervals
        # Closed windows stored per batch, at most (None: all of them, with the batch that closed
        # them). When a batch moves the watermark past every meter's windows, its 10,000-20,000
        # windows would double its time: held back, they are stored over the next batches, or by
        # `write_held_windows` when the stream is quiet. Until stored, each stays in its meter's
        # state (PartitionStream.hold), which is saved with the batch (or a later one, which the
        # journal replays: see catch_up): a process that loads the stream stores again every
        # closed window the states hold, nothing is lost in a crash.
        self.window_writes = window_writes
        # per partition, the windows waiting: segments of (earliest end in it, windows in order)
        self.held: list[deque[tuple[int, list[Any] | Closed]]] = [deque() for _ in range(partitions)]
        self._held_count = 0
        self.cores = self._new_cores()
        self.next_offsets = [0] * partitions
        # per partition, the input offset the store held when this process last loaded or
        # committed it: each commit expects it still there (one writer per stream, checked)
        self.committed_offsets = [0] * partitions
        # per partition, where its saved meter states stand (max_event_time, input offset), and
        # the meters changed since: with `prepare(save_states=False)` they are saved by a later batch
        self.saved_at: list[tuple[int | None, int]] = [(None, 0)] * partitions
        self.unsaved: list[set[str]] = [set() for _ in range(partitions)]
        self.routes: dict[str, int] = {}  # meter id as received -> partition, filled by partition_of
        # Windows emitted for the first time by the batches this object committed (each window
        # counted once however often a LATE reading re-emits it): what a replay reports.
        self.windows_emitted = 0
        # A replay's progress rows as this process last read (run_replay) or committed them: when
        # another writer commits, one of these moved means that writer replays the same rows.
        self.progress_seen: dict[str, SourceProgress | None] = {}

    def load(self, states_behind: bool = False) -> None:
        """Restore every partition from the store (a fresh store gives empty partitions). Meter
        states saved behind the outcomes (PartitionState.stored_offset) raise StreamStatesBehind
        unless `states_behind`: the caller then runs the batches in between through `catch_up`
        (the partitions' `next_offsets` are where the states stand, `committed_offsets` where
        the outcomes do)."""
        stored: dict[int, int] = {}

        def read() -> None:
            with self.uow_factory() as uow:
                saved = uow.state.partitions(self.stream)
                states = {p: uow.state.load(self.stream, p) for p in saved}
            count = self.partition_count
            if (saved and max(saved) >= count) or not _cut_into(states, count):
                raise PartitionCountMismatch(_cut_otherwise(states, count))
            behind = [p for p, state in states.items() if state is not None and state.stored_offset is not None]
            if behind and not states_behind:
                raise StreamStatesBehind(
                    f"the meter states of stream {self.stream!r} (partitions {', '.join(map(str, behind))}) were "
                    "saved behind its outcomes by the API's stream writer, whose journal holds the batches in "
                    "between: start `metrify api` with METRIFY_API__STREAM_WRITER=process on this database, and "
                    "stop it (or leave it idle a few seconds) to have them saved"
                )
            stored.clear()
            for core in self.cores:
                state = states.get(core.partition)
                if state is not None:
                    core.restore(state.max_event_time, state.meters)
                    self.next_offsets[core.partition] = state.next_offset
                    self.saved_at[core.partition] = (state.max_event_time, state.next_offset)
                    if state.stored_offset is not None:
                        stored[core.partition] = state.stored_offset

        self.saved_at = [(None, 0)] * self.partition_count
        self.unsaved = [set() for _ in range(self.partition_count)]
        self.backoff.run(read)
        self.committed_offsets = [stored.get(p, offset) for p, offset in enumerate(self.next_offsets)]
        # The closed windows the states hold: some may not be stored yet (a writer that held them
        # stopped before), so all are stored again, before anything newer (an upsert of the value
        # each has: the same value again for those stored already).
        self.held = [deque() for _ in range(self.partition_count)]
        self._held_count = 0
        for core in self.cores:
            self._hold(core, core.closed_windows())

    def reload(self, states_behind: bool = False) -> None:
        """Forget the state held here and load the store's: after another writer committed."""
        self.cores = self._new_cores()
        self.next_offsets = [0] * self.partition_count
        self.load(states_behind)

    @property
    def states_behind(self) -> bool:
        """Whether some partition's meter states, as saved, stand behind what the store holds."""
        return any(self._behind(p) for p in range(self.partition_count))

    def _behind(self, partition: int) -> bool:
        """Whether the partition's meter states, as saved, stand behind what the store holds."""
        return bool(self.unsaved[partition]) or self.saved_at[partition][1] != self.committed_offsets[partition]

    def catch_up(self, rows: Sequence[RawReading], now: int) -> None:
        """Run a batch the store holds already through the cores, storing nothing: after a `load`
        of states saved behind the outcomes, the batches in between, as they were processed (the
        same rows and `now`: the core is deterministic). The windows they close or change are
        queued as if held back, behind those the states held when loaded, and stored by the next
        batches (an upsert of the value each has: the newest goes last); none is taken out of the
        queue here: which of them the store holds already is not known."""
        with gc_paused():
            _, touched, _ = self._run_cores(rows, now, hold_windows=True)
            for core, dirty in touched:
                self.unsaved[core.partition].update(dirty)
        if any(offset > stored for offset, stored in zip(self.next_offsets, self.committed_offsets, strict=True)):
            raise RuntimeError("the batches caught up with run past what the store holds: not the same batches")

    def _new_cores(self) -> list[PartitionStream]:
        cores = [PartitionStream(self.config, p, self.intervals) for p in range(self.partition_count)]
        for core in cores:
            core.hold = self.window_writes is not None
        return cores

    @property
    def held_windows(self) -> int:
        """Closed windows not stored yet (a count kept as they come and go: other threads read it
        while the writer's thread changes the queue)."""
        return self._held_count

    def _hold(self, core: PartitionStream, windows: list[Any]) -> None:
        """Queue closed windows of a partition, in order, behind those waiting already."""
        if not windows:
            return
        segments = self.held[core.partition]
        segments.append((min(w[2] + w[1] for w in windows), windows))
        self._held_count += len(windows)
        self._set_hold(core)

    def _hold_closings(self, core: PartitionStream) -> None:
        """Queue the windows the core closed (holding, it made no events of them: see Closed)."""
        closings = core.take_closings()
        if not closings:
            return
        segments = self.held[core.partition]
        for end, index, meter_ids in closings:
            segments.append((end, Closed(core, end, index, meter_ids)))
            self._held_count += len(meter_ids)
        self._set_hold(core)

    def _held_share(self) -> int | None:
        """How many waiting windows a batch stores: `window_writes`, or an eighth of those
        waiting when more (a fleet that closes more windows per batch than that, for long, would
        otherwise leave an ever longer queue)."""
        if self.window_writes is None:
            return None
        return max(self.window_writes, self.held_windows // 8)

    def _take_held(self, limit: int | None) -> list[Any]:
        """Up to `limit` (None: all) of the windows waiting, oldest first, out of the queue. A
        segment cut in two keeps its earliest end: the hold stays as long, or longer."""
        taken: list[Any] = []
        count = 0  # windows out of the queue (a Closed one whose meter has let it go makes no event)
        for segments in self.held:
            while segments and (limit is None or count < limit):
                end, windows = segments[0]
                room = len(windows) if limit is None else limit - count
                if isinstance(windows, Closed):
                    if room >= len(windows):
                        segments.popleft()
                    count += min(room, len(windows))
                    taken.extend(windows.take(room))
                elif room >= len(windows):
                    segments.popleft()
                    count += len(windows)
                    taken.extend(windows)
                else:
                    count += room
                    taken.extend(windows[:room])
                    segments[0] = (end, windows[room:])
        self._held_count -= count
        return taken

    def _set_hold(self, core: PartitionStream) -> None:
        """The core holds windows back to the earliest end still waiting in its partition."""
        segments = self.held[core.partition]
        core.hold_from = min(end for end, _ in segments) if segments and core.hold else NO_HOLD

    def _release_holds(self) -> None:
        """After a commit: each core holds back only what still waits."""
        for core in self.cores:
            self._set_hold(core)

    def write_held_windows(self, limit: int | None = None, retries: Retries | None = None) -> int:
        """Store up to `limit` (None: all) of the closed windows waiting, in a transaction of
        their own that expects every partition's input offset to be as this process last saw it
        (another writer's newer value of a window must not be overwritten). The number stored.
        `retries`: how a store that is away is tried again (default: the pipeline's backoff)."""
        if not any(self.held):
            return 0
        chunk = self._take_held(limit)
        committed = self.committed_offsets

        def write() -> None:
            with self.uow_factory() as uow:
                uow.outcomes.add_events(chunk)
                for partition in range(self.partition_count):
                    uow.state.expect(self.stream, partition, committed[partition])
                uow.commit()

        (retries or self.backoff).run(write)
        self._release_holds()
        return len(chunk)

    def split(self, rows: Sequence[RawReading]) -> list[tuple[Sequence[RawReading], int]]:
        """Route rows to partitions by meter id (murmur2, as Kafka): each partition's rows, in
        order, and the input offset of its first one (the next rows are numbered on from it)."""
        count = self.partition_count
        offsets = self.next_offsets
        if count == 1:
            start = offsets[0]
            offsets[0] = start + len(rows)
            return [(rows, start)]
        parts: list[list[RawReading]] = [[] for _ in range(count)]
        routes = self.routes
        for row in rows:
            raw_id = row[0]
            p = routes.get(raw_id) if type(raw_id) is str else None
            if p is None:
                p = self.partition_of(raw_id)
            parts[p].append(row)
        firsts = list(offsets)
        for p, part in enumerate(parts):
            offsets[p] += len(part)
        return list(zip(parts, firsts, strict=True))

    def partition_of(self, raw_id: Any) -> int:
        """The partition of a meter id as received (murmur2 of the normalised id, as Kafka)."""
        routes = self.routes
        p = routes.get(raw_id) if type(raw_id) is str else None
        if p is None:
            p = partition_for(normalise_meter_id(raw_id), self.partition_count)
            if type(raw_id) is str:
                if len(routes) >= _ROUTES_LIMIT:
                    routes.clear()
                routes[raw_id] = p
        return p

    def process(
        self, rows: Sequence[RawReading], progress: Sequence[SourceProgress] = (), now: int | None = None
    ) -> list[Any]:
        """Process one batch and commit its outcomes, state and progress in one transaction. When
        another process committed to the stream meanwhile (StreamWrittenElsewhere: nothing of this
        batch was committed), the store's state is loaded again and the batch processed on it.
        `now` (default: the clock's) is the time future timestamps are judged against."""
        for attempt in range(_RELOADS + 1):
            try:
                with gc_paused():  # the whole batch: its events stay alive until written (see gc_paused)
                    return self._process(rows, progress, now)
            except StreamWrittenElsewhere as exc:
                if attempt == _RELOADS:
                    raise
                self.refuse_if_replayed_elsewhere()
                log.warning("%s: loading the stream's state again and processing the batch on it", exc)
                self.reload()
        raise AssertionError("unreachable")

    def _process(self, rows: Sequence[RawReading], progress: Sequence[SourceProgress], now: int | None) -> list[Any]:
        batch = self.prepare(rows, progress, now)
        self.commit(batch)
        return batch.events

    def prepare(
        self,
        rows: Sequence[RawReading],
        progress: Sequence[SourceProgress] = (),
        now: int | None = None,
        save_states: bool = True,
    ) -> PreparedBatch:
        """Run a batch through the cores: its events, and what `commit` is to store of it. Until
        that commit, the cores are ahead of the store (a failed commit calls for `reload`).
        Without `save_states` the meters it changed are not saved with it: the next batch that
        saves them does (their partitions' headers say where the saved states stand meanwhile;
        whoever loads them must run the batches in between through `catch_up`)."""
        if now is None:
            now = self.clock.now_us()
        events, touched, emitted = self._run_cores(rows, now)
        # Windows waiting (held, or found in the states when loaded) go first: a newer value of
        # one in this batch must be stored after it.
        stored = self._take_held(self._held_share()) if any(self.held) else []
        if self.window_writes is not None:
            stored.extend(e for e in events if type(e) is not WindowUpdated)
        elif stored:
            stored.extend(events)
        else:
            stored = events
        offsets, unsaved = self.next_offsets, self.unsaved
        saves: list[PartitionSave] = []
        if save_states:  # the partitions it touched, and those it left alone whose states stand behind
            changed = {core.partition: dirty for core, dirty in touched}
            for core in self.cores:
                p = core.partition
                dirty = changed.get(p)
                if dirty is None and not self._behind(p):
                    continue
                if unsaved[p]:
                    unsaved[p].update(dirty or ())
                    dirty = sorted(unsaved[p])
                    unsaved[p] = set()
                saves.append((p, core.max_event_time, offsets[p], core.snapshot_meters(dirty or []), None))
        else:
            for core, dirty in touched:
                p = core.partition
                unsaved[p].update(dirty)
                saves.append((p, core.max_event_time, offsets[p], {}, self.saved_at[p]))
        return PreparedBatch(events, stored, saves, tuple(progress), emitted, now)

    def _run_cores(
        self, rows: Sequence[RawReading], now: int, hold_windows: bool = False
    ) -> tuple[list[Any], list[tuple[PartitionStream, list[str]]], int]:
        """The batch through each partition's core: its events, the meters each core changed,
        and the windows emitted for the first time. Closed windows held back are queued, and
        with `hold_windows` every window event too."""
        events: list[Any] = []
        touched: list[tuple[PartitionStream, list[str]]] = []
        emitted = 0
        holding = self.window_writes is not None or hold_windows
        for core, (part, first_offset) in zip(self.cores, self.split(rows), strict=True):
            if part:
                before = core.windows_emitted
                produced = core.process(part, now, first_offset)
                if holding:  # in the order they happened (a Closed one is made at its value when stored)
                    self._hold_closings(core)
                    self._hold(core, [e for e in produced if type(e) is WindowUpdated])
                events.extend(produced)
                emitted += core.windows_emitted - before
                touched.append((core, core.take_dirty()))
        return events, touched, emitted

    def commit(self, batch: PreparedBatch, retries: Retries | None = None) -> None:
        """Store a prepared batch: its outcomes, the states it changed and its progress, in one
        transaction that expects each partition's input offset as this process last saw it.
        `retries`: how a store that is away is tried again (default: the pipeline's backoff)."""
        stored, saves, progress = batch.stored, batch.saves, batch.progress
        committed = self.committed_offsets
        token = uuid.uuid4().hex  # this unit of work's, saved with each header (see _store_holds)
        tries = 0

        def write() -> None:
            nonlocal tries
            tries += 1
            with self.uow_factory() as uow:
                uow.outcomes.add_events(stored)
                for partition, max_event_time, next_offset, meters, states_at in saves:
                    uow.state.expect(self.stream, partition, committed[partition])
                    uow.state.save(self.stream, partition, max_event_time, next_offset, meters, token, states_at)
                for source in progress:
                    uow.progress.set(source)
                uow.commit()

        try:
            (retries or self.backoff).run(write)
        except (StreamWrittenElsewhere, Unavailable) as exc:
            # After a try that failed, the store may hold this very batch: a commit that went
            # through but whose acknowledgement was lost (a connection dropped during COMMIT).
            # Processing the batch again on it, or answering 503 to a client that then sends it
            # again, would store its rejected and too-late readings twice and turn its accepted
            # ones into duplicates. A store still away after the retries is looked at once more.
            if tries < 2 and isinstance(exc, StreamWrittenElsewhere):
                raise
            if not self._store_holds(token, saves, progress, retry=isinstance(exc, StreamWrittenElsewhere)):
                raise
            log.warning("the store holds this batch already: its commit went through, its acknowledgement was lost")
        for partition, max_event_time, next_offset, _, states_at in saves:
            committed[partition] = next_offset
            if states_at is None:
                self.saved_at[partition] = (max_event_time, next_offset)
        self._release_holds()
        self.windows_emitted += batch.emitted
        for source in progress:
            self.progress_seen[source.source_key] = source

    def refuse_if_replayed_elsewhere(self) -> None:
        """Raise ReplayedElsewhere when one of the replay's progress rows (`progress_seen`) is no
        longer what this process last read or committed: another run of the replay wrote it."""
        seen = self.progress_seen
        if not seen:
            return

        def moved() -> list[str]:
            with self.uow_factory() as uow:
                return [key for key, progress in seen.items() if uow.progress.get(key) != progress]

        if self.backoff.run(moved):
            raise ReplayedElsewhere(REPLAYED_ELSEWHERE)

    def _store_holds(
        self,
        token: str,
        saves: Sequence[PartitionSave],
        progress: Sequence[SourceProgress],
        retry: bool = True,
    ) -> bool:
        """Whether the store holds this very batch: a partition header it touched carries its
        token (one transaction writes them all). A batch that touched no partition (a replay's
        position alone) is known by its progress rows. With `retry` False the store is asked
        once, and a store still away means no."""

        def read() -> bool:
            with self.uow_factory() as uow:
                if saves:
                    return bool(uow.state.commit_token(self.stream, saves[0][0]) == token)
                return bool(progress) and all(uow.progress.get(source.source_key) == source for source in progress)

        if retry:
            return bool(self.backoff.run(read))
        try:
            return read()
        except TransientStoreError:
            return False
