"""Runs the real stream pipeline over the in-memory store and returns every export, for tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from metrify.adapters.memory.stream_store import (
    InMemoryOutcomeQueries,
    InMemoryStreamStore,
    InMemoryStreamUnitOfWork,
)
from metrify.application.exports import EXPORT_KINDS, export_rows
from metrify.application.ports import ExportFilter
from metrify.application.stream import StreamPipeline
from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig


class FixedClock:
    def __init__(self, now_us: int) -> None:
        self.now = now_us

    def now_us(self) -> int:
        return self.now


def run_core(
    rows: list[RawReading],
    config: StreamConfig,
    now_us: int,
    partitions: int = 1,
    batch_sizes: Iterable[int] | None = None,
    restore_at: set[int] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Cut `rows` into batches (sizes cycled from `batch_sizes`), and after each batch index in
    `restore_at` throw the pipeline away and restore a fresh one from the store."""
    store = InMemoryStreamStore()

    def fresh() -> StreamPipeline:
        pipeline = StreamPipeline(config, partitions, lambda: InMemoryStreamUnitOfWork(store), FixedClock(now_us))
        pipeline.load()
        return pipeline

    pipeline = fresh()
    sizes = itertools.cycle(list(batch_sizes or [len(rows) or 1]))
    position, index = 0, 0
    while position < len(rows):
        size = max(1, next(sizes))
        pipeline.process(rows[position : position + size])
        position += size
        if restore_at and index in restore_at:
            pipeline = fresh()
        index += 1
    queries = InMemoryOutcomeQueries(store)
    return {kind: list(export_rows(queries, kind, ExportFilter())) for kind in EXPORT_KINDS}
