"""The raw topic's messages as readings: what is a reading comes through exactly, anything else is
poison (Malformed) that the worker rejects as `malformed_message` and moves past."""

from __future__ import annotations

import math

import pytest

from metrify.adapters.kafka.codec import decode_raw, encode_raw
from metrify.application.kafka_stream import Malformed
from metrify.domain.readings import LongInteger, RawReading


def test_the_common_message_is_a_reading_with_its_offset() -> None:
    value = b'{"meter_id": "M1", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": "0.5"}'
    assert decode_raw(b"M1", value, 7) == RawReading("M1", "2024-03-04T10:00:00Z", "0.5", None, 7)


def test_nan_and_integers_beyond_64_bits_come_through_exactly() -> None:
    reading = decode_raw(b"M1", b'{"meter_id": "M1", "timestamp": 123456789012345678901234, "kwh": NaN}', 3)
    assert isinstance(reading, RawReading)
    assert reading.timestamp == 123456789012345678901234
    assert isinstance(reading.consumption_kwh, float) and math.isnan(reading.consumption_kwh)


def test_an_integer_beyond_what_int_converts_goes_to_the_raw_topic_and_back_as_its_digits() -> None:
    extra = {"voltage": LongInteger("-" + "1" * 4400)}
    reading = RawReading("M1", "2024-03-04T10:00:00Z", LongInteger("9" * 5000), extra)
    back = decode_raw(b"M1", encode_raw(reading), 4)
    assert isinstance(back, RawReading) and back.position == 4
    assert str(back.consumption_kwh) == "9" * 5000 and back.consumption_kwh == math.inf
    assert back.extra is not None and str(back.extra["voltage"]) == "-" + "1" * 4400


@pytest.mark.parametrize(
    "value",
    [
        b'{"meter_id": "\\ud800M", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": "0.5"}',
        b'{"meter_id": "M1", "timestamp": "\\udc00", "consumption_kwh": NaN}',
        b'{"meter_id": "M1", "timestamp": 1, "kwh": 1, "region": ["\\ud800"]}',
        b'{"\\ud800": 1, "meter_id": "M1", "timestamp": 1, "kwh": NaN}',
    ],
)
def test_a_lone_surrogate_anywhere_makes_the_message_poison(value: bytes) -> None:
    # no meter id, changelog key or database text can hold one: it used to stop the worker
    decoded = decode_raw(b"K", value, 5)
    assert isinstance(decoded, Malformed)
    assert "lone surrogate" in decoded.detail and decoded.position == 5


def test_output_messages_stay_under_the_envelope_size_and_keep_every_record_in_order() -> None:
    from metrify.adapters.kafka.codec import REJECTED, decode_records, split_events
    from metrify.adapters.kafka.stream_log import ENVELOPE_BYTES, ENVELOPE_RECORDS, envelopes
    from metrify.domain.stream.events import ReadingRejected

    long = "9" * 2500  # a timestamp as received, kept as it came
    rejects = [ReadingRejected(f"M{i}", long, "0.5", "invalid_timestamp", 0, None, i) for i in range(1200)]
    records = split_events(rejects)[REJECTED]
    messages = list(envelopes(REJECTED, records))
    assert all(len(m) <= ENVELOPE_BYTES for m in messages)
    assert len(messages) > len(records) // ENVELOPE_RECORDS + 1  # 500 of these would be ~1.3 MB
    assert [r for m in messages for r in decode_records(REJECTED, m)] == records


def test_a_raw_value_as_deep_as_intake_reads_comes_back_from_its_output_message() -> None:
    """Intake reads JSON up to MAX_DEPTH levels; the rejected reading's output wraps its raw value
    two levels deeper (envelope, record), and the sink must read that back, not refuse it."""
    from metrify.adapters import json_text
    from metrify.adapters.kafka.codec import REJECTED, decode_records, encode_records
    from metrify.domain.stream.events import ReadingRejected

    depth = json_text.MAX_DEPTH - 1  # the reading's object is the first level
    line = b'{"meter_id": "M1", "timestamp": ' + b"[" * depth + b"]" * depth + b', "consumption_kwh": 1}'
    raw = json_text.loads(line)["timestamp"]
    rejected = [ReadingRejected("M1", raw, 1, "invalid_timestamp", 0, None, 0)]
    assert decode_records(REJECTED, encode_records(REJECTED, rejected)) == rejected


@pytest.mark.parametrize("depth", [65, 200, 1000])
def test_a_raw_message_nested_deeper_than_files_and_bodies_may_be_is_poison(depth: int) -> None:
    meter = b"[" * depth + b'"M1"' + b"]" * depth
    value = b'{"meter_id": ' + meter + b', "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": "0.5"}'
    decoded = decode_raw(b"M1", value, 7)
    assert isinstance(decoded, Malformed) and "nested deeper than 64" in decoded.detail


def test_a_raw_message_within_the_depth_limit_is_read() -> None:
    meter = b"[" * 10 + b'"M1"' + b"]" * 10
    value = b'{"meter_id": ' + meter + b', "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": "0.5"}'
    assert isinstance(decode_raw(b"M1", value, 7), RawReading)


def test_a_reject_too_big_for_a_kafka_message_has_its_raw_values_cut() -> None:
    """A raw message of ~400 kB of non-ASCII text is written escaped (6 bytes a character): the
    reject's record would be ~1.2 MB, over the broker's 1 MB, and its transaction aborted for ever."""
    from metrify.adapters.kafka.codec import RAW_TEXT_KEPT, REJECTED, decode_records
    from metrify.adapters.kafka.stream_log import MESSAGE_BYTES, envelopes
    from metrify.domain.stream.events import ReadingRejected

    huge = "é" * 200_000
    reject = ReadingRejected("M1", huge, {"kwh": ["ü" * 5000]}, "invalid_timestamp", 3, None, 42)
    (message,) = envelopes(REJECTED, [reject])
    assert len(message) <= MESSAGE_BYTES
    (back,) = decode_records(REJECTED, message)
    assert back.meter_id == "M1" and back.reason == "invalid_timestamp" and (back.partition, back.position) == (3, 42)
    assert back.timestamp.startswith("é" * RAW_TEXT_KEPT) and "200,000 characters" in back.timestamp
    assert back.consumption_kwh.startswith('{"kwh":["\\u00fc') and "cut:" in back.consumption_kwh
    # one that fits goes exactly as it came, however long
    (message,) = envelopes(REJECTED, [reject._replace(timestamp="é" * 100_000)])
    assert decode_records(REJECTED, message)[0].timestamp == "é" * 100_000


def test_outputs_holding_numbers_beyond_a_double_come_back_to_the_digit() -> None:
    """A reject's raw values and an accepted reading's extras are written exactly: an envelope of
    them once wrote `Infinity` (the digits lost), and one the sink could not read (every event
    in it skipped)."""
    from metrify.adapters.kafka.codec import READINGS, REJECTED, decode_records, encode_records
    from metrify.domain.stream.events import ReadingAccepted, ReadingRejected

    huge = LongInteger("9" * 5000)
    rejected = [ReadingRejected("M1", "2024-03-04T10:00:00Z", huge, "out_of_range", 0, 1, 7)]
    back = decode_records(REJECTED, encode_records(REJECTED, rejected))
    assert back == rejected and str(back[0].consumption_kwh) == "9" * 5000
    readings = [
        ReadingAccepted("M1", 1, 1, 0.5, "ON_TIME", 0, {"voltage": huge, "region": "north"}),
        ReadingAccepted("M2", 1, 1, 0.5, "ON_TIME", 0, {"current": 10**400}),
        ReadingAccepted("M3", 1, 1, 0.5, "ON_TIME", 0, None),
    ]
    back = decode_records(READINGS, encode_records(READINGS, readings))
    assert [r.meter_id for r in back] == ["M1", "M2", "M3"]
    assert back[0].extra is not None and str(back[0].extra["voltage"]) == "9" * 5000
    assert back[1].extra == {"current": 10**400}
