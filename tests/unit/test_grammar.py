"""The text grammars of DESIGN §3.1, example by example: timestamps, consumption, export format."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrify.domain.stream import grammar
from metrify.domain.stream.grammar import format_timestamp, parse_consumption, parse_timestamp

US = 1_000_000
T = 1709546400 * US  # 2024-03-04T10:00:00Z


# Timestamps in text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-03-04T10:00:00Z", T),
        ("2024-03-04 10:00:00Z", T),  # a space instead of T
        ("2024-03-04T10:00:00", T),  # without a zone it is UTC
        ("2024-03-04 10:00:00", T),
        ("  2024-03-04T10:00:00Z \t\n", T),  # surrounding whitespace ignored
        ("2024-03-04T11:00:00+01:00", T),
        ("2024-03-04T04:30:00-05:30", T),
        ("2024-03-04T10:00:00+00:00", T),
        ("2024-03-04T10:00:00-00:00", T),
        ("2024-03-04T10:00:00.25Z", T + 250_000),
        ("2024-03-04T10:00:00.5", T + 500_000),
        ("2024-03-04T10:00:00.000001Z", T + 1),
        ("2024-03-04T10:00:00.123456Z", T + 123_456),
        ("2024-03-04T10:00:00.1234567Z", T + 123_456),  # any length, kept to the microsecond
        ("2024-03-04T10:00:00.999999999Z", T + 999_999),  # never carries into the next second
        ("2024-03-04T10:00:00.000000000000000001Z", T),
        ("2024-03-04T11:00:00.75+01:00", T + 750_000),
        ("1970-01-01T00:00:00Z", 0),
        ("2024-02-29T00:00:00Z", 1709164800 * US),  # a leap day exists in 2024
        ("2000-02-29T00:00:00Z", 951782400 * US),  # and in 2000 (divisible by 400)
        ("0001-01-01T00:00:00Z", -62135596800 * US),
        ("9999-12-31T23:59:59Z", 253402300799 * US),
        ("2024-12-31T23:59:59+14:00", 1735639199 * US),
    ],
)
def test_timestamps_in_the_grammar_are_read_to_the_microsecond(text, expected):
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-03-04T10:00:00+0100",  # the zone needs its colon
        "2024-03-04T10:00:00+01",  # and its minutes
        "2024-02-30T00:00:00",  # February 30
        "2023-02-29T00:00:00",  # no leap day in 2023
        "1900-02-29T00:00:00",  # nor in 1900
        "2024-04-31T00:00:00",
        "2024-03-04T24:00:00",  # hour 24
        "2024-03-04T10:00:60",  # second 60
        "2024-03-04T10:60:00",
        "0000-01-01T00:00:00",  # year 0000
        "2024-00-10T00:00:00",
        "2024-13-10T00:00:00",
        "2024-03-00T00:00:00",
        "2024-3-04T10:00:00",  # exactly those widths
        "2024-03-4T10:00:00",
        "2024-03-04T1:00:00",
        "2024-03-04T10:0:00",
        "2024-03-04T10:00:0",
        "24-03-04T10:00:00",
        "02024-03-04T10:00:00",
        "2024-03-04T10:00",  # seconds are required
        "2024-03-04",
        "10:00:00",
        "2024-03-04T10:00:00.",  # a dot needs digits
        "2024-03-04T10:00:00,5",
        "2024-03-04t10:00:00",
        "2024-03-04T10:00:00z",
        "2024-03-04T10:00:00 Z",
        "2024-03-04T10:00:00UTC",
        "2024-03-04T10:00:00+01:00Z",
        "2024-03-04T10:00:00Z+01:00",
        "2024-03-04_10:00:00",
        "2024-03-04  10:00:00",
        "2024/03/04T10:00:00",
        "\u0662\u0660\u0662\u0664-03-04T10:00:00",  # digits must be ASCII
        "2024-03-04T\uff11\uff10:00:00",
        "1709546400",  # digits in CSV text are not a timestamp
        "1709546400000",
        "1709546400.5",
        "",
        "   ",
        "abc",
    ],
)
def test_timestamps_outside_the_grammar_are_invalid(text):
    assert parse_timestamp(text) is None


@pytest.mark.parametrize(
    "number, expected",
    [
        (1709546400, T),  # epoch seconds
        (1709546400.25, T + 250_000),
        (1709546400000, T),  # epoch milliseconds when above 10^11
        (1709546400250, T + 250_000),
        (1709546400250.5, T + 250_500),
        (10**11, 10**11 * US),  # exactly 10^11 is not above it: seconds
        (10**11 + 1, (10**11 + 1) * 1000),
        (float(10**11), 10**11 * US),
        (0, 0),
    ],
)
def test_json_numbers_are_epoch_seconds_or_milliseconds(number, expected):
    assert parse_timestamp(number) == expected


@pytest.mark.parametrize("value", [None, True, False, float("nan"), float("inf"), float("-inf"), [], {}])
def test_other_json_values_are_not_timestamps(value):
    assert parse_timestamp(value) is None


@pytest.mark.parametrize(
    "number, expected",
    [
        (-62_135_596_800, "0001-01-01T00:00:00Z"),
        (99_999_999_999, "5138-11-16T09:46:39Z"),  # the last number read as seconds
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),  # milliseconds, the last one
    ],
)
def test_json_numbers_reach_the_years_text_can_name(number, expected):
    parsed = parse_timestamp(number)
    assert parsed is not None and format_timestamp(parsed) == expected


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00+01:00", "0001-01-01T00:59:59.999999+01:00", "9999-12-31T23:30:00-01:00"]
)
def test_a_zone_that_moves_a_time_out_of_years_0001_to_9999_makes_it_invalid(text):
    assert parse_timestamp(text) is None


def test_the_first_and_last_instants_with_zones_are_valid():
    assert format_timestamp(parse_timestamp("0001-01-01T01:00:00+01:00")) == "0001-01-01T00:00:00Z"
    assert format_timestamp(parse_timestamp("9999-12-31T22:59:59.5-01:00")) == "9999-12-31T23:59:59.5Z"


@pytest.mark.parametrize(
    "number",
    [-62_135_596_801, 253_402_300_800_000, 10**16, 1e16, -(10**13), 1e300, -1e300, 1e308, -1e308, 1.79e308],
)
def test_json_numbers_beyond_years_0001_to_9999_are_not_timestamps(number):
    # as year 0000 in text: no time the exports could write, nor a database store; 1e308 scales to
    # infinity, which once raised instead (a 500 for the batch, a replay stopped)
    assert parse_timestamp(number) is None


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers())
def test_every_json_number_is_a_timestamp_or_none(number):
    parsed = parse_timestamp(number)
    assert parsed is None or format_timestamp(parse_timestamp(format_timestamp(parsed))) == format_timestamp(parsed)


# Consumption


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.25", 0.25),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e9", 1e9),
        ("-0.5", -0.5),
        ("  0.25\t", 0.25),  # surrounding whitespace ignored
        ("+1.5", 1.5),
        ("2.5E-1", 0.25),
        ("1e+2", 100.0),
        ("5.e1", 50.0),
        (".5e1", 5.0),
        ("007", 7.0),
        ("0", 0.0),
        ("1000", 1000.0),
    ],
)
def test_consumption_in_the_grammar_is_a_number(text, expected):
    assert parse_consumption(text) == expected


def test_a_number_in_the_grammar_is_a_number_however_large():
    assert parse_consumption("1e400") == math.inf  # later out_of_range
    assert parse_consumption("-1e400") == -math.inf  # later negative_consumption
    assert parse_consumption(10**400) == math.inf
    assert parse_consumption(-(10**400)) == -math.inf


@pytest.mark.parametrize("value", ["-0", "-0.0", " -0 ", "-0e5", -0.0, "+0", 0])
def test_minus_zero_is_zero_and_not_negative(value):
    parsed = parse_consumption(value)
    assert parsed == 0.0
    assert not parsed < 0
    assert math.copysign(1.0, parsed) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "1_0",
        "0x10",
        "0,5",
        "",
        "   ",
        ".",
        "-",
        "+",
        "e5",
        ".e5",
        "1e",
        "1e+",
        "1.2.3",
        "+-1",
        "1 0",
        "1e5.5",
        "\u0661",  # Arabic-Indic digit one
        "\uff11",  # fullwidth digit one
        "1kWh",
    ],
)
def test_consumption_outside_the_grammar_is_invalid(text):
    assert parse_consumption(text) is None


@pytest.mark.parametrize("value, expected", [(0.25, 0.25), (1, 1.0), (-2, -2.0), (1e9, 1e9), (float("inf"), math.inf)])
def test_json_numbers_are_consumption(value, expected):
    assert parse_consumption(value) == expected


@pytest.mark.parametrize("value", [None, True, False, float("nan"), [], {}])
def test_other_json_values_are_not_consumption(value):
    assert parse_consumption(value) is None


# Export format


@pytest.mark.parametrize(
    "micros, text",
    [
        (T, "2024-03-04T10:00:00Z"),
        (T + 250_000, "2024-03-04T10:00:00.25Z"),  # the contract's own example
        (T + 1, "2024-03-04T10:00:00.000001Z"),
        (T + 500_000, "2024-03-04T10:00:00.5Z"),
        (T + 123_456, "2024-03-04T10:00:00.123456Z"),
        (0, "1970-01-01T00:00:00Z"),
        (1709164800 * US, "2024-02-29T00:00:00Z"),
        (253402300799 * US, "9999-12-31T23:59:59Z"),
        (-1, "1969-12-31T23:59:59.999999Z"),
    ],
)
def test_exports_write_utc_with_a_trimmed_fraction(micros, text):
    assert format_timestamp(micros) == text


@pytest.mark.parametrize("micros", [T, T + 1, T + 250_000, 0, 951782400 * US + 999_999, -62135596800 * US])
def test_exported_timestamps_read_back_to_the_same_instant(micros):
    assert parse_timestamp(format_timestamp(micros)) == micros


@pytest.mark.parametrize("text", ["-1e-400", "-0.1e-323"])
def test_a_negative_number_too_small_for_a_float_is_still_negative(text):
    # §3.1: "a number in that grammar is a number however large"; -1e-400 is not -0, it is a
    # negative number, so it is negative_consumption (as -1e-320, a subnormal, already is).
    assert parse_consumption("-1e-320") < 0
    assert parse_consumption(text) < 0


# The digit-by-digit reading of the canonical shapes agrees with the calendar


def _calendar_reading(text: str) -> int | None:
    """An independent reading of `YYYY-MM-DD[T ]HH:MM:SS[.f+][Z]` through datetime."""
    import re
    from datetime import UTC, datetime, timedelta

    match = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z?", text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    fraction = match.group(7) or ""
    seconds = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)
    return seconds * US + int((fraction + "000000")[:6])


@settings(max_examples=400, deadline=None)
@given(
    st.tuples(
        st.integers(0, 9999),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 25),
        st.integers(0, 61),
        st.integers(0, 61),
        st.sampled_from(["", ".", ".5", ".123456", ".1234567", ".00x", ".9999999999"]),
        st.sampled_from(["", "Z", "z", "+", " "]),
        st.sampled_from(["T", " ", "t"]),
    )
)
def test_canonical_timestamps_read_digit_by_digit_agree_with_the_calendar(parts) -> None:
    year, month, day, hour, minute, second, fraction, zone, separator = parts
    text = f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"
    expected = _calendar_reading(text)
    assert parse_timestamp(text) == expected, text
    # both fast readings (compiled and interpreted), whichever this process runs: each one either
    # leaves the text to the full grammar (None) or agrees with the calendar
    for fast in (grammar._canonical_micros, grammar._sliced_micros):
        value = fast(text.strip())
        assert value is None or value == expected, (fast.__name__, text)
    if expected is not None and separator != "t" and zone in ("", "Z", " ") and fraction != ".":
        assert grammar._canonical_micros(text.strip()) == expected, text
