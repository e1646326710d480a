"""The ingest journal in a file of its own: SQLite, written by the stream writer process alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class SqliteIngestJournal:
    """Batches kept in a SQLite file beside the database (write-ahead log, synchronous NORMAL: a
    batch appended survives a crash of the process, as the database's own commits do). The highest
    number ever appended is kept apart from the batches, so it survives their dropping."""

    def __init__(self, path: Path, checkpoint_pages: int = 1000) -> None:
        """`checkpoint_pages`: the log's length at which an append copies it back into the file
        itself (SQLite's 1,000 by default). That copy ends with an fsync: 15-20 ms on this
        project's test machine, every 40-60 batches of 1,000 readings, inside the append that a
        client's answer waits for. A writer with a SqliteCheckpointer on this file gives a high
        mark here, a safety net, as the database's writer does (see engine.py)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint_pages)}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches "
            "(seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, token TEXT NOT NULL, answer TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS high (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL)"
        )
        self._db.execute("INSERT OR IGNORE INTO high VALUES (0, 0)")

    def checkpoint_pages(self) -> int:
        """The log's length at which an append copies it back itself."""
        return int(self._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    def append(self, seq: int, payload: bytes, token: str = "", answer: str = "") -> None:
        with self._db:  # one transaction: the batch and the high mark
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute("UPDATE high SET seq = ? WHERE id = 0 AND seq < ?", (seq, seq)).rowcount != 1:
                raise ValueError(f"batch {seq} is not after the journal's last ({self.last()})")
            self._db.execute("INSERT INTO batches VALUES (?, ?, ?, ?)", (seq, payload, token, answer))

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
        self._db.close()
