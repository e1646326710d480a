"""Ingest's Idempotency-Key: the same batch sent again under the same key gets the first answer and
is not ingested twice; another batch under a used key, or a key still in flight, is refused; a
request that failed leaves its key free."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from dependency_injector import providers
from tests.support.api import Api, Fakes, api_settings, memory_container, running_api

from metrify.adapters.memory.bounded_cache import BoundedCache
from metrify.adapters.memory.bus import InMemoryCache
from metrify.application.errors import Unavailable
from metrify.application.idempotency import Claim, IdempotentRequests, KeyInUse, KeyReused, fingerprint
from metrify.settings import ApiSettings

URL = "/api/v1/telemetry/batch"
BATCH = {
    "readings": [
        {"meter_id": "M1", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 0.5},
        {"meter_id": "M2", "timestamp": "not a time", "consumption_kwh": 1},
    ]
}


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture
def api(tmp_path: Path, fakes: Fakes) -> Iterator[Api]:
    settings = api_settings(tmp_path)
    with running_api(memory_container(settings, fakes), settings) as api:
        yield api


def send(api: Api, key: str, body: bytes, idempotency_key: str | None, **headers: str):  # noqa: ANN201
    sent = {"X-API-Key": key, "Content-Type": "application/json", **headers}
    if idempotency_key is not None:
        sent["Idempotency-Key"] = idempotency_key
    return api.client.post(URL, content=body, headers=sent)


def test_a_batch_sent_again_under_its_key_gets_the_first_answer_and_is_ingested_once(api: Api, fakes: Fakes) -> None:
    key = api.ingest_key()
    body = orjson.dumps(BATCH)
    first = send(api, key, body, "batch-0001")
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    rejected_after_first = len(fakes.store.rejected)
    again = send(api, key, body, "batch-0001")
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content, "the first answer, byte for byte"
    assert again.json()["accepted"] == 1 and again.json()["rejected_by_reason"] == {"invalid_timestamp": 1}
    assert len(fakes.store.readings) == 1 and len(fakes.store.rejected) == rejected_after_first
    # compressed on the retry (gzip writes its time into each member): the same request
    zipped = send(api, key, gzip.compress(body, mtime=12345), "batch-0001", **{"Content-Encoding": "gzip"})
    assert zipped.headers["Idempotent-Replayed"] == "true" and zipped.content == first.content
    # under another key the same batch is another request: ingested again, its readings duplicates
    other = send(api, key, body, "batch-0002")
    assert other.status_code == 202 and other.json()["rejected_by_reason"] == {"duplicate": 1, "invalid_timestamp": 1}
    # without a key a batch sent again is ingested again: its readings come back duplicate
    plain = send(api, key, body, None)
    assert plain.json()["rejected_by_reason"] == {"duplicate": 1, "invalid_timestamp": 1}


def test_another_batch_under_a_used_key_is_a_422_problem(api: Api) -> None:
    key = api.ingest_key()
    assert send(api, key, orjson.dumps(BATCH), "k-1").status_code == 202
    changed = {"readings": [{"meter_id": "M9", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1}]}
    refused = send(api, key, orjson.dumps(changed), "k-1")
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert "another request" in refused.json()["detail"]


def test_keys_belong_to_their_ingest_key(api: Api, fakes: Fakes) -> None:
    """Two gateways may choose the same Idempotency-Key: each is its own."""
    first, second = api.ingest_key(), api.ingest_key()
    assert send(api, first, orjson.dumps(BATCH), "same").status_code == 202
    again = send(api, second, orjson.dumps(BATCH), "same")
    assert again.status_code == 202 and "Idempotent-Replayed" not in again.headers
    assert again.json()["rejected_by_reason"] == {"duplicate": 1, "invalid_timestamp": 1}


def test_a_request_that_failed_leaves_its_key_free(api: Api, fakes: Fakes) -> None:
    key = api.ingest_key()
    bad = send(api, key, b"{not json", "k-2")
    assert bad.status_code == 400
    good = send(api, key, orjson.dumps(BATCH), "k-2")
    assert good.status_code == 202 and "Idempotent-Replayed" not in good.headers
    assert len(fakes.store.readings) == 1


@pytest.mark.parametrize("value", ["", "has space", "é".encode(), "x" * 256])
def test_a_key_that_is_not_printable_ascii_of_at_most_255_is_a_4xx_problem(api: Api, value: str | bytes) -> None:
    response = api.client.post(
        URL,
        content=orjson.dumps(BATCH),
        headers={"X-API-Key": api.ingest_key(), "Content-Type": "application/json", "Idempotency-Key": value},
    )
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == "application/problem+json"


def test_with_idempotency_off_the_header_is_ignored(tmp_path: Path, fakes: Fakes) -> None:
    settings = api_settings(tmp_path, api=ApiSettings(idempotency_ttl=0))
    with running_api(memory_container(settings, fakes), settings) as api:
        key = api.ingest_key()
        send(api, key, orjson.dumps(BATCH), "k")
        again = send(api, key, orjson.dumps(BATCH), "k")
        assert "Idempotent-Replayed" not in again.headers
        assert again.json()["rejected_by_reason"] == {"duplicate": 1, "invalid_timestamp": 1}


def test_a_key_in_flight_is_a_conflict_and_answered_keys_expire() -> None:
    now = [0.0]
    requests = IdempotentRequests(InMemoryCache(clock=lambda: now[0]), ttl_seconds=60, claim_seconds=10)
    print_ = fingerprint("application/json", b"{}")
    claim = requests.begin("key-a", "k", print_)
    assert isinstance(claim, Claim)
    with pytest.raises(KeyInUse):
        requests.begin("key-a", "k", print_)
    with pytest.raises(KeyReused):
        requests.begin("key-a", "k", fingerprint("application/json", b"[]"))
    requests.answered(claim, b'{"accepted": 0}')
    assert requests.begin("key-a", "k", print_) == b'{"accepted": 0}'
    now[0] = 61.0
    assert isinstance(requests.begin("key-a", "k", print_), Claim), "kept for ttl_seconds, then free"
    now[0] = 72.0
    assert isinstance(requests.begin("key-a", "k", print_), Claim), "a claim never answered lapses"


def test_two_requests_racing_with_one_key_are_one_claim() -> None:
    requests = IdempotentRequests(InMemoryCache(), ttl_seconds=60)
    print_ = fingerprint("text/csv", b"meter_id,timestamp,kwh\n")
    results: list[object] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        try:
            results.append(requests.begin("key-a", "k", print_))
        except KeyInUse as exc:
            results.append(exc)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(r, Claim) for r in results) == 1
    assert sum(isinstance(r, KeyInUse) for r in results) == 7


def test_the_fingerprint_tells_media_type_and_body_apart() -> None:
    prints = {
        fingerprint("application/json", b"ab"),
        fingerprint("application/jso", b"nab"),
        fingerprint("text/csv", b"ab"),
        fingerprint("application/json", b"abc"),
    }
    assert len(prints) == 4


class UnansweringCache(InMemoryCache):
    """A cache that stops answering writes (Redis gone) after the claim."""

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        raise Unavailable("redis does not answer: connection refused")


def test_an_answer_that_cannot_be_kept_is_still_the_answer(tmp_path: Path, fakes: Fakes) -> None:
    settings = api_settings(tmp_path)
    container = memory_container(settings, fakes)
    container.idempotency_cache.override(providers.Object(UnansweringCache()))
    with running_api(container, settings) as api:
        response = send(api, api.ingest_key(), orjson.dumps(BATCH), "k")
        assert response.status_code == 202 and response.json()["accepted"] == 1


def test_a_long_answer_is_kept_compressed_and_given_back_whole() -> None:
    cache = InMemoryCache()
    requests = IdempotentRequests(cache, ttl_seconds=60)
    answer = orjson.dumps({"rejected_readings": [{"index": i, "reason": "invalid_timestamp"} for i in range(10_000)]})
    claim = requests.begin("key-a", "k", fingerprint("application/json", b"x"))
    assert isinstance(claim, Claim)
    requests.answered(claim, answer)
    kept = cache.get(claim.cache_key)
    assert kept is not None and len(kept) < len(answer) / 10
    assert requests.begin("key-a", "k", fingerprint("application/json", b"x")) == answer


def test_a_request_frees_only_its_own_claim() -> None:
    now = [0.0]
    requests = IdempotentRequests(InMemoryCache(clock=lambda: now[0]), ttl_seconds=60, claim_seconds=10)
    print_ = fingerprint("application/json", b"{}")
    slow = requests.begin("key-a", "k", print_)
    now[0] = 11.0  # the slow request's claim lapsed; a retry claims the key
    retry = requests.begin("key-a", "k", print_)
    assert isinstance(slow, Claim) and isinstance(retry, Claim)
    requests.failed(slow)  # the slow one fails at last: the retry's claim stands
    with pytest.raises(KeyInUse):
        requests.begin("key-a", "k", print_)


def test_the_api_process_keeps_a_bounded_number_and_size_of_answers() -> None:
    cache = BoundedCache(max_items=100, max_bytes=10_000)
    for n in range(1_000):
        cache.set(f"answer-{n}", b"x", 3600)
    assert len(cache) == 100 and cache.get("answer-999") == b"x" and cache.get("answer-899") is None
    cache.set("big", b"y" * 9_000, 3600)
    assert cache.held_bytes == 9_099 and cache.get("big") == b"y" * 9_000 and len(cache) == 100
    cache.set("bigger", b"w" * 5_000, 3600)  # over 10,000 bytes: the oldest go, "big" among them
    assert cache.held_bytes <= 10_000 and cache.get("big") is None and cache.get("bigger") is not None
    cache.set("big", b"y" * 9_000, 3600)
    cache.set("big", b"z", 3600)  # set again: its old bytes no longer count
    assert cache.held_bytes == len(cache) * 1
    cache.delete("big")
    assert cache.get("big") is None and cache.held_bytes == len(cache)


def test_a_full_bounded_cache_takes_each_new_key_in_constant_time() -> None:
    """The newest 100,000 of 300,000 keys: evicting one per put, never a scan of the rest."""
    cache = BoundedCache(max_items=100_000, max_bytes=1 << 30)
    for n in range(300_000):
        assert cache.add(f"k{n}", b"C" * 80, 300)
    assert len(cache) == 100_000 and cache.get("k199999") is None and cache.get("k200000") is not None


def test_a_bounded_cache_keeps_the_expiry_and_counts_of_the_port() -> None:
    now = [0.0]
    cache = BoundedCache(max_items=10, max_bytes=1_000, clock=lambda: now[0])
    assert cache.add("a", b"1", 5) and not cache.add("a", b"2", 5)
    assert [cache.incr("n", 5) for _ in range(3)] == [1, 2, 3]
    now[0] = 6.0
    assert cache.get("a") is None and cache.incr("n", 5) == 1 and cache.add("a", b"3", 5)
