"""Request and response bodies of the REST API (pydantic); times are RFC 3339 UTC text, as in exports."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from metrify.domain.users import Role

Name = Annotated[str, Field(min_length=1, max_length=200)]


class Page(BaseModel):
    next_cursor: str | None = Field(None, description="Pass it as `cursor` for the next page; null on the last one.")


# -- auth --------------------------------------------------------------------------------------


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds the access token lives.")
    refresh_token: str
    refresh_expires_in: int


class RefreshIn(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=4096)


class LogoutIn(BaseModel):
    refresh_token: str | None = Field(None, max_length=4096, description="Revoked too, when given.")


# -- users -------------------------------------------------------------------------------------


class UserOut(BaseModel):
    user_id: str
    email: str
    role: Role
    active: bool
    meters: list[str] = Field(description="Meters a USER sees.")
    regions: list[str] = Field(description="Regions an OPERATOR works on.")
    created_at: str


class UserPage(Page):
    items: list[UserOut]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=8, max_length=1024)
    role: Role
    meters: list[str] = Field(default_factory=list, max_length=10_000)
    regions: list[str] = Field(default_factory=list, max_length=1_000)


class UserUpdate(BaseModel):
    """Only the fields given change; a new role drops assignments that no longer fit it."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    meters: list[str] | None = Field(None, max_length=10_000)
    regions: list[str] | None = Field(None, max_length=1_000)
    active: bool | None = None
    password: str | None = Field(None, min_length=8, max_length=1024)


# -- ingest keys -------------------------------------------------------------------------------


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    regions: list[str] = Field(default_factory=list, max_length=1_000)
    all_regions: bool = False


class KeyOut(BaseModel):
    key_id: str
    name: str
    prefix: str = Field(description="The token's first characters, to recognise it.")
    regions: list[str]
    all_regions: bool
    active: bool
    created_by: str
    created_at: str
    revoked_at: str | None


class KeyCreated(KeyOut):
    token: str = Field(description="Send it as X-API-Key. Shown this once: only its hash is stored.")


# -- meters ------------------------------------------------------------------------------------


class MeterOut(BaseModel):
    meter_id: str
    region: str | None
    expected_interval_seconds: int | None


class MeterPage(Page):
    items: list[MeterOut]


class MeterCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    meter_id: Name
    region: str | None = Field(None, min_length=1, max_length=200)
    expected_interval_seconds: int | None = Field(None, ge=1, le=31 * 86400)


class MeterUpdate(BaseModel):
    """Only the fields given change; null clears a field."""

    model_config = ConfigDict(extra="forbid")

    region: str | None = Field(None, min_length=1, max_length=200)
    expected_interval_seconds: int | None = Field(None, ge=1, le=31 * 86400)


# -- outcomes ----------------------------------------------------------------------------------


class ReadingOut(BaseModel):
    meter_id: str
    timestamp: str
    slot: str
    consumption_kwh: float
    status: str = Field(description="ON_TIME or LATE")
    partition: int
    voltage: float | None = None
    current: float | None = None
    power_kw: float | None = None
    power_factor: float | None = None
    frequency: float | None = None
    region: str | None = None


class ReadingPage(Page):
    items: list[ReadingOut]


class AggregateOut(BaseModel):
    meter_id: str
    window: str
    window_start: str
    window_end: str
    count: int
    sum_kwh: float
    min_kwh: float
    max_kwh: float
    mean_kwh: float


class AggregatePage(Page):
    items: list[AggregateOut]


class RegionAggregateOut(BaseModel):
    region: str
    window: str
    window_start: str
    window_end: str
    meters: int = Field(description="Meters with a reading in the window.")
    count: int
    sum_kwh: float


class RegionAggregatePage(Page):
    items: list[RegionAggregateOut]


class GapOut(BaseModel):
    meter_id: str
    missing_from: str
    missing_to: str | None
    missing_intervals: int
    status: str = Field(description="open or closed")


class GapPage(Page):
    items: list[GapOut]


class TooLateOut(BaseModel):
    meter_id: str
    timestamp: str
    consumption_kwh: float
    delay_seconds: float
    partition: int


class TooLatePage(Page):
    items: list[TooLateOut]


class RejectedOut(BaseModel):
    meter_id: str
    timestamp: Any = Field(description="As received.")
    consumption_kwh: Any = Field(description="As received.")
    reason: str
    partition: int


class RejectedPage(Page):
    items: list[RejectedOut]


class RejectedCounts(BaseModel):
    total: int
    by_reason: dict[str, int]


class PartitionOut(BaseModel):
    stream: str
    partition: int
    watermark: str | None = Field(description="Largest valid event time minus the out-of-orderness bound.")
    max_event_time: str | None
    next_offset: int


class SummaryOut(BaseModel):
    tables: dict[str, int]
    readings_by_status: dict[str, int]
    rejected_by_reason: dict[str, int]
    open_gaps: int
    partitions: list[PartitionOut]


# -- ingest ------------------------------------------------------------------------------------


class ReadingIn(BaseModel):
    """A reading as a meter or head-end sends it; names are matched case-insensitively. A reading
    the stream cannot accept is rejected with its reason; it never fails the batch."""

    model_config = ConfigDict(extra="allow")

    meter_id: str | None = None
    timestamp: str | float | None = Field(None, description="RFC 3339, or epoch seconds (milliseconds above 1e11).")
    consumption_kwh: str | float | None = Field(None, description="Or `energy_kwh`.")
    voltage: float | None = None
    current: float | None = None
    power_kw: float | None = None
    power_factor: float | None = None
    frequency: float | None = None
    region: str | None = None


class BatchIn(BaseModel):
    readings: list[ReadingIn] = Field(max_length=10_000)


class IndexedReason(BaseModel):
    index: int = Field(description="Position of the reading in the batch, from 0.")
    reason: str


class IngestOut(BaseModel):
    received: int
    processed: bool = Field(description="False when the batch was queued for the stream workers (Kafka).")
    queued: int
    accepted: int
    late: int
    too_late: int
    rejected: int
    rejected_by_reason: dict[str, int]
    rejected_readings: list[IndexedReason]
    refused: list[IndexedReason] = Field(description="Readings outside the key's regions: not ingested.")


# -- operations --------------------------------------------------------------------------------


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    checks: dict[str, str]
