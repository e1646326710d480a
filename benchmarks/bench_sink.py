"""How fast the stream sink writes readings: N ReadingAccepted events in batches, each batch one
SqlAlchemyStreamUnitOfWork commit (with its partition state row), into a fresh SQLite file and,
when METRIFY_DATABASE_URL names a PostgreSQL server, into a fresh database on it. On PostgreSQL a
plain executemany of the same rows is timed as the yardstick, the sink's own unit of work (commits
that do not wait for the WAL flush) beside the replay's, and, when the server runs on this machine
and may read its files, the server's own floor: the same rows copied by the server from files,
with no client at all.

    python benchmarks/bench_sink.py [--rows 200000] [--batch 10000] [--meters 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import sqlalchemy as sa  # noqa: E402
from _machine import cpu_model  # noqa: E402

from metrify.adapters.sqlalchemy import migrations  # noqa: E402
from metrify.adapters.sqlalchemy.engine import (  # noqa: E402
    SqliteCheckpointer,
    create_engine_for,
    mask_url,
    normalise_url,
)
from metrify.adapters.sqlalchemy.sink import READINGS, PostgresWriter, _driver  # noqa: E402
from metrify.adapters.sqlalchemy.sink_offsets import SqlAlchemySinkUnitOfWork  # noqa: E402
from metrify.adapters.sqlalchemy.tables import readings as readings_table  # noqa: E402
from metrify.adapters.sqlalchemy.unit_of_work import SqlAlchemyStreamUnitOfWork  # noqa: E402
from metrify.application.kafka_stream import FeedBatch, FeedMessage, OutcomeSink  # noqa: E402
from metrify.domain.stream.events import ReadingAccepted  # noqa: E402

US = 1_000_000
T0 = 1_709_589_600 * US
INTERVAL = 1800 * US


def make_events(rows: int, meters: int, extras: bool) -> list[ReadingAccepted]:
    """Readings as a fleet sends them: every meter once per interval, interval after interval."""
    names = [f"MTR-{i:06d}" for i in range(meters)]
    out = []
    for n in range(rows):
        step, meter = divmod(n, meters)
        slot = T0 + step * INTERVAL
        extra = {"voltage": 230.0 + n % 7, "current": 4.2, "power_kw": 0.97, "region": "north"} if extras else None
        out.append(ReadingAccepted(names[meter], slot + (n % 5) * US, slot, (n % 1000) / 400, "ON_TIME", 0, extra))
    return out


class Stopwatch:
    """Wall time, and CPU time of this process plus (PostgreSQL on this machine) of the server
    backends serving the engine: rows per CPU-second is what the code costs, whatever else
    competes for the CPUs; rows per wall-second is what this run got."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def server_cpu(self) -> float:
        if self.engine.dialect.name != "postgresql":
            return 0.0
        with self.engine.connect() as connection:
            pids = connection.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            ).scalars()
            total = 0
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:  # the server runs elsewhere, or the backend is gone
                    continue
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def run(self, label: str, rows: int, action: Callable[[], None]) -> None:
        server, client, wall = self.server_cpu(), time.process_time(), time.perf_counter()
        action()
        wall = time.perf_counter() - wall
        client = time.process_time() - client
        server = self.server_cpu() - server
        cpu = client + server
        print(
            f"  {label:<50} {rows:>9,} rows {wall:6.2f} s {rows / wall:>9,.0f} rows/s | "
            f"CPU {client:5.2f} + {server:5.2f} s {rows / cpu:>9,.0f} rows/CPU-s",
            flush=True,
        )


def write_all(
    engine: sa.Engine,
    events: list[ReadingAccepted],
    batch: int,
    unit_of_work: type[SqlAlchemyStreamUnitOfWork] = SqlAlchemyStreamUnitOfWork,
) -> None:
    for offset in range(0, len(events), batch):
        with unit_of_work(engine) as uow:
            uow.outcomes.add_events(events[offset : offset + batch])
            uow.state.save("bench", 0, events[min(len(events), offset + batch) - 1].timestamp, offset + batch, {})
            uow.commit()


SOURCE = ("readings", 0)


class MemoryFeed:
    """The sink's feed with the stream's outputs already in memory: messages of 500 readings on
    one output partition, as the workers write them; `poll` hands out the next ones."""

    def __init__(self, events: list[ReadingAccepted], per_message: int = 500) -> None:
        self.messages = [
            FeedMessage(SOURCE, n, events[start : start + per_message])
            for n, start in enumerate(range(0, len(events), per_message))
        ]
        self.position = 0

    def start(self, listener: Any) -> None:
        listener.sources_assigned([SOURCE])

    def poll(self, max_messages: int, timeout: float) -> FeedBatch:
        chunk = self.messages[self.position : self.position + max_messages]
        self.position += len(chunk)
        return FeedBatch(chunk, {})

    def rewind(self, source: Any, offset: int | None) -> None:
        self.position = offset or 0

    def acknowledge(self, offsets: Any) -> None:
        """Nothing to tell: no broker behind this feed."""

    def lag(self) -> dict[Any, int]:
        return {SOURCE: len(self.messages) - self.position}

    def close(self) -> None:
        """Nothing to close."""


def sink_loop(engine: sa.Engine, events: list[ReadingAccepted], batch: int, write_behind: bool) -> None:
    """`metrify sink`'s loop (OutcomeSink) over the feed in memory, `batch` readings per
    transaction, with the switch interval its entrypoint sets for write-behind."""
    interval = sys.getswitchinterval()
    if write_behind:
        sys.setswitchinterval(0.0005)
    try:
        sink = OutcomeSink(
            MemoryFeed(events),
            lambda: SqlAlchemySinkUnitOfWork(engine),
            "bench",
            max_batch=max(1, batch // 500),
            max_wait=0.0,
            write_behind=write_behind,
        )
        totals = sink.run(stop_when_idle=0.0)
    finally:
        sys.setswitchinterval(interval)
    assert totals.records == len(events), totals


def count(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(readings_table)).scalar_one())


def truncate(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("TRUNCATE readings, stream_partitions, sink_offsets"))
        else:
            connection.execute(sa.text("DELETE FROM readings"))
            connection.execute(sa.text("DELETE FROM stream_partitions"))
            connection.execute(sa.text("DELETE FROM sink_offsets"))


def bench_store(url: str, events: list[ReadingAccepted], batch: int, yardstick: bool) -> None:
    migrations.upgrade(url)
    engine = create_engine_for(url)
    watch = Stopwatch(engine)
    # as `metrify replay` runs it: the write-ahead log copied back by a thread of its own
    checkpointer = SqliteCheckpointer.start_for(engine)
    try:
        watch.run(f"unit of work, batches of {batch:,}", len(events), lambda: write_all(engine, events, batch))
        assert count(engine) == len(events)
        watch.run(
            "the same again (all conflicts, nothing changes)", len(events), lambda: write_all(engine, events, batch)
        )
        assert count(engine) == len(events)
        if engine.dialect.name == "postgresql":
            # what `metrify sink` commits with: the same writer, but commits that do not wait for
            # the WAL flush (its input stays in Kafka; see SqlAlchemySinkUnitOfWork)
            truncate(engine)
            watch.run(
                "sink unit of work (synchronous_commit off)",
                len(events),
                lambda: write_all(engine, events, batch, SqlAlchemySinkUnitOfWork),
            )
            assert count(engine) == len(events)
            # the whole sink loop, as `metrify sink` runs it (write-behind), and writing in its thread
            loops = (("sink loop, write-behind (metrify sink)", True), ("sink loop, writing in its thread", False))
            for label, write_behind in loops:
                truncate(engine)
                watch.run(label, len(events), lambda behind=write_behind: sink_loop(engine, events, batch, behind))
                assert count(engine) == len(events)
        if yardstick:
            postgres_yardstick(engine, watch, events, batch)
            server_floor(engine, watch, events, batch)
    finally:
        if checkpointer is not None:
            checkpointer.stop()
        engine.dispose()


def postgres_yardstick(engine: sa.Engine, watch: Stopwatch, events: list[ReadingAccepted], batch: int) -> None:
    """The same rows through psycopg's executemany (pipelined INSERT ... ON CONFLICT), and through
    SQLAlchemy Core's executemany (insertmanyvalues), each batch one transaction."""
    rows = [r[:6] + (None,) * 6 for r in events]
    sql = READINGS.sql("%s")

    def psycopg_executemany() -> None:
        for offset in range(0, len(rows), batch):
            with engine.begin() as connection:
                driver = connection.connection.driver_connection
                assert driver is not None
                with driver.cursor() as cursor:
                    cursor.executemany(sql, rows[offset : offset + batch])

    names = [c.name for c in readings_table.columns]
    dicts = [dict(zip(names, row, strict=True)) for row in rows]

    def core_insert() -> None:
        for offset in range(0, len(dicts), batch):
            with engine.begin() as connection:
                connection.execute(readings_table.insert(), dicts[offset : offset + batch])

    truncate(engine)
    watch.run("yardstick: psycopg executemany INSERT..ON CONFLICT", len(rows), psycopg_executemany)
    assert count(engine) == len(rows)
    truncate(engine)
    watch.run("yardstick: SQLAlchemy Core insert(), list of dicts", len(rows), core_insert)
    assert count(engine) == len(rows)


def server_floor(engine: sa.Engine, watch: Stopwatch, events: list[ReadingAccepted], batch: int) -> None:
    """The server's own pace, no client at all: the same rows (each batch sorted by meter, as the
    sink sorts them) in files of COPY's binary format that the server copies itself (`COPY readings FROM 'file'`),
    each batch one transaction. No client can make the server go faster than this. Needs the
    server on this machine and a role that may read its files (superuser or pg_read_server_files)."""
    with engine.connect() as connection:
        local = connection.execute(sa.text("SELECT inet_server_addr() <<= '127.0.0.0/8'::inet")).scalar_one()
        allowed = connection.execute(
            sa.text(
                "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_server_files', 'MEMBER') "
                "FROM pg_roles WHERE rolname = current_user"
            )
        ).scalar_one()
    if not (local and allowed):
        print("  the server's own floor: skipped (the server is not on this machine, or may not read files)")
        return
    from psycopg.copy import Copy, FileWriter

    columns = [c.name for c in readings_table.columns][:6]
    types = PostgresWriter().types[READINGS][:6]
    with tempfile.TemporaryDirectory() as folder, engine.connect() as connection:
        os.chmod(folder, 0o755)  # the server runs as another OS user
        cursor = _driver(connection).cursor()
        files = []
        for offset in range(0, len(events), batch):
            path = Path(folder) / f"batch-{offset // batch:06d}.pgcopy"
            with path.open("wb") as handle:  # COPY's binary format, as the sink sends it
                with Copy(cursor, binary=True, writer=FileWriter(handle)) as copy:
                    copy.set_types(types)
                    for row in sorted((e[:6] for e in events[offset : offset + batch]), key=lambda row: row[0]):
                        copy.write_row(row)
            path.chmod(0o644)
            files.append(path)
        connection.rollback()
        truncate(engine)

        def copy_files() -> None:
            with engine.connect() as connection:
                for path in files:
                    connection.execute(sa.text("SET LOCAL synchronous_commit = off"))
                    # the path is this script's own temp file, not input: a literal is safe here
                    connection.exec_driver_sql(f"COPY readings ({', '.join(columns)}) FROM '{path}' (FORMAT binary)")
                    connection.commit()

        watch.run("the server's own floor: COPY FROM its files", len(events), copy_files)
    assert count(engine) == len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--meters", type=int, default=2_000)
    parser.add_argument("--extras", action="store_true", help="give every reading electrical extras")
    args = parser.parse_args()

    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), Python {platform.python_version()}, "
        f"SQLAlchemy {sa.__version__}"
    )
    print(
        "load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}  (other work on the machine slows every figure)".format(
            *os.getloadavg()
        )
    )
    events = make_events(args.rows, args.meters, args.extras)
    print(f"{args.rows:,} reading events, {args.meters:,} meters, extras: {'yes' if args.extras else 'no'}")

    with tempfile.TemporaryDirectory() as folder:
        import sqlite3

        print(f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL), file in {folder}")
        bench_store(f"sqlite:///{folder}/bench.db", events, args.batch, False)

    server = os.environ.get("METRIFY_DATABASE_URL", "")
    if not server.startswith("postgres"):
        print("PostgreSQL: skipped (METRIFY_DATABASE_URL does not name a PostgreSQL server)")
        return
    name = f"metrify_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine_for(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        version = connection.execute(sa.text("SHOW server_version")).scalar_one()
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = normalise_url(server).set(database=name).render_as_string(hide_password=False)
        print(f"PostgreSQL {version} at {mask_url(url)}")
        bench_store(url, events, args.batch, True)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
