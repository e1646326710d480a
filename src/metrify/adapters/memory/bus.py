"""The embedded profile's in-process event bus and cache."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable


class InMemoryEventBus:
    """Keeps every message per topic, in order, and calls subscribers synchronously."""

    def __init__(self) -> None:
        self.topics: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        self._subscribers: dict[str, list[Callable[[str, bytes], None]]] = defaultdict(list)

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None]) -> None:
        self._subscribers[topic].append(handler)

    def publish(self, topic: str, key: str, value: bytes) -> None:
        self.topics[topic].append((key, value))
        for handler in self._subscribers[topic]:
            handler(key, value)

    def flush(self, timeout: float = 10.0) -> int:
        return 0


class InMemoryCache:
    """A thread-safe dict with expiry, measured on a monotonic clock.

    An expired item goes when its key is read again, and every item that has expired goes
    whenever the dict has doubled since the last such sweep: keys that are never read again (a
    rate-limit counter of an address tried once, a revoked token's mark) do not pile up, for a
    sweep's cost spread over as many writes as items it looked at."""

    SWEEP_FLOOR = 1024  # no sweep below this many items

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._items: dict[str, tuple[bytes, float | None]] = {}
        self._lock = threading.Lock()
        self._sweep_at = self.SWEEP_FLOOR

    def __len__(self) -> int:
        return len(self._items)

    def _put(self, key: str, item: tuple[bytes, float | None]) -> None:
        """Every write goes through here (and every removal through `_drop`): a subclass may
        bound the cache by overriding the two."""
        self._items[key] = item
        if len(self._items) >= self._sweep_at:
            now = self._clock()
            for stale in [k for k, (_, expires) in self._items.items() if expires is not None and expires <= now]:
                self._drop(stale)
            self._sweep_at = max(self.SWEEP_FLOOR, 2 * len(self._items))

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        item = self._items.get(key)
        if item is not None and item[1] is not None and item[1] <= self._clock():
            self._drop(key)
            return None
        return item

    def _drop(self, key: str) -> None:
        self._items.pop(key, None)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._live(key)
            return None if item is None else item[0]

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        with self._lock:
            expires = None if ttl_seconds is None else self._clock() + ttl_seconds
            self._put(key, (value, expires))

    def incr(self, key: str, ttl_seconds: float) -> int:
        with self._lock:
            item = self._live(key)
            if item is None:
                self._put(key, (b"1", self._clock() + ttl_seconds))
                return 1
            count = int(item[0]) + 1
            self._put(key, (str(count).encode(), item[1]))
            return count

    def add(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._put(key, (value, self._clock() + ttl_seconds))
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._drop(key)
