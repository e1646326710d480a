"""Ingest bodies: a JSON object `{"readings": [...]}`, JSON lines, or CSV with a header.

Fields are recognised by name, case-insensitively, as in files (`metrify replay`). A reading that
is not an object, or a line that is not JSON, is still a reading: the stream core rejects it with
its reason. Only a body that cannot be read at all is refused as a whole.

A body may come compressed (`Content-Encoding: gzip` or `deflate`), as gateways send large batches
(the benchmarks' fleet's batch of 10,000 readings: 1.2 MB of JSON, 30 kB gzipped). The size limit holds for the
body as decompressed too, checked as it inflates: a few kB that would inflate to gigabytes are
refused at the limit, never held whole.
"""

from __future__ import annotations

import csv
import io
import zlib

from fastapi import Request

from metrify.adapters import json_text
from metrify.adapters.files.readers import (
    CONSUMPTION_COLUMNS,
    EXTRA_COLUMNS,
    METER_COLUMNS,
    TIME_COLUMNS,
    reading_from_mapping,
)
from metrify.domain.readings import RawReading
from metrify.entrypoints.api.problems import ApiProblem

JSON = "application/json"
NDJSON = "application/x-ndjson"
CSV = "text/csv"
_NDJSON_ALIASES = {NDJSON, "application/ndjson", "application/jsonl", "application/x-jsonlines"}
_UNREADABLE = RawReading(None, None, None)
_new = tuple.__new__


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it (or its announced length) passes `limit` bytes."""
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiProblem:
    return ApiProblem(413, "payload-too-large", f"the body is larger than {limit} bytes")


# zlib's window bits for each content coding: gzip's header and trailer; deflate as HTTP names it,
# the zlib format (RFC 9110, section 8.4.1.2), or raw deflate as some clients send it
_GZIP, _ZLIB, _RAW_DEFLATE = 16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS
_CODINGS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _ZLIB}
MOST_CODINGS = 2  # a body compressed twice over is odd already
MOST_MEMBERS = 64  # gzip members one after another: a file's few, not thousands
_SLICE = 64 * 1024  # compressed bytes given to zlib at a time


def decoded_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body before its Content-Encoding (none, `identity`, gzip or deflate; codings listed in
    the order they were applied, undone from the last). 413 once it inflates past `limit` bytes,
    400 when it is not what its coding says, 415 for a coding this API does not read."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    for coding in codings:
        if coding not in _CODINGS:
            raise ApiProblem(
                415,
                "unsupported-content-encoding",
                f"send the body as it is, or with Content-Encoding gzip or deflate, not {coding}",
            )
    if len(codings) > MOST_CODINGS:
        raise ApiProblem(400, "malformed-body", f"{len(codings)} content codings: at most {MOST_CODINGS}")
    for coding in reversed(codings):
        body = _inflated(body, coding, limit)
    return body


def _inflated(data: bytes, coding: str, limit: int) -> bytes:
    """`data` inflated, given to zlib a slice at a time: what follows a gzip member is copied a
    slice at most, never the rest of the body (with thousands of tiny members that copying was
    quadratic: minutes of CPU for a 16 MiB body)."""
    wbits = _CODINGS[coding]
    view = memoryview(data)
    parts: list[bytes] = []
    size = at = members = 0
    inflater = zlib.decompressobj(wbits)
    while True:
        chunk: bytes | memoryview = b""
        if inflater.eof:
            after = inflater.unused_data  # the rest of the slice the member ended in
            if wbits != _GZIP or not after and at >= len(view):
                if after or at < len(view):
                    raise ApiProblem(400, "malformed-body", f"bytes follow the end of the {coding} data")
                return b"".join(parts)
            if (after[:1] or view[at : at + 1].tobytes()) == b"\0":  # not a member: zeros to the end, or wrong
                if after.strip(b"\0") or view[at:].tobytes().strip(b"\0"):
                    raise ApiProblem(400, "malformed-body", f"bytes follow the end of the {coding} data")
                return b"".join(parts)  # zeros after the last member, which gzip(1) reads past too
            members += 1
            if members >= MOST_MEMBERS:
                raise ApiProblem(400, "malformed-body", f"more than {MOST_MEMBERS} gzip members one after another")
            inflater = zlib.decompressobj(wbits)  # gzip members may follow one another (RFC 1952)
            chunk = after
        if not chunk:
            if at >= len(view):
                raise ApiProblem(400, "malformed-body", f"the {coding} data ends before its end")
            chunk = view[at : at + _SLICE]
            at += len(chunk)
        try:
            part = inflater.decompress(chunk, limit + 1 - size)
        except zlib.error as exc:
            if wbits == _ZLIB and size == 0 and at <= _SLICE:  # raw deflate, without the zlib format's header
                wbits, at, inflater = _RAW_DEFLATE, 0, zlib.decompressobj(_RAW_DEFLATE)
                continue
            raise ApiProblem(400, "malformed-body", f"the body is not {coding} data ({exc})") from None
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise _too_large(limit)
        parts.append(part)


def parse_readings(content_type: str | None, body: bytes, max_readings: int) -> list[RawReading]:
    kind = media_type(content_type)
    if kind == JSON or kind.endswith("+json"):
        rows = _json(body)
    elif kind in _NDJSON_ALIASES:
        rows = _ndjson(body)
    elif kind == CSV:
        rows = _csv(body)
    else:
        raise ApiProblem(
            415,
            "unsupported-media-type",
            f'send {JSON} ({{"readings": [...]}}), {NDJSON} or {CSV}, not {kind or "a body without a type"}',
        )
    if len(rows) > max_readings:
        raise ApiProblem(413, "too-many-readings", f"{len(rows)} readings: at most {max_readings} in one batch")
    return rows


_EXTRAS = frozenset(EXTRA_COLUMNS)
_PLAIN = frozenset(("meter_id", "timestamp", "consumption_kwh", *EXTRA_COLUMNS))


def _reading(item: object) -> RawReading:
    """`reading_from_mapping`, with a shortcut for the common case where the keys are the plain
    lower-case names (then matching them case-insensitively, or by alias, changes nothing)."""
    if type(item) is not dict:
        return _UNREADABLE
    if not item.keys() <= _PLAIN:
        return reading_from_mapping(item)
    get = item.get
    extra = None
    if len(item) > 3 or "meter_id" not in item or "timestamp" not in item or "consumption_kwh" not in item:
        extra = {k: v for k, v in item.items() if k in _EXTRAS and v is not None} or None
    # tuple.__new__: the NamedTuple's own __new__ is a Python function, a fifth of this parse
    return _new(RawReading, (get("meter_id"), get("timestamp"), get("consumption_kwh"), extra, 0))


def _json(body: bytes) -> list[RawReading]:
    try:
        document = json_text.loads(body)
    except json_text.NotJson as exc:
        raise ApiProblem(400, "malformed-body", f"the body is not JSON ({exc})") from None
    items = document.get("readings") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise ApiProblem(422, "validation-error", 'the body must be a JSON object with a "readings" array')
    return [_reading(item) for item in items]


def _ndjson(body: bytes) -> list[RawReading]:
    rows: list[RawReading] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            item = json_text.loads(line)
        except json_text.NotJson:  # a line is a reading, as in a JSON-lines file: rejected, not fatal
            rows.append(_UNREADABLE)
            continue
        rows.append(_reading(item))
    return rows


def _pick(header: list[str], candidates: tuple[str, ...]) -> int | None:
    lowered = [name.strip().lower() for name in header]
    for candidate in candidates:
        if candidate in lowered:
            return lowered.index(candidate)
    return None


def _csv(body: bytes) -> list[RawReading]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiProblem(400, "malformed-body", f"the body is not UTF-8 text (bad byte at {exc.start})") from None
    try:
        table = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ApiProblem(400, "malformed-body", f"the body is not CSV ({exc})") from None
    if not table:
        raise ApiProblem(422, "validation-error", "a CSV body starts with a header row")
    header, rows = table[0], table[1:]
    meter, time, kwh = (_pick(header, c) for c in (METER_COLUMNS, TIME_COLUMNS, CONSUMPTION_COLUMNS))
    if meter is None or time is None or kwh is None:
        raise ApiProblem(
            422, "validation-error", "the CSV header needs meter_id, timestamp and consumption_kwh columns (or aliases)"
        )
    extras = [(name, index) for name in EXTRA_COLUMNS if (index := _pick(header, (name,))) is not None]
    readings: list[RawReading] = []
    for row in rows:
        if not row:
            continue

        def cell(index: int, row: list[str] = row) -> str | None:
            return row[index] if index < len(row) else None

        extra = {name: value for name, index in extras if (value := cell(index)) not in (None, "")} or None
        readings.append(RawReading(cell(meter), cell(time), cell(kwh), extra))
    return readings
