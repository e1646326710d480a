"""The FastAPI application: one router per area, problem+json errors, metrics, OpenAPI at /openapi.json."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from metrify import __version__
from metrify.application.serial import QuietWindowWriter, SerialPipeline
from metrify.container import Container, build_container
from metrify.entrypoints.api import problems
from metrify.entrypoints.api.metrics import ApiMetrics, MetricsMiddleware
from metrify.entrypoints.api.readiness import check_services
from metrify.entrypoints.api.routers import auth, health, keys, meters, outcomes, telemetry, users
from metrify.entrypoints.api.schemas import BatchIn
from metrify.entrypoints.api.services import ApiServices
from metrify.entrypoints.process import freeze_startup_heap
from metrify.entrypoints.stream_writer import StreamWriterProcess
from metrify.settings import Settings, load_settings

log = logging.getLogger("metrify.api")

DESCRIPTION = """Smart-meter readings checked as they stream, stored and served.

Sign in at `POST /api/v1/auth/token` (OAuth2 password form; `username` is the email) and send
`Authorization: Bearer <access_token>`. Roles: USER (assigned meters), OPERATOR (assigned
regions), ADMIN (everything, users, ingest keys). Gateways send readings to
`POST /api/v1/telemetry/batch` with an ingest key in `X-API-Key`. Lists are cursor-paginated:
pass `next_cursor` back as `cursor`. Errors are RFC 9457 problem details.
"""


def create_app(settings: Settings | None = None, container: Container | None = None) -> FastAPI:
    """The API over these settings (default: the environment) and container (default: built from them)."""
    if settings is None:
        settings = container.settings() if container is not None else load_settings()
    owns_container = container is None
    if container is None:
        container = build_container(settings)
    services = ApiServices.build(settings, container)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services.pipeline is not None:
            try:  # the stream state, restored once; else on the first batch (readiness tells why)
                await run_in_threadpool(services.pipeline.load)
            except Exception as exc:  # noqa: BLE001 - the API still serves what it can
                log.warning("stream state not loaded at start: %s", exc)
        freeze_startup_heap()
        pipeline = services.pipeline
        quiet_writer = None
        if isinstance(pipeline, SerialPipeline) and settings.api.window_writes_per_batch:
            quiet_writer = QuietWindowWriter(pipeline, settings.api.window_writes_per_batch).start()
        try:
            yield
        finally:
            if quiet_writer is not None:  # every closed window held back is stored before the end
                try:
                    await run_in_threadpool(quiet_writer.stop)
                except Exception as exc:  # noqa: BLE001 - the states hold them: the next start stores them
                    log.warning("closed windows held back not stored at shutdown: %s", exc)
            if isinstance(pipeline, StreamWriterProcess):  # it stores what it took, then ends
                await run_in_threadpool(pipeline.stop)
            close = getattr(services.ingest.producer, "close", None)
            if close is not None:  # what is queued for Kafka goes out before the process ends
                await run_in_threadpool(close)
            if owns_container:
                container.shutdown_resources()

    app = FastAPI(
        title="Metrify",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = services
    app.state.metrics = ApiMetrics()
    app.state.readiness = check_services
    problems.install(app)
    app.add_middleware(problems.NulRefusal)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for module in (auth, users, keys, telemetry, meters, outcomes, health):
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with every error documented as problem+json (422 included) and the
    ingest body's schemas, which the endpoint reads itself."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _, extra = models_json_schema([(BatchIn, "validation")], ref_template="#/components/schemas/{model}")
    components.update(extra.get("$defs", {}))
    components["Problem"] = problems.Problem.model_json_schema()
    problem_content = {problems.PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    services: ApiServices = app.state.services
    api = services.settings.api
    components["BatchIn"]["properties"]["readings"]["maxItems"] = api.max_batch_readings
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "The request is not valid", "content": problem_content}
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "window":  # the windows this deployment aggregates
                    parameter["schema"] = {"type": "string", "enum": services.outcomes.window_labels}
            for content in operation.get("requestBody", {}).get("content", {}).values():
                if content.get("schema", {}).get("type") == "string":  # a text body: bytes, up to 4 per character
                    content["schema"]["maxLength"] = api.max_body_bytes // 4
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema
