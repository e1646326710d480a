"""`metrify replay` and `export` end to end on real processes: round trip, continuation, SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.integration.cli import export_all, metrify, metrify_env

from metrify.adapters.files.writers import write_fleet_csv
from metrify.adapters.sqlalchemy import migrations
from metrify.application.simulator import FleetProfile

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fleet") / "fleet.csv"
    write_fleet_csv(path, FleetProfile(meters=80, days=3, seed=11))
    return path


@pytest.fixture(scope="module")
def uninterrupted(fleet_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = metrify_env(tmp_path_factory.mktemp("once"))
    metrify(["replay", str(fleet_csv), "--batch-size", "700"], env)
    return export_all(env)


def test_replay_then_export_round_trips_every_kind(fleet_csv: Path, uninterrupted: dict) -> None:
    with fleet_csv.open() as handle:
        rows = sum(1 for _ in handle) - 1
    kinds = uninterrupted
    assert len(kinds["readings"]) + len(kinds["rejected"]) + len(kinds["late"]) == rows
    assert {r["reason"] for r in kinds["rejected"]} >= {"duplicate", "missing_meter_id", "invalid_timestamp"}
    assert any(g["status"] == "open" for g in kinds["gaps"])
    assert any(g["status"] == "closed" for g in kinds["gaps"])
    assert {a["window"] for a in kinds["aggregates"]} == {"15m", "1h", "1d"}
    readings = kinds["readings"]
    assert readings == sorted(readings, key=lambda r: (r["meter_id"], r["timestamp"]))
    assert all(r["timestamp"].endswith("Z") for r in readings)


def test_export_filters_and_csv_format(uninterrupted: dict, tmp_path: Path, fleet_csv: Path) -> None:
    env = metrify_env(tmp_path)
    metrify(["replay", str(fleet_csv), "--batch-size", "700"], env)
    meter = uninterrupted["aggregates"][0]["meter_id"]
    out = metrify(["export", "aggregates", "--window", "1h", "--meter", meter, "--format", "csv"], env).stdout
    rows = list(csv.DictReader(out.splitlines()))
    expected = [a for a in uninterrupted["aggregates"] if a["meter_id"] == meter and a["window"] == "1h"]
    assert [r["window_start"] for r in rows] == [a["window_start"] for a in expected]
    assert rows and all(r["window"] == "1h" for r in rows)
    target = tmp_path / "gaps.jsonl"
    metrify(
        ["export", "gaps", "--from", "2024-03-05T00:00:00Z", "--to", "2024-03-06T00:00:00Z", "--output", str(target)],
        env,
    )
    # the gaps that overlap the range, as the API's gap queries: begun before its end, not ended by its start
    day, next_day = "2024-03-05T00:00:00Z", "2024-03-06T00:00:00Z"
    overlapping = [
        g
        for g in uninterrupted["gaps"]
        if g["missing_from"] < next_day and (g["missing_to"] is None or g["missing_to"] > day)
    ]
    assert [json.loads(line) for line in target.read_text().splitlines()] == overlapping
    assert any(g["missing_from"] < day for g in overlapping)  # one begun the day before, that a start filter lost
    by_date = metrify(["export", "gaps", "--from", "2024-03-05", "--to", "2024-03-06"], env).stdout
    assert by_date.splitlines() == target.read_text().splitlines()  # a bare date is its midnight, UTC


def test_replaying_two_files_continues_the_stream(fleet_csv: Path, uninterrupted: dict, tmp_path: Path) -> None:
    lines = fleet_csv.read_text().splitlines()
    header, body = lines[0], lines[1:]
    cut = len(body) // 2
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("\n".join([header, *body[:cut]]) + "\n")
    second.write_text("\n".join([header, *body[cut:]]) + "\n")
    env = metrify_env(tmp_path / "data")
    metrify(["replay", str(first), "--batch-size", "500"], env)
    metrify(["replay", str(second), "--batch-size", "900"], env)
    assert export_all(env) == uninterrupted


@pytest.fixture(scope="module")
def large_fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Large enough that a replay is still running seconds after it starts, on a fast machine too."""
    path = tmp_path_factory.mktemp("large") / "fleet.csv"
    write_fleet_csv(path, FleetProfile(meters=800, days=4, seed=12))
    return path


@pytest.fixture(scope="module")
def large_reference(large_fleet: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = metrify_env(tmp_path_factory.mktemp("reference"))
    metrify(["replay", str(large_fleet), "--partitions", "3"], env)
    return export_all(env)


def _rows_committed(env: dict[str, str]) -> int:
    """The replay's progress as its database holds it (0 before the first commit)."""
    try:
        with sqlite3.connect(f"file:{Path(env['METRIFY_DATA_DIR']) / 'metrify.db'}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT coalesce(sum(rows_done), 0) FROM replay_progress").fetchone()[0])
    except sqlite3.Error:  # not made yet, or its schema not yet
        return 0


def kill_at_random_moments(
    commands: list[list[str]],
    env: dict[str, str],
    seed: int,
    after_each_kill: Callable[[], None] | None = None,
) -> None:
    """Run the commands one after the other, each SIGKILLed at a random moment, until one finishes
    first: every other one during its start-up (0.1-0.6 s in), the others 0-0.3 s after it has
    committed rows of its own, so that each such kill lands in the middle of its work whatever the
    machine's speed. At least two must have been killed, or the test proved nothing."""
    chance = random.Random(seed)
    kills = 0
    for number, command in enumerate(commands):
        before = _rows_committed(env)
        process = subprocess.Popen(
            [sys.executable, "-m", "metrify", *command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if number % 2:
            time.sleep(chance.uniform(0.1, 0.6))
        else:
            deadline = time.monotonic() + 60
            while process.poll() is None and _rows_committed(env) <= before and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(chance.uniform(0.0, 0.3))
        if process.poll() is not None:
            assert process.returncode == 0, process.stderr.read().decode() if process.stderr else ""
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        if after_each_kill is not None:
            after_each_kill()
    assert kills >= 2, "the replay finished before it could be killed: make the fleet larger"


def test_a_replay_killed_at_any_moment_resumes_to_the_same_outcome(
    large_fleet: Path, large_reference: dict, tmp_path: Path
) -> None:
    env = metrify_env(tmp_path)
    command = ["replay", str(large_fleet), "--partitions", "3", "--batch-size", "300"]
    kill_at_random_moments([command] * 8, env, seed=3)
    finished = metrify(["replay", str(large_fleet), "--partitions", "3", "--batch-size", "700"], env)
    assert "Traceback" not in finished.stderr
    assert export_all(env) == large_reference
    again = metrify(["replay", str(large_fleet), "--partitions", "3"], env)
    assert "already replayed" in again.stdout


@pytest.fixture(scope="module")
def three_partitions(fleet_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = metrify_env(tmp_path_factory.mktemp("three"))
    metrify(["replay", str(fleet_csv), "--partitions", "3", "--batch-size", "700"], env)
    return export_all(env)


def test_a_replay_shared_by_workers_gives_the_exports_of_one_process(
    fleet_csv: Path, three_partitions: dict, tmp_path: Path
) -> None:
    env = metrify_env(tmp_path)
    done = metrify(["replay", str(fleet_csv), "--partitions", "3", "--workers", "2", "--batch-size", "500"], env)
    assert "windows" in done.stdout and "Traceback" not in done.stderr
    assert export_all(env) == three_partitions
    assert {r["partition"] for r in three_partitions["readings"]} == {0, 1, 2}
    again = metrify(["replay", str(fleet_csv), "--partitions", "3"], env)
    assert "already replayed" in again.stdout


def _replays_running(path: Path) -> list[int]:
    """Processes whose command line names this file (a worker left behind would be one)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_replay_with_workers_killed_at_any_moment_resumes_to_the_same_outcome(
    large_fleet: Path, large_reference: dict, tmp_path: Path
) -> None:
    """SIGKILL reaches only the replay itself; its workers end with it (none keeps writing), and
    the next run resumes each partition after its last commit, with another number of workers."""
    env = metrify_env(tmp_path / "killed")

    def no_worker_left() -> None:
        deadline = time.monotonic() + 10
        while _replays_running(large_fleet) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _replays_running(large_fleet), "a worker outlived the replay that started it"

    commands = [
        ["replay", str(large_fleet), "--partitions", "3", "--workers", workers, "--batch-size", "200"]
        for workers in ("2", "3", "2", "3", "2", "3")
    ]
    kill_at_random_moments(commands, env, seed=5, after_each_kill=no_worker_left)
    finished = metrify(["replay", str(large_fleet), "--partitions", "3", "--batch-size", "300"], env)
    assert "Traceback" not in finished.stderr
    assert export_all(env) == large_reference


def test_a_worker_killed_alone_stops_the_replay_at_once_and_a_rerun_resumes(
    large_fleet: Path, large_reference: dict, tmp_path: Path
) -> None:
    env = metrify_env(tmp_path)
    command = ["replay", str(large_fleet), "--partitions", "3", "--workers", "3", "--batch-size", "200"]
    process = subprocess.Popen(
        [sys.executable, "-m", "metrify", *command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(children.read_text().split()) < 3:
        time.sleep(0.05)
    while time.monotonic() < deadline and _rows_committed(env) == 0:  # in the middle of the work
        time.sleep(0.01)
    victim = int(children.read_text().split()[1])
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - killed < 5, "the replay went on long after one of its workers died"
    assert process.returncode == 1
    assert stderr.decode().strip().splitlines()[-1].endswith("stopped (killed by SIGKILL)")
    assert "Traceback" not in stderr.decode()
    metrify(["replay", str(large_fleet), "--partitions", "3", "--workers", "2"], env)
    assert export_all(env) == large_reference


def test_more_workers_than_partitions_is_refused_in_one_line(fleet_csv: Path, tmp_path: Path) -> None:
    done = metrify(
        ["replay", str(fleet_csv), "--partitions", "2", "--workers", "3"], metrify_env(tmp_path), check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["metrify: --workers 3 needs at least 3 partitions (--partitions)"]


def test_replay_into_postgres_gives_the_same_exports_as_sqlite(
    fleet_csv: Path, uninterrupted: dict, tmp_path: Path, fresh_postgres_url: str
) -> None:
    env = metrify_env(tmp_path, database_url=fresh_postgres_url)
    metrify(["replay", str(fleet_csv), "--batch-size", "700"], env)
    assert export_all(env) == uninterrupted


def test_replay_with_network_simulation_and_partitions_is_deterministic(fleet_csv: Path, tmp_path: Path) -> None:
    options = ["--partitions", "3", "--delay-prob", "0.1", "--max-delay", "300", "--drop-prob", "0.05", "--seed", "4"]
    results = []
    for name in ("one", "two"):
        env = metrify_env(tmp_path / name)
        metrify(["replay", str(fleet_csv), *options], env)
        results.append(export_all(env))
    assert results[0] == results[1]
    assert {r["partition"] for r in results[0]["readings"]} == {0, 1, 2}


def test_json_numbers_beyond_the_years_a_timestamp_can_name_are_rejected_and_the_replay_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "far.jsonl"
    path.write_text(
        '{"meter_id": "M1", "timestamp": 1709510400, "kwh": 0.5}\n'
        '{"meter_id": "M1", "timestamp": 1e16, "kwh": 0.5}\n'  # ms: year 318,857
        '{"meter_id": "M1", "timestamp": -10000000000000, "kwh": 0.5}\n'  # s: 315,000 years BC
        '{"meter_id": "M1", "timestamp": 1709512200, "kwh": 0.25}\n'
    )
    env = metrify_env(tmp_path / "data")
    metrify(["replay", str(path)], env)  # before: the whole replay failed on storing them
    outcome = export_all(env)
    assert [r["timestamp"] for r in outcome["readings"]] == ["2024-03-04T00:00:00Z", "2024-03-04T00:30:00Z"]
    assert [(r["timestamp"], r["reason"]) for r in outcome["rejected"]] == [
        (1e16, "invalid_timestamp"),
        (-10000000000000, "invalid_timestamp"),
    ]


def test_export_needs_a_current_schema_and_replay_brings_it_there(fleet_csv: Path, tmp_path: Path) -> None:
    env = metrify_env(tmp_path)
    empty = metrify(["export", "readings"], env, check=False)
    assert (empty.returncode, empty.stderr.strip()) == (
        2,
        "metrify: the database is empty: run `metrify replay FILE` or `metrify db upgrade` first",
    )
    metrify(["db", "upgrade", "0005_users_and_ingest_keys"], env)
    behind = metrify(["export", "readings"], env, check=False)
    assert (behind.returncode, behind.stderr.strip()) == (
        2,
        "metrify: the database schema is behind: run `metrify db upgrade`",
    )
    metrify(["replay", str(fleet_csv)], env)
    assert metrify(["export", "readings"], env).stdout.count("\n") > 1000
    assert migrations.HEAD in metrify(["db", "current"], env).stdout


def test_a_meter_registered_with_its_own_interval_is_slotted_and_gapped_by_it(tmp_path: Path) -> None:
    """§3: the expected interval I is the registry's for a meter that has one (15 min here,
    against the default 30): 10:15 is a slot of its own, and the gaps count 15-minute slots."""
    from metrify.adapters.sqlalchemy.engine import create_engine_for
    from metrify.adapters.sqlalchemy.meters import SqlAlchemyMeterRegistry
    from metrify.domain.readings import Meter

    env = metrify_env(tmp_path / "data")
    metrify(["db", "upgrade"], env)
    engine = create_engine_for(f"sqlite:///{tmp_path / 'data' / 'metrify.db'}")
    try:
        SqlAlchemyMeterRegistry(engine).add(Meter("M15", None, 900), created_at=0)
    finally:
        engine.dispose()
    source = tmp_path / "m15.csv"
    times = ["10:00", "10:15", "10:30", "11:15", "13:00"]
    source.write_text(
        "meter_id,timestamp,consumption_kwh\n"
        + "".join(f"{m},2024-03-04T{t}:00Z,0.5\n" for t in times for m in ("M15", "M30"))
    )
    metrify(["replay", str(source)], env)
    out = export_all(env)
    accepted = [(r["meter_id"], r["timestamp"][11:16]) for r in out["readings"]]
    assert [t for m, t in accepted if m == "M15"] == times
    assert [(r["meter_id"], r["timestamp"][11:16], r["reason"]) for r in out["rejected"]] == [
        ("M30", "10:30", "duplicate")  # the default 30 min: 10:15 took the 10:30 slot (half up)
    ]
    m15 = [
        (g["missing_from"][11:16], g["missing_to"][11:16], g["missing_intervals"])
        for g in out["gaps"]
        if g["meter_id"] == "M15"
    ]
    assert m15 == [("10:45", "11:15", 2), ("11:30", "13:00", 6)]
