"""The composition root: the only place that knows which adapter serves which port.

Each port gets its embedded adapter unless its setting points at a real service (DESIGN §1):
storage is SQLite unless METRIFY_DATABASE_URL says otherwise, the event bus is in-process unless
METRIFY_KAFKA__BOOTSTRAP is set, the cache is in-process unless METRIFY_REDIS_URL is set.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metrify.adapters.crypto import Argon2PasswordHasher, JwtTokenCodec, load_or_create_secret
from metrify.adapters.files.journal import SqliteIngestJournal
from metrify.adapters.memory.bounded_cache import BoundedCache
from metrify.adapters.memory.bus import InMemoryCache, InMemoryEventBus
from metrify.adapters.sqlalchemy.api_queries import SqlAlchemyFleetQueries
from metrify.adapters.sqlalchemy.engine import SqliteCheckpointer, create_engine_for
from metrify.adapters.sqlalchemy.meters import SqlAlchemyMeterRegistry
from metrify.adapters.sqlalchemy.partitions import SqlAlchemyStorageMaintenance
from metrify.adapters.sqlalchemy.queries import SqlAlchemyOutcomeQueries
from metrify.adapters.sqlalchemy.unit_of_work import SqlAlchemyStreamUnitOfWork
from metrify.adapters.sqlalchemy.users import (
    SqlAlchemyIngestKeyRepository,
    SqlAlchemyRevocationLog,
    SqlAlchemyUserRepository,
)
from metrify.adapters.system import SystemClock
from metrify.application.meters import stream_intervals
from metrify.application.queries import SynchronousLag
from metrify.application.storage import RetentionPolicy
from metrify.application.stream import Backoff, StreamPipeline
from metrify.settings import Settings, SettingsError


@contextmanager
def _web_frameworks_hidden() -> Iterator[None]:
    """dependency_injector.containers imports its `wiring` module, which imports FastAPI,
    Starlette and Werkzeug whenever they are installed, to recognise their markers in `@inject`
    functions. Metrify wires nothing (the providers below are passed explicitly), and that import
    cost every CLI command 0.4 s: those modules are hidden from it, unless already loaded (the
    API process), and are importable again right after."""
    names = [name for name in ("fastapi.params", "starlette.requests", "werkzeug.local") if name not in sys.modules]
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]  # import of it raises ImportError
    try:
        yield
    finally:
        for name in names:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


with _web_frameworks_hidden():
    from dependency_injector import containers, providers


def _engine(url: str):  # noqa: ANN202 - a generator resource
    engine = create_engine_for(url)
    checkpointer = SqliteCheckpointer.start_for(engine)
    try:
        yield engine
    finally:
        if checkpointer is not None:
            checkpointer.stop()
        engine.dispose()


def _log_store_retry(attempt: int, delay: float, error: Exception) -> None:
    logging.getLogger("metrify.store").warning(
        "database unreachable, retrying: attempt=%s retry_in=%.1fs reason=%s", attempt, delay, error
    )


# ingest's kept answers in the API process: most often a few hundred bytes each, at most 10,000
# rejected readings listed (~30 KB compressed): at most this many, and this many bytes
IDEMPOTENT_ANSWERS_IN_PROCESS = 100_000
IDEMPOTENT_ANSWER_BYTES_IN_PROCESS = 64 << 20


def _ingest_journal(path: Path):  # noqa: ANN202 - a generator resource
    # Its log is copied back from a thread, not inside an append (see SqliteIngestJournal).
    journal = SqliteIngestJournal(path, checkpoint_in_thread=True)
    try:
        yield journal
    finally:
        journal.close()


def _redis_client(url: str):  # noqa: ANN202 - a generator resource
    from metrify.adapters.redis import open_redis

    yield from open_redis(url)


def _kafka_producer(bootstrap: str):  # noqa: ANN202 - a generator resource
    from metrify.adapters.kafka.bus import open_producer

    yield from open_producer(bootstrap)


def _redis_cache(client):  # noqa: ANN001, ANN202
    from metrify.adapters.redis import RedisCache

    return RedisCache(client)


def _kafka_bus(producer, topic_prefix: str):  # noqa: ANN001, ANN202
    from metrify.adapters.kafka.bus import KafkaEventBus

    return KafkaEventBus(producer, topic_prefix)


def _kafka_topics(prefix: str):  # noqa: ANN202
    from metrify.adapters.kafka.clients import TopicNames

    return TopicNames(prefix)


def _kafka_stream_log(**kwargs):  # noqa: ANN003, ANN202
    from metrify.adapters.kafka.stream_log import KafkaStreamLog

    return KafkaStreamLog(**kwargs)


def _kafka_outcome_feed(**kwargs):  # noqa: ANN003, ANN202
    from metrify.adapters.kafka.feed import KafkaOutcomeFeed

    return KafkaOutcomeFeed(**kwargs)


def _stored_sink_offsets(engine, consumer: str):  # noqa: ANN001, ANN202
    from functools import partial

    from metrify.adapters.sqlalchemy.sink_offsets import stored_sink_offsets

    return partial(stored_sink_offsets, engine, consumer)


def _kafka_lag_probe(**kwargs):  # noqa: ANN003, ANN202
    from metrify.adapters.kafka.lag import KafkaLagProbe

    return KafkaLagProbe(**kwargs)


def _kafka_reading_publisher(**kwargs):  # noqa: ANN003, ANN202
    from metrify.adapters.kafka.publisher import KafkaReadingPublisher

    return KafkaReadingPublisher(**kwargs)


def _sink_uow(engine):  # noqa: ANN001, ANN202
    from metrify.adapters.sqlalchemy.sink_offsets import SqlAlchemySinkUnitOfWork

    return SqlAlchemySinkUnitOfWork(engine)


def _jwt_secret(settings: Settings) -> str:
    """METRIFY_AUTH__SECRET; on the embedded profile an empty one means DATA_DIR/jwt-secret (0600)."""
    if settings.auth.secret:
        return settings.auth.secret
    if settings.profile != "embedded":
        raise SettingsError(
            f"METRIFY_AUTH__SECRET: must be set on the {settings.profile} profile "
            "(32 characters or more, the same for every API process; e.g. `openssl rand -hex 32`)"
        )
    return load_or_create_secret(settings.data_dir / "jwt-secret")


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)

    engine = providers.Resource(_engine, url=settings.provided.resolved_database_url)
    stream_uow = providers.Factory(SqlAlchemyStreamUnitOfWork, engine=engine)
    outcome_queries = providers.Factory(SqlAlchemyOutcomeQueries, engine=engine)
    backoff = providers.Factory(Backoff, on_retry=_log_store_retry)

    meter_registry = providers.Singleton(SqlAlchemyMeterRegistry, engine=engine)

    # The registry's intervals are read each time a pipeline is made (a replay, the API's first
    # ingest or its reload after a failed write): meters the stream meets later take them.
    stream_pipeline = providers.Factory(
        StreamPipeline,
        config=settings.provided.stream.to_config.call(),
        partitions=settings.provided.stream.partitions,
        uow_factory=stream_uow.provider,
        clock=clock,
        backoff=backoff,
        intervals=providers.Callable(stream_intervals, registry=meter_registry),
    )

    ingest_journal = providers.Resource(_ingest_journal, path=settings.provided.ingest_journal_path)

    redis_client = providers.Resource(_redis_client, url=settings.provided.redis_url)
    kafka_producer = providers.Resource(_kafka_producer, bootstrap=settings.provided.kafka.bootstrap)

    cache = providers.Selector(
        providers.Callable(lambda s: "redis" if s.redis_url else "memory", settings),
        memory=providers.Singleton(InMemoryCache),
        redis=providers.Singleton(_redis_cache, client=redis_client),
    )
    # answers kept for ingest's Idempotency-Key: Redis, shared by the API processes; else a cache
    # of their own in the API process, bounded (an answer forgotten early: a retry is ingested
    # again, its readings duplicates)
    idempotency_cache = providers.Selector(
        providers.Callable(lambda s: "redis" if s.redis_url else "memory", settings),
        memory=providers.Singleton(
            BoundedCache, max_items=IDEMPOTENT_ANSWERS_IN_PROCESS, max_bytes=IDEMPOTENT_ANSWER_BYTES_IN_PROCESS
        ),
        redis=cache,  # the same RedisCache: both select Redis by the same setting
    )
    event_bus = providers.Selector(
        providers.Callable(lambda s: "kafka" if s.kafka.bootstrap else "memory", settings),
        memory=providers.Singleton(InMemoryEventBus),
        kafka=providers.Singleton(
            _kafka_bus, producer=kafka_producer, topic_prefix=settings.provided.kafka.topic_prefix
        ),
    )

    # Kafka mode (issue 6): topics, the worker's log, the sink's feed and unit of work, the producer
    # of raw readings. Instance-specific arguments (transactional id, health) come at call time.
    kafka_topics = providers.Singleton(_kafka_topics, prefix=settings.provided.kafka.topic_prefix)
    kafka_stream_log = providers.Factory(
        _kafka_stream_log,
        bootstrap=settings.provided.kafka.bootstrap,
        names=kafka_topics,
        group_id=settings.provided.kafka.group_id,
    )
    kafka_outcome_feed = providers.Factory(
        _kafka_outcome_feed,
        bootstrap=settings.provided.kafka.bootstrap,
        names=kafka_topics,
        group_id=settings.provided.kafka.sink_group_id,
    )
    kafka_reading_publisher = providers.Factory(_kafka_reading_publisher, bootstrap=settings.provided.kafka.bootstrap)
    stored_sink_offsets = providers.Factory(
        _stored_sink_offsets, engine=engine, consumer=settings.provided.kafka.sink_group_id
    )
    # how far processing stands behind ingest, for the stream summary
    lag_probe = providers.Selector(
        providers.Callable(lambda s: "kafka" if s.kafka.bootstrap else "embedded", settings),
        embedded=providers.Singleton(SynchronousLag),
        kafka=providers.Singleton(
            _kafka_lag_probe,
            bootstrap=settings.provided.kafka.bootstrap,
            names=kafka_topics,
            worker_group=settings.provided.kafka.group_id,
            sink_group=settings.provided.kafka.sink_group_id,
            stored=stored_sink_offsets,
        ),
    )
    sink_uow = providers.Factory(_sink_uow, engine=engine)
    storage_maintenance = providers.Factory(SqlAlchemyStorageMaintenance, engine=engine)
    retention_policy = providers.Factory(
        RetentionPolicy,
        settings.provided.storage.retention_readings,
        settings.provided.storage.retention_rejected,
        settings.provided.storage.retention_too_late,
        settings.provided.storage.retention_aggregates,
    )

    # -- the REST API (issue 7): users, ingest keys, the meter registry, the read side ------------
    password_hasher = providers.Singleton(Argon2PasswordHasher)
    token_codec = providers.Singleton(JwtTokenCodec, secret=providers.Callable(_jwt_secret, settings))
    user_repository = providers.Singleton(SqlAlchemyUserRepository, engine=engine)
    ingest_key_repository = providers.Singleton(SqlAlchemyIngestKeyRepository, engine=engine)
    # Redis keeps token revocations for every API process and across restarts; an API process
    # without it keeps them itself, and in the database for the processes after it.
    revocation_log = providers.Selector(
        providers.Callable(lambda s: "redis" if s.redis_url else "database", settings),
        redis=providers.Object(None),
        database=providers.Singleton(SqlAlchemyRevocationLog, engine=engine),
    )
    fleet_queries = providers.Singleton(SqlAlchemyFleetQueries, engine=engine)


def build_container(settings: Settings) -> Container:
    container = Container(settings=settings)
    return container


def adapter_names(settings: Settings) -> dict[str, str]:
    """Which adapter serves each port under these settings (for `metrify info`)."""
    sqlite = settings.resolved_database_url.startswith("sqlite")
    return {
        "storage": "SqlAlchemy on SQLite" if sqlite else "SqlAlchemy on PostgreSQL",
        "event bus": "KafkaEventBus" if settings.kafka.bootstrap else "InMemoryEventBus",
        "cache / rate limits": "RedisCache" if settings.redis_url else "InMemoryCache",
        "clock": "SystemClock",
    }
