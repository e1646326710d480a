"""The built wheel works on its own: version, info and migrations (shipped inside it)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only the wheel built from this checkout. Its dependencies come
    from the test runner's site-packages (added by a .pth line, which does not load the runner's
    editable install of metrify), so the test needs no download beyond the build backend."""
    where = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(where / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheel = next((where / "dist").glob("metrify-*.whl"))
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz_runner_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv


def run(venv: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("METRIFY_") and k != "PYTHONPATH"}
    environment.update(env)
    return subprocess.run(
        [str(venv / "bin" / "metrify"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=venv,
    )


def test_the_wheel_is_what_runs(wheel_venv: Path) -> None:
    done = subprocess.run(
        [str(wheel_venv / "bin" / "python"), "-c", "import metrify, pathlib; print(metrify.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=wheel_venv,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert str(wheel_venv) in done.stdout
    assert (Path(done.stdout.strip()).parent / "alembic" / "versions").is_dir()


def test_version_info_and_db_upgrade_on_the_embedded_profile(wheel_venv: Path, tmp_path: Path) -> None:
    env = {"METRIFY_DATA_DIR": str(tmp_path), "METRIFY_LOG_FORMAT": "json"}
    version = run(wheel_venv, ["--version"], **env)
    assert version.returncode == 0 and version.stdout.startswith("metrify ")
    info = run(wheel_venv, ["info"], **env)
    assert info.returncode == 0, info.stderr
    assert "embedded" in info.stdout and "SQLite" in info.stdout
    upgraded = run(wheel_venv, ["db", "upgrade"], **env)
    assert upgraded.returncode == 0, upgraded.stderr
    current = run(wheel_venv, ["db", "current"], **env)
    assert "up to date" in current.stdout
    assert (tmp_path / "metrify.db").exists()


def test_db_upgrade_from_the_wheel_against_the_real_postgres(
    wheel_venv: Path, tmp_path: Path, fresh_postgres_url: str
) -> None:
    env = {"METRIFY_DATA_DIR": str(tmp_path), "METRIFY_DATABASE_URL": fresh_postgres_url, "METRIFY_LOG_FORMAT": "json"}
    upgraded = run(wheel_venv, ["db", "upgrade"], **env)
    assert upgraded.returncode == 0, upgraded.stderr
    info = run(wheel_venv, ["info"], **env)
    assert "PostgreSQL" in info.stdout
    assert "metrify:***@" in info.stdout or "***" in info.stdout
    current = run(wheel_venv, ["db", "current"], **env)
    assert "up to date" in current.stdout


def test_info_says_unreachable_instead_of_crashing(wheel_venv: Path, tmp_path: Path) -> None:
    env = {
        "METRIFY_DATA_DIR": str(tmp_path),
        "METRIFY_DATABASE_URL": "postgresql+psycopg://nobody:secret@127.0.0.1:1/none",
        "METRIFY_KAFKA__BOOTSTRAP": "127.0.0.1:1",
        "METRIFY_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    info = run(wheel_venv, ["info"], **env)
    assert info.returncode == 0, info.stderr
    assert info.stdout.count("unreachable") >= 3
    assert "secret" not in info.stdout
    assert "Traceback" not in info.stdout + info.stderr
