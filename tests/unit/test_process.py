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
