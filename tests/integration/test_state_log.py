"""SQLite's meter states as a log (state_log.py, Alembic 0013): one row per partition and batch,
read after meter_states in order and folded into it as it ages. Whatever meters each batch
changes (new ones, ones seen again soon or only after long), a partition loaded afresh holds
every meter's newest state, meter_states names every meter that has one, and the log stays
bounded. Also when another engine (another process) writes the partition in between, and when a
transaction fails."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from metrify.adapters.sqlalchemy import create_engine_for, migrations
from metrify.adapters.sqlalchemy.state_log import state_log_for
from metrify.adapters.sqlalchemy.unit_of_work import SqlAlchemyStreamUnitOfWork
from metrify.application.ports import SourceProgress

pytestmark = pytest.mark.integration


def _save(engine: sa.Engine, partition: int, offset: int, meters: dict[str, Any], fail: bool = False) -> None:
    """Save meter states in one transaction; with `fail`, one that fails at its last write (a
    progress row without its count), after the states' rows went in."""
    with SqlAlchemyStreamUnitOfWork(engine) as uow:
        uow.state.save("main", partition, 1_000 + offset, offset, meters)
        if not fail:
            uow.commit()
            return
        uow.progress.set(SourceProgress("broken", None, False))  # type: ignore[arg-type]
        with pytest.raises(sqlite3.IntegrityError):
            uow.commit()


def _loaded(url: str, partition: int) -> dict[str, Any]:
    """The partition's meter states as a process that starts now loads them."""
    engine = create_engine_for(url)
    try:
        with SqlAlchemyStreamUnitOfWork(engine) as uow:
            state = uow.state.load("main", partition)
        return {} if state is None else dict(state.meters)
    finally:
        engine.dispose()


def _count(engine: sa.Engine, table: str, partition: int) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(f'SELECT count(*) FROM {table} WHERE "partition" = :p'), {"p": partition}
            ).scalar()
        )


def _logged(engine: sa.Engine, partition: int) -> int:
    """Meter states in the partition's log."""
    with engine.connect() as connection:
        sql = sa.text('SELECT meters FROM meter_state_log WHERE "partition" = :p')
        return sum(len(json.loads(text)) for text in connection.execute(sql, {"p": partition}).scalars())


def _state(pick: random.Random, step: int) -> list[Any]:
    """Something shaped like MeterState.to_data(), different at every step; now and then an
    integer beyond 64 bits (orjson cannot write it: the standard library's JSON does)."""
    mask = 2**70 + step if pick.random() < 0.05 else step
    return [1800, step, step + 1, mask, 0, [step, step + 3] if step % 3 else [], [step, 1, 0.1 * step, 0.0, 1.5]]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_meter_loads_at_its_newest_state_however_batches_come(migrated_sqlite_url: str, seed: int) -> None:
    url = migrated_sqlite_url
    engine = create_engine_for(url)
    log = state_log_for(engine)
    assert log is not None
    log.least = 12  # meter states the log may hold: folded after a few batches
    pick = random.Random(seed)
    fleet = [f"M-{i:03d}" for i in range(40)]
    newest: dict[int, dict[str, Any]] = {0: {}, 1: {}}
    try:
        for step in range(1, 121):
            partition = pick.choice((0, 1))
            # a few meters seen again soon, now and then one seen only long after, and new ones
            heard = pick.sample(fleet[: 10 + step // 4], pick.randint(1, 6))
            meters = {m: _state(pick, step) for m in heard}
            if pick.random() < 0.2:  # a batch that fails changes nothing
                _save(engine, partition, step, {m: ["lost"] for m in pick.sample(fleet, 5)}, fail=True)
            _save(engine, partition, step, meters)
            newest[partition].update(meters)
            if step % 10 == 0:
                for p in (0, 1):
                    assert _loaded(url, p) == newest[p]
                    assert _count(engine, "meter_states", p) == len(newest[p])  # every meter named there
                    # folded as it grows: at most twice the meters (at least 12), and the last batch's
                    assert _logged(engine, p) <= max(12, 2 * len(newest[p])) + 6
        assert sum(len(states) for states in newest.values()) > 40  # meters in both partitions
    finally:
        engine.dispose()


def test_a_partition_another_engine_wrote_meanwhile_is_read_again(migrated_sqlite_url: str) -> None:
    """Two processes taking turns (each starts on the other's commits): neither writes over what the
    other logged, nor folds by what it knew before."""
    url = migrated_sqlite_url
    engines = [create_engine_for(url), create_engine_for(url)]
    for engine in engines:
        log = state_log_for(engine)
        assert log is not None
        log.least = 3
    newest: dict[str, Any] = {}
    try:
        for step in range(1, 31):
            meters = {f"M-{(step * 7 + i) % 9}": [step, i] for i in range(3)}
            _save(engines[step % 2], 0, step, meters)
            newest.update(meters)
            assert _loaded(url, 0) == newest
    finally:
        for engine in engines:
            engine.dispose()


def test_the_log_comes_and_goes_with_its_migration(tmp_path: Path) -> None:
    """0013 makes the log; its downgrade folds it into meter_states first: no state is lost."""
    url = f"sqlite:///{tmp_path / 'metrify.db'}"
    migrations.upgrade(url)
    engine = create_engine_for(url)
    try:
        _save(engine, 0, 1, {"A": [1, 10**30], "B": [1, 0.5]})  # new: straight to meter_states
        _save(engine, 0, 2, {"A": [2, 10**30 + 1], "C": [2]})  # A seen again: logged
        _save(engine, 0, 3, {"A": [3, 0.25]})
        assert _count(engine, "meter_state_log", 0) == 2
        migrations.downgrade(url, "0012_readings_by_hour")
        with engine.connect() as connection:
            names = connection.execute(sa.text("SELECT name FROM sqlite_master")).scalars().all()
        assert "meter_state_log" not in names
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT meter_id, data FROM meter_states ORDER BY meter_id")).all()
        assert [(m, json.loads(d)) for m, d in rows] == [("A", [3, 0.25]), ("B", [1, 0.5]), ("C", [2])]
    finally:
        engine.dispose()
