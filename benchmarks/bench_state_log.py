"""What saving meter states as a log costs against saving them as rows (SQLite, state_log.py).

Two embedded stream pipelines in this process, each on a SQLite database of its own in a temporary
folder (built by the container, as `metrify api` or `metrify replay` builds one), take the same
batches in turn, batch after batch, so that both meet the same moments of this host: one saves
each batch's meter states as one row per partition of `meter_state_log` (what Metrify does on
SQLite since Alembic 0013), the other as one `meter_states` row per meter (what it did before, and
still does on PostgreSQL). The fleet is bench_api_ingest.py's: `--meters` half-hourly meters,
batch k holding one reading of each of `--batch` of them, the meters taking turns; with
`--scattered` each batch's meters lie all over the key instead of side by side (their ids are a
shuffle of the fleet's).

Prints, for each way, the wall and CPU milliseconds per batch after `--warmup` batches, and the
pages of write-ahead log one batch writes (one batch alone in the log, after a TRUNCATE checkpoint).

    python benchmarks/bench_state_log.py [--batches 300] [--warmup 200] [--batch 1000] [--meters 10000]
                                         [--scattered]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _fleet import fleet_batch  # noqa: E402
from _machine import cpu_model, load_average  # noqa: E402

from metrify.domain.readings import RawReading  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300, help="batches timed, each taken by both")
    parser.add_argument("--warmup", type=int, default=200, help="batches before the timed ones")
    parser.add_argument("--batch", type=int, default=1000, help="readings per batch")
    parser.add_argument("--meters", type=int, default=10_000, help="meters in the fleet")
    parser.add_argument("--scattered", action="store_true", help="each batch's meters all over the key")
    args = parser.parse_args()
    if args.batches < 1 or args.warmup < 0 or args.batch < 1 or args.meters < 1:
        raise SystemExit("--batches, --batch and --meters are at least 1; --warmup at least 0")

    shuffled = list(range(max(args.meters, args.batch)))
    if args.scattered:
        random.Random(7).shuffle(shuffled)

    def batch(k: int) -> list[RawReading]:
        rows = []
        for r in fleet_batch(k, args.batch, args.meters):
            meter = f"MTR-{shuffled[int(r['meter_id'][4:])]:06d}"
            rows.append(
                RawReading(
                    meter, r["timestamp"], r["consumption_kwh"], {"voltage": r["voltage"], "region": r["region"]}
                )
            )
        return rows

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), Python {platform.python_version()}")
    print(f"load average (1, 5, 15 min): {load_average()}")
    print(
        f"{args.warmup} + {args.batches} batches of {args.batch} readings, {args.meters:,} meters"
        f"{', scattered over the key' if args.scattered else ''}; each batch taken by both, in turn"
    )
    from metrify.application.stream import gc_paused
    from metrify.container import build_container
    from metrify.settings import load_settings

    with tempfile.TemporaryDirectory() as top:
        ways: list[tuple[str, Any, Any, Path]] = []
        for name in ("log", "rows"):
            folder = Path(top) / name
            folder.mkdir()
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "METRIFY_DATA_DIR": str(folder)}
            subprocess.run([sys.executable, "-m", "metrify", "db", "upgrade"], env=env, check=True, capture_output=True)
            os.environ.update(METRIFY_DATA_DIR=str(folder), METRIFY_LOG_LEVEL="WARNING")
            container = build_container(load_settings())
            pipeline = container.stream_pipeline(window_writes=2000)
            if name == "rows":  # meter states as rows of meter_states, as before Alembic 0013
                made = pipeline.uow_factory

                def as_rows(made: Any = made) -> Any:
                    uow = made()
                    uow.state_log = None
                    uow.writer.logs_states = False
                    return uow

                pipeline.uow_factory = as_rows
            pipeline.load()
            ways.append((name, container, pipeline, folder / "metrify.db"))
        wall: dict[str, list[float]] = {name: [] for name, *_ in ways}
        cpu: dict[str, list[float]] = {name: [] for name, *_ in ways}
        gc.freeze()
        try:
            for k in range(args.warmup + args.batches):
                rows = batch(k)
                for name, _, pipeline, _ in ways if k % 2 == 0 else ways[::-1]:
                    started, used = time.perf_counter(), time.process_time()
                    with gc_paused():
                        pipeline.process(rows)
                    if k >= args.warmup:
                        wall[name].append(time.perf_counter() - started)
                        cpu[name].append(time.process_time() - used)
            pages: dict[str, int] = {}
            k = args.warmup + args.batches
            rows = batch(k)
            for name, _, pipeline, path in ways:
                log = sqlite3.connect(path)
                try:
                    while log.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:  # busy: again
                        time.sleep(0.01)
                    pipeline.process(rows)
                    pages[name] = log.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
                finally:
                    log.close()
        finally:
            for _, container, _, _ in ways:
                container.shutdown_resources()
    for name, *_ in ways:
        print(
            f"  meter states as {name:4}: wall {statistics.fmean(wall[name]) * 1000:.1f} ms per batch "
            f"(median {statistics.median(wall[name]) * 1000:.1f}), CPU {statistics.fmean(cpu[name]) * 1000:.1f} ms; "
            f"{pages[name]} pages of log for one batch"
        )


if __name__ == "__main__":
    main()
