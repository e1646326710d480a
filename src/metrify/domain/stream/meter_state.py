"""One meter's stream state: the little that a LATE reading can still change (DESIGN §3.7)."""

from __future__ import annotations

from typing import Any

from metrify.domain.stream.config import StreamConfig


class Partial:
    """A tumbling window's running aggregate: count, sum, min and max of its readings' kWh, under
    its key (`window number << 3 | window index`, number = start // size)."""

    __slots__ = ("key", "count", "total", "low", "high")

    def __init__(self, key: int, count: int, total: float, low: float, high: float) -> None:
        self.key = key
        self.count = count
        self.total = total
        self.low = low
        self.high = high

    def updated(self, meter_id: str, size: object, start: int) -> tuple[object, ...]:
        """The fields of its WindowUpdated: (meter_id, window, window_start, count, sum, min, max).
        A window of one reading shares one float object for its sum, min and max."""
        total: object = self.total
        if self.count == 1:
            return (meter_id, size, start, 1, total, total, total)
        return (meter_id, size, start, self.count, total, self.low, self.high)


# `hold_from` when nothing is held: no window ends this late.
NO_HOLD = 1 << 62


def _end(partial: Partial, sizes: tuple[int, ...]) -> int:
    """The end of a partial's window (its key: window number << 3 | window index)."""
    key = partial.key
    size = sizes[key & 7]
    return ((key >> 3) + 1) * size


# Window keys, one int object per window for all meters (a process-wide memo, cleared when large).
WINDOW_KEYS: dict[int, int] = {}
WINDOW_KEYS_LIMIT = 1 << 16


def slots_in_window(start: int, size: int, interval: int) -> int:
    """How many slots (multiples of the interval) the window [start, start + size) holds."""
    return (-start) // interval - (-(start + size)) // interval


class MeterState:
    """Filled slots as a bit mask counted back from the last filled slot (bit k = slot
    `last - k*interval`), the closed gaps still in reach, the open gap's length, and the window
    partials that can still change: a short list (three or four), searched by key, which costs a
    third of a dict's memory. Slots, gaps and windows at or before W - L - I are final and dropped."""

    __slots__ = ("interval", "first", "last", "mask", "open_count", "gaps", "windows")

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.first: int | None = None
        self.last: int | None = None
        self.mask = 0
        self.open_count = 0  # slots in the open gap, which starts at last + interval
        self.gaps: dict[int, int] | None = None  # closed gaps: missing_from -> missing_to
        self.windows: list[Partial] = []

    def shift_to(self, slot: int, reach: int) -> None:
        """Make `slot` the last filled slot, keeping only the bits a valid reading can reach:
        a LATE reading lies at most L + B + I before the last filled slot."""
        last = self.last
        assert last is not None
        steps = (slot - last) // self.interval
        keep = reach // self.interval + 3
        self.mask = ((self.mask << steps) | 1) & ((1 << keep) - 1) if steps < keep else 1
        self.last = slot

    def set_gap(self, missing_from: int, missing_to: int) -> None:
        if self.gaps is None:
            self.gaps = {}
        self.gaps[missing_from] = missing_to

    def drop_gap(self, missing_from: int) -> None:
        gaps = self.gaps
        if gaps is not None:
            del gaps[missing_from]
            if not gaps:
                self.gaps = None

    def gap_containing(self, slot: int) -> tuple[int, int] | None:
        if self.gaps:
            for missing_from, missing_to in self.gaps.items():
                if missing_from <= slot < missing_to:
                    return missing_from, missing_to
        return None

    def prune(self, watermark: int, config: StreamConfig, hold_from: int = NO_HOLD) -> None:
        """Drop what can no longer change: gaps and windows ending at or before W - L - I, and
        closed windows whose every slot is filled (any further reading there is a duplicate;
        their value was emitted when they closed, or when their last reading arrived LATE).
        A meter silent for longer than the TTL keeps only its last slot and its open gap.
        Windows ending at or after `hold_from` stay whatever they are: their value may not be
        stored yet (see PartitionStream.hold_from)."""
        interval = self.interval
        horizon = watermark - config.allowed_lateness - interval
        if self.last is not None and watermark - self.last > config.state_ttl:
            if hold_from == NO_HOLD or not self.windows:
                self.windows = []
            else:
                self.windows = [p for p in self.windows if _end(p, config.windows) >= hold_from]
            self.gaps = None
            self.mask = 1
            return
        gaps = self.gaps
        if gaps:
            for missing_from in [f for f, to in gaps.items() if to <= horizon]:
                self.drop_gap(missing_from)
        windows = self.windows
        if windows:
            sizes = config.windows
            kept: list[Partial] = []
            for partial in windows:
                key = partial.key
                size = sizes[key & 7]
                start = (key >> 3) * size
                end = start + size
                if end >= hold_from:
                    kept.append(partial)
                    continue
                if end <= horizon:
                    continue
                # A window no longer than the interval holds one slot at most.
                if end <= watermark and partial.count == (
                    1 if size <= interval else slots_in_window(start, size, interval)
                ):
                    continue
                kept.append(partial)
            if len(kept) < len(windows):
                self.windows = kept

    def window(self, key: int) -> Partial | None:
        for partial in self.windows:
            if partial.key == key:
                return partial
        return None

    def to_data(self) -> list[Any]:
        gaps = [value for pair in self.gaps.items() for value in pair] if self.gaps else []
        windows: list[Any] = []
        for p in self.windows:  # one value at a time: no tuple of five made and dropped per window
            windows.append(p.key)
            windows.append(p.count)
            windows.append(p.total)
            windows.append(p.low)
            windows.append(p.high)
        return [self.interval, self.first, self.last, self.mask, self.open_count, gaps, windows]

    @classmethod
    def from_data(cls, data: list[Any]) -> MeterState:
        state = cls(data[0])
        state.first, state.last, state.mask, state.open_count = data[1], data[2], data[3], data[4]
        gaps, windows = data[5], data[6]
        if gaps:
            state.gaps = {gaps[i]: gaps[i + 1] for i in range(0, len(gaps), 2)}
        keys = WINDOW_KEYS
        for i in range(0, len(windows), 5):
            total, low, high = windows[i + 2], windows[i + 3], windows[i + 4]
            # One float object for equal values, as a running aggregate shares them.
            if low == total:
                low = total
            if high == total:
                high = total
            elif high == low:
                high = low
            key = windows[i]
            state.windows.append(Partial(keys.setdefault(key, key), windows[i + 1], total, low, high))
        return state
