"""The ingest journal in a file of its own: SQLite, written by the stream writer process alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from metrify.adapters.sqlalchemy.engine import SQLITE_WRITER_CHECKPOINT_PAGES, SqliteCheckpointer


class SqliteIngestJournal:
    """Batches kept in a SQLite file beside the database (write-ahead log, synchronous NORMAL: a
    batch appended survives a crash of the process, as the database's own commits do). The highest
    number ever appended is kept apart from the batches, so it survives their dropping."""

    def __init__(self, path: Path, checkpoint_in_thread: bool = False) -> None:
        """With `checkpoint_in_thread`, the log is copied back into the file by a thread of this
        journal, once some 4 MiB were appended since the last copy. SQLite's default copies it
        inside the append that passes 1,000 pages, and that copy ends with an fsync: 15-20 ms on
        this project's test machine, every 40-60 batches of 1,000 readings, inside the append a
        client's answer waits for. (A copy every quarter of a second, as the database's
        checkpointer does, fsynced the journal eight times as often and slowed the database's
        commits beside it: 20 % fewer readings/s.)"""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._appended = 0  # bytes appended since the last copy was asked for
        self._checkpointer: SqliteCheckpointer | None = None
        if checkpoint_in_thread:
            # the append's own copy stays as a safety net, far off (~400 MiB), as the database's
            self._db.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WRITER_CHECKPOINT_PAGES}")
            self._checkpointer = SqliteCheckpointer.start_on(path, interval=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches "
            "(seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, token TEXT NOT NULL, answer TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS high (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL)"
        )
        self._db.execute("INSERT OR IGNORE INTO high VALUES (0, 0)")

    def append(self, seq: int, payload: bytes, token: str = "", answer: str = "") -> None:
        with self._db:  # one transaction: the batch and the high mark
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute("UPDATE high SET seq = ? WHERE id = 0 AND seq < ?", (seq, seq)).rowcount != 1:
                raise ValueError(f"batch {seq} is not after the journal's last ({self.last()})")
            self._db.execute("INSERT INTO batches VALUES (?, ?, ?, ?)", (seq, payload, token, answer))
        if self._checkpointer is not None:
            self._appended += len(payload) + len(answer)
            if self._appended >= _COPY_AFTER_BYTES:
                self._appended = 0
                self._checkpointer.request()

    def after(self, seq: int) -> list[tuple[int, bytes]]:
        rows = self._db.execute("SELECT seq, payload FROM batches WHERE seq > ? ORDER BY seq", (seq,))
        return [(int(number), bytes(payload)) for number, payload in rows]

    def answer_to(self, token: str) -> str | None:
        row = self._db.execute("SELECT answer FROM batches WHERE token = ?", (token,)).fetchone()
        return None if row is None else str(row[0])

    def last(self) -> int:
        return int(self._db.execute("SELECT seq FROM high WHERE id = 0").fetchone()[0])

    def drop_through(self, seq: int) -> None:
        self._db.execute("DELETE FROM batches WHERE seq <= ?", (seq,))

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._db.close()


_COPY_AFTER_BYTES = 4 << 20  # about SQLite's default of 1,000 pages of log
