"""Export rows: the stream's outcomes in the exact shapes `metrify export` writes (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from metrify.application.ports import ExportFilter, GapRow, OutcomeQueries
from metrify.domain.stream.config import US, window_label
from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, ReadingTooLate, WindowUpdated
from metrify.domain.stream.grammar import format_timestamp

EXPORT_KINDS = ("readings", "rejected", "late", "gaps", "aggregates")

FIELDS: dict[str, tuple[str, ...]] = {
    "readings": ("meter_id", "timestamp", "slot", "consumption_kwh", "status", "partition"),
    "rejected": ("meter_id", "timestamp", "consumption_kwh", "reason", "partition"),
    "late": ("meter_id", "timestamp", "consumption_kwh", "delay_seconds", "partition"),
    "gaps": ("meter_id", "missing_from", "missing_to", "missing_intervals", "status"),
    "aggregates": (
        "meter_id",
        "window",
        "window_start",
        "window_end",
        "count",
        "sum_kwh",
        "min_kwh",
        "max_kwh",
        "mean_kwh",
    ),
}


def seconds(micros: int) -> int | float:
    """A duration in seconds: an int when whole, else a float."""
    whole, rest = divmod(micros, US)
    return whole if rest == 0 else micros / US


def reading_row(r: ReadingAccepted) -> dict[str, Any]:
    return {
        "meter_id": r.meter_id,
        "timestamp": format_timestamp(r.timestamp),
        "slot": format_timestamp(r.slot),
        "consumption_kwh": r.consumption_kwh,
        "status": r.status,
        "partition": r.partition,
    }


def rejected_row(r: ReadingRejected) -> dict[str, Any]:
    return {
        "meter_id": r.meter_id,
        "timestamp": r.timestamp,
        "consumption_kwh": r.consumption_kwh,
        "reason": r.reason,
        "partition": r.partition,
    }


def late_row(r: ReadingTooLate) -> dict[str, Any]:
    return {
        "meter_id": r.meter_id,
        "timestamp": format_timestamp(r.timestamp),
        "consumption_kwh": r.consumption_kwh,
        "delay_seconds": seconds(r.delay),
        "partition": r.partition,
    }


def gap_row(g: GapRow) -> dict[str, Any]:
    return {
        "meter_id": g.meter_id,
        "missing_from": format_timestamp(g.missing_from),
        "missing_to": None if g.missing_to is None else format_timestamp(g.missing_to),
        "missing_intervals": g.missing_intervals,
        "status": "open" if g.missing_to is None else "closed",
    }


def aggregate_row(w: WindowUpdated) -> dict[str, Any]:
    return {
        "meter_id": w.meter_id,
        "window": window_label(w.window),
        "window_start": format_timestamp(w.window_start),
        "window_end": format_timestamp(w.window_start + w.window),
        "count": w.count,
        "sum_kwh": w.sum_kwh,
        "min_kwh": w.min_kwh,
        "max_kwh": w.max_kwh,
        "mean_kwh": w.sum_kwh / w.count,
    }


def export_rows(queries: OutcomeQueries, kind: str, where: ExportFilter) -> Iterator[dict[str, Any]]:
    """The rows of one export kind, ordered by meter, then time."""
    sources: dict[str, tuple[Callable[[ExportFilter], Iterator[Any]], Callable[[Any], dict[str, Any]]]] = {
        "readings": (queries.readings, reading_row),
        "rejected": (queries.rejected, rejected_row),
        "late": (queries.too_late, late_row),
        "gaps": (queries.gaps, gap_row),
        "aggregates": (queries.aggregates, aggregate_row),
    }
    fetch, shape = sources[kind]
    for record in fetch(where):
        yield shape(record)
