"""One meter's rows out of a table keyed time first (readings by hour, aggregates by window
start): spans of keys looked up one statement each, twice as wide each time (hours.py, windows.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

PROBES_MOST = 65_536  # keys a statement looks up at most


def probe_spans(
    first: int | None,
    last: int,
    step: int,
    limit: int | None,
    probes: int,
    following: Callable[[int | None], int | None],
    probe: Callable[[int, int], Sequence[Any]],
) -> list[Any]:
    """The rows `probe(first, upto)` finds, span after span from `first` (None: the first key)
    through `last`, keys `step` apart, the first `limit` of them (None: all). Each span starts at
    `following(key)`, the first key at or after `key` that any row has (one seek): a stretch of
    keys no row has, however long, costs nothing. A span looks up `probes` keys, then twice as
    many, up to PROBES_MOST."""
    found: list[Any] = []
    while limit is None or len(found) < limit:
        if first is not None and first > last:  # checked before it is bound: it may pass 2**63 - 1
            break
        first = following(first)
        if first is None or first > last:
            break
        upto = min(last, first + (probes - 1) * step)
        found += probe(first, upto)
        first, probes = upto + step, min(probes * 2, PROBES_MOST)
    return found if limit is None else found[:limit]
