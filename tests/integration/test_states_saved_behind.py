"""Meter states saved every few batches by the API's stream writer (METRIFY_API__STATE_SAVE_BATCHES,
application/journaled.py, Alembic 0014), on SQLite and PostgreSQL: the headers say where the states
stand, a writer killed between two saves is caught up from its journal file, and what the store
ends with is what saving them with each batch gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.util import CommandError
from tests.support.core_runner import FixedClock

from metrify.adapters.files.journal import SqliteIngestJournal
from metrify.adapters.memory.stream_store import InMemoryStreamStore, InMemoryStreamUnitOfWork
from metrify.adapters.sqlalchemy import create_engine_for, migrations, tables
from metrify.adapters.sqlalchemy.unit_of_work import SqlAlchemyStreamUnitOfWork
from metrify.application.journaled import JournaledWriter
from metrify.application.network import NetworkProfile, through_network
from metrify.application.serial import attribute, outcome_codes
from metrify.application.simulator import FleetProfile, fleet_rows
from metrify.application.stream import StreamPipeline, StreamStatesBehind
from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig
from metrify.entrypoints.stream_writer import decode_batch, encode_batch

NOW = 2_000_000_000 * 1_000_000
PARTITIONS = 3


def batches() -> list[list[RawReading]]:
    fleet = [RawReading(*row) for row in fleet_rows(FleetProfile(meters=20, days=2, seed=5))]
    data = list(through_network(fleet, NetworkProfile(delay_prob=0.2, max_delay=3000, seed=6)))
    data[40:40] = data[20:25]  # sent twice
    return [data[start : start + 60] for start in range(0, len(data), 60)]


def snapshot(pipeline: StreamPipeline) -> list[dict[str, list]]:
    return [core.snapshot_meters(sorted(core.meters)) for core in pipeline.cores]


def test_a_writer_killed_between_two_saves_of_the_states_goes_on_from_its_journal(
    store_url: str, tmp_path: Path
) -> None:
    data = batches()
    memory = InMemoryStreamStore()
    reference = StreamPipeline(
        StreamConfig(),
        PARTITIONS,
        lambda: InMemoryStreamUnitOfWork(memory),
        FixedClock(NOW),
        window_writes=None,
    )
    reference.load()
    answers = [outcome_codes(attribute(batch, reference.process(batch), PARTITIONS)) for batch in data]
    engine = create_engine_for(store_url)
    journal_path = tmp_path / "journal"

    def writer() -> JournaledWriter:
        pipeline = StreamPipeline(
            StreamConfig(), PARTITIONS, lambda: SqlAlchemyStreamUnitOfWork(engine), FixedClock(NOW), window_writes=None
        )
        started = JournaledWriter(pipeline, SqliteIngestJournal(journal_path), decode_batch, 4)
        assert started.recover() == {}
        return started

    def headers() -> list[tuple]:
        c = tables.stream_partitions.c
        with engine.connect() as connection:
            return list(connection.execute(sa.select(c.next_offset, c.states_next_offset).order_by(c.partition)))

    try:
        current = writer()
        for number, batch in enumerate(data):
            if number in (6, 13):  # killed after batches 5 and 12 were stored (12 % 4: states behind)
                current = writer()
            _, outcomes = current.take(encode_batch(f"t{number}", batch))
            assert outcomes == answers[number], f"batch {number}"
            current.store()
            if number == 14:
                behind = headers()
                assert any(saved is not None and saved < offset for offset, saved in behind), behind
                with pytest.raises(StreamStatesBehind):
                    StreamPipeline(
                        StreamConfig(), PARTITIONS, lambda: SqlAlchemyStreamUnitOfWork(engine), FixedClock(NOW)
                    ).load()
        current.close()
        assert all(saved is None for _, saved in headers()), "saved as far as the outcomes once closed"
        loaded = StreamPipeline(StreamConfig(), PARTITIONS, lambda: SqlAlchemyStreamUnitOfWork(engine), FixedClock(NOW))
        loaded.load()
        assert loaded.next_offsets == reference.next_offsets
        assert snapshot(loaded) == snapshot(reference)
        with engine.connect() as connection:
            stored = connection.execute(sa.select(sa.func.count()).select_from(tables.readings)).scalar_one()
        accepted = sum(1 for answer in answers for code in answer if code in (0, 1))
        assert stored == accepted
    finally:
        engine.dispose()


def test_0014_goes_down_only_once_no_states_stand_behind(store_url: str) -> None:
    """Without its columns, states saved behind would be taken for current: the downgrade
    refuses while a header says so, and goes once they are saved."""
    engine = create_engine_for(store_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                tables.stream_partitions.insert().values(
                    stream="main", partition=0, next_offset=10, states_max_event_time=None, states_next_offset=4
                )
            )
        with pytest.raises(CommandError, match="saved behind their outcomes"):
            migrations.downgrade(store_url, "0013_meter_state_log")
        assert migrations.current(store_url) == migrations.HEAD
        with engine.begin() as connection:
            connection.execute(tables.stream_partitions.update().values(states_next_offset=None))
            for key in ("api-journal:main", "api-journal:main:states"):
                connection.execute(
                    tables.replay_progress.insert().values(source_key=key, rows_done=4, finished=False, updated_at=0)
                )
        migrations.downgrade(store_url, "0013_meter_state_log")
        with engine.connect() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("stream_partitions")}
            keys = connection.execute(sa.select(tables.replay_progress.c.source_key)).scalars().all()
        assert "states_next_offset" not in columns and "next_offset" in columns
        assert keys == ["api-journal:main"], "the note of where the states stand goes with its columns"
    finally:
        migrations.upgrade(store_url)
        engine.dispose()
