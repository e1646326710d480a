"""JSON text read exactly as it was written, for every way readings come in (files, HTTP bodies,
the raw Kafka topic).

orjson reads nearly all of it, fast. What it refuses or changes goes through the standard
library instead: numbers beyond a double (`1e400`, which the contract reads as out of range,
not as a broken line), NaN, and integers beyond 64 bits (orjson reads those as floats, and a
rejected reading keeps its raw values as received). An integer of more digits than Python
converts (over 4,300) is read as a LongInteger: the standard library refused the whole document
for it, where the contract reads a number however large (one reading out of range, not a
refused HTTP batch or an unreadable line). JSON's escapes can also spell lone
surrogates (`\\ud800`), which are not Unicode text: no meter id, key or database text can hold
one, so a document holding one is refused like any other that is not JSON.

Nor is a document nested deeper than MAX_DEPTH levels read. orjson reads up to 1,024, but Python
turns a value back into text (a meter id's `str()`, a rejected reading's raw value in JSON)
recursively, and past ~1,000 levels that raised RecursionError: a 500 for an HTTP batch, a stopped
replay, a Kafka message that failed its batch again and again. A reading is a few levels deep.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import orjson

from metrify.domain.readings import LongInteger

# Every ASCII digit as "0", every other byte as a space: a run of 19 digits becomes 19 zeros.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_RUN = b"0" * 19

MAX_DEPTH = 64
# Every byte but the four brackets deleted: what is left is the document's nesting (with any
# brackets its strings hold).
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


class NotJson(ValueError):
    """Not a JSON document, or one that spells what is not Unicode text."""


def may_hold_long_integers(data: bytes) -> bool:
    """Whether `data` has a run of digits orjson may read inexactly (an integer beyond 64 bits).
    A translation and a substring search, both at memory speed: a tenth of the time the regular
    expression `\\d{19}` took (1.7 ms of every 1,000-reading ingest batch)."""
    return _LONG_RUN in data.translate(_DIGITS_AS_ZEROS)


def loads(data: bytes, *, text_only: bool = True) -> Any:
    """The JSON value of `data`, exactly; NotJson when there is none. With `text_only` False (the
    stream's own outputs) lone surrogates are kept, as outputs carry a reading's raw values that
    way, and the depth is not checked: a raw value passed that check where it came in, and its
    output wraps it a level or two deeper, which must still read back."""
    if not may_hold_long_integers(data):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            return shallow(data, value) if text_only else value
    try:
        value = json.loads(data, parse_int=_integer)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise NotJson(str(exc)[:120]) from None
    if text_only:
        value = shallow(data, value)
        if holds_lone_surrogate(value):
            raise NotJson("a string holds a lone surrogate, not Unicode text")
    return value


def _integer(text: str) -> int | LongInteger:
    try:
        return int(text)
    except ValueError:  # more digits than int() converts: the length is checked before any work
        return LongInteger(text)


def loads_exact(text: str) -> Any:
    """JSON text this deployment wrote itself (a stored raw value), read back exactly."""
    return json.loads(text, parse_int=_integer)


def shallow(data: bytes, value: Any) -> Any:
    """`value` (read from `data`, by `loads` or another reader), or NotJson when it is nested
    deeper than MAX_DEPTH levels."""
    # No deeper than it has opening brackets: a single reading (a few) is settled by two counts.
    if (type(value) is dict or type(value) is list) and data.count(b"{") + data.count(b"[") > MAX_DEPTH:
        if not nested_within(data, MAX_DEPTH // 2) and nested_deeper_than(value, MAX_DEPTH):
            raise NotJson(f"the document is nested deeper than {MAX_DEPTH} levels")
    return value


def nested_within(data: bytes, passes: int) -> bool:
    """True when the text's brackets close within `passes` rounds of taking out every adjacent
    pair (`{}`, `[]`): then no value is nested deeper than 2 x `passes` levels. A batch of flat
    readings (`{[{}{}...{}]}`) closes in three rounds, at memory speed. False when it does not
    (deeper, or brackets inside strings): then the value itself has to be walked."""
    brackets = data.translate(None, _NOT_BRACKETS)
    for _ in range(passes):
        if not brackets:
            return True
        fewer = brackets.replace(b"{}", b"").replace(b"[]", b"")
        if len(fewer) == len(brackets):
            return False
        brackets = fewer
    return not brackets


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether a container in `value` lies more than `limit` levels deep (without recursion)."""
    stack = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return True
        for child in container.values() if type(container) is dict else container:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def holds_lone_surrogate(value: Any) -> bool:
    if type(value) is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if type(value) is dict:
        return any(holds_lone_surrogate(k) or holds_lone_surrogate(v) for k, v in value.items())
    if type(value) is list:
        return any(holds_lone_surrogate(v) for v in value)
    return False


def dumps_exact(value: Any) -> str:
    """The standard library's encoder, for what orjson cannot write or writes inexactly: integers
    beyond 64 bits, NaN and infinities (`NaN`, `Infinity`), lone surrogates (escaped: the text is
    ASCII), and a LongInteger's digits (the encoder alone would write its float, `Infinity`).
    Anything else it does not know is written as its text."""
    if type(value) is LongInteger:
        return value.digits
    longs: list[str] = []
    if isinstance(value, dict | list | tuple):  # a tuple too: events are NamedTuples
        mark = f"\x00long-integer-{secrets.token_hex(8)}:"  # no text received can guess it

        def marked(leaf: Any) -> Any:  # a LongInteger as `mark` + its index in `longs`
            if type(leaf) is not LongInteger:
                return leaf
            longs.append(leaf.digits)
            return f"{mark}{len(longs) - 1}"

        value = map_leaves(value, marked)
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=_plain)
    if longs:
        escaped = json.dumps(mark, ensure_ascii=True)[:-1]  # the opening quote and the escaped mark
        for index, digits in enumerate(longs):
            text = text.replace(f'{escaped}{index}"', digits, 1)
    return text


def map_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """`value` (a JSON value as Python holds it) with `leaf` applied to each thing in it that is
    not an object or an array; tuples, which JSON writes as arrays, come back as lists."""
    if isinstance(value, dict):
        return {key: map_leaves(item, leaf) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [map_leaves(item, leaf) for item in value]
    return leaf(value)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return str(value)
