"""The real stream core against the plain reference (tests/support/reference.py), DESIGN §3.

Any arrival order, any batching, any save-and-restore of the core's state between batches:
the final outcome is the one the contract defines. The core's runner
(tests/support/core_runner.py) is imported inside each test so that this module, and the
reference's own tests, can run before it exists.
"""

from __future__ import annotations

import math
from itertools import cycle

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from tests.support.reference import reference_exports
from tests.support.strategies import streams

KEYS = ("readings", "rejected", "late", "gaps", "aggregates")
AGGREGATE_FLOATS = frozenset({"sum_kwh", "min_kwh", "max_kwh", "mean_kwh"})

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

batch_sizes = st.lists(st.integers(1, 12), min_size=1, max_size=5)


def _same_value(key: str, field: str, a: object, b: object) -> bool:
    if key == "aggregates" and field in AGGREGATE_FLOATS:
        return isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True  # a raw NaN kept as received
    return type(a) is type(b) and a == b


def _same_row(key: str, a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(_same_value(key, f, a[f], b[f]) for f in a)


def differences(actual: dict, expected: dict, limit: int = 12) -> list[str]:
    """Row-by-row differences between two outcomes, readable in a failure report."""
    found: list[str] = []
    for key in KEYS:
        if key not in actual:
            found.append(f"{key}: missing from the outcome")
            continue
        got, want = list(actual[key]), expected[key]
        if len(got) != len(want):
            found.append(f"{key}: {len(got)} rows, expected {len(want)}")
        for index in range(max(len(got), len(want))):
            a = got[index] if index < len(got) else None
            b = want[index] if index < len(want) else None
            if a is None or b is None or not _same_row(key, a, b):
                found.append(f"{key}[{index}]:\n    got      {a!r}\n    expected {b!r}")
                if len(found) >= limit:
                    return [*found, "..."]
    return found


def assert_same_outcome(actual: dict, expected: dict, what: str) -> None:
    problems = differences(actual, expected)
    if problems:
        raise AssertionError(f"{what}:\n" + "\n".join(problems))


def batch_count(rows: list, sizes: list[int]) -> int:
    count, done = 0, 0
    for size in cycle(sizes):
        if done >= len(rows):
            return count
        done += size
        count += 1
    raise AssertionError("unreachable")


def _note_stream(rows, config, now_us, partitions) -> None:
    note(f"config={config!r}\nnow_us={now_us} partitions={partitions}")
    for index, row in enumerate(rows):
        note(f"  {index:3d}: {tuple(row)[:3]!r}")


@PROPERTY_SETTINGS
@given(streams())
def test_core_outcome_equals_the_reference(stream):
    from tests.support.core_runner import run_core

    rows, config, now_us, partitions = stream
    _note_stream(*stream)
    expected = reference_exports(rows, config, now_us, partitions)
    actual = run_core(rows, config, now_us, partitions)
    assert_same_outcome(actual, expected, "core (one batch) vs reference")


@PROPERTY_SETTINGS
@given(streams(), batch_sizes, batch_sizes)
def test_core_outcome_does_not_depend_on_batch_sizes(stream, sizes_a, sizes_b):
    from tests.support.core_runner import run_core

    rows, config, now_us, partitions = stream
    _note_stream(*stream)
    first = run_core(rows, config, now_us, partitions, batch_sizes=sizes_a)
    second = run_core(rows, config, now_us, partitions, batch_sizes=sizes_b)
    assert_same_outcome(second, first, f"core in batches {sizes_b} vs in batches {sizes_a}")
    expected = reference_exports(rows, config, now_us, partitions)
    assert_same_outcome(first, expected, f"core in batches {sizes_a} vs reference")


@PROPERTY_SETTINGS
@given(streams(), batch_sizes, st.data())
def test_saving_and_restoring_state_between_batches_changes_nothing(stream, sizes, data):
    from tests.support.core_runner import run_core

    rows, config, now_us, partitions = stream
    _note_stream(*stream)
    batches = batch_count(rows, sizes)
    restore_at = data.draw(st.sets(st.integers(0, max(batches - 1, 0))), label="restore_at")
    straight = run_core(rows, config, now_us, partitions, batch_sizes=sizes)
    restored = run_core(rows, config, now_us, partitions, batch_sizes=sizes, restore_at=restore_at)
    assert_same_outcome(restored, straight, f"core restored after batches {sorted(restore_at)} vs not restored")
    expected = reference_exports(rows, config, now_us, partitions)
    assert_same_outcome(restored, expected, "restored core vs reference")


@PROPERTY_SETTINGS
@given(streams(partitions=3), batch_sizes, st.data())
def test_three_partitions_give_the_reference_outcome_whatever_the_batching_and_restores(stream, sizes, data):
    from tests.support.core_runner import run_core

    rows, config, now_us, partitions = stream
    _note_stream(*stream)
    expected = reference_exports(rows, config, now_us, partitions)
    assert_same_outcome(run_core(rows, config, now_us, partitions), expected, "core, 3 partitions, one batch")
    batches = batch_count(rows, sizes)
    restore_at = data.draw(st.sets(st.integers(0, max(batches - 1, 0))), label="restore_at")
    actual = run_core(rows, config, now_us, partitions, batch_sizes=sizes, restore_at=restore_at)
    assert_same_outcome(actual, expected, f"core, 3 partitions, batches {sizes}, restored after {sorted(restore_at)}")


@PROPERTY_SETTINGS
@given(streams(partitions=1), st.integers(0, 2**40))
def test_a_numbered_batch_gives_the_events_of_rows_that_carry_their_offsets(stream, first_offset):
    """`process(batch, now, first_offset)` (the embedded pipeline's rows) and rows carrying their
    own input offsets (Kafka's) are one and the same input."""
    from metrify.domain.stream.core import PartitionStream

    rows, config, now_us, _ = stream
    _note_stream(*stream)
    carried = [row._replace(position=first_offset + index) for index, row in enumerate(rows)]
    unnumbered = [row._replace(position=-1) for row in rows]
    assert PartitionStream(config).process(unnumbered, now_us, first_offset) == PartitionStream(config).process(
        carried, now_us
    )
