"""Cursors, page sizes and time ranges: the query parameters every list shares.

A cursor is the opaque, URL-safe form of the last item's key; clients pass `next_cursor` back as
`cursor` and never look inside. Times are RFC 3339 (`2024-03-04T10:00:00Z`); without a zone, UTC.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Query, Request

from metrify.application.queries import TimeRange
from metrify.entrypoints.api.problems import ApiProblem

T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)

CursorParam = Annotated[
    str | None, Query(max_length=2000, description="`next_cursor` of the previous page; absent for the first page.")
]
LimitParam = Annotated[int | None, Query(ge=1, le=1000, description="Items per page (default 100).")]
FromParam = Annotated[datetime | None, Query(alias="from", description="From this time on (inclusive), RFC 3339.")]
ToParam = Annotated[datetime | None, Query(alias="to", description="Before this time (exclusive), RFC 3339.")]


def micros(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICRO


def time_range(start: datetime | None, end: datetime | None) -> TimeRange:
    return TimeRange(None if start is None else micros(start), None if end is None else micros(end))


def encode_cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode("ascii").rstrip("=")


def decode_cursor(cursor: str | None, shape: Callable[[Any], T]) -> T | None:
    """The key inside a cursor, checked by `shape` (which raises on anything else): a 400 problem
    for a cursor this API did not make."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return shape(orjson.loads(raw))
    except (ValueError, TypeError, orjson.JSONDecodeError, IndexError):
        raise ApiProblem(400, "bad-cursor", "the cursor is not one this API gave out") from None


def page_size(request: Request, limit: int | None) -> int:
    api = request.app.state.services.settings.api
    return min(limit or api.page_size, api.max_page_size)


def page(items: list[Any], limit: int, key: Callable[[Any], Any]) -> tuple[list[Any], str | None]:
    """Items fetched with limit + 1: the page, and the cursor of the next one when there is more."""
    if len(items) > limit:
        items = items[:limit]
        return items, encode_cursor(key(items[-1]))
    return items, None


def int_key(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("not an integer key")
    return value


def str_key(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a text key")
    return value


def tuple_key(*kinds: type) -> Callable[[Any], tuple[Any, ...]]:
    def shape(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list) or len(value) != len(kinds):
            raise TypeError("not a key of this list")
        if any(type(v) is not kind for v, kind in zip(value, kinds, strict=True)):
            raise TypeError("not a key of this list")
        return tuple(value)

    return shape
