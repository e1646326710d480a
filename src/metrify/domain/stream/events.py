"""What the stream core decides, as events named in the past tense.

Events are NamedTuples: immutable and typed like frozen dataclasses, but several times cheaper
to create, which matters on a path that makes two or three of them per reading. Times are
integer microseconds since the Unix epoch; window sizes are microseconds too.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class ReadingAccepted(NamedTuple):
    """A valid, non-duplicate reading that is ON_TIME or LATE (DESIGN §3.3-3.4)."""

    meter_id: str
    timestamp: int
    slot: int
    consumption_kwh: float
    status: str
    partition: int
    extra: dict[str, Any] | None = None


class ReadingRejected(NamedTuple):
    """A reading rejected with a reason code; raw values kept as received. `parsed_timestamp`
    is the event time when it could be read (used only to order exports)."""

    meter_id: str
    timestamp: Any
    consumption_kwh: Any
    reason: str
    partition: int
    parsed_timestamp: int | None = None
    position: int = 0


class ReadingTooLate(NamedTuple):
    """A reading older than W - L: recorded with its delay W - t, and processed no further."""

    meter_id: str
    timestamp: int
    consumption_kwh: float
    delay: int
    partition: int
    position: int = 0


class GapOpened(NamedTuple):
    """A gap came into being: opened by silence (missing_to None) or closed at once."""

    meter_id: str
    missing_from: int
    missing_to: int | None
    missing_intervals: int
    previous_from: int | None = None


class GapChanged(NamedTuple):
    """A gap grew or shrank. When healing moved its first slot, `previous_from` names the row
    it replaces (DESIGN §3.5), so that a sink deletes the old identity."""

    meter_id: str
    missing_from: int
    missing_to: int | None
    missing_intervals: int
    previous_from: int | None = None


class GapClosed(NamedTuple):
    """An open gap got its end: the meter spoke again."""

    meter_id: str
    missing_from: int
    missing_to: int | None
    missing_intervals: int
    previous_from: int | None = None


class GapHealed(NamedTuple):
    """Late readings filled every slot of a gap: the gap is gone."""

    meter_id: str
    missing_from: int
    missing_to: int | None = None
    missing_intervals: int = 0
    previous_from: int | None = None


class WindowUpdated(NamedTuple):
    """A closed tumbling window's aggregate, emitted on close and again whenever a LATE reading
    changes it (an upsert by meter, window, window_start)."""

    meter_id: str
    window: int
    window_start: int
    count: int  # type: ignore[assignment]  # a field, shadowing tuple.count
    sum_kwh: float
    min_kwh: float
    max_kwh: float


GapEvent = GapOpened | GapChanged | GapClosed | GapHealed
StreamEvent = ReadingAccepted | ReadingRejected | ReadingTooLate | GapEvent | WindowUpdated
GAP_EVENTS = (GapOpened, GapChanged, GapClosed, GapHealed)
