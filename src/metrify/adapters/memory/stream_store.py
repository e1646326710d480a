"""A dict-backed stream store: outcomes, state and progress, with all-or-nothing commits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from metrify.adapters.staged import StagedOutcomes
from metrify.application.outcomes import OutcomeBatch, fold_events
from metrify.application.ports import (
    ExportFilter,
    GapRow,
    PartitionState,
    SourceProgress,
    StateSave,
    StreamWrittenElsewhere,
)
from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, ReadingTooLate, WindowUpdated

_NULLS_FIRST = -(1 << 62)


class InMemoryStreamStore:
    """The committed data; `InMemoryStreamUnitOfWork` stages changes and applies them on commit."""

    def __init__(self) -> None:
        self.readings: dict[tuple[str, int], ReadingAccepted] = {}
        self.rejected: dict[tuple[int, int], ReadingRejected] = {}
        self.too_late: dict[tuple[int, int], ReadingTooLate] = {}
        self.gaps: dict[tuple[str, int], GapRow] = {}
        self.windows: dict[tuple[str, int, int], WindowUpdated] = {}
        self.partitions: dict[tuple[str, int], tuple[int | None, int]] = {}
        self.commit_tokens: dict[tuple[str, int], str | None] = {}  # the unit of work that wrote each header last
        # where a partition's meter states stand when saved behind its header (PartitionState.stored_offset)
        self.states_at: dict[tuple[str, int], tuple[int | None, int]] = {}
        self.meter_states: dict[tuple[str, int, str], list[Any]] = {}
        self.progress: dict[str, SourceProgress] = {}

    def apply(self, batch: OutcomeBatch) -> None:
        for r in batch.readings:
            self.readings.setdefault((r.meter_id, r.timestamp), r)
        for j in batch.rejected:
            self.rejected.setdefault((j.partition, j.position), j)
        for t in batch.too_late:
            self.too_late.setdefault((t.partition, t.position), t)
        for key in batch.gap_deletes:
            self.gaps.pop(key, None)
        self.gaps.update(batch.gap_upserts)
        self.windows.update(batch.latest_windows())

    # -- OutcomeQueries --------------------------------------------------------------------

    def readings_of(self, where: ExportFilter) -> Iterator[ReadingAccepted]:
        rows = (r for r in self.readings.values() if _keep(r.meter_id, r.timestamp, where))
        return iter(sorted(rows, key=lambda r: (r.meter_id, r.timestamp)))

    def rejected_of(self, where: ExportFilter) -> Iterator[ReadingRejected]:
        rows = (
            r for r in self.rejected.values() if _keep(r.meter_id, r.parsed_timestamp, where, allow_missing_time=True)
        )
        return iter(sorted(rows, key=_rejected_order))

    def too_late_of(self, where: ExportFilter) -> Iterator[ReadingTooLate]:
        rows = (r for r in self.too_late.values() if _keep(r.meter_id, r.timestamp, where))
        return iter(sorted(rows, key=lambda r: (r.meter_id, r.timestamp, r.partition, r.position)))

    def gaps_of(self, where: ExportFilter) -> Iterator[GapRow]:
        rows = (
            g
            for g in self.gaps.values()
            if (where.meter_id is None or g.meter_id == where.meter_id) and g.overlaps(where.start, where.end)
        )
        return iter(sorted(rows, key=lambda g: (g.meter_id, g.missing_from)))

    def aggregates_of(self, where: ExportFilter) -> Iterator[WindowUpdated]:
        rows = (
            w
            for w in self.windows.values()
            if _keep(w.meter_id, w.window_start, where) and (where.window is None or w.window == where.window)
        )
        return iter(sorted(rows, key=lambda w: (w.meter_id, w.window_start, w.window)))


def _rejected_order(r: ReadingRejected) -> tuple[str, int, int, int]:
    """Rejected rows: by meter, then time (unreadable times first), then arrival."""
    return (r.meter_id, _NULLS_FIRST if r.parsed_timestamp is None else r.parsed_timestamp, r.partition, r.position)


def _keep(meter_id: str, time: int | None, where: ExportFilter, allow_missing_time: bool = False) -> bool:
    if where.meter_id is not None and meter_id != where.meter_id:
        return False
    if time is None:
        return allow_missing_time and where.start is None and where.end is None
    if where.start is not None and time < where.start:
        return False
    return where.end is None or time < where.end


class InMemoryOutcomeQueries:
    def __init__(self, store: InMemoryStreamStore) -> None:
        self.store = store

    def readings(self, where: ExportFilter) -> Iterator[ReadingAccepted]:
        return self.store.readings_of(where)

    def rejected(self, where: ExportFilter) -> Iterator[ReadingRejected]:
        return self.store.rejected_of(where)

    def too_late(self, where: ExportFilter) -> Iterator[ReadingTooLate]:
        return self.store.too_late_of(where)

    def gaps(self, where: ExportFilter) -> Iterator[GapRow]:
        return self.store.gaps_of(where)

    def aggregates(self, where: ExportFilter) -> Iterator[WindowUpdated]:
        return self.store.aggregates_of(where)


class _StagedState:
    def __init__(self, store: InMemoryStreamStore) -> None:
        self.store = store
        self.saved: list[StateSave] = []
        self.expected: list[tuple[str, int, int]] = []

    def expect(self, stream: str, partition: int, next_offset: int) -> None:
        self.expected.append((stream, partition, next_offset))

    def load(self, stream: str, partition: int) -> PartitionState | None:
        header = self.store.partitions.get((stream, partition))
        if header is None:
            return None
        meters = {m: data for (s, p, m), data in self.store.meter_states.items() if (s, p) == (stream, partition)}
        states_at = self.store.states_at.get((stream, partition))
        if states_at is not None:
            return PartitionState(partition, states_at[0], states_at[1], meters, header[1])
        return PartitionState(partition, header[0], header[1], meters)

    def save(
        self,
        stream: str,
        partition: int,
        max_event_time: int | None,
        next_offset: int,
        meters: Mapping[str, list[Any]],
        token: str | None = None,
        states_at: tuple[int | None, int] | None = None,
    ) -> None:
        self.saved.append((stream, partition, max_event_time, next_offset, dict(meters), token, states_at))

    def commit_token(self, stream: str, partition: int) -> str | None:
        return self.store.commit_tokens.get((stream, partition))

    def partitions(self, stream: str) -> list[int]:
        return sorted(p for s, p in self.store.partitions if s == stream)


class _StagedProgress:
    def __init__(self, store: InMemoryStreamStore) -> None:
        self.store = store
        self.staged: list[SourceProgress] = []

    def get(self, source_key: str) -> SourceProgress | None:
        return self.store.progress.get(source_key)

    def set(self, progress: SourceProgress) -> None:
        self.staged.append(progress)


class InMemoryStreamUnitOfWork:
    """Stages every change; `commit` applies them all at once, and leaving without it drops them."""

    def __init__(self, store: InMemoryStreamStore) -> None:
        self.store = store

    def __enter__(self) -> InMemoryStreamUnitOfWork:
        self.outcomes = StagedOutcomes()
        self.state = _StagedState(self.store)
        self.progress = _StagedProgress(self.store)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.rollback()

    def commit(self) -> None:
        store = self.store
        for stream, partition, offset in self.state.expected:
            header = store.partitions.get((stream, partition))
            held = 0 if header is None else header[1]
            if held != offset:
                self.rollback()
                raise StreamWrittenElsewhere(f"partition {partition} holds offset {held}, not {offset}")
        store.apply(fold_events(self.outcomes.events))
        for stream, partition, max_event_time, next_offset, meters, token, states_at in self.state.saved:
            store.partitions[(stream, partition)] = (max_event_time, next_offset)
            if states_at is None:
                store.states_at.pop((stream, partition), None)
            else:
                store.states_at[(stream, partition)] = states_at
            store.commit_tokens[(stream, partition)] = token
            for meter_id, data in meters.items():
                store.meter_states[(stream, partition, meter_id)] = data
        for progress in self.progress.staged:
            store.progress[progress.source_key] = progress
        self.rollback()

    def rollback(self) -> None:
        self.outcomes = StagedOutcomes()
        self.state = _StagedState(self.store)
        self.progress = _StagedProgress(self.store)
