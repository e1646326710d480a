"""How fast the stream sink writes readings: N ReadingAccepted events in batches, each batch one
SqlAlchemyStreamUnitOfWork commit (with its partition state row), into a fresh SQLite file and,
when METRIFY_DATABASE_URL names a PostgreSQL server, into a fresh database on it. On PostgreSQL a
plain executemany of the same rows is timed as the yardstick.

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import sqlalchemy as sa  # noqa: E402

from metrify.adapters.sqlalchemy import migrations  # noqa: E402
from metrify.adapters.sqlalchemy.engine import create_engine_for, mask_url, normalise_url  # noqa: E402
from metrify.adapters.sqlalchemy.sink import READINGS  # noqa: E402
from metrify.adapters.sqlalchemy.tables import readings as readings_table  # noqa: E402
from metrify.adapters.sqlalchemy.unit_of_work import SqlAlchemyStreamUnitOfWork  # noqa: E402
from metrify.domain.stream.events import ReadingAccepted  # noqa: E402

US = 1_000_000
T0 = 1_709_589_600 * US
INTERVAL = 1800 * US


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def write_all(engine: sa.Engine, events: list[ReadingAccepted], batch: int) -> float:
    started = time.perf_counter()
    for offset in range(0, len(events), batch):
        with SqlAlchemyStreamUnitOfWork(engine) as uow:
            uow.outcomes.add_events(events[offset : offset + batch])
            uow.state.save("bench", 0, events[min(len(events), offset + batch) - 1].timestamp, offset + batch, {})
            uow.commit()
    return time.perf_counter() - started


def count(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(readings_table)).scalar_one())


def truncate(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("TRUNCATE readings, stream_partitions"))
        else:
            connection.execute(sa.text("DELETE FROM readings"))
            connection.execute(sa.text("DELETE FROM stream_partitions"))


def report(label: str, rows: int, seconds: float) -> None:
    print(f"  {label:<48} {rows:>9,} rows  {seconds:7.2f} s  {rows / seconds:>10,.0f} rows/s", flush=True)


def bench_store(url: str, events: list[ReadingAccepted], batch: int, yardstick: Callable[..., None] | None) -> None:
    migrations.upgrade(url)
    engine = create_engine_for(url)
    try:
        seconds = write_all(engine, events, batch)
        assert count(engine) == len(events)
        report(f"unit of work, batches of {batch:,}", len(events), seconds)
        seconds = write_all(engine, events, batch)
        assert count(engine) == len(events)
        report("the same again (all conflicts, nothing changes)", len(events), seconds)
        if yardstick is not None:
            yardstick(engine, events, batch)
    finally:
        engine.dispose()


def postgres_yardstick(engine: sa.Engine, events: list[ReadingAccepted], batch: int) -> None:
    """The same rows through psycopg's executemany (pipelined INSERT ... ON CONFLICT), and through
    SQLAlchemy Core's executemany (insertmanyvalues), each batch one transaction."""
    rows = [r[:6] + (None,) * 6 for r in events]
    truncate(engine)
    sql = READINGS.sql("%s")
    started = time.perf_counter()
    for offset in range(0, len(rows), batch):
        with engine.begin() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            with driver.cursor() as cursor:
                cursor.executemany(sql, rows[offset : offset + batch])
    report("yardstick: psycopg executemany INSERT..ON CONFLICT", len(rows), time.perf_counter() - started)
    assert count(engine) == len(rows)
    truncate(engine)
    names = [c.name for c in readings_table.columns]
    dicts = [dict(zip(names, row, strict=True)) for row in rows]
    started = time.perf_counter()
    for offset in range(0, len(dicts), batch):
        with engine.begin() as connection:
            connection.execute(readings_table.insert(), dicts[offset : offset + batch])
    report("yardstick: SQLAlchemy Core insert(), list of dicts", len(rows), time.perf_counter() - started)
    assert count(engine) == len(rows)


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
        bench_store(f"sqlite:///{folder}/bench.db", events, args.batch, None)

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
        bench_store(url, events, args.batch, postgres_yardstick)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
