"""JSON text read exactly: integers beyond 64 bits stay integers, lone surrogates are refused."""

from __future__ import annotations

import pytest

from metrify.adapters import json_text


@pytest.mark.parametrize(
    "number",
    [123456789012345678901234, 18446744073709551616, -9223372036854775809, 10**40, -(10**19)],
)
def test_integers_beyond_64_bits_are_read_exactly(number: int) -> None:
    # orjson alone reads each of these as a float
    value = json_text.loads(b'{"readings": [{"consumption_kwh": %d}]}' % number)
    assert value == {"readings": [{"consumption_kwh": number}]}
    assert type(value["readings"][0]["consumption_kwh"]) is int


@pytest.mark.parametrize(
    ("data", "long_run"),
    [
        (b'{"meter_id": "1234567890123456789"}', True),  # 19 digits, even in a string: checked once more
        (b'{"a": 1234567890123456789}', True),
        (b'{"a": 123456789012345678, "b": "2024-03-04T00:00:00Z"}', False),
        (b"12345678.90123456789", False),
        ("1234567890123456789\u00e9".encode(), True),
        (b"", False),
    ],
)
def test_a_run_of_19_digits_sends_a_document_to_the_exact_reader(data: bytes, long_run: bool) -> None:
    assert json_text.may_hold_long_integers(data) is long_run


def test_what_orjson_reads_exactly_is_read_the_same_either_way() -> None:
    data = (
        b'{"meter_id": "MTR-1", "timestamp": "2024-03-04T00:00:00Z", "consumption_kwh": 0.1, "n": 9223372036854775807}'
    )
    assert json_text.loads(data) == {
        "meter_id": "MTR-1",
        "timestamp": "2024-03-04T00:00:00Z",
        "consumption_kwh": 0.1,
        "n": 9223372036854775807,
    }


def test_a_lone_surrogate_is_not_text() -> None:
    with pytest.raises(json_text.NotJson):
        json_text.loads(b'{"meter_id": "\\ud800"}')
