"""SQLite keeps the meter states a batch changed as ONE row per partition (Alembic 0013).

Every batch saves the state of each meter it changed. As one row per meter (meter_states), a
batch of 1,000 meters was 1,000 upserts, each state encoded on its own; as one row, a batch takes
5-7 % less time and writes 5-7 % fewer pages of log (benchmarks/bench_state_log.py, two pipelines
taking the same batches in turn). So a batch's states go as one row of `meter_state_log`: a JSON
object of meter id -> state, under the partition's next `seq`. A partition's states are then its
meter_states rows with its log rows applied over them in `seq` order.

The log is folded into meter_states as it grows: once a partition's log holds more meter states
than twice its meters in meter_states (at least `least`), its oldest rows go, and each meter
whose newest state is in one of them gets that state in meter_states first. A fleet whose meters
report again before their row is old (the usual case: a batch per interval) writes nothing more
than the log rows; a meter seen for the first time goes straight to meter_states, so that table
names every meter that has a state (the stream summary counts them there).

What the log holds (seqs, the meters of each row, and each meter's newest seq) is kept here per
engine and per partition, read from the database when unknown, and checked against it in every
transaction that writes the partition (its newest seq): a process that finds another wrote the
log meanwhile reads it again. A transaction that fails changes nothing here.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from metrify.adapters.sqlalchemy import tables as t
from metrify.adapters.sqlalchemy.codec import decode_state, encode_state

Row = tuple[Any, ...]
_NEWEST = 'SELECT max(seq) FROM meter_state_log WHERE stream = ? AND "partition" = ?'
_ROW = 'SELECT meters FROM meter_state_log WHERE stream = ? AND "partition" = ? AND seq = ?'


@dataclass(slots=True)
class PartitionLog:
    """What one partition's log holds, as this process last read or committed it."""

    base: set[str] = field(default_factory=set)  # meters with a row in meter_states
    entries: deque[tuple[int, list[str]]] = field(default_factory=deque)  # (seq, meters), oldest first
    newest: dict[str, int] = field(default_factory=dict)  # meter -> seq of the row with its newest state
    held: int = 0  # meter states in the log
    seq: int = 0  # the newest seq (0: none yet)


@dataclass(slots=True)
class LogWrite:
    """A transaction's rows for one partition, and how its log looks once they are committed."""

    key: tuple[str, int]
    base_rows: list[Row]  # meter_states upserts: meters new to it, and those folded
    log_row: Row | None
    deletes: list[Row]  # (stream, partition, seq) of the rows folded
    seq: int
    logged: list[str]
    fresh: list[str]
    folded: list[tuple[int, list[str]]]  # rows folded, with the meters that went to meter_states


class StateLog:
    """The log's bookkeeping for one engine (see the module's docstring)."""

    def __init__(self, least: int = 16_384) -> None:
        self.least = least  # meter states a partition's log may hold whatever its size
        self.partitions: dict[tuple[str, int], PartitionLog] = {}

    def load(self, connection: sa.Connection, stream: str, partition: int) -> dict[str, Any]:
        """A partition's meter states (meter_states, then the log over it), remembering the log."""
        s, g = t.meter_states.c, t.meter_state_log.c
        states = {
            meter_id: decode_state(data)
            for meter_id, data in connection.execute(
                sa.select(s.meter_id, s.data).where(s.stream == stream, s.partition == partition)
            )
        }
        log = PartitionLog(base=set(states))
        for seq, text in connection.execute(
            sa.select(g.seq, g.meters).where(g.stream == stream, g.partition == partition).order_by(g.seq)
        ):
            meters: dict[str, Any] = decode_state(text)
            states.update(meters)
            self._append(log, seq, list(meters))
        self.partitions[(stream, partition)] = log
        return states

    def forget(self) -> None:
        """Read every partition's log again when next written (its tables were emptied)."""
        self.partitions.clear()

    def plan(self, connection: sa.Connection, stream: str, partition: int, meters: Mapping[str, Any]) -> LogWrite:
        """The rows that save these meter states, inside the transaction that writes them."""
        key = (stream, partition)
        log = self.partitions.get(key)
        if log is None or _newest_seq(connection, stream, partition) != log.seq:
            self.load(connection, stream, partition)
            log = self.partitions[key]
        base, newest = log.base, log.newest
        # A meter is new when neither meter_states nor the log holds it. Nearly always none is, and
        # every meter is in meter_states (a meter's first state goes there): looked up in C.
        fresh = [] if base.issuperset(meters) else [m for m in meters if m not in base and m not in newest]
        base_rows: list[Row] = [(stream, partition, m, encode_state(meters[m])) for m in fresh]
        if len(fresh) == len(meters):
            return LogWrite(key, base_rows, None, [], log.seq, [], fresh, [])
        new = set(fresh)  # looked up once per meter of the batch
        logged = {m: data for m, data in meters.items() if m not in new} if fresh else dict(meters)
        seq = log.seq + 1
        held = log.held + len(logged)
        limit = max(self.least, 2 * (len(base) + len(fresh)))
        deletes: list[Row] = []
        folded: list[tuple[int, list[str]]] = []
        for old, old_meters in log.entries:
            if held <= limit:
                break
            live: list[str] = []
            if old in map(newest.get, old_meters):  # (in C) a meter's newest state is in this row
                live = [m for m in old_meters if newest.get(m) == old and m not in logged]
            if live:  # it goes to meter_states first
                text = connection.exec_driver_sql(_ROW, (stream, partition, old)).scalar_one()
                states = decode_state(text)
                base_rows.extend((stream, partition, m, encode_state(states[m])) for m in live)
            deletes.append((stream, partition, old))
            folded.append((old, live))
            held -= len(old_meters)
        log_row = (stream, partition, seq, encode_state(logged))
        return LogWrite(key, base_rows, log_row, deletes, seq, list(logged), fresh, folded)

    def committed(self, writes: Sequence[LogWrite]) -> None:
        """The transaction holding these writes committed: the log is as they made it."""
        for write in writes:
            log = self.partitions[write.key]
            log.base.update(write.fresh)
            for _, live in write.folded:
                _, old_meters = log.entries.popleft()
                log.held -= len(old_meters)
                log.base.update(live)
                for m in live:
                    del log.newest[m]
            if write.log_row is not None:
                self._append(log, write.seq, write.logged)

    @staticmethod
    def _append(log: PartitionLog, seq: int, meters: list[str]) -> None:
        log.newest.update(dict.fromkeys(meters, seq))
        log.entries.append((seq, meters))
        log.held += len(meters)
        log.seq = seq


def _newest_seq(connection: sa.Connection, stream: str, partition: int) -> int:
    return int(connection.exec_driver_sql(_NEWEST, (stream, partition)).scalar() or 0)


_LOGS: weakref.WeakKeyDictionary[sa.Engine, StateLog] = weakref.WeakKeyDictionary()


def forget_state_logs() -> None:
    """Every engine's log read again when next written (the stream's tables were emptied)."""
    for log in list(_LOGS.values()):
        log.forget()


def state_log_for(engine: sa.Engine) -> StateLog | None:
    """The engine's state log (SQLite's; None on PostgreSQL, which keeps meter_states alone)."""
    if engine.dialect.name != "sqlite":
        return None
    log = _LOGS.get(engine)
    if log is None:
        log = _LOGS[engine] = StateLog()
    return log
