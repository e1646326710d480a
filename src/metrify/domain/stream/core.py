"""The stream core: one partition's readings, in arrival order, through the contract of DESIGN §3.

`PartitionStream.process(batch, now)` takes raw readings of one partition and returns events.
Everything is decided by event time: the wall clock `now` is read only for `future_timestamp`.
The state is plain data (`snapshot_meters`, `restore`) so that it can be saved with each commit
and restored exactly after a crash or a rebalance.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import Any

from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig
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
from metrify.domain.stream.grammar import parse_consumption, parse_timestamp
from metrify.domain.stream.meter_state import MeterState

_NO_WATERMARK = -(1 << 62)  # W before any valid reading: below every real event time


class InconsistentStreamState(Exception):
    """The saved state contradicts itself; raised instead of guessing an outcome."""


class PartitionStream:
    """The event-time processor of one partition (DESIGN §3), fed in arrival order.

    The watermark W is the largest valid event time seen minus the out-of-orderness bound B; it
    only grows. Per meter it keeps the slots and gaps a LATE reading can still touch and the
    window partials that are not final; everything older is final and is dropped (§3.7).
    """

    __slots__ = (
        "config",
        "partition",
        "max_event_time",
        "meters",
        "intervals",
        "_timers",
        "_closing",
        "_closing_ends",
        "_dirty",
    )

    def __init__(self, config: StreamConfig, partition: int = 0, intervals: Mapping[str, int] | None = None) -> None:
        self.config = config
        self.partition = partition
        self.max_event_time: int | None = None
        self.meters: dict[str, MeterState] = {}
        self.intervals: Mapping[str, int] = intervals or {}
        # One gap timer per meter: (fire_at, meter_id), never later than the meter's real due time.
        self._timers: list[tuple[int, str]] = []
        # Per window size: window end -> meters with an open partial ending there, and a heap of ends.
        self._closing: list[dict[int, list[str]]] = [{} for _ in config.windows]
        self._closing_ends: list[list[int]] = [[] for _ in config.windows]
        self._dirty: set[str] = set()

    # -- the watermark --------------------------------------------------------------------

    @property
    def watermark(self) -> int:
        """W = largest valid event time - B, or a value below any time when nothing passed yet."""
        if self.max_event_time is None:
            return _NO_WATERMARK
        return self.max_event_time - self.config.out_of_orderness

    # -- processing -------------------------------------------------------------------------

    def process(self, batch: Iterable[RawReading], now: int) -> list[Any]:
        """Run a batch through validate, watermark, lateness, slot, gaps and windows, in order."""
        events: list[Any] = []
        emit = events.append
        config = self.config
        partition = self.partition
        future_limit = now + config.future_tolerance
        max_kwh = config.max_kwh
        lateness = config.allowed_lateness
        bound = config.out_of_orderness
        meters = self.meters
        dirty = self._dirty
        watermark = self.watermark
        for raw in batch:
            raw_id = raw[0]
            meter_id = raw_id.strip() if type(raw_id) is str else ("" if raw_id is None else str(raw_id).strip())
            # Validation, in the contract's order: the first failure is the reason (§3.1).
            if not meter_id:
                emit(
                    ReadingRejected("", raw[1], raw[2], "missing_meter_id", partition, parse_timestamp(raw[1]), raw[4])
                )
                continue
            t = parse_timestamp(raw[1])
            if t is None:
                emit(ReadingRejected(meter_id, raw[1], raw[2], "invalid_timestamp", partition, None, raw[4]))
                continue
            if t > future_limit:
                emit(ReadingRejected(meter_id, raw[1], raw[2], "future_timestamp", partition, t, raw[4]))
                continue
            kwh = parse_consumption(raw[2])
            if kwh is None:
                emit(ReadingRejected(meter_id, raw[1], raw[2], "invalid_consumption", partition, t, raw[4]))
                continue
            if kwh < 0:
                emit(ReadingRejected(meter_id, raw[1], raw[2], "negative_consumption", partition, t, raw[4]))
                continue
            if kwh > max_kwh:
                emit(ReadingRejected(meter_id, raw[1], raw[2], "out_of_range", partition, t, raw[4]))
                continue
            # Lateness against W as it was before this reading (§3.2-3.3).
            if t >= watermark:
                status = "ON_TIME"
            elif t >= watermark - lateness:
                status = "LATE"
            else:
                emit(ReadingTooLate(meter_id, t, kwh, watermark - t, partition, raw[4]))
                continue
            state = meters.get(meter_id)
            if state is None:
                state = self._new_meter(meter_id)
            interval = state.interval
            slot = (2 * t + interval) // (2 * interval) * interval
            if not self._fill(state, meter_id, slot, watermark, emit):
                emit(ReadingRejected(meter_id, raw[1], raw[2], "duplicate", partition, t, raw[4]))
            else:
                emit(ReadingAccepted(meter_id, t, slot, kwh, status, partition, raw[3]))
                self._add_to_windows(state, meter_id, slot, kwh, watermark, emit)
                dirty.add(meter_id)
            if self.max_event_time is None or t > self.max_event_time:
                self.max_event_time = t
                watermark = t - bound
                self._advance(watermark, emit)
        return events

    def _new_meter(self, meter_id: str) -> MeterState:
        state = MeterState(self.intervals.get(meter_id, self.config.interval))
        self.meters[meter_id] = state
        return state

    # -- slots and gaps (§3.4-3.5) ---------------------------------------------------------------

    def _fill(self, state: MeterState, meter_id: str, slot: int, watermark: int, emit: Any) -> bool:
        """Fill a slot; False when it is already filled (a duplicate: the first one wins)."""
        interval = state.interval
        if state.last is None:
            state.first = state.last = slot
            state.mask = 1
            grace = self.config.gap_grace
            if slot + interval + grace <= watermark:
                # A meter first heard through a LATE reading may already be silent after it.
                state.open_count = (watermark - grace - slot) // interval
                emit(GapOpened(meter_id, slot + interval, None, state.open_count))
            heapq.heappush(self._timers, (slot + (state.open_count + 1) * interval + grace, meter_id))
            return True
        last = state.last
        if slot > last:
            self._fill_after_last(state, meter_id, slot, emit)
            return True
        if state.mask >> ((last - slot) // interval) & 1:
            return False
        state.mask |= 1 << ((last - slot) // interval)
        if slot < state.first:  # type: ignore[operator]
            # A LATE reading before the first filled slot: the slots between become a gap.
            if slot + interval < state.first:  # type: ignore[operator]
                gap_from = slot + interval
                state.set_gap(gap_from, state.first)  # type: ignore[arg-type]
                emit(GapOpened(meter_id, gap_from, state.first, (state.first - gap_from) // interval))  # type: ignore[operator]
            state.first = slot
            return True
        self._heal(state, meter_id, slot, emit)
        return True

    def _fill_after_last(self, state: MeterState, meter_id: str, slot: int, emit: Any) -> None:
        """A slot after the last filled one closes (or splits) the open gap (§3.5)."""
        interval = state.interval
        last: int = state.last  # type: ignore[assignment]
        open_count = state.open_count
        gap_from = last + interval
        if slot == gap_from:
            if open_count > 1:
                emit(GapChanged(meter_id, slot + interval, None, open_count - 1, gap_from))
            elif open_count == 1:
                emit(GapHealed(meter_id, gap_from))
            remaining = open_count - 1 if open_count else 0
        else:
            skipped = (slot - gap_from) // interval
            state.set_gap(gap_from, slot)
            if open_count == 0:
                emit(GapOpened(meter_id, gap_from, slot, skipped))
                remaining = 0
            else:
                emit(GapClosed(meter_id, gap_from, slot, skipped))
                remaining = open_count - skipped - 1 if slot <= last + open_count * interval else 0
                if remaining > 0:
                    emit(GapOpened(meter_id, slot + interval, None, remaining))
        state.shift_to(slot, self.config.allowed_lateness + self.config.out_of_orderness)
        state.open_count = remaining

    def _heal(self, state: MeterState, meter_id: str, slot: int, emit: Any) -> None:
        """A LATE reading inside a closed gap shrinks it, splits it in two, or makes it disappear."""
        gap = state.gap_containing(slot)
        if gap is None:
            raise InconsistentStreamState(f"slot {slot} of meter {meter_id!r} is neither filled nor missing")
        gap_from, gap_to = gap
        interval = state.interval
        state.drop_gap(gap_from)
        left = slot > gap_from
        right_from = slot + interval
        if left:
            state.set_gap(gap_from, slot)
            emit(GapChanged(meter_id, gap_from, slot, (slot - gap_from) // interval, None))
        if right_from < gap_to:
            state.set_gap(right_from, gap_to)
            count = (gap_to - right_from) // interval
            if left:
                emit(GapOpened(meter_id, right_from, gap_to, count))
            else:
                emit(GapChanged(meter_id, right_from, gap_to, count, gap_from))
        elif not left:
            emit(GapHealed(meter_id, gap_from))

    # -- windows (§3.6) ----------------------------------------------------------------------

    def _add_to_windows(
        self, state: MeterState, meter_id: str, slot: int, kwh: float, watermark: int, emit: Any
    ) -> None:
        windows = state.windows
        for index, size in enumerate(self.config.windows):
            # Keyed by the window's number, not its start: starts are multiples of large powers of
            # two, and such keys collide in a dict's hash table.
            number = slot // size
            start = number * size
            key = (number << 3) | index
            partial = windows.get(key)
            if partial is None:
                partial = windows[key] = [1, kwh, kwh, kwh]
                end = start + size
                if end > watermark:
                    bucket = self._closing[index].get(end)
                    if bucket is None:
                        self._closing[index][end] = [meter_id]
                        heapq.heappush(self._closing_ends[index], end)
                    else:
                        bucket.append(meter_id)
                    continue
            else:
                partial[0] += 1
                partial[1] += kwh
                if kwh < partial[2]:
                    partial[2] = kwh
                if kwh > partial[3]:
                    partial[3] = kwh
                if start + size > watermark:
                    continue
            # The window is already closed: emit it now (first reading after close, or a change).
            emit(WindowUpdated(meter_id, size, start, partial[0], partial[1], partial[2], partial[3]))

    # -- event-time timers ---------------------------------------------------------------------

    def _advance(self, watermark: int, emit: Any) -> None:
        """W moved: close the windows that end at or before it and open or grow silent meters' gaps."""
        for index, ends in enumerate(self._closing_ends):
            if ends and ends[0] <= watermark:
                size = self.config.windows[index]
                closing = self._closing[index]
                while ends and ends[0] <= watermark:
                    end = heapq.heappop(ends)
                    key = ((end // size - 1) << 3) | index
                    for meter_id in closing.pop(end):
                        state = self.meters.get(meter_id)
                        partial = state.windows.get(key) if state is not None else None
                        if partial is not None:
                            emit(WindowUpdated(meter_id, size, end - size, *partial))
        timers = self._timers
        if not timers or timers[0][0] > watermark:
            return
        grace = self.config.gap_grace
        meters = self.meters
        while timers and timers[0][0] <= watermark:
            _, meter_id = heapq.heappop(timers)
            state = meters[meter_id]
            interval = state.interval
            last: int = state.last  # type: ignore[assignment]
            due = last + (state.open_count + 1) * interval + grace
            if due <= watermark:
                # Silence: slot s after the last filled slot is missing once s + G <= W (§3.5).
                count = (watermark - grace - last) // interval
                previous = state.open_count
                state.open_count = count
                self._dirty.add(meter_id)
                if previous == 0:
                    emit(GapOpened(meter_id, last + interval, None, count))
                else:
                    emit(GapChanged(meter_id, last + interval, None, count, None))
                due = last + (count + 1) * interval + grace
            heapq.heappush(timers, (due, meter_id))

    # -- bounded state (§3.7) --------------------------------------------------------------------

    def take_dirty(self) -> list[str]:
        """Meters changed since the last call, pruned of what has become final: save these."""
        watermark = self.watermark
        config = self.config
        dirty = sorted(self._dirty)
        self._dirty = set()
        for meter_id in dirty:
            self.meters[meter_id].prune(watermark, config)
        return dirty

    def snapshot_meter(self, meter_id: str) -> list[Any]:
        return self.meters[meter_id].to_data()

    def restore(self, max_event_time: int | None, meters: Mapping[str, list[Any]]) -> None:
        """Load a saved state: the watermark and each meter's plain data; timers are rebuilt."""
        self.max_event_time = max_event_time
        self.meters = {meter_id: MeterState.from_data(data) for meter_id, data in meters.items()}
        self._dirty = set()
        watermark = self.watermark
        grace = self.config.gap_grace
        self._timers = []
        self._closing = [{} for _ in self.config.windows]
        self._closing_ends = [[] for _ in self.config.windows]
        for meter_id, state in self.meters.items():
            if state.last is not None:
                due = state.last + (state.open_count + 1) * state.interval + grace
                self._timers.append((due, meter_id))
            for key in state.windows:
                index = key & 7
                end = ((key >> 3) + 1) * self.config.windows[index]
                if end > watermark:
                    bucket = self._closing[index].setdefault(end, [])
                    if not bucket:
                        self._closing_ends[index].append(end)
                    bucket.append(meter_id)
        heapq.heapify(self._timers)
        for ends in self._closing_ends:
            heapq.heapify(ends)
