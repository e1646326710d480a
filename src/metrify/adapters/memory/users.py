"""Dict-backed users, ingest keys and meter registry: the fakes the API's unit tests run on, kept
true to the SQLAlchemy adapters by the same contract tests."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import replace

from metrify.adapters.memory.stream_store import InMemoryStreamStore
from metrify.application.errors import AlreadyExists
from metrify.application.users import LastActiveAdmin
from metrify.domain.ingest_keys import IngestKey
from metrify.domain.readings import Meter
from metrify.domain.stream.events import ReadingAccepted
from metrify.domain.users import Role, Scope, User


class InMemoryUserRepository:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self._lock = threading.Lock()

    def get(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    def by_email(self, email: str) -> User | None:
        return next((u for u in self.users.values() if u.email == email), None)

    def add(self, user: User) -> None:
        with self._lock:
            if self.by_email(user.email) is not None or user.user_id in self.users:
                raise AlreadyExists(f"a user with the email {user.email} exists already")
            self.users[user.user_id] = replace(user, updated_at=user.created_at)  # as the database stores it

    def save(self, user: User, previous: User, *, keep_an_admin: bool = False) -> bool:
        with self._lock:
            stored = self.users.get(user.user_id)
            if stored is None or stored.updated_at != previous.updated_at:
                return False
            saved = replace(user, updated_at=previous.updated_at + 1)
            others = sum(
                1 for u in self.users.values() if u.user_id != user.user_id and u.role is Role.ADMIN and u.active
            )
            if keep_an_admin and others + (saved.role is Role.ADMIN and saved.active) == 0:
                raise LastActiveAdmin
            self.users[user.user_id] = saved
            return True

    def replace_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> bool:
        with self._lock:
            user = self.users.get(user_id)
            if user is None or user.password_hash != old_hash:
                return False
            self.users[user_id] = replace(user.changed(password_hash=new_hash), updated_at=user.updated_at + 1)
            return True

    def list(self, after_email: str | None, limit: int) -> list[User]:
        ordered = sorted(self.users.values(), key=lambda u: u.email)
        return [u for u in ordered if after_email is None or u.email > after_email][:limit]

    def count_active_admins(self) -> int:
        return sum(1 for u in self.users.values() if u.role is Role.ADMIN and u.active)


class InMemoryIngestKeyRepository:
    def __init__(self) -> None:
        self.keys: dict[str, IngestKey] = {}

    def add(self, key: IngestKey) -> None:
        if key.key_id in self.keys or self.by_hash(key.key_hash) is not None:
            raise AlreadyExists(f"ingest key {key.key_id!r} exists already")
        self.keys[key.key_id] = key

    def get(self, key_id: str) -> IngestKey | None:
        return self.keys.get(key_id)

    def by_hash(self, key_hash: str) -> IngestKey | None:
        return next((k for k in self.keys.values() if k.key_hash == key_hash), None)

    def save(self, key: IngestKey) -> None:
        if key.key_id in self.keys:
            self.keys[key.key_id] = key

    def list(self) -> list[IngestKey]:
        return sorted(self.keys.values(), key=lambda k: (k.created_at, k.key_id))


class InMemoryMeterRegistry:
    def __init__(self, store: InMemoryStreamStore | None = None) -> None:
        self.meters: dict[str, Meter] = {}
        self.store = store  # the stream's outcomes, for history_regions (none: no history)
        self._lock = threading.Lock()

    def get(self, meter_id: str) -> Meter | None:
        return self.meters.get(meter_id)

    def intervals(self) -> dict[str, int]:
        return {m.meter_id: m.interval_seconds for m in list(self.meters.values()) if m.interval_seconds is not None}

    def add(self, meter: Meter, created_at: int) -> None:
        with self._lock:
            if meter.meter_id in self.meters:
                raise AlreadyExists(f"meter {meter.meter_id!r} is registered already")
            self.meters[meter.meter_id] = meter

    def save(self, meter: Meter) -> None:
        with self._lock:
            if meter.meter_id in self.meters:
                self.meters[meter.meter_id] = meter

    def list(self, scope: Scope, region: str | None, after: str | None, limit: int) -> list[Meter]:
        chosen = (
            m
            for m in sorted(self.meters.values(), key=lambda m: m.meter_id)
            if scope.allows_meter(m.meter_id, m.region)
            and (region is None or m.region == region)
            and (after is None or m.meter_id > after)
        )
        return list(chosen)[:limit]

    def regions_of(self, meter_ids: Collection[str]) -> dict[str, str | None]:
        return {m: self.meters[m].region for m in meter_ids if m in self.meters}

    def history_regions(self, meter_ids: Collection[str]) -> dict[str, str | None]:
        if self.store is None:
            return {}
        wanted = set(meter_ids)
        found: dict[str, str | None] = {}
        for rejected in self.store.rejected.values():
            if rejected.meter_id in wanted:
                found[rejected.meter_id] = None
        for too_late in self.store.too_late.values():
            if too_late.meter_id in wanted:
                found[too_late.meter_id] = None
        latest: dict[str, ReadingAccepted] = {}
        for reading in self.store.readings.values():
            if reading.meter_id in wanted and (
                reading.meter_id not in latest or reading.timestamp > latest[reading.meter_id].timestamp
            ):
                latest[reading.meter_id] = reading
        for meter_id, reading in latest.items():
            region = (reading.extra or {}).get("region")
            found[meter_id] = None if region is None else str(region)  # as the database stores it
        return found

    def register_missing(self, meters: Mapping[str, str | None], created_at: int) -> None:
        with self._lock:
            for meter_id, region in meters.items():
                self.meters.setdefault(meter_id, Meter(meter_id, region))


class InMemoryRevocationLog:
    """The revocations a restarted process reads back, in a dict that outlives the API's cache."""

    def __init__(self) -> None:
        self.revocations: dict[str, int] = {}
        self._lock = threading.Lock()

    def append(self, key: str, expires_at_us: int, now_us: int) -> None:
        with self._lock:
            self.revocations[key] = max(expires_at_us, self.revocations.get(key, expires_at_us))
            for stale in [k for k, expires in self.revocations.items() if expires <= now_us]:
                del self.revocations[stale]

    def live(self, now_us: int) -> list[tuple[str, int]]:
        return sorted((k, expires) for k, expires in self.revocations.items() if expires > now_us)
