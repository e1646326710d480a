"""Running the real `metrify` command as a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

SRC = str(Path(__file__).resolve().parents[2] / "src")


def metrify_env(data_dir: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRIFY_")}
    env["METRIFY_DATA_DIR"] = str(data_dir)
    env["METRIFY_LOG_FORMAT"] = "json"
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    if database_url:
        env["METRIFY_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def metrify(
    args: list[str], env: dict[str, str], check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "metrify", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(f"metrify {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def export_all(env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Every export kind, parsed from the CLI's JSON lines."""
    result = {}
    for kind in ("readings", "rejected", "late", "gaps", "aggregates"):
        out = metrify(["export", kind], env).stdout
        result[kind] = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    return result
