"""A cache port in the process, bounded in items and bytes, for what may be forgotten early (ingest's
kept answers), never for what must not be (token revocations, rate-limit counters: InMemoryCache)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from metrify.adapters.memory.bus import InMemoryCache


class BoundedCache(InMemoryCache):
    """InMemoryCache whose items go oldest first (in the order they were last set) once there are
    more than `max_items` or their values hold more than `max_bytes`; each write evicts what it
    must, in constant time, and no sweep looks through the rest. An expired item goes when read,
    or when its turn to go comes."""

    def __init__(self, max_items: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def _put(self, key: str, item: tuple[bytes, float | None]) -> None:
        items = self._items
        self._drop(key)
        items[key] = item
        self._bytes += len(item[0])
        while len(items) > self.max_items or (self._bytes > self.max_bytes and len(items) > 1):
            _, (gone, _) = items.popitem(last=False)
            self._bytes -= len(gone)

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(item[0])
