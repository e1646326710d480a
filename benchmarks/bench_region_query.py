"""How fast a region's window aggregates read back (GET /api/v1/regions/{region}/aggregates):
SqlAlchemyFleetQueries.region_aggregates on a SQLite database (or METRIFY_DATABASE_URL's, with
--url) holding a fleet's closed windows.

The fleet: `--meters` meters in `--regions` regions, `--days` days of 30-minute readings, so each
meter has a 15m window every other quarter hour, a 1h window every hour and a 1d window every
day (the aggregates table `metrify replay` leaves behind), stored interval after interval as
they close. Three kinds of page, `--queries` each,
of `--limit` windows of a random region and size: the first page with no time range, the page
after a random cursor (no range), and one day's windows. Prints p50/p99 per kind; then the same
for one random meter's page of windows (GET /api/v1/meters/{id}/aggregates), which SQLite, keyed
window first (Alembic 0011), looks up window start by window start.

With --old it times the query as it was before Alembic 0007 instead, a plain GROUP BY over the
join of meters and aggregates, on the index by (window_us, window_start) that 0007 dropped on
SQLite (created again for the run there): the yardstick the new query is measured against.

    python benchmarks/bench_region_query.py [--meters 1500] [--regions 4] [--days 30] [--queries 50]
                                            [--limit 100] [--old] [--url URL]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import sqlalchemy as sa  # noqa: E402
from _figures import percentile  # noqa: E402
from _machine import cpu_model, load_average  # noqa: E402

from metrify.adapters.sqlalchemy import migrations  # noqa: E402
from metrify.adapters.sqlalchemy import tables as t  # noqa: E402
from metrify.adapters.sqlalchemy.api_queries import SqlAlchemyFleetQueries  # noqa: E402
from metrify.adapters.sqlalchemy.engine import create_engine_for  # noqa: E402
from metrify.application.queries import TimeRange  # noqa: E402

US = 1_000_000
T0 = 1_709_251_200 * US  # 2024-03-01T00:00:00Z
SIZES = (900 * US, 3600 * US, 86400 * US)
OLD_INDEX = "ix_aggregates_window_us_window_start"


def fill(engine: sa.Engine, meters: int, regions: int, days: int) -> int:
    """The fleet's meters and closed windows, stored day by day as a fleet's arrive (each day's
    windows of every meter together, not one meter's history after another); the number of
    aggregate rows."""
    names = [f"MTR-{m:06d}" for m in range(meters)]
    columns = [c.name for c in t.aggregates.columns]
    with engine.begin() as connection:
        connection.execute(
            t.meters.insert(),
            [{"meter_id": n, "region": f"REGION-{m % regions + 1}", "created_at": 0} for m, n in enumerate(names)],
        )
    rows = 0
    for day in range(days):
        start = T0 + day * 86400 * US
        batch = []
        for slot in range(48):
            at = start + slot * 1800 * US
            for meter_id in names:
                batch.append((meter_id, 900 * US, at, 1, 0.5, 0.5, 0.5))
                if slot % 2:
                    batch.append((meter_id, 3600 * US, at - 1800 * US, 2, 1.0, 0.4, 0.6))
        batch += [(meter_id, 86400 * US, start, 48, 24.0, 0.1, 0.9) for meter_id in names]
        with engine.begin() as connection:
            connection.execute(t.aggregates.insert(), [dict(zip(columns, row, strict=True)) for row in batch])
        rows += len(batch)
    return rows


def old_query(engine: sa.Engine) -> Callable[[str, int, TimeRange, int | None, int], list]:
    """The query before Alembic 0007: a plain GROUP BY over the join, on the index by window."""
    a, m = t.aggregates.c, t.meters.c

    def run(region: str, window: int, when: TimeRange, after: int | None, limit: int) -> list:
        stmt = (
            sa.select(a.window_start, sa.func.count(), sa.func.sum(a.count), sa.func.sum(a.sum_kwh))
            .select_from(t.aggregates.join(t.meters, a.meter_id == m.meter_id))
            .where(m.region == region, a.window_us == window)
        )
        if when.start is not None:
            stmt = stmt.where(a.window_start >= when.start)
        if when.end is not None:
            stmt = stmt.where(a.window_start < when.end)
        if after is not None:
            stmt = stmt.where(a.window_start > after)
        stmt = stmt.group_by(a.window_start).order_by(a.window_start).limit(limit)
        with engine.connect() as connection:
            return list(connection.execute(stmt))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meters", type=int, default=1500)
    parser.add_argument("--regions", type=int, default=4)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--queries", type=int, default=50, help="pages of each kind")
    parser.add_argument("--limit", type=int, default=100, help="windows per page")
    parser.add_argument("--old", action="store_true", help="time the query before Alembic 0007 (see above)")
    parser.add_argument("--url", help="a database to fill (emptied of meters and aggregates first); default SQLite")
    args = parser.parse_args()

    print(f"CPU: {cpu_model()}, Python {platform.python_version()}; load average {load_average()}")
    with tempfile.TemporaryDirectory(prefix="metrify-bench-region-") as folder:
        url = args.url or f"sqlite:///{folder}/metrify.db"
        migrations.upgrade(url)
        engine = create_engine_for(url)
        with engine.begin() as connection:
            connection.execute(t.aggregates.delete())
            connection.execute(t.meters.delete())
        started = time.perf_counter()
        rows = fill(engine, args.meters, args.regions, args.days)
        print(
            f"{args.meters:,} meters in {args.regions} regions, {args.days} days: {rows:,} aggregate rows "
            f"({time.perf_counter() - started:.1f} s to fill); pages of {args.limit} windows"
        )
        with engine.connect() as connection:
            had_index = OLD_INDEX in {i["name"] for i in sa.inspect(connection).get_indexes("aggregates")}
        print(f"index by window: {'yes' if had_index else 'no'} (Alembic 0007 keeps it on PostgreSQL only)")
        if args.old:
            if not had_index:
                with engine.begin() as connection:
                    connection.exec_driver_sql(f"CREATE INDEX {OLD_INDEX} ON aggregates (window_us, window_start)")
            fetch = old_query(engine)
            print("query: before Alembic 0007 (GROUP BY over the join, index by window)")
        else:
            fetch = SqlAlchemyFleetQueries(engine).region_aggregates
            print("query: region_aggregates (windows in order of their start, each kept if its meter is in the region)")
        if engine.dialect.name == "postgresql":
            with engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE meters")
                connection.exec_driver_sql("ANALYZE aggregates")
        rng = random.Random(7)
        span = args.days * 86400 * US
        kinds: dict[str, Callable[[], tuple[str, int, TimeRange, int | None]]] = {
            "first page, no range": lambda: (region(), rng.choice(SIZES), TimeRange(), None),
            "after a cursor, no range": lambda: (region(), rng.choice(SIZES), TimeRange(), T0 + rng.randrange(span)),
            "one day": lambda: (region(), rng.choice(SIZES[:2]), day(), None),
        }

        def report(kind: str, took: list[float], found: int) -> None:
            p50, p99 = statistics.median(took) * 1000, percentile(took, 0.99) * 1000
            average = found / args.queries
            print(f"  {kind}: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({average:.0f} windows a page on average)")

        def region() -> str:
            return f"REGION-{rng.randrange(args.regions) + 1}"

        def day() -> TimeRange:
            start = T0 + rng.randrange(args.days) * 86400 * US
            return TimeRange(start, start + 86400 * US)

        try:
            for kind, pick in kinds.items():
                took, found = [], 0
                for _ in range(args.queries):
                    name, size, when, after = pick()
                    begun = time.perf_counter()
                    found += len(fetch(name, size, when, after, args.limit))
                    took.append(time.perf_counter() - begun)
                report(kind, took, found)
            if not args.old:
                meter_page = SqlAlchemyFleetQueries(engine).aggregates
                for kind, pick in kinds.items():
                    took, found = [], 0
                    for _ in range(args.queries):
                        _, size, when, after = pick()
                        meter = f"MTR-{rng.randrange(args.meters):06d}"
                        begun = time.perf_counter()
                        found += len(meter_page(meter, size, when, after, args.limit))
                        took.append(time.perf_counter() - begun)
                    report(f"one meter's page, {kind}", took, found)
        finally:
            if args.url:
                with engine.begin() as connection:
                    connection.execute(t.aggregates.delete())
                    connection.execute(t.meters.delete())
                    if args.old and not had_index:
                        connection.exec_driver_sql(f"DROP INDEX IF EXISTS {OLD_INDEX}")
            engine.dispose()


if __name__ == "__main__":
    main()
