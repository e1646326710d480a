"""Running the Alembic migrations from code, wherever Metrify is installed.

The scripts live in the repository's top-level `alembic/` folder, which the wheel ships as
`metrify/alembic`; Alembic is configured here, so no alembic.ini is needed. Alembic itself is
loaded only to migrate or to read the scripts: a command that only checks that the schema is
current (every replay and export) reads the version table and compares it with `HEAD`, which
saves it a fifth of a second of start-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import URL

from metrify.adapters.sqlalchemy.engine import create_engine_for, normalise_url
from metrify.adapters.sqlalchemy.errors import transient_errors

if TYPE_CHECKING:
    from alembic.config import Config

# The newest revision of the scripts (a test keeps it equal to what Alembic reads in them).
HEAD = "0014_states_behind"


@contextmanager
def script_location() -> Iterator[Path]:
    """The folder holding env.py and versions/: inside the installed package, else the repo's."""
    with ExitStack() as stack:
        try:
            packaged = resources.files("metrify") / "alembic"
            if packaged.is_dir() and (packaged / "env.py").is_file():
                yield stack.enter_context(resources.as_file(packaged))
                return
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
            pass
        repo = Path(__file__).resolve().parents[4] / "alembic"  # src/metrify/adapters/sqlalchemy/ -> repo
        if not (repo / "env.py").is_file():
            raise FileNotFoundError("Metrify's migration scripts are missing (no metrify/alembic, no ./alembic)")
        yield repo


def _config(location: Path, url: str | URL | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(location))
    if url is not None:
        # ConfigParser interpolation: a literal % must be doubled.
        text = normalise_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", text.replace("%", "%%"))
    return config


def _run(url: str | URL, action: str, revision: str) -> None:
    # Creates a SQLite file's folder when missing; one transaction holds the whole migration.
    engine = create_engine_for(url, atomic_ddl=True)
    try:
        with script_location() as location, transient_errors(), engine.begin() as connection:
            from alembic import command

            config = _config(location, url)
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision)
    finally:
        engine.dispose()


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Bring the database's schema up to `revision` (the newest by default)."""
    _run(url, "upgrade", revision)


def downgrade(url: str | URL, revision: str) -> None:
    """Take the schema down to `revision` (`base` removes every table the migrations made)."""
    _run(url, "downgrade", revision)


def current(url: str | URL) -> str | None:
    """The database's schema revision (Alembic's version table), or None when it has never been
    migrated."""
    engine = create_engine_for(url)
    try:
        with transient_errors(), engine.connect() as connection:
            if not sa.inspect(connection).has_table("alembic_version"):
                return None
            versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
            if len(versions) > 1:
                raise RuntimeError(f"the database names several schema revisions: {', '.join(versions)}")
            return versions[0] if versions else None
    finally:
        engine.dispose()


def heads() -> list[str]:
    """The newest revision(s) the scripts define."""
    from alembic.script import ScriptDirectory

    with script_location() as location:
        return list(ScriptDirectory.from_config(_config(location)).get_heads())


def revisions() -> list[str]:
    """Every revision, oldest first."""
    from alembic.script import ScriptDirectory

    with script_location() as location:
        walked = ScriptDirectory.from_config(_config(location)).walk_revisions()
        return [script.revision for script in reversed(list(walked))]


def is_up_to_date(url: str | URL) -> bool:
    return current(url) == HEAD
