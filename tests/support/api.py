"""Building the API for tests: settings that ignore the environment's METRIFY_* variables, a container
on in-memory fakes (unit tests) or on a real database (integration tests), users of each role."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from dependency_injector import providers
from fastapi import FastAPI
from fastapi.testclient import TestClient

from metrify.adapters.crypto import Argon2PasswordHasher
from metrify.adapters.memory.api_queries import InMemoryFleetQueries
from metrify.adapters.memory.stream_store import InMemoryStreamStore, InMemoryStreamUnitOfWork
from metrify.adapters.memory.users import (
    InMemoryIngestKeyRepository,
    InMemoryMeterRegistry,
    InMemoryRevocationLog,
    InMemoryUserRepository,
)
from metrify.application.users import UserAdmin
from metrify.container import Container, build_container
from metrify.domain.users import Role, User
from metrify.entrypoints.api import create_app
from metrify.settings import ApiSettings, AuthSettings, KafkaSettings, Settings

SECRET = "test-secret-of-the-api-0123456789abcdef"
PASSWORD = "correct horse battery"


def api_settings(data_dir: Path, database_url: str = "", **changes: Any) -> Settings:
    """Embedded settings unless told otherwise, whatever METRIFY_* variables the shell has."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url or f"sqlite:///{data_dir / 'metrify.db'}",
        "redis_url": "",
        "kafka": KafkaSettings(bootstrap=""),
        "auth": AuthSettings(secret=SECRET),
        "api": ApiSettings(),
        "log_format": "json",
    }
    values.update(changes)
    return Settings(**values)


def fast_hasher() -> Argon2PasswordHasher:
    """Real argon2id with the cheapest parameters: tests hash many passwords."""
    return Argon2PasswordHasher(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@dataclass
class Fakes:
    store: InMemoryStreamStore = field(default_factory=InMemoryStreamStore)
    users: InMemoryUserRepository = field(default_factory=InMemoryUserRepository)
    keys: InMemoryIngestKeyRepository = field(default_factory=InMemoryIngestKeyRepository)
    meters: InMemoryMeterRegistry = field(default_factory=InMemoryMeterRegistry)
    revocations: InMemoryRevocationLog = field(default_factory=InMemoryRevocationLog)

    def __post_init__(self) -> None:
        if self.meters.store is None:
            self.meters.store = self.store  # the registry sees the stream's history, as the database's does


def memory_container(settings: Settings, fakes: Fakes) -> Container:
    """The container with every storage port on its in-memory fake."""
    container = build_container(settings)
    container.stream_uow.override(providers.Factory(InMemoryStreamUnitOfWork, fakes.store))
    container.user_repository.override(providers.Object(fakes.users))
    container.ingest_key_repository.override(providers.Object(fakes.keys))
    container.meter_registry.override(providers.Object(fakes.meters))
    container.revocation_log.override(providers.Object(fakes.revocations))
    container.fleet_queries.override(providers.Object(InMemoryFleetQueries(fakes.store, fakes.meters)))
    container.password_hasher.override(providers.Object(fast_hasher()))
    return container


def database_container(settings: Settings) -> Container:
    container = build_container(settings)
    container.password_hasher.override(providers.Object(fast_hasher()))
    return container


@dataclass
class Api:
    """A running app (TestClient) with one signed-in user per role."""

    client: TestClient
    container: Container
    users: dict[Role, User] = field(default_factory=dict)
    tokens: dict[Role, str] = field(default_factory=dict)

    def headers(self, role: Role | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}

    def admin(self) -> UserAdmin:
        c = self.container
        return UserAdmin(c.user_repository(), c.password_hasher(), c.clock())

    def sign_in(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        response = self.client.post("/api/v1/auth/token", data={"username": email, "password": password})
        assert response.status_code == 200, response.text
        return response.json()

    def ingest_key(self, regions: list[str] | None = None) -> str:
        body: dict[str, Any] = {"name": "gateway", **({"regions": regions} if regions else {"all_regions": True})}
        response = self.client.post("/api/v1/ingest-keys", json=body, headers=self.headers(Role.ADMIN))
        assert response.status_code == 201, response.text
        return response.json()["token"]


@contextmanager
def running_api(
    container: Container,
    settings: Settings,
    *,
    regions: tuple[str, ...] = ("north",),
    meters: tuple[str, ...] = (),
    app: FastAPI | None = None,
) -> Iterator[Api]:
    """The app (made here unless given) with an ADMIN, an OPERATOR of `regions` and a USER of `meters`,
    each signed in."""
    app = app or create_app(settings, container)
    with TestClient(app, raise_server_exceptions=False) as client:
        api = Api(client, container)
        admin = api.admin()
        for role, assigned in (
            (Role.ADMIN, {}),
            (Role.OPERATOR, {"regions": regions}),
            (Role.USER, {"meters": meters}),
        ):
            email = f"{role.value.lower()}@example.com"
            existing = container.user_repository().by_email(email)
            user = existing or admin.create(email, PASSWORD, role, **assigned)
            api.users[role] = user
            api.tokens[role] = api.sign_in(email)["access_token"]
        yield api
