"""HTTP ingest end to end: batches posted over HTTP land in SQLite and PostgreSQL exactly as the same
rows replayed through the stream pipeline do; a real `metrify api` process serves a user made with
`metrify users create`; bad bodies are 4xx problems."""

from __future__ import annotations

import fcntl
import gzip
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa
from tests.integration.cli import metrify, metrify_env
from tests.support.api import PASSWORD, Api, api_settings, database_container, running_api

from metrify.adapters.sqlalchemy import migrations
from metrify.adapters.sqlalchemy import tables as t
from metrify.adapters.sqlalchemy.engine import create_engine_for
from metrify.application.exports import EXPORT_KINDS, export_rows
from metrify.application.ports import ExportFilter
from metrify.application.simulator import FleetProfile, fleet_rows, region_of
from metrify.domain.readings import RawReading
from metrify.domain.users import Role
from metrify.entrypoints.api.app import create_app
from metrify.settings import ApiSettings, SettingsError

pytestmark = pytest.mark.integration

URL = "/api/v1/telemetry/batch"
PROFILE = FleetProfile(meters=40, days=2, seed=3)


def empty_api_tables(url: str) -> None:
    """The session's PostgreSQL database is shared: start each test without users, keys or meters."""
    engine = create_engine_for(url)
    try:
        with engine.begin() as connection:
            for table in (*t.API_TABLES, t.meters):
                connection.execute(table.delete())
    finally:
        engine.dispose()


@pytest.fixture
def fleet() -> list[dict]:
    index = {f"MTR-{i:05d}": i for i in range(PROFILE.meters)}
    rows = []
    for meter, ts, kwh in fleet_rows(PROFILE):
        row = {"meter_id": meter, "timestamp": ts, "consumption_kwh": kwh}
        if meter.strip() in index:
            row["region"] = region_of(index[meter.strip()], PROFILE)
        rows.append(row)
    return rows


def exports(container) -> dict[str, list]:  # noqa: ANN001
    queries = container.outcome_queries()
    return {kind: list(export_rows(queries, kind, ExportFilter())) for kind in EXPORT_KINDS}


def test_http_batches_store_what_a_replay_of_the_same_rows_stores(store_url: str, tmp_path: Path, fleet: list) -> None:
    empty_api_tables(store_url)
    settings = api_settings(tmp_path, database_url=store_url)
    container = database_container(settings)
    with running_api(container, settings) as api:
        key = api.ingest_key()
        totals = {"accepted": 0, "rejected": 0, "too_late": 0}
        for number, start in enumerate(range(0, len(fleet), 700)):
            body = orjson.dumps({"readings": fleet[start : start + 700]})
            headers = {"X-API-Key": key, "Content-Type": "application/json"}
            if number % 2:  # every other batch gzipped, as gateways send them
                body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
            response = api.client.post(URL, content=body, headers=headers)
            assert response.status_code == 202, response.text
            for name in totals:
                totals[name] += response.json()[name]
        over_http = exports(container)
    container.shutdown_resources()
    assert totals["accepted"] + totals["rejected"] + totals["too_late"] == len(fleet)
    assert totals["rejected"] == len(over_http["rejected"]) and totals["too_late"] == len(over_http["late"])

    replayed = replayed_exports(tmp_path, fleet)
    for kind in EXPORT_KINDS:
        assert over_http[kind] == replayed[kind], kind
    assert {r["reason"] for r in replayed["rejected"]} >= {"duplicate", "missing_meter_id"}
    assert any(g["status"] == "open" for g in replayed["gaps"])


def replayed_exports(tmp_path: Path, fleet: list[dict]) -> dict[str, list]:
    """What `fleet` leaves in a fresh SQLite database replayed through the stream pipeline."""
    reference_url = f"sqlite:///{tmp_path / 'replayed.db'}"
    migrations.upgrade(reference_url)
    reference = database_container(api_settings(tmp_path, database_url=reference_url))
    pipeline = reference.stream_pipeline()
    pipeline.load()
    rows = [
        RawReading(
            r["meter_id"], r["timestamp"], r["consumption_kwh"], {"region": r["region"]} if "region" in r else None
        )
        for r in fleet
    ]
    pipeline.process(rows)
    replayed = exports(reference)
    reference.shutdown_resources()
    return replayed


def test_meters_are_registered_with_their_region_as_their_readings_arrive(store_url: str, tmp_path: Path) -> None:
    empty_api_tables(store_url)
    settings = api_settings(tmp_path, database_url=store_url)
    container = database_container(settings)
    with running_api(container, settings, regions=("REGION-1",)) as api:
        key = api.ingest_key()
        readings = [
            {"meter_id": "A", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1, "region": "REGION-1"},
            {"meter_id": "B", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1, "region": "REGION-2"},
            {"meter_id": "C", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": "bad", "region": "REGION-1"},
        ]
        assert api.client.post(URL, json={"readings": readings}, headers={"X-API-Key": key}).status_code == 202
        seen = api.client.get("/api/v1/meters", headers=api.headers(Role.ADMIN)).json()
        assert [(m["meter_id"], m["region"]) for m in seen["items"]] == [("A", "REGION-1"), ("B", "REGION-2")]
        operator = api.client.get("/api/v1/meters", headers=api.headers(Role.OPERATOR)).json()
        assert [m["meter_id"] for m in operator["items"]] == ["A"]
    container.shutdown_resources()


@pytest.fixture
def sqlite_api(tmp_path: Path) -> Iterator[Api]:
    settings = api_settings(tmp_path)
    migrations.upgrade(settings.resolved_database_url)
    container = database_container(settings)
    with running_api(container, settings) as api:
        yield api
    container.shutdown_resources()


@pytest.mark.parametrize(
    ("content", "content_type", "status", "slug"),
    [
        (b"this is not json", "application/json", 400, "malformed-body"),
        (b'{"readings": {"meter_id": "A"}}', "application/json", 422, "validation-error"),
        (b'{"rows": []}', "application/json", 422, "validation-error"),
        (b"<readings/>", "application/xml", 415, "unsupported-media-type"),
        (b"x" * (50 * 1024 * 1024), "application/json", 413, "payload-too-large"),
        (gzip.compress(b"x" * (50 * 1024 * 1024)), "application/json; encoding=gzip", 413, "payload-too-large"),
        (gzip.compress(b'{"readings": []}')[:-4], "application/json; encoding=gzip", 400, "malformed-body"),
        (b'{"readings": []}', "application/json; encoding=br", 415, "unsupported-content-encoding"),
    ],
    ids=["not-json", "wrong-types", "no-readings", "unknown-type", "50MB", "50MB-gzipped", "cut-gzip", "brotli"],
)
def test_bad_bodies_get_the_right_4xx_problem(
    sqlite_api: Api, content: bytes, content_type: str, status: int, slug: str
) -> None:
    key = sqlite_api.ingest_key()
    media_type, _, encoding = content_type.partition("; encoding=")
    headers = {"X-API-Key": key, "Content-Type": media_type, **({"Content-Encoding": encoding} if encoding else {})}
    response = sqlite_api.client.post(URL, content=content, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == f"urn:metrify:problem:{slug}"


# ------------------------------------------------------------------------------- a real process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def create_root_admin(command: list[str], env: dict) -> None:
    """`metrify users create` for root@example.com, the password on stdin."""
    created = subprocess.run(
        [*command, "users", "create", "--email", "root@example.com", "--role", "admin"],
        env=env,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr


def start_api(command: list[str], env: dict, ready: str) -> tuple[subprocess.Popen, str]:
    """`metrify api` on a free port, in a session of its own, once GET `ready` answers 200:
    the process and its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [*command, "api", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}{ready}", timeout=5).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() >= deadline:
            os.killpg(process.pid, signal.SIGTERM)
            output = process.communicate(timeout=30)[0].decode()
            raise AssertionError(f"the API did not come up in 60 s:\n{output}")
        time.sleep(0.2)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict]]:
    env = metrify_env(tmp_path)
    command = [sys.executable, "-m", "metrify"]
    create_root_admin(command, env)
    process, base = start_api(command, env, "/healthz")
    try:
        yield base, env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_metrify_api_serves_the_admin_made_on_the_command_line(server: tuple[str, dict], tmp_path: Path) -> None:
    base, env = server
    with httpx.Client(base_url=base, timeout=30) as client:
        tokens = client.post("/api/v1/auth/token", data={"username": "root@example.com", "password": PASSWORD})
        assert tokens.status_code == 200
        admin = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        key = client.post("/api/v1/ingest-keys", json={"name": "gw", "all_regions": True}, headers=admin).json()[
            "token"
        ]
        body = "meter_id,timestamp,consumption_kwh\nM1,2024-03-04T10:00:00Z,0.5\nM1,2024-03-04T10:30:00Z,abc\n"
        ingested = client.post(URL, content=body, headers={"X-API-Key": key, "Content-Type": "text/csv"})
        assert ingested.status_code == 202
        assert ingested.json()["accepted"] == 1 and ingested.json()["rejected_by_reason"] == {"invalid_consumption": 1}
        readings = client.get("/api/v1/meters/M1/readings", headers=admin).json()["items"]
        assert [r["timestamp"] for r in readings] == ["2024-03-04T10:00:00Z"]
        assert client.get("/readyz").json()["checks"] == {"database": "ok", "stream": "ok"}
        assert "metrify_ingest_readings_total" in client.get("/metrics").text
        problem = client.post(
            URL, content=b"x" * (50 * 1024 * 1024), headers={"X-API-Key": key, "Content-Type": "application/json"}
        )
        assert problem.status_code == 413 and problem.headers["content-type"] == "application/problem+json"
    secret = Path(env["METRIFY_DATA_DIR"]) / "jwt-secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    listed = metrify(["users", "list"], env).stdout
    assert "root@example.com" in listed and "ADMIN" in listed


def group_alive(group: int, within: float) -> bool:
    """Whether a process of this process group is still there after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


def test_metrify_api_with_a_stream_writer_process_stores_all_it_answered_by_its_end(tmp_path: Path) -> None:
    """The installed `metrify` command (spawned processes start from it), the writer process on:
    what the API answered is stored once SIGTERM has ended it, and no process of it is left."""
    command = Path(sys.executable).with_name("metrify")
    assert command.exists(), "the package is installed with its console script"
    env = metrify_env(tmp_path, METRIFY_API__STREAM_WRITER="process")
    create_root_admin([str(command)], env)
    process, base = start_api([str(command)], env, "/readyz")
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            tokens = client.post("/api/v1/auth/token", data={"username": "root@example.com", "password": PASSWORD})
            admin = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
            key = client.post("/api/v1/ingest-keys", json={"name": "gw", "all_regions": True}, headers=admin)
            headers = {"X-API-Key": key.json()["token"]}
            accepted = 0
            for hour in range(24):
                body = [
                    {"meter_id": f"M{m}", "timestamp": f"2024-03-04T{hour:02d}:00:00Z", "consumption_kwh": 0.5}
                    for m in range(50)
                ]
                answer = client.post(URL, json={"readings": body}, headers=headers)
                assert answer.status_code == 202, answer.text
                accepted += answer.json()["accepted"]
    finally:
        os.kill(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    # uvicorn ends by raising the signal it shut down on again, after the app's shutdown
    assert process.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output
    assert not group_alive(process.pid, within=10), "the writer (and its resource tracker) end with the API"
    engine = create_engine_for(f"sqlite:///{tmp_path / 'metrify.db'}")
    with engine.connect() as connection:
        stored = connection.execute(sa.select(sa.func.count()).select_from(t.readings)).scalar_one()
    engine.dispose()
    assert stored == accepted == 24 * 50


def test_more_than_one_worker_needs_kafka(tmp_path: Path) -> None:
    done = metrify(["api", "--workers", "2"], metrify_env(tmp_path), check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers 2 needs Kafka (METRIFY_KAFKA__BOOTSTRAP)" in lines[0]


def test_more_than_one_worker_needs_redis_too(tmp_path: Path) -> None:
    env = metrify_env(tmp_path, METRIFY_KAFKA__BOOTSTRAP="127.0.0.1:1")
    done = metrify(["api", "--workers", "3"], env, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers 3 needs Redis (METRIFY_REDIS_URL)" in lines[0], done.stderr


def test_production_settings_without_a_jwt_secret_are_refused(tmp_path: Path, postgres_url: str) -> None:
    env = metrify_env(tmp_path, postgres_url, METRIFY_REDIS_URL="redis://127.0.0.1:1/0")
    done = metrify(["api"], env, check=False)
    assert done.returncode == 2 and "METRIFY_AUTH__SECRET" in done.stderr
    short = metrify(["api"], {**env, "METRIFY_AUTH__SECRET": "short"}, check=False)
    assert short.returncode == 2 and "at least 32 characters" in short.stderr


def test_the_first_admin_is_made_from_standard_input(tmp_path: Path) -> None:
    env = metrify_env(tmp_path)
    weak = subprocess.run(
        [sys.executable, "-m", "metrify", "users", "create", "--email", "a@example.com", "--role", "ADMIN"],
        env=env,
        input="short\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert weak.returncode == 2 and "at least 8 characters" in weak.stderr
    engine = create_engine_for(f"sqlite:///{tmp_path / 'metrify.db'}")
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(t.users)).scalar_one() == 0
    engine.dispose()


@pytest.mark.parametrize("save_every", [1, 3], ids=["states saved with each batch", "states saved every 3"])
def test_a_stream_writer_process_killed_again_and_again_stores_what_the_api_process_would(
    tmp_path: Path, fleet: list, save_every: int
) -> None:
    """METRIFY_API__STREAM_WRITER=process: the API answers from the writer's core and journal and
    the writer stores after the answer. SIGKILLed between batches and in the middle of them, the
    writer is started again and the store ends as a replay of the same rows leaves it: every
    reading answered once, stored once. With the meter states saved every 3 batches
    (METRIFY_API__STATE_SAVE_BATCHES), most kills leave them behind the outcomes."""
    settings = api_settings(tmp_path, api=ApiSettings(stream_writer="process", state_save_batches=save_every))
    migrations.upgrade(settings.resolved_database_url)
    container = database_container(settings)
    kills = 0
    with running_api(container, settings) as api:
        writer = api.client.app.state.services.pipeline
        key = api.ingest_key()
        totals = {"accepted": 0, "rejected": 0, "too_late": 0}
        chance = random.Random(7)

        def kill() -> None:
            nonlocal kills
            pid = writer.pid
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                kills += 1

        def kill_once_journaled(high: int) -> None:
            """SIGKILL the writer as soon as it has journaled the next batch: before or after
            its answer went out, before its store ends."""
            journal = sqlite3.connect(settings.ingest_journal_path)
            try:
                deadline = time.monotonic() + 30
                while journal.execute("SELECT seq FROM high").fetchone()[0] <= high and time.monotonic() < deadline:
                    pass
                kill()
            finally:
                journal.close()

        for number, start in enumerate(range(0, len(fleet), 150)):
            killer = None
            if number % 5 == 4:  # between batches, or a few ms into one: in its core, journal or store
                killer = threading.Timer(chance.choice((0.0, chance.uniform(0, 0.04))), kill)
                killer.start()
            elif number % 5 == 2:
                high = sqlite3.connect(settings.ingest_journal_path).execute("SELECT seq FROM high").fetchone()[0]
                killer = threading.Thread(target=kill_once_journaled, args=(high,))
                killer.start()
            response = api.client.post(URL, json={"readings": fleet[start : start + 150]}, headers={"X-API-Key": key})
            assert response.status_code == 202, response.text
            for name in totals:
                totals[name] += response.json()[name]
            if killer is not None:
                killer.join()
    over_http = exports(container)
    container.shutdown_resources()
    assert kills >= 3, "the writer must have been killed a few times"
    assert totals["accepted"] + totals["rejected"] + totals["too_late"] == len(fleet)
    assert totals["rejected"] == len(over_http["rejected"]) and totals["too_late"] == len(over_http["late"])
    assert over_http == replayed_exports(tmp_path, fleet)


def test_a_stream_writer_process_saves_the_meter_states_once_the_stream_is_quiet(tmp_path: Path, fleet: list) -> None:
    """METRIFY_API__STATE_SAVE_BATCHES=100: the batches' meter states stand behind the headers
    until the writer has had no batch for a moment; then it saves them, and a replay, which
    refuses states that stand behind, can load the stream again."""
    settings = api_settings(tmp_path, api=ApiSettings(stream_writer="process", state_save_batches=100))
    migrations.upgrade(settings.resolved_database_url)
    container = database_container(settings)
    engine = create_engine_for(settings.resolved_database_url)

    def states_behind() -> list[int | None]:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(t.stream_partitions.c.states_next_offset)).scalars())

    try:
        with running_api(container, settings) as api:
            key = api.ingest_key()
            seen_behind = False
            deadline = time.monotonic() + 30
            while not seen_behind and time.monotonic() < deadline:  # batches back to back: no quiet moment
                for start in range(0, 600, 150):
                    response = api.client.post(
                        URL, json={"readings": fleet[start : start + 150]}, headers={"X-API-Key": key}
                    )
                    assert response.status_code == 202, response.text
                    seen_behind = seen_behind or any(offset is not None for offset in states_behind())
            assert seen_behind, "the states must have stood behind the outcomes between two saves"
            while any(offset is not None for offset in states_behind()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert states_behind() and not any(offset is not None for offset in states_behind())
    finally:
        engine.dispose()
        container.shutdown_resources()


def test_a_stream_writer_process_that_cannot_load_the_stream_makes_ingest_and_readiness_503(tmp_path: Path) -> None:
    """The database holds the stream cut into three partitions (a replay's); the API runs one."""
    settings = api_settings(tmp_path, api=ApiSettings(stream_writer="process"))
    migrations.upgrade(settings.resolved_database_url)
    engine = create_engine_for(settings.resolved_database_url)
    with engine.begin() as connection:
        connection.execute(t.stream_partitions.insert().values(stream="main", partition=2, next_offset=0))
    engine.dispose()
    container = database_container(settings)
    with running_api(container, settings) as api:
        ready = api.client.get("/readyz")
        assert ready.status_code == 503
        assert "3 partitions" in ready.json()["checks"]["stream"]
        reading = {"meter_id": "A", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1}
        response = api.client.post(URL, json={"readings": [reading]}, headers={"X-API-Key": api.ingest_key()})
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "3 partitions" in response.json()["detail"]
    container.shutdown_resources()


def test_a_stream_writer_process_is_ready_once_it_has_loaded_the_stream(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, api=ApiSettings(stream_writer="process"))
    migrations.upgrade(settings.resolved_database_url)
    container = database_container(settings)
    with running_api(container, settings) as api:
        writer = api.client.app.state.services.pipeline
        assert api.client.get("/readyz").json()["checks"]["stream"] == "ok"
        assert writer.pid is not None and writer.pid != os.getpid()
    assert writer.pid is None, "the API's shutdown ends its writer"
    container.shutdown_resources()


def test_a_stream_writer_process_over_sqlite_in_memory_is_refused_in_one_line(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, database_url="sqlite://", api=ApiSettings(stream_writer="process"))
    with pytest.raises(SettingsError, match="another process can open"):
        create_app(settings, database_container(settings))


def test_a_stream_writer_process_stores_the_windows_it_holds_back_once_the_stream_is_quiet(
    tmp_path: Path, fleet: list
) -> None:
    """METRIFY_API__WINDOW_WRITES_PER_BATCH with the writer process: closed windows beyond it wait;
    once no batch has come for 0.1 s the writer stores them, the API still running."""
    settings = api_settings(tmp_path, api=ApiSettings(stream_writer="process", window_writes_per_batch=50))
    migrations.upgrade(settings.resolved_database_url)
    container = database_container(settings)
    expected = replayed_exports(tmp_path, fleet)["aggregates"]
    with running_api(container, settings) as api:
        key = api.ingest_key()
        for start in range(0, len(fleet), 500):
            response = api.client.post(URL, json={"readings": fleet[start : start + 500]}, headers={"X-API-Key": key})
            assert response.status_code == 202, response.text
        queries = container.outcome_queries()
        stored = list(export_rows(queries, "aggregates", ExportFilter()))
        assert len(stored) < len(expected), "windows must wait a little after the last batch"
        deadline = time.monotonic() + 30
        while stored != expected and time.monotonic() < deadline:
            time.sleep(0.1)
            stored = list(export_rows(queries, "aggregates", ExportFilter()))
        assert stored == expected
    container.shutdown_resources()


def test_a_second_stream_writer_on_one_journal_is_refused_with_a_503(tmp_path: Path) -> None:
    """Another writer holds the journal (another `metrify api` on this database): this API's
    writer gives up within seconds and says so, instead of waiting for ever."""
    settings = api_settings(tmp_path, api=ApiSettings(stream_writer="process"))
    migrations.upgrade(settings.resolved_database_url)
    journal = settings.ingest_journal_path
    with open(journal.with_name(journal.name + ".lock"), "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        container = database_container(settings)
        with running_api(container, settings) as api:
            reading = {"meter_id": "A", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1}
            started = time.monotonic()
            response = api.client.post(URL, json={"readings": [reading]}, headers={"X-API-Key": api.ingest_key()})
            assert response.status_code == 503, response.text
            assert "another stream writer process holds" in response.json()["detail"]
            assert time.monotonic() - started < 60
        container.shutdown_resources()


def test_a_journal_a_killed_writer_left_is_not_stored_into_a_database_made_afresh(tmp_path: Path, fleet: list) -> None:
    """The writer SIGKILLed with batches in its journal, then the database deleted and made again
    (an embedded user's reset): ingest answers 503 saying so, and nothing of the old database
    comes into the new one; with the journal moved aside, ingest goes on into the new database."""
    settings = api_settings(tmp_path, api=ApiSettings(stream_writer="process"))
    database = tmp_path / "metrify.db"
    migrations.upgrade(settings.resolved_database_url)
    container = database_container(settings)
    with running_api(container, settings) as api:
        key = api.ingest_key()
        for start in range(0, 600, 150):
            response = api.client.post(URL, json={"readings": fleet[start : start + 150]}, headers={"X-API-Key": key})
            assert response.status_code == 202, response.text
        os.kill(api.client.app.state.services.pipeline.pid, signal.SIGKILL)
    container.shutdown_resources()
    with sqlite3.connect(settings.ingest_journal_path) as journal:
        assert journal.execute("SELECT count(*) FROM batches").fetchone()[0] == 4, "the killed writer's journal"
    for path in tmp_path.glob("metrify.db*"):
        if not path.name.startswith("metrify.db-ingest-journal"):
            path.unlink()
    migrations.upgrade(settings.resolved_database_url)

    def readings_stored() -> int:
        engine = create_engine_for(settings.resolved_database_url)
        try:
            with engine.connect() as connection:
                return int(connection.execute(sa.select(sa.func.count()).select_from(t.readings)).scalar_one())
        finally:
            engine.dispose()

    reading = {"meter_id": "NEW-1", "timestamp": "2024-03-04T10:00:00Z", "consumption_kwh": 1}
    container = database_container(settings)
    with running_api(container, settings) as api:
        key = api.ingest_key()
        response = api.client.post(URL, json={"readings": [reading]}, headers={"X-API-Key": key})
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "that this database never stored" in response.json()["detail"]
        assert "that this database never stored" in api.client.get("/readyz").json()["checks"]["stream"]
    container.shutdown_resources()
    assert database.exists() and readings_stored() == 0
    for path in tmp_path.glob("metrify.db-ingest-journal*"):
        path.rename(path.with_name(path.name + ".old"))
    container = database_container(settings)
    with running_api(container, settings) as api:
        response = api.client.post(URL, json={"readings": [reading]}, headers={"X-API-Key": api.ingest_key()})
        assert response.status_code == 202, response.text
    container.shutdown_resources()
    assert readings_stored() == 1
