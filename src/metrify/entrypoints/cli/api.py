"""`metrify api`: serve the REST API with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from metrify.entrypoints.cli.app import app, console, state
from metrify.entrypoints.cli.errors import UserError
from metrify.settings import SettingsError


def ensure_schema() -> None:
    """The API works on the newest schema: bring the database up to it (as a replay does)."""
    from metrify.adapters.probes import describe_database_error
    from metrify.adapters.sqlalchemy import migrations

    assert state.settings is not None
    url = state.settings.resolved_database_url
    try:
        if not migrations.is_up_to_date(url):
            migrations.upgrade(url, "head")
    except Exception as exc:
        reason = describe_database_error(exc)
        if reason is None:
            raise
        raise UserError(f"database unreachable: {reason}", 1) from None


@app.command()
def api(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default METRIFY_API__HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to listen on (default METRIFY_API__PORT, 8000).")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes; more than 1 needs Kafka and Redis (METRIFY_KAFKA__BOOTSTRAP, METRIFY_REDIS_URL).",
        ),
    ] = 1,
) -> None:
    """Serve the REST API (OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    settings = state.settings
    assert settings is not None
    if workers > 1 and not settings.kafka.bootstrap:
        raise UserError(
            f"--workers {workers} needs Kafka (METRIFY_KAFKA__BOOTSTRAP): without it this process runs the "
            "stream itself, and the stream state has exactly one writer"
        )
    if workers > 1 and not settings.redis_url:
        raise UserError(
            f"--workers {workers} needs Redis (METRIFY_REDIS_URL): without it each process keeps its own "
            "rate limits and token revocations, and a logout in one would not hold in the others"
        )
    container = state.get_container()
    try:
        container.token_codec()  # the JWT secret: set, or kept in DATA_DIR on the embedded profile
    except SettingsError as exc:
        raise UserError(str(exc)) from None
    ensure_schema()
    host = host or settings.api.host
    port = port or settings.api.port
    console.print(f"metrify API on http://{host}:{port} (docs at /docs), {settings.profile} profile")
    if workers == 1:
        from metrify.entrypoints.api import create_app

        uvicorn.run(create_app(settings, container), host=host, port=port, log_config=None)
    else:
        uvicorn.run(
            "metrify.entrypoints.api:create_app", factory=True, host=host, port=port, workers=workers, log_config=None
        )


from metrify.entrypoints.cli import users as _users  # noqa: E402,F401  (registers `metrify users`)
