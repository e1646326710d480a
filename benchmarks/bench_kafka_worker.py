"""How fast ONE `metrify worker` process runs the stream on Kafka, exactly-once, and how that
compares with the same pipeline written with Quix Streams 3 on the same topic data.

The simulator's fleet (1,000 meters x 3 days of half-hourly readings by default, with its late,
duplicate and invalid rows) is produced to a fresh raw topic first (not timed). Then one worker
process (`metrify worker --stop-when-idle`) processes it all: the figure is readings / (last
committed transaction - first record consumed), as the worker itself reports. Then the Quix
Streams version (benchmarks/bench_kafka_quix.py, in its own virtualenv because quixstreams pins an
older confluent-kafka) runs on the same raw topic and is timed the same way. Broker on 127.0.0.1;
topics get a fresh prefix and are deleted afterwards.

    eval "$(bash scripts/services.sh up)"
    python benchmarks/bench_kafka_worker.py [--meters 1000] [--days 3] [--partitions 4]
        [--batch-size 10000] [--quix-python PATH | --no-quix]

Without --quix-python it uses .cache/bench-quix-venv (created with `pip install quixstreams>=3,<4`
on first use). Goals (issue 6): >= 60,000 readings/s, and >= 2x the Quix Streams figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _machine import cpu_model  # noqa: E402

from metrify.adapters.kafka.admin import create_topics, delete_topics  # noqa: E402
from metrify.adapters.kafka.clients import TopicNames  # noqa: E402
from metrify.adapters.kafka.publisher import KafkaReadingPublisher  # noqa: E402
from metrify.application.simulator import FleetProfile, fleet_rows  # noqa: E402
from metrify.domain.readings import RawReading  # noqa: E402

QUIX_VENV = ROOT / ".cache" / "bench-quix-venv"


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"CPU: {cpu_model()} x {os.cpu_count()}, load average {load:.1f}, Python {platform.python_version()}"


def produce(bootstrap: str, names: TopicNames, partitions: int, profile: FleetProfile) -> int:
    rows = [RawReading(m, t, k) for m, t, k in fleet_rows(profile)]
    publisher = KafkaReadingPublisher(bootstrap, names.raw, partitions)
    started = time.perf_counter()
    for row in rows:
        publisher.publish(row)
    publisher.flush()
    seconds = time.perf_counter() - started
    print(f"produced {len(rows):,} readings to {names.raw} in {seconds:.1f} s ({len(rows) / seconds:,.0f}/s)")
    return len(rows)


def run_worker(bootstrap: str, names: TopicNames, batch_size: int, data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRIFY_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT / "src"),
            "METRIFY_DATA_DIR": str(data_dir),
            "METRIFY_LOG_FORMAT": "json",
            "METRIFY_KAFKA__BOOTSTRAP": bootstrap,
            "METRIFY_KAFKA__TOPIC_PREFIX": names.prefix,
            "METRIFY_KAFKA__GROUP_ID": names.prefix + "workers",
        }
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "metrify",
            "worker",
            "--stop-when-idle",
            "5",
            "--metrics-port",
            "0",
            "--batch-size",
            str(batch_size),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"the worker failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])["worker"]
    summary["process_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return summary


def quix_python(given: str | None) -> str:
    if given:
        return given
    python = QUIX_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {QUIX_VENV} with quixstreams 3 (once)")
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "quixstreams>=3,<4"], check=True)
    return str(python)


def run_quix(python: str, bootstrap: str, names: TopicNames, expect: int, state_dir: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            python,
            str(ROOT / "benchmarks" / "bench_kafka_quix.py"),
            "--bootstrap",
            bootstrap,
            "--topic",
            names.raw,
            "--prefix",
            names.prefix + "quix.",
            "--expect",
            str(expect),
            "--state-dir",
            str(state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=7200,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"the Quix Streams pipeline failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def quix_cleanup(bootstrap: str, prefix: str) -> None:
    """Quix creates its own output, changelog and repartition topics: delete those of this run."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    doomed = [t for t in admin.list_topics(timeout=10).topics if prefix in t]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--quix-python", default=None)
    parser.add_argument("--no-quix", action="store_true")
    parser.add_argument("--keep-topics", action="store_true")
    args = parser.parse_args()
    bootstrap = os.environ.get("METRIFY_KAFKA__BOOTSTRAP")
    if not bootstrap:
        raise SystemExit('set METRIFY_KAFKA__BOOTSTRAP (eval "$(bash scripts/services.sh up)")')
    print(machine())
    names = TopicNames(f"bench6-{uuid.uuid4().hex[:8]}.")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / names.prefix.rstrip(".")
    work.mkdir(parents=True, exist_ok=True)
    create_topics(bootstrap, names, args.partitions, 1)
    try:
        count = produce(bootstrap, names, args.partitions, FleetProfile(meters=args.meters, days=args.days))
        worker = run_worker(bootstrap, names, args.batch_size, work / "worker")
        rate = worker["readings_per_second"]
        cpu_rate = worker["readings"] / worker["busy_cpu_seconds"] if worker["busy_cpu_seconds"] else 0.0
        print(
            f"metrify worker (1 process, {args.partitions} partitions, batch {args.batch_size}): "
            f"{worker['readings']:,} readings in {worker['busy_seconds']:.2f} s = {rate:,.0f} readings/s; "
            f"{worker['busy_cpu_seconds']:.2f} CPU s = {cpu_rate:,.0f} readings per CPU second "
            f"({worker['batches']} transactions)"
        )
        assert worker["readings"] == count, f"the worker processed {worker['readings']} of {count} readings"
        if not args.no_quix:
            python = quix_python(args.quix_python)
            quix = run_quix(python, bootstrap, names, count, work / "quix-state")
            quix_rate = quix["records"] / quix["seconds"] if quix["seconds"] else 0.0
            quix_cpu_rate = quix["records"] / quix["cpu_seconds"] if quix["cpu_seconds"] else 0.0
            print(
                f"quix streams (1 process, exactly-once): {quix['records']:,} readings in {quix['seconds']:.2f} s = "
                f"{quix_rate:,.0f} readings/s; {quix['cpu_seconds']:.2f} CPU s = {quix_cpu_rate:,.0f} readings "
                "per CPU second"
            )
            if quix_rate and quix_cpu_rate:
                print(
                    f"ratio metrify / quix streams: {rate / quix_rate:.1f}x by wall clock, "
                    f"{cpu_rate / quix_cpu_rate:.1f}x by CPU time"
                )
        print("goal: >= 60,000 readings/s, >= 2x quix streams")
    finally:
        if not args.keep_topics:
            delete_topics(bootstrap, names)
            quix_cleanup(bootstrap, names.prefix + "quix.")


if __name__ == "__main__":
    main()
