"""Meters land in partitions exactly as Kafka's Java client puts keys there (DESIGN §3)."""

from __future__ import annotations

import pytest

from metrify.domain.stream.partitioner import murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest#testMurmur2: Kafka's own vectors for Utils.murmur2.
KAFKA_MURMUR2_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("key", "expected"), KAFKA_MURMUR2_VECTORS)
def test_murmur2_matches_kafkas_test_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), KAFKA_MURMUR2_VECTORS)
def test_partition_is_the_positive_hash_modulo_the_count(key: bytes, expected: int) -> None:
    # Utils.toPositive(murmur2(key)) % numPartitions, as BuiltInPartitioner.partitionForKey does.
    for partitions in (1, 3, 4, 12):
        assert partition_for(key.decode(), partitions) == (expected & 0x7FFFFFFF) % partitions


def test_meter_ids_hash_as_utf8() -> None:
    assert partition_for("zähler-1", 7) == (murmur2("zähler-1".encode()) & 0x7FFFFFFF) % 7
