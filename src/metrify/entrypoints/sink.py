"""`metrify sink`: committed stream outputs from Kafka into the database, exactly once.

Each batch of output messages is written with the output partitions' next offsets in ONE
database transaction; on (re)assignment the sink reads on from the offsets the database holds.
A database that goes away is waited for (backoff, logged, metrics); so is the broker.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from metrify.adapters.kafka.admin import KafkaUnavailable, require_topics, wait_for_broker
from metrify.adapters.kafka.clients import KafkaHealth
from metrify.adapters.kafka.metrics import PrometheusSinkMetrics, serve
from metrify.application.kafka_stream import OutcomeSink, RunTotals
from metrify.application.stream import Backoff, StopRequested
from metrify.container import Container
from metrify.entrypoints.process import freeze_startup_heap
from metrify.entrypoints.worker import Stopper, _waiting, stop_on_signals
from metrify.settings import Settings

log = logging.getLogger("metrify.sink")


@dataclass(frozen=True, slots=True)
class SinkOptions:
    batch_size: int = 500  # output messages (each up to 500 records) per database transaction
    batch_wait: float = 0.05
    metrics_port: int = 9465
    session_timeout: float = 10.0
    stop_when_idle: float | None = None
    write_behind: bool = True  # prepare the next transaction while the database writes this one


def run_sink(settings: Settings, container: Container, options: SinkOptions) -> RunTotals:
    with stop_on_signals(Stopper()) as stopper:
        names = container.kafka_topics()
        try:
            admin = wait_for_broker(
                settings.kafka.bootstrap, on_wait=_waiting("sink start", log), stopped=lambda: stopper.requested
            )
        except KafkaUnavailable:
            if stopper.requested:
                return RunTotals()
            raise
        require_topics(admin, names)
        metrics = PrometheusSinkMetrics()
        serve(metrics.registry, options.metrics_port)

        def on_retry(attempt: int, delay: float, error: Exception) -> None:
            metrics.store_retry()
            log.warning("database unreachable (attempt %s), retrying in %.1fs: %s", attempt, delay, error)

        health = KafkaHealth("sink", on_change=metrics.kafka_up.setter("sink"))
        feed = container.kafka_outcome_feed(health=health, session_timeout=options.session_timeout)
        sink = OutcomeSink(
            feed,
            container.sink_uow,
            settings.kafka.sink_group_id,
            metrics,
            backoff=Backoff(on_retry=on_retry, cap=5.0, stopped=lambda: stopper.requested),
            max_batch=options.batch_size,
            max_wait=options.batch_wait,
            write_behind=options.write_behind,
        )
        if options.write_behind:
            # The writer thread wants the GIL back for moments between long waits on the server
            # (COPY data sent, result read) while this thread prepares the next transaction: at
            # the default 5 ms switch interval it waits up to 5 ms each time and the server idles
            # (bench_sink.py, 1M rows on a durable server: 0.5 ms -> 152k-165k rows/s, 5 ms ->
            # 127k-136k, the same as writing in this thread).
            sys.setswitchinterval(0.0005)
        stopper.bind(sink.stop)
        log.info("sink joining group %s on %s output topics", settings.kafka.sink_group_id, len(names.outputs))
        freeze_startup_heap()  # full collections would walk start-up's objects in every batch
        try:
            totals = sink.run(options.stop_when_idle)
        except StopRequested as exc:
            # Whatever the write under way did, the offsets in the database say what is stored:
            # the next run reads on from them.
            log.warning("%s: the transaction under way was given up", exc)
            totals = sink.totals
        finally:
            feed.close()
    log.info("sink stopped: %s events in %s database transactions", totals.records, totals.batches)
    return totals
