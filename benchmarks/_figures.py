"""Figures the benchmarks compute alike (imported from the scripts' folder)."""

from __future__ import annotations


def percentile(values: list[float], share: float) -> float:
    """The value `share` (0..1) of the way up the sorted values: the lower one of a pair."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
