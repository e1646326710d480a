"""The API's read side over the in-memory stream store and meter registry: the fake of
SqlAlchemyFleetQueries, held to the same answers by the contract tests."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from metrify.adapters.memory.stream_store import InMemoryStreamStore
from metrify.adapters.memory.users import InMemoryMeterRegistry
from metrify.application.ports import GapRow
from metrify.application.queries import RegionWindow, Subjects, TimeRange
from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, ReadingTooLate, WindowUpdated

T = TypeVar("T")


def _during(time: int | None, when: TimeRange) -> bool:
    if when.start is None and when.end is None:
        return True
    if time is None:
        return False
    return (when.start is None or time >= when.start) and (when.end is None or time < when.end)


def _page(rows: Iterable[T], key: Callable[[T], Any], after: Any, limit: int) -> list[T]:
    """Rows in key order, strictly after the key `after` (None: from the first), at most `limit`."""
    ordered = sorted(rows, key=key)
    if after is not None:
        bound = tuple(after) if isinstance(after, list | tuple) else after
        ordered = [row for row in ordered if key(row) > bound]
    return ordered[:limit]


class InMemoryFleetQueries:
    def __init__(self, store: InMemoryStreamStore, registry: InMemoryMeterRegistry) -> None:
        self.store = store
        self.registry = registry

    def _allowed(self, meter_id: str, subjects: Subjects) -> bool:
        region = self.registry.meters[meter_id].region if meter_id in self.registry.meters else None
        if subjects.meter_id is not None and meter_id != subjects.meter_id:
            return False
        if subjects.region is not None and region != subjects.region:
            return False
        return subjects.scope.allows_meter(meter_id, region)

    def readings(self, meter_id: str, when: TimeRange, after: int | None, limit: int) -> list[ReadingAccepted]:
        rows = (r for r in self.store.readings.values() if r.meter_id == meter_id and _during(r.timestamp, when))
        return _page(rows, lambda r: r.timestamp, after, limit)

    def aggregates(
        self, meter_id: str, window: int, when: TimeRange, after: int | None, limit: int
    ) -> list[WindowUpdated]:
        rows = (
            w
            for w in self.store.windows.values()
            if w.meter_id == meter_id and w.window == window and _during(w.window_start, when)
        )
        return _page(rows, lambda w: w.window_start, after, limit)

    def region_aggregates(
        self, region: str, window: int, when: TimeRange, after: int | None, limit: int
    ) -> list[RegionWindow]:
        sums: dict[int, list[float]] = defaultdict(lambda: [0, 0, 0.0])
        for w in self.store.windows.values():
            meter = self.registry.meters.get(w.meter_id)
            if meter is None or meter.region != region or w.window != window or not _during(w.window_start, when):
                continue
            total = sums[w.window_start]
            total[0] += 1
            total[1] += w.count
            total[2] += w.sum_kwh
        rows = [RegionWindow(region, window, start, int(m), int(c), float(s)) for start, (m, c, s) in sums.items()]
        return _page(rows, lambda r: r.window_start, after, limit)

    def gaps(
        self, subjects: Subjects, status: str | None, when: TimeRange, after: tuple[str, int] | None, limit: int
    ) -> list[GapRow]:
        def keep(g: GapRow) -> bool:
            if status is not None and (g.missing_to is None) != (status == "open"):
                return False
            return g.overlaps(when.start, when.end) and self._allowed(g.meter_id, subjects)

        return _page(
            (g for g in self.store.gaps.values() if keep(g)), lambda g: (g.meter_id, g.missing_from), after, limit
        )

    def too_late(
        self, subjects: Subjects, when: TimeRange, after: tuple[str, int, int, int] | None, limit: int
    ) -> list[ReadingTooLate]:
        rows = (
            r
            for r in self.store.too_late.values()
            if _during(r.timestamp, when) and self._allowed(r.meter_id, subjects)
        )
        return _page(rows, lambda r: (r.meter_id, r.timestamp, r.partition, r.position), after, limit)

    def _rejected(self, subjects: Subjects, when: TimeRange) -> list[ReadingRejected]:
        return [
            r
            for r in self.store.rejected.values()
            if _during(r.parsed_timestamp, when) and self._allowed(r.meter_id, subjects)
        ]

    def rejected(
        self, subjects: Subjects, reason: str | None, when: TimeRange, after: tuple[int, int] | None, limit: int
    ) -> list[ReadingRejected]:
        rows = (r for r in self._rejected(subjects, when) if reason is None or r.reason == reason)
        return _page(rows, lambda r: (r.partition, r.position), after, limit)

    def rejected_counts(self, subjects: Subjects, when: TimeRange) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self._rejected(subjects, when)).items()))

    def summary(self, subjects: Subjects) -> dict[str, Any]:
        store = self.store

        def kept(rows: Iterable[T], meter: Callable[[T], str]) -> list[T]:
            return [row for row in rows if self._allowed(meter(row), subjects)]

        readings = kept(store.readings.values(), lambda r: r.meter_id)
        rejected = kept(store.rejected.values(), lambda r: r.meter_id)
        gaps = kept(store.gaps.values(), lambda g: g.meter_id)
        return {
            "tables": {
                "readings": len(readings),
                "rejected_readings": len(rejected),
                "too_late_readings": len(kept(store.too_late.values(), lambda r: r.meter_id)),
                "gaps": len(gaps),
                "aggregates": len(kept(store.windows.values(), lambda w: w.meter_id)),
                "meter_states": len(kept(store.meter_states, lambda key: key[2])),
            },
            "readings_by_status": dict(sorted(Counter(r.status for r in readings).items())),
            "rejected_by_reason": dict(sorted(Counter(r.reason for r in rejected).items())),
            "open_gaps": sum(1 for g in gaps if g.missing_to is None),
            "partitions": [
                {"stream": s, "partition": p, "max_event_time": m, "next_offset": o}
                for (s, p), (m, o) in sorted(store.partitions.items())
            ],
        }
