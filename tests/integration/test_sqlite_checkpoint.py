"""The background checkpointer of a SQLite file database (adapters/sqlalchemy/engine.py): what a
commit appends to the write-ahead log reaches the database file without the writer copying it."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from metrify.adapters.sqlalchemy.engine import SqliteCheckpointer, create_engine_for


def _rows_in_file_alone(path: Path, copy: Path) -> int:
    """The rows of `filler` that the database file holds by itself, its log left aside."""
    shutil.copyfile(path, copy)
    with sqlite3.connect(copy) as probe:
        found = probe.execute("SELECT count(*) FROM sqlite_master WHERE name = 'filler'").fetchone()[0]
        return probe.execute("SELECT count(*) FROM filler").fetchone()[0] if found else 0


def test_committed_pages_reach_the_database_file_from_the_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "metrify.db"
    engine = create_engine_for(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:  # ~150 pages: far below the writer's own autocheckpoint
            connection.exec_driver_sql("CREATE TABLE filler (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            connection.exec_driver_sql(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500) "
                "INSERT INTO filler (v) SELECT hex(randomblob(200)) FROM n"
            )
        assert _rows_in_file_alone(path, tmp_path / "before.db") == 0  # all of it still in the log

        checkpointer = SqliteCheckpointer.start_for(engine, interval=0.02)
        assert checkpointer is not None
        try:
            deadline = time.monotonic() + 10
            while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            checkpointer.stop()

        assert checkpointer.checkpoints >= 1
        assert _rows_in_file_alone(path, tmp_path / "after.db") == 1500
        with engine.connect() as connection:  # and the writer's view is unchanged
            assert connection.exec_driver_sql("SELECT count(*) FROM filler").scalar() == 1500
    finally:
        engine.dispose()


def test_only_a_sqlite_file_database_gets_a_checkpointer() -> None:
    for url in ("sqlite://", "postgresql+psycopg://metrify:x@127.0.0.1:1/metrify"):
        engine = create_engine_for(url)
        try:
            assert SqliteCheckpointer.start_for(engine) is None
        finally:
            engine.dispose()
