"""Text holding NUL on PostgreSQL, whose text cannot hold U+0000 at all.

A contract meter id is any text not blank once trimmed (DESIGN §3), NUL included, and so is a
region a reading carries. SQLite stores such text exactly. On PostgreSQL, where it failed the whole
batch (an API batch a 500; the sink stopped on it for good), each NUL is stored as U+FFFD, the
replacement character: the reading is stored, and an id looked up is spelled so too (the column
type `tables.NulFreeText`), so that it is found. Two ids that differ only there (`A\\x00` and
`A\\ufffd`) are one meter in PostgreSQL's tables. The stream's own state is the exception: its
meter ids must come back exactly, so meter_states keys such an id in an escaped form (`state_key`).

Every batch pays for looking, so no pass over all its readings is made for it: a region is looked
at as codec.extra_columns converts it, the meter ids of readings and windows once per meter as
sink._by_meter groups them, and only the other (small) sets of rows column by column here.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from functools import cache
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from metrify.adapters.sqlalchemy.sink import Target

NUL, REPLACEMENT = "\x00", "\ufffd"

# Text columns no NUL reaches: JSON (ASCII, NUL escaped) and the domain's own words.
_NEVER_NUL = frozenset({"raw_timestamp", "raw_consumption", "data", "status", "reason"})
# A meter_states key that starts with it is the meter id's JSON text; no meter id does (trimmed).
_ESCAPED = " "

Rows = dict["Target", list[tuple[Any, ...]]]


def without_nul(text: str) -> str:
    """`text` as PostgreSQL can hold it: each NUL replaced by U+FFFD."""
    return text.replace(NUL, REPLACEMENT) if NUL in text else text


def state_key(meter_id: str) -> str:
    """A meter's key in meter_states on PostgreSQL, which gives back its exact id: an id that holds
    NUL, or starts with a space, as a space and its JSON text (ASCII); any other id as it is."""
    if NUL in meter_id or meter_id.startswith(_ESCAPED):
        return _ESCAPED + json.dumps(meter_id)
    return meter_id


def meter_of_state_key(key: str) -> str:
    """The inverse of `state_key`."""
    return json.loads(key[1:]) if key.startswith(_ESCAPED) else key


@cache
def _texts(target: Target) -> tuple[int, ...]:
    """The positions in a target's rows of the text a NUL may reach: ids, regions, names."""
    return tuple(
        i
        for i, name in enumerate(target.columns)
        if isinstance(target.table.c[name].type, sa.String) and name not in _NEVER_NUL
    )


def _holds_nul(values: list[tuple[Any, ...]], index: int) -> bool:
    """Whether a row holds NUL at `index` (a row that ends before it holds NULL there): one join of
    the column, at C speed."""
    try:
        column: Any = map(itemgetter(index), values)
        return NUL in "".join(filter(None, column))
    except IndexError:  # readings without extras end before their region
        return NUL in "".join(filter(None, [row[index] for row in values if len(row) > index]))


def _replaced(row: tuple[Any, ...], columns: Sequence[int]) -> tuple[Any, ...]:
    values = list(row)
    for i in columns:
        if i < len(values) and type(values[i]) is str:
            values[i] = without_nul(values[i])
    return tuple(values)


def _state_keys(values: list[tuple[Any, ...]], at: int) -> list[tuple[Any, ...]]:
    keys = "\n".join(map(itemgetter(at), values))
    if NUL not in keys and not keys.startswith(_ESCAPED) and "\n" + _ESCAPED not in keys:
        return values
    return [(*row[:at], state_key(row[at]), *row[at + 1 :]) for row in values]


def nul_free(rows: Rows, free: Mapping[Target, Collection[int]], states: Target) -> Rows:
    """The rows (`batch_rows`) as PostgreSQL's text can hold them, changed in place: each NUL of a
    text value replaced by U+FFFD, the rows whose keys thereby became one kept once (an upsert's
    last, an insert-or-ignore's first), and the `states` target's meter ids keyed by `state_key`.
    `free`: per target, the positions known to hold no NUL already (not looked at again)."""
    for target, values in rows.items():
        skip = free.get(target, ())
        if target is states:
            at = target.columns.index("meter_id")
            rows[target] = values = _state_keys(values, at)
            skip = (*skip, at)
        found = [i for i in _texts(target) if i not in skip and _holds_nul(values, i)]
        if not found:
            continue
        fixed = [_replaced(row, found) for row in values]
        if not target.delete:
            key = [target.columns.index(name) for name in target.key]
            kept: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            for row in fixed:
                k = tuple(row[i] for i in key)
                if target.update or k not in kept:
                    kept[k] = row
            fixed = list(kept.values())
        rows[target] = fixed
    return rows
