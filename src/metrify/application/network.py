"""A simulated network between meters and Metrify: some readings arrive late, some never.

Deterministic for a seed, so a replay killed and started again sees the same arrival order.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from metrify.domain.readings import RawReading
from metrify.domain.stream.grammar import parse_timestamp


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    """Each reading is dropped with `drop_prob`; otherwise delayed with `delay_prob` by up to
    `max_delay` seconds of event time (uniform). 10 % delayed up to 5 min and 5 % dropped are typical."""

    delay_prob: float = 0.0
    max_delay: float = 300.0
    drop_prob: float = 0.0
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.delay_prob > 0 or self.drop_prob > 0


def through_network(rows: Iterable[RawReading], profile: NetworkProfile) -> Iterator[RawReading]:
    """Rows in the order they would arrive: a delayed row is released once the source has moved
    `delay` seconds of event time past it. Rows without a readable time are never delayed."""
    if not profile.active:
        return iter(rows)  # no generator in between: a replay's every row passes here
    return _arriving(rows, profile)


def _arriving(rows: Iterable[RawReading], profile: NetworkProfile) -> Iterator[RawReading]:
    chance = random.Random(profile.seed)
    held: list[tuple[int, int, RawReading]] = []
    clock: int | None = None  # event time the source has reached
    for index, row in enumerate(rows):
        drop, delay_roll, delay_size = chance.random(), chance.random(), chance.random()
        t = parse_timestamp(row.timestamp)
        if t is not None:
            clock = t if clock is None or t > clock else clock
            while held and held[0][0] <= clock:
                yield heapq.heappop(held)[2]
        if drop < profile.drop_prob:
            continue
        if t is not None and delay_roll < profile.delay_prob:
            heapq.heappush(held, (t + int(delay_size * profile.max_delay * 1_000_000), index, row))
        else:
            yield row
    while held:
        yield heapq.heappop(held)[2]
