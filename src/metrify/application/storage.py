"""Storage maintenance (issue 5): time partitions created ahead, and retention per table.

The port `StorageMaintenance` hides how a database keeps time-series data: monthly partitions
(PostgreSQL), chunks (TimescaleDB), or plain tables (SQLite). Retention asks it to drop whole
partitions (or chunks) whose upper bound is older than now minus the table's retention; a
database without partitions (SQLite) deletes the rows older than that instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

US = 1_000_000

# The time-series tables, by the name the retention settings use.
RETAINED_TABLES = {
    "readings": "readings",
    "rejected": "rejected_readings",
    "too_late": "too_late_readings",
    "aggregates": "aggregates",
}


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition (or chunk, or a whole table where there are none) of a time-series table.
    `lower`/`upper` bound its time column in microseconds, lower inclusive, upper exclusive; None
    is unbounded (a DEFAULT partition, a whole table). `rows` is an estimate where the database
    only keeps one (None: unknown), `bytes` its size on disk with indexes (None: unknown)."""

    table: str
    name: str
    kind: str  # "month" | "default" | "chunk" | "table" | "rows"
    lower: int | None
    upper: int | None
    rows: int | None
    bytes: int | None
    compressed: bool = False


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Seconds of data to keep per table; 0 keeps a table's data forever."""

    readings: float
    rejected: float
    too_late: float
    aggregates: float

    def keep_seconds(self) -> dict[str, float]:
        return {
            RETAINED_TABLES["readings"]: self.readings,
            RETAINED_TABLES["rejected"]: self.rejected,
            RETAINED_TABLES["too_late"]: self.too_late,
            RETAINED_TABLES["aggregates"]: self.aggregates,
        }

    def cutoffs(self, now_us: int) -> dict[str, int]:
        """Per table, the time before which data goes (tables kept forever are left out)."""
        return {table: now_us - round(keep * US) for table, keep in self.keep_seconds().items() if keep > 0}


class StorageMaintenance(Protocol):
    def layout(self) -> str:
        """How the time-series tables are kept: `native`, `timescaledb`, `plain` or `sqlite`."""
        ...

    def partitions(self) -> list[PartitionInfo]:
        """Every partition of every time-series table, by table then time."""
        ...

    def create_ahead(self, months: int, now_us: int) -> list[PartitionInfo]:
        """Partitions for the current and the `months` next months where missing, and for
        every month that has rows in a DEFAULT partition (the rows move there). Returns the new ones."""
        ...

    def expire(self, cutoffs: Mapping[str, int], dry_run: bool = False) -> list[PartitionInfo]:
        """Drop (or with dry_run only list) what is older than each table's cut-off."""
        ...

    def reorder(self, now_us: int) -> list[PartitionInfo]:
        """Rewrite the partitions of months that are over in key order (meter, then time), once, so
        that reading one meter's history touches few pages; nothing where the database has no
        partitions or orders them itself. Returns the partitions rewritten."""
        ...


@dataclass
class MaintenanceReport:
    layout: str
    cutoffs: dict[str, int]
    dry_run: bool
    created: list[PartitionInfo] = field(default_factory=list)
    dropped: list[PartitionInfo] = field(default_factory=list)
    reordered: list[PartitionInfo] = field(default_factory=list)


def run_storage_maintenance(
    storage: StorageMaintenance,
    policy: RetentionPolicy,
    now_us: int,
    months_ahead: int | None = None,
    dry_run: bool = False,
    reorder: bool = False,
) -> MaintenanceReport:
    """The scheduled job: partitions ahead (when `months_ahead` is given), then retention, then
    (with `reorder`) the months that are over rewritten in key order. Creating first moves any
    rows out of DEFAULT partitions into months of their own, which retention can then drop whole;
    reordering last spends no work on months retention drops. A dry run changes nothing and
    reports what retention would drop. Partitions that cannot be made now (busy, or a table in
    the way) do not hold retention back: it runs, and then the job fails with that error."""
    cutoffs = policy.cutoffs(now_us)
    report = MaintenanceReport(storage.layout(), cutoffs, dry_run)
    failure: Exception | None = None
    if months_ahead is not None and not dry_run:
        try:
            report.created = storage.create_ahead(months_ahead, now_us)
        except Exception as exc:  # raised below, once retention has run
            failure = exc
    report.dropped = storage.expire(cutoffs, dry_run)
    if failure is not None:
        raise failure
    if reorder and not dry_run:
        report.reordered = storage.reorder(now_us)
    return report
