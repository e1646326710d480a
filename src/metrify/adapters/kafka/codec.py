"""What Metrify's Kafka messages hold, byte for byte (the README's "Kafka" section documents it).

Raw input (`<prefix>raw`, one message per reading, key = the trimmed meter id):
    a JSON object of the reading's fields exactly as received, strings staying strings:
    {"meter_id": " MTR-1 ", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": "0.25", ...extras}
    Any object the JSON-lines reader accepts is accepted (names matched case-insensitively);
    anything else (not UTF-8 JSON, not an object) is a poison message: a `malformed_message` reject.

Outputs (one message per batch, input partition and kind, in the input's partition, key = the
kind; value = a JSON array of records, each a JSON array, oldest first):
    readings    [meter_id, ts_us, slot_us, kwh, status, partition, extra|null]
    rejected    [meter_id, raw_timestamp, raw_consumption, reason, partition, parsed_ts_us|null, position]
    too-late    [meter_id, ts_us, kwh, delay_us, partition, position]
    gaps        [event, meter_id, missing_from_us, missing_to_us|null, missing_intervals, previous_from_us|null]
                with event one of "opened", "changed", "closed", "healed"
    aggregates  [meter_id, window_us, window_start_us, count, sum_kwh, min_kwh, max_kwh]
    metrics     one JSON object per batch and partition (counts, watermark, offsets, timing)

State changelog (compacted, partitioned like the input): key = meter id, value = the meter's state
as the stream core's plain data (JSON); key "" (no meter has an empty id) = the partition header
{"next_offset": n, "max_event_time": t|null}, written last in every transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from metrify.adapters import json_text
from metrify.adapters.files.readers import reading_from_mapping
from metrify.application.kafka_stream import Malformed
from metrify.domain.readings import RawReading
from metrify.domain.stream.events import (
    GapChanged,
    GapClosed,
    GapHealed,
    GapOpened,
    ReadingAccepted,
    ReadingRejected,
    ReadingTooLate,
    WindowUpdated,
)

HEADER_KEY = b""
_NOT_ORJSON = object()
_STR_OR_NONE = (str, type(None))
_new: Any = tuple.__new__  # a NamedTuple from a ready tuple, without its Python-level __new__

# -- raw readings ---------------------------------------------------------------------------------


def encode_raw(reading: RawReading) -> bytes:
    """A raw reading as the JSON object the raw topic carries; values exactly as received."""
    item: dict[str, Any] = {
        "meter_id": reading.meter_id,
        "timestamp": reading.timestamp,
        "consumption_kwh": reading.consumption_kwh,
    }
    if reading.extra:
        for name, value in reading.extra.items():
            item.setdefault(name, value)
    if all(type(value) in _STR_OR_NONE for value in item.values()):
        try:
            return orjson.dumps(item)
        except orjson.JSONEncodeError:  # a lone surrogate: the exact encoder escapes it
            pass
    return _exact_dumps(item)


def _exact_dumps(value: Any) -> bytes:
    """Values that come back exactly (orjson turns NaN into null and refuses the others)."""
    return json_text.dumps_exact(value).encode("ascii")


def _loads_exact(data: bytes) -> Any:
    """An output's JSON as it was written: raw values exactly, lone surrogates included."""
    return json_text.loads(data, text_only=False)


def _common_reading(item: Any, position: int) -> RawReading | None:
    """The common raw message, as `replay --to-kafka` and the ingest write it: an object of three
    strings (or nulls). None for anything else."""
    if type(item) is dict and len(item) == 3:
        get = item.get
        meter_id = get("meter_id", _NOT_ORJSON)
        timestamp = get("timestamp", _NOT_ORJSON)
        kwh = get("consumption_kwh", _NOT_ORJSON)
        if type(meter_id) in _STR_OR_NONE and type(timestamp) in _STR_OR_NONE and type(kwh) in _STR_OR_NONE:
            return _new(RawReading, (meter_id, timestamp, kwh, None, position))  # type: ignore[no-any-return]
    return None


def decode_raw_common(value: bytes | None, position: int) -> RawReading | None:
    """decode_raw for the common message only (no key needed); None for anything else, which
    decode_raw then reads in full."""
    if value is None:
        return None
    try:
        item = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return _common_reading(item, position)


def decode_raw(key: bytes | None, value: bytes | None, position: int) -> RawReading | Malformed:
    """One raw message as a RawReading (position = its offset), or Malformed when it is poison."""
    if value is None:
        return Malformed(_key_text(key), position, "the message has no value")
    try:
        item = json_text.shallow(value, orjson.loads(value))
    except orjson.JSONDecodeError:
        item = _NOT_ORJSON
    except json_text.NotJson as exc:  # nested too deep: for files, bodies and here alike
        return Malformed(_key_text(key), position, f"not JSON: {exc}")
    common = _common_reading(item, position)
    if common is not None:
        return common
    if item is _NOT_ORJSON or json_text.may_hold_long_integers(value):
        # what orjson refuses or reads inexactly (see json_text); lone surrogates are poison
        try:
            item = json_text.loads(value)
        except json_text.NotJson as exc:
            return Malformed(_key_text(key), position, f"not JSON: {exc}")
    if type(item) is not dict:
        return Malformed(_key_text(key), position, f"a JSON {type(item).__name__}, not an object")
    if len(item) == 3 and "meter_id" in item and "timestamp" in item and "consumption_kwh" in item:
        return RawReading(item["meter_id"], item["timestamp"], item["consumption_kwh"], None, position)
    return reading_from_mapping(item)._replace(position=position)


def _key_text(key: bytes | None) -> str:
    if not key:
        return ""
    return key.decode("utf-8", "replace").strip()


# -- outputs -----------------------------------------------------------------------------------------

READINGS = "readings"
REJECTED = "rejected"
TOO_LATE = "too-late"
GAPS = "gaps"
AGGREGATES = "aggregates"
ANOMALIES = "anomalies"
METRICS = "metrics"
OUTPUT_KINDS = (READINGS, REJECTED, TOO_LATE, GAPS, AGGREGATES)

_GAP_NAMES = {GapOpened: "opened", GapChanged: "changed", GapClosed: "closed", GapHealed: "healed"}
_GAP_TYPES = {name: kind for kind, name in _GAP_NAMES.items()}
_KIND_OF = {
    ReadingAccepted: READINGS,
    ReadingRejected: REJECTED,
    ReadingTooLate: TOO_LATE,
    WindowUpdated: AGGREGATES,
    GapOpened: GAPS,
    GapChanged: GAPS,
    GapClosed: GAPS,
    GapHealed: GAPS,
}


def split_events(events: Iterable[Any]) -> dict[str, list[Any]]:
    """Events routed to their output kind, each list in the original order."""
    out: dict[str, list[Any]] = {}
    kind_of = _KIND_OF
    for event in events:
        kind = kind_of[type(event)]
        bucket = out.get(kind)
        if bucket is None:
            out[kind] = [event]
        else:
            bucket.append(event)
    return out


def encode_records(kind: str, events: list[Any]) -> bytes:
    """One envelope: the JSON array of records of one kind."""
    if kind == REJECTED:  # raw values: exact (big integers, NaN) whatever they are
        return _exact_dumps(events)
    if kind == GAPS:
        records: list[Any] = [(_GAP_NAMES[type(e)], *e) for e in events]
    else:
        records = list(map(tuple, events))  # orjson takes tuples, not their NamedTuple subclasses
    try:
        return orjson.dumps(records)
    except (orjson.JSONEncodeError, TypeError):
        return _exact_dumps(records)


RAW_TEXT_KEPT = 4096  # characters of a raw value's JSON text kept when a reject is cut


def cut_rejected(event: ReadingRejected) -> ReadingRejected:
    """The reject with each raw value (and the meter id) whose JSON text is longer than
    RAW_TEXT_KEPT characters replaced by a text of its first ones and how long it was: for a
    reject that would not fit in a Kafka message otherwise (its raw values are written exactly, a
    character outside ASCII as a 6-byte escape, so a 400 kB raw message made a 1.2 MB record,
    over the broker's 1 MB, and the transaction that carried it aborted on every try)."""
    return event._replace(
        meter_id=_cut(event.meter_id),
        timestamp=_cut(event.timestamp),
        consumption_kwh=_cut(event.consumption_kwh),
    )


def _cut(value: Any) -> Any:
    text = value if type(value) is str else json_text.dumps_exact(value)
    if len(text) <= RAW_TEXT_KEPT:
        return value
    return f"{text[:RAW_TEXT_KEPT]}... (cut: {len(text):,} characters in all)"


def decode_records(kind: str, value: bytes) -> list[Any]:
    """The events of one envelope, in order."""
    if kind == REJECTED:
        return [ReadingRejected(*r) for r in _loads_exact(value)]
    try:
        records = orjson.loads(value)
    except orjson.JSONDecodeError:  # an extra beyond a double (10**400, a LongInteger's digits)
        records = _loads_exact(value)
    else:
        # Only a reading's extras can hold an integer beyond 64 bits (that orjson reads inexactly).
        if kind == READINGS and any(r[6] is not None for r in records) and json_text.may_hold_long_integers(value):
            records = _loads_exact(value)
    if kind == READINGS:
        return [ReadingAccepted(*r) for r in records]
    if kind == AGGREGATES:
        return [WindowUpdated(*r) for r in records]
    if kind == TOO_LATE:
        return [ReadingTooLate(*r) for r in records]
    if kind == GAPS:
        return [_GAP_TYPES[r[0]](*r[1:]) for r in records]
    raise ValueError(f"no records of kind {kind!r}")


def encode_metrics(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record)


# -- state changelog -----------------------------------------------------------------------------------


def encode_state(data: Any) -> bytes:
    """A meter's state (plain lists of numbers); stdlib JSON when an integer exceeds 64 bits."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return _exact_dumps(data)


def decode_state(value: bytes) -> Any:
    return _loads_exact(value)


def encode_header(next_offset: int, max_event_time: int | None) -> bytes:
    return orjson.dumps({"next_offset": next_offset, "max_event_time": max_event_time})


def decode_header(value: bytes) -> tuple[int, int | None]:
    item = orjson.loads(value)
    return int(item["next_offset"]), item["max_event_time"]
