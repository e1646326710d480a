"""The stream core: one partition's readings, in arrival order, through the contract of DESIGN §3.

`PartitionStream.process(batch, now[, first_offset])` takes raw readings of one partition and
returns events.
Everything is decided by event time: the wall clock `now` is read only for `future_timestamp`.
The state is plain data (`snapshot_meter`, `restore`) so that it can be saved with each commit
and restored exactly after a crash or a rebalance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from heapq import heappop, heappush
from typing import Any, cast

from metrify.domain.readings import RawReading
from metrify.domain.stream import COMPILED  # this process runs the mypyc build (build_native.sh)
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
from metrify.domain.stream.grammar import (
    CONSUMPTIONS,
    TIMESTAMPS,
    parse_consumption,
    parse_timestamp,
    parse_unseen_timestamp_text,
    text_above,
)
from metrify.domain.stream.meter_state import (
    NO_HOLD,
    WINDOW_KEYS,
    WINDOW_KEYS_LIMIT,
    MeterState,
    Partial,
    slots_in_window,
)

_NO_WATERMARK = -(1 << 62)  # W before any valid reading: below every real event time
# Builds an event from a ready tuple without the NamedTuple's Python-level __new__ (hot path).
_new: Any = tuple.__new__


def _due(state: MeterState, grace: int) -> int:
    """When the meter's next slot goes missing: last + (open + 1) * I + G (§3.5). The product is
    only taken when a gap is open: a product of operands >= 2**31 leaves mypyc's fast path."""
    last = state.last
    if last is None:
        raise InconsistentStreamState("a timer for a meter that has no slot")
    count = state.open_count
    if count == 0:
        return last + state.interval + grace
    return last + (count + 1) * state.interval + grace


def _position(raw: RawReading, numbered: bool, offset: int) -> int:
    """A reading's input offset: its number in a numbered batch, else its own. Read only for the
    readings whose events name it (rejected, too late), not for every reading."""
    return offset if numbered else raw[4]


class InconsistentStreamState(Exception):
    """The saved state contradicts itself; raised instead of guessing an outcome."""


class PartitionStream:
    """The event-time processor of one partition (DESIGN §3), fed in arrival order.

    The watermark W is the largest valid event time seen minus the out-of-orderness bound B; it
    only grows. Per meter it keeps the slots and gaps a LATE reading can still touch and the
    window partials that can still change; everything older is final and is dropped (§3.7).

    Written for the hot path (STYLE "Hot paths"): `process` inlines the common case (a valid
    reading for the slot right after the meter's last one), events are built with
    `tuple.__new__`, and timers are kept in buckets by due time, because due times are aligned
    to slots and most meters share them.
    """

    __slots__ = (
        "config",
        "partition",
        "max_event_time",
        "meters",
        "intervals",
        "_timer_at",
        "_timer_dues",
        "_closing",
        "_closing_ends",
        "_windows",
        "_keep_masks",
        "_dirty",
        "windows_emitted",
        "hold",
        "hold_from",
        "_closings",
    )

    def __init__(self, config: StreamConfig, partition: int = 0, intervals: Mapping[str, int] | None = None) -> None:
        self.config = config
        self.partition = partition
        self.max_event_time: int | None = None
        self.meters: dict[str, MeterState] = {}
        self.intervals: Mapping[str, int] = intervals or {}
        self._dirty: set[str] = set()
        self._keep_masks: dict[int, int] = {}
        # Windows emitted for the first time by this object: at their close, or at their first
        # reading after it (a LATE reading changing an emitted window re-emits it: not counted).
        self.windows_emitted = 0
        # Holding (a writer that stores closed windows over later batches, see
        # StreamPipeline's window_writes): a closed window stays in its meter's state, which is
        # then its durable record, until pruning finds it ends before `hold_from` (the earliest
        # end among the windows not stored yet; NO_HOLD when none is waiting).
        self.hold = False
        self.hold_from = NO_HOLD
        # Holding, a window's close makes no event: (end, window index, meters) waits here for
        # take_closings, and its events are made by closed_values when it is stored, at each
        # meter's value then. 10,000 meters' windows closing at one watermark cost ~1 us each to
        # emit, all in the batch that moved it; held, they are stored over the next batches anyway.
        self._closings: list[tuple[int, int, list[str]]] = []
        self._reset_timers()

    def _reset_timers(self) -> None:
        # Gap timers: fire time -> meters, and a heap of the distinct fire times. One timer per
        # meter, never later than the meter's real due time.
        self._timer_at: dict[int, list[str]] = {}
        self._timer_dues: list[int] = []
        # Per window size: window end -> meters with an open partial ending there, and a heap of ends.
        self._closing: list[dict[int, list[str]]] = [{} for _ in self.config.windows]
        self._closing_ends: list[list[int]] = [[] for _ in self.config.windows]
        # (index, size, closing, ends, the size as one object for the events)
        self._windows: tuple[tuple[int, int, dict[int, list[str]], list[int], object], ...] = tuple(
            (index, size, self._closing[index], self._closing_ends[index], size)
            for index, size in enumerate(self.config.windows)
        )

    # -- the watermark --------------------------------------------------------------------

    @property
    def watermark(self) -> int:
        """W = largest valid event time - B, or a value below any time when nothing passed yet."""
        if self.max_event_time is None:
            return _NO_WATERMARK
        return self.max_event_time - self.config.out_of_orderness

    # -- processing -------------------------------------------------------------------------

    def process(self, batch: Iterable[RawReading], now: int, first_offset: int | None = None) -> list[Any]:
        """Run a batch through validate, watermark, lateness, slot, gaps and windows, in order.

        A reading's input offset (its `position`) names it in the rejected and too-late events.
        With `first_offset` the batch's readings are numbered first_offset, first_offset + 1, ...
        in order and their own positions are not read: a caller that numbers its rows need not
        copy every row to number it."""
        events: list[Any] = []
        emit = events.append
        # Module names bound once: compiled, each use of a module-level name is a dict lookup.
        new = _new
        accepted_event: Any = ReadingAccepted
        too_late_event: Any = ReadingTooLate
        window_event: Any = WindowUpdated
        config = self.config
        partition = self.partition
        future_limit = now + config.future_tolerance
        max_kwh = config.max_kwh
        lateness = config.allowed_lateness
        bound = config.out_of_orderness
        meters = self.meters
        dirty = self._dirty
        keep_masks = self._keep_masks
        keep_interval = 0  # the interval whose mask `keep` holds
        keep = 0
        compiled = COMPILED
        windows_spec = self._windows
        timestamps = TIMESTAMPS
        consumptions = CONSUMPTIONS
        window_keys = WINDOW_KEYS
        if len(window_keys) > WINDOW_KEYS_LIMIT:
            window_keys.clear()
        max_event_time = self.max_event_time
        watermark = self.watermark
        late_from = watermark - lateness
        numbered = first_offset is not None
        next_offset: int = 0 if first_offset is None else first_offset
        first_emitted = 0  # windows emitted here for the first time (see windows_emitted)
        for raw in batch:
            offset = next_offset  # this reading's, when the batch is numbered
            next_offset += 1
            raw_id = raw[0]
            if isinstance(raw_id, str):
                meter_id = raw_id.strip()
            else:
                meter_id = "" if raw_id is None else str(raw_id).strip()
            # Validation, in the contract's order: the first failure is the reason (§3.1).
            if not meter_id:
                stamp_read = parse_timestamp(raw[1])
                emit(
                    ReadingRejected(
                        "", raw[1], raw[2], "missing_meter_id", partition, stamp_read, _position(raw, numbered, offset)
                    )
                )
                continue
            text = raw[1]
            t: int | None
            if isinstance(text, str):
                t = timestamps.get(text)
                if t is None:
                    t = parse_unseen_timestamp_text(text)
            else:
                t = parse_timestamp(text)
            # The event time and kWh go into events as the objects they are: compiled, a value
            # read back from its machine form would be a new object each time.
            stamp: object = t
            if t is None:
                emit(
                    ReadingRejected(
                        meter_id, raw[1], raw[2], "invalid_timestamp", partition, None, _position(raw, numbered, offset)
                    )
                )
                continue
            if t > future_limit:
                emit(
                    ReadingRejected(
                        meter_id, raw[1], raw[2], "future_timestamp", partition, t, _position(raw, numbered, offset)
                    )
                )
                continue
            text = raw[2]
            energy: object = consumptions.get(text) if isinstance(text, str) else None
            if energy is None:
                energy = parse_consumption(text)
                if energy is None:
                    emit(
                        ReadingRejected(
                            meter_id,
                            raw[1],
                            raw[2],
                            "invalid_consumption",
                            partition,
                            t,
                            _position(raw, numbered, offset),
                        )
                    )
                    continue
            kwh = cast(float, energy)
            if not 0.0 <= kwh <= max_kwh or (kwh == max_kwh and text_above(raw[2], max_kwh)):
                reason = "negative_consumption" if kwh < 0 else "out_of_range"
                emit(ReadingRejected(meter_id, raw[1], raw[2], reason, partition, t, _position(raw, numbered, offset)))
                continue
            # Lateness against W as it was before this reading (§3.2-3.3).
            if t >= watermark:
                status = "ON_TIME"
            elif t >= late_from:
                status = "LATE"
            else:
                emit(
                    new(
                        too_late_event,
                        (meter_id, stamp, energy, watermark - t, partition, _position(raw, numbered, offset)),
                    )
                )
                continue
            state = meters.get(meter_id)
            if state is None:
                state = self._new_meter(meter_id)
            interval = state.interval
            # The nearest slot, halves rounding up: floor((t + I/2) / I) * I, written with a
            # remainder because a product of operands >= 2**31 leaves mypyc's fast integer path.
            slot = t + (interval >> 1)
            slot -= slot % interval
            slot_object: object = slot  # one object for the state and the event
            last = state.last
            if last is not None and slot - last == interval and state.open_count == 0:
                # The common case: the slot right after the last filled one, no open gap.
                if interval != keep_interval:  # meters nearly all share one interval
                    found = keep_masks.get(interval)
                    keep = self._keep_mask(interval) if found is None else found
                    keep_interval = interval
                state.mask = ((state.mask << 1) | 1) & keep
                state.last = cast("int | None", slot_object)
            elif not self._fill(state, meter_id, slot, watermark, events):
                emit(
                    ReadingRejected(
                        meter_id, raw[1], raw[2], "duplicate", partition, t, _position(raw, numbered, offset)
                    )
                )
                if max_event_time is None or t > max_event_time:
                    self.max_event_time = max_event_time = cast("int | None", stamp)
                    watermark = t - bound
                    late_from = watermark - lateness
                    self._advance(watermark, events)
                continue
            emit(new(accepted_event, (meter_id, stamp, slot_object, energy, status, partition, raw[3])))
            # Tumbling windows by slot (§3.6), inline.
            windows = state.windows
            for index, size, closing, ends, size_object in windows_spec:
                start = slot - slot % size
                end = start + size
                key = ((start // size) << 3) | index
                partial: Partial | None = None
                for candidate in windows:
                    if candidate.key == key:
                        partial = candidate
                        break
                if partial is None:
                    if not compiled:  # compiled, a Partial holds its key as a machine integer
                        key = window_keys.setdefault(key, key)  # one int object per window, not per meter
                    partial = Partial(key, 1, kwh, kwh, kwh)
                    windows.append(partial)
                    if end > watermark:
                        bucket = closing.get(end)
                        if bucket is None:
                            closing[end] = [meter_id]
                            heappush(ends, end)
                        else:
                            bucket.append(meter_id)
                        continue
                    first_emitted += 1
                else:
                    partial.count += 1
                    partial.total += kwh
                    if kwh < partial.low:
                        partial.low = kwh
                    if kwh > partial.high:
                        partial.high = kwh
                    if end > watermark:
                        continue
                # The window is already closed: emit it now (first reading after close, or a change).
                emit(new(window_event, partial.updated(meter_id, size_object, start)))
            dirty.add(meter_id)
            if max_event_time is None or t > max_event_time:
                self.max_event_time = max_event_time = cast("int | None", stamp)
                watermark = t - bound
                late_from = watermark - lateness
                self._advance(watermark, events)
        self.windows_emitted += first_emitted
        return events

    def _new_meter(self, meter_id: str) -> MeterState:
        state = MeterState(self.intervals.get(meter_id, self.config.interval))
        self.meters[meter_id] = state
        return state

    def _keep_mask(self, interval: int) -> int:
        """The bits of the filled-slot mask a valid reading can reach (see MeterState.shift_to)."""
        keep = (self.config.allowed_lateness + self.config.out_of_orderness) // interval + 3
        mask = self._keep_masks[interval] = (1 << keep) - 1
        return mask

    def _set_timer(self, due: int, meter_id: str) -> None:
        bucket = self._timer_at.get(due)
        if bucket is None:
            self._timer_at[due] = [meter_id]
            heappush(self._timer_dues, due)
        else:
            bucket.append(meter_id)

    # -- slots and gaps (§3.4-3.5) ---------------------------------------------------------------

    def _fill(self, state: MeterState, meter_id: str, slot: int, watermark: int, events: list[Any]) -> bool:
        """Fill a slot; False when it is already filled (a duplicate: the first one wins)."""
        interval = state.interval
        if state.last is None:
            state.first = state.last = slot
            state.mask = 1
            grace = self.config.gap_grace
            if slot + interval + grace <= watermark:
                # A meter first heard through a LATE reading may already be silent after it.
                state.open_count = (watermark - grace - slot) // interval
                events.append(GapOpened(meter_id, slot + interval, None, state.open_count))
            self._set_timer(_due(state, grace), meter_id)
            return True
        last = state.last
        if slot > last:
            self._fill_after_last(state, meter_id, slot, events)
            return True
        if state.mask >> ((last - slot) // interval) & 1:
            return False
        state.mask |= 1 << ((last - slot) // interval)
        if slot < state.first:  # type: ignore[operator]
            # A LATE reading before the first filled slot: the slots between become a gap.
            if slot + interval < state.first:  # type: ignore[operator]
                gap_from = slot + interval
                state.set_gap(gap_from, state.first)  # type: ignore[arg-type]
                events.append(GapOpened(meter_id, gap_from, state.first, (state.first - gap_from) // interval))  # type: ignore[operator]
            state.first = slot
            return True
        self._heal(state, meter_id, slot, events)
        return True

    def _fill_after_last(self, state: MeterState, meter_id: str, slot: int, events: list[Any]) -> None:
        """A slot after the last filled one closes (or splits) the open gap (§3.5)."""
        interval = state.interval
        last: int = state.last  # type: ignore[assignment]
        open_count = state.open_count
        gap_from = last + interval
        if slot == gap_from:
            if open_count > 1:
                events.append(GapChanged(meter_id, slot + interval, None, open_count - 1, gap_from))
            elif open_count == 1:
                events.append(GapHealed(meter_id, gap_from))
            remaining = open_count - 1 if open_count else 0
        else:
            skipped = (slot - gap_from) // interval
            state.set_gap(gap_from, slot)
            if open_count == 0:
                events.append(GapOpened(meter_id, gap_from, slot, skipped))
                remaining = 0
            else:
                events.append(GapClosed(meter_id, gap_from, slot, skipped))
                remaining = open_count - skipped - 1 if slot <= last + open_count * interval else 0
                if remaining > 0:
                    events.append(GapOpened(meter_id, slot + interval, None, remaining))
        state.shift_to(slot, self.config.allowed_lateness + self.config.out_of_orderness)
        state.open_count = remaining

    def _heal(self, state: MeterState, meter_id: str, slot: int, events: list[Any]) -> None:
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
            events.append(GapChanged(meter_id, gap_from, slot, (slot - gap_from) // interval, None))
        if right_from < gap_to:
            state.set_gap(right_from, gap_to)
            count = (gap_to - right_from) // interval
            if left:
                events.append(GapOpened(meter_id, right_from, gap_to, count))
            else:
                events.append(GapChanged(meter_id, right_from, gap_to, count, gap_from))
        elif not left:
            events.append(GapHealed(meter_id, gap_from))

    # -- event-time timers ---------------------------------------------------------------------

    def _advance(self, watermark: int, events: list[Any]) -> None:
        """W moved: close the windows that end at or before it and open or grow silent meters' gaps."""
        new = _new
        window_event: Any = WindowUpdated
        closed = 0
        hold = self.hold
        for index, size, closing, ends, size_object in self._windows:
            if ends and ends[0] <= watermark:
                meters = self.meters
                while ends and ends[0] <= watermark:
                    end = heappop(ends)
                    if hold:
                        bucket = closing.pop(end)
                        self._closings.append((end, index, bucket))
                        closed += len(bucket)
                        continue
                    start = end - size
                    key = ((end // size - 1) << 3) | index
                    for meter_id in closing.pop(end):
                        state = meters.get(meter_id)
                        if state is None:
                            continue
                        windows = state.windows
                        for position, partial in enumerate(windows):
                            if partial.key == key:
                                events.append(new(window_event, partial.updated(meter_id, size_object, start)))
                                closed += 1
                                interval = state.interval
                                if partial.count == (1 if size <= interval else slots_in_window(start, size, interval)):
                                    # Every slot filled: it cannot change again (see MeterState.prune).
                                    windows.pop(position)
                                break
        self.windows_emitted += closed
        dues = self._timer_dues
        if not dues or dues[0] > watermark:
            return
        grace = self.config.gap_grace
        meters = self.meters
        timer_at = self._timer_at
        fired: list[tuple[int, str]] = []
        while dues and dues[0] <= watermark:
            due = heappop(dues)
            for meter_id in timer_at.pop(due):
                state = meters[meter_id]
                real_due = _due(state, grace)
                if real_due <= watermark:
                    fired.append((due, meter_id))
                else:
                    self._set_timer(real_due, meter_id)
        # Fire in (due, meter) order, as one heap of (due, meter) timers would.
        fired.sort()
        for _, meter_id in fired:
            # Silence: slot s after the last filled slot is missing once s + G <= W (§3.5).
            state = meters[meter_id]
            interval = state.interval
            last: int = state.last  # type: ignore[assignment]
            count = (watermark - grace - last) // interval
            previous = state.open_count
            state.open_count = count
            self._dirty.add(meter_id)
            if previous == 0:
                events.append(GapOpened(meter_id, last + interval, None, count))
            else:
                events.append(GapChanged(meter_id, last + interval, None, count, None))
            self._set_timer(_due(state, grace), meter_id)

    # -- bounded state (§3.7) --------------------------------------------------------------------

    def take_dirty(self) -> list[str]:
        """Meters changed since the last call, pruned of what can no longer change: save these."""
        watermark = self.watermark
        config = self.config
        meters = self.meters
        dirty = sorted(self._dirty)
        self._dirty = set()
        hold_from = self.hold_from
        for meter_id in dirty:
            meters[meter_id].prune(watermark, config, hold_from)
        return dirty

    def take_closings(self) -> list[tuple[int, int, list[str]]]:
        """The windows closed since the last call while holding: (end, window index, meters)."""
        closings = self._closings
        self._closings = []
        return closings

    def closed_values(self, end: int, index: int, meter_ids: list[str]) -> list[Any]:
        """A WindowUpdated for the window of size `index` ending at `end` of each of these meters,
        at its current value (a LATE reading may have changed it since its close); none for a
        meter whose state no longer holds it."""
        size = self.config.windows[index]
        size_object: object = self._windows[index][4]
        start = end - size
        key = ((end // size - 1) << 3) | index
        new = _new
        window_event: Any = WindowUpdated
        meters = self.meters
        events: list[Any] = []
        for meter_id in meter_ids:
            state = meters.get(meter_id)
            if state is None:
                continue
            for partial in state.windows:
                if partial.key == key:
                    events.append(new(window_event, partial.updated(meter_id, size_object, start)))
                    break
        return events

    def closed_windows(self) -> list[Any]:
        """A WindowUpdated for every closed window the meters' state still holds, at its current
        value: what a writer that stores windows behind the batches re-emits when it loads a
        stream (the value of each, emitted already, may not have been stored)."""
        watermark = self.watermark
        sizes = self.config.windows
        new = _new
        window_event: Any = WindowUpdated
        events: list[Any] = []
        for meter_id in sorted(self.meters):
            for partial in self.meters[meter_id].windows:
                key = partial.key
                size = sizes[key & 7]
                start = (key >> 3) * size
                if start + size <= watermark:
                    events.append(new(window_event, partial.updated(meter_id, size, start)))
        return events

    def snapshot_meter(self, meter_id: str) -> list[Any]:
        return self.meters[meter_id].to_data()

    def snapshot_meters(self, meter_ids: list[str]) -> dict[str, list[Any]]:
        """The plain data of these meters' states (what take_dirty returned), by meter."""
        meters = self.meters
        return {meter_id: meters[meter_id].to_data() for meter_id in meter_ids}

    def restore(self, max_event_time: int | None, meters: Mapping[str, list[Any]]) -> None:
        """Load a saved state: the watermark and each meter's plain data; timers are rebuilt."""
        self.max_event_time = max_event_time
        self.meters = {meter_id: MeterState.from_data(data) for meter_id, data in meters.items()}
        self._dirty = set()
        self._closings = []
        watermark = self.watermark
        grace = self.config.gap_grace
        sizes = self.config.windows
        self._reset_timers()
        for meter_id, state in self.meters.items():
            if state.last is not None:
                self._set_timer(_due(state, grace), meter_id)
            for partial in state.windows:
                key = partial.key
                index = key & 7
                end = ((key >> 3) + 1) * sizes[index]
                if end > watermark:
                    bucket = self._closing[index].get(end)
                    if bucket is None:
                        self._closing[index][end] = [meter_id]
                        heappush(self._closing_ends[index], end)
                    else:
                        bucket.append(meter_id)
