"""Schemathesis against /openapi.json on the embedded profile: generated requests to every operation,
signed in as an ADMIN and with an ingest key; no 5xx, and every response conforms to the document
(status documented, content type, body schema). Bounded: a few examples per operation, no shrinking."""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance
from tests.support.api import Api, api_settings, database_container, running_api

from metrify.adapters.sqlalchemy import migrations
from metrify.domain.readings import Meter
from metrify.domain.users import Role
from metrify.entrypoints.api import create_app
from metrify.settings import ApiSettings, AuthSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = 20
FOLDER = Path(tempfile.mkdtemp(prefix="metrify-schemathesis-"))
# Limits high enough that generated traffic is never rate-limited; bodies small enough to stay quick.
SETTINGS = api_settings(
    FOLDER,
    auth=AuthSettings(
        secret="schemathesis-secret-0123456789abcdef", user_rate_limit=0, ingest_rate_limit=0, login_rate_limit=0
    ),
    api=ApiSettings(max_body_bytes=256 * 1024),
)
migrations.upgrade(SETTINGS.resolved_database_url)  # at collection: loading the schema starts the app
CONTAINER = database_container(SETTINGS)
APP = create_app(SETTINGS, CONTAINER)
# A body over the size limit is refused with 413 Content Too Large: a rejection like any other 4xx.
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
            }
        }
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)
VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")
UNIQUE = itertools.count()


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    CONTAINER.meter_registry().add(Meter("N1", "north"), 0)
    try:
        with running_api(CONTAINER, SETTINGS, meters=("N1",), app=APP) as api:
            api.key = api.ingest_key()  # type: ignore[attr-defined]
            yield api
    finally:
        CONTAINER.shutdown_resources()
        shutil.rmtree(FOLDER, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_and_never_fails_with_5xx(case, api: Api) -> None:  # noqa: ANN001
    path = case.operation.path
    if path == "/api/v1/auth/logout" or path.endswith("/deactivate"):
        # Would revoke the token or lock out the admin the other operations sign in as.
        headers = {"Authorization": f"Bearer {api.sign_in('user@example.com')['access_token']}"}
    else:
        headers = {**api.headers(Role.ADMIN), "X-API-Key": api.key}  # type: ignore[attr-defined]
    # Two things a schema cannot say: whether a cursor is one the API gave out (a made-up one is a 400),
    # and which CSV headers name the columns (any of the names files take, in any order: else a 422).
    made_up_cursor = bool(case.query and "cursor" in case.query)
    excluded = [positive_data_acceptance] if made_up_cursor or case.media_type == "text/csv" else []
    # Nor whether an Idempotency-Key was used before with another body (generated keys repeat: a 422,
    # as the IETF draft on the header has it): a valid generated key is made unique, keeping its form.
    idempotency_key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(idempotency_key, str) and VALID_KEY.fullmatch(idempotency_key):
        case.headers["Idempotency-Key"] = f"{idempotency_key[:200]}-{next(UNIQUE)}"
    case.call_and_validate(headers=headers, excluded_checks=excluded)
