"""Cursors, page sizes and time ranges: the query parameters every list shares.

A cursor is the opaque, URL-safe form of the last item's key; clients pass `next_cursor` back as
`cursor` and never look inside. Times follow the stream contract's grammar (`2024-03-04T10:00:00Z`);
without a zone, UTC.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Query, Request

from metrify.application.queries import TimeRange
from metrify.domain.stream.grammar import parse_timestamp_text
from metrify.entrypoints.api.problems import ApiProblem

T = TypeVar("T")

CursorParam = Annotated[
    str | None, Query(max_length=2000, description="`next_cursor` of the previous page; absent for the first page.")
]
LimitParam = Annotated[int | None, Query(ge=1, le=1000, description="Items per page (default 100).")]
# The timestamp grammar of the stream contract (DESIGN §3.1) as a regular expression: dates that
# exist (leap years included), times without second 60, zones up to ±23:59. The schema says exactly
# what the API takes; a test checks that every text it matches parses.
_D = "[0-9]"
_YEAR = f"(?:{_D}{{3}}[1-9]|{_D}{{2}}[1-9]{_D}|{_D}[1-9]{_D}{{2}}|[1-9]{_D}{{3}})"
_LEAP = f"(?:{_D}{{2}}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    f"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]{_D}|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]{_D}|30)|02-(?:0[1-9]|1{_D}|2[0-8]))"
)
_TIME = f"(?:[01]{_D}|2[0-3]):[0-5]{_D}:[0-5]{_D}(?:\\.{_D}+)?"
_ZONE = f"(?:Z|[+-](?:[01]{_D}|2[0-3]):[0-5]{_D})?"
TIMESTAMP_PATTERN = f"^(?:{_YEAR}-{_MONTH_DAY}|{_LEAP}-02-29)[T ]{_TIME}{_ZONE}$"

FromParam = Annotated[
    str | None,
    Query(
        alias="from",
        pattern=TIMESTAMP_PATTERN,
        description="From this time on (inclusive): `2024-03-04T10:00:00Z`, a zone `±HH:MM`, or none (UTC).",
    ),
]
ToParam = Annotated[
    str | None,
    Query(alias="to", pattern=TIMESTAMP_PATTERN, description="Before this time (exclusive), as `from`."),
]


def micros(text: str) -> int:
    value = parse_timestamp_text(text)
    if value is None:  # the pattern lets only valid timestamps through; this is a second line
        raise ApiProblem(422, "validation-error", f"{text!r} is not a timestamp like 2024-03-04T10:00:00Z")
    return value


def time_range(start: str | None, end: str | None) -> TimeRange:
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
    # keys are times and offsets the database keeps as 64-bit integers: no cursor of ours holds more
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise TypeError("not an integer key")
    return value


def str_key(value: Any) -> str:
    if not isinstance(value, str) or "\x00" in value:  # no id holds NUL (and PostgreSQL refuses it)
        raise TypeError("not a text key")
    return value


def tuple_key(*kinds: type) -> Callable[[Any], tuple[Any, ...]]:
    def shape(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list) or len(value) != len(kinds):
            raise TypeError("not a key of this list")
        if any(type(v) is not kind for v, kind in zip(value, kinds, strict=True)):
            raise TypeError("not a key of this list")
        return tuple(int_key(v) if type(v) is int else str_key(v) if type(v) is str else v for v in value)

    return shape
