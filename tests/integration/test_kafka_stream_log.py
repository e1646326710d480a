"""The worker's log on Kafka (adapters/kafka/stream_log.py) while the broker is away: a worker
asked to stop gives up what it was waiting for at once. The broker "away" is a closed port on
127.0.0.1; the real broker (scripts/services.sh) is used where a client must get going first."""

from __future__ import annotations

import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from metrify.adapters.kafka import stream_log as stream_log_module
from metrify.adapters.kafka.admin import KafkaUnavailable, admin_client, wait_for_broker
from metrify.adapters.kafka.clients import TopicNames
from metrify.adapters.kafka.stream_log import KafkaStreamLog, ProducerHung
from metrify.application.stream import Backoff, StopRequested

pytestmark = pytest.mark.integration


def closed_port() -> str:
    """An address on 127.0.0.1 where nothing listens: a broker that is away."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def stream_log(bootstrap: str, backoff: Backoff | None = None) -> KafkaStreamLog:
    tag = uuid.uuid4().hex[:8]
    return KafkaStreamLog(
        bootstrap, TopicNames(f"test-log-{tag}."), f"test-log-{tag}", f"test-log-{tag}.w", backoff=backoff
    )


def stops_within(action: Callable[[], Any], stop: threading.Event, after: float) -> tuple[float, BaseException | None]:
    """Run `action` on a thread, ask it to stop `after` seconds in; (seconds it took to end from
    then, what it raised). A thread still running after 10 s fails the test."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as error:  # handed to the test's thread
            raised.append(error)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    time.sleep(after)
    assert runner.is_alive(), f"it ended before it was asked to stop: {raised}"
    stop.set()
    asked = time.monotonic()
    runner.join(10.0)
    assert not runner.is_alive(), "still waiting for the broker 10 s after the stop was asked for"
    return time.monotonic() - asked, raised[0] if raised else None


def test_a_worker_asked_to_stop_while_the_broker_is_away_gives_up_starting_its_producer() -> None:
    stop = threading.Event()
    backoff = Backoff(first=0.2, cap=5.0, stopped=stop.is_set)
    # init_transactions is being retried by then (each try waits for the broker)
    took, raised = stops_within(lambda: stream_log(closed_port(), backoff), stop, after=2.5)
    assert isinstance(raised, StopRequested), raised
    assert took < 2.0


@pytest.fixture
def started_log(kafka_bootstrap: str) -> Iterator[tuple[KafkaStreamLog, threading.Event]]:
    stop = threading.Event()
    log = stream_log(kafka_bootstrap, Backoff(first=0.2, cap=5.0, stopped=stop.is_set))
    yield log, stop
    log.close()


def test_a_worker_asked_to_stop_while_the_broker_is_away_gives_up_restoring_a_partition(
    started_log: tuple[KafkaStreamLog, threading.Event],
) -> None:
    log, stop = started_log
    # the broker gone after the worker started: its admin requests wait 10 s for an answer
    log.bootstrap = closed_port()
    log.admin = admin_client(log.bootstrap)
    took, raised = stops_within(lambda: log.restore(0), stop, after=1.5)
    assert isinstance(raised, StopRequested), raised
    assert took < 1.0


def test_producers_that_hang_in_init_transactions_again_and_again_neither_pile_up_nor_deepen_the_stack(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = stream_log_module.bounded
    hangs = 8
    depths = []

    def hangs_first(what: str, action: Callable[[], Any], seconds: float) -> Any:
        nonlocal hangs
        if what == "init_transactions" and hangs:
            hangs -= 1
            depths.append(len(traceback.extract_stack()))
            raise ProducerHung(f"{what} did not return within {seconds:.0f}s")
        return real(what, action, seconds)

    monkeypatch.setattr(stream_log_module, "bounded", hangs_first)
    log = stream_log(kafka_bootstrap)
    try:
        assert hangs == 0
        assert len(log.retired) == stream_log_module.RETIRED_KEPT
        assert len(set(depths)) == 1, depths  # a new producer per hang, in a loop (not a recursion)
    finally:
        log.close()


def test_a_stop_while_waiting_for_an_absent_broker_at_start_ends_the_wait_at_once() -> None:
    """The worker and the sink wait for the broker before anything else: backoff up to 10 s."""
    stop = threading.Event()
    took, raised = stops_within(lambda: wait_for_broker(closed_port(), stopped=stop.is_set), stop, after=8.0)
    assert isinstance(raised, KafkaUnavailable), raised
    assert took < 1.5
