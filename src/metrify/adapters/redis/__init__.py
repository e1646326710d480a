"""Redis adapters: the production cache and rate-limit counters."""

from __future__ import annotations

from collections.abc import Iterator

import redis


def open_redis(url: str) -> Iterator[redis.Redis]:
    """A Redis client with a connection pool, closed when its resource is shut down."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5, health_check_interval=30)
    try:
        yield client
    finally:
        client.close()


class RedisCache:
    def __init__(self, client: redis.Redis, prefix: str = "metrify:") -> None:
        self.client = client
        self.prefix = prefix

    def get(self, key: str) -> bytes | None:
        return self.client.get(self.prefix + key)  # type: ignore[return-value]

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        px = None if ttl_seconds is None else max(1, int(ttl_seconds * 1000))
        self.client.set(self.prefix + key, value, px=px)

    def incr(self, key: str, ttl_seconds: float) -> int:
        name = self.prefix + key
        with self.client.pipeline() as pipe:
            pipe.incr(name)
            pipe.pexpire(name, max(1, int(ttl_seconds * 1000)), nx=True)
            count, _ = pipe.execute()
        return int(count)

    def add(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        return bool(self.client.set(self.prefix + key, value, px=max(1, int(ttl_seconds * 1000)), nx=True))

    def delete(self, key: str) -> None:
        self.client.delete(self.prefix + key)

    def ping(self) -> bool:
        return bool(self.client.ping())
