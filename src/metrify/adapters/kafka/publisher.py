"""Producing raw readings: an idempotent producer keyed by the trimmed meter id, partitioned exactly
as DESIGN §3 says (murmur2 of the id, as Kafka's Java client; the partition is also passed
explicitly, so a missing id lands where the embedded profile puts it too)."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, Producer

from metrify.adapters.kafka import codec
from metrify.adapters.kafka.bus import producer_config
from metrify.adapters.kafka.clients import KafkaHealth
from metrify.domain.readings import RawReading, normalise_meter_id
from metrify.domain.stream.partitioner import partition_for

log = logging.getLogger("metrify.kafka")


class DeliveryFailed(Exception):
    """Some readings could not be stored by the broker (after librdkafka's own retries)."""


class KafkaReadingPublisher:
    def __init__(self, bootstrap: str, topic: str, partitions: int, health: KafkaHealth | None = None) -> None:
        self.topic = topic
        self.partitions = partitions
        self.health = health or KafkaHealth("producer")
        self.failed = 0
        self.first_error: str | None = None
        self.producer = Producer(
            producer_config(
                bootstrap,
                **{
                    "error_cb": self.health.error,
                    "on_delivery": self._delivered,
                    "message.timeout.ms": 600_000,  # ride out a broker restart
                    "delivery.report.only.error": True,
                    "queue.buffering.max.messages": 1_000_000,
                    "logger": logging.getLogger("metrify.kafka.librdkafka"),
                    "log_level": 3,
                },
            )
        )

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = error.str()

    def publish(self, reading: RawReading) -> None:
        meter_id = normalise_meter_id(reading.meter_id)
        partition = partition_for(meter_id, self.partitions)
        value = codec.encode_raw(reading)
        key = meter_id.encode("utf-8")
        while True:
            try:
                self.producer.produce(self.topic, value, key, partition)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)

    def flush(self) -> None:
        while self.producer.flush(5.0):
            log.info("waiting for the broker to take %s readings", len(self.producer))
        if self.failed:
            raise DeliveryFailed(f"{self.failed} readings were not delivered: {self.first_error}")
