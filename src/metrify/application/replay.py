"""Replaying a file of readings through the stream: resumable, paced, with a running tally."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from metrify.application.network import NetworkProfile, through_network
from metrify.application.ports import SourceProgress
from metrify.application.stream import StreamPipeline, gc_paused
from metrify.domain.readings import RawReading
from metrify.domain.stream.events import (
    GapHealed,
    ReadingAccepted,
    ReadingRejected,
    ReadingTooLate,
    WindowUpdated,
)
from metrify.domain.stream.grammar import parse_timestamp


class SourceError(Exception):
    """A source that cannot be replayed at all: missing, unreadable, not UTF-8, no columns."""


class ReadingSource(Protocol):
    fingerprint: str

    def __iter__(self) -> Iterator[RawReading]: ...


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    partitions: int = 1
    speed: float | None = None
    network: NetworkProfile = field(default_factory=NetworkProfile)
    batch_size: int = 50_000

    def source_key(self, fingerprint: str) -> str:
        """Progress is kept per file content and per option that changes the arrival order."""
        n = self.network
        return f"{fingerprint}:p{self.partitions}:d{n.delay_prob}/{n.max_delay}:x{n.drop_prob}:s{n.seed}"


@dataclass(slots=True)
class Tally:
    """Counts of what a replay decided: by status, by reason, too late, gaps and windows."""

    rows: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    too_late: int = 0
    gaps: dict[tuple[str, int], bool] = field(default_factory=dict)  # (meter, from) -> open
    # Windows emitted, each once however often a LATE reading re-emits it: counted by the core
    # (StreamPipeline.windows_emitted), as no count of the events could tell a re-emission.
    windows_emitted: int = 0
    gaps_elsewhere: int = 0  # gaps counted in a progress report, not held (see `compacted`)

    def add(self, events: Iterable[Any]) -> None:
        """Count a batch's readings by outcome and follow its gaps (windows: see windows_emitted)."""
        accepted: dict[str, int] = {}
        rejected: dict[str, int] = {}
        too_late = 0
        gaps = self.gaps
        window_event = WindowUpdated
        for event in events:
            kind = type(event)
            if kind is window_event:
                continue
            if kind is ReadingAccepted:
                status = event[4]
                accepted[status] = accepted.get(status, 0) + 1
            elif kind is ReadingRejected:
                reason = event[3]
                rejected[reason] = rejected.get(reason, 0) + 1
            elif kind is ReadingTooLate:
                too_late += 1
            elif kind is GapHealed:
                gaps.pop((event.meter_id, event.missing_from), None)
            else:
                if event.previous_from is not None:
                    gaps.pop((event.meter_id, event.previous_from), None)
                gaps[(event.meter_id, event.missing_from)] = event.missing_to is None
        self.accepted.update(accepted)
        self.rejected.update(rejected)
        self.too_late += too_late

    @property
    def gaps_seen(self) -> int:
        return len(self.gaps) + self.gaps_elsewhere

    def compacted(self, gaps: bool = True) -> Tally:
        """A copy with the windows only counted (and without `gaps`, the gaps too): what one
        worker of a parallel replay reports, at the end and (lighter) while it runs."""
        return Tally(
            self.rows,
            Counter(self.accepted),
            Counter(self.rejected),
            self.too_late,
            dict(self.gaps) if gaps else {},
            self.windows_emitted,
            self.gaps_elsewhere + (0 if gaps else len(self.gaps)),
        )

    def merge(self, other: Tally) -> None:
        """Add another worker's tally: its partitions, so its meters, gaps and windows are others."""
        self.rows += other.rows
        self.accepted.update(other.accepted)
        self.rejected.update(other.rejected)
        self.too_late += other.too_late
        self.gaps.update(other.gaps)
        self.gaps_elsewhere += other.gaps_elsewhere
        self.windows_emitted += other.windows_emitted

    @property
    def gaps_open(self) -> int:
        return sum(1 for is_open in self.gaps.values() if is_open)

    @property
    def gaps_closed(self) -> int:
        return len(self.gaps) - self.gaps_open


@dataclass(slots=True)
class ReplayReport:
    tally: Tally
    skipped_rows: int
    already_done: bool
    seconds: float


class EventTimePacer:
    """Holds rows back so that event time advances at `speed` times real time."""

    def __init__(self, speed: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.speed = speed
        self.sleep = sleep
        self.origin: tuple[int, float] | None = None

    def delay_for(self, row: RawReading) -> float:
        """Seconds to wait before this row is due (the first timed row sets the origin)."""
        t = parse_timestamp(row.timestamp)
        if t is None or t > time.time_ns() // 1000:
            return 0.0  # unreadable or in the future (to be rejected): nothing to pace by
        now = time.monotonic()
        if self.origin is None:
            self.origin = (t, now)
            return 0.0
        return max(0.0, self.origin[1] + (t - self.origin[0]) / 1e6 / self.speed - now)


def partition_progress_key(source_key: str, partition: int) -> str:
    """Where one worker of a parallel replay keeps how far a partition's rows are committed."""
    return f"{source_key}#{partition}"


class _Positioned:
    """The rows of some partitions from a position on, skipping each partition's rows before its
    own position; `position` counts the rows read, skipped ones included."""

    def __init__(self, rows: Iterator[RawReading], start: int, done: dict[int, int], pipeline: StreamPipeline):
        self.rows = rows
        self.position = start
        self.done = done
        self.pipeline = pipeline

    def __iter__(self) -> Iterator[RawReading]:
        done = self.done
        routes = self.pipeline.routes  # the pipeline's cache of partition_of, read inline (hot path)
        route = self.pipeline.partition_of
        index = self.position
        for row in self.rows:
            raw_id = row[0]
            p = routes.get(raw_id) if type(raw_id) is str else None
            if p is None:
                p = route(raw_id)
            before = done.get(p)
            index += 1
            if before is not None and index > before:
                self.position = index  # read while this row is held: it counts as read
                yield row
        self.position = index


def run_replay(
    source: ReadingSource,
    pipeline: StreamPipeline,
    options: ReplayOptions,
    on_batch: Callable[[Tally], None] | None = None,
    partitions: Sequence[int] | None = None,
) -> ReplayReport:
    """Replay a source from where the last run of the same source stopped. Each batch's outcomes,
    state and position commit together, so a killed replay resumes without loss or repeat.

    `partitions` makes this one worker of a parallel replay (`--workers`): it reads every row,
    processes only those of its partitions, and keeps its position per partition (the others'
    rows are another worker's). A replay of all partitions keeps one position per source. Both
    say how far a partition's rows are committed, the higher one wins, so a replay resumes after
    any earlier one whatever its number of workers: the outcome of each partition depends only
    on the order of its own rows (DESIGN §3)."""
    started = time.monotonic()
    key = options.source_key(source.fingerprint)
    every = range(pipeline.partition_count)
    owned = list(every) if partitions is None else sorted(set(partitions))
    with pipeline.uow_factory() as uow:
        whole = uow.progress.get(key)
        apart = {p: uow.progress.get(partition_progress_key(key, p)) for p in every}
    done = {p: max(whole.rows_done if whole else 0, saved.rows_done if saved else 0) for p, saved in apart.items()}
    start = min(done[p] for p in owned) if owned else 0
    tally = Tally()
    finished = {p for p, saved in apart.items() if (whole is not None and whole.finished) or (saved and saved.finished)}
    if finished.issuperset(owned):
        return ReplayReport(tally, start, True, 0.0)
    pipeline.load()
    pipeline.progress_seen = {key: whole, **{partition_progress_key(key, p): apart[p] for p in owned}}
    # Another run of this replay may have committed between the positions read above and the state
    # loaded: its state, these positions, would have this run process its rows again.
    pipeline.refuse_if_replayed_elsewhere()
    arriving = itertools.islice(through_network(source, options.network), start, None)
    cursor = _Positioned(arriving, start, {p: done[p] for p in owned}, pipeline)
    rows: Iterator[RawReading]
    if partitions is None and all(done[p] == start for p in owned):
        rows = arriving  # every row is due: no routing, no skipping
    else:
        rows = iter(cursor)
    read = 0  # rows taken from `rows`, for the position when they are all due
    pacer = EventTimePacer(options.speed) if options.speed else None
    batch: list[RawReading] = []
    size = options.batch_size

    def flush(finished: bool, holding: bool = False) -> None:
        """Commit the batch. `holding`: the cursor has already given the row after it (which
        waits for its time), so that row is not yet done."""
        nonlocal read
        read += len(batch)
        position = cursor.position - holding if rows is not arriving else start + read
        tally.rows += len(batch)
        if partitions is None:
            progress = [SourceProgress(key, position, finished)]
        else:
            # A partition committed further than this worker's start (by a worker of an earlier
            # run) keeps its own position until this one passes it: writing the lower position
            # would have the next run process that partition's rows between the two again.
            progress = [SourceProgress(partition_progress_key(key, p), max(position, done[p]), finished) for p in owned]
        emitted = pipeline.windows_emitted
        with gc_paused():  # until the batch's events are counted and gone
            tally.add(pipeline.process(batch, progress))
            batch.clear()
        tally.windows_emitted += pipeline.windows_emitted - emitted
        if on_batch is not None:
            on_batch(tally)

    if pacer is None:
        # As fast as it can: whole batches at a time, each read and processed with the collector
        # paused (see gc_paused): reading a batch allocates a tuple per row, all alive until the
        # batch is written, and would otherwise set off a young collection every 700 of them.
        while True:
            with gc_paused():
                batch.extend(itertools.islice(rows, size))
                if len(batch) < size:
                    break
                flush(False)
    else:
        for row in rows:
            delay = pacer.delay_for(row)
            if delay > 0:
                if batch:  # what is held goes out before the wait, so it is not delayed too
                    flush(False, holding=True)
                pacer.sleep(delay)
            batch.append(row)
            if len(batch) >= size:
                flush(False)
    flush(True)
    return ReplayReport(tally, start, False, time.monotonic() - started)
