"""Contract tests of the API's ports: the in-memory fakes the unit tests use and the SQLAlchemy
adapters on SQLite and PostgreSQL give the same answers, so the fakes stay true."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from tests.integration.conftest import empty_stream_tables

from metrify.adapters.memory.api_queries import InMemoryFleetQueries
from metrify.adapters.memory.stream_store import InMemoryStreamStore, InMemoryStreamUnitOfWork
from metrify.adapters.memory.users import (
    InMemoryIngestKeyRepository,
    InMemoryMeterRegistry,
    InMemoryRevocationLog,
    InMemoryUserRepository,
)
from metrify.adapters.sqlalchemy import tables as t
from metrify.adapters.sqlalchemy.api_queries import SqlAlchemyFleetQueries
from metrify.adapters.sqlalchemy.engine import create_engine_for
from metrify.adapters.sqlalchemy.meters import SqlAlchemyMeterRegistry
from metrify.adapters.sqlalchemy.unit_of_work import SqlAlchemyStreamUnitOfWork
from metrify.adapters.sqlalchemy.users import (
    SqlAlchemyIngestKeyRepository,
    SqlAlchemyRevocationLog,
    SqlAlchemyUserRepository,
)
from metrify.adapters.system import SystemClock
from metrify.application.errors import AlreadyExists
from metrify.application.queries import RegionWindow, Subjects, TimeRange
from metrify.application.simulator import FleetProfile, fleet_rows, region_of
from metrify.application.stream import StreamPipeline
from metrify.application.users import LastActiveAdmin
from metrify.domain.ingest_keys import IngestKey
from metrify.domain.readings import Meter, RawReading
from metrify.domain.stream.config import US, StreamConfig
from metrify.domain.users import Role, Scope, User

pytestmark = pytest.mark.integration


@dataclass
class Ports:
    users: Any
    keys: Any
    meters: Any
    queries: Any
    pipeline: StreamPipeline
    revocations: Any = None
    url: str | None = None  # the database's, for a second connection (none for the fakes)


def memory_ports() -> Ports:
    store = InMemoryStreamStore()
    meters = InMemoryMeterRegistry(store)
    pipeline = StreamPipeline(StreamConfig(), 2, lambda: InMemoryStreamUnitOfWork(store), SystemClock())
    queries = InMemoryFleetQueries(store, meters)
    return Ports(
        InMemoryUserRepository(), InMemoryIngestKeyRepository(), meters, queries, pipeline, InMemoryRevocationLog()
    )


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def ports(request: pytest.FixtureRequest) -> Iterator[Ports]:
    if request.param == "memory":
        yield memory_ports()
        return
    url = request.getfixturevalue("migrated_sqlite_url" if request.param == "sqlite" else "migrated_postgres_url")
    empty_stream_tables(url)
    engine = create_engine_for(url)
    with engine.begin() as connection:
        for table in (*t.API_TABLES, t.meters):
            connection.execute(table.delete())
    pipeline = StreamPipeline(StreamConfig(), 2, lambda: SqlAlchemyStreamUnitOfWork(engine), SystemClock())
    yield Ports(
        SqlAlchemyUserRepository(engine),
        SqlAlchemyIngestKeyRepository(engine),
        SqlAlchemyMeterRegistry(engine),
        SqlAlchemyFleetQueries(engine),
        pipeline,
        SqlAlchemyRevocationLog(engine),
        url,
    )
    engine.dispose()


def user(n: int, role: Role = Role.USER, **kw: Any) -> User:
    return User(f"id-{n}", f"user{n}@example.com", role, f"hash-{n}", created_at=n, updated_at=n, **kw)


def unversioned(stored: User | None) -> User | None:
    """The user without the version the store gives each save."""
    return None if stored is None else replace(stored, updated_at=0)


def test_users_are_stored_found_changed_and_listed_alike(ports: Ports) -> None:
    repo = ports.users
    repo.add(user(1, Role.USER, meters=frozenset({"M1", "M2"})))
    repo.add(user(2, Role.OPERATOR, regions=frozenset({"north"})))
    repo.add(user(3, Role.ADMIN))
    with pytest.raises(AlreadyExists):
        repo.add(User("other", "user1@example.com", Role.ADMIN, "h"))
    assert repo.get("id-1") == user(1, Role.USER, meters=frozenset({"M1", "M2"}))
    assert repo.by_email("user2@example.com") == user(2, Role.OPERATOR, regions=frozenset({"north"}))
    assert repo.get("nobody") is None and repo.by_email("nobody@example.com") is None
    before = repo.get("id-1")
    changed = replace(
        before.changed(role=Role.OPERATOR, regions=frozenset({"east", "west"}), active=False), security_stamp="s2"
    )
    assert repo.save(changed, before) is True
    assert unversioned(repo.get("id-1")) == unversioned(changed)
    assert repo.get("id-1").updated_at > before.updated_at
    assert [u.email for u in repo.list(None, 2)] == ["user1@example.com", "user2@example.com"]
    assert [u.email for u in repo.list("user2@example.com", 5)] == ["user3@example.com"]
    assert repo.count_active_admins() == 1


def test_a_password_hash_is_replaced_only_while_it_is_the_one_expected(ports: Ports) -> None:
    repo = ports.users
    repo.add(user(1, Role.OPERATOR, regions=frozenset({"north"}), security_stamp="s1"))
    before = repo.get("id-1")
    repo.save(before.changed(active=False), before)
    assert repo.replace_password_hash("id-1", "hash-1", "hash-1b") is True
    assert unversioned(repo.get("id-1")) == unversioned(
        user(1, Role.OPERATOR, regions=frozenset({"north"}), security_stamp="s1").changed(
            active=False, password_hash="hash-1b"
        )
    )  # nothing else changed, the security stamp neither
    assert repo.replace_password_hash("id-1", "hash-1", "hash-1c") is False
    assert repo.replace_password_hash("nobody", "hash-1b", "x") is False
    assert repo.get("id-1").password_hash == "hash-1b"


def test_a_save_over_a_user_changed_meanwhile_is_refused_alike(ports: Ports) -> None:
    repo = ports.users
    repo.add(user(1, Role.OPERATOR, regions=frozenset({"north"})))
    read_by_one, read_by_other = repo.get("id-1"), repo.get("id-1")
    assert repo.save(read_by_one.changed(regions=frozenset({"east"})), read_by_one) is True
    assert repo.save(read_by_other.changed(active=False), read_by_other) is False  # would undo "east"
    assert repo.get("id-1").regions == {"east"} and repo.get("id-1").active
    again = repo.get("id-1")
    assert repo.save(again.changed(active=False), again) is True
    assert repo.get("id-1").regions == {"east"} and not repo.get("id-1").active
    assert repo.save(again, again) is False  # gone stale with that save
    assert repo.save(user(9), user(9)) is False  # no such user


def test_no_save_leaves_no_active_admin_alike(ports: Ports) -> None:
    repo = ports.users
    repo.add(user(1, Role.ADMIN))
    repo.add(user(2, Role.ADMIN))
    first, second = repo.get("id-1"), repo.get("id-2")
    assert repo.save(first.changed(active=False), first, keep_an_admin=True) is True
    with pytest.raises(LastActiveAdmin):
        repo.save(second.changed(role=Role.OPERATOR), second, keep_an_admin=True)
    assert repo.get("id-2") == second  # nothing of it saved
    assert repo.count_active_admins() == 1


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_two_admins_demoting_each_other_at_once_leave_one(request: pytest.FixtureRequest, database: str) -> None:
    """The other demotion is under way in another transaction (not committed yet) while this
    one is saved: counting the ADMINs before it commits would see two and let both through."""
    url = request.getfixturevalue("migrated_sqlite_url" if database == "sqlite" else "migrated_postgres_url")
    engine = create_engine_for(url)
    try:
        with engine.begin() as connection:
            for table in (*t.API_TABLES, t.meters):
                connection.execute(table.delete())
        repo = SqlAlchemyUserRepository(engine)
        repo.add(user(1, Role.ADMIN))
        repo.add(user(2, Role.ADMIN))
        second = repo.get("id-2")
        outcome: list[object] = []
        with engine.connect() as other:
            first = repo.get("id-1")
            other.execute(
                t.users.update()
                .where(t.users.c.user_id == "id-1")
                .values(active=False, updated_at=first.updated_at + 1)
            )

            def demote_second() -> None:
                try:
                    outcome.append(repo.save(second.changed(active=False), second, keep_an_admin=True))
                except Exception as exc:  # noqa: BLE001 - the outcome under test
                    outcome.append(exc)

            racer = threading.Thread(target=demote_second)
            racer.start()
            racer.join(0.5)
            other.commit()
            racer.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], LastActiveAdmin), outcome
        assert repo.count_active_admins() == 1 and repo.get("id-2").active
    finally:
        engine.dispose()


def test_revocations_are_kept_until_they_expire_alike(ports: Ports) -> None:
    log = ports.revocations
    log.append("revoked:a", 100, 0)
    log.append("revoked-session:s", 50, 0)
    log.append("revoked-session:s", 80, 10)  # revoked again, for longer: the later expiry wins
    log.append("revoked-session:s", 60, 10)  # ... and an earlier one does not shorten it
    assert log.live(0) == [("revoked-session:s", 80), ("revoked:a", 100)]
    assert log.live(80) == [("revoked:a", 100)]
    log.append("revoked:b", 300, 150)  # the expired ones may go now
    assert log.live(0) == [("revoked:b", 300)]


def test_ingest_keys_are_found_by_hash_and_revoked_alike(ports: Ports) -> None:
    repo = ports.keys
    scoped = IngestKey("k1", "gw", "h1", "mtk_ab", frozenset({"north", "south"}), False, "admin", 10)
    everything = IngestKey("k2", "all", "h2", "mtk_cd", frozenset(), True, "admin", 20)
    repo.add(everything)
    repo.add(scoped)
    assert repo.by_hash("h1") == scoped and repo.get("k2") == everything and repo.by_hash("nope") is None
    repo.save(scoped.revoked(99))
    assert repo.get("k1").revoked_at == 99 and not repo.get("k1").active
    assert [k.key_id for k in repo.list()] == ["k1", "k2"]


def test_the_meter_registry_lists_by_scope_and_registers_only_what_is_missing(ports: Ports) -> None:
    registry = ports.meters
    registry.add(Meter("A", "north", 1800), 1)
    registry.add(Meter("B", "south"), 2)
    registry.add(Meter("C", None), 3)
    with pytest.raises(AlreadyExists):
        registry.add(Meter("A", "east"), 4)
    registry.register_missing({"A": "west", "D": "north", "E": None}, 5)
    assert registry.get("A") == Meter("A", "north", 1800) and registry.get("D") == Meter("D", "north")
    registry.save(Meter("B", "north", 900))
    everything = Scope(everything=True)
    assert [m.meter_id for m in registry.list(everything, None, None, 10)] == ["A", "B", "C", "D", "E"]
    assert [m.meter_id for m in registry.list(everything, None, "B", 2)] == ["C", "D"]
    assert [m.meter_id for m in registry.list(Scope(regions=frozenset({"north"})), None, None, 10)] == ["A", "B", "D"]
    assert [m.meter_id for m in registry.list(Scope(meters=frozenset({"C", "Z"})), None, None, 10)] == ["C"]
    assert [m.meter_id for m in registry.list(everything, "north", None, 10)] == ["A", "B", "D"]
    assert registry.list(Scope(), None, None, 10) == []
    assert registry.regions_of(["A", "C", "Z"]) == {"A": "north", "C": None}
    assert registry.intervals() == {"A": 1800, "B": 900}  # what the stream takes for these meters


def test_the_registry_tells_the_region_of_a_meter_s_history_alike(ports: Ports) -> None:
    ports.pipeline.load()
    ports.pipeline.process(
        [
            RawReading("H-1", "2024-03-04T10:00:00Z", "0.5", extra={"region": "south"}),
            RawReading("H-1", "2024-03-04T12:00:00Z", "0.5", extra={"region": "north"}),  # the latest
            RawReading("H-1", "2024-03-04T11:00:00Z", "0.5", extra={"region": "east"}),  # late
            RawReading("H-2", "2024-03-04T12:00:00Z", "0.5"),
            RawReading("H-3", "never", "0.5"),  # rejected only
            RawReading("H-4", "2024-03-04T12:00:00Z", "0.5", extra={"region": 7}),  # stored as text
        ]
    )
    wanted = ["H-1", "H-2", "H-3", "H-4", "NONE"]
    assert ports.meters.history_regions(wanted) == {"H-1": "north", "H-2": None, "H-3": None, "H-4": "7"}
    assert ports.meters.history_regions([]) == {}


PROFILE = FleetProfile(meters=24, days=2, seed=5)


def load_fleet(ports: Ports) -> None:
    for index in range(PROFILE.meters):
        ports.meters.add(Meter(f"MTR-{index:05d}", region_of(index, PROFILE)), 0)
    rows = [RawReading(m, ts, kwh) for m, ts, kwh in fleet_rows(PROFILE)]
    ports.pipeline.load()
    for start in range(0, len(rows), 500):
        ports.pipeline.process(rows[start : start + 500])


def pages(fetch: Any, key: Any, size: int = 7) -> list:
    """Every item, fetched a page of `size` at a time, each page after the previous page's last key."""
    items, after = [], None
    while True:
        page = fetch(after, size)
        items += page
        if len(page) < size:
            return items
        after = key(page[-1])


def read_side(ports: Ports) -> dict[str, Any]:
    """Every query of the read side, with scopes, filters and pages, over the same fleet."""
    load_fleet(ports)
    q = ports.queries
    day = 1_709_510_400 * US
    when = TimeRange(day + 6 * 3600 * US, day + 30 * 3600 * US)
    north = Subjects(Scope(regions=frozenset({"REGION-4"})))  # the meter silent for good is there
    user = Subjects(Scope(meters=frozenset({"MTR-00003", "MTR-00007"})))
    everyone = Subjects(Scope(everything=True))
    late_key = lambda r: (r.meter_id, r.timestamp, r.partition, r.position)  # noqa: E731
    gap_key = lambda g: (g.meter_id, g.missing_from)  # noqa: E731
    arrival = lambda r: (r.partition, r.position)  # noqa: E731
    return {
        "readings": pages(lambda a, n: q.readings("MTR-00002", when, a, n), lambda r: r.timestamp),
        "aggregates": pages(lambda a, n: q.aggregates("MTR-00002", 3600 * US, when, a, n), lambda w: w.window_start),
        "region": pages(lambda a, n: q.region_aggregates("REGION-2", 3600 * US, when, a, n), lambda w: w.window_start),
        # 15m windows of 30-minute meters: every other window is empty, so a page's span of
        # windows holds fewer than a page and the query goes on to the next span
        "region, 15m, all time": pages(
            lambda a, n: q.region_aggregates("REGION-1", 900 * US, TimeRange(), a, n), lambda w: w.window_start
        ),
        "region, after the last cursor there can be": q.region_aggregates("REGION-1", 900 * US, when, 2**63 - 1, 5),
        "region, 1h, from": pages(
            lambda a, n: q.region_aggregates("REGION-3", 3600 * US, TimeRange(start=day + 40 * 3600 * US), a, n),
            lambda w: w.window_start,
            size=1,
        ),
        "gaps": pages(lambda a, n: q.gaps(everyone, None, TimeRange(), a, n), gap_key),
        "open gaps in north": pages(lambda a, n: q.gaps(north, "open", TimeRange(start=when.start), a, n), gap_key),
        "late": pages(lambda a, n: q.too_late(everyone, TimeRange(), a, n), late_key),
        "rejected": pages(lambda a, n: q.rejected(everyone, None, TimeRange(), a, n), arrival),
        "duplicates of a user": pages(lambda a, n: q.rejected(user, "duplicate", TimeRange(), a, n), arrival),
        "counts": q.rejected_counts(everyone, TimeRange()),
        "counts in north": q.rejected_counts(north, when),
        "summary": q.summary(everyone),
        "summary of north": q.summary(north),
        "summary of a user's meters": q.summary(user),
    }


def test_the_read_side_gives_the_same_pages_as_the_fake(ports: Ports) -> None:
    answers = read_side(ports)
    assert answers["readings"] and answers["aggregates"] and answers["region"] and answers["gaps"]
    assert len(answers["region, 15m, all time"]) > 50 and len(answers["region, 1h, from"]) >= 2
    assert answers["late"] and answers["rejected"] and answers["counts"] and answers["open gaps in north"]
    assert all(w.meters == 6 for w in answers["region"][:-1])
    whole, north = answers["summary"]["tables"], answers["summary of north"]["tables"]
    assert all(0 < north[name] < whole[name] for name in ("readings", "aggregates", "meter_states"))
    expected = read_side(memory_ports())
    for name, value in answers.items():
        if name.startswith("region"):
            assert _same_region_windows(value, expected[name]), (value, expected[name])
        else:
            assert value == expected[name], (name, value, expected[name])


def _same_region_windows(got: list[RegionWindow], want: list[RegionWindow]) -> bool:
    """Equal but for the last bits of each kWh sum: SQL adds a region's meters up in no set order
    (the storage's), and a float sum's last bits depend on the order."""
    return len(got) == len(want) and all(
        replace(g, sum_kwh=0.0) == replace(w, sum_kwh=0.0) and math.isclose(g.sum_kwh, w.sum_kwh, rel_tol=1e-12)
        for g, w in zip(got, want, strict=True)
    )
