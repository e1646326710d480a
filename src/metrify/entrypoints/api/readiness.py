"""Readiness: does each service the API needs answer now? One line per service, `ok` or why not."""

from __future__ import annotations

import functools

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext

from metrify.adapters.probes import describe_database_error, probe_kafka
from metrify.adapters.sqlalchemy import migrations
from metrify.entrypoints.api.services import ApiServices


@functools.cache
def _heads() -> tuple[str, ...]:
    return tuple(migrations.heads())


def check_services(svc: ApiServices) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        with svc.container.engine().connect() as connection:
            connection.execute(sa.text("SELECT 1"))
            revision = MigrationContext.configure(connection).get_current_revision()
        newest = _heads()
        if revision in newest:
            checks["database"] = "ok"
        else:
            checks["database"] = f"schema at {revision or 'nothing'}, not {', '.join(newest)}: run `metrify db upgrade`"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; the reason is shown
        checks["database"] = f"unreachable: {describe_database_error(exc) or type(exc).__name__}"
    if svc.pipeline is not None and checks["database"] == "ok":
        # Embedded ingest needs the stream's state; one it cannot load (cut into another number of
        # partitions by a replay) makes every batch a 503, so the API is not ready either.
        try:
            if not svc.pipeline.loaded:
                svc.pipeline.load()
            checks["stream"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; the reason is shown
            checks["stream"] = describe_database_error(exc) or str(exc) or type(exc).__name__
    settings = svc.settings
    if settings.kafka.bootstrap:
        answer = probe_kafka(settings.kafka.bootstrap)
        checks["kafka"] = "ok" if answer.startswith("yes") else answer
    if settings.redis_url:
        try:
            svc.cache.get("readiness-probe")
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"unreachable: {str(exc).removeprefix('redis does not answer: ')}"
    return checks
