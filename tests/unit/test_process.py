"""The garbage-collection policy of long-running processes (entrypoints/process.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from metrify.entrypoints.process import SurvivorFreezer

FULL = ("stop", {"generation": 2, "collected": 0, "uncollectable": 0})


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def unfrozen_after() -> Iterator[None]:
    """No collection but the test's own, and no freezer of the process's (an earlier test may
    have installed one): either would freeze or unfreeze the heap under the test's counts."""
    installed = SurvivorFreezer._installed
    SurvivorFreezer.uninstall()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()
        if installed is not None:
            SurvivorFreezer.install()


def test_what_survives_a_full_collection_is_frozen(unfrozen_after: None) -> None:
    freezer = SurvivorFreezer(floor=10**9)  # never unfreezes
    survivors = [[] for _ in range(1000)]
    # Nothing frozen to start with: threads left by earlier tests free objects now and then, and
    # freeing a frozen one lowers the count under the test.
    gc.unfreeze()
    freezer("stop", {"generation": 1, "collected": 0, "uncollectable": 0})
    assert gc.get_freeze_count() == 0  # young collections change nothing
    freezer(*FULL)
    assert gc.get_freeze_count() >= len(survivors)
    assert not freezer.unfrozen


def test_the_heap_is_walked_whole_again_once_it_has_doubled(unfrozen_after: None) -> None:
    gc.collect()
    gc.freeze()
    freezer = SurvivorFreezer(growth=2.0, floor=0)
    assert freezer.walked >= gc.get_freeze_count() > 0  # (frees by other threads only lower the count)
    cycle = Node()
    garbage = weakref.ref(cycle)
    freezer(*FULL)  # grown by a few objects only: stays frozen
    assert not freezer.unfrozen
    del cycle
    gc.collect()
    assert garbage() is not None  # frozen cyclic garbage waits for a whole walk
    keep = [[] for _ in range(freezer.walked + 1)]  # the frozen heap more than doubles
    freezer(*FULL)
    assert freezer.unfrozen and gc.get_freeze_count() == 0
    gc.collect()  # the whole walk: frees the cycle, then freezes what survives
    freezer(*FULL)
    assert garbage() is None
    assert not freezer.unfrozen and freezer.whole_walks == 1
    assert freezer.walked >= gc.get_freeze_count() >= len(keep)


def test_one_freezer_a_process() -> None:
    installed = SurvivorFreezer._installed
    try:
        SurvivorFreezer.uninstall()
        first = SurvivorFreezer.install()
        assert SurvivorFreezer.install() is first
        assert gc.callbacks.count(first) == 1
    finally:
        SurvivorFreezer.uninstall()
        if installed is not None:
            SurvivorFreezer.install()


@pytest.fixture
def thresholds_after() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*before)


def test_a_batch_that_leaves_little_alive_sets_off_no_young_collection(thresholds_after: None) -> None:
    from metrify.application.stream import gc_paused
    from metrify.entrypoints.process import YOUNG_COLLECTION_THRESHOLD, collect_young_rarely

    collections: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    def batches(n: int) -> list[list[object]]:
        kept: list[list[object]] = []
        for _ in range(n):
            with gc_paused():
                temporary = [[i] for i in range(20_000)]  # freed by reference counting
                kept.append(temporary[:200])  # what a batch leaves alive (window partials)
                del temporary
            [].append(None)  # an allocation once the pause is over: where a due collection runs
        return kept

    gc.collect()
    gc.callbacks.append(count)
    try:
        gc.set_threshold(700, 10, 10)  # CPython's
        batches(5)
        assert collections, "CPython's threshold collects after such batches"
        collections.clear()
        collect_young_rarely()
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, 10, 10)
        gc.collect()
        collections.clear()
        batches(5)
        assert collections == []
    finally:
        gc.callbacks.remove(count)
