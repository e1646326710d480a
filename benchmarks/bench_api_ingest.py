"""How fast the API ingests: one `metrify api` process (uvicorn on 127.0.0.1, embedded profile,
SQLite in a temporary folder), fed batches of readings over HTTP by a load generator in this process.

The fleet reports every interval: batch k holds one reading of each of `--batch` meters for one
interval (JSON `{"readings": [...]}` with meter_id, timestamp, consumption_kwh, voltage, region),
the bodies encoded before the clock starts. `--clients` connections post concurrently (keep-alive,
the standard library's HTTP client); the run stops after `--batches` batches or `--seconds`,
whichever comes first. The ingest key's rate
limit is off (METRIFY_AUTH__INGEST_RATE_LIMIT=0): this measures the ingest path, not the limiter.
Prints readings/s over the run, and p50/p99 of the time from sending a batch to its 202, the five
slowest batches (with 10,000 meters, batches 6, 16, 26, ... after the warm-up move the watermark
past every meter's windows); then the same per quarter of the run, in the order the batches were
sent: the database grows as it runs, and so does the work of each batch (see the README's figures).
Before those, the CPU each process spent per batch over the run (the API process, its stream writer
process, this load generator; Linux's /proc): the host's speed moves it less than the wall clock,
and it shows which process sets the pace.

With `--kafka` (METRIFY_KAFKA__BOOTSTRAP must name a broker) the API runs on the production ingest
path instead: each batch only goes to the raw topic of a throw-away topic prefix, and `--workers N`
uvicorn processes may serve it.

    python benchmarks/bench_api_ingest.py [--batches 600] [--batch 1000] [--seconds 60] [--clients 1]
                                          [--runs 1] [--window-writes 4000]
                                          [--stream-writer process [--state-save-batches 200]]
                                          [--kafka [--workers N]]

The defaults are the embedded ingest's fastest and steadiest settings (the README's "Running at
scale"): one client, a stream writer process saving the meter states every 200 batches, at most
4,000 closed windows stored per batch. `--stream-writer inline --window-writes 0
--state-save-batches 1` runs the API's own defaults instead.

With `--window-writes N` the API stores at most N closed windows per batch and the rest over the
next batches (METRIFY_API__WINDOW_WRITES_PER_BATCH): the batches that close every meter's windows
no longer store them all at once.

With `--stream-writer process` the API hands each batch to a stream writer process, which answers
once the batch is through the core and journaled and stores it while the API reads the next
(METRIFY_API__STREAM_WRITER); with `--state-save-batches N` that writer saves the meter
states every N batches (METRIFY_API__STATE_SAVE_BATCHES), keeping the batches between in its
journal. Every run ends by stopping the server (SIGTERM) and prints how long it took to store all
it had answered and stop: the readings/s are of batches answered.

This host's speed varies from run to run by 10-20%: `--runs 5` prints five runs and their medians.

Goal (issue 7): >= 50,000 readings/s with p99 < 50 ms per batch of 1,000.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
import orjson  # noqa: E402
from _figures import percentile  # noqa: E402
from _fleet import fleet_batch  # noqa: E402
from _machine import cpu_model, process_tree_cpu  # noqa: E402


def bodies(batches: int, size: int, meters: int) -> list[bytes]:
    """Batch k: `size` meters' readings of one interval; the fleet's meters take turns."""
    return [orjson.dumps({"readings": fleet_batch(k, size, meters)}) for k in range(batches)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare(env: dict[str, str]) -> str:
    """Schema, an ADMIN and an ingest key in the benchmark's database (before the server starts)."""
    run = [sys.executable, "-m", "metrify"]
    subprocess.run([*run, "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run(
        [*run, "users", "create", "--email", "bench@example.com", "--role", "ADMIN"],
        env=env,
        input="benchmark password\n",
        text=True,
        check=True,
        capture_output=True,
    )
    return ""


def start_server(env: dict[str, str], port: int, workers: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "metrify", "api", "--port", str(port), "--workers", str(workers)],
        env={**env, "METRIFY_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"the API exited: {server.stderr.read().decode() if server.stderr else ''}")
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the API did not become ready in 60 s")


def ingest_key(base: str) -> str:
    with httpx.Client(base_url=base, timeout=30) as client:
        token = client.post(
            "/api/v1/auth/token", data={"username": "bench@example.com", "password": "benchmark password"}
        ).json()["access_token"]
        created = client.post(
            "/api/v1/ingest-keys",
            json={"name": "bench", "all_regions": True},
            headers={"Authorization": f"Bearer {token}"},
        )
        return created.json()["token"]


def load(base: str, key: str, payloads: list[bytes], clients: int, seconds: float) -> tuple[list[float], int, float]:
    """Post the payloads from `clients` threads; (latency per batch, readings accepted, wall seconds)."""
    latencies: list[float] = []  # in the order the batches were sent
    accepted = 0
    lock = threading.Lock()
    position = 0
    stop_at = time.perf_counter() + seconds
    headers = {"X-API-Key": key, "Content-Type": "application/json"}

    def worker() -> None:
        nonlocal position, accepted
        # The standard library's client, one keep-alive connection per thread: httpx spent 1.3 ms
        # of CPU per batch in this process (0.45 ms here), and with one client the server waits
        # for it between batches, as it would not for a gateway written in C or Go.
        address = urlsplit(base)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        try:
            while time.perf_counter() < stop_at:
                with lock:
                    if position >= len(payloads):
                        return
                    index, body = position, payloads[position]
                    position += 1
                sent = time.perf_counter()
                connection.request("POST", "/api/v1/telemetry/batch", body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                took = time.perf_counter() - sent
                if response.status != 202:
                    raise SystemExit(f"batch refused: {response.status} {answer[:300]!r}")
                with lock:
                    timed[index] = took
                    accepted += orjson.loads(answer)["accepted"]
        finally:
            connection.close()

    timed: dict[int, float] = {}
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.extend(timed[index] for index in sorted(timed))
    return latencies, accepted, time.perf_counter() - started


def measure(args: argparse.Namespace, payloads: list[bytes], bootstrap: str) -> tuple[list[float], int, float]:
    """One run on a fresh database (and topic prefix): (latency per batch, readings accepted, wall s)."""
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METRIFY_")}
        env.update(
            METRIFY_DATA_DIR=folder,
            METRIFY_LOG_FORMAT="json",
            METRIFY_AUTH__INGEST_RATE_LIMIT="0",
            METRIFY_API__WINDOW_WRITES_PER_BATCH=str(args.window_writes),
            METRIFY_API__STREAM_WRITER=args.stream_writer,
            METRIFY_API__STATE_SAVE_BATCHES=str(args.state_save_batches),
            PYTHONPATH=str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""),
        )
        if args.kafka:
            env.update(
                METRIFY_KAFKA__BOOTSTRAP=bootstrap,
                METRIFY_KAFKA__TOPIC_PREFIX=f"bench-{os.getpid()}-{time.monotonic_ns()}.",
                METRIFY_AUTH__SECRET="benchmark-secret-0123456789abcdef0123",
            )
            subprocess.run(
                [sys.executable, "-m", "metrify", "topics", "create", "--partitions", "4"], env=env, check=True
            )
        prepare(env)
        port = free_port()
        server = start_server(env, port, args.workers)
        try:
            base = f"http://127.0.0.1:{port}"
            key = ingest_key(base)
            load(base, key, payloads[: args.warmup], 1, args.seconds)
            cpu_before, own_before = process_tree_cpu(server.pid), time.process_time()
            latencies, accepted, wall = load(base, key, payloads[args.warmup :], args.clients, args.seconds)
            writer = args.stream_writer == "process" and not args.kafka
            own = time.process_time() - own_before
            print_cpu_per_batch(cpu_before, process_tree_cpu(server.pid), own, latencies, writer)
            # Until the server has stored everything and ended (SIGTERM: the API's shutdown waits
            # for its stream writer process to store what it answered).
            stopping = time.perf_counter()
            server.terminate()
            server.wait(timeout=120)
            took = 1000 * (time.perf_counter() - stopping)
            print(f"server stored all and stopped {took:.0f} ms after the last answer")
            return latencies, accepted, wall
        finally:
            if server.poll() is None:
                server.terminate()
            server.wait(timeout=120)
            if args.kafka:
                from metrify.adapters.kafka.admin import delete_topics
                from metrify.adapters.kafka.clients import TopicNames

                delete_topics(bootstrap, TopicNames(env["METRIFY_KAFKA__TOPIC_PREFIX"]))


def print_cpu_per_batch(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    own: float,
    latencies: list[float],
    writer: bool,
) -> None:
    """The CPU each process spent per batch over the run: where the machine's cores went, which the
    host's speed changes less than it changes the wall-clock figures (Linux only). A spawned child
    is the stream writer when `writer`, else one of uvicorn's worker processes (`--workers`)."""
    if not after or not latencies:
        return
    parts = []
    for pid, (command, seconds) in sorted(after.items()):
        if "resource_tracker" in command or pid not in before:
            continue  # multiprocessing's helper (idle), or a process not read at the start
        if "multiprocessing" in command:
            name = "stream writer" if writer else "API worker"
        else:
            name = "API" if "metrify api" in command else command[:40]
        parts.append(f"{name} {(seconds - before[pid][1]) * 1000 / len(latencies):.1f}")
    parts.append(f"load generator {own * 1000 / len(latencies):.1f}")
    mean = statistics.fmean(latencies) * 1000
    print(f"CPU per batch (ms): {', '.join(parts)}; a batch's mean wall time {mean:.1f} ms")


def report(latencies: list[float], accepted: int, wall: float, batch: int) -> tuple[float, float]:
    """Print one run's figures; (readings/s, p99 in ms)."""
    readings = len(latencies) * batch
    rate, p99 = readings / wall, percentile(latencies, 0.99) * 1000
    print(
        f"{len(latencies)} batches, {readings:,} readings ({accepted:,} accepted) in {wall:.2f} s: "
        f"{rate:,.0f} readings/s"
    )
    print(
        f"per batch: p50 {percentile(latencies, 0.50) * 1000:.1f} ms, p99 {p99:.1f} ms, "
        f"mean {statistics.fmean(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    slowest = sorted(range(len(latencies)), key=latencies.__getitem__, reverse=True)[:5]
    print("slowest batches (number: ms): " + ", ".join(f"{i + 1}: {latencies[i] * 1000:.0f}" for i in sorted(slowest)))
    quarter = max(1, len(latencies) // 4)
    for number, start in enumerate(range(0, quarter * 4, quarter), 1):
        part = latencies[start : start + quarter]
        if part:
            print(
                f"  quarter {number} (batches {start + 1}-{start + len(part)}): "
                f"p50 {percentile(part, 0.50) * 1000:.1f} ms, p99 {percentile(part, 0.99) * 1000:.1f} ms, "
                f"mean {statistics.fmean(part) * 1000:.1f} ms"
            )
    return rate, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--batch", type=int, default=1000, help="readings per batch")
    parser.add_argument("--meters", type=int, default=10_000, help="meters in the fleet")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=1, help="concurrent connections")
    parser.add_argument("--warmup", type=int, default=5, help="batches sent before the clock starts")
    parser.add_argument("--runs", type=int, default=1, help="runs, each on a fresh database; then their medians")
    parser.add_argument(
        "--window-writes",
        type=int,
        default=4000,
        help="METRIFY_API__WINDOW_WRITES_PER_BATCH: closed windows stored per batch at most (0: all)",
    )
    parser.add_argument(
        "--stream-writer",
        choices=("inline", "process"),
        default="process",
        help="METRIFY_API__STREAM_WRITER: the stream in the API process, or in a stream writer process of its own",
    )
    parser.add_argument(
        "--state-save-batches",
        type=int,
        default=200,
        help="METRIFY_API__STATE_SAVE_BATCHES: with a stream writer process, meter states saved every N batches",
    )
    parser.add_argument("--kafka", action="store_true", help="production ingest: batches go to the raw topic")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn processes (more than 1 needs --kafka)")
    args = parser.parse_args()
    bootstrap = os.environ.get("METRIFY_KAFKA__BOOTSTRAP", "")
    if args.kafka and not bootstrap:
        raise SystemExit('--kafka needs METRIFY_KAFKA__BOOTSTRAP (eval "$(bash scripts/services.sh up)")')
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    if args.state_save_batches < 1:
        raise SystemExit("--state-save-batches must be at least 1")

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), Python {platform.python_version()}")
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    payloads = bodies(args.warmup + args.batches, args.batch, args.meters)
    print(
        f"{args.batches} batches of {args.batch} readings ({len(payloads[-1]) / 1024:.0f} KiB each), "
        f"{args.meters:,} meters, {args.clients} clients, at most {args.seconds:.0f} s"
    )
    print(
        f"ingest path: {'Kafka raw topic' if args.kafka else 'embedded stream pipeline into SQLite'}, "
        f"{args.workers} API process(es)"
        + (f", at most {args.window_writes} closed windows stored per batch" if args.window_writes else "")
        + (", a stream writer process" if args.stream_writer == "process" and not args.kafka else "")
        + (
            f", meter states saved every {args.state_save_batches} batches"
            if args.state_save_batches > 1 and args.stream_writer == "process" and not args.kafka
            else ""
        )
    )
    figures = []
    for run in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"run {run} of {args.runs}")
        figures.append(report(*measure(args, payloads, bootstrap), args.batch))
    if args.runs > 1:
        print(
            f"median of {args.runs} runs: {statistics.median(rate for rate, _ in figures):,.0f} readings/s, "
            f"p99 {statistics.median(p99 for _, p99 in figures):.1f} ms"
        )


if __name__ == "__main__":
    main()
