"""A seeded fleet simulator: realistic half-hourly household readings, with the faults real fleets
have (clock jitter, late and too-late arrivals, duplicates, silent meters, invalid rows)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from metrify.domain.stream.grammar import format_timestamp, parse_timestamp

_US = 1_000_000


@dataclass(frozen=True, slots=True)
class FleetProfile:
    meters: int = 300
    days: int = 7
    start: int = 1_709_510_400 * _US  # 2024-03-04T00:00:00Z, a Monday
    interval_seconds: int = 1800
    regions: int = 4
    seed: int = 7
    jitter_seconds: float = 20.0
    late_share: float = 0.02  # arrive 5-50 minutes late (LATE)
    too_late_share: float = 0.002  # arrive 2-5 hours late (TOO_LATE)
    duplicate_share: float = 0.005
    invalid_share: float = 0.003
    silent_share: float = 0.03  # meters that fall silent for a while, one of them for good


def _load_shape(hour: float, weekend: bool) -> float:
    """A household's daily profile: a night base, a morning bump and a larger evening peak."""
    morning = math.exp(-(((hour - (8.5 if weekend else 7.5)) / 1.2) ** 2)) * 0.6
    evening = math.exp(-(((hour - 19.0) / 2.0) ** 2)) * 1.0
    return 0.12 + morning + evening


def fleet_rows(profile: FleetProfile) -> Iterator[tuple[str, str, str]]:
    """(meter_id, timestamp, consumption_kwh) rows in arrival order, as text, as a CSV holds them."""
    rng = random.Random(profile.seed)
    step = profile.interval_seconds * _US
    meters = [f"MTR-{index:05d}" for index in range(profile.meters)]
    scale = {m: rng.uniform(0.4, 1.8) for m in meters}
    silent: dict[str, tuple[int, int]] = {}
    for m in rng.sample(meters, max(1, int(profile.meters * profile.silent_share))):
        begin = rng.randrange(profile.days * 48 // 4, profile.days * 48 * 3 // 4)
        silent[m] = (begin, begin + rng.randrange(4, 60))
    forever = meters[-1]
    silent[forever] = (profile.days * 48 // 2, 1 << 30)
    held: list[tuple[int, int, tuple[str, str, str]]] = []  # (release slot index, order, row)
    order = 0
    steps = profile.days * 24 * 3600 // profile.interval_seconds
    for k in range(steps):
        due = [item for item in held if item[0] <= k]
        held = [item for item in held if item[0] > k]
        slot_rows: list[tuple[str, str, str]] = [item[2] for item in sorted(due)]
        slot = profile.start + k * step
        hour = (k * profile.interval_seconds / 3600) % 24
        weekend = (k * profile.interval_seconds // 86400) % 7 >= 5
        for m in meters:
            quiet = silent.get(m)
            if quiet is not None and quiet[0] <= k < quiet[1]:
                continue
            t = slot + int(rng.gauss(0, profile.jitter_seconds) * _US)
            kwh = max(0.0, _load_shape(hour, weekend) * scale[m] * rng.uniform(0.7, 1.3) / 2)
            row = (m, format_timestamp(t), f"{kwh:.3f}")
            roll = rng.random()
            if roll < profile.too_late_share:
                held.append((k + rng.randrange(5, 10), order, row))
            elif roll < profile.too_late_share + profile.late_share:
                held.append((k + rng.randrange(1, 2), order, row))
            else:
                slot_rows.append(row)
            if rng.random() < profile.duplicate_share:
                slot_rows.append(row)
            if rng.random() < profile.invalid_share:
                slot_rows.append(_invalid(rng, m, t))
            order += 1
        # Rows reach Metrify in the order they were sent plus a little network latency (mean 2 s),
        # so within a slot they are mostly, but not exactly, in event-time order.
        arrival = [((parse_timestamp(row[1]) or slot) + int(rng.expovariate(0.5) * _US), row) for row in slot_rows]
        arrival.sort(key=lambda item: item[0])
        yield from (row for _, row in arrival)
    yield from (item[2] for item in sorted(held))


def _invalid(rng: random.Random, meter: str, t: int) -> tuple[str, str, str]:
    """One invalid row of a random kind, covering every validation reason."""
    kind = rng.randrange(6)
    if kind == 0:
        return ("  ", format_timestamp(t), "0.5")
    if kind == 1:
        return (meter, "2024-02-30T25:00:00", "0.5")
    if kind == 2:
        return (meter, "2099-01-01T00:00:00Z", "0.5")
    if kind == 3:
        return (meter, format_timestamp(t), rng.choice(["abc", "NaN", "", "0,5"]))
    if kind == 4:
        return (meter, format_timestamp(t), "-0.4")
    return (meter, format_timestamp(t), "5000")


def region_of(meter_index: int, profile: FleetProfile) -> str:
    return f"REGION-{meter_index % profile.regions + 1}"
