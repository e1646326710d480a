"""Metrify on Kafka, end to end on real processes, a real broker and real PostgreSQL (issue 6).

The same fleet CSV goes through `metrify replay --to-kafka` into a 4-partition raw topic, processed
by `metrify worker` processes and stored by `metrify sink`; the exports from PostgreSQL must equal,
kind by kind and row by row, those of the embedded `metrify replay --partitions 4` into SQLite:

1. equivalence: 2 workers, 1 sink (plus: poison messages become `malformed_message` rejects);
2. crashes: workers and the sink SIGKILLed at random moments and restarted;
3. rebalance: a third worker joins mid-stream, one of the first two leaves;
4. broker restart mid-stream (a private broker of this test, so nothing else is disturbed);
5. SIGTERM to a worker that is restoring a partition (waiting for a crashed worker's transaction).

Each test has its own topic prefix, consumer groups and database. The pipeline is done when the
workers' group has committed the whole raw topic and the sink's offsets in the database reach the
end of every output partition, and stay there.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from confluent_kafka import Producer
from tests.integration.cli import metrify, metrify_env

from metrify.adapters.files.writers import write_fleet_csv
from metrify.adapters.kafka.admin import admin_client, delete_topics, end_offsets, group_lag, topic_partitions
from metrify.adapters.kafka.clients import TopicNames
from metrify.adapters.sqlalchemy.engine import create_engine_for
from metrify.adapters.sqlalchemy.queries import SqlAlchemyOutcomeQueries
from metrify.adapters.sqlalchemy.tables import sink_offsets
from metrify.application.exports import EXPORT_KINDS, export_rows
from metrify.application.ports import ExportFilter
from metrify.application.simulator import FleetProfile

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
NETWORK = ["--delay-prob", "0.1", "--max-delay", "300", "--drop-prob", "0.02", "--seed", "3"]
FLEET = FleetProfile(meters=60, days=2, seed=21)
REPLAY_SECONDS = 16.0  # the paced replay spreads the fleet's two days over this many seconds


@pytest.fixture(scope="module")
def bootstrap(kafka_bootstrap: str) -> str:
    return kafka_bootstrap


@pytest.fixture(scope="module")
def fleet_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kafka-fleet") / "fleet.csv"
    write_fleet_csv(path, FLEET)
    return path


def exports_of(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every export kind, as `metrify export` writes them (same code, without a process each)."""
    engine = create_engine_for(url)
    try:
        queries = SqlAlchemyOutcomeQueries(engine)
        return {
            kind: [orjson.loads(orjson.dumps(row)) for row in export_rows(queries, kind, ExportFilter())]
            for kind in EXPORT_KINDS
        }
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def embedded(fleet_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The reference: the embedded profile, 4 logical partitions, SQLite."""
    env = metrify_env(tmp_path_factory.mktemp("embedded"))
    metrify(["replay", str(fleet_csv), "--partitions", str(PARTITIONS), *NETWORK], env)
    exports = exports_of(f"sqlite:///{Path(env['METRIFY_DATA_DIR']) / 'metrify.db'}")
    assert exports["readings"] and exports["rejected"] and exports["late"] and exports["gaps"]
    return exports


class KafkaRun:
    """One deployment of this test: prefix, groups, database, and the processes it started."""

    def __init__(self, folder: Path, bootstrap: str, database_url: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.folder = folder
        self.bootstrap = bootstrap
        self.database_url = database_url
        self.names = TopicNames(f"test6-{tag}.")
        self.worker_group = f"test6-{tag}-workers"
        self.sink_group = f"test6-{tag}-sink"
        self.env = metrify_env(
            folder / "data",
            database_url,
            METRIFY_KAFKA__BOOTSTRAP=bootstrap,
            METRIFY_KAFKA__TOPIC_PREFIX=self.names.prefix,
            METRIFY_KAFKA__GROUP_ID=self.worker_group,
            METRIFY_KAFKA__SINK_GROUP_ID=self.sink_group,
        )
        self.processes: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = {}

    # -- processes ----------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.starts[name] = self.starts.get(name, 0) + 1
        log = open(self.folder / f"{name}.{self.starts[name]}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "metrify", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.processes[name] = process
        return process

    def worker(self, name: str) -> subprocess.Popen:
        return self._spawn(
            name,
            [
                "worker",
                "--instance-id",
                name,
                "--metrics-port",
                "0",
                "--session-timeout",
                "6",
                "--transaction-timeout",
                "10",
                "--batch-size",
                "300",
            ],
        )

    def sink(self, name: str = "sink") -> subprocess.Popen:
        return self._spawn(name, ["sink", "--metrics-port", "0", "--session-timeout", "6", "--batch-size", "50"])

    def replay(self, paced: bool = True, seconds: float = REPLAY_SECONDS) -> subprocess.Popen:
        args = ["replay", str(self.fleet), "--to-kafka", *NETWORK]
        if paced:  # the fleet's days of event time in about `seconds` of real time
            args += ["--speed", str(FLEET.days * 86400 / seconds)]
        return self._spawn("replay", args)

    def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        """Until the process's latest start owns partitions (it logged a restore or its offsets)."""
        path = self.folder / f"{name}.{self.starts[name]}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = path.read_text(errors="replace") if path.exists() else ""
            if "restored from the changelog" in text or "output partitions from the offsets" in text:
                return
            assert self.alive(name), self.log_of(name)
            time.sleep(0.1)
        raise AssertionError(f"{name} did not get partitions within {timeout}s:\n{self.log_of(name)}")

    def kill(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self, name: str, timeout: float = 60) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout)

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def log_of(self, name: str, tail: int | None = 4000) -> str:
        """The process's logs (each file's last `tail` characters: enough for a failure message;
        None for all of it)."""
        texts = (path.read_text(errors="replace") for path in sorted(self.folder.glob(f"{name}.*.log")))
        return "\n".join(text if tail is None else text[-tail:] for text in texts)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
        try:
            delete_topics(self.bootstrap, self.names)
        except Exception:  # noqa: BLE001 - a broker already gone leaves nothing to clean
            pass

    # -- the pipeline ---------------------------------------------------------------------------------

    def setup(self, fleet: Path) -> None:
        self.fleet = fleet
        metrify(["topics", "create", "--partitions", str(PARTITIONS)], self.env)

    def progress(self) -> tuple[int, int] | None:
        """(worker lag, sink lag), or None when the broker does not answer."""
        try:
            present = topic_partitions(admin_client(self.bootstrap), timeout=5)
            raw = group_lag(self.bootstrap, self.worker_group, {self.names.raw: present[self.names.raw][0]}, 5)
            outputs = {t: present[t][0] for t in self.names.outputs.values()}
            ends = end_offsets(admin_client(self.bootstrap), outputs, timeout=5)
        except Exception:  # noqa: BLE001 - the broker is restarting
            return None
        worker_lag = sum(end - (committed or 0) for committed, end in raw.values())
        engine = create_engine_for(self.database_url)
        try:
            with engine.connect() as connection:
                if not sa.inspect(connection).has_table("sink_offsets"):
                    return worker_lag, sum(ends.values())
                c = sink_offsets.c
                rows = connection.execute(
                    sa.select(c.topic, c.partition, c.next_offset).where(c.consumer == self.sink_group)
                )
                stored = {(t, p): o for t, p, o in rows}
        finally:
            engine.dispose()
        sink_lag = sum(end - stored.get(key, 0) for key, end in ends.items())
        return worker_lag, sink_lag

    def stored_readings(self) -> int:
        engine = create_engine_for(self.database_url)
        try:
            with engine.connect() as connection:
                if not sa.inspect(connection).has_table("readings"):
                    return 0
                return connection.execute(sa.text("SELECT count(*) FROM readings")).scalar_one()
        finally:
            engine.dispose()

    def wait_stored(self, readings: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.stored_readings() < readings:
            assert time.monotonic() < deadline, f"fewer than {readings} readings stored after {timeout}s"
            time.sleep(0.2)

    def wait_settled(self, timeout: float = 240.0) -> None:
        """Until both lags are 0 on three checks in a row (the replay must have ended)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        last = None
        while time.monotonic() < deadline:
            last = self.progress()
            print(time.strftime("%X"), "lags", last, flush=True)
            quiet = quiet + 1 if last == (0, 0) else 0
            if quiet >= 3:
                return
            time.sleep(1.0)
        logs = "\n".join(f"--- {name}\n{self.log_of(name)[-3000:]}" for name in self.processes)
        raise AssertionError(f"the pipeline did not settle within {timeout}s (lags {last}):\n{logs}")

    def exports(self) -> dict[str, list[dict[str, Any]]]:
        return exports_of(self.database_url)


@pytest.fixture
def run(tmp_path: Path, bootstrap: str, fresh_postgres_url: str, fleet_csv: Path) -> Iterator[KafkaRun]:
    deployment = KafkaRun(tmp_path, bootstrap, fresh_postgres_url)
    deployment.setup(fleet_csv)
    yield deployment
    deployment.close()


def _assert_same(actual: dict[str, list[dict[str, Any]]], expected: dict[str, list[dict[str, Any]]]) -> None:
    for kind in ("readings", "rejected", "late", "gaps", "aggregates"):
        assert len(actual[kind]) == len(expected[kind]), kind
        assert actual[kind] == expected[kind], kind


def _wait_replayed(run: KafkaRun, timeout: float = 180.0) -> None:
    code = run.processes["replay"].wait(timeout=timeout)
    assert code == 0, run.log_of("replay")


# ---------------------------------------------------------------------------------------------- tests


def test_kafka_pipeline_gives_the_embedded_outcome_and_survives_poison(
    run: KafkaRun, embedded: dict[str, list[dict[str, Any]]]
) -> None:
    run.replay(paced=False)
    _wait_replayed(run)
    run.worker("w1")
    run.worker("w2")
    run.sink()
    run.wait_settled()
    exports = run.exports()
    _assert_same(exports, embedded)
    assert {r["partition"] for r in exports["readings"]} == set(range(PARTITIONS))

    # Poison on the raw topic: rejects with reason malformed_message, and the workers live on.
    producer = Producer({"bootstrap.servers": run.bootstrap})
    lone_surrogate = b'{"meter_id": "\\ud800M", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": "0.5"}'
    for value in (b"not json at all", b"[1, 2, 3]", b"\xff\xfe\x00", lone_surrogate):
        producer.produce(run.names.raw, value, b"MTR-POISON", 0)
    # 400 kB of text outside ASCII: its reject, written escaped, would not fit a Kafka message
    huge = b'{"meter_id": "MTR-BIG", "timestamp": "' + ("\u00e9" * 200_000).encode() + b'", "consumption_kwh": "0.5"}'
    producer.produce(run.names.raw, huge, b"MTR-BIG", 0)
    producer.flush(30)
    run.wait_settled()
    rejected = [orjson.loads(line) for line in metrify(["export", "rejected"], run.env).stdout.splitlines()]
    (big,) = [r for r in rejected if r["meter_id"] == "MTR-BIG"]
    assert big["reason"] == "invalid_timestamp" and "cut: 200,000 characters" in str(big), str(big)[-300:]
    poison = [r for r in rejected if r["reason"] == "malformed_message"]
    assert len(poison) == 4 and {r["meter_id"] for r in poison} == {"MTR-POISON"}
    assert all(r["partition"] == 0 for r in poison)
    assert run.alive("w1") and run.alive("w2") and run.alive("sink")
    assert run.stop("w1") == 0 and run.stop("w2") == 0 and run.stop("sink") == 0


def test_kafka_pipeline_survives_sigkill_of_workers_and_sink_at_random_moments(
    run: KafkaRun, embedded: dict[str, list[dict[str, Any]]]
) -> None:
    chance = random.Random(6)
    run.worker("w1")
    run.worker("w2")
    run.sink()
    run.replay(paced=True, seconds=2 * REPLAY_SECONDS)
    kills = 0
    for name in ("w1", "sink", "w2", "sink", "w1"):
        run.wait_ready(name)
        time.sleep(chance.uniform(0.2, 2.5))  # a random moment while it works
        if not run.alive("replay"):
            break
        run.kill(name)
        kills += 1
        if name == "sink":
            run.sink()
        else:
            run.worker(name)
    assert kills >= 4, "the replay ended before the processes could be killed: pace it slower"
    _wait_replayed(run)
    # Once more each, after the input is complete: the last transactions are redone, not lost.
    for name in ("w2", "sink"):
        run.wait_ready(name)
        run.kill(name)
    run.worker("w2")
    run.sink()
    run.wait_settled()
    _assert_same(run.exports(), embedded)


def test_kafka_pipeline_rebalances_when_a_worker_joins_and_one_leaves(
    run: KafkaRun, embedded: dict[str, list[dict[str, Any]]]
) -> None:
    run.worker("w1")
    run.worker("w2")
    run.sink()
    for name in ("w1", "w2", "sink"):
        run.wait_ready(name)
    run.replay(paced=True)
    time.sleep(REPLAY_SECONDS / 3)
    run.worker("w3")
    run.wait_ready("w3")  # it took partitions over, with their state
    time.sleep(REPLAY_SECONDS / 4)
    assert run.stop("w1") == 0, run.log_of("w1")  # SIGTERM: drains, hands its partitions back
    _wait_replayed(run)
    run.wait_settled()
    _assert_same(run.exports(), embedded)
    assert "restored from the changelog" in run.log_of("w3")


def test_a_worker_restoring_a_partition_stops_at_once_on_sigterm(run: KafkaRun) -> None:
    # A transaction left open on partition 0's changelog, as a crashed worker leaves one: the
    # restore waits for it to end (the broker aborts it after its timeout, a minute here).
    crashed = Producer(
        {
            "bootstrap.servers": run.bootstrap,
            "transactional.id": f"{run.worker_group}.crashed",
            "transaction.timeout.ms": 60000,
        }
    )
    crashed.init_transactions(30)
    crashed.begin_transaction()
    crashed.produce(run.names.changelog, b"{}", b"MTR-1", 0)
    crashed.flush(30)
    try:
        run.worker("w1")
        deadline = time.monotonic() + 60
        while "waiting for an unfinished transaction" not in run.log_of("w1", tail=None):
            assert time.monotonic() < deadline and run.alive("w1"), run.log_of("w1")
            time.sleep(0.1)
        asked = time.monotonic()
        try:
            code = run.stop("w1", timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"w1 kept restoring after SIGTERM:\n{run.log_of('w1')}") from None
        took = time.monotonic() - asked
    finally:
        crashed.abort_transaction(30)
    log = run.log_of("w1", tail=None)
    assert code == 0, log
    assert "Traceback" not in log and "unexpected error" not in log, log
    assert took < 5.0, f"SIGTERM took {took:.1f}s to stop the worker:\n{log}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateKafka:
    """A Kafka broker of this test alone (scripts/services.sh with its own folder and ports)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.env = {
            **os.environ,
            "METRIFY_SERVICES_DIR": str(folder),
            "METRIFY_SERVICES_KAFKA_PORT": str(self.port),
            "METRIFY_SERVICES_KAFKA_CONTROLLER_PORT": str(_free_port()),
        }
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _run(self, action: str) -> None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "services.sh"), action, "kafka"],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def logs(self, lines: int = 60) -> str:
        """The last lines of the broker's log before its restart and since (services.sh keeps
        the previous start's as kafka.log.1): gone with the folder once the test ends."""
        out = []
        for name in ("kafka.log.1", "kafka.log"):
            path = self.folder / "kafka" / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- private broker's {name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(out) or "(the private broker left no log)"


@pytest.fixture
def private_kafka() -> Iterator[PrivateKafka]:
    (ROOT / ".services").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="kafka-restart-test-", dir=ROOT / ".services"))
    broker = PrivateKafka(folder)
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_kafka_pipeline_recovers_from_a_broker_restart_mid_stream(
    private_kafka: PrivateKafka,
    tmp_path: Path,
    fresh_postgres_url: str,
    fleet_csv: Path,
    embedded: dict[str, list[dict[str, Any]]],
) -> None:
    run = KafkaRun(tmp_path, private_kafka.bootstrap, fresh_postgres_url)
    try:
        run.setup(fleet_csv)
        run.worker("w1")
        run.worker("w2")
        run.sink()
        for name in ("w1", "w2", "sink"):
            run.wait_ready(name)
        run.replay(paced=True, seconds=1.5 * REPLAY_SECONDS)
        run.wait_stored(readings=500)  # mid-stream: workers and sink busy, most of the input still to come
        private_kafka.stop()
        time.sleep(3.0)
        private_kafka.start()
        _wait_replayed(run)
        run.wait_settled()
        _assert_same(run.exports(), embedded)
        for name in ("w1", "w2", "sink"):
            assert run.alive(name), run.log_of(name)
        # the whole logs: librdkafka's reconnect attempts after the line may fill any tail
        assert "kafka unreachable" in run.log_of("w1", tail=None) + run.log_of("w2", tail=None)
    except BaseException:
        # shown with the failure (captured output): a broker that died after its restart and a
        # client that did not reconnect look alike from the clients' logs alone
        print(private_kafka.logs())
        raise
    finally:
        run.close()
