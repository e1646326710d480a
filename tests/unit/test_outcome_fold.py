"""fold_events: what a batch of stream events leaves for an idempotent sink (DESIGN §3.5, §4)."""

from __future__ import annotations

from metrify.application.outcomes import fold_events
from metrify.application.ports import GapRow
from metrify.domain.stream.events import (
    GapChanged,
    GapClosed,
    GapHealed,
    GapOpened,
    ReadingAccepted,
    ReadingRejected,
    ReadingTooLate,
    WindowUpdated,
)

H = 3_600_000_000


def test_readings_rejects_and_too_late_readings_are_kept_in_arrival_order() -> None:
    events = [
        ReadingAccepted("M1", 2 * H, 2 * H, 0.5, "ON_TIME", 0),
        ReadingRejected("M1", "x", "1", "invalid_timestamp", 0, None, 1),
        ReadingTooLate("M1", 0, 0.5, 2 * H, 0, 2),
        ReadingAccepted("M1", H, H, 0.25, "LATE", 0),
    ]
    batch = fold_events(events)
    assert batch.readings == [events[0], events[3]]
    assert batch.rejected == [events[1]]
    assert batch.too_late == [events[2]]
    assert not batch.is_empty()


def test_an_empty_batch_is_empty() -> None:
    assert fold_events([]).is_empty()


def test_a_gap_whose_first_slot_moved_retires_its_old_identity() -> None:
    batch = fold_events([GapChanged("M1", 3 * H, 5 * H, 2, previous_from=2 * H)])
    assert batch.gap_deletes == {("M1", 2 * H)}
    assert batch.gap_upserts == {("M1", 3 * H): GapRow("M1", 3 * H, 5 * H, 2)}


def test_a_gap_opened_and_moved_within_the_batch_leaves_only_its_last_identity() -> None:
    batch = fold_events(
        [
            GapOpened("M1", 2 * H, 5 * H, 3),
            GapChanged("M1", 3 * H, 5 * H, 2, previous_from=2 * H),
            GapChanged("M1", 4 * H, 5 * H, 1, previous_from=3 * H),
        ]
    )
    assert batch.gap_upserts == {("M1", 4 * H): GapRow("M1", 4 * H, 5 * H, 1)}
    assert batch.gap_deletes == {("M1", 2 * H), ("M1", 3 * H)}


def test_a_split_gap_keeps_both_halves() -> None:
    batch = fold_events(
        [
            GapOpened("M1", 2 * H, 6 * H, 4),
            GapChanged("M1", 2 * H, 3 * H, 1),  # the same identity shrank
            GapOpened("M1", 4 * H, 6 * H, 2),  # and a second gap after the healed slot
        ]
    )
    assert batch.gap_upserts == {
        ("M1", 2 * H): GapRow("M1", 2 * H, 3 * H, 1),
        ("M1", 4 * H): GapRow("M1", 4 * H, 6 * H, 2),
    }
    assert batch.gap_deletes == set()


def test_a_healed_gap_is_deleted_and_not_upserted() -> None:
    batch = fold_events([GapOpened("M1", 2 * H, None, 1), GapClosed("M1", 2 * H, 3 * H, 1), GapHealed("M1", 2 * H)])
    assert batch.gap_upserts == {}
    assert batch.gap_deletes == {("M1", 2 * H)}


def test_a_gap_reopened_after_healing_is_upserted_and_not_deleted() -> None:
    batch = fold_events([GapHealed("M1", 2 * H), GapOpened("M1", 2 * H, None, 1)])
    assert batch.gap_upserts == {("M1", 2 * H): GapRow("M1", 2 * H, None, 1)}
    assert batch.gap_deletes == set()


def test_a_gap_moved_back_onto_a_retired_identity_is_not_deleted() -> None:
    batch = fold_events(
        [
            GapChanged("M1", 3 * H, 5 * H, 2, previous_from=2 * H),
            GapChanged("M1", 2 * H, 5 * H, 3, previous_from=3 * H),
        ]
    )
    assert batch.gap_upserts == {("M1", 2 * H): GapRow("M1", 2 * H, 5 * H, 3)}
    assert batch.gap_deletes == {("M1", 3 * H)}


def test_gap_deletes_and_upserts_never_share_a_key() -> None:
    events = [
        GapOpened("M1", H, None, 1),
        GapChanged("M1", 2 * H, None, 1, previous_from=H),
        GapHealed("M1", 2 * H),
        GapOpened("M1", H, 3 * H, 2),
        GapChanged("M2", 5 * H, None, 1, previous_from=4 * H),
    ]
    batch = fold_events(events)
    assert set(batch.gap_upserts).isdisjoint(batch.gap_deletes)


def test_the_last_value_of_a_window_wins() -> None:
    batch = fold_events(
        [
            WindowUpdated("M1", H, 0, 1, 1.0, 1.0, 1.0),
            WindowUpdated("M1", H, H, 1, 5.0, 5.0, 5.0),
            WindowUpdated("M1", H, 0, 2, 3.0, 1.0, 2.0),
            WindowUpdated("M1", 24 * H, 0, 3, 8.0, 1.0, 5.0),
        ]
    )
    assert batch.latest_windows() == {
        ("M1", H, 0): WindowUpdated("M1", H, 0, 2, 3.0, 1.0, 2.0),
        ("M1", H, H): WindowUpdated("M1", H, H, 1, 5.0, 5.0, 5.0),
        ("M1", 24 * H, 0): WindowUpdated("M1", 24 * H, 0, 3, 8.0, 1.0, 5.0),
    }


def test_folding_is_idempotent_for_keyed_outcomes() -> None:
    events = [
        GapOpened("M1", H, 3 * H, 2),
        GapChanged("M1", 2 * H, 3 * H, 1, previous_from=H),
        WindowUpdated("M1", H, 0, 1, 1.0, 1.0, 1.0),
        GapHealed("M2", H),
    ]
    once, twice = fold_events(events), fold_events(events + events)
    assert once.gap_upserts == twice.gap_upserts
    assert once.gap_deletes == twice.gap_deletes
    assert once.latest_windows() == twice.latest_windows()
