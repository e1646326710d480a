"""Tokens with the production cache (Redis): expired, tampered, revoked and wrong-role tokens are refused,
revocation and rate limits hold across two API processes sharing Redis and the database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient
from tests.support.api import SECRET, Api, api_settings, database_container, running_api

from metrify.adapters.sqlalchemy import migrations
from metrify.domain.users import Role
from metrify.entrypoints.api import create_app
from metrify.settings import AuthSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path: Path, redis_url: str):  # noqa: ANN201
    settings = api_settings(
        tmp_path, redis_url=redis_url, auth=AuthSettings(secret=SECRET, user_rate_limit=20, access_ttl=60)
    )
    migrations.upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture
def api(settings) -> Iterator[Api]:  # noqa: ANN001
    container = database_container(settings)
    assert type(container.cache()).__name__ == "RedisCache"
    with running_api(container, settings) as api:
        yield api
    container.shutdown_resources()


@pytest.fixture
def second_process(settings) -> Iterator[TestClient]:  # noqa: ANN001
    """Another API process on the same database and Redis (its own container, its own memory)."""
    container = database_container(settings)
    with TestClient(create_app(settings, container), raise_server_exceptions=False) as client:
        yield client
    container.shutdown_resources()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_revoked_in_one_process_is_refused_by_the_other(api: Api, second_process: TestClient) -> None:
    tokens = api.sign_in("operator@example.com")
    assert second_process.get("/api/v1/auth/me", headers=bearer(tokens["access_token"])).status_code == 200
    logout = api.client.post(
        "/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]}, headers=bearer(tokens["access_token"])
    )
    assert logout.status_code == 204
    refused = second_process.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
    assert refused.status_code == 401 and refused.json()["detail"] == "the token has been revoked"
    again = second_process.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 401


def test_expired_tampered_and_wrong_role_tokens_are_refused(api: Api) -> None:
    admin = api.users[Role.ADMIN]
    now = int(time.time())
    claims = {"iss": "metrify", "sub": admin.user_id, "role": "ADMIN", "typ": "access", "jti": "x1", "iat": now}
    expired = jwt.encode({**claims, "exp": now - 1}, SECRET, algorithm="HS256")
    assert api.client.get("/api/v1/users", headers=bearer(expired)).json()["detail"] == "the token has expired"
    user_token = api.tokens[Role.USER]
    head, body, signature = user_token.split(".")
    forged_body = jwt.utils.base64url_encode(jwt.utils.base64url_decode(body).replace(b'"USER"', b'"ADMIN"')).decode()
    tampered = f"{head}.{forged_body}.{signature}"
    assert api.client.get("/api/v1/users", headers=bearer(tampered)).status_code == 401
    resigned = jwt.encode({**claims, "exp": now + 60}, "not-the-secret-but-32-characters-long", algorithm="HS256")
    assert api.client.get("/api/v1/users", headers=bearer(resigned)).status_code == 401
    # A USER's genuine token claiming nothing more is still only a USER's: 403 on ADMIN routes.
    assert api.client.get("/api/v1/users", headers=bearer(user_token)).status_code == 403
    operator = api.tokens[Role.OPERATOR]
    assert (
        api.client.post(
            "/api/v1/ingest-keys", json={"name": "k", "all_regions": True}, headers=bearer(operator)
        ).status_code
        == 403
    )
    assert api.client.get("/api/v1/users", headers=api.headers(Role.ADMIN)).status_code == 200


def test_the_rate_limit_is_shared_by_every_process_through_redis(api: Api, second_process: TestClient) -> None:
    headers = api.headers(Role.USER)
    statuses = [
        (api.client if n % 2 else second_process).get("/api/v1/auth/me", headers=headers).status_code for n in range(25)
    ]
    assert statuses.count(200) == 20 and statuses[-1] == 429
    limited = second_process.get("/api/v1/auth/me", headers=headers)
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60


def test_readiness_checks_redis_too(api: Api) -> None:
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "stream": "ok", "redis": "ok"}


def test_readiness_names_redis_when_it_is_down(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, redis_url="redis://127.0.0.1:1/0", auth=AuthSettings(secret=SECRET))
    container = database_container(settings)
    with TestClient(create_app(settings, container)) as client:
        response = client.get("/readyz")
    container.shutdown_resources()
    assert response.status_code == 503
    assert response.json()["checks"]["redis"].startswith("unreachable") and "redis" in response.json()["detail"]


def test_redis_down_is_a_503_problem_with_retry_after_not_a_500(tmp_path: Path) -> None:
    """Rate limits, revocations and idempotency keys live in Redis: while it does not answer, a
    request that needs it is told to come back, as for a database that does not answer."""
    settings = api_settings(tmp_path, redis_url="redis://127.0.0.1:1/0", auth=AuthSettings(secret=SECRET))
    migrations.upgrade(settings.resolved_database_url)
    container = database_container(settings)
    with TestClient(create_app(settings, container), raise_server_exceptions=False) as client:
        response = client.post("/api/v1/auth/token", data={"username": "a@example.com", "password": "whatever-1"})
    container.shutdown_resources()
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "redis does not answer" in response.json()["detail"] and int(response.headers["Retry-After"]) > 0


def test_without_redis_a_restarted_api_still_refuses_what_was_revoked(tmp_path: Path) -> None:
    """The embedded profile: SQLite, no Redis. The process keeps its revocations in memory and in
    the database; the next process on that database reads them back."""
    settings = api_settings(tmp_path, auth=AuthSettings(secret=SECRET))
    migrations.upgrade(settings.resolved_database_url)
    first = database_container(settings)
    assert type(first.cache()).__name__ == "InMemoryCache"
    with running_api(first, settings) as api:
        tokens = api.sign_in("user@example.com")
        headers = bearer(tokens["access_token"])
        body = {"refresh_token": tokens["refresh_token"]}
        assert api.client.post("/api/v1/auth/logout", json=body, headers=headers).status_code == 204
    first.shutdown_resources()
    second = database_container(settings)
    with TestClient(create_app(settings, second), raise_server_exceptions=False) as client:
        assert client.get("/api/v1/auth/me", headers=headers).status_code == 401
        assert client.post("/api/v1/auth/refresh", json=body).status_code == 401
    second.shutdown_resources()
