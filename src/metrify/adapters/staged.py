"""What the stores' units of work (in memory, SQLAlchemy) stage until their commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class StagedOutcomes:
    """A unit of work's OutcomeRepository: the events it is given, stored at its commit."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def add_events(self, events: Sequence[Any]) -> None:
        self.events.extend(events)
