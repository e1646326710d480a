"""Ingest on the production profile: a batch only goes to the raw topic (DESIGN §4); the stream
workers own the state. Readings are produced by the Kafka adapters' publisher (keyed and
partitioned by meter id as the embedded profile partitions them) and the answer waits until the
broker has every reading of the batch, or says 503 when it does not within `wait` seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from metrify.application.errors import Unavailable
from metrify.container import Container
from metrify.domain.readings import RawReading


class KafkaIngestProducer:
    """The RawReadingProducer port over KafkaReadingPublisher, shared by concurrent requests (their
    waits for the broker overlap). A delivery failure while a batch is in flight fails that batch,
    and possibly others in flight with it: a client's retry is then rejected as `duplicate` for
    the readings that did arrive, never lost."""

    def __init__(self, container: Container, wait: float = 10.0) -> None:
        self.container = container
        self.wait = wait
        self._publisher: Any = None
        self._lock = threading.Lock()

    def _ready(self) -> Any:
        """The publisher, made on first use: the raw topic must exist (its partition count decides
        where each meter goes)."""
        if self._publisher is None:
            from metrify.adapters.kafka.admin import KafkaUnavailable, admin_client, topic_partitions

            settings = self.container.settings()
            names = self.container.kafka_topics()
            try:
                present = topic_partitions(admin_client(settings.kafka.bootstrap), timeout=self.wait)
            except KafkaUnavailable as exc:
                raise Unavailable(f"Kafka does not answer: {exc}") from None
            if names.raw not in present:
                raise Unavailable(f"the topic {names.raw} does not exist: run `metrify topics create --partitions N`")
            self._publisher = self.container.kafka_reading_publisher(topic=names.raw, partitions=present[names.raw][0])
        return self._publisher

    def produce(self, readings: Sequence[RawReading]) -> None:
        with self._lock:
            publisher = self._ready()
        failed_before = publisher.failed
        for reading in readings:
            publisher.publish(reading)
        waiting = publisher.producer.flush(self.wait)
        if waiting:
            raise Unavailable(
                f"Kafka has not taken {waiting} readings within {self.wait:.0f} s; they are still queued and "
                "may arrive (a repeat of the batch is then rejected as duplicate)"
            )
        if publisher.failed > failed_before:
            raise Unavailable(f"Kafka refused {publisher.failed - failed_before} readings: {publisher.first_error}")

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.producer.flush(self.wait)
