"""The ports the use cases need, as Protocols. Adapters implement them; the container wires them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, ReadingTooLate, WindowUpdated


class Clock(Protocol):
    def now_us(self) -> int:
        """The wall clock, in microseconds since the Unix epoch (UTC)."""
        ...


@dataclass(frozen=True, slots=True)
class PartitionState:
    """A partition's saved stream state: its watermark source, its input offset and its meters.
    When the states were saved behind the outcomes (the API's stream writer saves them every N
    batches), `max_event_time` and `next_offset` are where the states stand and `stored_offset`
    the input offset the outcomes reached (the header's); None when the states are as far."""

    partition: int
    max_event_time: int | None
    next_offset: int
    meters: Mapping[str, list[Any]]
    stored_offset: int | None = None


@dataclass(frozen=True, slots=True)
class SourceProgress:
    """How far a replay of one source got: rows committed, and whether it finished."""

    source_key: str
    rows_done: int
    finished: bool


@dataclass(frozen=True, slots=True)
class GapRow:
    meter_id: str
    missing_from: int
    missing_to: int | None
    missing_intervals: int

    def overlaps(self, start: int | None, end: int | None) -> bool:
        """Whether the gap overlaps [start, end) (None: unbounded): begun before its end, and not
        ended by its start (an open gap runs on). How exports and the API pick gaps by time."""
        return (end is None or self.missing_from < end) and (
            start is None or self.missing_to is None or self.missing_to > start
        )


@dataclass(frozen=True, slots=True)
class ExportFilter:
    meter_id: str | None = None
    start: int | None = None  # inclusive, microseconds
    end: int | None = None  # exclusive, microseconds
    window: int | None = None  # window size in microseconds, for aggregates


class OutcomeRepository(Protocol):
    """Stores the stream's outcomes, idempotently: writing the same events twice changes nothing."""

    def add_events(self, events: Sequence[Any]) -> None: ...


# A partition's save as a unit of work stages it (see StreamStateRepository.save): stream,
# partition, max_event_time, next_offset, meters' states, token, states_at.
StateSave = tuple[str, int, int | None, int, dict[str, list[Any]], str | None, tuple[int | None, int] | None]


class StreamStateRepository(Protocol):
    """Saved stream state per (stream, partition): partition header plus one row per meter."""

    def load(self, stream: str, partition: int) -> PartitionState | None: ...

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
        """Stage the partition's header and changed meters; `token` names the unit of work that
        writes them (see `commit_token`). `states_at`: None when `meters` bring the partition's
        saved states up to this header; else the (max_event_time, next_offset) they were saved
        at, behind it (PartitionState.stored_offset)."""
        ...

    def commit_token(self, stream: str, partition: int) -> str | None:
        """The token of the unit of work that last saved the partition: after a commit whose
        acknowledgement was lost, whether it went through."""
        ...

    def partitions(self, stream: str) -> list[int]: ...

    def expect(self, stream: str, partition: int, next_offset: int) -> None:
        """Commit only if the partition still holds `next_offset` (0 when it holds nothing), as
        this writer last committed or loaded it; else the commit raises StreamWrittenElsewhere."""
        ...


class ProgressRepository(Protocol):
    def get(self, source_key: str) -> SourceProgress | None: ...

    def set(self, progress: SourceProgress) -> None: ...


class StreamUnitOfWork(Protocol):
    """One transaction over outcomes, state and input position (DESIGN §4)."""

    outcomes: OutcomeRepository
    state: StreamStateRepository
    progress: ProgressRepository

    def __enter__(self) -> StreamUnitOfWork: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class OutcomeQueries(Protocol):
    """Reads outcomes back, each ordered by meter, then time."""

    def readings(self, where: ExportFilter) -> Iterator[ReadingAccepted]: ...

    def rejected(self, where: ExportFilter) -> Iterator[ReadingRejected]: ...

    def too_late(self, where: ExportFilter) -> Iterator[ReadingTooLate]: ...

    def gaps(self, where: ExportFilter) -> Iterator[GapRow]: ...

    def aggregates(self, where: ExportFilter) -> Iterator[WindowUpdated]: ...


class IngestJournal(Protocol):
    """Batches of readings answered and not yet stored, in order, each under its sequence number
    (embedded ingest through a stream writer process: see application/journaled.py). One process
    writes it at a time."""

    def append(self, seq: int, payload: bytes, token: str = "", answer: str = "") -> None:
        """Keep a batch, with the token it came with and the answer given to it; once this
        returns, it survives a crash of the process."""
        ...

    def answer_to(self, token: str) -> str | None:
        """The answer kept with the batch that came with `token` (None: no batch kept has it)."""
        ...

    def after(self, seq: int) -> list[tuple[int, bytes]]:
        """The batches numbered above `seq`, in order."""
        ...

    def last(self) -> int:
        """The highest sequence number kept or dropped (0 for a new journal)."""
        ...

    def drop_through(self, seq: int) -> None:
        """Forget the batches numbered up to `seq` (stored by now)."""
        ...


class TransientStoreError(Exception):
    """The store is unreachable for now (connection refused, server restarting): retry later."""


class StreamWrittenElsewhere(Exception):
    """Another process committed to a partition of this stream since this one loaded or last
    committed it: its state here is stale (two writers of one stream, e.g. `metrify api` and
    `metrify replay` on one data folder). Nothing of this unit of work was committed."""


class EventBus(Protocol):
    """Publishes keyed messages to named topics (in-process embedded, Kafka in production)."""

    def publish(self, topic: str, key: str, value: bytes) -> None: ...

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for delivery; returns how many messages are still undelivered."""
        ...


class Cache(Protocol):
    """A small key-value cache with expiry (in-process embedded, Redis in production)."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None: ...

    def incr(self, key: str, ttl_seconds: float) -> int:
        """Add one to a counter that expires `ttl_seconds` after it was created; return the count."""
        ...

    def add(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        """Set `key` only when it holds nothing, atomically; True when this call set it."""
        ...

    def delete(self, key: str) -> None: ...
