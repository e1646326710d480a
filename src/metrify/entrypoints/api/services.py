"""The API's use cases, assembled once per app from the container's adapters."""

from __future__ import annotations

from dataclasses import dataclass

from metrify.application.auth import AuthService
from metrify.application.idempotency import IdempotentRequests
from metrify.application.ingest import Ingest, KeyAdmin
from metrify.application.meters import MeterService
from metrify.application.ports import Cache, Clock
from metrify.application.queries import OutcomeQueryService
from metrify.application.rate_limits import RateLimit
from metrify.application.serial import BoundedBackoff, SerialPipeline
from metrify.application.users import UserAdmin
from metrify.container import Container
from metrify.entrypoints.api.kafka_ingest import KafkaIngestProducer
from metrify.entrypoints.stream_writer import StreamWriterProcess
from metrify.settings import Settings, SettingsError


@dataclass
class ApiServices:
    settings: Settings
    container: Container
    clock: Clock
    cache: Cache
    auth: AuthService
    users: UserAdmin
    keys: KeyAdmin
    meters: MeterService
    outcomes: OutcomeQueryService
    ingest: Ingest
    idempotency: IdempotentRequests
    pipeline: SerialPipeline | StreamWriterProcess | None
    user_limit: RateLimit
    ingest_limit: RateLimit

    @classmethod
    def build(cls, settings: Settings, container: Container) -> ApiServices:
        clock = container.clock()
        cache = container.cache()
        users = container.user_repository()
        hasher = container.password_hasher()
        meters = MeterService(container.meter_registry(), clock)
        auth = settings.auth
        pipeline: SerialPipeline | StreamWriterProcess | None = None
        if settings.kafka.bootstrap:
            ingest = Ingest(container.meter_registry(), clock, producer=KafkaIngestProducer(container))
        elif settings.api.stream_writer == "process":
            if _in_memory(settings.resolved_database_url):
                raise SettingsError(
                    "METRIFY_API__STREAM_WRITER=process needs a database that another process can open, "
                    "not SQLite in memory"
                )
            pipeline = StreamWriterProcess(settings, container.ingest_journal)
            ingest = Ingest(container.meter_registry(), clock, pipeline=pipeline)
        else:
            window_writes = settings.api.window_writes_per_batch or None
            pipeline = SerialPipeline(
                lambda: container.stream_pipeline(backoff=BoundedBackoff(), window_writes=window_writes)
            )
            ingest = Ingest(container.meter_registry(), clock, pipeline=pipeline)
        windows = settings.stream.to_config().windows
        services = cls(
            settings=settings,
            container=container,
            clock=clock,
            cache=cache,
            auth=AuthService(
                users,
                hasher,
                container.token_codec(),
                cache,
                clock,
                access_ttl=auth.access_ttl,
                refresh_ttl=auth.refresh_ttl,
                login_limit=RateLimit(auth.login_rate_limit, auth.rate_window),
                login_client_limit=RateLimit(auth.login_client_rate_limit, auth.rate_window),
                revocation_log=container.revocation_log(),
            ),
            users=UserAdmin(users, hasher, clock),
            keys=KeyAdmin(container.ingest_key_repository(), clock),
            meters=meters,
            outcomes=OutcomeQueryService(container.fleet_queries(), meters, windows, container.lag_probe()),
            ingest=ingest,
            idempotency=IdempotentRequests(container.idempotency_cache(), settings.api.idempotency_ttl),
            pipeline=pipeline,
            user_limit=RateLimit(auth.user_rate_limit, auth.rate_window),
            ingest_limit=RateLimit(auth.ingest_rate_limit, auth.rate_window),
        )
        services.auth.restore_revocations()  # the logouts of the processes before this one
        return services


def _in_memory(url: str) -> bool:
    """SQLite in memory: `sqlite://`, or `:memory:` as the database."""
    return url.startswith("sqlite") and (url.rstrip("/").endswith(":") or ":memory:" in url)
