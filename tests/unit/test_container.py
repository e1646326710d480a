"""The composition root picks each port's adapter from the settings, and tests can override it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dependency_injector import providers

from metrify.adapters.memory.bus import InMemoryCache, InMemoryEventBus
from metrify.adapters.memory.stream_store import InMemoryStreamStore, InMemoryStreamUnitOfWork
from metrify.adapters.memory.users import InMemoryMeterRegistry
from metrify.adapters.sqlalchemy.unit_of_work import SqlAlchemyStreamUnitOfWork
from metrify.container import adapter_names, build_container
from metrify.domain.readings import Meter, RawReading
from metrify.settings import Settings


@pytest.fixture(autouse=True)
def no_service_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings also read the environment: keep the services of a test run out of these tests."""
    for name in list(os.environ):
        if name.startswith("METRIFY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def embedded(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def test_the_embedded_profile_wires_in_process_adapters_and_sqlite(embedded: Settings) -> None:
    container = build_container(embedded)
    try:
        assert isinstance(container.cache(), InMemoryCache)
        assert isinstance(container.event_bus(), InMemoryEventBus)
        assert isinstance(container.stream_uow(), SqlAlchemyStreamUnitOfWork)
        assert container.engine().url.get_backend_name() == "sqlite"
        assert adapter_names(embedded)["event bus"] == "InMemoryEventBus"
    finally:
        container.shutdown_resources()


def test_service_urls_switch_ports_to_production_adapters(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        redis_url="redis://127.0.0.1:1/0",
        kafka={"bootstrap": "127.0.0.1:1"},
        database_url="postgresql+psycopg://u:p@127.0.0.1:1/db",
    )
    names = adapter_names(settings)
    assert names == {
        "storage": "SqlAlchemy on PostgreSQL",
        "event bus": "KafkaEventBus",
        "cache / rate limits": "RedisCache",
        "clock": "SystemClock",
    }
    container = build_container(settings)
    try:
        from metrify.adapters.redis import RedisCache

        assert isinstance(container.cache(), RedisCache)  # built without connecting
        assert container.engine().url.get_backend_name() == "postgresql"
    finally:
        container.shutdown_resources()


def test_a_test_can_override_storage_with_the_in_memory_fake(embedded: Settings) -> None:
    container = build_container(embedded)
    store = InMemoryStreamStore()
    container.stream_uow.override(providers.Factory(InMemoryStreamUnitOfWork, store))
    registry = InMemoryMeterRegistry()
    registry.add(Meter("M2", None, 900), created_at=0)  # the stream takes registered intervals from it
    container.meter_registry.override(providers.Object(registry))
    pipeline = container.stream_pipeline()
    assert pipeline.intervals == {"M2": 900_000_000}
    pipeline.load()
    pipeline.process([RawReading("M1", "2024-03-04T10:00:00Z", "0.5")])
    assert [r.meter_id for r in store.readings.values()] == ["M1"]
    assert not (embedded.data_dir / "metrify.db").exists(), "the override must keep SQLite out of it"
    container.shutdown_resources()


def test_the_container_leaves_the_web_frameworks_unloaded_but_importable() -> None:
    """CLI commands start without FastAPI (dependency_injector's wiring would import it), and the
    API, which imports it itself, still can."""
    script = (
        "import sys, metrify.container\n"
        "print(sorted(m for m in ('fastapi', 'fastapi.params', 'starlette.requests') if m in sys.modules))\n"
        "import fastapi.params, starlette.requests\n"
        "from metrify.entrypoints.api import create_app\n"
        "print('importable')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "importable"]
