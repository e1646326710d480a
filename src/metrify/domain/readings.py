"""Meters and readings: what a smart meter sends and what the stream decides about it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple


class RawReading(NamedTuple):
    """One reading as it arrived, before any check: values are kept exactly as received
    (text from CSV, text or numbers from JSON, None when absent) so a reject can show them."""

    meter_id: Any
    timestamp: Any
    consumption_kwh: Any
    extra: dict[str, Any] | None = None
    position: int = 0  # the reading's offset in its partition's input (a Kafka offset, or its kin)


class LongInteger(float):
    """A JSON integer written with more digits than Python turns into an int (over 4,300: the
    interpreter's guard against conversions that take quadratic time). The contract reads a number
    however large (DESIGN §3.1): as a float it is +-infinity, so the checks find a consumption out
    of range (or negative) and a timestamp invalid, as they do `1e400`. Its digits are kept: its
    text (a meter id's) is them, and a rejected reading's raw value is written back as received."""

    __slots__ = ("digits",)
    digits: str

    def __new__(cls, digits: str) -> LongInteger:
        number = super().__new__(cls, float(digits))  # linear in the digits, unlike int()
        number.digits = digits
        return number

    def __str__(self) -> str:
        return self.digits

    __repr__ = __str__

    def __reduce__(self) -> tuple[type[LongInteger], tuple[str]]:
        return (LongInteger, (self.digits,))


class Lateness(StrEnum):
    """How a reading's event time stands against the partition's watermark (DESIGN §3.3)."""

    ON_TIME = "ON_TIME"
    LATE = "LATE"
    TOO_LATE = "TOO_LATE"


class RejectReason(StrEnum):
    """Why a reading was rejected; validation reasons are checked in this order (DESIGN §3.1)."""

    MISSING_METER_ID = "missing_meter_id"
    INVALID_TIMESTAMP = "invalid_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    INVALID_CONSUMPTION = "invalid_consumption"
    NEGATIVE_CONSUMPTION = "negative_consumption"
    OUT_OF_RANGE = "out_of_range"
    DUPLICATE = "duplicate"
    MALFORMED_MESSAGE = "malformed_message"


def normalise_meter_id(value: Any) -> str:
    """The meter's identity: the id with surrounding whitespace trimmed ('' when absent)."""
    if value is None:
        return ""
    return (value if isinstance(value, str) else str(value)).strip()


@dataclass(frozen=True, slots=True)
class Meter:
    """A registered meter. `interval_seconds` is its expected reading interval, when known;
    the stream then uses it instead of the default interval for slots and gaps."""

    meter_id: str
    region: str | None = None
    interval_seconds: int | None = None
