"""The text grammars of the stream contract (DESIGN §3.1): timestamps and consumption.

Both parsers return None for anything outside the grammar, so the caller can name the reason.
Time comes out as integer microseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from metrify.domain.stream import COMPILED  # this process runs the mypyc build (build_native.sh)

try:  # compiled by mypyc, a machine integer; in plain Python, an int
    from mypy_extensions import i64
except ImportError:  # pragma: no cover - mypy's extensions are not installed
    i64 = int  # type: ignore[misc,assignment]

_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_MINUTE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2})")
_MICROS_OF_SECOND = {f"{second:02d}": second * 1_000_000 for second in range(60)}
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_EPOCH_MS_ABOVE = 10**11
# The times a timestamp in text can name, years 0001-9999. A JSON number outside them names no
# time the contract can write (nor a database store): invalid, as year 0000 is in text.
_FIRST_US = -62_135_596_800 * 1_000_000  # 0001-01-01T00:00:00Z
_LAST_US = 253_402_300_800 * 1_000_000 - 1  # 9999-12-31T23:59:59.999999Z
_SMALLEST = 5e-324
_CACHE_LIMIT = 1 << 16
# Bounded memories of valid texts (cleared when full), shared by every caller in the process:
# whole timestamp texts -> microseconds, `YYYY-MM-DD?HH:MM` heads -> microseconds (interpreted
# only), consumption -> kWh.
TIMESTAMPS: dict[str, int] = {}
MINUTES: dict[str, int] = {}
CONSUMPTIONS: dict[str, float] = {}


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """The (year, month, day) of a count of days since 1970-01-01."""
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _day_seconds(year: int, month: int, day: int, hour: int, minute: int) -> int | None:
    """Seconds since the epoch of a date and an hour:minute, or None when they do not exist."""
    if year == 0 or not 1 <= month <= 12 or day < 1 or hour > 23 or minute > 59:
        return None
    if month == 2:
        limit = 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    else:
        limit = 30 + ((month ^ (month >> 3)) & 1)  # 31 for Jan, Mar, May, Jul, Aug, Oct, Dec
    if day > limit:
        return None
    return days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60


def _two_digits(s: str, index: int) -> int:
    """The number written by the two ASCII digits at `index`, or -1 when one is not a digit."""
    tens = ord(s[index]) - 48
    ones = ord(s[index + 1]) - 48
    if 0 <= tens <= 9 and 0 <= ones <= 9:
        return tens * 10 + ones
    return -1


def _canonical_micros(s: str) -> int | None:
    """`YYYY-MM-DD[T ]HH:MM:SS[.f+][Z]` read digit by digit (no slices, no regular expression);
    None for any other shape or a date that does not exist, for the full grammar to decide."""
    size = len(s)
    if size < 19 or s[4] != "-" or s[7] != "-" or s[13] != ":" or s[16] != ":":
        return None
    separator = s[10]
    if separator != "T" and separator != " ":
        return None
    century = _two_digits(s, 0)
    year = _two_digits(s, 2)
    month = _two_digits(s, 5)
    day = _two_digits(s, 8)
    hour = _two_digits(s, 11)
    minute = _two_digits(s, 14)
    second = _two_digits(s, 17)
    if century < 0 or year < 0 or month < 0 or day < 0 or hour < 0 or minute < 0 or second < 0 or second > 59:
        return None
    year += century * 100
    micros = 0
    if size > 19:
        end = size - 1 if s[size - 1] == "Z" else size
        if end > 19:
            if s[19] != "." or end == 20:
                return None
            scale = 100_000
            for index in range(20, end):
                digit = ord(s[index]) - 48
                if digit < 0 or digit > 9:
                    return None
                micros += digit * scale
                scale //= 10
    seconds = _day_seconds(year, month, day, hour, minute)
    if seconds is None:
        return None
    # |seconds| < 2**38 for years 1-9999: the product fits 64 bits, and compiled it stays one
    whole: i64 = seconds + second
    return whole * 1_000_000 + micros


def _minute_micros(head: str) -> int | None:
    """`YYYY-MM-DD[T ]HH:MM` (16 characters) as microseconds since the epoch, remembered when valid."""
    match = _MINUTE.fullmatch(head)
    if match is None:
        return None
    ys, mos, ds, hs, mis = match.groups()
    seconds = _day_seconds(int(ys), int(mos), int(ds), int(hs), int(mis))
    if seconds is None:
        return None
    micros = seconds * 1_000_000
    if len(MINUTES) >= _CACHE_LIMIT:
        MINUTES.clear()
    MINUTES[head] = micros
    return micros


def _sliced_micros(s: str) -> int | None:
    """The canonical shapes by slicing, with the minute remembered in MINUTES: interpreted,
    a few C-level string methods beat reading digit by digit (which compiled code prefers)."""
    if len(s) < 19 or s[16] != ":" or not s.isascii():
        return None
    head = s[:16]
    base = MINUTES.get(head)
    if base is None:
        base = _minute_micros(head)
    second = _MICROS_OF_SECOND.get(s[17:19])
    if base is None or second is None:
        return None
    tail = s[19:]
    if not tail or tail == "Z":
        return base + second
    if tail[0] == ".":
        digits = tail[1:-1] if tail[-1] == "Z" else tail[1:]
        if digits.isdigit():  # ASCII (checked above): [0-9]+
            return base + second + (int(digits) if len(digits) == 6 else int(digits[:6].ljust(6, "0")))
    return None


def _parse_timestamp_text(text: str) -> int | None:
    s = text.strip()
    # The canonical shapes (`...SS`, `...SSZ`, `...SS.fff`, `...SS.fffZ`) first, the way that is
    # fastest for how this module runs; every other shape (zones), and anything invalid, takes
    # the full grammar.
    value = _canonical_micros(s) if COMPILED else _sliced_micros(s)
    if value is not None:
        return value
    match = _TIMESTAMP.fullmatch(s)
    if match is None:
        return None
    ys, mos, ds, hs, mis, ss = match.group(1, 2, 3, 4, 5, 6)
    frac: str | None = match.group(7)
    zone: str | None = match.group(8)
    seconds = _day_seconds(int(ys), int(mos), int(ds), int(hs), int(mis))
    second = int(ss)
    if seconds is None or second > 59:
        return None
    seconds += second
    if zone is not None and zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_hours > 23 or zone_minutes > 59:
            return None
        offset = zone_hours * 3600 + zone_minutes * 60
        seconds -= offset if zone[0] == "+" else -offset
    micros = seconds * 1_000_000 + (int(frac[:6].ljust(6, "0")) if frac else 0)
    # a zone can move 0001-01-01 or 9999-12-31 out of the years a time is written in: as year 0000
    return micros if _FIRST_US <= micros <= _LAST_US else None


def parse_timestamp_text(text: str) -> int | None:
    """`YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM]`, surrounding whitespace ignored, UTC when
    no zone; the fraction is kept to the microsecond. A date or time that does not exist is None,
    and so is one that its zone moves out of years 0001-9999 in UTC.
    Texts of whole seconds are remembered in TIMESTAMPS (bounded): fleets send the same instants
    again and again (every meter at :00 and :30), while sub-second clock jitter never repeats."""
    value = TIMESTAMPS.get(text)
    if value is None:
        value = parse_unseen_timestamp_text(text)
    return value


def parse_unseen_timestamp_text(text: str) -> int | None:
    """parse_timestamp_text for a text the caller already looked up in TIMESTAMPS."""
    value = _parse_timestamp_text(text)
    if value is not None and value % 1_000_000 == 0:
        if len(TIMESTAMPS) >= _CACHE_LIMIT:
            TIMESTAMPS.clear()
        TIMESTAMPS[text] = value
    return value


def parse_timestamp(value: object) -> int | None:
    """A timestamp from text (the grammar above) or a JSON number: epoch seconds, or epoch
    milliseconds when above 10^11, within years 0001-9999. Anything else (booleans, null,
    objects, a number beyond those years) is None."""
    if isinstance(value, str):
        return parse_timestamp_text(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return None
    us: int
    if isinstance(value, int):
        us = value * 1000 if value > _EPOCH_MS_ABOVE else value * 1_000_000
    else:
        scaled = value * 1000 if value > _EPOCH_MS_ABOVE else value * 1_000_000
        if not _FIRST_US - 1 <= scaled <= _LAST_US + 1:
            return None  # far beyond the years (1e308 scales to infinity, which round() refuses)
        us = round(scaled)
    return us if _FIRST_US <= us <= _LAST_US else None


def parse_consumption(value: object) -> float | None:
    """kWh from text (optional sign, digits with an optional fraction, optional exponent;
    surrounding whitespace ignored) or a JSON number. A number in the grammar is a number however
    large (`1e400` is +inf, later out of range); `-0` is zero. Anything else is None."""
    if isinstance(value, str):
        number = CONSUMPTIONS.get(value)
        if number is None:
            number = _parse_consumption_text(value)
            if number is not None:
                if len(CONSUMPTIONS) >= _CACHE_LIMIT:
                    CONSUMPTIONS.clear()
                CONSUMPTIONS[value] = number
        return number
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return None if value != value else value + 0.0
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return float("inf") if value > 0 else float("-inf")
    return None


def _parse_consumption_text(value: str) -> float | None:
    text = value.strip()
    if text.isascii() and text.replace(".", "", 1).isdigit():
        return float(text)  # the common shape: unsigned digits with at most one dot, no exponent
    if _NUMBER.fullmatch(text) is None:
        return None
    number = float(text) + 0.0
    if number == 0.0 and text[0] == "-" and any(c in "123456789" for c in text.split("e")[0].split("E")[0]):
        return -_SMALLEST  # below a float's range but still negative: `-1e-400` is not zero
    return number


def text_above(value: object, limit: float) -> bool:
    """Whether `value` is text of a number above `limit` though its float is `limit` itself: the
    float of `1000.00000000000001` is 1000.0, yet that number is above a 1000 kWh maximum and
    so out of range (§3.1: a number in the grammar is that number; exactly the maximum is valid).
    Asked only of values whose float equals the limit, so it costs nothing on the way of the rest."""
    if not isinstance(value, str):
        return False  # a JSON number is a double already: what it was written as is gone
    try:
        return Decimal(value.strip()) > Decimal(limit)
    except InvalidOperation:
        return False


def format_timestamp(micros: int) -> str:
    """UTC `YYYY-MM-DDTHH:MM:SSZ`, with a non-zero fraction written without trailing zeros."""
    seconds, fraction = divmod(micros, 1_000_000)
    days, rest = divmod(seconds, 86400)
    year, month, day = civil_from_days(days)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        text += "." + f"{fraction:06d}".rstrip("0")
    return text + "Z"
