"""Request and response bodies of the REST API (pydantic); times are RFC 3339 UTC text, as in exports."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from metrify.domain.users import EMAIL_PATTERN, WHITESPACE, Role

NONBLANK = f"[^{WHITESPACE}]"  # somewhere in the text: not only whitespace
# not only whitespace, and no NUL anywhere (no store of ours holds one in text)
NAME = rf"^[^\x00]*[^{WHITESPACE}\x00][^\x00]*$"
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=NAME)]
Names = Annotated[list[Name], Field(max_length=10_000)]
Email = Annotated[str, Field(min_length=5, max_length=320, pattern=EMAIL_PATTERN)]
Password = Annotated[str, Field(min_length=8, max_length=1024, pattern=NONBLANK)]


def _json_boolean(value: Any) -> Any:
    if not isinstance(value, bool):  # not 0 or 1 for false or true
        raise ValueError("must be true or false")
    return value


def _json_integer(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():  # JSON's 40.0 is the integer 40
        return int(value)
    return value


IntervalSeconds = Annotated[int, Field(ge=1, le=31 * 86400), BeforeValidator(_json_integer)]
StrictFalse = Annotated[Literal[False], BeforeValidator(_json_boolean)]
StrictTrue = Annotated[Literal[True], BeforeValidator(_json_boolean)]


class Body(BaseModel):
    """A request body: unknown fields and loosely typed values (`"5"` for 5) are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Page(BaseModel):
    next_cursor: str | None = Field(None, description="Pass it as `cursor` for the next page; null on the last one.")


# -- auth --------------------------------------------------------------------------------------


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds the access token lives.")
    refresh_token: str
    refresh_expires_in: int


class RefreshIn(Body):
    refresh_token: str = Field(min_length=1, max_length=4096)


class LogoutIn(Body):
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


class _NewUser(Body):
    email: Email
    password: Password


class NewUser(_NewUser):
    """A USER sees the meters assigned to them."""

    role: Literal[Role.USER]
    meters: Names = Field(default_factory=list)


class NewOperator(_NewUser):
    """An OPERATOR works on the regions assigned to them."""

    role: Literal[Role.OPERATOR]
    regions: Names = Field(default_factory=list)


class NewAdmin(_NewUser):
    """An ADMIN sees and manages everything."""

    role: Literal[Role.ADMIN]


UserCreate = Annotated[NewUser | NewOperator | NewAdmin, Field(discriminator="role")]


class UserUpdate(Body):
    """Only the fields given change; a new role drops assignments that no longer fit it."""

    role: Role | None = Field(None, strict=False)  # the text of a role, as JSON has no enums
    meters: Names | None = None
    regions: Names | None = None
    active: bool | None = None
    password: Password | None = None


# -- ingest keys -------------------------------------------------------------------------------


class KeyForRegions(Body):
    """A key for the meters of some regions."""

    name: Name
    regions: Annotated[list[Name], Field(min_length=1, max_length=1_000)]
    all_regions: StrictFalse = False


class KeyForAllRegions(Body):
    """A key for every meter, whatever its region."""

    name: Name
    all_regions: StrictTrue


KeyCreate = KeyForRegions | KeyForAllRegions


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


class MeterCreate(Body):
    meter_id: Name
    region: Name | None = None
    expected_interval_seconds: IntervalSeconds | None = None


class MeterUpdate(Body):
    """Only the fields given change; null clears a field."""

    region: Name | None = None
    expected_interval_seconds: IntervalSeconds | None = None


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


_AS_RECEIVED = (
    "As received; an integer of more digits than a number here holds (over 4,300) as the text of its digits, "
    "a number beyond a double (1e400) as null."
)


class RejectedOut(BaseModel):
    meter_id: str
    timestamp: Any = Field(description=_AS_RECEIVED)
    consumption_kwh: Any = Field(description=_AS_RECEIVED)
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
    watermark_lag_seconds: float | None = Field(
        description="How far the watermark stands behind the API's clock, in seconds (event-time lag: "
        "how fresh the partition's data is; negative when event times run ahead of the clock). "
        "Null before the partition's first valid reading."
    )


class ConsumerLagOut(BaseModel):
    group: str
    topic: str
    partition: int
    committed: int | None = Field(description="The next offset the group committed; null: none yet.")
    end: int = Field(description="The partition's end offset.")
    lag: int = Field(description="Records between the two.")


class LagOut(BaseModel):
    """How far processing stands behind ingest."""

    ingest: Literal["embedded", "kafka"]
    unprocessed: int | None = Field(
        description="Readings taken in and not yet through the stream core: the workers' lag on the raw "
        "topic (Kafka); 0 on the embedded profile, where each batch goes through the core before its "
        "answer. Null when the broker did not answer (see error). Measured at most every 2 s."
    )
    unstored: int | None = Field(
        description="Outcome records the workers produced and the sink has not stored yet (Kafka); "
        "0 on the embedded profile."
    )
    consumers: list[ConsumerLagOut] = Field(description="Each consumer group's partitions (Kafka).")
    error: str | None = Field(description="Why the lag is not known, when it is not.")


class SummaryOut(BaseModel):
    tables: dict[str, int]
    readings_by_status: dict[str, int]
    rejected_by_reason: dict[str, int]
    open_gaps: int
    partitions: list[PartitionOut]
    lag: LagOut


# -- ingest ------------------------------------------------------------------------------------


class ReadingIn(BaseModel):
    """A reading as a meter or head-end sends it; names are matched case-insensitively (`meterId`,
    `LCLid`, `DateTime`, `energy_kwh`, ... as in files). Any value is taken: a reading the stream
    cannot accept is rejected with its reason in the answer, and never fails the batch."""

    model_config = ConfigDict(extra="allow")

    meter_id: Any = Field(None, description="The meter's id (trimmed).")
    timestamp: Any = Field(None, description="`2024-03-04T10:00:00Z`, or epoch seconds (milliseconds above 1e11).")
    consumption_kwh: Any = Field(None, description="kWh of the interval (or `energy_kwh`), a number or its text.")
    voltage: Any = None
    current: Any = None
    power_kw: Any = None
    power_factor: Any = None
    frequency: Any = None
    region: Any = Field(None, description="Where the meter is, when the registry does not know it yet.")


class BatchIn(BaseModel):
    readings: list[ReadingIn | Any] = Field(max_length=10_000, description="Objects; anything else is rejected.")


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
