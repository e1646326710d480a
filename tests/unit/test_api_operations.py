"""Problems for every error (never a stack trace), health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers
from tests.support.api import Api, Fakes, api_settings, memory_container, running_api

from metrify.adapters.sqlalchemy import migrations
from metrify.domain.users import Role

PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}


class BrokenQueries:
    def __getattr__(self, name: str):  # noqa: ANN204
        def fail(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internals: /srv/metrify/db.py line 12")

        return fail


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = api_settings(tmp_path)
    container = memory_container(settings, Fakes())
    container.fleet_queries.override(providers.Object(BrokenQueries()))
    with running_api(container, settings) as api:
        yield api


def test_an_unexpected_error_is_a_500_problem_without_internals(api: Api) -> None:
    response = api.client.get("/api/v1/stream/summary", headers=api.headers(Role.ADMIN))
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert set(problem) == PROBLEM_FIELDS and problem["type"] == "urn:metrify:problem:internal-error"
    assert "secret" not in response.text and "Traceback" not in response.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no/such/path", 404),
        ("DELETE", "/api/v1/meters", 405),
        ("PUT", "/api/v1/auth/token", 405),
        ("GET", "/api/v1/meters?limit=abc", 422),
        ("GET", "/api/v1/gaps?status=half", 422),
        ("GET", "/api/v1/meters/M1/readings?from=yesterday", 422),
        ("POST", "/api/v1/meters", 422),
        ("POST", "/api/v1/auth/refresh", 422),
    ],
)
def test_every_error_is_an_rfc_9457_problem(api: Api, method: str, path: str, status: int) -> None:
    response = api.client.request(method, path, headers=api.headers(Role.ADMIN))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert PROBLEM_FIELDS <= set(problem) and problem["status"] == status
    assert problem["instance"] == path.split("?")[0]
    if status == 422:
        assert problem["errors"] and {"location", "message", "type"} == set(problem["errors"][0])


def test_health_readiness_and_metrics(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    behind = api.client.get("/readyz")
    assert behind.status_code == 503 and "metrify db upgrade" in behind.json()["checks"]["database"]
    migrations.upgrade(api.container.settings().resolved_database_url)
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "stream": "ok"}}
    api.client.get("/api/v1/meters/M-42", headers=api.headers(Role.ADMIN))
    text = api.client.get("/metrics").text
    assert 'metrify_http_requests_total{method="GET",route="/api/v1/meters/{meter_id}",status="404"} 1.0' in text
    assert 'metrify_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/healthz",status="200"}' in text
    assert "M-42" not in text


def test_readiness_names_the_failing_part_with_503(api: Api, tmp_path: Path) -> None:
    api.container.engine.override(providers.Object(_DeadEngine()))
    try:
        response = api.client.get("/readyz")
    finally:
        api.container.engine.reset_override()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["checks"]["database"].startswith("unreachable")
    assert "database" in response.json()["detail"]


def test_readiness_is_503_while_ingest_cannot_load_the_stream(tmp_path: Path) -> None:
    """A replay cut the stream into three partitions; this API runs one: every batch is a 503, so
    /readyz must not say ready (it did: the database answered)."""
    settings = api_settings(tmp_path)
    migrations.upgrade(settings.resolved_database_url)
    fakes = Fakes()
    fakes.store.partitions[("main", 2)] = (None, 0)
    with running_api(memory_container(settings, fakes), settings) as api:
        response = api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert "3 partitions" in response.json()["checks"]["stream"]


class _DeadEngine:
    def connect(self) -> None:
        raise OSError(111, "Connection refused")


def test_the_openapi_document_describes_problems_and_the_three_ingest_bodies(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    assert "Problem" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    body = schema["paths"]["/api/v1/telemetry/batch"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-ndjson", "text/csv"}
    for operations in schema["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status == "422" or status == "default":
                    assert set(response["content"]) == {"application/problem+json"}
    assert api.client.get("/docs").status_code == 200
