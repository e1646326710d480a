"""Meters: list (by region), read, register and update; a meter's readings and aggregates."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.convertors import Convertor, register_url_convertor

from metrify.domain.readings import normalise_meter_id
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
    str_key,
    time_range,
)
from metrify.entrypoints.api.problems import PROBLEM_RESPONSES
from metrify.entrypoints.api.render import aggregate_out, meter_out, reading_out
from metrify.entrypoints.api.security import CurrentUser, Services


class MeterIdConvertor(Convertor[str]):
    """A meter id in a path, `/` included: head-end systems name meters as they like (`site/7`,
    sent as site%2F7, which the server decodes before it routes)."""

    regex = ".+"

    def convert(self, value: str) -> str:
        return normalise_meter_id(value)  # ` M1 ` is M1, as everywhere (DESIGN §3)

    def to_string(self, value: str) -> str:
        return value


class MeterAloneConvertor(MeterIdConvertor):
    """The same, for the routes of the meter itself: not an id that ends in a route under a meter,
    so that `M1/readings` is M1's readings (and PATCH there a 405), not a meter of that name."""

    regex = "(?!.*/(?:readings|aggregates)$).+"


register_url_convertor("meter", MeterIdConvertor())
register_url_convertor("meter_alone", MeterAloneConvertor())

router = APIRouter(prefix="/api/v1/meters", tags=["meters"], responses=PROBLEM_RESPONSES)

WindowParam = Annotated[
    str | None, Query(min_length=1, max_length=20, description="One of the configured windows (default 1h).")
]


@router.get("", response_model=s.MeterPage, summary="List the meters you may see")
def list_meters(
    request: Request,
    svc: Services,
    user: CurrentUser,
    region: Annotated[str | None, Query(min_length=1, max_length=200, pattern=s.NONBLANK)] = None,
    cursor: CursorParam = None,
    limit: LimitParam = None,
) -> s.MeterPage:
    """USERs see their meters, OPERATORs their regions' meters, ADMINs all; ordered by meter id."""
    size = page_size(request, limit)
    found = svc.meters.list(user, region, decode_cursor(cursor, str_key), size + 1)
    items, next_cursor = page(found, size, lambda m: m.meter_id)
    return s.MeterPage(items=[meter_out(m) for m in items], next_cursor=next_cursor)


@router.post("", response_model=s.MeterOut, status_code=201, summary="Register a meter")
def register_meter(svc: Services, user: CurrentUser, body: s.MeterCreate) -> s.MeterOut:
    """ADMINs register any meter; OPERATORs only into their own regions."""
    return meter_out(svc.meters.register(user, body.meter_id, body.region, body.expected_interval_seconds))


@router.get("/{meter_id:meter}/readings", response_model=s.ReadingPage, summary="A meter's accepted readings")
def meter_readings(
    request: Request,
    svc: Services,
    user: CurrentUser,
    meter_id: str,
    start: FromParam = None,
    end: ToParam = None,
    cursor: CursorParam = None,
    limit: LimitParam = None,
) -> s.ReadingPage:
    """ON_TIME and LATE readings, by time."""
    size = page_size(request, limit)
    when = time_range(start, end)
    found = svc.outcomes.readings(user, meter_id, when, decode_cursor(cursor, int_key), size + 1)
    items, next_cursor = page(found, size, lambda r: r.timestamp)
    return s.ReadingPage(items=[reading_out(r) for r in items], next_cursor=next_cursor)


@router.get("/{meter_id:meter}/aggregates", response_model=s.AggregatePage, summary="A meter's window aggregates")
def meter_aggregates(
    request: Request,
    svc: Services,
    user: CurrentUser,
    meter_id: str,
    window: WindowParam = None,
    start: FromParam = None,
    end: ToParam = None,
    cursor: CursorParam = None,
    limit: LimitParam = None,
) -> s.AggregatePage:
    """Closed tumbling windows of one size, by window start (`from`/`to` bound the start)."""
    size = page_size(request, limit)
    when = time_range(start, end)
    found = svc.outcomes.aggregates(user, meter_id, window, when, decode_cursor(cursor, int_key), size + 1)
    items, next_cursor = page(found, size, lambda w: w.window_start)
    return s.AggregatePage(items=[aggregate_out(w) for w in items], next_cursor=next_cursor)


@router.get("/{meter_id:meter_alone}", response_model=s.MeterOut, summary="Read a meter")
def get_meter(svc: Services, user: CurrentUser, meter_id: str) -> s.MeterOut:
    return meter_out(svc.meters.visible(user, meter_id))


@router.patch(
    "/{meter_id:meter_alone}", response_model=s.MeterOut, summary="Change a meter's region or expected interval"
)
def update_meter(svc: Services, user: CurrentUser, meter_id: str, body: s.MeterUpdate) -> s.MeterOut:
    given = body.model_fields_set
    changes: dict[str, Any] = {}
    if "region" in given:
        changes["region"] = body.region
    if "expected_interval_seconds" in given:
        changes["interval_seconds"] = body.expected_interval_seconds
    return meter_out(svc.meters.update(user, meter_id, **changes))
