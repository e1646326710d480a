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
    offset); gaps by (meter, missing_from), with the identities healing retired. Windows come as
    they were emitted: of two values of one (meter, window, window_start), the later one wins
    when they are written in order (`latest_windows` is the last value of each). Keying 20,000
    windows closed by one batch took 2-3 ms of it, and SQLite applies a statement's rows in order
    anyway; a store that cannot take one key twice in a statement (PostgreSQL) asks for the last."""

    readings: list[ReadingAccepted] = field(default_factory=list)
    rejected: list[ReadingRejected] = field(default_factory=list)
    too_late: list[ReadingTooLate] = field(default_factory=list)
    gap_upserts: dict[tuple[str, int], GapRow] = field(default_factory=dict)
    gap_deletes: set[tuple[str, int]] = field(default_factory=set)
    windows: list[WindowUpdated] = field(default_factory=list)

    def latest_windows(self) -> dict[tuple[str, int, int], WindowUpdated]:
        """The last value of each window, by (meter_id, window, window_start), in the order each
        window was first emitted."""
        return {window[:3]: window for window in self.windows}

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
    windows_append = batch.windows.append
    upserts = batch.gap_upserts
    deletes = batch.gap_deletes
    for event in events:
        kind = type(event)
        if kind is ReadingAccepted:
            readings_append(event)
        elif kind is WindowUpdated:
            windows_append(event)
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
