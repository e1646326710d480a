"""Operations: liveness, readiness (database, and Kafka and Redis when configured), Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from metrify.entrypoints.api import schemas as s
from metrify.entrypoints.api.problems import PROBLEM_RESPONSES, problem
from metrify.entrypoints.api.security import services

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=s.HealthOut, summary="Liveness: the process answers")
async def healthz() -> s.HealthOut:
    return s.HealthOut(status="ok")


@router.get(
    "/readyz", response_model=s.ReadyOut, summary="Readiness: the services it needs answer", responses=PROBLEM_RESPONSES
)
async def readyz(request: Request) -> Response:
    """200 when the database (and Kafka and Redis, when configured) answer; else 503 naming the failing part."""
    checks = await run_in_threadpool(request.app.state.readiness, services(request))
    failing = [f"{name}: {state}" for name, state in checks.items() if state != "ok"]
    if failing:
        return problem(request, 503, "not ready: " + "; ".join(failing), slug="not-ready", checks=checks)
    return Response(s.ReadyOut(status="ready", checks=checks).model_dump_json(), media_type="application/json")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
