"""The role matrix: every route of the app, for anonymous callers and each role, answers as listed here.

The routes come from `app.routes`, so a new route without an entry in MATRIX fails this test:
whoever adds a route decides, here, who may call it. Runs on the embedded profile (SQLite).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.support.api import PASSWORD, Api, api_settings, database_container, running_api

from metrify.adapters.sqlalchemy import migrations
from metrify.domain.readings import Meter
from metrify.domain.users import Role

pytestmark = pytest.mark.integration

ANON, USER, OPERATOR, ADMIN = None, Role.USER, Role.OPERATOR, Role.ADMIN
CALLERS = (ANON, USER, OPERATOR, ADMIN)


@dataclass
class Case:
    """Expected status per caller; `request` builds (path parameters, keyword arguments of the
    request) for a caller, so that a call that changes something gets a target of its own."""

    expect: tuple[int, int, int, int]  # anonymous, USER, OPERATOR, ADMIN
    request: Callable[[Api, Role | None], tuple[dict[str, str], dict[str, Any]]] = field(
        default=lambda api, role: ({}, {})
    )
    token: str = "shared"  # or "fresh": a token of its own (the call revokes it)


def _fresh_user(api: Api, role: Role | None) -> dict[str, str]:
    user = api.admin().create(f"victim-{uuid.uuid4().hex[:8]}@example.com", PASSWORD, Role.USER)
    return {"user_id": user.user_id}


def _fresh_key(api: Api, role: Role | None) -> dict[str, str]:
    created = api.client.post(
        "/api/v1/ingest-keys", json={"name": "k", "all_regions": True}, headers=api.headers(ADMIN)
    )
    return {"key_id": created.json()["key_id"]}


def _sign_in_form(api: Api, role: Role | None) -> tuple[dict, dict]:
    email = "nobody@example.com" if role is None else api.users[role].email
    return {}, {"data": {"username": email, "password": PASSWORD}}


def _refresh_body(api: Api, role: Role | None) -> tuple[dict, dict]:
    token = "not-a-token" if role is None else api.sign_in(api.users[role].email)["refresh_token"]
    return {}, {"json": {"refresh_token": token}}


def _new_meter(api: Api, role: Role | None) -> tuple[dict, dict]:
    return {}, {"json": {"meter_id": f"N-{uuid.uuid4().hex[:8]}", "region": "north"}}


def _new_user_body(api: Api, role: Role | None) -> tuple[dict, dict]:
    return {}, {"json": {"email": f"new-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD, "role": "USER"}}


METER = lambda api, role: ({"meter_id": "N1"}, {})  # noqa: E731
READINGS = {"json": {"readings": [{"meter_id": "N1", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1}]}}

MATRIX: dict[str, Case] = {
    "POST /api/v1/auth/token": Case((401, 200, 200, 200), _sign_in_form),
    "POST /api/v1/auth/refresh": Case((401, 200, 200, 200), _refresh_body),
    "POST /api/v1/auth/logout": Case((401, 204, 204, 204), token="fresh"),
    "GET /api/v1/auth/me": Case((401, 200, 200, 200)),
    "GET /api/v1/users": Case((401, 403, 403, 200)),
    "POST /api/v1/users": Case((401, 403, 403, 201), _new_user_body),
    "GET /api/v1/users/{user_id}": Case((401, 403, 403, 200), lambda api, role: (_fresh_user(api, role), {})),
    "PATCH /api/v1/users/{user_id}": Case(
        (401, 403, 403, 200), lambda api, role: (_fresh_user(api, role), {"json": {"meters": ["N1"]}})
    ),
    "POST /api/v1/users/{user_id}/deactivate": Case(
        (401, 403, 403, 200), lambda api, role: (_fresh_user(api, role), {})
    ),
    "GET /api/v1/ingest-keys": Case((401, 403, 403, 200)),
    "POST /api/v1/ingest-keys": Case(
        (401, 403, 403, 201), lambda api, role: ({}, {"json": {"name": "k", "regions": ["north"]}})
    ),
    "DELETE /api/v1/ingest-keys/{key_id}": Case((401, 403, 403, 200), lambda api, role: (_fresh_key(api, role), {})),
    # Users' tokens never ingest: only an ingest key does (checked below).
    "POST /api/v1/telemetry/batch": Case((401, 401, 401, 401), lambda api, role: ({}, READINGS)),
    "GET /api/v1/meters": Case((401, 200, 200, 200)),
    "POST /api/v1/meters": Case((401, 403, 201, 201), _new_meter),
    "GET /api/v1/meters/{meter_id}": Case((401, 200, 200, 200), METER),
    "PATCH /api/v1/meters/{meter_id}": Case(
        (401, 403, 200, 200), lambda api, role: ({"meter_id": "N1"}, {"json": {"expected_interval_seconds": 1800}})
    ),
    "GET /api/v1/meters/{meter_id}/readings": Case((401, 200, 200, 200), METER),
    "GET /api/v1/meters/{meter_id}/aggregates": Case((401, 200, 200, 200), METER),
    "GET /api/v1/regions/{region}/aggregates": Case((401, 403, 200, 200), lambda api, role: ({"region": "north"}, {})),
    "GET /api/v1/gaps": Case((401, 200, 200, 200)),
    "GET /api/v1/too-late-readings": Case((401, 403, 200, 200)),
    "GET /api/v1/rejected-readings": Case((401, 403, 200, 200)),
    "GET /api/v1/rejected-readings/counts": Case((401, 403, 200, 200)),
    "GET /api/v1/stream/summary": Case((401, 403, 200, 200)),
    "GET /healthz": Case((200, 200, 200, 200)),
    "GET /readyz": Case((200, 200, 200, 200)),
    "GET /metrics": Case((200, 200, 200, 200)),
    "GET /openapi.json": Case((200, 200, 200, 200)),
    "GET /docs": Case((200, 200, 200, 200)),
    "GET /docs/oauth2-redirect": Case((200, 200, 200, 200)),
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    folder: Path = tmp_path_factory.mktemp("rbac")
    settings = api_settings(folder)
    migrations.upgrade(settings.resolved_database_url)
    container = database_container(settings)
    registry = container.meter_registry()
    registry.add(Meter("N1", "north"), 0)
    registry.add(Meter("S1", "south"), 0)
    with running_api(container, settings, regions=("north",), meters=("N1",)) as api:
        yield api


def app_routes(api: Api) -> list[str]:
    """Every method and path the app serves, the included routers' routes flattened."""
    try:  # FastAPI >= 0.130 keeps included routers as one entry each
        from fastapi.routing import iter_route_contexts

        routes: list[Any] = list(iter_route_contexts(api.client.app.routes))
    except ImportError:
        routes = list(api.client.app.routes)
    found = []
    for route in routes:
        methods, path = getattr(route, "methods", None), getattr(route, "path", None)
        assert methods and path, f"a route of an unknown kind: {route!r}"
        path = getattr(route, "path_format", path)  # `{meter_id}`, whatever convertor matches it
        found += [f"{method} {path}" for method in sorted(methods) if method != "HEAD"]
    return found


def test_every_route_has_an_entry_in_the_matrix(api: Api) -> None:
    missing = sorted(set(app_routes(api)) - set(MATRIX))
    assert not missing, f"routes without an entry in MATRIX (decide who may call them): {missing}"
    assert not set(MATRIX) - set(app_routes(api)), "MATRIX lists routes the app does not have"


@pytest.mark.parametrize(("route", "caller"), list(itertools.product(MATRIX, CALLERS)), ids=str)
def test_each_caller_gets_the_listed_status(api: Api, route: str, caller: Role | None) -> None:
    case = MATRIX[route]
    method, template = route.split(" ", 1)
    params, kwargs = case.request(api, caller)
    headers = api.headers(caller)
    if caller is not None and case.token == "fresh":
        headers = {"Authorization": f"Bearer {api.sign_in(api.users[caller].email)['access_token']}"}
    response = api.client.request(method, template.format(**params), headers=headers, **kwargs)
    expected = case.expect[CALLERS.index(caller)]
    assert response.status_code == expected, f"{route} as {caller}: {response.status_code} {response.text[:300]}"
    if expected >= 400:
        assert response.headers["content-type"] == "application/problem+json"


def test_only_an_ingest_key_ingests_and_scopes_hold_inside_each_role(api: Api) -> None:
    key = api.ingest_key()
    ingested = api.client.post("/api/v1/telemetry/batch", headers={"X-API-Key": key}, **READINGS)
    assert ingested.status_code == 202 and ingested.json()["accepted"] + ingested.json()["rejected"] == 1
    assert api.client.get("/api/v1/meters/S1", headers=api.headers(USER)).status_code == 404
    assert api.client.get("/api/v1/meters/S1", headers=api.headers(OPERATOR)).status_code == 404
    assert api.client.get("/api/v1/meters/S1/readings", headers=api.headers(OPERATOR)).status_code == 404
    assert api.client.get("/api/v1/regions/south/aggregates", headers=api.headers(OPERATOR)).status_code == 403
    assert (
        api.client.patch("/api/v1/meters/S1", json={"region": "north"}, headers=api.headers(OPERATOR)).status_code
        == 404
    )
    assert api.client.get("/api/v1/meters/S1", headers=api.headers(ADMIN)).status_code == 200
