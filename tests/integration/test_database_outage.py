"""A replay survives its PostgreSQL server going away for a minute: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.integration.cli import export_all, metrify, metrify_env

from metrify.adapters.files.writers import write_fleet_csv
from metrify.adapters.sqlalchemy.engine import create_engine_for
from metrify.application.simulator import FleetProfile

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivatePostgres:
    """A PostgreSQL server of this test alone (scripts/services.sh with its own folder and port),
    so that stopping it disturbs nothing else."""

    def __init__(self, folder: Path) -> None:
        self.env = {
            **os.environ,
            "METRIFY_SERVICES_DIR": str(folder),
            "METRIFY_SERVICES_PG_PORT": str(_free_port()),
        }
        self.url = f"postgresql+psycopg://metrify:metrify@127.0.0.1:{self.env['METRIFY_SERVICES_PG_PORT']}/metrify"

    def _run(self, action: str) -> None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "services.sh"), action, "postgres"],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def clean(self) -> None:
        self._run("clean")


def _wait_for_committed_rows(url: str, replay: subprocess.Popen, timeout: float = 120) -> None:
    """Until the replay has committed its first batches: the outage must fall in its middle."""
    engine = create_engine_for(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and replay.poll() is None:
            with engine.connect() as connection:
                done = connection.execute(sa.text("SELECT max(rows_done) FROM replay_progress")).scalar()
            if done and done >= 1000:
                return
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise AssertionError("the replay committed nothing in time")


@pytest.fixture
def private_postgres():
    # Not under pytest's tmp folder: PostgreSQL runs as its own OS user, who cannot enter it.
    (ROOT / ".services").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="outage-test-", dir=ROOT / ".services"))
    folder.chmod(0o755)
    server = PrivatePostgres(folder)
    server.start()
    yield server
    server.stop()
    server.clean()  # its folder, and the cluster's own folder when services.sh kept it elsewhere
    shutil.rmtree(folder, ignore_errors=True)


def test_a_replay_waits_out_a_database_outage_and_ends_exactly_as_without_it(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet.csv"
    write_fleet_csv(fleet, FleetProfile(meters=40, days=3, seed=5))
    reference_env = metrify_env(tmp_path / "reference")
    metrify(["replay", str(fleet)], reference_env)
    expected = export_all(reference_env)

    env = metrify_env(tmp_path / "data", database_url=private_postgres.url)
    metrify(["db", "upgrade"], env)
    # Paced by event time: three days at 15,000x real time take about 17 s, so the outage falls
    # in the middle of the replay, with several batches committed before and after it.
    replay = subprocess.Popen(
        [sys.executable, "-m", "metrify", "replay", str(fleet), "--speed", "15000", "--batch-size", "200"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_committed_rows(private_postgres.url, replay)
    assert replay.poll() is None, "the replay ended before the outage"
    private_postgres.stop()
    time.sleep(OUTAGE_SECONDS)
    assert replay.poll() is None, f"the replay gave up during the outage: {replay.stderr.read()[-2000:]}"
    private_postgres.start()
    out, err = replay.communicate(timeout=300)
    assert replay.returncode == 0, err[-3000:]
    assert "database unreachable, retrying" in err
    assert "Traceback" not in out + err
    assert export_all(env) == expected
