"""The project's own adapters against the real Redis and Kafka started by scripts/services.sh."""

from __future__ import annotations

import time
import uuid

import pytest

pytestmark = pytest.mark.integration


def test_redis_cache_round_trip_with_expiry(redis_url: str) -> None:
    from metrify.adapters.redis import RedisCache, open_redis

    resource = open_redis(redis_url)
    client = next(resource)
    cache = RedisCache(client, prefix=f"test-{uuid.uuid4().hex}:")
    cache.set("tariff", b"0.31", ttl_seconds=0.3)
    assert cache.get("tariff") == b"0.31"
    assert [cache.incr("hits", 10) for _ in range(3)] == [1, 2, 3]
    time.sleep(0.5)
    assert cache.get("tariff") is None
    cache.delete("hits")
    assert cache.get("hits") is None
    # add: only into an empty key, and says whether it did (a refresh token claimed once)
    assert cache.add("revoked:t1", b"1", 0.3) is True
    assert cache.add("revoked:t1", b"2", 10) is False
    assert cache.get("revoked:t1") == b"1"
    time.sleep(0.5)
    assert cache.add("revoked:t1", b"3", 10) is True
    resource.close()


def test_the_in_process_cache_adds_only_into_an_empty_key() -> None:
    from metrify.adapters.memory.bus import InMemoryCache

    now = [0.0]
    cache = InMemoryCache(clock=lambda: now[0])
    assert cache.add("k", b"1", 5) is True
    assert cache.add("k", b"2", 5) is False and cache.get("k") == b"1"
    now[0] = 6.0
    assert cache.add("k", b"3", 5) is True and cache.get("k") == b"3"


def test_kafka_event_bus_round_trip_keeps_kafka_partitioning(kafka_bootstrap: str) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from metrify.adapters.kafka.bus import KafkaEventBus, open_producer
    from metrify.domain.stream.partitioner import partition_for

    prefix = f"test-{uuid.uuid4().hex[:8]}."
    topic = prefix + "roundtrip"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(30)
    resource = open_producer(kafka_bootstrap)
    bus = KafkaEventBus(next(resource), prefix)
    meters = [f"MTR-{i:03d}" for i in range(40)]
    for meter in meters:
        bus.publish("roundtrip", meter, meter.encode())
    assert bus.flush(30) == 0
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": prefix + "g", "auto.offset.reset": "earliest"}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(4)])
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while len(seen) < len(meters) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            seen[message.key().decode()] = message.partition()
    consumer.close()
    resource.close()
    admin.delete_topics([topic])
    assert set(seen) == set(meters)
    assert all(seen[m] == partition_for(m, 4) for m in meters), "the producer must partition like Kafka's Java client"


def test_a_worker_refuses_a_state_changelog_that_is_not_compacted(kafka_bootstrap: str) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from metrify.adapters.kafka.admin import (
        TopicsMismatch,
        admin_client,
        create_topics,
        delete_topics,
        require_topics,
    )
    from metrify.adapters.kafka.clients import TopicNames

    names = TopicNames(f"test-compact-{uuid.uuid4().hex[:8]}.")
    admin = admin_client(kafka_bootstrap)
    try:
        create_topics(kafka_bootstrap, names, partitions=2, replication=1)
        assert require_topics(admin, names) == 2
        # as if made by hand with the default policy: the state of quiet meters would expire
        changelog = ConfigResource(
            ConfigResource.Type.TOPIC,
            names.changelog,
            incremental_configs=[ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)],
        )
        for future in admin.incremental_alter_configs([changelog]).values():
            future.result()
        # the controller acknowledges before every broker has applied the change from the metadata log
        described = ConfigResource(ConfigResource.Type.TOPIC, names.changelog)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            entries = next(iter(admin.describe_configs([described]).values())).result()
            if entries["cleanup.policy"].value == "delete":
                break
            time.sleep(0.1)
        with pytest.raises(TopicsMismatch, match="cleanup.policy=delete"):
            require_topics(admin, names)
    finally:
        delete_topics(kafka_bootstrap, names)
