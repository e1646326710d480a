"""The Celery roles: `celery -A metrify.entrypoints.celery_app worker` and `... beat`.

Redis (METRIFY_REDIS_URL) is the broker and the result backend, so any number of Celery workers on
any machines share the jobs; beat is run once per deployment. The scheduled job today is storage
maintenance, the same use case as `metrify db maintain`: partitions created ahead, retention
applied, closed months rewritten in meter order, every METRIFY_STORAGE__MAINTENANCE_EVERY (1h).
Grid operations (tariffs, alerts, notifications) add their jobs here.

Without METRIFY_REDIS_URL there is no broker two processes can share: the app then runs jobs in
the calling process only (`task_always_eager`), which is what the embedded profile and tests use.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import structlog
from celery import Celery, Task, shared_task
from celery.signals import setup_logging

from metrify.application.storage import run_storage_maintenance
from metrify.container import Container, build_container
from metrify.entrypoints.logs import configure_logging
from metrify.settings import Settings, SettingsError, load_settings

log = structlog.get_logger("metrify.celery")

MAINTAIN_STORAGE = "metrify.storage.maintain"


@shared_task(bind=True, name=MAINTAIN_STORAGE)
def maintain_storage(task: Task) -> dict[str, Any]:
    """Partitions ahead, retention, closed months reordered (`metrify db maintain`); returns
    what it did. Idempotent: run twice, the second run finds nothing to do."""
    settings: Settings = task.app.conf.metrify_settings
    container: Container = task.app.conf.metrify_container
    report = run_storage_maintenance(
        container.storage_maintenance(),
        container.retention_policy(),
        container.clock().now_us(),
        months_ahead=settings.storage.partition_months_ahead,
        reorder=True,
    )
    summary = {
        "layout": report.layout,
        "created": [p.name for p in report.created],
        "dropped": [p.name for p in report.dropped],
        "reordered": [p.name for p in report.reordered],
    }
    log.info("storage maintenance done", **summary)
    return summary


def create_celery(settings: Settings) -> Celery:
    """A Celery app on the settings' Redis, with the beat schedule of Metrify's jobs."""
    broker = settings.redis_url or "memory://"
    app = Celery("metrify", broker=broker, backend=settings.redis_url or None)
    app.conf.update(
        task_always_eager=not settings.redis_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,  # a job a dying worker held runs again: every job here is idempotent
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        timezone="UTC",
        beat_schedule={
            "storage-maintenance": {"task": MAINTAIN_STORAGE, "schedule": settings.storage.maintenance_every},
        },
    )
    app.conf.metrify_settings = settings
    app.conf.metrify_container = build_container(settings)
    return app


_app: Celery | None = None


def __getattr__(name: str) -> Celery:
    """`app` (what `celery -A metrify.entrypoints.celery_app` looks up), built on first use from
    the environment's settings, with logging configured; a bad setting is one line and exit 2."""
    global _app
    if name not in ("app", "celery"):
        raise AttributeError(name)
    if _app is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            print(f"metrify: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        configure = _logging_of(settings)
        configure()
        # A receiver of setup_logging keeps Celery's worker and beat from replacing the handlers
        # (their own console format, and no DATA_DIR/logs/metrify.log) with theirs.
        setup_logging.connect(configure, weak=False)
        _app = create_celery(settings)
        log.info("celery app ready", broker="redis" if settings.redis_url else "in-process")
    return _app


def _logging_of(settings: Settings) -> Callable[..., None]:
    def configure(**_signal: Any) -> None:
        configure_logging(settings.log_level, settings.resolved_log_format, settings.data_dir)

    return configure
