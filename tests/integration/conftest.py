"""Shared fixtures for integration tests: real databases, each test starting from a known state.

Databases
---------
- `sqlite_url`: a fresh, empty SQLite file in the test's tmp folder (not migrated).
- `postgres_server_url` (session): METRIFY_DATABASE_URL, the PostgreSQL server started by
  `eval "$(bash scripts/services.sh up)"`. Integration tests never skip for want of it: without
  the variable they FAIL, telling you to start the services.
- `postgres_url` (session): a fresh database created on that server for this test session (a
  unique name, so parallel sessions never meet), dropped at the end; empty, not migrated.
- `fresh_postgres_url`: a brand-new empty database for one test (migration tests), dropped after.
- `store_url`: parametrized over `sqlite` and `postgres`: a database migrated to head with every
  stream table empty. Postgres reuses the session database (migrated once, tables emptied per
  test) so each test costs milliseconds.

Kafka and Redis
---------------
- `kafka_bootstrap`, `redis_url` (session): METRIFY_KAFKA__BOOTSTRAP and METRIFY_REDIS_URL, set by
  the same command; a test that needs one FAILS without it (`service_setting`).

Running without services
------------------------
`METRIFY_TEST_NO_SERVICES=1 pytest` DESELECTS (rather than skips) every test that needs
PostgreSQL: tests using a postgres fixture, and parametrized cases whose id names `postgres`.
The run's summary shows how many were deselected. Use it for quick local runs only; CI must run
the services.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from metrify.adapters.sqlalchemy import SqlAlchemyStreamUnitOfWork, migrations
from metrify.adapters.sqlalchemy.engine import create_engine_for, mask_url, normalise_url
from metrify.adapters.sqlalchemy.state_log import forget_state_logs
from metrify.adapters.sqlalchemy.tables import STREAM_TABLES, meter_state_log, reading_meters

NO_SERVICES = os.environ.get("METRIFY_TEST_NO_SERVICES") == "1"
POSTGRES_FIXTURES = {"postgres_server_url", "postgres_url", "fresh_postgres_url", "migrated_postgres_url"}


def _needs_postgres(item: pytest.Item) -> bool:
    """Asks for a postgres fixture, or is the postgres case of a parametrized fixture (those
    fetch their database with getfixturevalue, so their static fixture names do not show it)."""
    if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "postgres" in callspec.id


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not NO_SERVICES:
        return
    kept, dropped = [], []
    for item in items:
        (dropped if _needs_postgres(item) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# ------------------------------------------------------------------------------------- SQLite


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An empty SQLite database file of this test (created on first connection)."""
    return f"sqlite:///{tmp_path / 'metrify.db'}"


@pytest.fixture
def migrated_sqlite_url(sqlite_url: str) -> str:
    migrations.upgrade(sqlite_url)
    return sqlite_url


# --------------------------------------------------------------------------------- PostgreSQL


def service_setting(variable: str, service: str) -> str:
    """The address of a service the tests need, from the environment scripts/services.sh sets;
    without it the test fails, saying how to start it."""
    value = os.environ.get(variable, "")
    if not value:
        pytest.fail(
            f'these tests need {service}: run `eval "$(bash scripts/services.sh up)"` ({variable} is unset)',
            pytrace=False,
        )
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return service_setting("METRIFY_KAFKA__BOOTSTRAP", "Kafka")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return service_setting("METRIFY_REDIS_URL", "Redis")


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    url = os.environ.get("METRIFY_DATABASE_URL", "")
    if not url.startswith(("postgresql", "postgres")):
        pytest.fail(
            'integration tests need PostgreSQL: run `eval "$(bash scripts/services.sh up)"` so that '
            "METRIFY_DATABASE_URL points at it (now: "
            f"{mask_url(url) if url else 'unset'}), or set METRIFY_TEST_NO_SERVICES=1 to deselect "
            "the tests that need it",
            pytrace=False,
        )
    return url


def _create_database(server_url: str, prefix: str) -> tuple[str, str]:
    """A new empty database on the server: (its URL, its name)."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine_for(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"))
    finally:
        admin.dispose()
    return normalise_url(server_url).set(database=name).render_as_string(hide_password=False), name


def _drop_database(server_url: str, name: str) -> None:
    admin = create_engine_for(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """An empty database of this test session, dropped at its end."""
    url, name = _create_database(postgres_server_url, "metrify_test")
    yield url
    _drop_database(postgres_server_url, name)


@pytest.fixture
def fresh_postgres_url(postgres_server_url: str) -> Iterator[str]:
    """An empty database of this test alone, dropped after it."""
    url, name = _create_database(postgres_server_url, "metrify_fresh")
    yield url
    _drop_database(postgres_server_url, name)


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    migrations.upgrade(postgres_url)
    return postgres_url


def store_events(engine: sa.Engine, events: list[Any]) -> None:
    """Store stream events as the pipeline does: one unit of work, committed."""
    with SqlAlchemyStreamUnitOfWork(engine) as uow:
        uow.outcomes.add_events(events)
        uow.commit()


def empty_stream_tables(url: str) -> None:
    """Delete every row of the stream tables (outcomes, state, progress)."""
    engine = create_engine_for(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                names = ", ".join(f'"{table.name}"' for table in STREAM_TABLES)
                connection.execute(sa.text(f"TRUNCATE {names}"))
            else:
                for table in (*STREAM_TABLES, reading_meters, meter_state_log):  # the last two SQLite's only
                    connection.execute(table.delete())
    finally:
        engine.dispose()
    forget_state_logs()  # what each engine of this process knew of the log is gone with it


# ------------------------------------------------------------------------------------ Both


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """A database at the newest schema with empty stream tables: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("migrated_sqlite_url")
    url = request.getfixturevalue("migrated_postgres_url")
    empty_stream_tables(url)
    return url
