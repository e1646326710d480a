"""Alembic environment for Metrify: configured programmatically by
metrify.adapters.sqlalchemy.migrations (no alembic.ini needed), or by an alembic.ini whose
`sqlalchemy.url` (or the METRIFY_DATABASE_URL variable) names the database.

SQLite gets batch mode (render_as_batch), since it cannot ALTER most things in place.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from metrify.adapters.sqlalchemy.engine import create_engine_for
from metrify.adapters.sqlalchemy.tables import metadata

config = context.config
target_metadata = metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("METRIFY_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or METRIFY_DATABASE_URL")
    return url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine_for(_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
