"""How fast a whole `metrify replay` runs: the real CLI in a subprocess, CSV in, SQLite out.

The file is the simulator's fleet (1,500 meters x 7 days of half-hourly readings by default, with
jitter, late, too-late, duplicate and invalid rows), written once as CSV into the temp folder
(kept, keyed by profile and simulator source). Each run starts `python -m metrify replay FILE`
with a fresh, empty METRIFY_DATA_DIR (so an embedded SQLite database that the replay creates and
migrates) and every other METRIFY_ variable removed; the time is the whole process, start-up,
schema creation and all. Rows per second are the file's rows over that time.

    PYTHONPATH=src python benchmarks/bench_replay.py [--meters 1500] [--days 7] [--runs 3] [--split]

With `--split` it also times, in this process, the two halves of a replay apart: everything but
the database (CSV, network model, stream core, tally; each transaction's outcomes, state and
progress kept in memory), then the same transactions written into a fresh SQLite file as the
replay writes them (50,000-row transactions, the write-ahead log copied back by its own thread).
The second is the database's own floor: no replay of this file into SQLite can beat rows over it.

Goal (stream-core issue): >= 80,000 readings/s.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _machine import cpu_model, load_average  # noqa: E402

from metrify.application import simulator  # noqa: E402
from metrify.application.simulator import FleetProfile, fleet_rows  # noqa: E402

GOAL = 80_000


def fleet_csv(meters: int, days: int) -> tuple[Path, int]:
    """The simulator's fleet as CSV in the temp folder (made once), and its number of rows."""
    source = hashlib.sha256(inspect.getsource(simulator).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"metrify-bench-fleet-{meters}x{days}-{source}.csv"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["meter_id", "timestamp", "consumption_kwh"])
            writer.writerows(fleet_rows(FleetProfile(meters=meters, days=days)))
        partial.replace(path)
    with path.open("rb") as handle:
        rows = sum(1 for _ in handle) - 1
    return path, rows


def child_environment(data_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("METRIFY_")}
    env["METRIFY_DATA_DIR"] = str(data_dir)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def replay_once(path: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one whole `metrify replay` into a fresh data folder."""
    data_dir = Path(tempfile.mkdtemp(prefix="metrify-bench-replay-"))
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "metrify", "replay", str(path), *extra],
            env=child_environment(data_dir),
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"metrify replay failed ({done.returncode}):\n{done.stderr[-2000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def split_halves(path: Path, rows: int) -> None:
    """Time the replay without its database, then the database without the replay (see above)."""
    import gc

    from metrify.adapters.files.readers import FileReadingSource
    from metrify.adapters.memory.stream_store import InMemoryStreamStore, InMemoryStreamUnitOfWork
    from metrify.adapters.sqlalchemy import migrations
    from metrify.adapters.sqlalchemy.engine import SqliteCheckpointer, create_engine_for
    from metrify.adapters.sqlalchemy.unit_of_work import SqlAlchemyStreamUnitOfWork
    from metrify.adapters.system import SystemClock
    from metrify.application.replay import ReplayOptions, run_replay
    from metrify.application.stream import StreamPipeline
    from metrify.settings import StreamSettings

    transactions: list[tuple[list[Any], list[Any], list[Any]]] = []

    class Recording(InMemoryStreamUnitOfWork):
        """Keeps each transaction as it would be written, and stores nothing."""

        def commit(self) -> None:
            transactions.append((self.outcomes.events, self.state.saved, self.progress.staged))
            self.rollback()

    store = InMemoryStreamStore()
    pipeline = StreamPipeline(StreamSettings().to_config(), 1, lambda: Recording(store), SystemClock())
    started = time.perf_counter()
    run_replay(FileReadingSource(path), pipeline, ReplayOptions())
    rest = time.perf_counter() - started
    events = sum(len(t[0]) for t in transactions)
    print(
        f"  everything but the database: {rest:.2f} s = {rows / rest:,.0f} rows/s "
        f"({len(transactions)} transactions, {events:,} events)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="metrify-bench-split-") as folder:
        url = f"sqlite:///{folder}/metrify.db"
        migrations.upgrade(url)
        engine = create_engine_for(url)
        checkpointer = SqliteCheckpointer.start_for(engine)
        gc.disable()  # as the replay runs its batches (gc_paused): the kept events are many objects
        try:
            started = time.perf_counter()
            for outcomes, saves, progress in transactions:
                with SqlAlchemyStreamUnitOfWork(engine) as uow:
                    uow.outcomes.add_events(outcomes)
                    for save in saves:
                        uow.state.save(*save)
                    for done in progress:
                        uow.progress.set(done)
                    uow.commit()
            storage = time.perf_counter() - started
        finally:
            gc.enable()
            if checkpointer is not None:
                checkpointer.stop()
            engine.dispose()
    print(
        f"  the database alone (the same transactions into SQLite): {storage:.2f} s = {rows / storage:,.0f} rows/s "
        f"(the floor); both halves overlapped perfectly: {rows / max(rest, storage):,.0f} rows/s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meters", type=int, default=1500)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--split", action="store_true", help="also time the replay's halves apart (see above)")
    parser.add_argument("replay_args", nargs="*", help="more arguments for `metrify replay` (after --)")
    args = parser.parse_args()

    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"load average at start: {load_average()}", flush=True)
    path, rows = fleet_csv(args.meters, args.days)
    print(f"file: {path} ({rows:,} rows, {path.stat().st_size / 2**20:.1f} MiB); {args.runs} runs", flush=True)
    walls, cpus = [], []
    for run in range(args.runs):
        wall, cpu = replay_once(path, args.replay_args)
        walls.append(wall)
        cpus.append(cpu)
        print(f"  run {run + 1}: {rows:,} rows, {wall:.2f} s, {rows / wall:,.0f} rows/s (CPU {cpu:.2f} s)", flush=True)
    best, median = min(walls), statistics.median(walls)
    print(
        f"rows {rows:,}; best {best:.2f} s = {rows / best:,.0f} rows/s; median {median:.2f} s = "
        f"{rows / median:,.0f} rows/s; CPU time best {min(cpus):.2f} s = {rows / min(cpus):,.0f} rows/CPU-s"
    )
    if args.split:
        split_halves(path, rows)
    print(f"load average at end: {load_average()}")
    print(f"goal >= {GOAL:,} rows/s (best run): {'met' if rows / best >= GOAL else 'not met'}")


if __name__ == "__main__":
    main()
