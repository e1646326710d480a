"""Engines for the two profiles: a SQLite file (embedded) and PostgreSQL through psycopg 3."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_WRITER_CHECKPOINT_PAGES = 100_000  # the writer's own checkpoint: a safety net (see below)
SQLITE_TEMP_STORE = "MEMORY"  # temporary tables and sorts: small, but for an export's sort (queries.py)


def normalise_url(url: str | URL) -> URL:
    """`postgresql://` and `postgres://` mean psycopg 3 here (SQLAlchemy would pick psycopg2)."""
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by ***, fit for logs and error messages."""
    try:
        return normalise_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL is shown without anything after '@'
        text = str(url)
        return text.split("@", 1)[-1] if "@" in text else text


def sqlite_path(url: str | URL) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database or another backend."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA temp_store = {SQLITE_TEMP_STORE}")
        # 64 MiB of page cache (the default is 2 MiB): inserts land all over the readings index.
        cursor.execute("PRAGMA cache_size = -65536")
        # The writer copies the log back itself only past ~400 MiB: SqliteCheckpointer does it from
        # a thread of its own. At 40 MiB a replay's 50,000-row transactions (12-45 MiB of pages
        # each) passed the mark every other commit, which then copied the log inside the commit:
        # 150-250 ms each, half a second of a one-process replay's 8.5-9 s.
        cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WRITER_CHECKPOINT_PAGES}")
    finally:
        cursor.close()


def _sqlite_driver_autocommit(dbapi_connection: Any, _record: Any) -> None:
    # Python's sqlite3 opens a transaction only before INSERT/UPDATE/DELETE and runs DDL in
    # autocommit; taking over BEGIN makes CREATE TABLE part of the transaction too.
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def create_engine_for(url: str | URL, *, atomic_ddl: bool = False, **kwargs: Any) -> Engine:
    """An engine with connection liveness checks; SQLite gets WAL, synchronous=NORMAL, foreign
    keys and a busy timeout on every connection, and its folder is created when missing.

    `atomic_ddl` makes SQLite's schema changes transactional as PostgreSQL's are: a migration
    killed half-way then leaves the schema as it was, not with tables Alembic never recorded."""
    parsed = normalise_url(url)
    options: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    options.update(kwargs)
    engine = sa.create_engine(parsed, **options)
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        if atomic_ddl:
            sa.event.listen(engine, "connect", _sqlite_driver_autocommit)
            sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


class SqliteCheckpointer:
    """Copies a SQLite database's write-ahead log back into the database file from a thread of its
    own, so that the process that writes never does it inside a commit.

    In WAL mode every commit appends pages to the log; by default the committing connection itself
    copies them back once the log passes `wal_autocheckpoint` pages (4 MiB by default, ~400 MiB
    here). That copy took a few hundred ms each time: a fifth of a replay's time, and the p99 of
    API ingest. Here a PASSIVE checkpoint runs every `interval` seconds on a separate connection
    (sqlite3 lets go of the GIL while SQLite works, so it runs beside the writer); once it has
    copied the whole log, the next write starts the log again from its beginning. The writer's own
    autocheckpoint stays as the safety net when this thread falls behind. A PASSIVE checkpoint
    never waits for a lock and never blocks a reader or writer. With `interval` None it runs only
    when asked (`request`): the ingest journal asks once some MiB were appended (see journal.py)."""

    def __init__(self, path: Path, interval: float | None = 0.25) -> None:
        self.path = path
        self.interval = interval
        self._wake = threading.Event()  # set by `request` and by `stop`
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="metrify-sqlite-checkpoint", daemon=True)
        self.checkpoints = 0  # runs that copied at least one page

    @classmethod
    def start_for(cls, engine: Engine, interval: float = 0.25) -> SqliteCheckpointer | None:
        """A running checkpointer for a SQLite file database's engine; None for any other."""
        path = sqlite_path(engine.url)  # None for another backend or an in-memory database
        if path is None:
            return None
        return cls.start_on(path, interval)

    @classmethod
    def start_on(cls, path: Path, interval: float | None = 0.25) -> SqliteCheckpointer:
        """A running checkpointer for the SQLite file at `path`."""
        checkpointer = cls(path, interval)
        checkpointer._thread.start()
        return checkpointer

    def request(self) -> None:
        """Run a checkpoint soon (the way to run one when there is no `interval`)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def run_once(self, connection: sqlite3.Connection) -> int:
        """One PASSIVE checkpoint; the number of log pages it copied back."""
        busy, logged, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy or logged <= 0:
            return 0
        return int(copied)

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait(self.interval)
                self._wake.clear()
                if self._stopping:
                    return
                if connection is None:
                    if not self.path.exists():
                        continue
                    # no busy wait: a PASSIVE checkpoint that meets a lock simply tries next time
                    connection = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
                try:
                    if self.run_once(connection) > 0:
                        self.checkpoints += 1
                except sqlite3.Error:
                    continue  # a locked or briefly unreadable file: the next round tries again
        finally:
            if connection is not None:
                connection.close()
