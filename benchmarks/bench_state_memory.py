"""Steady-state memory of the stream core's state per meter, measured with tracemalloc.

A fleet of 100,000 meters reports every half hour for a few days through one PartitionStream, in
batches of 5,000 (process, then take_dirty, as StreamPipeline runs them): timestamps aligned to
:00 and :30 as real fleets send them, 1 % of readings a slot late (LATE, filling a gap), 0.5 % of
meters silent for six hours (gaps that open, grow and close).

tracemalloc makes every allocation ~13 times slower here, so the days are run untraced and the
state is then built again under tracing the way a worker builds it after a restart: every
meter's saved data (snapshot_meter) through JSON, as the store keeps it, into a fresh core
(restore). One more half hour of readings then runs traced, so that the windows, gaps, timers and
dicts take their working shape, and the retained size is read after take_dirty(), with the
rows, the events and the grammar's bounded memos of timestamp and consumption texts released
(those are shared by the whole process, not per meter; their size is printed apart).

    PYTHONPATH=src python benchmarks/bench_state_memory.py [--meters 100000] [--days 2]

Goal (stream-core issue): <= 1 KiB (1,024 bytes) per meter with 100,000 meters.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _machine import cpu_model, load_average  # noqa: E402

from metrify.application.stream import gc_paused  # noqa: E402
from metrify.domain.readings import RawReading  # noqa: E402
from metrify.domain.stream import core as core_module  # noqa: E402
from metrify.domain.stream import grammar  # noqa: E402
from metrify.domain.stream.config import StreamConfig  # noqa: E402
from metrify.domain.stream.core import PartitionStream  # noqa: E402
from metrify.domain.stream.grammar import format_timestamp  # noqa: E402

GOAL = 1024
US = 1_000_000
START = 1_709_510_400 * US  # 2024-03-04T00:00:00Z
STEP = 1800 * US


class Fleet:
    """Rows slot by slot; deterministic for the seed."""

    def __init__(self, meters: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.ids = [f"MTR-{index:06d}" for index in range(meters)]
        self.values = [f"{0.05 + index / 1000:.3f}" for index in range(1000)]
        self.silent = {index: self.rng.randrange(48) for index in self.rng.sample(range(meters), meters // 200)}
        self.held: list[RawReading] = []

    def slot(self, k: int) -> list[RawReading]:
        rng, values, held = self.rng, self.values, self.held
        stamp = format_timestamp(START + k * STEP)
        rows, self.held = held, []
        for index, meter in enumerate(self.ids):
            begin = self.silent.get(index)
            if begin is not None and begin <= k % 96 < begin + 12:
                continue
            row = RawReading(meter, stamp, values[rng.randrange(1000)])
            if rng.random() < 0.01:
                self.held.append(row)  # arrives with the next slot's rows: LATE
            else:
                rows.append(row)
        return rows


def run_slot(core: PartitionStream, rows: list[RawReading], batch: int, now: int) -> None:
    for offset in range(0, len(rows), batch):
        with gc_paused():
            core.process(rows[offset : offset + batch], now)
            core.take_dirty()


def memo_bytes() -> int:
    """Traced size of the grammar's process-wide memos (their dicts, keys and values)."""
    total = 0
    for memo in (grammar.TIMESTAMPS, grammar.CONSUMPTIONS, grammar.MINUTES):
        total += sys.getsizeof(memo) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in memo.items())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()

    compiled = not (core_module.__file__ or "").endswith(".py")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"core: {'compiled (mypyc)' if compiled else 'pure Python'}")
    print(f"load average at start: {load_average()}", flush=True)
    started = time.perf_counter()
    now = time.time_ns() // 1000
    config = StreamConfig()
    fleet = Fleet(args.meters)
    core = PartitionStream(config, 0)
    slots = args.days * 48
    for k in range(slots):
        run_slot(core, fleet.slot(k), args.batch, now)
    print(
        f"{args.meters:,} meters x {args.days} days ({slots} half hours) untraced in "
        f"{time.perf_counter() - started:.0f} s; W = {format_timestamp(core.watermark)}",
        flush=True,
    )

    # The state as the store keeps it, then rebuilt under tracing by a fresh core.
    saved = json.dumps({meter_id: core.snapshot_meter(meter_id) for meter_id in core.meters})
    max_event_time = core.max_event_time
    del core
    gc.collect()
    tracemalloc.start()
    core = PartitionStream(config, 0)
    core.restore(max_event_time, json.loads(saved))
    del saved
    run_slot(core, fleet.slot(slots), args.batch, now)  # one more half hour, traced
    fleet.held.clear()
    gc.collect()
    with_memos = tracemalloc.get_traced_memory()[0]
    memos = memo_bytes()
    for memo in (grammar.TIMESTAMPS, grammar.CONSUMPTIONS, grammar.MINUTES):
        memo.clear()
    gc.collect()
    retained = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    meters = len(core.meters)
    per_meter = retained / meters
    print(
        f"retained after take_dirty(): {retained / 2**20:,.1f} MiB for {meters:,} meters = "
        f"{per_meter:,.0f} bytes per meter (with the grammar's memos: {with_memos / meters:,.0f}; "
        f"memos ~{memos / 2**20:,.1f} MiB for the whole process)"
    )
    print(f"total time {time.perf_counter() - started:.0f} s")
    print(f"goal <= {GOAL:,} bytes per meter: {'met' if per_meter <= GOAL else 'not met'}")


if __name__ == "__main__":
    main()
