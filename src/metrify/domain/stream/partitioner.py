"""Which partition a meter belongs to, exactly as Kafka's Java client decides it (DESIGN §3).

`partition = (murmur2(meter_id as UTF-8) & 0x7fffffff) % N`: the default partitioner of
Kafka's Java producer, which confluent-kafka reproduces with `partitioner=murmur2_random`.
With the same N, the embedded profile and a Kafka deployment put every meter in the same place.
"""

from __future__ import annotations

from functools import lru_cache

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2`: a 32-bit MurmurHash2 with seed 0x9747b28c, as a signed int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length - (length & 3)
    for i in range(0, whole, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(meter_id: str, partitions: int) -> int:
    """The partition of a (trimmed) meter id among `partitions`; a missing id hashes as b''."""
    if partitions == 1:
        return 0
    return (murmur2(meter_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=1 << 20)
def partition_for(meter_id: str, partitions: int) -> int:
    """partition_of, remembered: for routing, where the same meters come again and again (a check
    over many meters once, such as a restore, calls partition_of and leaves this cache alone)."""
    return partition_of(meter_id, partitions)
