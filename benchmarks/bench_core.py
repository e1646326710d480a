"""How fast the stream core runs: parsed readings in memory through PartitionStream, one process.

The fleet is the simulator's (1,500 meters x 7 days of half-hourly readings by default, with clock
jitter, late, too-late, duplicate and invalid rows, silent meters), as text fields the way a CSV
gives them, read into a list of RawReading before the clock starts. Batches of 5,000 go through
`process` then `take_dirty`, as StreamPipeline.process runs them (automatic garbage collection
paused inside a batch, `gc_paused`). Each run starts from a fresh core; best and median are printed.

Two fleets: the simulator's default (timestamps jittered by ~20 s, with microseconds), and the
same fleet with aligned timestamps (every reading at exactly :00 or :30, as fleets like the
London smart-meter data report). Fleets are built once and kept in the temp folder, keyed by
profile and simulator source, so later runs start at once.

    PYTHONPATH=src python benchmarks/bench_core.py [--meters 1500] [--days 7] [--runs 3]

Goal (stream-core issue): >= 200,000 readings/s with jitter.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import inspect
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _machine import cpu_model, load_average  # noqa: E402

from metrify.application import simulator  # noqa: E402
from metrify.application.simulator import FleetProfile, fleet_rows  # noqa: E402
from metrify.application.stream import gc_paused  # noqa: E402
from metrify.domain.readings import RawReading  # noqa: E402
from metrify.domain.stream import core as core_module  # noqa: E402
from metrify.domain.stream.config import StreamConfig  # noqa: E402
from metrify.domain.stream.core import PartitionStream  # noqa: E402

GOAL = 200_000


def fleet(meters: int, days: int, jitter: float) -> list[RawReading]:
    """The simulator's rows as RawReading, from the temp-folder cache when it has them."""
    profile = FleetProfile(meters=meters, days=days, jitter_seconds=jitter)
    source = hashlib.sha256(inspect.getsource(simulator).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"metrify-bench-fleet-{meters}x{days}-j{jitter:g}-{source}.pickle"
    if path.exists():
        with path.open("rb") as handle:
            rows: list[RawReading] = pickle.load(handle)
        return rows
    rows = [RawReading(m, t, k) for m, t, k in fleet_rows(profile)]
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    with partial.open("wb") as handle:
        pickle.dump(rows, handle, protocol=pickle.HIGHEST_PROTOCOL)
    partial.replace(path)
    return rows


def run_once(rows: list[RawReading], batch: int, now: int) -> tuple[float, float, int]:
    """Wall and CPU seconds to run every row through a fresh core, and the events it made."""
    core = PartitionStream(StreamConfig(), 0)
    batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    events = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for part in batches:
        with gc_paused():
            events += len(core.process(part, now))
            core.take_dirty()
    return time.perf_counter() - wall, time.process_time() - cpu, events


def measure(name: str, rows: list[RawReading], batch: int, runs: int, now: int) -> float:
    walls, cpus, events = [], [], 0
    for _ in range(runs):
        wall, cpu, events = run_once(rows, batch, now)
        walls.append(wall)
        cpus.append(cpu)
    best, median = min(walls), statistics.median(walls)
    n = len(rows)
    print(
        f"{name:<8} {n:,} readings, {events:,} events: "
        f"best {n / best:,.0f} readings/s ({best:.2f} s), median {n / median:,.0f} readings/s ({median:.2f} s); "
        f"CPU time best {n / min(cpus):,.0f} readings/s",
        flush=True,
    )
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meters", type=int, default=1500)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    compiled = not (core_module.__file__ or "").endswith(".py")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"core: {'compiled (mypyc)' if compiled else 'pure Python'} ({Path(core_module.__file__ or '?').name})")
    print(f"load average at start: {load_average()}", flush=True)
    now = time.time_ns() // 1000
    started = time.perf_counter()
    jittered = fleet(args.meters, args.days, 20.0)
    aligned = fleet(args.meters, args.days, 0.0)
    gc.freeze()  # the input is not the system under test: keep it out of the collector's walks
    print(
        f"fleet: {args.meters:,} meters x {args.days} days, ready in {time.perf_counter() - started:.1f} s; "
        f"batches of {args.batch:,}, {args.runs} runs each",
        flush=True,
    )
    best = measure("jitter", jittered, args.batch, args.runs, now)
    measure("aligned", aligned, args.batch, args.runs, now)
    print(f"load average at end: {load_average()}")
    print(f"goal >= {GOAL:,} readings/s with jitter (best run): {'met' if best >= GOAL else 'not met'}")


if __name__ == "__main__":
    main()
