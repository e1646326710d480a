"""`metrify worker`: the exactly-once stream worker on Kafka, as a long-running process.

Scale out by starting more of them (same METRIFY_KAFKA__GROUP_ID, any machine): the consumer
group spreads the input partitions over them (cooperative-sticky), and each partition's state
follows it through the changelog. SIGTERM (or Ctrl-C) finishes the batch in hand, commits it,
hands the partitions back to the group and exits; a restore or a new producer waiting for an
absent broker is given up at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from metrify.adapters.kafka.admin import KafkaUnavailable, require_topics, wait_for_broker
from metrify.adapters.kafka.clients import KafkaHealth
from metrify.adapters.kafka.metrics import PrometheusWorkerMetrics, serve
from metrify.application.kafka_stream import RunTotals, StreamWorker
from metrify.application.stream import Backoff, StopRequested
from metrify.container import Container
from metrify.entrypoints.process import collect_young_rarely, freeze_startup_heap
from metrify.settings import Settings

log = logging.getLogger("metrify.worker")


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    batch_size: int = 5000
    batch_wait: float = 0.1
    metrics_port: int = 9464
    instance_id: str | None = None
    session_timeout: float = 10.0
    transaction_timeout: float = 15.0
    stop_when_idle: float | None = None


class Stopper:
    """SIGTERM / SIGINT: a flag from the first moment, then the running loop's stop()."""

    def __init__(self) -> None:
        self.requested = False
        self.target: Callable[[], None] | None = None

    def stop(self) -> None:
        self.requested = True
        if self.target is not None:
            self.target()

    def bind(self, target: Callable[[], None]) -> None:
        self.target = target
        if self.requested:
            target()


@contextmanager
def stop_on_signals(stopper: Stopper) -> Iterator[Stopper]:
    """SIGTERM and SIGINT ask the loop to stop after the batch in hand (a second one too)."""

    def handler(signum: int, _frame: object) -> None:
        log.info("%s received: finishing the batch in hand, then stopping", signal.Signals(signum).name)
        stopper.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopper
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _waiting(what: str, logger: logging.Logger = log) -> Callable[[str, float], None]:
    def on_wait(reason: str, delay: float) -> None:
        logger.warning("%s: kafka unreachable (%s); retrying in %.1fs", what, reason, delay)

    return on_wait


def run_worker(settings: Settings, container: Container, options: WorkerOptions) -> RunTotals:
    """Join the group and process until stopped; returns what was done."""
    with stop_on_signals(Stopper()) as stopper:
        names = container.kafka_topics()
        bootstrap = settings.kafka.bootstrap
        try:
            admin = wait_for_broker(bootstrap, on_wait=_waiting("worker start"), stopped=lambda: stopper.requested)
        except KafkaUnavailable:
            if stopper.requested:
                return RunTotals()
            raise
        partitions = require_topics(admin, names)
        metrics = PrometheusWorkerMetrics()
        serve(metrics.registry, options.metrics_port)
        instance = options.instance_id or default_instance_id()
        health = KafkaHealth(f"worker {instance}", on_change=metrics.kafka_up.setter("worker"))
        try:
            stream_log = container.kafka_stream_log(
                transactional_id=f"{names.prefix}{settings.kafka.group_id}.{instance}",
                health=health,
                session_timeout=options.session_timeout,
                transaction_timeout=options.transaction_timeout,
                instance=instance,
                backoff=Backoff(first=0.2, cap=5.0, stopped=lambda: stopper.requested),
            )
        except StopRequested as exc:
            log.warning("%s: not started", exc)
            return RunTotals()
        worker = StreamWorker(
            settings.stream.to_config(),
            stream_log,
            container.clock(),
            metrics,
            max_batch=options.batch_size,
            max_wait=options.batch_wait,
            partitions=partitions,  # what the state is cut into: the worker stops if the input changes it
        )
        stopper.bind(worker.stop)
        log.info(
            "worker %s joining group %s on %s (%s partitions)",
            instance,
            settings.kafka.group_id,
            names.raw,
            partitions,
        )
        freeze_startup_heap()  # full collections would walk start-up's objects in every batch
        collect_young_rarely()
        try:
            totals = worker.run(options.stop_when_idle)
        except StopRequested as exc:
            # A restore or a producer's start given up commits nothing: the partitions' next
            # owner restores them from the changelog and reads on from their committed offsets.
            log.warning("%s: given up", exc)
            totals = worker.totals
        finally:
            stream_log.close()
    log.info(
        "worker %s stopped: %s readings in %s batches (%.0f readings/s from first record to last commit), "
        "%s transactions aborted",
        instance,
        totals.records,
        totals.batches,
        totals.rate,
        totals.aborted,
    )
    return totals
