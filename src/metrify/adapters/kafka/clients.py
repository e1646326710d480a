"""Topic names, client configurations and broker health for Metrify's Kafka clients."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError

from metrify.adapters.kafka import codec

log = logging.getLogger("metrify.kafka")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    role: str
    config: dict[str, str]


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Every topic of one deployment, under its prefix (METRIFY_KAFKA__TOPIC_PREFIX)."""

    prefix: str = "metrify."

    @property
    def raw(self) -> str:
        return self.prefix + "raw"

    @property
    def changelog(self) -> str:
        return self.prefix + "state-changelog"

    @property
    def metrics(self) -> str:
        return self.prefix + codec.METRICS

    @property
    def anomalies(self) -> str:
        return self.prefix + codec.ANOMALIES

    def output(self, kind: str) -> str:
        return self.prefix + kind

    @property
    def outputs(self) -> dict[str, str]:
        """Output kind -> topic, for the kinds the sink stores."""
        return {kind: self.output(kind) for kind in codec.OUTPUT_KINDS}

    def kind_of(self, topic: str) -> str:
        return topic[len(self.prefix) :]

    def specs(self) -> list[TopicSpec]:
        return [
            TopicSpec(self.raw, "raw readings (input, keyed by meter id)", {}),
            TopicSpec(self.output(codec.READINGS), "validated readings", {}),
            TopicSpec(self.output(codec.REJECTED), "rejected readings", {}),
            TopicSpec(self.output(codec.TOO_LATE), "too-late readings", {}),
            TopicSpec(self.output(codec.GAPS), "gap events", {}),
            TopicSpec(self.output(codec.AGGREGATES), "window aggregates", {}),
            TopicSpec(self.anomalies, "anomalies", {}),
            TopicSpec(self.metrics, "processing metrics", {}),
            TopicSpec(
                self.changelog,
                "stream state changelog (compacted)",
                {
                    "cleanup.policy": "compact",
                    "segment.bytes": str(64 * 1024 * 1024),
                    "segment.ms": str(3600 * 1000),
                    "min.cleanable.dirty.ratio": "0.2",
                },
            ),
        ]


class KafkaHealth:
    """Broker reachability as the clients see it: logged on every change (and every 30 s while
    the broker is away), and reported to `on_change` (a metrics gauge)."""

    def __init__(self, name: str, on_change: Callable[[bool], None] | None = None, every: float = 30.0) -> None:
        self.name = name
        self.on_change = on_change
        self.every = every
        self.up = True
        self._last_log = 0.0
        self._lock = threading.Lock()

    def error(self, error: KafkaError) -> None:
        code = error.code()
        if code in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self.set(False, error.str())
        elif error.fatal():
            log.error("%s: fatal kafka error: %s", self.name, error.str())
        else:
            log.warning("%s: kafka error: %s", self.name, error.str())

    def stats(self, text: str) -> None:
        try:
            brokers = orjson.loads(text).get("brokers", {})
        except (orjson.JSONDecodeError, AttributeError):
            return
        real = [b for b in brokers.values() if b.get("nodeid", -1) >= 0]
        if real:
            up = any(b.get("state") == "UP" for b in real)
            self.set(up, "no broker connection is up" if not up else "")

    def ok(self) -> None:
        if not self.up:
            self.set(True, "")

    def set(self, up: bool, reason: str) -> None:
        with self._lock:
            now = time.monotonic()
            changed = up != self.up
            self.up = up
            if changed or (not up and now - self._last_log >= self.every):
                self._last_log = now
                if up:
                    log.info("%s: kafka reachable again", self.name)
                else:
                    log.warning("%s: kafka unreachable, the client keeps retrying: %s", self.name, reason)
            if changed and self.on_change is not None:
                self.on_change(up)


def common_config(bootstrap: str, health: KafkaHealth | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "reconnect.backoff.ms": 250,
        "reconnect.backoff.max.ms": 5000,
        "logger": logging.getLogger("metrify.kafka.librdkafka"),  # librdkafka's own log, through ours
        "log_level": 3,  # errors only: a broker that is away is reported once, by KafkaHealth
    }
    if health is not None:
        config["error_cb"] = health.error
        config["stats_cb"] = health.stats
        config["statistics.interval.ms"] = 5000
    return config


def consumer_config(
    bootstrap: str,
    group_id: str,
    health: KafkaHealth | None = None,
    *,
    session_timeout: float = 10.0,
    eof: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A group member that commits nothing by itself and reads committed transactions only."""
    return {
        **common_config(bootstrap, health),
        "group.id": group_id,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": int(session_timeout * 1000),
        "heartbeat.interval.ms": max(500, int(session_timeout * 1000) // 5),
        "enable.partition.eof": eof,
        "allow.auto.create.topics": False,
        "fetch.wait.max.ms": 100,  # an idle fetch comes back soon: new data is never far off
        **extra,
    }


def transactional_producer_config(
    bootstrap: str, transactional_id: str, health: KafkaHealth | None = None, *, timeout: float = 15.0, **extra: Any
) -> dict[str, Any]:
    return {
        **common_config(bootstrap, health),
        "transactional.id": transactional_id,
        "transaction.timeout.ms": int(timeout * 1000),
        "retry.backoff.ms": 10,
        "retry.backoff.max.ms": 100,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "batch.size": 1_000_000,
        "partitioner": "murmur2_random",
        **extra,
    }


def take_batch(consumer: Any, max_messages: int, timeout: float) -> list[Any]:
    """What is queued now, up to `max_messages`, without waiting to fill the batch; only when
    nothing is queued, wait up to `timeout` for the first message. Batches grow by themselves
    while the previous one is processed and committed, and nothing is held back for company."""
    messages = consumer.consume(max_messages, 0)
    if messages:
        return messages
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, 0)] if max_messages > 1 else [first]


def error_of(exc: BaseException) -> KafkaError | None:
    if exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None
