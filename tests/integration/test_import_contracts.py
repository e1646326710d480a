"""The layer contracts in pyproject.toml are enforced: a domain that imports sqlalchemy fails."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold_on_the_code_as_it_is(tree: Path) -> None:
    done = lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_domain_that_imports_sqlalchemy_breaks_the_contract(tree: Path) -> None:
    target = tree / "src" / "metrify" / "domain" / "readings.py"
    target.write_text("import sqlalchemy  # noqa\n" + target.read_text())
    done = lint(tree)
    assert done.returncode != 0
    assert "domain is pure" in done.stdout and "BROKEN" in done.stdout


def test_an_application_that_imports_an_adapter_breaks_the_contract(tree: Path) -> None:
    target = tree / "src" / "metrify" / "application" / "stream.py"
    target.write_text("import metrify.adapters.memory.stream_store  # noqa\n" + target.read_text())
    done = lint(tree)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout
