"""Prometheus metrics of the stream worker and the database sink (prometheus-client).

Worker: metrify_worker_readings_total (rate() gives readings/s; metrify_worker_readings_per_second
is the same over the last few seconds), metrify_worker_batch_seconds (batch latency: process and
commit), metrify_worker_consumer_lag{partition}, metrify_worker_restores_total and
metrify_worker_restore_seconds, metrify_worker_aborted_transactions_total,
metrify_worker_partitions, metrify_kafka_up{role}.
Sink: metrify_sink_events_total, metrify_sink_messages_total, metrify_sink_batch_seconds,
metrify_sink_lag{topic,partition}, metrify_sink_database_up, metrify_sink_database_retries_total,
metrify_sink_stale_offsets_total.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Collection, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("metrify.metrics")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def serve(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> int | None:
    """Serve /metrics on `port` (0: not at all); a port in use is a warning, not a failure."""
    if not port:
        return None
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("metrics not served: port %s: %s", port, exc.strerror or exc)
        return None
    log.info("metrics on http://%s:%s/metrics", host, port)
    return port


class _Rate:
    """Events per second over a sliding window of a few seconds."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, count: int) -> float:
        now = time.monotonic()
        self.samples.append((now, count))
        while self.samples and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        span = max(now - self.samples[0][0], 1.0)
        return sum(c for _, c in self.samples) / span


class KafkaUp:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauge = Gauge("metrify_kafka_up", "1 while a broker connection is up", ["role"], registry=registry)

    def setter(self, role: str):  # noqa: ANN201
        child = self.gauge.labels(role=role)
        child.set(1)
        return lambda up: child.set(1 if up else 0)


class PrometheusWorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.readings = Counter("metrify_worker_readings", "Readings processed and committed", registry=r)
        self.rate_gauge = Gauge(
            "metrify_worker_readings_per_second", "Readings committed per second (last 5 s)", registry=r
        )
        self.batches = Histogram(
            "metrify_worker_batch_seconds", "Batch latency: process and commit", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.lag_gauge = Gauge(
            "metrify_worker_consumer_lag", "Input records not yet committed", ["partition"], registry=r
        )
        self.restores = Counter("metrify_worker_restores", "Partitions restored from the changelog", registry=r)
        self.restore_seconds = Histogram(
            "metrify_worker_restore_seconds", "Time to restore a partition", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.aborts = Counter("metrify_worker_aborted_transactions", "Transactions aborted", registry=r)
        self.partitions = Gauge("metrify_worker_partitions", "Input partitions owned", registry=r)
        self.kafka_up = KafkaUp(r)
        self._rate = _Rate()
        self._last_batch = 0.0
        self._lag_partitions: set[int] = set()

    def batch_done(self, readings: int, seconds: float) -> None:
        self.readings.inc(readings)
        self.batches.observe(seconds)
        self.rate_gauge.set(self._rate.add(readings))
        self._last_batch = time.monotonic()

    def restored(self, partition: int, meters: int, seconds: float) -> None:
        self.restores.inc()
        self.restore_seconds.observe(seconds)

    def aborted(self) -> None:
        self.aborts.inc()

    def owned(self, partitions: Collection[int]) -> None:
        self.partitions.set(len(partitions))

    def lag(self, lags: Mapping[int, int]) -> None:
        for partition in self._lag_partitions - set(lags):
            self.lag_gauge.remove(str(partition))
        self._lag_partitions = set(lags)
        for partition, lag in lags.items():
            self.lag_gauge.labels(partition=str(partition)).set(lag)
        if time.monotonic() - self._last_batch > self._rate.window:  # idle: nothing per second
            self.rate_gauge.set(0)


class PrometheusSinkMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("metrify_sink_events", "Outcome events written to the database", registry=r)
        self.messages = Counter("metrify_sink_messages", "Output messages consumed", registry=r)
        self.batches = Histogram(
            "metrify_sink_batch_seconds", "Database transaction time per batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.lag_gauge = Gauge("metrify_sink_lag", "Output records not yet stored", ["topic", "partition"], registry=r)
        self.database_up = Gauge("metrify_sink_database_up", "1 while the database answers", registry=r)
        self.retries = Counter("metrify_sink_database_retries", "Database writes retried", registry=r)
        self.stale_offsets = Counter("metrify_sink_stale_offsets", "Batches refused: offsets moved", registry=r)
        self.window_backlog = Gauge(
            "metrify_sink_window_backlog", "Closed-window records read and waiting to be stored", registry=r
        )
        self.kafka_up = KafkaUp(r)
        self.database_up.set(1)
        self._lag_sources: set[tuple[str, int]] = set()

    def batch_done(self, messages: int, events: int, seconds: float) -> None:
        self.messages.inc(messages)
        self.events.inc(events)
        self.batches.observe(seconds)

    def lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        for topic, partition in self._lag_sources - set(lags):
            self.lag_gauge.remove(topic, str(partition))
        self._lag_sources = set(lags)
        for (topic, partition), lag in lags.items():
            self.lag_gauge.labels(topic=topic, partition=str(partition)).set(lag)

    def store_retry(self) -> None:
        self.retries.inc()
        self.database_up.set(0)

    def store_ok(self) -> None:
        self.database_up.set(1)

    def stale(self) -> None:
        self.stale_offsets.inc()

    def backlog(self, records: int) -> None:
        self.window_backlog.set(records)
