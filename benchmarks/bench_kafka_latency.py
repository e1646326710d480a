"""End-to-end latency of Metrify on Kafka at a steady input rate: from the moment a reading is
produced to the raw topic to the moment its row is visible in PostgreSQL (committed by the sink).

One `metrify worker` and one `metrify sink` process run against a fresh topic prefix and a fresh
database, with the default stream settings (30-minute interval, 15m/1h/1d windows). The bench
produces `--rate` readings per second for `--seconds`: a fleet of `--meters` meters takes turns,
each reading in the meter's next half-hour slot (event time starts two days ago and runs faster
than the wall clock, so windows close and aggregates flow as in a live fleet). Every `--sample`-th
reading is timed: a poller asks PostgreSQL every 10 ms which timed readings are visible, by
primary key. Prints p50, p90, p99 and max.

    eval "$(bash scripts/services.sh up)"
    python benchmarks/bench_kafka_latency.py [--rate 5000] [--seconds 30] [--meters 5000] [--timeline FILE]

`--timeline FILE` writes every timed reading as a CSV line (seconds since the first one was
produced, latency in ms): where in the run the slow ones were.

Goal (issue 6): p99 < 500 ms at 5,000 readings/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import sqlalchemy as sa  # noqa: E402
from _figures import percentile  # noqa: E402
from _machine import cpu_model  # noqa: E402

from metrify.adapters.kafka.admin import create_topics, delete_topics  # noqa: E402
from metrify.adapters.kafka.clients import TopicNames  # noqa: E402
from metrify.adapters.kafka.publisher import KafkaReadingPublisher  # noqa: E402
from metrify.adapters.sqlalchemy import migrations  # noqa: E402
from metrify.adapters.sqlalchemy.engine import create_engine_for, mask_url, normalise_url  # noqa: E402
from metrify.domain.readings import RawReading  # noqa: E402
from metrify.domain.stream.grammar import format_timestamp  # noqa: E402

US = 1_000_000


def machine() -> str:
    load = os.getloadavg()[0]
    return f"CPU: {cpu_model()} x {os.cpu_count()}, load average {load:.1f}, Python {platform.python_version()}"


def fresh_database(server_url: str) -> tuple[str, str]:
    name = f"metrify_latency_{uuid.uuid4().hex[:8]}"
    admin = create_engine_for(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
    admin.dispose()
    url = normalise_url(server_url).set(database=name).render_as_string(hide_password=False)
    migrations.upgrade(url)
    return url, name


def drop_database(server_url: str, name: str) -> None:
    admin = create_engine_for(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class Poller(threading.Thread):
    """Asks PostgreSQL every few ms which timed readings are visible; records when each first is."""

    def __init__(self, url: str, every: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.engine = create_engine_for(url)
        self.every = every
        self.pending: dict[tuple[str, int], float] = {}  # (meter, ts) -> produced at (perf_counter)
        self.latencies: list[float] = []
        self.timeline: list[tuple[float, float]] = []  # (produced at, latency), perf_counter seconds
        self.lock = threading.Lock()
        self.running = True

    def expect(self, meter: str, ts: int, produced_at: float) -> None:
        with self.lock:
            self.pending[(meter, ts)] = produced_at

    def run(self) -> None:
        query = sa.text(
            "SELECT r.meter_id, r.ts FROM readings r "
            "JOIN unnest(CAST(:meters AS text[]), CAST(:times AS bigint[])) AS k(meter_id, ts) "
            "ON r.meter_id = k.meter_id AND r.ts = k.ts"
        )
        with self.engine.connect() as connection:
            while self.running:
                with self.lock:
                    keys = list(self.pending)
                if keys:
                    rows = connection.execute(
                        query, {"meters": [k[0] for k in keys], "times": [k[1] for k in keys]}
                    ).all()
                    seen = time.perf_counter()
                    connection.rollback()
                    with self.lock:
                        for meter, ts in rows:
                            produced = self.pending.pop((meter, ts), None)
                            if produced is not None:
                                self.latencies.append(seen - produced)
                                self.timeline.append((produced, seen - produced))
                time.sleep(self.every)
        self.engine.dispose()


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "metrify", *args], env=env, stdout=handle, stderr=subprocess.STDOUT
    )
    handle.close()
    return process


def wait_for(log: Path, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {text!r} in {log}:\n{log.read_text(errors='replace')[-2000:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def batch_figures(port: int, name: str) -> str:
    """Mean and histogram-estimated p99 of a process's batch time, from its /metrics."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError as exc:
        return f"{name}: metrics unavailable ({exc})"
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count = float(line.rsplit(" ", 1)[1])
    if not count:
        return f"{name}: no batches"
    p99 = next((bound for bound, seen in buckets if seen >= 0.99 * count), float("inf"))
    return f"{name}: {int(count)} batches, mean {total / count * 1000:.0f} ms, p99 <= {p99 * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=5000, help="readings per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--meters", type=int, default=5000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--sample", type=int, default=10, help="time every n-th reading")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds produced before timing starts")
    parser.add_argument("--timeline", type=Path, help="write (produced s, latency ms) of every timed reading here")
    args = parser.parse_args()
    bootstrap = os.environ.get("METRIFY_KAFKA__BOOTSTRAP")
    server = os.environ.get("METRIFY_DATABASE_URL", "")
    if not bootstrap or not server.startswith("postgres"):
        raise SystemExit('set METRIFY_KAFKA__BOOTSTRAP and METRIFY_DATABASE_URL: eval "$(bash scripts/services.sh up)"')
    print(machine())
    names = TopicNames(f"latency6-{uuid.uuid4().hex[:8]}.")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / names.prefix.rstrip(".")
    work.mkdir(parents=True, exist_ok=True)
    create_topics(bootstrap, names, args.partitions, 1)
    url, database = fresh_database(server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRIFY_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT / "src"),
            "METRIFY_DATA_DIR": str(work),
            "METRIFY_LOG_FORMAT": "json",
            "METRIFY_DATABASE_URL": url,
            "METRIFY_KAFKA__BOOTSTRAP": bootstrap,
            "METRIFY_KAFKA__TOPIC_PREFIX": names.prefix,
            "METRIFY_KAFKA__GROUP_ID": names.prefix + "workers",
            "METRIFY_KAFKA__SINK_GROUP_ID": names.prefix + "sink",
        }
    )
    processes = []
    try:
        worker_port, sink_port = free_port(), free_port()
        processes.append(start(["worker", "--metrics-port", str(worker_port)], env, work / "worker.log"))
        processes.append(start(["sink", "--metrics-port", str(sink_port)], env, work / "sink.log"))
        wait_for(work / "worker.log", "restored from the changelog")
        wait_for(work / "sink.log", "output partitions from the offsets")
        print(
            f"worker and sink ready; producing {args.rate:,}/s for {args.seconds:.0f} s "
            f"(+{args.warmup:.0f} s warm-up) into {mask_url(url)}"
        )
        poller = Poller(url)
        poller.start()
        publisher = KafkaReadingPublisher(bootstrap, names.raw, args.partitions)
        chance = random.Random(1)
        meters = [f"LAT-{i:06d}" for i in range(args.meters)]
        step = 1800 * US  # the default interval: each reading fills the meter's next slot
        base_us = (time.time_ns() // 1000 - 2 * 86400 * US) // step * step
        jitter = [chance.randrange(0, 20 * US) for _ in range(args.meters)]
        base = time.perf_counter()
        total = int((args.seconds + args.warmup) * args.rate)
        warm = int(args.warmup * args.rate)
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - base) * args.rate))
            while sent < due:
                meter = meters[sent % args.meters]
                ts = base_us + (sent // args.meters) * step + jitter[sent % args.meters]
                if sent >= warm and sent % args.sample == 0:
                    poller.expect(meter, ts, time.perf_counter())
                publisher.publish(RawReading(meter, format_timestamp(ts), f"{chance.uniform(0.01, 0.5):.3f}"))
                sent += 1
            publisher.producer.poll(0)
            time.sleep(0.002)
        publisher.flush()
        deadline = time.monotonic() + 60
        while poller.pending and time.monotonic() < deadline:
            time.sleep(0.1)
        poller.running = False
        poller.join(5)
        latencies = [x * 1000 for x in poller.latencies]
        if not latencies:
            raise SystemExit("no timed reading became visible")
        print(
            f"{len(latencies):,} timed readings ({len(poller.pending)} never seen): "
            f"p50 {percentile(latencies, 0.50):.0f} ms, p90 {percentile(latencies, 0.90):.0f} ms, "
            f"p99 {percentile(latencies, 0.99):.0f} ms, max {max(latencies):.0f} ms, "
            f"mean {statistics.fmean(latencies):.0f} ms"
        )
        if args.timeline is not None:
            first = min(produced for produced, _ in poller.timeline)
            lines = (f"{produced - first:.3f},{took * 1000:.1f}" for produced, took in sorted(poller.timeline))
            args.timeline.write_text("produced_s,latency_ms\n" + "\n".join(lines) + "\n")
        print(batch_figures(worker_port, "metrify_worker_batch_seconds"), "(process + transaction)")
        print(batch_figures(sink_port, "metrify_sink_batch_seconds"), "(database transaction)")
        print("goal: p99 < 500 ms at 5,000 readings/s")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        delete_topics(bootstrap, names)
        drop_database(server, database)


if __name__ == "__main__":
    main()
