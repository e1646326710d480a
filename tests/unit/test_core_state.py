"""The core's own promises beyond the export rows: events, bounded state, exact save/restore."""

from __future__ import annotations

from metrify.domain.readings import RawReading
from metrify.domain.stream.config import US, StreamConfig
from metrify.domain.stream.core import PartitionStream
from metrify.domain.stream.events import GapChanged, GapClosed, GapHealed, GapOpened, WindowUpdated
from metrify.domain.stream.grammar import format_timestamp

T0 = 1_709_510_400 * US  # 2024-03-04T00:00:00Z
HALF_HOUR = 1800 * US
NOW = T0 + 400 * 86400 * US


def reading(meter: str, slot_index: int, kwh: str = "0.5", offset_s: int = 0) -> RawReading:
    return RawReading(meter, format_timestamp(T0 + slot_index * HALF_HOUR + offset_s * US), kwh)


def test_a_late_reading_that_moves_a_gaps_start_names_the_identity_it_replaces() -> None:
    core = PartitionStream(StreamConfig())
    events = core.process([reading("M", 0), reading("M", 3), reading("M", 1)], NOW)
    gap_events = [e for e in events if isinstance(e, GapOpened | GapChanged | GapClosed | GapHealed)]
    opened, changed = gap_events
    assert isinstance(opened, GapOpened) and opened.missing_from == T0 + HALF_HOUR
    assert isinstance(changed, GapChanged)
    assert changed.previous_from == T0 + HALF_HOUR and changed.missing_from == T0 + 2 * HALF_HOUR
    assert changed.missing_intervals == 1


def test_a_late_reading_that_fills_the_only_missing_slot_heals_the_gap() -> None:
    core = PartitionStream(StreamConfig())
    events = core.process([reading("M", 0), reading("M", 2), reading("M", 1)], NOW)
    assert [type(e) for e in events if isinstance(e, GapOpened | GapHealed)] == [GapOpened, GapHealed]


def test_a_window_is_emitted_again_when_a_late_reading_changes_it() -> None:
    core = PartitionStream(StreamConfig(windows=(3600 * US,)))
    events = core.process([reading("M", 0), reading("M", 2, offset_s=20), reading("M", 1)], NOW)
    updates = [e for e in events if isinstance(e, WindowUpdated) and e.window_start == T0]
    assert [(u.count, u.sum_kwh) for u in updates] == [(1, 0.5), (2, 1.0)]


def test_state_stays_small_over_a_long_stream() -> None:
    """Per meter only what a LATE reading can still touch is kept (§3.7): a month of readings
    leaves the same few slots, gaps and windows as a day does."""
    core = PartitionStream(StreamConfig())
    sizes = []
    for day in range(30):
        batch = [reading(f"M{m}", day * 48 + k) for k in range(48) for m in range(5)]
        core.process(batch, NOW)
        core.take_dirty()
        sizes.append(max(len(core.snapshot_meter(f"M{m}")[6]) for m in range(5)))
    assert max(sizes[5:]) == sizes[5]
    assert sizes[-1] <= 5 * 12, "window partials grow with the stream"


def test_a_meter_silent_past_the_ttl_keeps_only_its_last_slot_and_open_gap() -> None:
    config = StreamConfig(state_ttl=86400 * US)
    core = PartitionStream(config)
    core.process([reading("quiet", 0), reading("quiet", 1)], NOW)
    core.process([reading("busy", k) for k in range(2, 200)], NOW)
    core.take_dirty()
    interval, first, last, mask, open_count, gaps, windows = core.snapshot_meter("quiet")
    assert (last, mask, gaps, windows) == (T0 + HALF_HOUR, 1, [], [])
    assert open_count > 90


def test_restore_gives_back_the_same_future() -> None:
    rows = [reading(f"M{m}", k, offset_s=(m * 7 + k * 3) % 40 - 20) for k in range(100) for m in range(4)]
    rows[50], rows[90] = rows[90], rows[50]
    straight = PartitionStream(StreamConfig())
    expected = straight.process(rows[:200], NOW) + straight.process(rows[200:], NOW)
    first = PartitionStream(StreamConfig())
    head = first.process(rows[:200], NOW)
    first.take_dirty()
    saved = {m: first.snapshot_meter(m) for m in first.meters}
    second = PartitionStream(StreamConfig())
    second.restore(first.max_event_time, saved)
    tail = second.process(rows[200:], NOW)
    assert sorted(map(repr, head + tail)) == sorted(map(repr, expected))


def test_the_meters_snapshot_together_are_each_ones_snapshot() -> None:
    core = PartitionStream(StreamConfig())
    core.process([reading(f"M{m}", h, str(0.5 + m)) for h in range(4) for m in range(3)], NOW)
    meters = core.take_dirty()
    assert meters == ["M0", "M1", "M2"]
    assert core.snapshot_meters(meters) == {m: core.snapshot_meter(m) for m in meters}
    assert core.snapshot_meters([]) == {}
