"""How the embedded stream's cost per batch changes as the history grows: the stream pipeline of
the embedded profile (SQLite in a temporary folder, as `metrify api` or `metrify replay` builds
it through the container) fed batch after batch in this process, no HTTP.

The fleet is bench_api_ingest.py's: `--meters` meters reporting every half hour, batch k holding
one reading of each of `--batch` of them for one interval, the meters taking turns. Each batch is
one `StreamPipeline.process` (core, then one transaction with its outcomes and meter states),
with at most `--window-writes` closed windows stored per batch (METRIFY_API__WINDOW_WRITES_PER_BATCH;
0: all with their batch).

Prints, per tenth of the run: wall and CPU milliseconds per batch. Then, at each fifth of the run,
the pages of write-ahead log a batch writes (what its commit writes, and what a checkpoint later
copies into the database file): `--sample` batches, each alone in the log (a TRUNCATE checkpoint
before it). Those batches are not in the timings.

    python benchmarks/bench_stream_history.py [--batches 1200] [--batch 1000] [--meters 10000]
                                              [--window-writes 2000] [--sample 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _fleet import fleet_batch  # noqa: E402
from _machine import cpu_model, load_average  # noqa: E402

from metrify.domain.readings import RawReading  # noqa: E402


def batch(k: int, size: int, meters: int) -> list[RawReading]:
    """Batch k of bench_api_ingest.py's fleet, as the API parses its body."""
    return [
        RawReading(meter, timestamp, kwh, {"voltage": voltage, "region": region})
        for meter, timestamp, kwh, voltage, region in (r.values() for r in fleet_batch(k, size, meters))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=1000, help="readings per batch")
    parser.add_argument("--meters", type=int, default=10_000, help="meters in the fleet")
    parser.add_argument("--window-writes", type=int, default=2000, help="closed windows stored per batch (0: all)")
    parser.add_argument("--sample", type=int, default=5, help="batches whose log pages are counted, at each fifth")
    args = parser.parse_args()
    if args.batches < 10 or args.batch < 1 or args.meters < 1 or args.sample < 1:
        raise SystemExit("--batches is at least 10; --batch, --meters and --sample at least 1")

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), Python {platform.python_version()}")
    print(f"load average (1, 5, 15 min): {load_average()}")
    with tempfile.TemporaryDirectory() as folder:
        os.environ.update(METRIFY_DATA_DIR=folder, METRIFY_LOG_LEVEL="WARNING")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        subprocess.run([sys.executable, "-m", "metrify", "db", "upgrade"], env=env, check=True, capture_output=True)

        from metrify.container import build_container
        from metrify.settings import load_settings

        settings = load_settings()
        container = build_container(settings)
        pipeline = container.stream_pipeline(window_writes=args.window_writes or None)
        pipeline.load()
        log = sqlite3.connect(settings.data_dir / "metrify.db")
        print(
            f"{args.batches} batches of {args.batch} readings, {args.meters:,} meters, "
            f"at most {args.window_writes or 'all'} closed windows stored per batch"
        )
        fifths = {args.batches * n // 5 for n in range(1, 6)}
        sampled = 0
        tenth = args.batches // 10
        wall: list[float] = []
        cpu: list[float] = []
        pages: list[tuple[int, list[int]]] = []
        gc.freeze()
        try:
            for k in range(args.batches):
                rows = batch(k + sampled, args.batch, args.meters)
                started, used = time.perf_counter(), time.process_time()
                pipeline.process(rows)
                wall.append(time.perf_counter() - started)
                cpu.append(time.process_time() - used)
                if k + 1 in fifths:
                    counted = []
                    for _ in range(args.sample):
                        sampled += 1
                        while log.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:  # busy: again
                            time.sleep(0.01)
                        pipeline.process(batch(k + sampled, args.batch, args.meters))
                        counted.append(log.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
                    pages.append((k + 1, counted))
        finally:
            log.close()
            container.shutdown_resources()
        print("per tenth of the run: ms per batch, wall (CPU of this process)")
        for n in range(10):
            part = slice(n * tenth, (n + 1) * tenth if n < 9 else args.batches)
            print(
                f"  batches {part.start + 1}-{part.stop}: {statistics.fmean(wall[part]) * 1000:.1f} "
                f"({statistics.fmean(cpu[part]) * 1000:.1f})"
            )
        print("pages of log per batch (4 KiB each), after:")
        for after, counted in pages:
            readings = after * args.batch
            print(f"  {after} batches ({readings:,} readings): {statistics.median(counted):.0f} (of {counted})")


if __name__ == "__main__":
    main()
