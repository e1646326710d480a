"""A cache port in the process, bounded in items and bytes, for what may be forgotten early (ingest's
kept answers), never for what must not be (token revocations, rate-limit counters: InMemoryCache)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class BoundedCache:
    """Items in the order they were last set; the oldest go first once there are more than
    `max_items` or their values hold more than `max_bytes`. An expired item goes when read, or
    when its turn to go comes."""

    def __init__(self, max_items: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def _put(self, key: str, value: bytes, expires: float | None) -> None:
        items = self._items
        old = items.pop(key, None)
        if old is not None:
            self._bytes -= len(old[0])
        items[key] = (value, expires)
        self._bytes += len(value)
        while len(items) > self.max_items or (self._bytes > self.max_bytes and len(items) > 1):
            _, (gone, _) = items.popitem(last=False)
            self._bytes -= len(gone)

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        item = self._items.get(key)
        if item is not None and item[1] is not None and item[1] <= self._clock():
            self._drop(key)
            return None
        return item

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(item[0])

    def _expiry(self, ttl_seconds: float | None) -> float | None:
        return None if ttl_seconds is None else self._clock() + ttl_seconds

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._live(key)
            return None if item is None else item[0]

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        with self._lock:
            self._put(key, value, self._expiry(ttl_seconds))

    def incr(self, key: str, ttl_seconds: float) -> int:
        with self._lock:
            item = self._live(key)
            count = 1 if item is None else int(item[0]) + 1
            self._put(key, str(count).encode(), self._expiry(ttl_seconds) if item is None else item[1])
            return count

    def add(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._put(key, value, self._expiry(ttl_seconds))
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._drop(key)
