"""The stream's other outcomes: regional aggregates, gaps, too-late and rejected readings, summary."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import AfterValidator

from metrify.domain.readings import normalise_meter_id
from metrify.domain.stream.config import US
from metrify.domain.stream.grammar import format_timestamp
from metrify.entrypoints.api import schemas as s
from metrify.entrypoints.api.pagination import (
    CursorParam,
    FromParam,
    LimitParam,
    ToParam,
    decode_cursor,
    int_key,
    page,
    page_size,
    time_range,
    tuple_key,
)
from metrify.entrypoints.api.problems import PROBLEM_RESPONSES
from metrify.entrypoints.api.render import gap_out, region_aggregate_out, rejected_out, too_late_out
from metrify.entrypoints.api.routers.meters import WindowParam
from metrify.entrypoints.api.security import CurrentUser, Services

router = APIRouter(prefix="/api/v1", responses=PROBLEM_RESPONSES)


def _meter_id(value: str | None) -> str | None:
    """` M1 ` is M1 in a filter too, as everywhere (DESIGN §3)."""
    if value is None:
        return None
    if not (meter_id := normalise_meter_id(value)):
        raise ValueError("a meter id cannot be empty")
    return meter_id


MeterParam = Annotated[
    str | None, Query(min_length=1, max_length=200, description="Only this meter."), AfterValidator(_meter_id)
]
RegionParam = Annotated[str | None, Query(min_length=1, max_length=200, description="Only this region's meters.")]


@router.get(
    "/regions/{region}/aggregates",
    response_model=s.RegionAggregatePage,
    tags=["regions"],
    summary="A region's window aggregates",
)
def region_aggregates(
    request: Request,
    svc: Services,
    user: CurrentUser,
    region: str,
    window: WindowParam = None,
    start: FromParam = None,
    end: ToParam = None,
    cursor: CursorParam = None,
    limit: LimitParam = None,
) -> s.RegionAggregatePage:
    """Per window: the sum over the region's registered meters (ADMIN, or an OPERATOR of the region)."""
    size = page_size(request, limit)
    found = svc.outcomes.region_aggregates(
        user, region, window, time_range(start, end), decode_cursor(cursor, int_key), size + 1
    )
    items, next_cursor = page(found, size, lambda w: w.window_start)
    return s.RegionAggregatePage(items=[region_aggregate_out(w) for w in items], next_cursor=next_cursor)


@router.get("/gaps", response_model=s.GapPage, tags=["outcomes"], summary="Missing intervals")
def gaps(
    request: Request,
    svc: Services,
    user: CurrentUser,
    meter_id: MeterParam = None,
    region: RegionParam = None,
    status: Literal["open", "closed"] | None = None,
    start: FromParam = None,
    end: ToParam = None,
    cursor: CursorParam = None,
    limit: LimitParam = None,
) -> s.GapPage:
    """Gaps of the meters you may see that overlap [from, to), by meter then start."""
    size = page_size(request, limit)
    after = decode_cursor(cursor, tuple_key(str, int))
    found = svc.outcomes.gaps(user, meter_id, region, status, time_range(start, end), after, size + 1)
    items, next_cursor = page(found, size, lambda g: [g.meter_id, g.missing_from])
    return s.GapPage(items=[gap_out(g) for g in items], next_cursor=next_cursor)


@router.get("/too-late-readings", response_model=s.TooLatePage, tags=["outcomes"], summary="Too-late readings")
def too_late_readings(
    request: Request,
    svc: Services,
    user: CurrentUser,
    meter_id: MeterParam = None,
    region: RegionParam = None,
    start: FromParam = None,
    end: ToParam = None,
    cursor: CursorParam = None,
    limit: LimitParam = None,
) -> s.TooLatePage:
    """Readings older than the watermark minus the allowed lateness, by meter then time (ADMIN, OPERATOR)."""
    size = page_size(request, limit)
    after = decode_cursor(cursor, tuple_key(str, int, int, int))
    found = svc.outcomes.too_late(user, meter_id, region, time_range(start, end), after, size + 1)
    items, next_cursor = page(found, size, lambda r: [r.meter_id, r.timestamp, r.partition, r.position])
    return s.TooLatePage(items=[too_late_out(r) for r in items], next_cursor=next_cursor)


@router.get("/rejected-readings", response_model=s.RejectedPage, tags=["outcomes"], summary="Rejected readings")
def rejected_readings(
    request: Request,
    svc: Services,
    user: CurrentUser,
    reason: Annotated[str | None, Query(min_length=1, max_length=100, description="Only this reason.")] = None,
    meter_id: MeterParam = None,
    region: RegionParam = None,
    start: FromParam = None,
    end: ToParam = None,
    cursor: CursorParam = None,
    limit: LimitParam = None,
) -> s.RejectedPage:
    """In arrival order; `from`/`to` apply to readings whose time could be read (ADMIN, OPERATOR)."""
    size = page_size(request, limit)
    after = decode_cursor(cursor, tuple_key(int, int))
    found = svc.outcomes.rejected(user, reason, meter_id, region, time_range(start, end), after, size + 1)
    items, next_cursor = page(found, size, lambda r: [r.partition, r.position])
    return s.RejectedPage(items=[rejected_out(r) for r in items], next_cursor=next_cursor)


@router.get(
    "/rejected-readings/counts", response_model=s.RejectedCounts, tags=["outcomes"], summary="Rejects by reason"
)
def rejected_counts(
    svc: Services,
    user: CurrentUser,
    meter_id: MeterParam = None,
    region: RegionParam = None,
    start: FromParam = None,
    end: ToParam = None,
) -> s.RejectedCounts:
    counts = svc.outcomes.rejected_counts(user, meter_id, region, time_range(start, end))
    return s.RejectedCounts(total=sum(counts.values()), by_reason=counts)


@router.get("/stream/summary", response_model=s.SummaryOut, tags=["stream"], summary="The stream at a glance")
def stream_summary(svc: Services, user: CurrentUser) -> s.SummaryOut:
    """Counts per outcome, rejects per reason, open gaps, each partition's watermark and how far it
    stands behind the clock, and how far processing stands behind ingest (ADMIN, OPERATOR)."""
    summary = svc.outcomes.summary(user)
    bound = round(svc.settings.stream.out_of_orderness * US)
    now = svc.clock.now_us()
    partitions = []
    for p in summary["partitions"]:
        watermark = None if p["max_event_time"] is None else p["max_event_time"] - bound
        partitions.append(
            s.PartitionOut(
                stream=p["stream"],
                partition=p["partition"],
                watermark=None if watermark is None else format_timestamp(watermark),
                max_event_time=None if watermark is None else format_timestamp(p["max_event_time"]),
                next_offset=p["next_offset"],
                watermark_lag_seconds=None if watermark is None else (now - watermark) / US,
            )
        )
    lag = summary["lag"]
    return s.SummaryOut(
        tables=summary["tables"],
        readings_by_status=summary["readings_by_status"],
        rejected_by_reason=summary["rejected_by_reason"],
        open_gaps=summary["open_gaps"],
        partitions=partitions,
        lag=s.LagOut(
            ingest=lag.ingest,
            unprocessed=lag.unprocessed,
            unstored=lag.unstored,
            consumers=[
                s.ConsumerLagOut(
                    group=c.group, topic=c.topic, partition=c.partition, committed=c.committed, end=c.end, lag=c.behind
                )
                for c in lag.consumers
            ],
            error=lag.error,
        ),
    )
