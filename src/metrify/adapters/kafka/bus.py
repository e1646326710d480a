"""The production event bus: an idempotent Kafka producer keyed by meter id."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from confluent_kafka import Producer


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """Idempotent, keyed with Kafka's Java partitioner (murmur2; DESIGN §3 partitions)."""
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "lz4",
        **extra,
    }


def open_producer(bootstrap: str) -> Iterator[Producer]:
    producer = Producer(producer_config(bootstrap))
    try:
        yield producer
    finally:
        producer.flush(10)


class KafkaEventBus:
    def __init__(self, producer: Producer, topic_prefix: str) -> None:
        self.producer = producer
        self.topic_prefix = topic_prefix

    def publish(self, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic_prefix + topic, value=value, key=key.encode("utf-8"))
                break
            except BufferError:  # the local queue is full: let deliveries drain, then retry
                self.producer.poll(0.1)
        self.producer.poll(0)

    def flush(self, timeout: float = 10.0) -> int:
        return int(self.producer.flush(timeout))
