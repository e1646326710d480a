"""docker/compose.yaml sets only real settings, and the values it sets are ones Metrify accepts.

The valid names come from `metrify.settings.Settings` itself (its fields, its nested models'
fields, its env prefix and nested delimiter), never from a list kept here: a setting renamed in
settings.py and not in the compose file fails this test. Needs no service and no Docker engine.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from metrify.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"

# Compose's own interpolation of the host's environment: ${NAME}, ${NAME:-default}, ${NAME-default}
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?::?-)(?P<default>[^}]*))?\}")


# ------------------------------------------------------------------------------------------ helpers
def _nested_model(annotation: object) -> type[BaseModel] | None:
    """The pydantic model behind a field's annotation (`KafkaSettings`, `KafkaSettings | None`,
    `Annotated[KafkaSettings, ...]`), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        model = _nested_model(arg)
        if model is not None:
            return model
    return None


def _env_names(field_name: str, field: object) -> list[str]:
    alias = getattr(field, "validation_alias", None) or getattr(field, "alias", None)
    return [alias] if isinstance(alias, str) else [field_name]


def setting_variable_names(settings_cls: type[BaseSettings] = Settings) -> set[str]:
    """Every environment variable that sets one value of `settings_cls`, upper-cased:
    `METRIFY_DATABASE_URL`, `METRIFY_KAFKA__BOOTSTRAP`, ... (walks nested models to the leaves)."""
    config = settings_cls.model_config
    prefix = (config.get("env_prefix") or "").upper()
    delimiter = config.get("env_nested_delimiter") or "__"

    def walk(model: type[BaseModel], path: str) -> Iterator[str]:
        for name, field in model.model_fields.items():
            for env_name in _env_names(name, field):
                nested = _nested_model(field.annotation)
                full = f"{path}{delimiter}{env_name}" if path else env_name
                if nested is None:
                    yield full.upper()
                else:
                    yield from walk(nested, full)

    return {prefix + name for name in walk(settings_cls, "")}


def metrify_variables(document: object, prefix: str = "METRIFY_") -> dict[str, set[str]]:
    """Every variable named `prefix...` that a compose document sets, with where it is set:
    mapping keys (`environment: {NAME: value}`) and list items (`environment: [NAME=value]`),
    anywhere in the document (services, x- extension blocks, ...)."""
    found: dict[str, set[str]] = {}

    def visit(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.upper().startswith(prefix):
                    found.setdefault(key, set()).add(where)
                visit(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, str):
                    name = item.split("=", 1)[0].strip()
                    if name.upper().startswith(prefix) and re.fullmatch(r"[A-Za-z0-9_]+", name):
                        found.setdefault(name, set()).add(where)
                else:
                    visit(item, where)

    visit(document, "")
    return found


def unknown_variables(document: object, valid: set[str] | None = None) -> dict[str, set[str]]:
    """The METRIFY_ variables a compose document sets that are no setting of Metrify's."""
    valid = setting_variable_names() if valid is None else valid
    return {name: where for name, where in metrify_variables(document).items() if name.upper() not in valid}


def environment_of(service: dict) -> dict[str, str]:
    """A service's `environment`, as a mapping, whichever of the two compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {name: value for name, value in pairs}
    return {name: "" if value is None else str(value) for name, value in env.items()}


def interpolate(value: str) -> str:
    """Compose's `${NAME:-default}` as it resolves on a host where NAME is not set."""
    return _INTERPOLATION.sub(lambda m: m.group("default") or "", value)


def metrify_roles(document: dict) -> dict[str, dict]:
    """The services that run the Metrify image (built from docker/Dockerfile, or image metrify)."""
    roles = {}
    for name, service in document["services"].items():
        build = service.get("build") or {}
        dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
        image = str(service.get("image", ""))
        if dockerfile.endswith("docker/Dockerfile") or image.split(":")[0] == "metrify":
            roles[name] = service
    return roles


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


# -------------------------------------------------------------------------------------------- tests
def test_valid_names_come_from_the_settings_model() -> None:
    valid = setting_variable_names()
    # the leaves of each group, with the nested delimiter
    assert {"METRIFY_DATABASE_URL", "METRIFY_REDIS_URL", "METRIFY_DATA_DIR"} <= valid
    assert {"METRIFY_KAFKA__BOOTSTRAP", "METRIFY_STREAM__INTERVAL", "METRIFY_STREAM__WINDOWS"} <= valid
    # one per leaf field, nothing invented
    leaves = sum(
        len(_nested_model(f.annotation).model_fields) if _nested_model(f.annotation) else 1
        for f in Settings.model_fields.values()
    )
    assert len(valid) == leaves
    # a group itself, a single underscore instead of the delimiter, a missing prefix: not settings
    assert "METRIFY_KAFKA" not in valid
    assert "METRIFY_KAFKA_BOOTSTRAP" not in valid
    assert "KAFKA__BOOTSTRAP" not in valid


def test_the_check_catches_bad_names() -> None:
    """The helper the compose test relies on must be able to fail."""
    bad = {
        "x-env": {"METRIFY_KAFKA_BOOTSTRAP": "kafka:9092"},  # single underscore
        "services": {
            "api": {
                "environment": {
                    "METRIFY_DATABASE_URL": "postgresql+psycopg://u:p@db/x",  # fine
                    "METRIFY_DB_URL": "postgresql+psycopg://u:p@db/x",  # no such setting
                }
            },
            "worker": {"environment": ["METRIFY_STREAM__INTERVAL=30m", "METRIFY_STREAM__NOPE=1", "METRIFY_KAFKA"]},
        },
    }
    unknown = unknown_variables(bad)
    assert set(unknown) == {"METRIFY_KAFKA_BOOTSTRAP", "METRIFY_DB_URL", "METRIFY_STREAM__NOPE", "METRIFY_KAFKA"}
    assert unknown["METRIFY_DB_URL"] == {"services.api.environment"}
    assert unknown_variables({"services": {"api": {"environment": {"METRIFY_REDIS_URL": "redis://r"}}}}) == {}


def test_compose_sets_only_real_settings(compose: dict) -> None:
    found = metrify_variables(compose)
    assert found, "docker/compose.yaml sets no METRIFY_ variable at all"
    unknown = unknown_variables(compose)
    assert not unknown, "docker/compose.yaml sets variables that are no Metrify setting: " + ", ".join(
        f"{name} (in {', '.join(sorted(where))})" for name, where in sorted(unknown.items())
    )
    assert all(name == name.upper() for name in found), "write METRIFY_ variables in upper case"


def test_every_role_gets_the_same_production_settings(compose: dict) -> None:
    roles = metrify_roles(compose)
    assert {"migrate", "api", "worker", "sink", "celery-worker", "celery-beat"} <= set(roles)
    environments = {name: environment_of(service) for name, service in roles.items()}
    first_name, first = next(iter(environments.items()))
    for name, env in environments.items():
        for required in ("METRIFY_DATABASE_URL", "METRIFY_REDIS_URL", "METRIFY_KAFKA__BOOTSTRAP"):
            assert env.get(required), f"{name} lacks {required}"
        assert env == first, f"{name} and {first_name} run with different METRIFY_ settings"


def test_compose_values_are_accepted_by_settings(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("METRIFY_"):
            monkeypatch.delenv(name)
    env = environment_of(metrify_roles(compose)["api"])
    for name, value in env.items():
        if name.startswith("METRIFY_"):
            monkeypatch.setenv(name, interpolate(value))
    settings = load_settings()  # raises SettingsError naming the variable on a bad value
    assert settings.profile == "production"
    assert settings.kafka.bootstrap == "kafka:9092"
    assert settings.resolved_database_url.startswith("postgresql")


def test_celery_roles_run_the_celery_app_and_the_rest_run_metrify(compose: dict) -> None:
    for name, service in metrify_roles(compose).items():
        if name.startswith("celery"):
            assert service["entrypoint"][:3] == ["celery", "-A", "metrify.entrypoints.celery_app"], name
        else:
            assert "entrypoint" not in service, f"{name} should use the image's `metrify` entrypoint"
    assert compose["services"]["migrate"]["command"] == ["db", "upgrade"]
    assert compose["services"]["migrate"]["restart"] == "no"


def test_the_celery_app_the_roles_name_exists_and_beat_has_jobs(compose: dict) -> None:
    import importlib

    apps = {s["entrypoint"][2] for name, s in metrify_roles(compose).items() if name.startswith("celery")}
    for module_name in apps:
        module = importlib.import_module(module_name)
        assert callable(module.create_celery), module_name  # what `app` is built with
        app = module.create_celery(Settings(database_url="sqlite://", redis_url="redis://127.0.0.1:1/0"))
        assert app.conf.beat_schedule, module_name
        assert {entry["task"] for entry in app.conf.beat_schedule.values()} <= set(app.tasks)


def test_kafka_is_kraft_and_the_database_is_timescale(compose: dict) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert compose["services"]["timescaledb"]["image"].startswith("timescale/timescaledb:")


def test_dockerfile_one_image_non_root_metrify_entrypoint() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2, "multi-stage build expected"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, flags=re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["metrify"\]$', text, flags=re.MULTILINE)
    assert set(metrify_variables({"env": re.findall(r"\b(METRIFY_[A-Z0-9_]+)=", text)})) <= setting_variable_names()
