"""The `metrify` Typer application: global options, `info` and `db`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

import metrify
from metrify.entrypoints.cli.errors import UserError
from metrify.entrypoints.logs import configure_logging
from metrify.settings import Settings

if TYPE_CHECKING:
    from metrify.container import Container

console = Console()


@dataclass
class AppState:
    settings: Settings | None = None
    container: Container | None = None
    log_file: Path | None = None

    def get_container(self) -> Container:
        if self.container is None:
            from metrify.container import build_container  # heavy: only for commands that use it

            assert self.settings is not None
            self.container = build_container(self.settings)
        return self.container

    def close(self) -> None:
        if self.container is not None:
            self.container.shutdown_resources()
            self.container = None


state = AppState()

app = typer.Typer(
    name="metrify",
    help="Metrify: smart-meter readings checked as they stream (event time, gaps, windows), stored and served.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(
    help="The database: schema (upgrade, downgrade, current revision) and storage (partitions, retention, maintain).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")


def _version(value: bool) -> None:
    if value:
        console.print(f"metrify {metrify.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks of unexpected errors.")] = False,
) -> None:
    settings = state.settings
    assert settings is not None
    level = "DEBUG" if debug else settings.log_level
    state.log_file = configure_logging(level, settings.resolved_log_format, settings.data_dir)


@app.command()
def info() -> None:
    """Show the profile, the adapter behind each port, and whether each service answers."""
    from metrify.adapters.probes import probe_database, probe_kafka, probe_redis, storage_features
    from metrify.adapters.sqlalchemy.engine import mask_url
    from metrify.container import adapter_names

    settings = state.settings
    assert settings is not None
    table = Table(title=f"metrify {metrify.__version__} — {settings.profile} profile", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("data folder", str(settings.data_dir))
    table.add_row("database", mask_url(settings.resolved_database_url))
    for port, adapter in adapter_names(settings).items():
        table.add_row(port, adapter)
    table.add_row("stream partitions", str(settings.stream.partitions))
    table.add_row("database reachable", probe_database(settings.resolved_database_url))
    table.add_row("storage features", storage_features(settings.resolved_database_url))
    table.add_row(
        "kafka reachable",
        probe_kafka(settings.kafka.bootstrap) if settings.kafka.bootstrap else "not configured (in-process bus)",
    )
    table.add_row(
        "redis reachable",
        probe_redis(settings.redis_url) if settings.redis_url else "not configured (in-process cache)",
    )
    console.print(table)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Migrate the database schema up to REVISION (default: the newest)."""
    from metrify.adapters.sqlalchemy import migrations

    url = _database_url()
    _run_migration(lambda: migrations.upgrade(url, revision))
    console.print(f"database at revision {migrations.current(url) or 'base'}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, or -1 for one step.")] = "-1") -> None:
    """Migrate the database schema down to REVISION (default: one step)."""
    from metrify.adapters.sqlalchemy import migrations

    url = _database_url()
    _run_migration(lambda: migrations.downgrade(url, revision))
    console.print(f"database at revision {migrations.current(url) or 'base'}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision."""
    from metrify.adapters.sqlalchemy import migrations

    url = _database_url()
    revision = _run_migration(lambda: migrations.current(url))
    heads = migrations.heads()
    suffix = " (up to date)" if revision in heads else f" (newest is {', '.join(heads)})"
    console.print(f"{revision or 'base (empty database)'}{suffix}")


def _database_url() -> str:
    assert state.settings is not None
    return state.settings.resolved_database_url


def _run_migration(action):  # noqa: ANN001, ANN202
    from metrify.adapters.probes import describe_database_error
    from metrify.application.ports import TransientStoreError

    try:
        return action()
    except Exception as exc:
        if type(exc).__name__ == "CommandError":  # alembic: no such revision, and its kin
            raise UserError(f"cannot migrate: {exc}", 2) from None
        if isinstance(exc, TransientStoreError):  # the server does not answer
            cause = exc.__cause__
            reason = (describe_database_error(cause) if cause is not None else None) or str(exc)
        else:
            reason = describe_database_error(exc)
        if reason is None:
            raise
        raise UserError(f"database unreachable: {reason}", 1) from None


from metrify.entrypoints.cli import api as _api  # noqa: E402,F401  (registers `api` and `users`)
from metrify.entrypoints.cli import db_maintenance as _db_maintenance  # noqa: E402,F401  (db partitions, retention)
from metrify.entrypoints.cli import kafka as _kafka  # noqa: E402,F401  (registers topics, worker, sink)
from metrify.entrypoints.cli import stream as _stream  # noqa: E402,F401  (registers the stream commands)
