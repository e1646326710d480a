"""Storage maintenance without a database: the retention policy's cut-offs, the order of the
scheduled job's steps (and a dry run changing nothing), and the month arithmetic partitions use."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from metrify.adapters.sqlalchemy.partitions import (
    _covered,
    _missing_months,
    free_ranges,
    month_bounds,
    months_around,
    to_us,
)
from metrify.application.storage import PartitionInfo, RetentionPolicy, run_storage_maintenance

US = 1_000_000
DAY = 86400 * US


def at(year: int, month: int, day: int = 1) -> int:
    return to_us(datetime(year, month, day, tzinfo=UTC))


class FakeStorage:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def layout(self) -> str:
        return "native"

    def partitions(self) -> list[PartitionInfo]:
        return []

    def create_ahead(self, months: int, now_us: int) -> list[PartitionInfo]:
        self.calls.append(("create_ahead", months))
        return [PartitionInfo("readings", "p", "month", 0, 1, 0, 0)]

    def expire(self, cutoffs: Mapping[str, int], dry_run: bool = False) -> list[PartitionInfo]:
        self.calls.append(("expire", dry_run))
        return []

    def reorder(self, now_us: int) -> list[PartitionInfo]:
        self.calls.append(("reorder", now_us))
        return []


def test_cut_offs_per_table_and_zero_keeps_forever() -> None:
    policy = RetentionPolicy(readings=90 * 86400, rejected=30 * 86400, too_late=0, aggregates=730 * 86400)
    now = at(2024, 7, 15)
    assert policy.cutoffs(now) == {
        "readings": now - 90 * DAY,
        "rejected_readings": now - 30 * DAY,
        "aggregates": now - 730 * DAY,
    }


def test_the_job_creates_then_expires_then_reorders_and_a_dry_run_only_looks() -> None:
    policy = RetentionPolicy(1, 1, 1, 1)
    storage = FakeStorage()
    report = run_storage_maintenance(storage, policy, 5 * DAY, months_ahead=3, reorder=True)
    assert storage.calls == [("create_ahead", 3), ("expire", False), ("reorder", 5 * DAY)]
    assert len(report.created) == 1 and report.layout == "native"
    storage = FakeStorage()
    run_storage_maintenance(storage, policy, 5 * DAY, months_ahead=3, dry_run=True, reorder=True)
    assert storage.calls == [("expire", True)]


def test_retention_runs_even_when_the_partitions_ahead_cannot_be_made() -> None:
    class Busy(FakeStorage):
        def create_ahead(self, months: int, now_us: int) -> list[PartitionInfo]:
            self.calls.append(("create_ahead", months))
            raise RuntimeError("another process holds the table")

    storage = Busy()
    with pytest.raises(RuntimeError, match="holds the table"):
        run_storage_maintenance(storage, RetentionPolicy(1, 1, 1, 1), 5 * DAY, months_ahead=3, reorder=True)
    assert storage.calls == [("create_ahead", 3), ("expire", False)]  # dropped what was due, then failed


def test_months_are_utc_calendar_months() -> None:
    assert month_bounds(at(2024, 2, 29) + 23 * 3600 * US) == (at(2024, 2), at(2024, 3))
    assert month_bounds(at(2024, 12, 31)) == (at(2024, 12), at(2025, 1))
    assert month_bounds(-1) == (at(1969, 12), at(1970, 1))
    assert month_bounds(10**19) is None  # beyond year 9999: left to the DEFAULT partition
    assert months_around(at(2024, 11, 20), 0, 2) == [
        (at(2024, 11), at(2024, 12)),
        (at(2024, 12), at(2025, 1)),
        (at(2025, 1), at(2025, 2)),
    ]


def test_free_ranges_are_what_no_partition_covers() -> None:
    assert free_ranges(0, 100, []) == [(0, 100)]
    assert free_ranges(0, 100, [(0, 100)]) == []
    assert free_ranges(0, 100, [(20, 30), (50, 60)]) == [(0, 20), (30, 50), (60, 100)]
    assert free_ranges(0, 100, [(-10, 10), (90, 200)]) == [(10, 90)]
    assert free_ranges(0, 100, [(200, 300)]) == [(0, 100)]


def test_only_months_without_a_partition_are_missing() -> None:
    known = [(at(2024, 1), at(2024, 2)), (at(2024, 2), at(2024, 3))]
    assert _covered(known, at(2024, 1, 5), at(2024, 1, 30))
    assert not _covered(known, at(2024, 1, 5), at(2024, 2, 3))  # two partitions: looked at day by day
    assert _missing_months(known, [at(2024, 1, 5), at(2024, 2, 3)]) == set()
    assert _missing_months(known, [at(2024, 1, 5), at(2023, 12, 31), at(2024, 3, 1), 0]) == {
        (at(2023, 12), at(2024, 1)),
        (at(2024, 3), at(2024, 4)),
        (at(1970, 1), at(1970, 2)),
    }
