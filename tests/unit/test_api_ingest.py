"""`POST /api/v1/telemetry/batch` on in-memory fakes: bodies, keys, region scopes, and the same outcome
as the replay path (one process-wide pipeline, group commit included)."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from tests.support.api import Api, Fakes, api_settings, memory_container, running_api

from metrify.adapters.files.readers import reading_from_mapping
from metrify.adapters.memory.stream_store import InMemoryStreamStore, InMemoryStreamUnitOfWork
from metrify.adapters.memory.users import InMemoryIngestKeyRepository
from metrify.adapters.system import SystemClock
from metrify.application.errors import AuthenticationFailed, Unavailable
from metrify.application.ingest import Ingest, KeyAdmin
from metrify.application.ports import TransientStoreError
from metrify.application.serial import BoundedBackoff, SerialPipeline
from metrify.application.stream import StreamPipeline
from metrify.domain.ingest_keys import IngestKey
from metrify.domain.readings import LongInteger, Meter, RawReading, normalise_meter_id
from metrify.domain.stream.config import StreamConfig
from metrify.domain.users import Role, User
from metrify.entrypoints.api.app import create_app
from metrify.entrypoints.api.bodies import _reading, read_body
from metrify.entrypoints.api.problems import ApiProblem
from metrify.settings import ApiSettings

URL = "/api/v1/telemetry/batch"
T0 = "2024-03-04T10:00:00Z"


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture
def api(tmp_path: Path, fakes: Fakes) -> Iterator[Api]:
    settings = api_settings(tmp_path, api=ApiSettings(max_body_bytes=64 * 1024, max_batch_readings=100))
    with running_api(memory_container(settings, fakes), settings) as api:
        yield api


def reading(meter: str, ts: str = T0, kwh: object = 0.5, **extra: object) -> dict:
    return {"meter_id": meter, "timestamp": ts, "consumption_kwh": kwh, **extra}


def post(api: Api, key: str, body: object, content_type: str = "application/json") -> dict:
    content = body if isinstance(body, bytes | str) else orjson.dumps(body)
    response = api.client.post(URL, content=content, headers={"X-API-Key": key, "Content-Type": content_type})
    assert response.status_code == 202, response.text
    return response.json()


def test_a_json_batch_is_processed_and_each_malformed_reading_rejected_with_its_reason(api: Api, fakes: Fakes) -> None:
    key = api.ingest_key()
    body = {
        "readings": [
            reading("M1", region="north", voltage=230.1),
            {"METER_ID": " M2 ", "Timestamp": T0, "Energy_kWh": "0.75"},
            reading("M3", ts="2024-02-30T10:00:00Z"),
            reading("M4", kwh="abc"),
            reading("M5", kwh=-1),
            reading("", kwh=1),
            reading("M1", ts="2024-03-04T10:05:00Z"),
            42,
        ]
    }
    out = post(api, key, body)
    assert out["received"] == 8 and out["processed"] is True
    assert (out["accepted"], out["rejected"], out["too_late"]) == (2, 6, 0)
    assert out["rejected_by_reason"] == {
        "duplicate": 1,
        "invalid_consumption": 1,
        "invalid_timestamp": 1,
        "missing_meter_id": 2,
        "negative_consumption": 1,
    }
    assert [(r["index"], r["reason"]) for r in out["rejected_readings"]] == [
        (2, "invalid_timestamp"),
        (3, "invalid_consumption"),
        (4, "negative_consumption"),
        (5, "missing_meter_id"),
        (6, "duplicate"),
        (7, "missing_meter_id"),
    ]
    stored = {r.meter_id: r for r in fakes.store.readings.values()}
    assert set(stored) == {"M1", "M2"}
    assert stored["M1"].extra == {"region": "north", "voltage": 230.1}
    assert fakes.meters.get("M1") == Meter("M1", "north") and fakes.meters.get("M2") == Meter("M2", None)


def test_json_lines_and_csv_bodies_are_read_like_files(api: Api, fakes: Fakes) -> None:
    key = api.ingest_key()
    lines = b"\n".join([orjson.dumps(reading("A")), b"not json", b"", orjson.dumps(reading("B", power_kw=1.5)), b"[1]"])
    out = post(api, key, lines, "application/x-ndjson")
    assert (out["received"], out["accepted"], out["rejected_readings"]) == (
        4,
        2,
        [{"index": 1, "reason": "missing_meter_id"}, {"index": 3, "reason": "missing_meter_id"}],
    )
    csv_body = (
        "\ufeffLCLid,DateTime,KWH/hh (per half hour),Region\n"
        "C,2024-03-04 10:00:00,0.25,south\n"
        "D,2024-03-04T10:00:00Z,,\n"
    )
    out = post(api, key, csv_body.encode(), "text/csv; charset=utf-8")
    assert (out["accepted"], out["rejected_by_reason"]) == (1, {"invalid_consumption": 1})
    assert {r.meter_id: r.extra for r in fakes.store.readings.values()}["C"] == {"region": "south"}


@pytest.mark.parametrize(
    ("content", "content_type", "status", "slug"),
    [
        (b"{not json", "application/json", 400, "malformed-body"),
        # nested past what Python turns back into text without recursing too deep: was a 500
        (
            b'{"readings": [{"meter_id": ' + b"[" * 1000 + b"]" * 1000 + b"}]}",
            "application/json",
            400,
            "malformed-body",
        ),
        (b'{"readings": 5}', "application/json", 422, "validation-error"),
        (b"[1, 2]", "application/json", 422, "validation-error"),
        (b"\xff\xfe\x00", "text/csv", 400, "malformed-body"),
        (b"a,b,c\n1,2,3\n", "text/csv", 422, "validation-error"),
        (b"meter_id=1", "application/x-www-form-urlencoded", 415, "unsupported-media-type"),
        (b"{}", "", 415, "unsupported-media-type"),
        (orjson.dumps({"readings": [reading("M")] * 101}), "application/json", 413, "too-many-readings"),
        (b" " * (64 * 1024 + 1), "application/json", 413, "payload-too-large"),
    ],
)
def test_a_body_that_cannot_be_read_is_one_4xx_problem(
    api: Api, fakes: Fakes, content: bytes, content_type: str, status: int, slug: str
) -> None:
    key = api.ingest_key()
    headers = {"X-API-Key": key, "Content-Type": content_type}
    response = api.client.post(URL, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == f"urn:metrify:problem:{slug}" and problem["status"] == status
    assert problem["instance"] == URL and problem["detail"]
    assert not fakes.store.readings and not fakes.store.rejected


def test_a_compressed_body_is_read_as_the_body_it_compresses(api: Api, fakes: Fakes) -> None:
    key = api.ingest_key()
    body = orjson.dumps({"readings": [reading("M1"), reading("M2", kwh=-1)]})
    lines = b"\n".join(orjson.dumps(reading(m, ts="2024-03-04T10:30:00Z")) for m in ("M1", "M3"))
    for content, encoding, content_type in [
        (gzip.compress(body), "gzip", "application/json"),
        (zlib.compress(lines), "Deflate", "application/x-ndjson"),  # codings are case-insensitive
    ]:
        response = api.client.post(
            URL, content=content, headers={"X-API-Key": key, "Content-Type": content_type, "Content-Encoding": encoding}
        )
        assert response.status_code == 202, response.text
        out = response.json()
        assert (out["received"], out["accepted"], out["rejected"]) == (
            2,
            2 if encoding == "Deflate" else 1,
            0 if encoding == "Deflate" else 1,
        )
    assert {r.meter_id for r in fakes.store.readings.values()} == {"M1", "M3"}
    # members one after another are one gzip body (RFC 1952); gzip twice over is two codings
    first, second = (orjson.dumps(reading(m, ts="2024-03-04T11:00:00Z")) + b"\n" for m in ("M1", "M2"))
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for content, encoding in [
        (gzip.compress(first) + gzip.compress(second), "gzip"),
        (gzip.compress(first) + gzip.compress(second) + b"\0" * 100, "gzip"),  # zeros after: as gzip(1) reads them
        (gzip.compress(gzip.compress(first + second)), "gzip, gzip"),
        (raw.compress(first + second) + raw.flush(), "deflate"),  # raw deflate, no zlib header, as some send it
        (first + second, "identity"),
    ]:
        headers = {"X-API-Key": key, "Content-Type": "application/x-ndjson", "Content-Encoding": encoding}
        response = api.client.post(URL, content=content, headers=headers)
        assert response.status_code == 202 and response.json()["received"] == 2, (encoding, response.text)
    # Content-Encoding as two header lines: both apply
    response = api.client.post(
        URL,
        content=gzip.compress(first + second),
        headers=[
            ("X-API-Key", key),
            ("Content-Type", "application/x-ndjson"),
            ("Content-Encoding", "identity"),
            ("Content-Encoding", "gzip"),
        ],
    )
    assert response.status_code == 202 and response.json()["received"] == 2, response.text


@pytest.mark.parametrize(
    ("content", "encoding", "status", "slug"),
    [
        (b"{}", "gzip", 400, "malformed-body"),  # not gzip at all
        (gzip.compress(b'{"readings": []}')[:-6], "gzip", 400, "malformed-body"),  # cut short
        (gzip.compress(b'{"readings": []}') + b"{}", "gzip", 400, "malformed-body"),  # not a member after it
        (zlib.compress(b'{"readings": []}') + b"x", "deflate", 400, "malformed-body"),
        (gzip.compress(b" " * (64 * 1024 + 1)), "gzip", 413, "payload-too-large"),  # inflates past the limit
        (gzip.compress(b" " * 40_000) * 2, "gzip", 413, "payload-too-large"),  # two members past it together
        (gzip.compress(b" " * 30_000_000), "gzip", 413, "payload-too-large"),  # 29 kB to 30 MB: never held
        (b'{"readings": []}', "br", 415, "unsupported-content-encoding"),
        (gzip.compress(b'{"readings": []}') + b"\0\0x", "gzip", 400, "malformed-body"),  # not zeros to the end
        (gzip.compress(b"") * 64 + gzip.compress(b'{"readings": []}'), "gzip", 400, "malformed-body"),  # 65 members
        (gzip.compress(gzip.compress(gzip.compress(b"{}"))), "gzip, gzip, gzip", 400, "malformed-body"),
        (b"", "gzip", 400, "malformed-body"),
    ],
)
def test_a_compressed_body_that_cannot_be_read_is_one_4xx_problem(
    api: Api, fakes: Fakes, content: bytes, encoding: str, status: int, slug: str
) -> None:
    headers = {"X-API-Key": api.ingest_key(), "Content-Type": "application/json", "Content-Encoding": encoding}
    response = api.client.post(URL, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == f"urn:metrify:problem:{slug}"
    assert not fakes.store.readings and not fakes.store.rejected


def test_keys_missing_unknown_or_revoked_are_401_and_users_tokens_do_not_ingest(api: Api) -> None:
    body = {"readings": [reading("M1")]}
    assert api.client.post(URL, json=body).status_code == 401
    assert api.client.post(URL, json=body, headers={"X-API-Key": "mtk_nope"}).status_code == 401
    assert api.client.post(URL, json=body, headers=api.headers(Role.ADMIN)).status_code == 401
    # no key, no reading of the body: an oversized one is refused for the key, not buffered first
    oversized = b" " * (64 * 1024 + 1)
    assert api.client.post(URL, content=oversized, headers={"X-API-Key": "mtk_nope"}).status_code == 401
    key = api.ingest_key()
    listed = api.client.get("/api/v1/ingest-keys", headers=api.headers(Role.ADMIN)).json()
    assert "token" not in listed[0] and key.startswith(listed[0]["prefix"])
    revoked = api.client.delete(f"/api/v1/ingest-keys/{listed[0]['key_id']}", headers=api.headers(Role.ADMIN))
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert api.client.post(URL, json=body, headers={"X-API-Key": key}).status_code == 401


def test_a_key_scoped_to_regions_refuses_readings_of_other_or_unknown_regions(api: Api, fakes: Fakes) -> None:
    fakes.meters.add(Meter("REG-S", "south"), 0)
    fakes.meters.add(Meter("REG-N", "north"), 0)
    fakes.meters.add(Meter("REG-NONE", None), 0)  # registered without a region: an admin's meter
    key = api.ingest_key(regions=["north"])
    body = {
        "readings": [
            reading("REG-N"),
            reading("REG-S", region="north"),  # the registry's region wins
            reading("NEW-N", region="north"),
            reading("NEW-S", region="south"),
            reading("NOWHERE"),
            reading("REG-NONE", region="north"),  # ... its "no region" too: the reading cannot claim one
        ]
    }
    out = post(api, key, body)
    assert out["accepted"] == 2
    assert out["refused"] == [
        {"index": 1, "reason": "region_not_allowed"},
        {"index": 3, "reason": "region_not_allowed"},
        {"index": 4, "reason": "region_unknown"},
        {"index": 5, "reason": "region_unknown"},
    ]
    assert {r.meter_id for r in fakes.store.readings.values()} == {"REG-N", "NEW-N"}


def test_ingest_keys_are_made_by_admins_only(api: Api) -> None:
    for role in (Role.USER, Role.OPERATOR):
        response = api.client.post(
            "/api/v1/ingest-keys", json={"name": "x", "all_regions": True}, headers=api.headers(role)
        )
        assert response.status_code == 403
    bad = api.client.post("/api/v1/ingest-keys", json={"name": "x"}, headers=api.headers(Role.ADMIN))
    assert bad.status_code == 422 and "region" in bad.json()["detail"]


def fleet(meters: int, slots: int) -> list[RawReading]:
    base = 1_709_546_400
    rows = []
    for slot in range(slots):
        for m in range(meters):
            if m == 7 and slot in (5, 6):
                continue  # a gap
            jitter = (m * 7 + slot * 13) % 11
            rows.append(RawReading(f"M{m:03d}", base + slot * 1800 + jitter, f"{0.1 + (m % 5) / 10:.2f}"))
    rows[5] = RawReading("M005", "2024-13-01T00:00:00Z", "1")
    rows.insert(40, rows[2])  # a duplicate
    rows.insert(90, RawReading("M001", base - 10 * 3600, "0.3"))  # too late
    return rows


def outcome(store: InMemoryStreamStore) -> tuple:
    return (
        sorted(store.readings.values()),
        sorted(store.rejected.values()),
        sorted(store.too_late.values()),
        sorted(store.gaps.values()),
        sorted(store.windows.values()),
    )


class RecordingPipeline(StreamPipeline):
    """Records each batch the writer processes, slowly, so that requests pile up behind it."""

    calls: list[list[RawReading]]

    def process(self, rows, progress=()):  # noqa: ANN001, ANN201
        self.calls.append(list(rows))
        time.sleep(0.003)
        return super().process(rows, progress)


@pytest.mark.parametrize("partitions", [1, 3])
def test_requests_grouped_into_one_transaction_give_the_outcome_of_one_transaction_each(partitions: int) -> None:
    rows = fleet(meters=12, slots=20)
    batches = [rows[i : i + 17] for i in range(0, len(rows), 17)]
    grouped_store = InMemoryStreamStore()
    recording = RecordingPipeline(
        StreamConfig(), partitions, lambda: InMemoryStreamUnitOfWork(grouped_store), SystemClock()
    )
    recording.calls = []
    serial = SerialPipeline(lambda: recording)
    results: dict[int, list] = {}

    def send(index: int) -> None:
        results[index] = serial.submit(batches[index])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert any(len(call) > 17 for call in recording.calls), "no two requests were ever written together"
    for index, batch in enumerate(batches):  # each request gets its own readings' outcomes, in order
        assert [event.meter_id for event in results[index]] == [normalise_meter_id(r.meter_id) for r in batch]
    by_first_row = {id(batch[0]): batch for batch in batches}
    arrived = [row for call in recording.calls for row in call]
    order, position = [], 0
    while position < len(arrived):
        batch = by_first_row[id(arrived[position])]
        order.append(batch)
        position += len(batch)
    one_by_one = InMemoryStreamStore()
    pipeline = StreamPipeline(StreamConfig(), partitions, lambda: InMemoryStreamUnitOfWork(one_by_one), SystemClock())
    pipeline.load()
    for batch in order:
        pipeline.process(batch)
    assert outcome(grouped_store) == outcome(one_by_one)
    assert grouped_store.rejected and grouped_store.windows and grouped_store.gaps


def test_a_body_without_a_length_is_refused_at_the_first_chunk_past_the_limit() -> None:
    received = 0

    async def receive() -> dict:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b" " * 1024, "more_body": received < 1000}

    request = Request({"type": "http", "method": "POST", "path": URL, "headers": []}, receive)
    with pytest.raises(ApiProblem) as refused:
        asyncio.run(read_body(request, 10 * 1024))
    assert refused.value.status == 413 and received == 11


KEYS = st.sampled_from(
    ["meter_id", "timestamp", "consumption_kwh", "region", "voltage", "power_kw", "id", "kwh", "Meter_ID", " time", "x"]
)
VALUES = st.one_of(st.none(), st.text(max_size=5), st.integers(), st.floats(allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.dictionaries(KEYS, VALUES, max_size=8), VALUES, st.lists(VALUES, max_size=2)))
def test_the_json_shortcut_reads_every_item_as_files_do(item: object) -> None:
    expected = reading_from_mapping(item) if isinstance(item, dict) else RawReading(None, None, None)
    assert _reading(item) == expected


class StepClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000

    def now_us(self) -> int:
        return self.now


def test_a_key_revoked_elsewhere_stops_within_seconds_and_at_once_here() -> None:
    clock = StepClock()
    repo = InMemoryIngestKeyRepository()
    here, elsewhere = KeyAdmin(repo, clock), KeyAdmin(repo, clock)
    admin = User("a", "a@example.com", Role.ADMIN, "h")
    key, token = here.create(admin, "gw", [], all_regions=True)
    assert here.authenticate(token) == key and elsewhere.authenticate(token) == key
    elsewhere.revoke(admin, key.key_id)
    with pytest.raises(AuthenticationFailed):
        elsewhere.authenticate(token)
    assert here.authenticate(token) == key  # remembered for up to two seconds
    clock.now += 2_000_001
    with pytest.raises(AuthenticationFailed):
        here.authenticate(token)


def test_a_key_revoked_here_while_a_request_looks_it_up_stops_at_once() -> None:
    class Overtaken(InMemoryIngestKeyRepository):
        """The revocation lands while a request's lookup is on its way back."""

        def by_hash(self, key_hash: str) -> IngestKey | None:
            found = super().by_hash(key_hash)
            if found is not None and found.active and revoke_now:
                revoke_now.pop()()
            return found

    revoke_now: list = []
    keys = KeyAdmin(Overtaken(), StepClock())
    admin = User("a", "a@example.com", Role.ADMIN, "h")
    key, token = keys.create(admin, "gw", [], all_regions=True)
    revoke_now.append(lambda: keys.revoke(admin, key.key_id))
    assert keys.authenticate(token) == key  # the request that was on its way
    with pytest.raises(AuthenticationFailed):
        keys.authenticate(token)  # the next is refused: the key read before was not remembered


def test_a_committed_batch_is_answered_202_even_when_its_meters_cannot_be_registered_now(
    api: Api, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a 503 would invite a retry that records the batch's rejected readings a second time
    def locked(meters: object, created_at: int) -> None:
        raise TransientStoreError("database is locked")

    monkeypatch.setattr(fakes.meters, "register_missing", locked)
    out = post(api, api.ingest_key(), {"readings": [reading("M1"), reading("M2", kwh="abc")]})
    assert (out["accepted"], out["rejected"]) == (1, 1)
    monkeypatch.undo()
    post(api, api.ingest_key(), {"readings": [reading("M1", ts="2024-03-04T10:30:00Z")]})
    assert fakes.meters.get("M1") == Meter("M1", None)  # registered with its next reading


def test_integers_of_more_digits_than_python_converts_are_numbers_however_large(api: Api) -> None:
    """The standard library refused the whole body for one integer of over 4,300 digits (a 400):
    the contract reads a number however large, so only its reading is rejected, for its reason."""
    huge = "9" * 5000
    readings = [reading("M1"), reading("M2", kwh="HUGE"), reading("M3", kwh="-HUGE"), reading("M4", ts="HUGE", kwh=1)]
    readings.append({"meter_id": "HUGE", "timestamp": T0})
    body = orjson.dumps({"readings": readings}).decode().replace('"HUGE"', huge).replace('"-HUGE"', "-" + huge)
    out = post(api, api.ingest_key(), body)
    assert out["accepted"] == 1
    assert [(r["index"], r["reason"]) for r in out["rejected_readings"]] == [
        (1, "out_of_range"),
        (2, "negative_consumption"),
        (3, "invalid_timestamp"),
        (4, "invalid_consumption"),  # its meter id is its digits, as any number's is
    ]
    response = api.client.get("/api/v1/rejected-readings", headers=api.headers(Role.ADMIN))
    assert response.status_code == 200, response.text
    items = [(r["meter_id"], r["timestamp"], r["consumption_kwh"]) for r in response.json()["items"]]
    assert items == [("M2", T0, huge), ("M3", T0, "-" + huge), ("M4", huge, 1), (huge, T0, None)]


def test_an_electrical_measurement_beyond_a_double_or_not_finite_is_not_stored_and_fails_nothing() -> None:
    from metrify.adapters.sqlalchemy.codec import extra_columns

    assert extra_columns({"voltage": 10**400, "current": "1e999", "power_kw": 2})[:3] == (None, None, 2.0)
    # nor one that is not finite, as the Kafka path's envelope carries it (null)
    weird = {"voltage": float("inf"), "current": float("-inf"), "power_kw": float("nan"), "power_factor": "nan"}
    assert extra_columns(weird)[:4] == (None, None, None, None)
    assert extra_columns({"voltage": LongInteger("9" * 5000)})[0] is None  # as 10**400


def test_the_ingest_retry_budget_is_of_time_the_tries_included() -> None:
    now = [0.0]
    slept: list[float] = []

    def locked() -> None:
        now[0] += 30.0  # a try that waited out SQLite's busy timeout
        raise TransientStoreError("database is locked")

    backoff = BoundedBackoff(budget=5.0, sleep=slept.append, clock=lambda: now[0])
    with pytest.raises(Unavailable):
        backoff.run(locked)
    assert slept == []  # one try spent the budget: a 503 now, not nine tries and 275 s later


def test_ingest_into_a_stream_cut_into_other_partitions_is_a_503_that_says_so() -> None:
    store = InMemoryStreamStore()
    store.partitions[("main", 2)] = (None, 0)  # cut into three partitions by an earlier replay
    serial = SerialPipeline(
        lambda: StreamPipeline(StreamConfig(), 1, lambda: InMemoryStreamUnitOfWork(store), SystemClock())
    )
    with pytest.raises(Unavailable, match="3 partitions"):
        serial.submit([RawReading("M1", T0, "0.5")])


def test_a_stream_cut_otherwise_meanwhile_is_the_same_503() -> None:
    """Found on the reload after another process's commit, not at the first load: was a 500."""
    store = InMemoryStreamStore()
    serial = SerialPipeline(
        lambda: StreamPipeline(StreamConfig(), 1, lambda: InMemoryStreamUnitOfWork(store), SystemClock())
    )
    serial.submit([RawReading("M1", T0, "0.5")])
    store.partitions[("main", 0)] = (None, 7)  # a replay with three partitions wrote meanwhile
    store.partitions[("main", 2)] = (None, 0)
    with pytest.raises(Unavailable, match="3 partitions"):
        serial.submit([RawReading("M2", T0, "0.5")])


def test_a_batch_is_parsed_and_processed_without_automatic_garbage_collection(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole request, not only the pipeline: collections set off by parsing would walk the
    meters' state (see gc_paused). The collector is back on once the answer is built."""
    import gc

    from metrify.entrypoints.api.routers import telemetry

    seen: list[bool] = []
    parse = telemetry.parse_readings

    def watched(*args: object) -> list[RawReading]:
        seen.append(gc.isenabled())
        return parse(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(telemetry, "parse_readings", watched)
    assert gc.isenabled()
    out = post(api, api.ingest_key(), {"readings": [reading("M1")]})
    assert out["accepted"] == 1
    assert seen == [False]
    assert gc.isenabled()


def test_the_collector_stays_off_until_the_last_overlapping_batch_is_done() -> None:
    """Two requests' batches overlap on two threads: the first one done must not turn automatic
    collection on under the other; the last one done does. Collection off before stays off."""
    import gc
    import threading

    from metrify.application.stream import gc_paused

    inside, first_done, observed = threading.Event(), threading.Event(), []

    def other_batch() -> None:
        with gc_paused():
            inside.set()
            first_done.wait(5)
            observed.append(gc.isenabled())

    assert gc.isenabled()
    with gc_paused():
        thread = threading.Thread(target=other_batch)
        thread.start()
        assert inside.wait(5)
    first_done.set()
    thread.join(5)
    assert observed == [False]
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_json_line_nested_too_deep_is_one_rejected_reading_like_any_unreadable_line(api: Api) -> None:
    deep = b'{"meter_id": "M2", "timestamp": ' + b"[" * 500 + b"]" * 500 + b', "consumption_kwh": 1}'
    body = orjson.dumps(reading("M1")) + b"\n" + deep + b"\n"
    out = post(api, api.ingest_key(), body, "application/x-ndjson")
    assert (out["accepted"], out["rejected_readings"]) == (1, [{"index": 1, "reason": "missing_meter_id"}])


class RefusingUnitOfWork(InMemoryStreamUnitOfWork):
    """A store that refuses any transaction holding meter POISON's reading (as a database refuses
    a value it cannot hold): an error that is not the store's being away."""

    def commit(self) -> None:
        if any(getattr(event, "meter_id", None) == "POISON" for event in self.outcomes.events):
            self.rollback()
            raise ValueError("the store refuses meter POISON")
        super().commit()


def test_a_request_that_fails_the_group_s_transaction_fails_alone() -> None:
    store = InMemoryStreamStore()
    serial = SerialPipeline(lambda: StreamPipeline(StreamConfig(), 2, lambda: RefusingUnitOfWork(store), SystemClock()))
    serial.load()
    results: dict[str, object] = {}

    def send(name: str, rows: list[RawReading]) -> None:
        try:
            results[name] = [type(event).__name__ for event in serial.submit(rows)]
        except ValueError as exc:
            results[name] = exc

    requests = {
        "before": [RawReading("M1", T0, "0.5")],
        "poison": [RawReading("M2", T0, "0.5"), RawReading("POISON", T0, "0.5")],
        "after": [RawReading("M3", T0, "0.5"), RawReading("M3", T0, "0.7")],
    }
    with serial._writer:  # a write in progress: the requests queue up behind it, to go as one group
        threads = [threading.Thread(target=send, args=item) for item in requests.items()]
        for thread in threads:
            thread.start()
        while len(serial._queue) < len(threads):
            time.sleep(0.001)
    for thread in threads:
        thread.join()
    assert results["before"] == ["ReadingAccepted"]
    assert results["after"] == ["ReadingAccepted", "ReadingRejected"]
    assert isinstance(results["poison"], ValueError)
    assert sorted(meter for meter, _ in store.readings) == ["M1", "M3"]
    assert [event.meter_id for event in serial.submit([RawReading("M2", T0, "0.5")])] == ["M2"]  # on the store's state


def _history(fakes: Fakes, *rows: RawReading) -> None:
    """Readings the stream stored without the API (a replay, Kafka's direct producers): their
    meters have a history and are registered nowhere."""
    pipeline = StreamPipeline(StreamConfig(), 1, lambda: InMemoryStreamUnitOfWork(fakes.store), SystemClock())
    pipeline.load()
    pipeline.process(list(rows))


def test_an_unregistered_meter_with_a_history_is_in_the_region_of_that_history(api: Api, fakes: Fakes) -> None:
    _history(
        fakes,
        RawReading("SOUTH-7", T0, "0.5", extra={"region": "south"}),
        RawReading("BARE-1", T0, "0.5"),  # a history of no region
        RawReading("BAD-1", "not a time", "0.5"),  # only a rejected reading: no region either
    )
    key = api.ingest_key(regions=["north"])
    later = "2024-03-04T11:00:00Z"
    body = {"readings": [reading(m, later, region="north") for m in ("SOUTH-7", "BARE-1", "BAD-1", "NEW-1")]}
    out = post(api, key, body)
    assert out["accepted"] == 1  # NEW-1 alone: the others' histories are not north's
    assert out["refused"] == [
        {"index": 0, "reason": "region_not_allowed"},
        {"index": 1, "reason": "region_unknown"},
        {"index": 2, "reason": "region_unknown"},
    ]
    assert fakes.meters.get("SOUTH-7") is None and fakes.meters.get("NEW-1") == Meter("NEW-1", "north")
    south = post(api, api.ingest_key(regions=["south"]), {"readings": [reading("SOUTH-7", later)]})
    assert south["accepted"] == 1
    assert fakes.meters.get("SOUTH-7") == Meter("SOUTH-7", "south")  # registered in its history's region


def test_an_operator_registers_no_meter_whose_history_is_of_another_region(api: Api, fakes: Fakes) -> None:
    _history(
        fakes,
        RawReading("SOUTH-7", T0, "0.5", extra={"region": "south"}),
        RawReading("NORTH-7", T0, "0.5", extra={"region": "north"}),
    )
    operator = api.headers(Role.OPERATOR)  # of north

    def register(meter_id: str, headers: dict[str, str]) -> int:
        body = {"meter_id": meter_id, "region": "north"}
        return api.client.post("/api/v1/meters", json=body, headers=headers).status_code

    assert register("SOUTH-7", operator) == 403
    assert api.client.get("/api/v1/meters/SOUTH-7/readings", headers=operator).status_code == 404
    assert register("NORTH-7", operator) == 201  # its history is north's
    assert register("NEVER-SEEN", operator) == 201
    assert register("SOUTH-7", api.headers(Role.ADMIN)) == 201  # an ADMIN decides


class _Queued:
    """The raw topic, as a list."""

    def __init__(self) -> None:
        self.readings: list[RawReading] = []

    def produce(self, readings: Sequence[RawReading]) -> None:
        self.readings.extend(readings)


def test_on_kafka_the_first_key_to_send_a_meter_claims_it_for_its_region() -> None:
    fakes = Fakes()
    ingest = Ingest(fakes.meters, SystemClock(), producer=_Queued())
    north = IngestKey("k1", "north gateway", "h1", "mtk_1", frozenset({"north"}))
    everything = IngestKey("k2", "head end", "h2", "mtk_2", all_regions=True)
    first = [
        RawReading("N-1", T0, "0.5", extra={"region": "north"}),
        RawReading("N-1", T0, "0.5", extra={"region": "south"}),  # refused: south is not the key's
        RawReading(" ", T0, "0.5", extra={"region": "north"}),  # no meter id: nothing to register
    ]
    report = ingest.ingest(north, first)
    assert report.queued == 2 and report.refused == [(1, "region_not_allowed")]
    assert fakes.meters.meters == {"N-1": Meter("N-1", "north")}
    ingest.ingest(everything, [RawReading("N-1", T0, "0.5", extra={"region": "south"})])
    assert fakes.meters.get("N-1") == Meter("N-1", "north")  # claimed already: the registry's region stays
    later = ingest.ingest(IngestKey("k3", "south gateway", "h3", "mtk_3", frozenset({"south"})), first[1:2])
    assert later.refused == [(0, "region_not_allowed")]


def test_on_kafka_a_meter_whose_id_holds_nul_is_registered_as_any_other() -> None:
    """The stream takes such an id (DESIGN §3), and every registry stores it (PostgreSQL's with
    U+FFFD for the NUL): it was left unregistered, so no key's region ever claimed it."""
    fakes = Fakes()
    ingest = Ingest(fakes.meters, SystemClock(), producer=_Queued())
    key = IngestKey("k1", "head end", "h1", "mtk_1", all_regions=True)
    ingest.ingest(key, [RawReading(" N\x00-2 ", T0, "0.5", extra={"region": "north"})])
    assert fakes.meters.meters == {"N\x00-2": Meter("N\x00-2", "north")}


def test_windows_the_api_holds_back_are_stored_by_the_end_of_its_process(tmp_path: Path, fakes: Fakes) -> None:
    """METRIFY_API__WINDOW_WRITES_PER_BATCH: closed windows beyond it wait for later batches (or
    a quiet spell); the app's shutdown stores the rest. The store ends as without holding."""
    rows = fleet(meters=12, slots=20)
    batches = [rows[i : i + 50] for i in range(0, len(rows), 50)]
    expected = InMemoryStreamStore()
    pipeline = StreamPipeline(StreamConfig(), 1, lambda: InMemoryStreamUnitOfWork(expected), SystemClock())
    pipeline.load()
    for batch in batches:
        pipeline.process(batch)

    settings = api_settings(tmp_path, api=ApiSettings(window_writes_per_batch=1))
    app = create_app(settings, memory_container(settings, fakes))
    with running_api(app.state.services.container, settings, app=app) as api:
        key = api.ingest_key()
        held = 0
        for batch in batches:
            body = [{"meter_id": m, "timestamp": ts, "consumption_kwh": kwh} for m, ts, kwh, *_ in batch]
            post(api, key, {"readings": body})
            held = max(held, app.state.services.pipeline.held_windows)
        assert held > 1, "windows must have been held back"
    assert outcome(fakes.store) == outcome(expected)


def test_a_body_that_would_inflate_past_the_limit_is_refused_without_being_inflated() -> None:
    import tracemalloc

    from metrify.entrypoints.api.bodies import decoded_body

    bomb = gzip.compress(b" " * 30_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(ApiProblem) as refused:
            decoded_body(bomb, "gzip", 64 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.status == 413
    assert peak < 1024 * 1024  # the limit's worth and change, not 30 MB
    assert decoded_body(gzip.compress(b"x" * 1000), "gzip", 1000) == b"x" * 1000  # exactly the limit is read
