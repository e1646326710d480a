"""Redis adapters: the production cache and rate-limit counters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from metrify.application.errors import Unavailable


def open_redis(url: str) -> Iterator[redis.Redis]:
    """A Redis client with a connection pool, closed when its resource is shut down."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5, health_check_interval=30)
    try:
        yield client
    finally:
        client.close()


class RedisCache:
    """The Cache port on Redis. Redis not answering, or refusing (a replica after a failover, out
    of memory under `noeviction`), is Unavailable: the API answers 503 with Retry-After."""

    def __init__(self, client: redis.Redis, prefix: str = "metrify:") -> None:
        self.client = client
        self.prefix = prefix

    def get(self, key: str) -> bytes | None:
        with _answering():
            return self.client.get(self.prefix + key)  # type: ignore[return-value]

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        px = None if ttl_seconds is None else max(1, int(ttl_seconds * 1000))
        with _answering():
            self.client.set(self.prefix + key, value, px=px)

    def incr(self, key: str, ttl_seconds: float) -> int:
        name = self.prefix + key
        with _answering(), self.client.pipeline() as pipe:
            pipe.incr(name)
            pipe.pexpire(name, max(1, int(ttl_seconds * 1000)), nx=True)
            count, _ = pipe.execute()
        return int(count)

    def add(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        with _answering():
            return bool(self.client.set(self.prefix + key, value, px=max(1, int(ttl_seconds * 1000)), nx=True))

    def delete(self, key: str) -> None:
        with _answering():
            self.client.delete(self.prefix + key)

    def ping(self) -> bool:
        return bool(self.client.ping())


@contextmanager
def _answering() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:  # away, or refusing (read-only replica, out of memory, loading)
        raise Unavailable(f"redis does not answer: {exc}") from exc
