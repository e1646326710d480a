"""The Celery roles (`celery -A metrify.entrypoints.celery_app worker|beat`): the scheduled
storage maintenance, run by a real Celery worker through the real Redis, on the real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from metrify.adapters.sqlalchemy import migrations
from metrify.settings import Settings

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, database_url: str, redis_url: str = "", months_ahead: int = 3) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        storage={"partition_months_ahead": months_ahead},
    )


def test_the_beat_schedule_names_a_job_the_workers_know(tmp_path: Path) -> None:
    from metrify.entrypoints.celery_app import MAINTAIN_STORAGE, create_celery

    app = create_celery(_settings(tmp_path, f"sqlite:///{tmp_path / 'm.db'}"))
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert scheduled == {MAINTAIN_STORAGE}
    assert scheduled <= set(app.tasks)
    assert app.conf.beat_schedule["storage-maintenance"]["schedule"] == 3600.0


def test_without_redis_the_job_runs_in_the_calling_process(tmp_path: Path) -> None:
    from metrify.entrypoints.celery_app import MAINTAIN_STORAGE, create_celery

    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrations.upgrade(url)
    app = create_celery(_settings(tmp_path, url))
    result = app.tasks[MAINTAIN_STORAGE].delay().get(timeout=30)
    assert result["layout"] == "sqlite"
    assert result["created"] == []  # SQLite has no partitions to make


def test_a_celery_worker_runs_the_maintenance_job_sent_through_redis(
    tmp_path: Path, fresh_postgres_url: str, redis_url: str
) -> None:
    from celery.contrib.testing.worker import start_worker

    from metrify.entrypoints.celery_app import MAINTAIN_STORAGE, create_celery

    migrations.upgrade(fresh_postgres_url)
    # more months ahead than the migration made: the job has partitions to create
    app = create_celery(_settings(tmp_path, fresh_postgres_url, redis_url, months_ahead=8))
    queue = f"metrify-test-{uuid.uuid4().hex[:8]}"  # this test's own queue on the shared Redis
    app.conf.task_default_queue = queue
    with start_worker(app, pool="solo", perform_ping_check=False, queues=[queue], shutdown_timeout=30):
        result = app.tasks[MAINTAIN_STORAGE].apply_async(queue=queue).get(timeout=60)
        again = app.tasks[MAINTAIN_STORAGE].apply_async(queue=queue).get(timeout=60)
    assert result["layout"] in ("native", "timescale")
    assert result["created"], result  # the months up to 8 ahead got their partitions
    assert again["created"] == []  # idempotent: a second run makes nothing twice


def test_the_celery_roles_log_as_every_metrify_process_does(tmp_path: Path) -> None:
    """JSON lines on a stderr that is not a terminal, and DATA_DIR/logs/metrify.log: Celery used to
    replace the handlers with its own (console text, no log file) once the worker started."""
    import json
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("METRIFY_")}
    env["METRIFY_DATA_DIR"] = str(tmp_path)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "metrify.entrypoints.celery_app", "worker", "--pool", "solo"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log_file = tmp_path / "logs" / "metrify.log"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "ready." not in (log_file.read_text() if log_file.exists() else ""):
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    logged = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(r["logger"] == "celery.apps.worker" and r["event"].endswith("ready.") for r in logged), logged
    console = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r["logger"] == "celery.apps.worker" for r in console), err
