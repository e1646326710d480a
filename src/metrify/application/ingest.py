"""Readings posted over HTTP with an ingest key (issue 7; DESIGN §4 "one path for a batch").

Embedded profile: the batch goes through ONE process-wide StreamPipeline, the same path as
`metrify replay`, so a malformed reading is rejected by the stream core with its reason and never
fails the batch. Production profile (Kafka configured): the batch is only produced to the raw
topic; the stream workers own the state.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from metrify.application.errors import AuthenticationFailed, NotFound
from metrify.application.meters import MeterRegistry
from metrify.application.ports import Clock
from metrify.application.serial import LATE, ON_TIME, TOO_LATE, Outcome
from metrify.domain.ingest_keys import TOKEN_PREFIX, IngestKey, hash_token, reading_region
from metrify.domain.readings import RawReading, normalise_meter_id
from metrify.domain.users import Role, User

log = logging.getLogger("metrify.ingest")


class IngestKeyRepository(Protocol):
    def add(self, key: IngestKey) -> None: ...

    def get(self, key_id: str) -> IngestKey | None: ...

    def by_hash(self, key_hash: str) -> IngestKey | None: ...

    def save(self, key: IngestKey) -> None: ...

    def list(self) -> list[IngestKey]:
        """Every key, revoked ones too, oldest first."""
        ...


class OutcomeSource(Protocol):
    """Runs readings through the embedded stream: in this process (SerialPipeline) or in a stream
    writer process of its own (entrypoints/stream_writer.py)."""

    def outcomes(self, rows: Sequence[RawReading]) -> list[Outcome]:
        """Each row's outcome, in order, once the batch is safe: stored, or journaled."""
        ...


class RawReadingProducer(Protocol):
    """Hands raw readings to the stream workers (Kafka's raw topic, keyed by meter id)."""

    def produce(self, readings: Sequence[RawReading]) -> None:
        """Deliver every reading, or raise."""
        ...


class KeyAdmin:
    """ADMINs create, list and revoke ingest keys; the token is shown once, at creation.

    A process remembers an active key for `remember_seconds` after looking it up (gateways post
    many batches a second); a key revoked by this process stops at once, one revoked by another
    API process within that time."""

    def __init__(self, keys: IngestKeyRepository, clock: Clock, remember_seconds: float = 2.0) -> None:
        self.keys = keys
        self.clock = clock
        self.remember_us = round(remember_seconds * 1_000_000)
        self._known: dict[str, tuple[IngestKey, int]] = {}  # token hash -> (key, until)
        self._revocations = 0  # revocations by this process: a lookup they overtook is not remembered

    def create(self, actor: User, name: str, regions: Sequence[str], all_regions: bool) -> tuple[IngestKey, str]:
        actor.require(Role.ADMIN)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = IngestKey(
            key_id=uuid.uuid4().hex,
            name=name.strip(),
            key_hash=hash_token(token),
            prefix=token[: len(TOKEN_PREFIX) + 6],
            regions=frozenset(r.strip() for r in regions if r.strip()),
            all_regions=all_regions,
            created_by=actor.user_id,
            created_at=self.clock.now_us(),
        )
        self.keys.add(key)
        return key, token

    def list(self, actor: User) -> list[IngestKey]:
        actor.require(Role.ADMIN)
        return self.keys.list()

    def revoke(self, actor: User, key_id: str) -> IngestKey:
        actor.require(Role.ADMIN)
        key = self.keys.get(key_id)
        if key is None:
            raise NotFound(f"no ingest key {key_id!r}")
        revoked = key.revoked(self.clock.now_us())
        self.keys.save(revoked)
        self._revocations += 1
        self._known.pop(key.key_hash, None)
        return revoked

    def authenticate(self, token: str) -> IngestKey:
        if not token:
            raise AuthenticationFailed("unknown or revoked ingest key")
        digest = hash_token(token.strip())
        now = self.clock.now_us()
        known = self._known.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        revocations = self._revocations
        key = self.keys.by_hash(digest)
        if key is None or not key.active:
            self._known.pop(digest, None)
            raise AuthenticationFailed("unknown or revoked ingest key")
        if revocations == self._revocations:  # else the key read may be revoked by now: not kept
            if len(self._known) >= 10_000:
                self._known.clear()
            self._known[digest] = (key, now + self.remember_us)
        return key


@dataclass(slots=True)
class IngestReport:
    """What became of a batch. `processed` is False when it was only queued (Kafka): then the
    stream workers decide, and only `queued` and `refused` are known."""

    received: int
    processed: bool
    queued: int = 0
    accepted: int = 0
    late: int = 0
    too_late: int = 0
    rejected: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    rejected_readings: list[tuple[int, str]] = field(default_factory=list)  # (index in the batch, reason)
    refused: list[tuple[int, str]] = field(default_factory=list)  # outside the key's regions: not ingested


REFUSED_REGION = "region_not_allowed"
REFUSED_UNKNOWN_REGION = "region_unknown"


class Ingest:
    def __init__(
        self,
        meters: MeterRegistry,
        clock: Clock,
        *,
        pipeline: OutcomeSource | None = None,
        producer: RawReadingProducer | None = None,
    ) -> None:
        if (pipeline is None) == (producer is None):
            raise ValueError("ingest runs either the embedded pipeline or a producer")
        self.meters = meters
        self.clock = clock
        self.pipeline = pipeline
        self.producer = producer
        self._registered: set[str] = set()

    def ingest(self, key: IngestKey, rows: Sequence[RawReading]) -> IngestReport:
        report = IngestReport(received=len(rows), processed=self.producer is None)
        indices, admitted, history = self._admit(key, rows, report)
        if not admitted:
            return report
        if self.producer is not None:
            self.producer.produce(admitted)
            report.queued = len(admitted)
            # The workers decide what becomes of the readings; the meters are claimed here, as the
            # embedded path claims them once its batch is stored: the first key to send a meter's
            # readings names its region (or its history does), and no later reading can.
            self._register(
                {
                    meter_id: history.get(meter_id, _text_region(row.extra))
                    for row in reversed(admitted)  # the first claim in the batch wins
                    if (meter_id := normalise_meter_id(row.meter_id))  # a missing id is rejected
                    and meter_id not in self._registered
                }
            )
            return report
        assert self.pipeline is not None
        outcomes = self.pipeline.outcomes(admitted)
        seen: dict[str, str | None] = {}
        registered = self._registered
        accepted = late = too_late = 0  # counted in locals: this loop runs once per reading
        for index, row, outcome in zip(indices, admitted, outcomes, strict=True):
            if outcome is ON_TIME or outcome is LATE:  # small ints: one object each
                accepted += 1
                if outcome is LATE:
                    late += 1
                meter_id = normalise_meter_id(row[0])
                if meter_id not in registered:
                    seen.setdefault(meter_id, history.get(meter_id, _text_region(row[3])))
            elif outcome is TOO_LATE:
                too_late += 1
            else:
                reason = str(outcome)
                report.rejected += 1
                report.rejected_by_reason[reason] += 1
                report.rejected_readings.append((index, reason))
        report.accepted, report.late, report.too_late = accepted, late, too_late
        self._register(seen)
        return report

    def _register(self, meters: dict[str, str | None]) -> None:
        """Register these meters (those registered already stay as they are). The readings are
        stored or queued: whatever happens here, the answer is the batch's 202 (a 503 would invite
        a retry that records them twice). A meter not registered now is tried again with its
        next reading."""
        if not meters:
            return
        try:
            self.meters.register_missing(meters, self.clock.now_us())
        except Exception:
            log.warning("meters of a batch not registered yet: %s", ", ".join(sorted(meters)[:5]), exc_info=True)
        else:
            if len(self._registered) > 1_000_000:  # a memory of meters already registered, bounded
                self._registered.clear()
            self._registered.update(meters)

    def _admit(
        self, key: IngestKey, rows: Sequence[RawReading], report: IngestReport
    ) -> tuple[list[int], list[RawReading], dict[str, str | None]]:
        """The readings inside the key's regions, with their indices in the batch (the rest
        refused), and the history regions of the unregistered meters the stream has seen (see
        MeterRegistry.history_regions): such a meter is in the region of its history, whatever a
        reading claims, until it is registered."""
        if key.all_regions:
            return list(range(len(rows))), list(rows), {}
        ids = {normalise_meter_id(row.meter_id) for row in rows}
        registered = self.meters.regions_of(ids)
        unregistered = ids.difference(registered)
        history = (
            {m: _region_text(r) for m, r in self.meters.history_regions(unregistered).items()} if unregistered else {}
        )
        known = {**history, **registered} if history else registered
        indices: list[int] = []
        admitted: list[RawReading] = []
        for index, row in enumerate(rows):
            meter_id = normalise_meter_id(row.meter_id)
            region = reading_region(known, meter_id, (row.extra or {}).get("region"))
            if key.allows_region(region):
                indices.append(index)
                admitted.append(row)
            else:
                report.refused.append((index, REFUSED_UNKNOWN_REGION if region is None else REFUSED_REGION))
        return indices, admitted, history


def _text_region(extra: dict | None) -> str | None:
    return _region_text((extra or {}).get("region"))


def _region_text(region: object) -> str | None:
    return region.strip() or None if isinstance(region, str) else None
