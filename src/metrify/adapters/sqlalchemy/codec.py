"""How values that have no column type of their own are stored as text, and read back exactly."""

from __future__ import annotations

import json
import re
from math import isfinite
from typing import Any

import orjson

from metrify.adapters import json_text
from metrify.adapters.sqlalchemy.pg_text import NUL, without_nul
from metrify.adapters.sqlalchemy.tables import ELECTRICAL
from metrify.domain.readings import LongInteger

_LONG_DIGITS = re.compile(r"\d{19}")


def encode_raw(value: Any) -> str:
    """A raw value as received (str, number, bool, None, or JSON structure) as JSON text that
    gives back the same value and type. The standard library's encoder is used because it keeps
    what orjson cannot: integers beyond 64 bits (`10**400`, a LongInteger's digits), NaN and
    infinities, lone surrogates; and ASCII-only output keeps NUL and surrogates out of the
    database's text."""
    if type(value) is str and value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json_text.dumps_exact(value)


def decode_raw(text: str | None) -> Any:
    if text is None:
        return None
    return json_text.loads_exact(text)


def encode_state(data: Any) -> str:
    """A meter's state (plain lists of numbers) as JSON; stdlib JSON when an int exceeds 64 bits."""
    try:
        return orjson.dumps(data).decode()
    except orjson.JSONEncodeError:
        return json.dumps(data)


def decode_state(text: str) -> Any:
    # orjson reads an integer beyond 64 bits as a float: such text goes to the exact decoder.
    if _LONG_DIGITS.search(text):
        return json.loads(text)
    return orjson.loads(text)


def _number(value: Any) -> float | None:
    """A measurement as a number the column holds: None for what is not a finite one (an integer
    beyond a double, which raised at commit and failed the whole batch, included; an infinity or a
    NaN as well, which a Kafka envelope carries as null: both profiles store the same)."""
    if value is None or isinstance(value, bool) or type(value) is LongInteger:  # an integer beyond a double
        return None
    try:
        number = float(value if isinstance(value, float | int) else str(value).strip())
    except (TypeError, ValueError, OverflowError):
        return None
    return number if isfinite(number) else None


def _region(value: Any, holds_nul: bool) -> str:
    text = value if type(value) is str else str(value)
    return text if holds_nul else without_nul(text)


def extra_columns(extra: dict[str, Any], holds_nul: bool = True) -> tuple[Any, ...]:
    """The electrical extras of a reading as column values: numbers (text that reads as one is
    converted), and the region as text, for a database whose text `holds_nul` or not (see
    pg_text.py); anything else is not stored. Unrolled: a hot path."""
    get = extra.get
    v, c, p, pf, f, r = (
        get("voltage"),
        get("current"),
        get("power_kw"),
        get("power_factor"),
        get("frequency"),
        get("region"),
    )
    # a finite float as it is (x - x is 0.0 for those alone), anything else through _number
    return (
        v if v is None or (type(v) is float and v - v == 0.0) else _number(v),
        c if c is None or (type(c) is float and c - c == 0.0) else _number(c),
        p if p is None or (type(p) is float and p - p == 0.0) else _number(p),
        pf if pf is None or (type(pf) is float and pf - pf == 0.0) else _number(pf),
        f if f is None or (type(f) is float and f - f == 0.0) else _number(f),
        # NUL looked for here, on the string in hand: a pass over all regions later costs 4x as much
        r if r is None or (type(r) is str and (holds_nul or NUL not in r)) else _region(r, holds_nul),
    )


def extra_from_columns(values: tuple[Any, ...]) -> dict[str, Any] | None:
    """The inverse of `extra_columns`: a dict of the values present, or None when none is."""
    extra = {name: value for name, value in zip((*ELECTRICAL, "region"), values, strict=True) if value is not None}
    return extra or None
