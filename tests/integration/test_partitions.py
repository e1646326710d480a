"""Time partitions and retention on the real PostgreSQL (and SQLite's row-deleting retention):
partitions created ahead and on the fly, nothing lost when a month has no partition, writes still
idempotent on partitioned tables, whole old partitions dropped (a dry run drops nothing), and the
migration keeping every row both ways."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from tests.integration.cli import metrify, metrify_env
from tests.integration.test_storage_contract import MIXED_BATCH, everything, expected_after, memory_store, reading

from metrify.adapters.probes import storage_features
from metrify.adapters.sqlalchemy import (
    SqlAlchemyOutcomeQueries,
    SqlAlchemyStreamUnitOfWork,
    create_engine_for,
    migrations,
    partitions,
)
from metrify.adapters.sqlalchemy.partitions import (
    PARTITION_SCHEMA,
    SqlAlchemyStorageMaintenance,
    StorageBusyError,
    ensure_partitions,
    month_bounds,
    to_us,
)
from metrify.adapters.sqlalchemy.sink import PostgresWriter
from metrify.application.ports import ExportFilter
from metrify.application.storage import RetentionPolicy, run_storage_maintenance
from metrify.domain.stream.events import ReadingRejected, ReadingTooLate, WindowUpdated

pytestmark = pytest.mark.integration

US = 1_000_000
HOUR = 3600 * US
DAY = 86400 * US
TABLES = ("readings", "rejected_readings", "too_late_readings", "aggregates")


def at(year: int, month: int, day: int = 1, hour: int = 0) -> int:
    return to_us(datetime(year, month, day, hour, tzinfo=UTC))


class Db:
    """A migrated database with its engine, units of work and queries."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine_for(url)
        self.queries = SqlAlchemyOutcomeQueries(self.engine)
        self.storage = SqlAlchemyStorageMaintenance(self.engine)

    def write(self, events: list[Any], now_us: int | None = None) -> None:
        with SqlAlchemyStreamUnitOfWork(self.engine, (lambda: now_us) if now_us is not None else None) as uow:
            uow.outcomes.add_events(events)
            uow.commit()

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(sa.text(sql), params))

    def where_rows_are(self, table: str) -> dict[str, int]:
        """Rows per partition (its name without the schema)."""
        found = self.rows(f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1")
        return {name.split(".")[-1]: n for name, n in found}

    def months(self, table: str) -> list[str]:
        return [p.name.split(".")[-1] for p in self.storage.partitions() if p.table == table and p.kind == "month"]


@pytest.fixture
def db(fresh_postgres_url: str) -> Iterator[Db]:
    migrations.upgrade(fresh_postgres_url)
    database = Db(fresh_postgres_url)
    yield database
    partitions.forget(database.engine)
    database.engine.dispose()


# ------------------------------------------------------------------------------- the migration


def test_the_migration_partitions_the_time_series_tables_by_month(db: Db) -> None:
    kinds = dict(db.rows("SELECT relname, relkind FROM pg_class WHERE relname = ANY(:t)", t=list(TABLES)))
    assert kinds == dict.fromkeys(TABLES, "p")
    assert db.storage.layout() == "native"
    now = datetime.now(UTC)
    this_month = f"p{now:%Y%m}01"
    for table in TABLES:
        names = [p.name for p in db.storage.partitions() if p.table == table]
        assert all(name.startswith(f"{PARTITION_SCHEMA}.{table}_") for name in names)
        assert f"{PARTITION_SCHEMA}.{table}_default" in names
        assert f"{table}_{this_month}" in db.months(table)
        assert len(db.months(table)) == 5  # the previous, this and three more months
    # The public schema lists the logical tables only (the partitions live in their own schema).
    assert not set(sa.inspect(db.engine).get_table_names()) & {n.split(".")[-1] for n in db.months("readings")}


def test_upgrade_and_downgrade_keep_every_row(fresh_postgres_url: str) -> None:
    migrations.upgrade(fresh_postgres_url, "0005_users_and_ingest_keys")
    db = Db(fresh_postgres_url)
    try:
        db.write(MIXED_BATCH, now_us=at(2024, 3, 5))
        before = everything_of(db)
        migrations.upgrade(fresh_postgres_url)
        assert everything_of(db) == before
        # the months holding data got partitions of their own (nothing waits in DEFAULT)
        assert db.where_rows_are("readings") == {"readings_p20240301": 35}
        assert set(db.where_rows_are("rejected_readings")) == {"rejected_readings_p20240301"}
        migrations.downgrade(fresh_postgres_url, "0005_users_and_ingest_keys")
        assert db.scalar("SELECT relkind FROM pg_class WHERE relname = 'readings'") == "r"
        assert db.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = :s", s=PARTITION_SCHEMA) == 0
        assert everything_of(db) == before
    finally:
        partitions.forget(db.engine)
        db.engine.dispose()


def test_sqlite_keeps_plain_tables(migrated_sqlite_url: str) -> None:
    storage = SqlAlchemyStorageMaintenance(create_engine_for(migrated_sqlite_url))
    try:
        assert storage.layout() == "sqlite"
        assert [(p.table, p.kind) for p in storage.partitions()] == [(t, "table") for t in TABLES]
        assert storage.create_ahead(3, at(2024, 3, 5)) == []
    finally:
        storage.engine.dispose()


def everything_of(db: Db) -> dict[str, list[Any]]:
    q = db.queries
    where = ExportFilter()
    return {
        "readings": list(q.readings(where)),
        "rejected": list(q.rejected(where)),
        "too_late": list(q.too_late(where)),
        "gaps": list(q.gaps(where)),
        "aggregates": list(q.aggregates(where)),
    }


# ------------------------------------------------------------------------ partitions created ahead


def test_create_ahead_makes_this_and_the_next_months_once(db: Db) -> None:
    now = at(2031, 1, 15)
    created = db.storage.create_ahead(2, now)
    assert sorted({(p.lower, p.upper) for p in created}) == [
        (at(2031, 1), at(2031, 2)),
        (at(2031, 2), at(2031, 3)),
        (at(2031, 3), at(2031, 4)),
    ]
    assert {p.table for p in created} == set(TABLES)
    for table in TABLES:
        assert {f"{table}_p20310101", f"{table}_p20310201", f"{table}_p20310301"} <= set(db.months(table))
    assert db.storage.create_ahead(2, now) == []  # nothing twice


def test_the_cli_lists_creates_and_applies_retention(db: Db, tmp_path: Any) -> None:
    env = metrify_env(tmp_path, database_url=db.url, METRIFY_STORAGE__RETENTION_READINGS="1d")
    listed = metrify(["db", "partitions", "--table", "readings"], env).stdout
    assert "readings_default" in listed and "DEFAULT" in listed and "schema metrify_partitions" in listed
    created = metrify(["db", "partitions", "--create-ahead", "12"], env).stdout
    assert "created " in created
    db.write([reading("M1", at(2020, 2, 3))])  # an old month, beyond every retention but aggregates'
    assert "readings_p20200201" in db.months("readings")
    dry = metrify(["db", "retention", "--dry-run"], env).stdout
    assert "would drop" in dry and "readings_p20200201" in dry
    assert "readings_p20200201" in db.months("readings")
    done = metrify(["db", "retention"], env).stdout
    assert "dropped" in done and "readings_p20200201" in done
    assert "readings_p20200201" not in db.months("readings")
    assert "nothing to drop" in metrify(["db", "retention"], env).stdout
    maintained = metrify(["db", "maintain", "--dry-run"], env).stdout
    assert "created 0 partition(s)" in maintained and "nothing to drop (dry run)" in maintained
    sqlite = metrify_env(tmp_path / "lite")
    assert "run `metrify db upgrade` first" in metrify(["db", "partitions"], sqlite, check=False).stderr


def test_info_names_the_storage_features(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRIFY_STORAGE__RETENTION_AGGREGATES", "0")
    features = storage_features(db.url)
    assert "native monthly partitioning" in features
    assert "retention readings 90d, rejected 30d, too-late 30d, aggregates forever" in features
    assert "partitions 3 months ahead" in features
    sqlite = storage_features("sqlite:///x.db")
    assert "no partitions" in sqlite and "rows older are deleted" in sqlite


# -------------------------------------------------------------------------- partitions on the fly


def history(year: int, month: int) -> list[Any]:
    """A month's outcomes of every partitioned kind (input positions of its own), on its 10th:
    2 readings, 1 too-late reading, 2 aggregates, 1 rejected reading."""
    t = at(year, month, 10, 12)
    position = (year * 12 + month) * 10
    return [
        reading("M1", t),
        reading("M2", t + HOUR, 1.5),
        ReadingTooLate("M1", t - 3 * HOUR, 0.5, 2 * HOUR, 0, position),
        WindowUpdated("M1", HOUR, t, 1, 0.5, 0.5, 0.5),
        WindowUpdated("M2", DAY, at(year, month, 10), 1, 1.5, 1.5, 1.5),
        ReadingRejected("M3", "garbage", "1", "invalid_timestamp", 0, None, position + 1),
    ]


def test_a_batch_in_a_month_without_partition_gets_one_first(db: Db) -> None:
    batch = history(2019, 5)
    db.write(batch, now_us=at(2019, 5, 10, 13))  # stored then, as if replayed back in 2019
    expected = {"readings": 2, "rejected_readings": 1, "too_late_readings": 1, "aggregates": 2}
    for table, count in expected.items():
        assert db.where_rows_are(table) == {f"{table}_p20190501": count}  # none in DEFAULT
    assert everything(store_of(db)) == expected_after(batch)


def test_rows_a_month_misses_land_in_default_and_move_out_later(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the partition cannot be made in time (a long query holds the DEFAULT partition), the
    batch is still written, into DEFAULT; `create_ahead` later moves the rows into their month."""
    monkeypatch.setattr(partitions, "LOCK_TIMEOUT_S", 0.3)
    reader = db.engine.connect()
    try:
        reader.execute(sa.text(f"LOCK TABLE {PARTITION_SCHEMA}.readings_default IN ACCESS SHARE MODE"))
        batch = [reading("M1", at(2018, 7, 4)), reading("M2", at(2018, 7, 5))]
        db.write(batch)
        assert db.where_rows_are("readings") == {"readings_default": 2}
        assert "readings_p20180701" not in db.months("readings")
    finally:
        reader.rollback()
        reader.close()
    assert everything(store_of(db))["readings"] == expected_after(batch)["readings"]
    created = db.storage.create_ahead(0, at(2018, 7, 10))
    assert "metrify_partitions.readings_p20180701" in {p.name for p in created}
    assert db.where_rows_are("readings") == {"readings_p20180701": 2}
    assert everything(store_of(db))["readings"] == expected_after(batch)["readings"]


def test_rows_written_straight_into_the_parent_never_fail(db: Db) -> None:
    with db.engine.begin() as connection:  # any client, no partition made first: DEFAULT takes them
        connection.execute(
            sa.text(
                "INSERT INTO aggregates VALUES ('M1', 3600000000, :t, 1, 1, 1, 1), ('M1', 3600000000, :u, 1, 2, 2, 2)"
            ),
            {"t": at(1999, 12, 31, 23), "u": at(2000, 1, 1)},
        )
    assert db.where_rows_are("aggregates") == {"aggregates_default": 2}
    db.storage.create_ahead(0, at(2000, 1, 1))
    assert db.where_rows_are("aggregates") == {"aggregates_p19991201": 1, "aggregates_p20000101": 1}


def test_a_row_written_into_default_while_its_month_is_made_moves_with_the_others(db: Db) -> None:
    month = at(2018, 7, 4)
    insert = (
        "INSERT INTO readings (meter_id, ts, slot, consumption_kwh, status, partition) "
        "VALUES (:m, :t, :t, 1, 'ON_TIME', 0)"
    )
    with db.engine.begin() as connection:
        connection.execute(sa.text(insert), {"m": "OLD", "t": month})  # a backlog for July 2018 in DEFAULT
    writer = db.engine.connect()  # another process's write of July, routed to DEFAULT, not committed yet
    writer.execute(sa.text(insert), {"m": "NEW", "t": month + 1})
    outcome: list[Any] = []

    def make_the_month() -> None:  # what the sink (or maintenance) runs for its own batch of July
        try:
            outcome.append(ensure_partitions(db.engine, {"readings": [month + 2]}, lock_timeout=10.0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    maker = threading.Thread(target=make_the_month)
    maker.start()
    maker.join(1.0)  # waiting for the writer: before, it moved OLD and waited for its ATTACH
    writer.commit()
    writer.close()
    maker.join()
    assert [p.name for p in outcome[0]] == ["metrify_partitions.readings_p20180701"], outcome
    assert db.where_rows_are("readings") == {"readings_p20180701": 2}  # both rows, none left behind


def test_processes_racing_for_the_same_month_make_it_once(db: Db) -> None:
    engines = [create_engine_for(db.url) for _ in range(4)]
    errors: list[BaseException] = []

    def race(engine: sa.Engine) -> None:
        try:
            ensure_partitions(engine, {"readings": [at(2017, 3, 3)], "aggregates": [at(2017, 3, 1)]})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    partitions._known.clear()  # as four processes: nobody knows anything yet
    threads = [threading.Thread(target=race, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert db.months("readings").count("readings_p20170301") == 1
    assert db.months("aggregates").count("aggregates_p20170301") == 1


def test_the_sink_asks_the_catalog_only_for_months_it_does_not_know(db: Db) -> None:
    db.write([reading("M1", at(2016, 1, 5))])
    statements: list[str] = []
    sa.event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    db.write([reading("M1", at(2016, 1, 6))])
    assert not [s for s in statements if "pg_inherits" in s or "CREATE TABLE" in s]


def test_a_large_set_is_copied_straight_into_its_month_partition(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    copied_into: list[str] = []
    copy = PostgresWriter.copy

    def recorded(self: PostgresWriter, cursor: Any, into: str, *args: Any) -> None:
        copied_into.append(into)
        copy(self, cursor, into, *args)

    monkeypatch.setattr(PostgresWriter, "copy", recorded)
    batch = [reading(f"M{m:03d}", at(2017, 3, 2) + m * US) for m in range(100)]
    month_made = reading("M999", at(2017, 3, 20))
    db.write([month_made])  # the month gets its partition
    db.write(batch)
    assert copied_into == [f'"{PARTITION_SCHEMA}"."readings_p20170301"']  # not the table: no routing per row
    assert db.where_rows_are("readings") == {"readings_p20170301": 101}
    assert everything(store_of(db))["readings"] == expected_after([month_made, *batch])["readings"]
    across = [reading("M900", at(2017, 3, 31, 23)), *(reading(f"M{m:03d}", at(2017, 4, 1) + m * US) for m in range(99))]
    db.write(across)  # two months: through the table
    assert copied_into[-1] == '"readings"'
    assert db.where_rows_are("readings") == {"readings_p20170301": 102, "readings_p20170401": 99}


@pytest.mark.parametrize("behind_its_back", ["DETACH", "DROP"])
def test_a_month_partition_detached_or_dropped_behind_the_sinks_back_loses_no_row(db: Db, behind_its_back: str) -> None:
    """The sink remembers the catalog for minutes; a partition gone from the table meanwhile
    (another process's retention, a DBA's DETACH) is noticed before rows are copied into it."""
    first = [reading(f"M{m:03d}", at(2017, 3, 2) + m * US) for m in range(100)]
    db.write(first)
    assert db.where_rows_are("readings") == {"readings_p20170301": 100}
    month = f"{PARTITION_SCHEMA}.readings_p20170301"
    with db.engine.begin() as connection:
        if behind_its_back == "DETACH":
            connection.execute(sa.text(f"ALTER TABLE readings DETACH PARTITION {month}"))
        else:
            connection.execute(sa.text(f"DROP TABLE {month}"))
    second = [reading(f"N{m:03d}", at(2017, 3, 3) + m * US) for m in range(100)]
    db.write(second)
    assert db.where_rows_are("readings") == {"readings_default": 100}
    assert everything(store_of(db))["readings"] == expected_after(second)["readings"]
    if behind_its_back == "DETACH":
        assert db.scalar(f"SELECT count(*) FROM {month}") == 100  # the first batch, nothing added


# ------------------------------------------------------------------------------ idempotent writes


def test_writing_a_batch_twice_changes_nothing_even_across_months(db: Db) -> None:
    """Rejected readings are partitioned by when they were stored: the same batch written again a
    month later must still not double them (the writer keeps their key itself)."""
    batch = MIXED_BATCH + history(2019, 5)
    db.write(batch, now_us=at(2024, 3, 31, 23))
    once = everything(store_of(db))
    db.write(batch, now_us=at(2024, 4, 1, 1))  # a month later
    db.write(batch * 2, now_us=at(2024, 4, 2))  # twice in one unit of work
    big = [ReadingRejected("M9", f"bad{i}", i, "invalid_timestamp", 5, None, i) for i in range(500)]
    db.write(big, now_us=at(2024, 4, 30, 23))
    db.write(big[100:] + [ReadingRejected("M9", "new", 1, "invalid_timestamp", 5, None, 900)], now_us=at(2024, 5, 1))
    got = everything(store_of(db))
    assert got == expected_after(batch, big, [ReadingRejected("M9", "new", 1, "invalid_timestamp", 5, None, 900)])
    assert got["readings"] == once["readings"] and got["aggregates"] == once["aggregates"]
    assert db.scalar("SELECT count(*) FROM rejected_readings") == len(got["rejected"])


def store_of(db: Db) -> Any:
    class Store:
        queries = db.queries

    return Store()


# ------------------------------------------------------------------------------------- reorder


def test_reorder_rewrites_a_month_that_is_over_in_meter_order_once(db: Db) -> None:
    meters = [f"M{m:02d}" for m in range(20)]
    may = at(2023, 5, 1)
    batch: list[Any] = [reading(m, may + i * 1800 * US, i / 8) for i in range(96) for m in meters]  # as they arrive
    batch += [WindowUpdated(m, HOUR, may + i * HOUR, 2, 0.5, 0.2, 0.3) for i in range(48) for m in meters]
    db.write(batch)
    before, listed = everything_of(db), [(p.name, p.lower, p.upper) for p in db.storage.partitions()]

    assert db.storage.reorder(at(2023, 6, 1)) == []  # May is not over for a day yet
    done = db.storage.reorder(at(2023, 6, 2))
    assert sorted(p.name for p in done) == [
        f"{PARTITION_SCHEMA}.aggregates_p20230501",
        f"{PARTITION_SCHEMA}.readings_p20230501",
    ]
    stored = db.rows(f"SELECT meter_id, ts FROM ONLY {PARTITION_SCHEMA}.readings_p20230501 ORDER BY ctid")
    assert stored == sorted(stored) and len(stored) == len(meters) * 96
    assert everything_of(db) == before
    assert [(p.name, p.lower, p.upper) for p in db.storage.partitions()] == listed
    # the copy took the place of the month in every way: its key, its indexes, still writable
    parents = db.rows(
        "SELECT i.indexrelid::regclass::text, p.inhparent::regclass::text FROM pg_index i "
        "JOIN pg_inherits p ON p.inhrelid = i.indexrelid "
        f"WHERE i.indrelid = '{PARTITION_SCHEMA}.aggregates_p20230501'::regclass ORDER BY 1"
    )
    assert parents == [
        (
            f"{PARTITION_SCHEMA}.aggregates_p20230501_ordered_window_us_window_start_idx",
            "ix_aggregates_window_us_window_start",
        ),
        (f"{PARTITION_SCHEMA}.aggregates_p20230501_pkey", "pk_aggregates"),
    ]
    db.write(batch + [reading("M99", may + HOUR)])
    assert len(everything_of(db)["readings"]) == len(before["readings"]) + 1
    assert db.storage.reorder(at(2023, 6, 2)) == []  # once


def test_reorder_gives_way_to_long_queries_and_leaves_everything_as_it_was(db: Db) -> None:
    db.write([reading(f"M{m}", at(2023, 5, 1) + i * 1800 * US) for i in range(10) for m in range(5)])
    before = everything_of(db)
    reader = db.engine.connect()
    try:
        reader.execute(sa.text("SELECT count(*) FROM readings"))  # a long export, say: holds the table
        with pytest.raises(StorageBusyError):
            SqlAlchemyStorageMaintenance(db.engine, lock_timeout=0.1).reorder(at(2023, 7, 1))
    finally:
        reader.rollback()
        reader.close()
    assert everything_of(db) == before
    assert db.scalar("SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_ordered%'") == 0
    assert [p.name for p in db.storage.reorder(at(2023, 7, 1))] == [f"{PARTITION_SCHEMA}.readings_p20230501"]
    assert everything_of(db) == before


# ------------------------------------------------------------------------------------ retention


POLICY = RetentionPolicy(readings=90 * 86400, rejected=30 * 86400, too_late=30 * 86400, aggregates=730 * 86400)


def test_retention_drops_whole_old_partitions_and_a_dry_run_drops_nothing(db: Db) -> None:
    now = at(2024, 7, 15)
    for month in range(1, 8):
        db.write(history(2024, month), now_us=at(2024, month, 10))
    db.write(history(2021, 6), now_us=at(2021, 6, 10))
    before = everything(store_of(db))
    partitions_before = db.storage.partitions()

    dry = run_storage_maintenance(db.storage, POLICY, now, dry_run=True)
    assert db.storage.partitions() == partitions_before and everything(store_of(db)) == before
    # readings keep 90 days: cut-off 2024-04-16, so January .. March go, April (ends May 1) stays
    cutoff = now - 90 * DAY
    gone = {p.name.split(".")[-1] for p in dry.dropped}
    assert {n for n in gone if n.startswith("readings")} == {
        "readings_p20210601",
        "readings_p20240101",
        "readings_p20240201",
        "readings_p20240301",
    }
    assert {n for n in gone if n.startswith("aggregates")} == {"aggregates_p20210601"}  # 730 days
    assert {n for n in gone if n.startswith("rejected")} == {
        f"rejected_readings_p2024{m:02d}01" for m in range(1, 6)
    } | {"rejected_readings_p20210601"}
    assert all(p.upper is not None and p.upper <= now for p in dry.dropped)
    assert not any(p.kind == "default" for p in dry.dropped)

    done = run_storage_maintenance(db.storage, POLICY, now)
    assert [p.name for p in done.dropped] == [p.name for p in dry.dropped]
    after = everything(store_of(db))
    # Whole partitions only: April's readings stay although some are older than the cut-off.
    assert [r.timestamp for r in after["readings"] if r.timestamp < cutoff] == [
        at(2024, 4, 10, 12),
        at(2024, 4, 10, 13),
    ]
    assert min(r.timestamp for r in after["readings"]) >= at(2024, 4, 1)
    assert min(a.window_start for a in after["aggregates"]) >= at(2024, 1, 1)
    assert min(r.timestamp for r in after["too_late"]) >= at(2024, 6, 1)
    assert len(after["rejected"]) == 2  # stored in June and July
    names = {p.name for p in db.storage.partitions()}
    assert not names & {p.name for p in done.dropped}
    assert {f"{PARTITION_SCHEMA}.{t}_default" for t in TABLES} <= names
    # and writing into a dropped month later still works (a new partition, made on the fly)
    db.write([reading("M1", at(2024, 1, 20))])
    assert db.where_rows_are("readings").get("readings_p20240101") == 1
    assert run_storage_maintenance(db.storage, POLICY, now).dropped[0].name.endswith("readings_p20240101")


def test_retention_keeps_tables_whose_retention_is_zero(db: Db) -> None:
    db.write(history(2015, 1), now_us=at(2015, 1, 10))
    keep_all = RetentionPolicy(readings=0, rejected=0, too_late=0, aggregates=0)
    assert run_storage_maintenance(db.storage, keep_all, at(2024, 1, 1)).dropped == []
    assert db.where_rows_are("readings") == {"readings_p20150101": 2}


def test_sqlite_retention_deletes_the_rows_older_than_the_cut_off(migrated_sqlite_url: str) -> None:
    db = Db(migrated_sqlite_url)
    try:
        for month in (1, 4, 7):
            db.write(history(2024, month), now_us=at(2024, month, 10))
        now = at(2024, 7, 15)
        dry = run_storage_maintenance(db.storage, POLICY, now, dry_run=True)
        # rows, not partitions: April 10 is older than July 15 - 90 days, so April's rows go too
        assert {p.table: p.rows for p in dry.dropped} == {
            "readings": 4,
            "rejected_readings": 2,
            "too_late_readings": 2,
        }
        assert db.scalar("SELECT count(*) FROM readings") == 6
        run_storage_maintenance(db.storage, POLICY, now)
        assert db.scalar("SELECT count(*) FROM readings") == 2
        assert db.scalar("SELECT min(ts) FROM readings") >= now - 90 * DAY
        assert db.scalar("SELECT count(*) FROM rejected_readings") == 1
        assert db.scalar("SELECT count(*) FROM aggregates") == 6
    finally:
        db.engine.dispose()


def test_sqlite_maintenance_gives_the_planner_statistics_to_read_a_time_range_size_by_size(
    migrated_sqlite_url: str,
) -> None:
    """SQLite keys the aggregates window first (Alembic 0011): a time range of one size is a range
    of the key, and of every size (retention's delete) a skip-scan, size after size, once the
    planner knows there are few sizes."""
    db = Db(migrated_sqlite_url)
    try:
        may = at(2024, 5, 1)
        db.write([WindowUpdated(f"M{m}", HOUR, may + i * HOUR, 2, 0.5, 0.2, 0.3) for m in range(3) for i in range(60)])

        def plan(sql: str) -> str:
            return " ".join(r[-1] for r in db.rows("EXPLAIN QUERY PLAN " + sql, w=HOUR, start=may, end=may + DAY))

        one_size = "SELECT * FROM aggregates WHERE window_us = :w AND window_start >= :start AND window_start < :end"
        every_size = "SELECT * FROM aggregates WHERE window_start >= :start AND window_start < :end"
        assert "(window_us=? AND window_start>? AND window_start<?)" in plan(one_size)
        assert "ANY(window_us)" not in plan(every_size)  # no statistics: the whole key is scanned
        keep_all = RetentionPolicy(readings=0, rejected=0, too_late=0, aggregates=0)
        run_storage_maintenance(db.storage, keep_all, at(2024, 6, 5), reorder=True)
        assert "ANY(window_us)" in plan(every_size)
        assert len(db.rows("SELECT * FROM aggregates WHERE window_start >= :s", s=may)) == 180
    finally:
        db.engine.dispose()


def test_month_bounds_are_utc_calendar_months() -> None:
    assert month_bounds(at(2024, 2, 29, 23)) == (at(2024, 2), at(2024, 3))
    assert month_bounds(at(2024, 12, 31, 23)) == (at(2024, 12), at(2025, 1))
    assert month_bounds(-1) == (at(1969, 12), at(1970, 1))
    assert month_bounds(10**19) is None


def test_the_same_replay_into_partitioned_postgres_and_sqlite_reads_back_alike(
    db: Db, migrated_sqlite_url: str
) -> None:
    lite = Db(migrated_sqlite_url)
    try:
        batches = [history(2023, m) for m in (11, 12)] + [MIXED_BATCH, history(2024, 1)]
        for batch in batches:
            db.write(batch, now_us=at(2024, 3, 5))
            lite.write(batch, now_us=at(2024, 3, 5))
        assert everything_of(db) == everything_of(lite) == everything(store_of_memory(batches))
    finally:
        lite.engine.dispose()


def store_of_memory(batches: list[list[Any]]) -> Any:
    store = memory_store()
    for batch in batches:
        with store.uow() as uow:
            uow.outcomes.add_events(batch)
            uow.commit()

    class Store:
        queries = store.queries

    return Store()
