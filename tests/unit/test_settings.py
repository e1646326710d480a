"""Settings come from METRIFY_* variables; a bad value names the variable in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from metrify.domain.stream.config import US
from metrify.settings import SettingsError, format_duration, load_settings, parse_duration


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("METRIFY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("METRIFY_DATA_DIR", str(tmp_path))


def test_defaults_are_the_embedded_profile_with_the_contract_defaults(tmp_path) -> None:
    settings = load_settings()
    assert settings.profile == "embedded"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'metrify.db'}"
    config = settings.stream.to_config()
    assert config.interval == 1800 * US
    assert config.gap_grace == 900 * US
    assert config.out_of_orderness == 10 * US
    assert config.allowed_lateness == 3600 * US
    assert config.max_kwh == 1000.0
    assert config.future_tolerance == 3600 * US
    assert config.state_ttl == 7 * 86400 * US
    assert config.windows == (900 * US, 3600 * US, 86400 * US)
    assert settings.stream.partitions == 1


def test_nested_variables_use_a_double_underscore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRIFY_STREAM__INTERVAL", "15m")
    monkeypatch.setenv("METRIFY_STREAM__WINDOWS", "30m,1d")
    monkeypatch.setenv("METRIFY_KAFKA__BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("METRIFY_KAFKA__TOPIC_PREFIX", "grid.")
    settings = load_settings()
    assert settings.stream.interval == 900
    assert settings.stream.windows == (1800, 86400)
    assert settings.kafka.bootstrap == "127.0.0.1:9092"
    assert settings.kafka.topic_prefix == "grid."
    assert settings.profile == "mixed"


def test_all_three_services_make_the_production_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRIFY_DATABASE_URL", "postgresql+psycopg://u:p@127.0.0.1/db")
    monkeypatch.setenv("METRIFY_KAFKA__BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("METRIFY_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert load_settings().profile == "production"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("METRIFY_STREAM__INTERVAL", "abc", "METRIFY_STREAM__INTERVAL: expected a duration"),
        ("METRIFY_STREAM__INTERVAL", "0", "METRIFY_STREAM__INTERVAL: the interval must be longer than zero"),
        ("METRIFY_STREAM__PARTITIONS", "zero", "METRIFY_STREAM__PARTITIONS:"),
        ("METRIFY_STREAM__WINDOWS", ",", "METRIFY_STREAM__WINDOWS:"),
        ("METRIFY_LOG_LEVEL", "LOUD", "METRIFY_LOG_LEVEL:"),
        ("METRIFY_STORAGE__MAINTENANCE_EVERY", "0", "METRIFY_STORAGE__MAINTENANCE_EVERY: must be at least 1s"),
        ("METRIFY_API__MAX_PAGE_SIZE", "5000", "METRIFY_API__MAX_PAGE_SIZE:"),
        ("METRIFY_KAFKA", "x", "METRIFY_KAFKA: not a JSON object"),
        ("METRIFY_STREAM", '{"partitions": 2', "METRIFY_STREAM: not a JSON object"),
    ],
)
def test_a_bad_value_names_the_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("1d", 86400), ("1w", 604800)]
)
def test_durations_read_with_units(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1y", "-5m", "1.5h"])
def test_durations_refuse_what_they_cannot_read(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "value", [10**400, float("inf"), float("nan"), "9" * 400, "9" * 400 + "s", "9" * 310 + "ms", "101000d"]
)
def test_durations_beyond_a_float_or_100_years_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration(value)


@pytest.mark.parametrize("folder", ["plain", "with space", "what?", "100%41", "a#b"])
def test_the_embedded_database_lies_in_the_data_folder_whatever_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    from metrify.adapters.sqlalchemy.engine import sqlite_path

    monkeypatch.setenv("METRIFY_DATA_DIR", str(tmp_path / folder))
    monkeypatch.delenv("METRIFY_DATABASE_URL", raising=False)
    assert sqlite_path(load_settings().resolved_database_url) == tmp_path / folder / "metrify.db"
