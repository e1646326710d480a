"""A plain reference implementation of the stream contract (DESIGN §3), for tests only.

Written for clarity, not speed, and independently of the real core: it keeps every accepted
reading forever (no pruning, no TTL), walks the rows once to classify them, and then derives
gaps and aggregates from the *final* state by their definitions (§3.5, §3.6) instead of
maintaining them incrementally. Property tests compare the fast, incremental core with it.

Time is integer microseconds since the Unix epoch throughout, so every boundary of the
contract (t = W - L is LATE, s + G = W is missing, end = W is closed) is compared exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from decimal import Decimal
from typing import Any

from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig, window_label
from metrify.domain.stream.grammar import format_timestamp, parse_consumption, parse_timestamp
from metrify.domain.stream.partitioner import partition_for

US = 1_000_000


def trimmed_meter_id(value: Any) -> str:
    """§3.1: surrounding whitespace is trimmed; an absent id is ''."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    return value.strip()


def slot_of(t: int, interval: int) -> int:
    """§3.4: t rounded to the nearest multiple of the interval from the epoch, half rounding up."""
    quotient, remainder = divmod(t, interval)  # floor division: remainder in [0, interval)
    if 2 * remainder >= interval:
        quotient += 1
    return quotient * interval


def seconds(micros: int) -> int | float:
    """A duration in seconds: an int when whole, else a float."""
    if micros % US == 0:
        return micros // US
    return micros / US


def validation_failure(row: RawReading, config: StreamConfig, now_us: int) -> str | None:
    """§3.1 step 1, checked in the contract's order; the first failure is the reason."""
    if trimmed_meter_id(row.meter_id) == "":
        return "missing_meter_id"
    t = parse_timestamp(row.timestamp)
    if t is None:
        return "invalid_timestamp"
    if t - now_us > config.future_tolerance:
        return "future_timestamp"
    kwh = parse_consumption(row.consumption_kwh)
    if kwh is None:
        return "invalid_consumption"
    if kwh < 0:
        return "negative_consumption"
    spelled = row.consumption_kwh.strip() if isinstance(row.consumption_kwh, str) else None
    if kwh > config.max_kwh or (spelled is not None and Decimal(spelled) > Decimal(config.max_kwh)):
        return "out_of_range"  # the number as written: 1000.00000000000001 is above 1000
    return None


def reference_exports(
    rows: list[RawReading], config: StreamConfig, now_us: int, partitions: int = 1
) -> dict[str, list[dict]]:
    """The final outcome of processing `rows` in arrival order, as export rows (see module doc)."""
    interval = config.interval

    watermark: dict[int, int | None] = defaultdict(lambda: None)  # None stands for -infinity
    filled: dict[str, dict[int, int]] = defaultdict(dict)  # meter -> slot -> timestamp
    meter_partition: dict[str, int] = {}

    readings: list[tuple[tuple, dict]] = []
    rejected: list[tuple[tuple, dict]] = []
    late: list[tuple[tuple, dict]] = []
    accepted_kwh: dict[str, list[tuple[int, float]]] = defaultdict(list)  # meter -> (slot, kwh)

    for index, row in enumerate(rows):
        meter = trimmed_meter_id(row.meter_id)
        partition = partition_for(meter, partitions)
        t = parse_timestamp(row.timestamp)

        def reject(reason: str, row=row, meter=meter, t=t, index=index, partition=partition) -> None:
            order = (meter, -math.inf if t is None else t, index)
            rejected.append(
                (
                    order,
                    {
                        "meter_id": meter,
                        "timestamp": row.timestamp,
                        "consumption_kwh": row.consumption_kwh,
                        "reason": reason,
                        "partition": partition,
                    },
                )
            )

        reason = validation_failure(row, config, now_us)
        if reason is not None:
            reject(reason)  # §3.2: never moves W
            continue
        assert t is not None
        kwh = parse_consumption(row.consumption_kwh)
        assert kwh is not None
        meter_partition[meter] = partition

        # §3.2: classify with W as it was before this reading; then W grows.
        w_before = watermark[partition]
        if w_before is None or t - config.out_of_orderness > w_before:
            watermark[partition] = t - config.out_of_orderness

        # §3.3
        if w_before is None or t >= w_before:
            status = "ON_TIME"
        elif t >= w_before - config.allowed_lateness:
            status = "LATE"
        else:
            late.append(
                (
                    (meter, t, index),
                    {
                        "meter_id": meter,
                        "timestamp": format_timestamp(t),
                        "consumption_kwh": kwh,
                        "delay_seconds": seconds(w_before - t),
                        "partition": partition,
                    },
                )
            )
            continue

        # §3.4
        slot = slot_of(t, interval)
        if slot in filled[meter]:
            reject("duplicate")
            continue
        filled[meter][slot] = t
        accepted_kwh[meter].append((slot, kwh))
        readings.append(
            (
                (meter, t),
                {
                    "meter_id": meter,
                    "timestamp": format_timestamp(t),
                    "slot": format_timestamp(slot),
                    "consumption_kwh": kwh,
                    "status": status,
                    "partition": partition,
                },
            )
        )

    gaps: list[tuple[tuple, dict]] = []
    for meter, slots in filled.items():
        w_final = watermark[meter_partition[meter]]
        for gap in gaps_by_definition(sorted(slots), w_final, config):
            gaps.append(((meter, gap[0]), gap_row(meter, *gap)))

    aggregates: list[tuple[tuple, dict]] = []
    for meter, values in accepted_kwh.items():
        w_final = watermark[meter_partition[meter]]
        for size in config.windows:
            by_window: dict[int, list[float]] = defaultdict(list)
            for slot, kwh in values:
                by_window[(slot // size) * size].append(kwh)  # §3.6: by slot, epoch-aligned
            for start, kwhs in by_window.items():
                end = start + size
                if w_final is None or w_final < end:
                    continue  # not closed: W >= end closes it
                total = math.fsum(kwhs)
                aggregates.append(
                    (
                        (meter, start, size),
                        {
                            "meter_id": meter,
                            "window": window_label(size),
                            "window_start": format_timestamp(start),
                            "window_end": format_timestamp(end),
                            "count": len(kwhs),
                            "sum_kwh": total,
                            "min_kwh": min(kwhs),
                            "max_kwh": max(kwhs),
                            "mean_kwh": total / len(kwhs),
                        },
                    )
                )

    def ordered(keyed: list[tuple[tuple, dict]]) -> list[dict]:
        return [row for _, row in sorted(keyed, key=lambda pair: pair[0])]

    return {
        "readings": ordered(readings),
        "rejected": ordered(rejected),
        "late": ordered(late),
        "gaps": ordered(gaps),
        "aggregates": ordered(aggregates),
    }


def gaps_by_definition(
    slots: list[int], w_final: int | None, config: StreamConfig
) -> list[tuple[int, int | None, int]]:
    """§3.5 read literally: a slot is missing when it is not filled and lies between two filled
    slots, or after the last filled slot with s + G <= W. Gaps are maximal runs of missing
    slots, as (missing_from, missing_to or None while open, missing_intervals)."""
    interval = config.interval
    if not slots:
        return []
    result: list[tuple[int, int | None, int]] = []
    # Between filled slots: every slot strictly between two consecutive filled slots is
    # missing, and those slots form one maximal run ending at the next filled slot.
    for before, after in zip(slots, slots[1:], strict=False):
        if after - before > interval:
            result.append((before + interval, after, (after - before) // interval - 1))
    # After the last filled slot: s = last + k*I (k >= 1) is missing while s + G <= W,
    # i.e. for k <= (W - G - last) / I; they form the open gap.
    if w_final is not None:
        count = (w_final - config.gap_grace - slots[-1]) // interval
        if count >= 1:
            result.append((slots[-1] + interval, None, count))
    return result


def gap_row(meter: str, missing_from: int, missing_to: int | None, count: int) -> dict:
    return {
        "meter_id": meter,
        "missing_from": format_timestamp(missing_from),
        "missing_to": None if missing_to is None else format_timestamp(missing_to),
        "missing_intervals": count,
        "status": "open" if missing_to is None else "closed",
    }
