"""Reading the stream's outcomes over the API, page by page, each limited by the caller's role.

Pages are keyset pages: each list has a fixed order on a unique key, and `after` is the key of the
last item of the previous page, so that a page costs the same however deep it is and rows written
meanwhile never shift it. Every time filter is [start, end) in microseconds; gaps match when they
overlap it (a gap still open reaches forever).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from metrify.application.errors import InvalidRequest
from metrify.application.meters import MeterService
from metrify.application.ports import GapRow
from metrify.domain.stream.config import window_label
from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, ReadingTooLate, WindowUpdated
from metrify.domain.users import Role, Scope, User


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: int | None = None  # inclusive, microseconds
    end: int | None = None  # exclusive


@dataclass(frozen=True, slots=True)
class Subjects:
    """Which meters a list covers: the caller's scope, narrowed to one meter or one region."""

    scope: Scope
    meter_id: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class RegionWindow:
    """A window of a region: the sum over its meters' aggregates of that window. `sum_kwh` is a
    floating-point sum taken in whatever order the store visits the meters' rows, so its last
    bits may differ between stores holding the same windows."""

    region: str
    window: int
    window_start: int
    meters: int
    count: int
    sum_kwh: float


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    """Where a consumer group stands in one topic partition: the next offset it committed (None:
    none yet) and the partition's end."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def behind(self) -> int:
        return self.end - (self.committed or 0)


def total_behind(rows: Iterable[ConsumerLag]) -> int:
    """Records a group has not read yet, over its partitions."""
    return sum(row.behind for row in rows)


@dataclass(frozen=True, slots=True)
class ProcessingLag:
    """How far processing stands behind what was taken in: `unprocessed` readings not yet through
    the stream core, `unstored` outcome records not yet in the database (None: not known, `error`
    says why), and each consumer group's partitions where there are queues (Kafka)."""

    ingest: str  # "embedded" or "kafka"
    unprocessed: int | None
    unstored: int | None
    consumers: tuple[ConsumerLag, ...] = ()
    error: str | None = None


class LagProbe(Protocol):
    def lag(self) -> ProcessingLag:
        """The lag now; never raises for a service that does not answer (`error` says so)."""
        ...


class SynchronousLag:
    """The embedded profile: each batch goes through the stream core and into the database before
    its answer (a stream writer process stores it milliseconds after), and a replay is one
    process from file to database: no queue holds anything back."""

    def lag(self) -> ProcessingLag:
        return ProcessingLag("embedded", 0, 0)


class FleetQueries(Protocol):
    def readings(self, meter_id: str, when: TimeRange, after: int | None, limit: int) -> list[ReadingAccepted]: ...

    def aggregates(
        self, meter_id: str, window: int, when: TimeRange, after: int | None, limit: int
    ) -> list[WindowUpdated]: ...

    def region_aggregates(
        self, region: str, window: int, when: TimeRange, after: int | None, limit: int
    ) -> list[RegionWindow]: ...

    def gaps(
        self, subjects: Subjects, status: str | None, when: TimeRange, after: tuple[str, int] | None, limit: int
    ) -> list[GapRow]: ...

    def too_late(
        self, subjects: Subjects, when: TimeRange, after: tuple[str, int, int, int] | None, limit: int
    ) -> list[ReadingTooLate]: ...

    def rejected(
        self, subjects: Subjects, reason: str | None, when: TimeRange, after: tuple[int, int] | None, limit: int
    ) -> list[ReadingRejected]: ...

    def rejected_counts(self, subjects: Subjects, when: TimeRange) -> dict[str, int]: ...

    def summary(self, subjects: Subjects) -> dict[str, Any]:
        """Counts per outcome of the subjects' meters, rejected per reason, open gaps, and each
        partition's watermark source (the stream's, whoever asks)."""
        ...


class OutcomeQueryService:
    """The use cases behind the API's read side: who may see what, then one query."""

    def __init__(
        self,
        queries: FleetQueries,
        meters: MeterService,
        windows: tuple[int, ...],
        lag: LagProbe | None = None,
    ) -> None:
        self.queries = queries
        self.meters = meters
        self.windows = windows
        self.lag = lag or SynchronousLag()

    @property
    def window_labels(self) -> list[str]:
        return [window_label(size) for size in self.windows]

    def window(self, label: str | None) -> int:
        """A configured window size from its label (`15m`, `1h`, `1d`); by default 1h, or the first
        configured window when 1h is not one of them."""
        if label is None:
            label = "1h" if "1h" in self.window_labels else self.window_labels[0]
        for size in self.windows:
            if window_label(size) == label:
                return size
        names = ", ".join(window_label(size) for size in self.windows)
        raise InvalidRequest(f"window {label!r} is not one of the configured windows ({names})")

    def subjects(self, user: User, meter_id: str | None, region: str | None) -> Subjects:
        if meter_id is not None:
            self.meters.require_visible(user, meter_id)
        if region is not None:
            user.require_region(region)
        return Subjects(user.scope, meter_id, region)

    def readings(
        self, user: User, meter_id: str, when: TimeRange, after: int | None, limit: int
    ) -> list[ReadingAccepted]:
        self.meters.require_visible(user, meter_id)
        return self.queries.readings(meter_id, when, after, limit)

    def aggregates(
        self, user: User, meter_id: str, window: str | None, when: TimeRange, after: int | None, limit: int
    ) -> list[WindowUpdated]:
        size = self.window(window)
        self.meters.require_visible(user, meter_id)
        return self.queries.aggregates(meter_id, size, when, after, limit)

    def region_aggregates(
        self, user: User, region: str, window: str | None, when: TimeRange, after: int | None, limit: int
    ) -> list[RegionWindow]:
        size = self.window(window)
        user.require_region(region)
        return self.queries.region_aggregates(region, size, when, after, limit)

    def gaps(
        self,
        user: User,
        meter_id: str | None,
        region: str | None,
        status: str | None,
        when: TimeRange,
        after: tuple[str, int] | None,
        limit: int,
    ) -> list[GapRow]:
        return self.queries.gaps(self.subjects(user, meter_id, region), status, when, after, limit)

    def too_late(
        self,
        user: User,
        meter_id: str | None,
        region: str | None,
        when: TimeRange,
        after: tuple[str, int, int, int] | None,
        limit: int,
    ) -> list[ReadingTooLate]:
        user.require(Role.ADMIN, Role.OPERATOR)
        return self.queries.too_late(self.subjects(user, meter_id, region), when, after, limit)

    def rejected(
        self,
        user: User,
        reason: str | None,
        meter_id: str | None,
        region: str | None,
        when: TimeRange,
        after: tuple[int, int] | None,
        limit: int,
    ) -> list[ReadingRejected]:
        user.require(Role.ADMIN, Role.OPERATOR)
        return self.queries.rejected(self.subjects(user, meter_id, region), reason, when, after, limit)

    def rejected_counts(self, user: User, meter_id: str | None, region: str | None, when: TimeRange) -> dict[str, int]:
        user.require(Role.ADMIN, Role.OPERATOR)
        return self.queries.rejected_counts(self.subjects(user, meter_id, region), when)

    def summary(self, user: User) -> dict[str, Any]:
        """The stream at a glance: an OPERATOR's counts are of the meters in their regions; the
        partitions' watermarks and offsets, and the processing lag, are the stream's own, not any
        meter's data."""
        user.require(Role.ADMIN, Role.OPERATOR)
        return {**self.queries.summary(Subjects(user.scope)), "lag": self.lag.lag()}
