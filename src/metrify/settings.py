"""Settings: one `Settings` object read from `METRIFY_*` environment variables.

Every default works on the embedded profile (no server needed). Pointing
`METRIFY_DATABASE_URL`, `METRIFY_KAFKA__BOOTSTRAP` and `METRIFY_REDIS_URL` at real services
switches each port to its production adapter without code changes.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, unquote

from platformdirs import user_data_dir
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from metrify.domain.stream.config import StreamConfig

_DURATION = re.compile(r"^\s*(\d+)\s*(us|ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


MAX_DURATION_SECONDS = 100 * 365 * 86_400  # longer is no interval, window or lateness of a meter


def parse_duration(value: object) -> float:
    """A duration in seconds from `90`, `90s`, `15m`, `1h`, `1d`, `1w` (a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m, 1h, 10s or a number of seconds")
    try:  # as a float: a count beyond one (310 digits, as a number or as text) overflows here
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            seconds = float(value)
        else:
            match = _DURATION.match(str(value))
            if not match:
                raise ValueError("expected a duration such as 30m, 1h, 10s or a number of seconds")
            seconds = float(int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds > MAX_DURATION_SECONDS:
        raise ValueError("the duration is too long (at most 100 years)")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration: 900 -> `15m`, 86400 -> `1d`."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _parse_windows(value: object) -> tuple[float, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    windows = tuple(parse_duration(item) for item in items if str(item).strip())
    if not windows or any(w <= 0 for w in windows):
        raise ValueError("expected a comma-separated list of positive durations such as 15m,1h,1d")
    return windows


class StreamSettings(BaseModel):
    """The parameters of the stream contract (DESIGN §3)."""

    interval: Duration = 1800.0
    gap_grace: Duration = 900.0
    out_of_orderness: Duration = 10.0
    allowed_lateness: Duration = 3600.0
    max_kwh: float = Field(1000.0, gt=0)
    future_tolerance: Duration = 3600.0
    state_ttl: Duration = 7 * 86400.0
    windows: Annotated[tuple[float, ...], NoDecode, BeforeValidator(_parse_windows)] = (900.0, 3600.0, 86400.0)
    partitions: int = Field(1, ge=1, le=10_000)
    # Rows per replay transaction: a commit writes every page the batch touched (with a fleet, one
    # per meter), so fewer, larger commits cost less; a killed replay resumes from the last one.
    batch_size: int = Field(50_000, ge=1, le=1_000_000)

    @field_validator("interval")
    @classmethod
    def _interval_positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("the interval must be longer than zero")
        return value

    def to_config(self) -> StreamConfig:
        return StreamConfig.from_seconds(
            interval=self.interval,
            gap_grace=self.gap_grace,
            out_of_orderness=self.out_of_orderness,
            allowed_lateness=self.allowed_lateness,
            max_kwh=self.max_kwh,
            future_tolerance=self.future_tolerance,
            state_ttl=self.state_ttl,
            windows=self.windows,
        )


class KafkaSettings(BaseModel):
    bootstrap: str = ""
    topic_prefix: str = "metrify."
    group_id: str = "metrify-stream"
    sink_group_id: str = "metrify-sink"
    partitions: int = Field(4, ge=1)
    replication_factor: int = Field(1, ge=1)


class AuthSettings(BaseModel):
    """Tokens and rate limits of the REST API (issue 7).

    An empty `secret` on the embedded profile means: generate one and keep it in DATA_DIR/jwt-secret
    (mode 0600); any other profile must set METRIFY_AUTH__SECRET (32 characters or more).
    Rate limits count requests per fixed window of `rate_window`; 0 turns a limit off.
    """

    secret: str = ""
    access_ttl: Duration = 900.0
    refresh_ttl: Duration = 7 * 86400.0
    rate_window: Duration = 60.0
    user_rate_limit: int = Field(600, ge=0)
    ingest_rate_limit: int = Field(6000, ge=0)
    login_rate_limit: int = Field(10, ge=0)
    # sign-in attempts per client address, whatever the emails (password spraying)
    login_client_rate_limit: int = Field(100, ge=0)

    @field_validator("secret")
    @classmethod
    def _secret_long_enough(cls, value: str) -> str:
        if value and len(value) < 32:
            raise ValueError("the secret must be at least 32 characters long (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("access_ttl", "refresh_ttl", "rate_window")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be longer than zero")
        return value


class ApiSettings(BaseModel):
    """The HTTP server and the limits of its requests."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_batch_readings: int = Field(10_000, ge=1)
    page_size: int = Field(100, ge=1, le=1000)
    max_page_size: int = Field(1000, ge=1, le=1000)  # lowers the API's own bound, never raises it
    # Embedded ingest: closed windows stored per batch at most (0: all, with the batch that closed
    # them); the rest over the next batches, or within ~0.1 s once batches stop (StreamPipeline).
    window_writes_per_batch: int = Field(0, ge=0)
    # Embedded ingest: "inline" runs the stream in the API process and answers once a batch is
    # stored; "process" hands it to a stream writer process, which answers once the batch is
    # through the core and in the journal, and stores it while the API takes the next request.
    stream_writer: Literal["inline", "process"] = "inline"
    # With "process": the meter states are saved every N batches (1: with each). The batches in
    # between stay in the ingest journal; a writer that starts runs them through the core again.
    # Saved when the writer stops and when the stream is quiet (application/journaled.py). At most
    # 1,000: a start runs that many batches through the core (and holds them) before it is ready.
    state_save_batches: int = Field(1, ge=1, le=1000)
    # Ingest's Idempotency-Key: a batch's answer is kept this many seconds for a retry of the same
    # batch under the same key (in Redis when configured, else in the API process); 0: keys ignored.
    idempotency_ttl: int = Field(3600, ge=0, le=7 * 86400)


class StorageSettings(BaseModel):
    """Time partitioning and retention of the stream's time-series tables (issue 5).

    PostgreSQL drops whole monthly partitions (TimescaleDB: chunks) whose upper bound is older than
    now minus the retention; SQLite, which has no partitions, deletes the rows older than that.
    A retention of 0 keeps a table's rows forever. `partition_months_ahead` months after the
    current one get their partitions in advance (`metrify db partitions --create-ahead`).
    """

    retention_readings: Duration = 90 * 86400.0
    retention_rejected: Duration = 30 * 86400.0
    retention_too_late: Duration = 30 * 86400.0
    retention_aggregates: Duration = 730 * 86400.0
    partition_months_ahead: int = Field(3, ge=0, le=120)
    maintenance_every: Duration = 3600.0  # how often Celery beat runs the maintenance job

    @field_validator("maintenance_every")
    @classmethod
    def _some_time(cls, value: float) -> float:
        if value < 1:
            raise ValueError("must be at least 1s (beat would run the job without pause)")
        return value


class Settings(BaseSettings):
    """All of Metrify's settings. Environment variables: `METRIFY_<NAME>`, nested `METRIFY_<GROUP>__<NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="METRIFY_", env_nested_delimiter="__", extra="ignore", case_sensitive=False
    )

    data_dir: Path = Field(default_factory=lambda: Path(user_data_dir("metrify", appauthor=False)))
    database_url: str = ""
    redis_url: str = ""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    log_format: Literal["console", "json", ""] = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"] = "INFO"

    @property
    def resolved_database_url(self) -> str:
        # the path quoted: a folder named with '?' or '%' is a path, not a URL's query or escapes
        return self.database_url or f"sqlite:///{quote(str(self.data_dir / 'metrify.db'), safe='/')}"

    @property
    def ingest_journal_path(self) -> Path:
        """Where a stream writer process journals the batches it answered: beside a SQLite
        database file, else in the data folder under a name of the database's URL (a journal
        never meets another database's batches)."""
        url = self.resolved_database_url
        if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
            database = Path(unquote(url[len("sqlite:///") :].split("?", 1)[0]))
            return database.with_name(database.name + "-ingest-journal")
        return self.data_dir / f"ingest-journal-{hashlib.sha256(url.encode()).hexdigest()[:16]}"

    @property
    def resolved_log_format(self) -> str:
        if self.log_format:
            return self.log_format
        return "console" if sys.stderr.isatty() else "json"

    @property
    def profile(self) -> str:
        production = [self.kafka.bootstrap, self.redis_url, not self.resolved_database_url.startswith("sqlite")]
        if all(production):
            return "production"
        return "embedded" if not any(production) else "mixed"


class SettingsError(Exception):
    """A setting from the environment has a value Metrify cannot use."""


def _variable_name(location: tuple[int | str, ...]) -> str:
    return "METRIFY_" + "__".join(str(part).upper() for part in location if not isinstance(part, int))


def load_settings() -> Settings:
    """Read the settings, turning pydantic's report into one line naming the variable."""
    try:
        return Settings()
    except PydanticSettingsError as exc:  # a group's variable (METRIFY_KAFKA=...) that is not JSON
        raise SettingsError(_group_message(str(exc))) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise SettingsError(f"{_variable_name(first['loc'])}: {message} (got {first.get('input')!r})") from None


def _group_message(error: str) -> str:
    """pydantic-settings' "error parsing value for field "kafka" from source ..." as one line
    naming the variable."""
    field = error.split('"')[1] if error.count('"') >= 2 else ""
    if not field:
        return error
    name = f"METRIFY_{field.upper()}"
    return f"{name}: not a JSON object (set its parts one by one instead, e.g. {name}__...)"
