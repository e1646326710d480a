"""Partitions added to the raw topic of a running stream (Kafka's `create_partitions`), on real
`metrify worker` processes and a real broker.

A meter's partition is murmur2(meter_id) % N with N the input's partition count (DESIGN §3), and
each partition's state lives in the changelog partition of the same number: with another N many
meters reach a partition that holds none of their state. Kafka cannot take partitions away again,
and Metrify does not move state between partitions, so the worker stops with one line that says
what happened and what to do, and processes nothing of the new partitions. Before, the worker went
on as if nothing had happened until its next metadata refresh (up to 5 minutes), then waited for
ever on a changelog partition that does not exist ("kafka unreachable ... No leaders found") with
its old partitions stalled too; with every topic grown it processed the new partitions from empty
state, silently.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import NewPartitions
from tests.integration.cli import metrify_env

from metrify.adapters.kafka.admin import admin_client, create_topics, delete_topics, group_lag
from metrify.adapters.kafka.clients import TopicNames
from metrify.adapters.kafka.publisher import KafkaReadingPublisher
from metrify.domain.readings import RawReading

pytestmark = pytest.mark.integration

METERS = 40


@pytest.fixture(scope="module")
def bootstrap(kafka_bootstrap: str) -> str:
    return kafka_bootstrap


class Stream:
    """One throw-away deployment: 2-partition topics under their own prefix, a worker group."""

    def __init__(self, bootstrap: str, folder: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.folder = folder
        self.names = TopicNames(f"test-grow-{tag}.")
        self.group = f"test-grow-{tag}-workers"
        self.env = metrify_env(
            folder / "data",
            METRIFY_KAFKA__BOOTSTRAP=bootstrap,
            METRIFY_KAFKA__TOPIC_PREFIX=self.names.prefix,
            METRIFY_KAFKA__GROUP_ID=self.group,
        )
        self.runs = 0
        create_topics(bootstrap, self.names, 2, 1)

    def worker(self, *extra: str) -> tuple[subprocess.Popen, Path]:
        self.runs += 1
        output = self.folder / f"worker.{self.runs}.log"
        with open(output, "w") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "metrify", "worker", "--metrics-port", "0", "--instance-id", "w", *extra],
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        return process, output

    def publish(self, partitions: int, hour: int) -> None:
        """A reading of every meter, routed as a producer that knows `partitions` routes it."""
        publisher = KafkaReadingPublisher(self.bootstrap, self.names.raw, partitions)
        for meter in range(METERS):
            publisher.publish(RawReading(f"MTR-{meter}", f"2024-03-04T{hour:02d}:00:00Z", "0.5", None, 0))
        publisher.flush()

    def committed(self, partitions: int) -> dict[int, tuple[int | None, int]]:
        lag = group_lag(self.bootstrap, self.group, {self.names.raw: partitions})
        return {p: lag[(self.names.raw, p)] for p in range(partitions)}

    def wait_until_processed(self, partitions: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(committed == end for committed, end in self.committed(partitions).values()):
                return
            time.sleep(0.3)
        raise AssertionError(f"the worker did not process the input: {self.committed(partitions)}")

    def grow(self, topics: list[str], partitions: int) -> None:
        admin = admin_client(self.bootstrap)
        for future in admin.create_partitions([NewPartitions(topic, partitions) for topic in topics]).values():
            future.result()


@pytest.fixture
def stream(bootstrap: str, tmp_path: Path) -> Iterator[Stream]:
    deployment = Stream(bootstrap, tmp_path)
    yield deployment
    delete_topics(bootstrap, deployment.names)


def ended(process: subprocess.Popen, within: float) -> int | None:
    try:
        return process.wait(within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        return None


def error_line(output: Path) -> str:
    text = output.read_text()
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("metrify: ")]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def test_a_running_worker_stops_with_one_clear_error_when_partitions_are_added_to_the_input(
    stream: Stream,
) -> None:
    worker, output = stream.worker()
    stream.publish(2, 10)
    stream.wait_until_processed(2)

    stream.grow([stream.names.raw], 4)
    stream.publish(4, 11)  # a producer that routes by the new count, as murmur2 producers do once they see it

    code = ended(worker, within=30.0)
    assert code == 2, f"the worker went on (exit {code}):\n{output.read_text()[-3000:]}"
    line = error_line(output)
    assert "the input topic now has 4 partitions but the stream state is cut into 2" in line
    assert "metrify topics create --partitions 4" in line
    # nothing routed by the new count was processed
    committed = stream.committed(4)
    assert committed[2][0] is None and committed[3][0] is None, committed
    # restarted (by hand or by an orchestrator), it refuses at once, and says what to do
    again, output = stream.worker()
    assert ended(again, within=30.0) == 2
    assert "partitions added to the input cannot be used" in error_line(output)


def test_a_worker_refuses_state_built_for_another_partition_count_after_every_topic_grew(stream: Stream) -> None:
    first, _ = stream.worker("--stop-when-idle", "3")
    stream.publish(2, 10)
    assert ended(first, within=60.0) == 0
    stream.wait_until_processed(2, timeout=5.0)

    stream.grow([spec.name for spec in stream.names.specs()], 4)  # the start-up check finds them alike
    stream.publish(4, 11)

    again, output = stream.worker("--stop-when-idle", "5")
    code = ended(again, within=60.0)
    assert code == 2, f"the worker ran on state cut into 2 partitions (exit {code}):\n{output.read_text()[-3000:]}"
    line = error_line(output)
    assert "partitions route elsewhere" in line and "built with another partition count" in line, line
    committed = stream.committed(4)
    assert committed[2][0] is None and committed[3][0] is None, committed
