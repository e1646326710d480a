"""Ingest on the production profile: with Kafka configured, a batch only goes to the raw topic,
keyed and partitioned by meter id exactly as the embedded profile partitions it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer
from fastapi.testclient import TestClient
from tests.integration.cli import metrify, metrify_env
from tests.support.api import Api, api_settings, database_container, running_api

from metrify.adapters.kafka.admin import create_topics, delete_topics
from metrify.adapters.kafka.clients import TopicNames
from metrify.adapters.kafka.lag import KafkaLagProbe
from metrify.adapters.sqlalchemy import migrations
from metrify.domain.readings import Meter
from metrify.domain.stream.partitioner import partition_for
from metrify.domain.users import Role
from metrify.entrypoints.api.app import create_app
from metrify.settings import KafkaSettings

pytestmark = pytest.mark.integration

URL = "/api/v1/telemetry/batch"
PARTITIONS = 3


@pytest.fixture
def bootstrap(kafka_bootstrap: str) -> str:
    return kafka_bootstrap


@pytest.fixture
def names(bootstrap: str) -> Iterator[TopicNames]:
    names = TopicNames(f"test7-{uuid.uuid4().hex[:8]}.")
    yield names
    try:
        delete_topics(bootstrap, names)
    except Exception:  # noqa: BLE001 - nothing to clean when the broker is gone
        pass


@pytest.fixture
def api(tmp_path: Path, bootstrap: str, names: TopicNames) -> Iterator[Api]:
    settings = api_settings(tmp_path, kafka=KafkaSettings(bootstrap=bootstrap, topic_prefix=names.prefix))
    migrations.upgrade(settings.resolved_database_url)
    container = database_container(settings)
    container.meter_registry().add(Meter("SOUTH-1", "south"), 0)
    with running_api(container, settings) as api:
        yield api
    container.shutdown_resources()


def raw_messages(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"test7-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    found = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                found.append(message)
    finally:
        consumer.close()
    return found


def test_a_batch_goes_to_the_raw_topic_keyed_and_partitioned_by_meter(api: Api, bootstrap: str, names) -> None:  # noqa: ANN001
    missing = api.client.post(URL, json={"readings": []}, headers={"X-API-Key": api.ingest_key()})
    assert missing.status_code == 202  # an empty batch needs no topic
    readings = [
        {
            "meter_id": f" MTR-{n} ",
            "timestamp": f"2024-03-04T10:{n:02d}:00Z",
            "consumption_kwh": "0.5",
            "region": "north",
        }
        for n in range(20)
    ]
    readings.append({"meter_id": "MTR-X", "timestamp": "not a time", "kwh": 1})
    key = api.ingest_key()
    absent = api.client.post(URL, json={"readings": readings}, headers={"X-API-Key": key})
    assert absent.status_code == 503 and "metrify topics create" in absent.json()["detail"]

    create_topics(bootstrap, names, PARTITIONS, 1)
    response = api.client.post(URL, json={"readings": readings}, headers={"X-API-Key": key})
    assert response.status_code == 202, response.text
    out = response.json()
    assert (out["processed"], out["queued"], out["accepted"], out["refused"]) == (False, 21, 0, [])

    messages = raw_messages(bootstrap, names.raw, 21)
    assert len(messages) == 21
    for message in messages:
        value = orjson.loads(message.value())
        meter = value["meter_id"].strip()
        assert message.key() == meter.encode()
        assert message.partition() == partition_for(meter, PARTITIONS)
    by_meter = {orjson.loads(m.value())["meter_id"]: orjson.loads(m.value()) for m in messages}
    assert by_meter[" MTR-3 "] == readings[3]
    assert by_meter["MTR-X"] == {"meter_id": "MTR-X", "timestamp": "not a time", "consumption_kwh": 1}
    assert api.client.get("/readyz").json()["checks"]["kafka"] == "ok"


def test_the_stream_summary_tells_how_far_the_workers_and_the_sink_stand_behind(
    api: Api, bootstrap: str, names: TopicNames, tmp_path: Path
) -> None:
    """No worker or sink runs: every reading queued is unprocessed, nothing is waiting to be stored."""
    headers = api.headers(Role.ADMIN)
    lag = api.client.get("/api/v1/stream/summary", headers=headers).json()["lag"]
    assert lag["ingest"] == "kafka" and lag["unprocessed"] is None
    assert lag["error"] == f"{names.raw} does not exist: run `metrify topics create`"
    create_topics(bootstrap, names, PARTITIONS, 1)
    readings = [
        {"meter_id": f"MTR-{n}", "timestamp": f"2024-03-04T10:{n:02d}:00Z", "consumption_kwh": 1, "region": "north"}
        for n in range(20)
    ]
    response = api.client.post(URL, json={"readings": readings}, headers={"X-API-Key": api.ingest_key()})
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 10  # a measure serves the summaries of the next 2 s
    while True:
        summary = api.client.get("/api/v1/stream/summary", headers=headers)
        assert summary.status_code == 200, summary.text
        lag = summary.json()["lag"]
        if lag["error"] is None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (lag["ingest"], lag["unprocessed"], lag["unstored"], lag["error"]) == ("kafka", 20, 0, None)
    worker = [c for c in lag["consumers"] if c["topic"] == names.raw]
    assert [(c["group"], c["partition"], c["committed"]) for c in worker] == [
        (KafkaSettings().group_id, p, None) for p in range(PARTITIONS)
    ]
    assert sum(c["end"] for c in worker) == sum(c["lag"] for c in worker) == 20
    outputs = {c["topic"] for c in lag["consumers"] if c["group"] == KafkaSettings().sink_group_id}
    assert outputs == set(names.outputs.values())
    assert get_status(api, Role.OPERATOR) == 200 and get_status(api, Role.USER) == 403
    # `metrify topics lag` tells the same, from the same measure
    env = metrify_env(tmp_path, METRIFY_KAFKA__BOOTSTRAP=bootstrap, METRIFY_KAFKA__TOPIC_PREFIX=names.prefix)
    report = orjson.loads(metrify(["topics", "lag", "--json"], env).stdout)
    assert (report["worker"]["lag"], report["sink"]["lag"]) == (20, 0)
    assert [(r["partition"], r["committed"], r["lag"]) for r in report["worker"]["partitions"]] == [
        (c["partition"], c["committed"], c["lag"]) for c in worker
    ]
    missing = metrify_env(tmp_path, METRIFY_KAFKA__BOOTSTRAP=bootstrap, METRIFY_KAFKA__TOPIC_PREFIX="absent-prefix.")
    refused = metrify(["topics", "lag"], missing, check=False)
    assert refused.returncode != 0 and "absent-prefix.raw does not exist" in refused.stderr
    assert "Traceback" not in refused.stderr


def get_status(api: Api, role: Role) -> int:
    return api.client.get("/api/v1/stream/summary", headers=api.headers(role)).status_code


def test_a_broker_that_does_not_answer_leaves_the_lag_unknown_not_the_summary() -> None:
    probe = KafkaLagProbe("127.0.0.1:1", TopicNames("nowhere."), "w", "s", lambda topics: None, timeout=1.0)
    started = time.monotonic()
    lag = probe.lag()
    assert (lag.ingest, lag.unprocessed, lag.unstored, lag.consumers) == ("kafka", None, None, ())
    assert lag.error is not None and lag.error.startswith("kafka unreachable")
    assert time.monotonic() - started < 10


def test_a_scoped_key_refuses_other_regions_before_anything_is_produced(api: Api, bootstrap: str, names) -> None:  # noqa: ANN001
    create_topics(bootstrap, names, PARTITIONS, 1)
    key = api.ingest_key(regions=["north"])
    readings = [
        {"meter_id": "SOUTH-1", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1, "region": "north"},
        {"meter_id": "N-1", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1, "region": "north"},
    ]
    out = api.client.post(URL, json={"readings": readings}, headers={"X-API-Key": key}).json()
    assert out["queued"] == 1 and out["refused"] == [{"index": 0, "reason": "region_not_allowed"}]
    messages = raw_messages(bootstrap, names.raw, 1)
    assert [m.key() for m in messages] == [b"N-1"]


def test_a_batch_sent_again_to_another_api_process_under_its_idempotency_key_is_queued_once(
    tmp_path: Path, bootstrap: str, names: TopicNames, redis_url: str
) -> None:
    """Production: the answers are kept in Redis, so a retry that reaches another API process (a
    load balancer's choice) gets the first answer too, and nothing more goes to the raw topic."""
    settings = api_settings(
        tmp_path, redis_url=redis_url, kafka=KafkaSettings(bootstrap=bootstrap, topic_prefix=names.prefix)
    )
    migrations.upgrade(settings.resolved_database_url)
    create_topics(bootstrap, names, PARTITIONS, 1)
    readings = [
        {"meter_id": f"IDEM-{n}", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1, "region": "north"}
        for n in range(5)
    ]
    idempotency_key = f"retry-{uuid.uuid4().hex}"
    first_container, second_container = database_container(settings), database_container(settings)
    with running_api(first_container, settings) as api:
        key = api.ingest_key()
        headers = {"X-API-Key": key, "Idempotency-Key": idempotency_key}
        first = api.client.post(URL, json={"readings": readings}, headers=headers)
        assert first.status_code == 202, first.text
        with TestClient(create_app(settings, second_container), raise_server_exceptions=False) as other:
            again = other.post(URL, json={"readings": readings}, headers=headers)
    first_container.shutdown_resources()
    second_container.shutdown_resources()
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content and first.json()["queued"] == 5
    assert len(raw_messages(bootstrap, names.raw, 10, timeout=10)) == 5
