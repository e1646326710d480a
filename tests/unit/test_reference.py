"""Hand-worked examples of the contract text (DESIGN §3), each run against the plain reference
implementation and against the real stream core (through the pipeline and the in-memory store).

Config throughout unless a test says otherwise: I = 60 s, G = 30 s, B = 5 s, L = 120 s,
max 5 kWh, future tolerance 60 s, windows 1m/2m/10m. Times are on 2024-03-04, 10:MM:SS UTC.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.core_runner import run_core
from tests.support.reference import gaps_by_definition, reference_exports, slot_of

from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig

US = 1_000_000
CONFIG = StreamConfig(
    interval=60 * US,
    gap_grace=30 * US,
    out_of_orderness=5 * US,
    allowed_lateness=120 * US,
    max_kwh=5.0,
    future_tolerance=60 * US,
    state_ttl=86400 * US,
    windows=(60 * US, 120 * US, 600 * US),
)
T0 = 1709546400 * US  # 2024-03-04T10:00:00Z
NOW = T0 + 3600 * US  # the wall clock: 11:00


def ts(minute: int, second: int = 0, micro: int = 0) -> str:
    text = f"2024-03-04T10:{minute:02d}:{second:02d}"
    if micro:
        text += "." + f"{micro:06d}".rstrip("0")
    return text + "Z"


def row(meter, stamp, kwh="1.0") -> RawReading:
    return RawReading(meter, stamp, kwh)


IMPLEMENTATIONS = {"reference": reference_exports, "core": run_core}
_implementation = [reference_exports]


@pytest.fixture(autouse=True, scope="module", params=sorted(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest):
    """Every example below runs once per implementation: the reference and the real core."""
    _implementation[0] = IMPLEMENTATIONS[request.param]
    yield request.param
    _implementation[0] = reference_exports


def run(*rows: RawReading, partitions: int = 1, config: StreamConfig = CONFIG, now: int = NOW):
    return _implementation[0](list(rows), config, now, partitions)


def statuses(out) -> list[tuple[str, str, str]]:
    return [(r["meter_id"], r["timestamp"], r["status"]) for r in out["readings"]]


def gaps(out) -> list[tuple[str, str, str | None, int, str]]:
    return [
        (g["meter_id"], g["missing_from"], g["missing_to"], g["missing_intervals"], g["status"]) for g in out["gaps"]
    ]


def reasons(out) -> list[str]:
    return [r["reason"] for r in out["rejected"]]


# §3.2 / §3.3 watermark and lateness


def test_first_reading_of_a_partition_is_on_time():
    out = run(row("M1", ts(30)), row("M2", ts(0)), partitions=2)  # M1 -> 1, M2 -> 0 of 2
    assert statuses(out) == [("M1", ts(30), "ON_TIME"), ("M2", ts(0), "ON_TIME")]
    assert out["late"] == []


def test_one_partition_shares_one_watermark():
    out = run(row("M1", ts(30)), row("M2", ts(0)))
    assert statuses(out) == [("M1", ts(30), "ON_TIME")]
    # W = 10:29:55, so the delay of 10:00:00 is 29 min 55 s.
    assert out["late"] == [
        {"meter_id": "M2", "timestamp": ts(0), "consumption_kwh": 1.0, "delay_seconds": 1795, "partition": 0}
    ]


def test_reading_at_exactly_w_minus_l_is_late():
    # W = 10:09:55 after the first reading; W - L = 10:07:55.
    out = run(row("M1", ts(10)), row("M2", ts(7, 55)))
    assert statuses(out) == [("M1", ts(10), "ON_TIME"), ("M2", ts(7, 55), "LATE")]


def test_reading_a_microsecond_before_w_minus_l_is_too_late():
    out = run(row("M1", ts(10)), row("M2", ts(7, 54, 999999)))
    assert statuses(out) == [("M1", ts(10), "ON_TIME")]
    assert out["late"][0]["delay_seconds"] == 120.000001
    assert isinstance(out["late"][0]["delay_seconds"], float)


def test_reading_at_exactly_w_is_on_time_and_just_before_is_late():
    out = run(row("M1", ts(10)), row("M2", ts(9, 55)), row("M3", ts(9, 54, 999999)))
    assert statuses(out) == [
        ("M1", ts(10), "ON_TIME"),
        ("M2", ts(9, 55), "ON_TIME"),
        ("M3", ts(9, 54, 999999), "LATE"),
    ]


def test_rejected_readings_never_move_the_watermark():
    out = run(
        row("M1", ts(0)),
        row("M1", ts(50), "abc"),  # invalid_consumption: would have pushed W to 10:49:55
        row("M1", "2024-03-04T12:00:00Z"),  # future_timestamp (NOW + 60 s is 11:01)
        row("M1", ts(1)),
    )
    assert statuses(out) == [("M1", ts(0), "ON_TIME"), ("M1", ts(1), "ON_TIME")]
    assert reasons(out) == ["invalid_consumption", "future_timestamp"]


def test_duplicate_still_moves_the_watermark():
    # The duplicate at 10:00:29 passed step 1, so W = 10:00:24 and 10:00:23 is LATE.
    out = run(row("M1", ts(0)), row("M1", ts(0, 29)), row("M2", ts(0, 23)))
    assert statuses(out) == [("M1", ts(0), "ON_TIME"), ("M2", ts(0, 23), "LATE")]
    assert reasons(out) == ["duplicate"]


def test_delay_is_whole_seconds_as_an_int():
    out = run(row("M1", ts(10)), row("M1", ts(0)))
    assert out["late"][0]["delay_seconds"] == 595
    assert isinstance(out["late"][0]["delay_seconds"], int)


# §3.4 slots and duplicates


def test_slot_rounds_half_up():
    assert slot_of(T0 + 30 * US, 60 * US) == T0 + 60 * US
    assert slot_of(T0 + 30 * US - 1, 60 * US) == T0
    assert slot_of(T0 - 30 * US, 60 * US) == T0
    assert slot_of(T0 - 30 * US - 1, 60 * US) == T0 - 60 * US
    assert slot_of(22_500_000, 45_000_000) == 45_000_000  # a half of 22.5 s
    assert slot_of(-30 * US, 60 * US) == 0
    out = run(row("M1", ts(0, 30)), row("M2", ts(0, 29, 999999)))
    assert [r["slot"] for r in out["readings"]] == [ts(1), ts(0)]


def test_duplicate_counts_only_under_rejected():
    out = run(
        row("M1", ts(0), "1.0"),
        row("M1", ts(0, 10), "2.0"),  # same slot 10:00: first one wins
        row("M1", ts(2, 5)),  # W = 10:02:00 closes the 1m and 2m windows of 10:00
    )
    assert statuses(out) == [("M1", ts(0), "ON_TIME"), ("M1", ts(2, 5), "ON_TIME")]
    assert out["rejected"] == [
        {
            "meter_id": "M1",
            "timestamp": ts(0, 10),
            "consumption_kwh": "2.0",
            "reason": "duplicate",
            "partition": 0,
        }
    ]
    assert [(a["window"], a["window_start"], a["count"], a["sum_kwh"]) for a in out["aggregates"]] == [
        ("1m", ts(0), 1, 1.0),
        ("2m", ts(0), 1, 1.0),
    ]


def test_late_reading_for_a_filled_slot_is_a_duplicate():
    out = run(row("M1", ts(0)), row("M1", ts(2)), row("M1", ts(0, 20)))
    assert reasons(out) == ["duplicate"]
    assert statuses(out) == [("M1", ts(0), "ON_TIME"), ("M1", ts(2), "ON_TIME")]


def test_too_late_reading_does_not_fill_a_slot():
    # W = 10:09:55: 10:05 is too late, so the gap 10:01..10:09 stays whole.
    out = run(row("M1", ts(0)), row("M1", ts(10)), row("M1", ts(5)))
    assert gaps(out) == [("M1", ts(1), ts(10), 9, "closed")]
    assert [(r["timestamp"], r["delay_seconds"]) for r in out["late"]] == [(ts(5), 295)]


def test_too_late_reading_for_a_filled_slot_is_not_a_duplicate():
    out = run(row("M1", ts(0)), row("M1", ts(10)), row("M1", ts(0, 10)))
    assert out["rejected"] == []
    assert [r["timestamp"] for r in out["late"]] == [ts(0, 10)]


# §3.1 validation


def test_validation_reasons_are_checked_in_order():
    out = run(
        row("  ", "2024-02-30T00:00:00", "abc"),
        row("A", "2024-02-30T00:00:00", "abc"),
        row("B", "2024-03-04T11:01:00.000001Z", "abc"),
        row("C", ts(0), "NaN"),
        row("D", ts(0), "-1e400"),
        row("E", ts(0), "1e400"),
        row("F", ts(0), "1e9"),
    )
    assert [(r["meter_id"], r["reason"]) for r in out["rejected"]] == [
        ("", "missing_meter_id"),
        ("A", "invalid_timestamp"),
        ("B", "future_timestamp"),
        ("C", "invalid_consumption"),
        ("D", "negative_consumption"),
        ("E", "out_of_range"),
        ("F", "out_of_range"),
    ]
    assert out["readings"] == []


def test_exactly_the_maximum_and_minus_zero_are_valid():
    out = run(row("M1", ts(0), "5"), row("M2", ts(0), "-0"), row("M3", ts(0), 5.000001))
    assert [(r["meter_id"], r["consumption_kwh"]) for r in out["readings"]] == [("M1", 5.0), ("M2", 0.0)]
    assert reasons(out) == ["out_of_range"]


def test_text_above_the_maximum_by_less_than_a_float_can_tell_is_out_of_range():
    """The float of 5.000000000000000001 is 5.0, the maximum; the number written is above it."""
    out = run(
        row("M1", ts(0), "5.000000000000000001"),
        row("M2", ts(0), " 5.000000000000000000 "),
        row("M3", ts(0), "0.5000000000000000001e1"),
        row("M4", ts(0), 5.000000000000000001),  # a JSON number: a double, 5.0 as it arrives
    )
    assert [r["meter_id"] for r in out["readings"]] == ["M2", "M4"]
    assert [(r["meter_id"], r["reason"]) for r in out["rejected"]] == [("M1", "out_of_range"), ("M3", "out_of_range")]


def test_future_tolerance_is_inclusive():
    out = run(row("M1", "2024-03-04T11:01:00Z"), row("M2", "2024-03-04T11:01:00.000001Z"))
    assert statuses(out) == [("M1", "2024-03-04T11:01:00Z", "ON_TIME")]
    assert reasons(out) == ["future_timestamp"]


def test_rejected_rows_keep_raw_values_and_sort_by_meter_then_time():
    out = run(
        row(" M2 ", 1709546460, "abc"),
        row("M1", ts(5), "x"),
        row("M1", "bad", "y"),
        row(None, ts(0), "1"),
        row("M1", ts(3), "z"),
    )
    assert [(r["meter_id"], r["timestamp"], r["consumption_kwh"]) for r in out["rejected"]] == [
        ("", ts(0), "1"),
        ("M1", "bad", "y"),
        ("M1", ts(3), "z"),
        ("M1", ts(5), "x"),
        ("M2", 1709546460, "abc"),
    ]


def test_whitespace_ids_are_one_meter():
    out = run(row(" MTR-1 ", ts(0)), row("MTR-1\t", ts(0, 10)), row("MTR-1", ts(1)), partitions=3)
    assert [r["meter_id"] for r in out["readings"]] == ["MTR-1", "MTR-1"]
    assert [(r["meter_id"], r["reason"], r["partition"]) for r in out["rejected"]] == [("MTR-1", "duplicate", 2)]
    assert {r["partition"] for r in out["readings"]} == {2}  # murmur2("MTR-1") % 3


def test_missing_id_lives_in_the_partition_of_the_empty_id():
    out = run(row(" ", ts(0)), partitions=2)
    assert out["rejected"][0]["partition"] == 1  # murmur2(b"") % 2


def test_exports_write_utc_with_trimmed_fraction():
    out = run(row("M1", "2024-03-04 11:00:00.250+01:00", "0.25"))
    assert out["readings"] == [
        {
            "meter_id": "M1",
            "timestamp": "2024-03-04T10:00:00.25Z",
            "slot": ts(0),
            "consumption_kwh": 0.25,
            "status": "ON_TIME",
            "partition": 0,
        }
    ]


# §3.5 gaps


def test_slot_with_s_plus_g_equal_w_is_missing():
    # M2 at 10:01:35 makes W = 10:01:30 = 10:01 + G: M1's slot 10:01 is missing.
    out = run(row("M1", ts(0)), row("M2", ts(1, 35)))
    assert gaps(out) == [("M1", ts(1), None, 1, "open")]


def test_slot_with_s_plus_g_a_microsecond_after_w_is_not_yet_missing():
    out = run(row("M1", ts(0)), row("M2", ts(1, 34, 999999)))
    assert gaps(out) == []


def test_open_gap_grows_with_w():
    # W = 10:03:30: 10:01, 10:02 and 10:03 are missing (10:03 + G = W).
    out = run(row("M1", ts(0)), row("M2", ts(3, 35)))
    assert gaps(out) == [("M1", ts(1), None, 3, "open")]
    out = run(row("M1", ts(0)), row("M2", ts(3, 35)), row("M2", ts(6, 35)))
    assert gaps(out) == [("M1", ts(1), None, 6, "open"), ("M2", ts(5), ts(7), 2, "closed")]


def test_reading_after_silence_closes_the_gap():
    out = run(row("M1", ts(0)), row("M2", ts(3, 35)), row("M1", ts(5)))
    assert gaps(out) == [("M1", ts(1), ts(5), 4, "closed")]


def test_reading_that_skips_slots_closes_a_gap_at_once():
    out = run(row("M1", ts(0)), row("M1", ts(3)))
    assert gaps(out) == [("M1", ts(1), ts(3), 2, "closed")]


def test_late_reading_splits_the_gap_it_falls_into():
    # W = 10:04:55, W - L = 10:02:55: 10:03 is LATE and splits 10:01..10:04.
    out = run(row("M1", ts(0)), row("M1", ts(5)), row("M1", ts(3)))
    assert statuses(out)[1] == ("M1", ts(3), "LATE")
    assert gaps(out) == [("M1", ts(1), ts(3), 2, "closed"), ("M1", ts(4), ts(5), 1, "closed")]


def test_late_reading_that_fills_the_first_missing_slot_changes_the_gap_identity():
    # W = 10:02:55, W - L = 10:00:55: 10:01 is LATE and fills the first slot of 10:01..10:02.
    out = run(row("M1", ts(0)), row("M1", ts(3)), row("M1", ts(1)))
    assert gaps(out) == [("M1", ts(2), ts(3), 1, "closed")]


def test_late_reading_that_fills_every_missing_slot_heals_the_gap():
    out = run(row("M1", ts(0)), row("M1", ts(2)), row("M1", ts(1)))
    assert gaps(out) == []


def test_late_reading_before_first_slot_creates_a_gap():
    out = run(row("M1", ts(5)), row("M1", ts(3)))
    assert gaps(out) == [("M1", ts(4), ts(5), 1, "closed")]


def test_slots_before_a_meters_first_slot_are_never_missing():
    out = run(row("M2", ts(0)), row("M2", ts(1)), row("M2", ts(2)), row("M1", ts(2)))
    assert gaps(out) == []


def test_late_reading_after_the_last_slot_closes_the_open_gap():
    # W = 10:04:30: M1's 10:01..10:04 are missing and open; LATE M1 10:03 cuts it.
    out = run(row("M1", ts(0)), row("M2", ts(4, 35)), row("M1", ts(3)))
    assert gaps(out) == [("M1", ts(1), ts(3), 2, "closed"), ("M1", ts(4), None, 1, "open")]


def test_silent_meter_gap_is_open_only_as_far_as_w():
    out = run(row("M1", ts(0)), row("M2", ts(0)), row("M2", ts(20, 35)))
    assert gaps(out) == [("M1", ts(1), None, 20, "open"), ("M2", ts(1), ts(21), 20, "closed")]


# §3.6 aggregates


def test_window_whose_end_equals_w_is_closed():
    out = run(row("M1", ts(0), "1.5"), row("M1", ts(1, 5), "0.5"))  # W = 10:01:00
    assert out["aggregates"] == [
        {
            "meter_id": "M1",
            "window": "1m",
            "window_start": ts(0),
            "window_end": ts(1),
            "count": 1,
            "sum_kwh": 1.5,
            "min_kwh": 1.5,
            "max_kwh": 1.5,
            "mean_kwh": 1.5,
        }
    ]


def test_window_is_open_while_w_is_a_microsecond_short_of_its_end():
    out = run(row("M1", ts(0)), row("M1", ts(1, 4, 999999)))
    assert out["aggregates"] == []


def test_windows_are_assigned_by_slot():
    # 10:00:59 belongs to slot 10:01, hence to the 1m window 10:01..10:02.
    out = run(row("M1", ts(0, 59), "2"), row("M2", ts(2, 5)))
    assert [(a["meter_id"], a["window"], a["window_start"]) for a in out["aggregates"]] == [
        ("M1", "2m", ts(0)),
        ("M1", "1m", ts(1)),
    ]


def test_aggregates_count_on_time_and_late_readings():
    out = run(
        row("M1", ts(0), "1"),
        row("M1", ts(3), "4"),
        row("M1", ts(1), "2"),  # LATE
        row("M1", ts(2, 10), "0.5"),  # LATE
        row("M1", ts(1, 20), "5"),  # LATE, slot 10:01: duplicate
        row("M2", ts(10, 5)),  # W = 10:10:00
    )
    m1 = [
        (a["window"], a["window_start"], a["count"], a["sum_kwh"], a["min_kwh"], a["max_kwh"], a["mean_kwh"])
        for a in out["aggregates"]
        if a["meter_id"] == "M1"
    ]
    assert m1 == [
        ("1m", ts(0), 1, 1.0, 1.0, 1.0, 1.0),
        ("2m", ts(0), 2, 3.0, 1.0, 2.0, 1.5),
        ("10m", ts(0), 4, 7.5, 0.5, 4.0, 1.875),
        ("1m", ts(1), 1, 2.0, 2.0, 2.0, 2.0),
        ("1m", ts(2), 1, 0.5, 0.5, 0.5, 0.5),
        ("2m", ts(2), 2, 4.5, 0.5, 4.0, 2.25),
        ("1m", ts(3), 1, 4.0, 4.0, 4.0, 4.0),
    ]


def test_one_day_windows_are_utc_days():
    config = StreamConfig()  # I = 30 min, windows 15m/1h/1d
    out = reference_exports(
        [
            row("M1", "2024-03-05T01:00:00+02:00"),  # 23:00 UTC on the 4th
            row("M1", "2024-03-04T23:50:00Z"),  # slot 00:00 on the 5th: the next day
            row("M2", "2024-03-06T00:00:10Z"),  # W = 2024-03-06T00:00:00Z
        ],
        config,
        1709800000 * US,
        1,
    )
    days = [
        (a["meter_id"], a["window_start"], a["window_end"], a["count"])
        for a in out["aggregates"]
        if a["window"] == "1d"
    ]
    assert days == [
        ("M1", "2024-03-04T00:00:00Z", "2024-03-05T00:00:00Z", 1),
        ("M1", "2024-03-05T00:00:00Z", "2024-03-06T00:00:00Z", 1),
    ]
    # 15m windows hold a reading only every other window with a 30 min interval: no gap.
    assert [(a["window_start"]) for a in out["aggregates"] if a["window"] == "15m" and a["meter_id"] == "M1"] == [
        "2024-03-04T23:00:00Z",
        "2024-03-05T00:00:00Z",
    ]


# The arithmetic of gaps_by_definition against §3.5 read slot by slot.


@settings(max_examples=300, deadline=None)
@given(
    st.sets(st.integers(-15, 15), min_size=1, max_size=10),
    st.integers(-20 * 60, 40 * 60).map(lambda s: s * US),
    st.sampled_from((0, 30 * US, 60 * US, 90 * US)),
)
def test_gaps_are_the_maximal_runs_of_slots_that_the_definition_calls_missing(indices, w_offset, grace):
    interval = 60 * US
    config = StreamConfig(interval=interval, gap_grace=grace)
    slots = sorted(T0 + i * interval for i in indices)
    w = T0 + w_offset
    filled = set(slots)

    def missing(s: int) -> bool:
        if s in filled:
            return False
        return slots[0] < s < slots[-1] or (s > slots[-1] and s + grace <= w)

    expected, run_start = [], None
    s = slots[0]
    while s <= slots[-1] + 100 * interval:
        if missing(s) and run_start is None:
            run_start = s
        elif not missing(s) and run_start is not None:
            expected.append((run_start, s if s in filled else None, (s - run_start) // interval))
            run_start = None
        s += interval
    assert gaps_by_definition(slots, w, config) == expected
