"""Folding a batch of stream events into the rows a store must hold after it (an idempotent sink)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from metrify.application.ports import GapRow
from metrify.domain.stream.events import (
    GapHealed,
    ReadingAccepted,
    ReadingRejected,
    ReadingTooLate,
    WindowUpdated,
)


@dataclass(slots=True)
class OutcomeBatch:
    """What a batch of events leaves behind, keyed by natural keys so that writing it twice changes
    nothing: readings by (meter, timestamp); rejected and too-late readings by (partition, input
    offset); gaps by (meter, missing_from), with the identities healing retired; windows by
    (meter, window, window_start), the last value winning."""

    readings: list[ReadingAccepted] = field(default_factory=list)
    rejected: list[ReadingRejected] = field(default_factory=list)
    too_late: list[ReadingTooLate] = field(default_factory=list)
    gap_upserts: dict[tuple[str, int], GapRow] = field(default_factory=dict)
    gap_deletes: set[tuple[str, int]] = field(default_factory=set)
    windows: dict[tuple[str, int, int], WindowUpdated] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (
            self.readings or self.rejected or self.too_late or self.gap_upserts or self.gap_deletes or self.windows
        )


def fold_events(events: Iterable[Any]) -> OutcomeBatch:
    """Apply events in order; a gap event whose first slot moved retires its previous identity."""
    batch = OutcomeBatch()
    readings_append = batch.readings.append
    rejected_append = batch.rejected.append
    too_late_append = batch.too_late.append
    windows = batch.windows
    upserts = batch.gap_upserts
    deletes = batch.gap_deletes
    for event in events:
        kind = type(event)
        if kind is ReadingAccepted:
            readings_append(event)
        elif kind is WindowUpdated:
            windows[event[:3]] = event  # by (meter_id, window, window_start)
        elif kind is ReadingRejected:
            rejected_append(event)
        elif kind is ReadingTooLate:
            too_late_append(event)
        elif kind is GapHealed:
            key = (event.meter_id, event.missing_from)
            upserts.pop(key, None)
            deletes.add(key)
        else:  # GapOpened, GapChanged, GapClosed
            if event.previous_from is not None and event.previous_from != event.missing_from:
                old = (event.meter_id, event.previous_from)
                upserts.pop(old, None)
                deletes.add(old)
            key = (event.meter_id, event.missing_from)
            deletes.discard(key)
            upserts[key] = GapRow(event.meter_id, event.missing_from, event.missing_to, event.missing_intervals)
    return batch
