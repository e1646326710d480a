"""Replaying a file of readings through the stream: resumable, paced, with a running tally."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
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
    # Windows emitted (once each, however often re-emitted): those LATE readings can still change
    # are kept by key, grouped by the time they end; the others are only counted, so memory stays
    # bounded however long the replay.
    windows: dict[int, set[tuple[str, int, int]]] = field(default_factory=dict)  # end -> keys
    windows_settled: int = 0

    @property
    def windows_held(self) -> int:
        return sum(map(len, self.windows.values()))

    @property
    def windows_emitted(self) -> int:
        return self.windows_settled + self.windows_held

    def settle(self, horizon: int | None) -> None:
        """Forget the keys of windows that end at or before `horizon` (no reading can reach them:
        it would be too late), keeping their count. Whole groups go: ends are few (window sizes
        times the ends within the allowed lateness), so this costs next to nothing per batch."""
        if horizon is None:
            return
        for end in [end for end in self.windows if end <= horizon]:
            self.windows_settled += len(self.windows.pop(end))

    def add(self, events: Iterable[Any]) -> None:
        accepted: dict[str, int] = {}
        rejected: dict[str, int] = {}
        too_late = 0
        windows = self.windows
        gaps = self.gaps
        for event in events:
            kind = type(event)
            if kind is WindowUpdated:
                end = event[1] + event[2]  # window + window_start
                held = windows.get(end)
                if held is None:
                    windows[end] = {event[:3]}  # (meter_id, window, window_start)
                else:
                    held.add(event[:3])
            elif kind is ReadingAccepted:
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


def run_replay(
    source: ReadingSource,
    pipeline: StreamPipeline,
    options: ReplayOptions,
    on_batch: Callable[[Tally], None] | None = None,
) -> ReplayReport:
    """Replay a source from where the last run of the same source stopped. Each batch's outcomes,
    state and row count commit together, so a killed replay resumes without loss or repeat."""
    started = time.monotonic()
    key = options.source_key(source.fingerprint)
    with pipeline.uow_factory() as uow:
        progress = uow.progress.get(key)
    tally = Tally()
    if progress is not None and progress.finished:
        return ReplayReport(tally, progress.rows_done, True, 0.0)
    done = progress.rows_done if progress is not None else 0
    pipeline.load()
    rows = itertools.islice(through_network(source, options.network), done, None)
    pacer = EventTimePacer(options.speed) if options.speed else None
    batch: list[RawReading] = []
    size = options.batch_size

    def flush(finished: bool) -> None:
        nonlocal done
        done += len(batch)
        tally.rows += len(batch)
        with gc_paused():  # until the batch's events are counted and gone
            tally.add(pipeline.process(batch, SourceProgress(key, done, finished)))
            batch.clear()
        tally.settle(pipeline.late_horizon())
        if on_batch is not None:
            on_batch(tally)

    if pacer is None:
        # As fast as it can: whole batches at a time.
        while True:
            batch.extend(itertools.islice(rows, size))
            if len(batch) < size:
                break
            flush(False)
    else:
        for row in rows:
            delay = pacer.delay_for(row)
            if delay > 0:
                if batch:  # what is held goes out before the wait, so it is not delayed too
                    flush(False)
                pacer.sleep(delay)
            batch.append(row)
            if len(batch) >= size:
                flush(False)
    flush(True)
    return ReplayReport(tally, done - tally.rows, False, time.monotonic() - started)
