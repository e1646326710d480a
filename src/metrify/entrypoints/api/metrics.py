"""Prometheus metrics of one API process: requests by route template and status, their latency,
and readings ingested by outcome and rejected by reason."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from metrify.application.ingest import IngestReport

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["method", "route", "status"]
        self.requests = Counter(
            "metrify_http_requests_total", "HTTP requests, by route template and status", labels, registry=self.registry
        )
        self.latency = Histogram(
            "metrify_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and status",
            labels,
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.readings = Counter(
            "metrify_ingest_readings_total",
            "Readings received over HTTP, by outcome (accepted, too_late, rejected, refused, queued)",
            ["outcome"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "metrify_ingest_rejected_total",
            "Readings rejected at ingest, by reason",
            ["reason"],
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.labels(method, route, code).inc()
        self.latency.labels(method, route, code).observe(seconds)

    def ingested(self, report: IngestReport) -> None:
        for outcome, count in (
            ("accepted", report.accepted),
            ("too_late", report.too_late),
            ("rejected", report.rejected),
            ("refused", len(report.refused)),
            ("queued", report.queued),
        ):
            if count:
                self.readings.labels(outcome).inc(count)
        for reason, count in report.rejected_by_reason.items():
            self.rejected.labels(reason).inc(count)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Times every HTTP request and labels it with the template of the route that served it
    (`/api/v1/meters/{meter_id}`), or `unmatched`, so that labels stay few whatever the paths."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], template, status, time.perf_counter() - started)
