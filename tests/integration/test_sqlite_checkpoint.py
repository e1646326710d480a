"""The background checkpointer of a SQLite file database (adapters/sqlalchemy/engine.py): what a
commit appends to the write-ahead log reaches the database file without the writer copying it."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from metrify.adapters.files.journal import SqliteIngestJournal
from metrify.adapters.sqlalchemy.engine import SqliteCheckpointer, create_engine_for
from metrify.container import build_container
from metrify.settings import Settings


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


def test_the_ingest_journals_log_is_copied_back_by_its_thread_not_inside_an_append(tmp_path: Path) -> None:
    """An append that copied the log back itself (SQLite's default past 1,000 pages) waited for an
    fsync inside the stream writer's answer: 15-20 ms every 40-60 batches, the p99 of ingest."""
    over_a_thousand_pages = os.urandom(4_150_000)  # past SQLite's 1,000 pages, short of 4 MiB
    plain = SqliteIngestJournal(tmp_path / "plain")
    try:
        plain.append(1, over_a_thousand_pages, "token", "{}")
        assert _journal_batches_in_file_alone(plain.path, tmp_path / "copy") == 1, "SQLite's default copies it"
    finally:
        plain.close()

    journal = SqliteIngestJournal(tmp_path / "journal", checkpoint_in_thread=True)
    try:
        journal.append(1, over_a_thousand_pages, "token-1", "{}")
        assert _journal_batches_in_file_alone(journal.path, tmp_path / "copy") == 0, "the append must not copy it"
        journal.append(2, os.urandom(200_000), "token-2", "{}")  # 4 MiB appended: the thread is asked
        deadline = time.monotonic() + 10
        while _journal_batches_in_file_alone(journal.path, tmp_path / "copy") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _journal_batches_in_file_alone(journal.path, tmp_path / "copy") == 2, "its thread must copy it"
        assert [seq for seq, _ in journal.after(0)] == [1, 2]
    finally:
        journal.close()


def test_the_stream_writers_journal_copies_its_log_from_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("METRIFY_"):
            monkeypatch.delenv(name)
    container = build_container(Settings(data_dir=tmp_path))
    try:
        journal = container.ingest_journal()
        journal.append(1, os.urandom(4_150_000), "token", "{}")
        assert _journal_batches_in_file_alone(journal.path, tmp_path / "copy") == 0
    finally:
        container.shutdown_resources()


def _journal_batches_in_file_alone(path: Path, copy: Path) -> int:
    shutil.copyfile(path, copy)
    with sqlite3.connect(copy) as probe:
        found = probe.execute("SELECT count(*) FROM sqlite_master WHERE name = 'batches'").fetchone()[0]
        return probe.execute("SELECT count(*) FROM batches").fetchone()[0] if found else 0
