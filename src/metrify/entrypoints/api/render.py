"""Domain objects and stream outcomes in the shapes the API answers with (exports' shapes where they exist)."""

from __future__ import annotations

from typing import Any

from metrify.adapters import json_text
from metrify.application.exports import aggregate_row, gap_row, late_row, reading_row, rejected_row
from metrify.application.ingest import IngestReport
from metrify.application.ports import GapRow
from metrify.application.queries import RegionWindow
from metrify.domain.ingest_keys import IngestKey
from metrify.domain.readings import LongInteger, Meter
from metrify.domain.stream.config import window_label
from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, ReadingTooLate, WindowUpdated
from metrify.domain.stream.grammar import format_timestamp
from metrify.domain.users import User
from metrify.entrypoints.api import schemas as s


def user_out(user: User) -> s.UserOut:
    return s.UserOut(
        user_id=user.user_id,
        email=user.email,
        role=user.role,
        active=user.active,
        meters=sorted(user.meters),
        regions=sorted(user.regions),
        created_at=format_timestamp(user.created_at),
    )


def key_out(key: IngestKey) -> s.KeyOut:
    return s.KeyOut(
        key_id=key.key_id,
        name=key.name,
        prefix=key.prefix,
        regions=sorted(key.regions),
        all_regions=key.all_regions,
        active=key.active,
        created_by=key.created_by,
        created_at=format_timestamp(key.created_at),
        revoked_at=None if key.revoked_at is None else format_timestamp(key.revoked_at),
    )


def meter_out(meter: Meter) -> s.MeterOut:
    return s.MeterOut(meter_id=meter.meter_id, region=meter.region, expected_interval_seconds=meter.interval_seconds)


def reading_out(reading: ReadingAccepted) -> s.ReadingOut:
    return s.ReadingOut(**reading_row(reading), **(reading.extra or {}))


def aggregate_out(window: WindowUpdated) -> s.AggregateOut:
    return s.AggregateOut(**aggregate_row(window))


def region_aggregate_out(row: RegionWindow) -> s.RegionAggregateOut:
    return s.RegionAggregateOut(
        region=row.region,
        window=window_label(row.window),
        window_start=format_timestamp(row.window_start),
        window_end=format_timestamp(row.window_start + row.window),
        meters=row.meters,
        count=row.count,
        sum_kwh=row.sum_kwh,
    )


def gap_out(gap: GapRow) -> s.GapOut:
    return s.GapOut(**gap_row(gap))


def too_late_out(reading: ReadingTooLate) -> s.TooLateOut:
    return s.TooLateOut(**late_row(reading))


def rejected_out(reading: ReadingRejected) -> s.RejectedOut:
    row = rejected_row(reading)
    row["timestamp"], row["consumption_kwh"] = _answerable(row["timestamp"]), _answerable(row["consumption_kwh"])
    return s.RejectedOut(**row)


def _answerable(value: Any) -> Any:
    """A raw value as the answer can hold it: a LongInteger as the text of its digits (as a float it
    is infinite, which JSON cannot write: null, the digits lost), wherever it lies in the value."""
    return json_text.map_leaves(value, _digits)


def _digits(value: Any) -> Any:
    return value.digits if type(value) is LongInteger else value


def ingest_out(report: IngestReport) -> s.IngestOut:
    return s.IngestOut(
        received=report.received,
        processed=report.processed,
        queued=report.queued,
        accepted=report.accepted,
        late=report.late,
        too_late=report.too_late,
        rejected=report.rejected,
        rejected_by_reason=dict(sorted(report.rejected_by_reason.items())),
        rejected_readings=[s.IndexedReason(index=i, reason=r) for i, r in report.rejected_readings],
        refused=[s.IndexedReason(index=i, reason=r) for i, r in report.refused],
    )
