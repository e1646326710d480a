"""JSON text read exactly: integers beyond 64 bits stay integers (beyond what int() converts, their
digits), lone surrogates are refused."""

from __future__ import annotations

import pickle

import pytest

from metrify.adapters import json_text
from metrify.domain.readings import LongInteger


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


@pytest.mark.parametrize("depth", [1, 2, 63, 64])
def test_a_document_nested_up_to_the_limit_is_read(depth: int) -> None:
    for data in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        assert json_text.loads(data) is not None
    assert json_text.MAX_DEPTH == 64


@pytest.mark.parametrize("depth", [65, 1000, 1024])
def test_a_document_nested_deeper_is_not_read(depth: int) -> None:
    """Past ~1,000 levels Python cannot turn the value back into text (a 500, a stopped replay)."""
    with pytest.raises(json_text.NotJson, match="nested deeper than 64"):
        json_text.loads(b"[" * depth + b"]" * depth)
    with pytest.raises(json_text.NotJson):  # the exact reader's path (the standard library's own limit, or ours)
        json_text.loads(b"[" * depth + b"12345678901234567890" + b"]" * depth)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = "[" * 200
    assert json_text.loads(b'{"a": "' + text.encode() + b'", "b": [{"c": "]]]}}}"}]}') == {
        "a": text,
        "b": [{"c": "]]]}}}"}],
    }


def test_a_batch_of_flat_readings_is_seen_shallow_from_its_bytes_alone() -> None:
    batch = b'{"readings": [' + b",".join([b'{"meter_id": "M", "kwh": [1]}'] * 1000) + b"]}"
    assert json_text.nested_within(batch, 3)
    assert not json_text.nested_within(b"[" * 10 + b"]" * 10, 3)


@pytest.mark.parametrize("sign", ["", "-"])
def test_an_integer_of_more_digits_than_int_converts_is_read_as_a_long_integer(sign: str) -> None:
    """The standard library refuses a document holding one (over 4,300 digits): the contract reads a
    number however large, and the reading it is in is checked like any other."""
    digits = sign + "9" * 5000
    value = json_text.loads(b'{"readings": [{"consumption_kwh": %s, "n": 12345678901234567890}]}' % digits.encode())
    number = value["readings"][0]["consumption_kwh"]
    assert type(number) is LongInteger and str(number) == digits
    assert number == (float("-inf") if sign else float("inf"))
    assert value["readings"][0]["n"] == 12345678901234567890  # the others still exactly
    assert pickle.loads(pickle.dumps(number)).digits == digits  # as the stream writer gets a batch


def test_a_long_integer_is_written_back_as_its_digits_wherever_it_lies() -> None:
    long = LongInteger("7" * 5000)
    assert json_text.dumps_exact(long) == "7" * 5000
    value = {"a": [1, long, {"b": LongInteger("-" + "8" * 4400)}], "c": "\x00long-integer-0:0", "d": float("inf")}
    text = json_text.dumps_exact(value)
    assert text == ('{"a":[1,' + "7" * 5000 + ',{"b":-' + "8" * 4400 + '}],"c":"\\u0000long-integer-0:0","d":Infinity}')
    back = json_text.loads_exact(text)
    assert back["a"][1].digits == "7" * 5000 and back["a"][2]["b"].digits == "-" + "8" * 4400
    assert back["c"] == "\x00long-integer-0:0"
