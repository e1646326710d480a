"""The meter registry in the database, and the SQL form of a user's scope (domain.users.Scope)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from metrify.adapters.sqlalchemy import tables as t
from metrify.adapters.sqlalchemy.errors import transient_errors
from metrify.adapters.sqlalchemy.hours import latest_regions
from metrify.adapters.sqlalchemy.pg_text import NUL, without_nul
from metrify.application.errors import AlreadyExists
from metrify.domain.readings import Meter
from metrify.domain.users import Scope

_IN_CHUNK = 900  # bound parameters per IN list: SQLite's limit is far above, but plans stay small


def meters_of_regions(regions: Collection[str]) -> sa.Select[Any]:
    return sa.select(t.meters.c.meter_id).where(t.meters.c.region.in_(sorted(regions)))


def scope_filter(meter: sa.ColumnElement[Any], scope: Scope) -> sa.ColumnElement[bool] | None:
    """The condition on a meter id column that keeps what the scope allows (None: everything)."""
    if scope.everything:
        return None
    conditions: list[sa.ColumnElement[bool]] = []
    if scope.meters:
        conditions.append(meter.in_(sorted(scope.meters)))
    if scope.regions:
        conditions.append(meter.in_(meters_of_regions(scope.regions)))
    if not conditions:
        return sa.false()
    return sa.or_(*conditions)


V = TypeVar("V")


def _as_asked(found: dict[str, V], asked: Sequence[str], dialect: str) -> dict[str, V]:
    """What was found for some ids, keyed by the ids as asked: on PostgreSQL an id that holds NUL
    is stored, found and given back with U+FFFD in its place (pg_text.py)."""
    if dialect != "postgresql" or NUL not in "".join(asked):
        return found
    return {meter_id: found[held] for meter_id in asked if (held := without_nul(meter_id)) in found}


def _meter(row: Any) -> Meter:
    return Meter(row.meter_id, row.region, row.interval_seconds)


class SqlAlchemyMeterRegistry:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get(self, meter_id: str) -> Meter | None:
        with transient_errors(), self.engine.connect() as connection:
            row = connection.execute(sa.select(t.meters).where(t.meters.c.meter_id == meter_id)).first()
        return None if row is None else _meter(row)

    def add(self, meter: Meter, created_at: int) -> None:
        try:
            with transient_errors(), self.engine.begin() as connection:
                connection.execute(
                    t.meters.insert().values(
                        meter_id=meter.meter_id,
                        region=meter.region,
                        interval_seconds=meter.interval_seconds,
                        created_at=created_at,
                    )
                )
        except sa.exc.IntegrityError:
            raise AlreadyExists(f"meter {meter.meter_id!r} is registered already") from None

    def save(self, meter: Meter) -> None:
        with transient_errors(), self.engine.begin() as connection:
            connection.execute(
                t.meters.update()
                .where(t.meters.c.meter_id == meter.meter_id)
                .values(region=meter.region, interval_seconds=meter.interval_seconds)
            )

    def intervals(self) -> dict[str, int]:
        c = t.meters.c
        stmt = sa.select(c.meter_id, c.interval_seconds).where(c.interval_seconds.is_not(None))
        with transient_errors(), self.engine.connect() as connection:
            return {meter_id: seconds for meter_id, seconds in connection.execute(stmt)}

    def list(self, scope: Scope, region: str | None, after: str | None, limit: int) -> list[Meter]:
        c = t.meters.c
        stmt = sa.select(t.meters).order_by(c.meter_id).limit(limit)
        allowed = scope_filter(c.meter_id, scope)
        if allowed is not None:
            stmt = stmt.where(allowed)
        if region is not None:
            stmt = stmt.where(c.region == region)
        if after is not None:
            stmt = stmt.where(c.meter_id > after)
        with transient_errors(), self.engine.connect() as connection:
            return [_meter(row) for row in connection.execute(stmt)]

    def regions_of(self, meter_ids: Collection[str]) -> dict[str, str | None]:
        ids = sorted(meter_ids)
        found: dict[str, str | None] = {}
        c = t.meters.c
        with transient_errors(), self.engine.connect() as connection:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                found.update(connection.execute(sa.select(c.meter_id, c.region).where(c.meter_id.in_(chunk))).all())
        return _as_asked(found, ids, self.engine.dialect.name)

    def history_regions(self, meter_ids: Collection[str]) -> dict[str, str | None]:
        ids = sorted(meter_ids)
        found: dict[str, str | None] = {}
        r, latest = t.readings.c, t.readings.alias("latest").c
        with transient_errors(), self.engine.connect() as connection:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                for table in (t.rejected_readings, t.too_late_readings):
                    stmt = sa.select(table.c.meter_id).where(table.c.meter_id.in_(chunk)).distinct()
                    found.update((meter_id, None) for meter_id in connection.execute(stmt).scalars())
                if connection.dialect.name == "sqlite":  # readings found by hour: see hours.py
                    found.update(latest_regions(connection, chunk))
                    continue
                last_ts = sa.select(sa.func.max(latest.ts)).where(latest.meter_id == r.meter_id).scalar_subquery()
                stmt = sa.select(r.meter_id, r.region).where(r.meter_id.in_(chunk), r.ts == last_ts)
                found.update((meter_id, region) for meter_id, region in connection.execute(stmt))
        return _as_asked(found, ids, self.engine.dialect.name)

    def register_missing(self, meters: Mapping[str, str | None], created_at: int) -> None:
        if not meters:
            return
        rows = [
            {"meter_id": m, "region": region, "interval_seconds": None, "created_at": created_at}
            for m, region in sorted(meters.items())
        ]
        with transient_errors(), self.engine.begin() as connection:
            insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
            connection.execute(insert(t.meters).on_conflict_do_nothing(index_elements=["meter_id"]), rows)
