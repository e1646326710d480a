"""The meter registry over the API: list, read, register and update meters, each limited by role.

A meter's region decides which OPERATORs see it (domain.users). Ingest registers a meter it has
not seen before with the region its first accepted reading reports, so that the registry knows
every meter that streams in over HTTP.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

from metrify.application.errors import AlreadyExists, InvalidRequest, NotFound
from metrify.application.ports import Clock
from metrify.domain.readings import Meter
from metrify.domain.users import Scope, User

_UNSET = object()


class MeterRegistry(Protocol):
    def get(self, meter_id: str) -> Meter | None: ...

    def add(self, meter: Meter, created_at: int) -> None:
        """Register a new meter; AlreadyExists when the id is taken."""
        ...

    def save(self, meter: Meter) -> None: ...

    def list(self, scope: Scope, region: str | None, after: str | None, limit: int) -> list[Meter]:
        """Meters the scope allows (of one region when given), ordered by id, those after `after` only."""
        ...

    def regions_of(self, meter_ids: Collection[str]) -> dict[str, str | None]:
        """The registered ones among these meters, with their regions."""
        ...

    def register_missing(self, meters: Mapping[str, str | None], created_at: int) -> None:
        """Register the meters not registered yet, with these regions; leave the others as they are."""
        ...

    def history_regions(self, meter_ids: Collection[str]) -> dict[str, str | None]:
        """Those of these meters the stream has stored readings of (accepted, rejected or too
        late), registered or not, with the region their latest accepted reading carried (None
        when none did, or none was accepted). Whoever claims an unregistered meter takes its
        history with it: this is the region that history belongs to."""
        ...

    def intervals(self) -> dict[str, int]:
        """The expected interval, in seconds, of every meter registered with one."""
        ...


def stream_intervals(registry: MeterRegistry) -> dict[str, int]:
    """The registry's intervals as the stream core takes them (microseconds by meter id): §3's
    "expected interval I (per meter when the meter registry gives one)". A meter takes its
    interval when the stream first meets it; one it holds state for keeps the interval it had."""
    return {meter_id: seconds * 1_000_000 for meter_id, seconds in registry.intervals().items()}


def _region(region: object) -> str | None:
    """Regions are compared trimmed; an empty one is none."""
    return region.strip() or None if isinstance(region, str) else None


def check_interval(seconds: int | None) -> None:
    if seconds is not None and not 1 <= seconds <= 86400 * 31:
        raise InvalidRequest("the expected interval is between 1 second and 31 days")


class MeterService:
    def __init__(self, registry: MeterRegistry, clock: Clock) -> None:
        self.registry = registry
        self.clock = clock

    def visible(self, user: User, meter_id: str) -> Meter:
        """The registered meter, when the user may see it; NotFound otherwise (no existence leak)."""
        meter = self.registry.get(meter_id)
        if meter is None or not user.scope.allows_meter(meter.meter_id, meter.region):
            raise NotFound(f"no meter {meter_id!r}")
        return meter

    def require_visible(self, user: User, meter_id: str) -> None:
        """Like `visible`, but an ADMIN (or a USER it is assigned to) may ask about an unregistered
        meter too: its readings exist whether or not the registry knows it."""
        if user.scope.everything or meter_id in user.scope.meters:
            return
        self.visible(user, meter_id)

    def list(self, user: User, region: str | None, after: str | None, limit: int) -> list[Meter]:
        if region is not None:
            user.require_region(region)
        return self.registry.list(user.scope, region, after, limit)

    def register(self, user: User, meter_id: str, region: str | None, interval_seconds: int | None) -> Meter:
        meter_id = meter_id.strip()
        region = _region(region)
        if not meter_id:
            raise InvalidRequest("a meter id cannot be empty")
        check_interval(interval_seconds)
        user.require_meter_management(region)
        if self.registry.get(meter_id) is not None:
            raise AlreadyExists(f"meter {meter_id!r} is registered already")
        if not user.scope.everything:
            # An unregistered meter's stored readings are no OPERATOR's but an ADMIN's: registering
            # it would show them to whoever did, unless they are of that OPERATOR's regions.
            history = self.registry.history_regions([meter_id])
            if meter_id in history:
                user.require_meter_management(history[meter_id])
        meter = Meter(meter_id, region, interval_seconds)
        self.registry.add(meter, self.clock.now_us())
        return meter

    def update(self, user: User, meter_id: str, *, region: object = _UNSET, interval_seconds: object = _UNSET) -> Meter:
        """Change a meter's region or expected interval (None clears it); an OPERATOR needs both
        the old and the new region."""
        meter = self.visible(user, meter_id)
        new_region = meter.region if region is _UNSET else _region(region)
        new_interval = meter.interval_seconds if interval_seconds is _UNSET else interval_seconds
        assert new_region is None or isinstance(new_region, str)
        assert new_interval is None or isinstance(new_interval, int)
        check_interval(new_interval)
        user.require_meter_management(meter.region, new_region)
        changed = Meter(meter.meter_id, new_region, new_interval)
        self.registry.save(changed)
        return changed
