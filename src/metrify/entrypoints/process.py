"""What a long-running Metrify process does once it has started."""

from __future__ import annotations

import gc
from typing import Any


def freeze_startup_heap() -> None:
    """Put what start-up allocated (modules, classes, SQLAlchemy's and psycopg's tables: some
    50,000 objects, all alive until the process ends) out of the cyclic garbage collector's reach.
    A full collection walks every tracked object, and over these it takes 60-80 ms on a 2-core
    EPYC; serving one meter's 1,440 readings allocates enough to set one off every ~40 requests,
    so it was the p99 of the meter queries (bench_query.py: 80-100 ms, 15-20 ms with this).
    Objects that become garbage later are still freed as before. From here on, what survives a
    full collection is frozen too (see SurvivorFreezer)."""
    gc.collect()
    gc.freeze()
    SurvivorFreezer.install()


# Tracked objects allocated (net of those freed) before a young collection: 143 times CPython's 700.
YOUNG_COLLECTION_THRESHOLD = 100_000


def collect_young_rarely() -> None:
    """Let the young generation grow to YOUNG_COLLECTION_THRESHOLD objects before it is collected,
    in a process that runs the stream in batches under `gc_paused`. Such a batch frees nearly all it
    allocates by reference counting, while the few thousand objects it leaves alive (the meters'
    window partials, the windows held back) take the place of as many freed: the net count rises
    little. With CPython's 700 a young collection ran after every batch (the count is looked at
    when the pause ends) and an older one every tenth, walking what the batches before left alive:
    1.5-2.3 ms of CPU per batch of 1,000 readings in the API's stream writer, and its slowest
    batches. Measured (bench_api_ingest.py, stream writer process, in turn with the build before):
    in-process the collections' CPU fell to 0.03-0.2 ms a batch; over HTTP 6-9 % more readings/s
    in each of four pairs of runs (34.1k/31.5k ... 27.5k/26.0k), p99 of a batch 62-73 against 66-92 ms;
    `metrify replay` (bench_replay.py, best of 3) 59.6k and 46.8k against 49.7k and 46.4k rows/s.
    Cyclic garbage waits longer to be freed: until this many objects were allocated net. Not for
    the API process: a request's error path may leave a small cycle (an exception, its frames)
    holding a large body, and thousands of them could pile up before a collection."""
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


class SurvivorFreezer:
    """Freezes what survives each full collection, so that the next ones walk only what became
    long-lived since; once the frozen heap has grown `growth` times over since a collection last
    walked all of it, it is unfrozen and the next full collection walks it all (and frees the
    cyclic garbage frozen meanwhile), then freezes what survives.

    Why: a stream process's meters' state is long-lived (some 17 tracked objects a meter) and
    replaced reading by reading, so full collections come every few dozen batches and each walks
    the whole state: 80-180 ms with 10,000 meters, in the middle of a batch (measured in-process
    on the API's ingest path). Frozen objects are still freed when their last reference goes;
    only garbage in reference cycles waits for the next whole walk, and those come each time the
    heap has doubled (geometrically rarer as it grows), so it stays bounded."""

    _installed: SurvivorFreezer | None = None

    def __init__(self, growth: float = 2.0, floor: int = 50_000) -> None:
        self.growth = growth
        self.floor = floor  # never unfreeze for a heap smaller than this: too cheap to matter
        self.walked = gc.get_freeze_count()  # frozen objects after the last whole walk
        self.unfrozen = False
        self.whole_walks = 0

    @classmethod
    def install(cls) -> SurvivorFreezer:
        """The process's one freezer (installing again keeps the first)."""
        if cls._installed is None:
            cls._installed = cls()
            gc.callbacks.append(cls._installed)
        return cls._installed

    @classmethod
    def uninstall(cls) -> None:
        if cls._installed is not None:
            gc.callbacks.remove(cls._installed)
            cls._installed = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        gc.freeze()
        frozen = gc.get_freeze_count()
        if self.unfrozen:  # this collection walked everything
            self.unfrozen = False
            self.whole_walks += 1
            self.walked = frozen
        elif frozen > self.growth * max(self.walked, self.floor):
            gc.unfreeze()  # the next full collection walks it all
            self.unfrozen = True
