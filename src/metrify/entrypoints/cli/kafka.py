"""Kafka mode from the command line: `metrify topics create|list|lag`, `metrify worker`,
`metrify sink`, and the producing side of `metrify replay FILE --to-kafka`."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from metrify.application.queries import ConsumerLag, total_behind
from metrify.application.replay import ReplayOptions, SourceError
from metrify.entrypoints.cli.app import app, console, state
from metrify.entrypoints.cli.errors import UserError
from metrify.settings import Settings

log = logging.getLogger("metrify.kafka")

topics_app = typer.Typer(
    help="Kafka topics: create what is missing, list them, show consumer lag.", no_args_is_help=True
)
app.add_typer(topics_app, name="topics")


def _settings() -> Settings:
    settings = state.settings
    assert settings is not None
    if not settings.kafka.bootstrap:
        raise UserError("Kafka is not configured: set METRIFY_KAFKA__BOOTSTRAP (e.g. 127.0.0.1:9092)")
    return settings


def _unavailable(exc: Exception) -> UserError:
    return UserError(f"kafka unreachable: {exc}", 1)


@topics_app.command("create")
def topics_create(
    partitions: Annotated[
        int | None,
        typer.Option(min=1, max=10_000, help="Partitions of every topic (default METRIFY_KAFKA__PARTITIONS)."),
    ] = None,
    replication_factor: Annotated[
        int | None,
        typer.Option(min=1, max=100, help="Replicas of every partition (default METRIFY_KAFKA__REPLICATION_FACTOR)."),
    ] = None,
) -> None:
    """Create the topics that are missing; say which exist with other settings. Idempotent."""
    from metrify.adapters.kafka.admin import KafkaUnavailable, create_topics

    settings = _settings()
    names = state.get_container().kafka_topics()
    wanted = partitions or settings.kafka.partitions
    replicas = replication_factor or settings.kafka.replication_factor
    try:
        results = create_topics(settings.kafka.bootstrap, names, wanted, replicas)
    except KafkaUnavailable as exc:
        raise _unavailable(exc) from None
    differs = 0
    for topic, action in results:
        detail = f"{topic.partitions} partitions, replication {topic.replication}"
        if action == "differs":
            differs += 1
            detail = "; ".join(topic.differences)
        console.print(f"{action:8} {topic.spec.name:40} {detail}")
    if differs:
        raise UserError(
            f"{differs} topic(s) exist with other settings; Metrify does not change them (delete them, or use "
            "another METRIFY_KAFKA__TOPIC_PREFIX)",
            1,
        )


@topics_app.command("list")
def topics_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """Show Metrify's topics with their partitions and message counts."""
    from metrify.adapters.kafka.admin import KafkaUnavailable, describe_topics

    settings = _settings()
    names = state.get_container().kafka_topics()
    try:
        states = describe_topics(settings.kafka.bootstrap, names)
    except KafkaUnavailable as exc:
        raise _unavailable(exc) from None
    if as_json:
        for s in states:
            row = {
                "topic": s.spec.name,
                "role": s.spec.role,
                "exists": s.exists,
                "partitions": s.partitions,
                "replication": s.replication,
                "messages": s.messages,
            }
            print(orjson.dumps(row).decode())
        return
    table = Table(title=f"Kafka topics under {names.prefix!r} at {settings.kafka.bootstrap}")
    for column in ("topic", "role", "partitions", "replication", "messages"):
        table.add_column(column, justify="right" if column in ("partitions", "replication", "messages") else "left")
    for s in states:
        if s.exists:
            table.add_row(s.spec.name, s.spec.role, str(s.partitions), str(s.replication), f"{s.messages:,}")
        else:
            table.add_row(s.spec.name, s.spec.role, "missing", "", "")
    console.print(table)
    console.print(
        "messages = offsets in retention per topic (transactional topics count one commit marker per "
        "transaction; a compacted changelog counts records not yet compacted away)"
    )


@topics_app.command("lag")
def topics_lag(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of tables.")] = False,
) -> None:
    """How far the workers (input) and the sink (outputs, offsets as the database holds them) lag."""
    from metrify.adapters.kafka.admin import KafkaUnavailable
    from metrify.adapters.kafka.lag import RawTopicMissing, measure_lag

    settings = _settings()
    container = state.get_container()
    try:
        worker, sink = measure_lag(
            settings.kafka.bootstrap,
            container.kafka_topics(),
            settings.kafka.group_id,
            settings.kafka.sink_group_id,
            container.stored_sink_offsets(),
        )
    except KafkaUnavailable as exc:
        raise _unavailable(exc) from None
    except RawTopicMissing as exc:
        raise UserError(str(exc)) from None

    if as_json:
        report = {
            "worker": {"group": settings.kafka.group_id, "lag": total_behind(worker), "partitions": _rows(worker)},
            "sink": {"group": settings.kafka.sink_group_id, "lag": total_behind(sink), "partitions": _rows(sink)},
        }
        print(orjson.dumps(report).decode())
        return
    for title, rows in (
        (f"workers ({settings.kafka.group_id})", worker),
        (f"sink ({settings.kafka.sink_group_id})", sink),
    ):
        table = Table(title=f"{title}: lag {total_behind(rows):,}")
        for column in ("topic", "partition", "committed", "end", "lag"):
            table.add_column(column, justify="left" if column == "topic" else "right")
        for row in rows:
            shown = "-" if row.committed is None else f"{row.committed:,}"
            table.add_row(row.topic, str(row.partition), shown, f"{row.end:,}", f"{row.behind:,}")
        console.print(table)


def _rows(rows: list[ConsumerLag]) -> list[dict[str, object]]:
    return [
        {"topic": r.topic, "partition": r.partition, "committed": r.committed, "end": r.end, "lag": r.behind}
        for r in rows
    ]


@app.command()
def worker(
    batch_size: Annotated[int, typer.Option(min=1, max=1_000_000, help="Most readings per transaction.")] = 5000,
    batch_wait: Annotated[
        float,
        typer.Option(min=0.001, max=60, help="Seconds a poll waits when nothing is queued (no batch waits to fill)."),
    ] = 0.1,
    metrics_port: Annotated[int, typer.Option(min=0, max=65535, help="Prometheus metrics port (0: none).")] = 9464,
    instance_id: Annotated[
        str | None,
        typer.Option(
            help="A stable name for this worker (e.g. its pod name): a restart with the same name aborts the "
            "transaction its predecessor left open at once. Default: host name and process id."
        ),
    ] = None,
    session_timeout: Annotated[
        float,
        typer.Option(min=6, max=300, help="Seconds of silence after which the group gives a worker's partitions away."),
    ] = 10.0,
    transaction_timeout: Annotated[
        float, typer.Option(min=5, max=900, help="Seconds after which the broker aborts a dead worker's transaction.")
    ] = 15.0,
    stop_when_idle: Annotated[
        float | None, typer.Option(min=0.1, help="Exit after this many seconds without input (batch runs, benchmarks).")
    ] = None,
) -> None:
    """Process the raw topic exactly once, in a consumer group; SIGTERM drains and exits."""
    from metrify.adapters.kafka.admin import TopicsMismatch, TopicsMissing
    from metrify.application.stream import PartitionCountMismatch
    from metrify.entrypoints.worker import WorkerOptions, run_worker

    settings = _settings()
    options = WorkerOptions(
        batch_size=batch_size,
        batch_wait=batch_wait,
        metrics_port=metrics_port,
        instance_id=instance_id,
        session_timeout=session_timeout,
        transaction_timeout=transaction_timeout,
        stop_when_idle=stop_when_idle,
    )
    try:
        totals = run_worker(settings, state.get_container(), options)
    except (TopicsMissing, TopicsMismatch, PartitionCountMismatch) as exc:
        raise UserError(str(exc)) from None
    summary = {
        "readings": totals.records,
        "batches": totals.batches,
        "aborted": totals.aborted,
        "busy_seconds": round(totals.busy_seconds, 3),
        "busy_cpu_seconds": round(totals.busy_cpu_seconds, 3),
        "readings_per_second": round(totals.rate, 1),
    }
    print(orjson.dumps({"worker": summary}).decode())


@app.command()
def sink(
    batch_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="Most output messages per database transaction.")
    ] = 500,
    batch_wait: Annotated[
        float, typer.Option(min=0.001, max=60, help="Longest wait, in seconds, to fill a batch.")
    ] = 0.05,
    metrics_port: Annotated[int, typer.Option(min=0, max=65535, help="Prometheus metrics port (0: none).")] = 9465,
    session_timeout: Annotated[float, typer.Option(min=6, max=300, help="Group session timeout in seconds.")] = 10.0,
    stop_when_idle: Annotated[
        float | None, typer.Option(min=0.1, help="Exit after this many seconds without input.")
    ] = None,
) -> None:
    """Store the committed stream outputs in the database, exactly once; SIGTERM drains and exits."""
    from metrify.adapters.kafka.admin import TopicsMismatch, TopicsMissing
    from metrify.entrypoints.cli.stream import _ensure_schema
    from metrify.entrypoints.sink import SinkOptions, run_sink

    settings = _settings()
    delay = 0.5
    while True:  # a database that is away at start is waited for, like one that goes away later
        try:
            _ensure_schema()
            break
        except UserError as exc:
            if exc.exit_code != 1 or "unreachable" not in str(exc):
                raise
            log.warning("%s; retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    options = SinkOptions(
        batch_size=batch_size,
        batch_wait=batch_wait,
        metrics_port=metrics_port,
        session_timeout=session_timeout,
        stop_when_idle=stop_when_idle,
    )
    try:
        totals = run_sink(settings, state.get_container(), options)
    except (TopicsMissing, TopicsMismatch) as exc:
        raise UserError(str(exc)) from None
    print(orjson.dumps({"sink": {"events": totals.records, "transactions": totals.batches}}).decode())


def replay_to_kafka(file: Path, options: ReplayOptions, partitions_given: bool) -> None:
    """`metrify replay FILE --to-kafka`: the file's rows, through the simulated network and pacing
    of the embedded replay, to the raw topic (idempotent producer, keyed and partitioned by meter)."""
    from metrify.adapters.files.readers import FileReadingSource
    from metrify.adapters.kafka.admin import KafkaUnavailable, topic_partitions, wait_for_broker
    from metrify.adapters.kafka.publisher import DeliveryFailed
    from metrify.application.kafka_stream import publish_readings

    settings = _settings()
    try:
        source = FileReadingSource(file)
    except SourceError as exc:
        raise UserError(str(exc)) from None
    container = state.get_container()
    names = container.kafka_topics()
    try:
        present = topic_partitions(wait_for_broker(settings.kafka.bootstrap, timeout=60))
    except KafkaUnavailable as exc:
        raise _unavailable(exc) from None
    if names.raw not in present:
        raise UserError(f"the topic {names.raw} does not exist: run `metrify topics create --partitions N` first")
    partitions = present[names.raw][0]
    if partitions_given and options.partitions != partitions:
        raise UserError(f"--partitions {options.partitions}, but {names.raw} has {partitions} partitions")
    publisher = container.kafka_reading_publisher(topic=names.raw, partitions=partitions)
    started = time.monotonic()
    last = [started]

    def progress(sent: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 5:
            last[0] = now
            log.info("replay to kafka: %s readings sent (%.0f/s)", sent, sent / max(now - started, 1e-9))

    try:
        sent = publish_readings(source, publisher, options.network, options.speed, progress)
    except DeliveryFailed as exc:
        raise UserError(str(exc), 1) from None
    seconds = time.monotonic() - started
    console.print(
        f"produced {sent:,} readings from {file.name} to {names.raw} ({partitions} partitions) in {seconds:.1f} s"
        f" ({sent / max(seconds, 1e-9):,.0f}/s)"
    )
    sys.stdout.flush()
