"""The stream writer process's use case (application/journaled.py): batches answered from the
core and the journal, stored after the answer; a writer stopped at any point loses nothing and
stores nothing twice, and the outcomes it answered are the ones stored."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.support.core_runner import FixedClock

from metrify.adapters.files.journal import SqliteIngestJournal
from metrify.adapters.memory.journal import InMemoryIngestJournal
from metrify.adapters.memory.stream_store import InMemoryStreamStore, InMemoryStreamUnitOfWork
from metrify.application.journaled import JournaledWriter, JournalOfAnotherStore, WriterBroken
from metrify.application.network import NetworkProfile, through_network
from metrify.application.serial import answer_outcomes, attribute, outcome_codes
from metrify.application.simulator import FleetProfile, fleet_rows
from metrify.application.stream import StreamPipeline, StreamStatesBehind
from metrify.domain.readings import LongInteger, RawReading
from metrify.domain.stream.config import StreamConfig
from metrify.entrypoints.stream_writer import decode_batch, encode_batch

NOW = 2_000_000_000 * 1_000_000
BATCH = 40


def batches() -> list[list[RawReading]]:
    """A fleet's readings, some late, some duplicated, one malformed: every kind of outcome."""
    fleet = [RawReading(*row) for row in fleet_rows(FleetProfile(meters=12, days=2, seed=3))]
    data = list(through_network(fleet, NetworkProfile(delay_prob=0.2, max_delay=3000, seed=4)))
    data[30:30] = data[10:14]  # sent twice
    data.insert(7, RawReading("M-bad", "not a time", "1.0"))
    return [data[start : start + BATCH] for start in range(0, len(data), BATCH)]


class FailingUnitOfWork(InMemoryStreamUnitOfWork):
    """A store whose next commit fails, once, with an error that is not its being away."""

    fail_next = False

    def commit(self) -> None:
        if FailingUnitOfWork.fail_next:
            FailingUnitOfWork.fail_next = False
            self.rollback()
            raise RuntimeError("disk I/O error")
        super().commit()


def pipeline_on(
    store: InMemoryStreamStore, window_writes: int | None = None, clock: FixedClock | None = None
) -> StreamPipeline:
    return StreamPipeline(
        StreamConfig(), 2, lambda: FailingUnitOfWork(store), clock or FixedClock(NOW), window_writes=window_writes
    )


def expected(data: list[list[RawReading]]) -> tuple[InMemoryStreamStore, list[list]]:
    """The store and the outcomes of the batches processed in the API's own process."""
    store = InMemoryStreamStore()
    pipeline = pipeline_on(store)
    pipeline.load()
    answers = [outcome_codes(attribute(batch, pipeline.process(batch), 2)) for batch in data]
    return store, answers


def outcome(store: InMemoryStreamStore) -> tuple:
    return store.readings, store.rejected, store.too_late, store.gaps, store.windows, store.meter_states


def writer_on(
    store: InMemoryStreamStore, journal: InMemoryIngestJournal, window_writes: int | None = None, save_every: int = 1
):
    writer = JournaledWriter(pipeline_on(store, window_writes), journal, decode_batch, save_every)
    return writer, writer.recover()


def store_batches(writer: JournaledWriter, data: list[list[RawReading]], numbers: range) -> None:
    """Batches `numbers` of `data` taken and stored, one after the other, as the API sends them."""
    for number in numbers:
        writer.take(encode_batch(f"t{number}", data[number]))
        writer.store()


def test_batches_through_the_writer_are_stored_and_answered_as_in_the_api_process() -> None:
    data = batches()
    reference, answers = expected(data)
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, replayed = writer_on(store, journal)
    assert replayed == {}
    for number, batch in enumerate(data):
        token, outcomes = writer.take(encode_batch(f"t{number}", batch))
        assert (token, outcomes) == (f"t{number}", answers[number])
        assert answer_outcomes(journal.answer_to(token) or "") == outcomes, "the journal keeps the answer"
        writer.store()
    writer.close()
    assert outcome(store) == outcome(reference)
    assert set(store.progress) == {"api-journal:main", "api-journal:main:states"}
    assert journal.batches == {}, "a closed writer leaves nothing in the journal"
    kinds = {type(code) for answer in answers for code in answer}
    assert kinds == {int, str} and {0, 1, 2} <= {code for answer in answers for code in answer}


@pytest.mark.parametrize("window_writes", [None, 3], ids=["windows stored at once", "windows held back"])
@pytest.mark.parametrize("save_every", [1, 4], ids=["states saved with each batch", "states saved every 4"])
def test_a_writer_stopped_after_answering_and_before_storing_loses_nothing(
    window_writes: int | None, save_every: int
) -> None:
    """Stopped (killed) at several points between an answer and its commit: the next writer
    stores the journaled batches first, tells their outcomes by token, then goes on. Saving the
    states every 4 batches, it first runs those whose states were not saved through the core."""
    data = batches()
    reference, answers = expected(data)
    stops = range(len(data)) if save_every > 1 else (0, 3, len(data) // 2, len(data) - 1)
    for stop_at in stops:
        store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
        writer, _ = writer_on(store, journal, window_writes, save_every)
        store_batches(writer, data, range(stop_at))
        writer.take(encode_batch(f"t{stop_at}", data[stop_at]))  # answered, then the process dies
        after, replayed = writer_on(store, journal, window_writes, save_every)
        assert replayed == {f"t{stop_at}": answers[stop_at]}, f"stopped at batch {stop_at}"
        for number in range(stop_at + 1, len(data)):
            _, outcomes = after.take(encode_batch(f"t{number}", data[number]))
            assert outcomes == answers[number], f"stopped at batch {stop_at}, batch {number}"
            after.store()
        after.close()
        # held back, a window rides in its meter's saved state until a later save: states differ
        compared = 6 if window_writes is None else 5
        assert outcome(store)[:compared] == outcome(reference)[:compared], f"stopped at batch {stop_at}"


def test_a_writer_started_again_stores_nothing_twice() -> None:
    data = batches()
    reference, _ = expected(data)
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal)
    for number, batch in enumerate(data):
        writer.take(encode_batch(f"t{number}", batch))
        writer.store()  # stored, and left in the journal (dropped only every so often)
    assert journal.batches, "the journal must still hold batches stored already"
    again, replayed = writer_on(store, journal)
    assert replayed == {}
    assert journal.batches == {}
    assert again.seq == len(data), "numbering goes on after the batches dropped"
    assert outcome(store) == outcome(reference)


def test_a_batch_the_journal_refuses_is_not_answered_and_leaves_no_trace() -> None:
    data = batches()
    reference, answers = expected(data[:3] + data[4:])
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal)
    store_batches(writer, data, range(3))
    journal.fail_next_append = True
    with pytest.raises(OSError, match="no space"):
        writer.take(encode_batch("t3", data[3]))
    for number in range(4, len(data)):
        _, outcomes = writer.take(encode_batch(f"t{number}", data[number]))
        assert outcomes == answers[number - 1]
        writer.store()
    assert outcome(store) == outcome(reference)


def test_a_failed_commit_is_stored_again_from_the_journal() -> None:
    """A commit that fails after the answer (not a transient error: nothing retried it) leaves
    the batch in the journal; loading the stream again stores it."""
    data = batches()
    reference, _ = expected(data)
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal)
    for number, batch in enumerate(data):
        writer.take(encode_batch(f"t{number}", batch))
        if number == 5:
            FailingUnitOfWork.fail_next = True
            with pytest.raises(RuntimeError, match="disk I/O"):
                writer.store()
            writer.recover()
        else:
            writer.store()
    writer.close()
    assert outcome(store) == outcome(reference)


def test_another_writer_taking_a_batch_before_the_last_is_stored_is_refused() -> None:
    data = batches()
    writer, _ = writer_on(InMemoryStreamStore(), InMemoryIngestJournal())
    writer.take(encode_batch("t0", data[0]))
    with pytest.raises(RuntimeError, match="not stored yet"):
        writer.take(encode_batch("t1", data[1]))


def test_a_batch_stored_from_the_journal_is_judged_at_the_time_it_was_answered() -> None:
    """A reading from the future when answered is rejected as such when the next writer stores it
    later, when its time has come: the answer and the store agree."""
    soon = datetime.fromtimestamp((NOW + 2 * 3600 * 1_000_000) / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    batch = [RawReading("M1", soon, "0.5")]
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal)
    _, outcomes = writer.take(encode_batch("t0", batch))
    assert outcomes == ["future_timestamp"]
    later = JournaledWriter(pipeline_on(store, clock=FixedClock(NOW + 86_400 * 1_000_000)), journal, decode_batch)
    assert later.recover() == {"t0": ["future_timestamp"]}
    assert [r.reason for r in store.rejected.values()] == ["future_timestamp"] and not store.readings


def test_the_journal_file_keeps_batches_in_order_and_its_numbering_through_drops(tmp_path: Path) -> None:
    path = tmp_path / "data" / "metrify.db-ingest-journal"
    journal = SqliteIngestJournal(path)
    assert (journal.last(), journal.after(0)) == (0, [])
    for seq in (1, 2, 3):
        journal.append(seq, bytes([seq]) * 3, f"t{seq}", f"0,1,{seq}")
    journal.drop_through(2)
    journal.close()
    again = SqliteIngestJournal(path)  # what a writer started later finds
    assert again.after(0) == [(3, b"\x03\x03\x03")]
    assert (again.answer_to("t3"), again.answer_to("t1")) == ("0,1,3", None)
    assert again.after(3) == []
    again.drop_through(3)
    assert (again.last(), again.after(0)) == (3, []), "the numbering survives the batches' dropping"
    with pytest.raises(ValueError, match="not after"):
        again.append(3, b"x")  # a number is never given twice
    assert again.after(0) == []
    again.close()


@pytest.mark.parametrize("window_writes", [None, 3], ids=["windows stored at once", "windows held back"])
def test_states_saved_every_few_batches_and_a_writer_killed_anywhere_store_what_each_batch_would(
    window_writes: int | None,
) -> None:
    """Meter states saved every 3 batches, the writer killed after any batch stored (not answered
    only: stored, the states behind them), started again, killed again later: every answer, and
    what the store ends with, states included once they are saved, is what the API's own process
    gives saving them with each batch."""
    data = batches()
    reference, answers = expected(data)
    for first_stop in range(len(data)):
        second_stop = min(len(data), first_stop + 5)
        store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
        writer, _ = writer_on(store, journal, window_writes, 3)
        for number in range(len(data)):
            if number in (first_stop, second_stop):
                writer, replayed = writer_on(store, journal, window_writes, 3)  # the one before was killed
                assert replayed == {}, f"stopped at {first_stop}"
            _, outcomes = writer.take(encode_batch(f"t{number}", data[number]))
            assert outcomes == answers[number], f"stopped at {first_stop}, batch {number}"
            writer.store()
        writer.close()
        compared = 6 if window_writes is None else 5
        assert outcome(store)[:compared] == outcome(reference)[:compared], f"stopped at batch {first_stop}"
        assert journal.batches == {}


def test_states_saved_every_few_batches_stand_behind_the_headers_until_saved() -> None:
    """Between two saves the store's headers say where the states stand; a writer that is not
    the journaled one refuses to load them (it would take them for current); the writer saves
    them when the stream is quiet, and then anyone may load the stream."""
    data = batches()
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal, save_every=100)
    store_batches(writer, data, range(4))
    assert store.states_at and not store.meter_states, "no states saved yet, and the headers say so"
    assert writer.pipeline.states_behind
    with pytest.raises(StreamStatesBehind, match="saved behind its outcomes"):
        pipeline_on(store).load()
    assert writer.save_states()
    assert not store.states_at and store.meter_states and not writer.pipeline.states_behind
    assert not writer.save_states(), "nothing left to save"
    other = pipeline_on(store)
    other.load()
    assert other.next_offsets == writer.pipeline.next_offsets


def test_a_journal_that_lost_the_batches_behind_the_states_stops_the_writer() -> None:
    data = batches()
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal, save_every=100)
    store_batches(writer, data, range(3))
    journal.batches.clear()  # deleted with the file, say
    with pytest.raises(WriterBroken, match="journal lacks batches 1-3"):
        writer_on(store, journal, save_every=100)


@pytest.mark.parametrize("save_every", [1, 4], ids=["states saved with each batch", "states saved every 4"])
def test_a_journal_left_by_a_crash_is_not_stored_into_a_database_made_afresh(save_every: int) -> None:
    """The writer killed with batches in its journal, then the database deleted and made again (an
    embedded user's reset): the next writer refuses rather than store another store's readings
    into it, and stores nothing; once the journal is moved aside it starts afresh."""
    data = batches()
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal, save_every=save_every)
    store_batches(writer, data, range(5))
    writer.take(encode_batch("t5", data[5]))  # answered, then the process dies
    fresh = InMemoryStreamStore()
    with pytest.raises(JournalOfAnotherStore, match="batches 1-6 that this database never stored"):
        writer_on(fresh, journal, save_every=save_every)
    assert outcome(fresh) == outcome(InMemoryStreamStore()) and fresh.progress == {}
    again, replayed = writer_on(fresh, InMemoryIngestJournal(), save_every=save_every)
    assert replayed == {}
    store_batches(again, data, range(2))
    assert len(fresh.readings) > 0


@pytest.mark.parametrize(
    ("dropped", "refusal"),
    [
        (False, "batches 3-7 that this database never stored \\(it holds the journal's batches through 2\\)"),
        (True, "batches 7-7 that this database never stored"),  # one batch beyond, not the next
    ],
    ids=["the journal holds the batches after the copy", "the journal dropped them"],
)
def test_a_database_restored_from_an_older_copy_is_not_given_the_journal_beyond_it(dropped: bool, refusal: str) -> None:
    """Storing the journaled batches beyond an older copy's progress would leave a hole where the
    batches stored after the copy were: refused, whether the journal still holds those or not."""
    data = batches()
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal)
    store_batches(writer, data, range(2))
    older = copy.deepcopy(store)
    store_batches(writer, data, range(2, 6))
    if dropped:
        journal.drop_through(6)
    writer.take(encode_batch("t6", data[6]))  # batch 7, answered, then the process dies
    with pytest.raises(JournalOfAnotherStore, match=refusal):
        writer_on(older, journal)


@pytest.mark.parametrize("save_every", [1, 4], ids=["states saved with each batch", "states saved every 4"])
def test_a_database_made_afresh_after_a_clean_stop_keeps_its_first_batch_through_a_crash(save_every: int) -> None:
    """The journal numbers on from its high mark: the new database's first batch is not batch 1.
    Answered, then the writer killed (or its store failed) before it was stored: it is stored."""
    data = batches()
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal, save_every=save_every)
    store_batches(writer, data, range(3))
    writer.close()
    fresh = InMemoryStreamStore()
    again, _ = writer_on(fresh, journal, save_every=save_every)
    _, answered = again.take(encode_batch("t3", data[3]))  # answered, then the process dies
    after, replayed = writer_on(fresh, journal, save_every=save_every)
    assert replayed == {"t3": answered}
    assert fresh.progress["api-journal:main"].rows_done == 4
    FailingUnitOfWork.fail_next = True  # a store that fails once: stored again from the journal
    after.take(encode_batch("t4", data[4]))
    with pytest.raises(RuntimeError, match="disk I/O error"):
        after.store()
    after.recover()
    assert fresh.progress["api-journal:main"].rows_done == 5


def test_a_database_made_afresh_after_a_clean_stop_goes_on_with_the_journal() -> None:
    """A writer that stopped cleanly leaves its journal empty: a database made afresh beside it
    takes new batches, numbered on from the journal's last."""
    data = batches()
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal)
    store_batches(writer, data, range(3))
    writer.close()
    fresh = InMemoryStreamStore()
    again, replayed = writer_on(fresh, journal)
    assert replayed == {} and again.seq == 3
    store_batches(again, data, range(3, 5))
    assert fresh.progress["api-journal:main"].rows_done == 5


@pytest.mark.parametrize("window_writes", [None, 3], ids=["windows stored at once", "windows held back"])
def test_a_window_changed_after_the_states_were_saved_keeps_its_newest_value_through_a_restart(
    window_writes: int | None,
) -> None:
    """The states saved at batch 3 hold M1's hour window closed with one reading; batch 4 (a LATE
    reading) changes it, and its states are not saved. A writer started after that queues the
    window as the states hold it, then as the journaled batch 4 leaves it: the newest goes last."""
    data = [
        [RawReading("M1", "2024-03-04T00:00:00Z", "1.0")],
        [RawReading("M1", "2024-03-04T01:00:00Z", "1.0")],
        [RawReading("M1", "2024-03-04T01:30:00Z", "1.0")],  # closes the hour [00:00, 01:00)
        [RawReading("M1", "2024-03-04T00:30:00Z", "5.0")],  # LATE: changes it
        [RawReading("M2", "2024-03-04T01:30:00Z", "1.0")],
    ]
    reference, answers = expected(data)
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal, window_writes, 3)
    for number in range(4):
        assert writer.take(encode_batch(f"t{number}", data[number]))[1] == answers[number]
        writer.store()
    writer, _ = writer_on(store, journal, window_writes, 3)  # the one before was killed
    writer.take(encode_batch("t4", data[4]))
    writer.store()
    writer.write_held_windows(None)
    assert store.windows == reference.windows


def test_a_store_without_the_states_row_of_an_older_writer_is_caught_up_after_a_crash() -> None:
    """A store and journal an older Metrify left (no row says where the saved states stand), then
    a writer that saves them every 10 batches, killed after one batch: the next one starts."""
    data = batches()
    reference, answers = expected(data[:7])
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal)
    store_batches(writer, data, range(5))
    writer.close()
    del store.progress["api-journal:main:states"]  # the older code never wrote it
    writer, _ = writer_on(store, journal, save_every=10)
    writer.take(encode_batch("t5", data[5]))
    writer.store()  # the states not saved
    writer, _ = writer_on(store, journal, save_every=10)  # the one before was killed
    assert writer.take(encode_batch("t6", data[6]))[1] == answers[6]
    writer.store()
    writer.close()
    assert outcome(store) == outcome(reference)


def test_a_batch_the_journal_refuses_while_the_states_stand_behind_fails_alone() -> None:
    data = batches()
    reference, answers = expected(data[:3] + data[4:6])
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal, save_every=10)
    store_batches(writer, data, range(3))
    journal.fail_next_append = True
    with pytest.raises(OSError, match="no space"):
        writer.take(encode_batch("t3", data[3]))
    for number in (4, 5):
        assert writer.take(encode_batch(f"t{number}", data[number]))[1] == answers[number - 1]
        writer.store()
    writer.close()
    assert outcome(store) == outcome(reference)


@pytest.mark.parametrize("save_every", [1, 3], ids=["states saved with each batch", "states saved every 3"])
def test_another_writer_committing_to_a_partition_the_writer_left_behind_is_caught_up_with(save_every: int) -> None:
    """The writer stores a batch of partition 0 only (its states not saved), another writer (a
    replay) one of partition 1 only; the writer's next batch, of both, meets the other's commit:
    loaded again and caught up, it stores what one writer taking all these batches in turn would."""
    router = pipeline_on(InMemoryStreamStore())
    rows = [row for batch in batches() for row in batch]
    by_partition = [[row for row in rows if router.partition_of(row[0]) == p] for p in (0, 1)]
    part0, part1 = ([rows[i : i + 20] for i in range(0, 120, 20)] for rows in by_partition)
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal, save_every=save_every)
    in_turn = []
    for number in range(3):
        writer.take(encode_batch(f"t{number}", part0[number] + part1[number]))
        writer.store()
        in_turn.append(part0[number] + part1[number])
    writer.save_states()
    other = pipeline_on(store)
    other.load()
    writer.take(encode_batch("t3", part0[3]))
    writer.store()
    other.process(part1[3])
    in_turn += [part0[3], part1[3]]
    for number in (4, 5):
        writer.take(encode_batch(f"t{number}", part0[number] + part1[number]))
        writer.store()
        in_turn.append(part0[number] + part1[number])
    writer.close()
    reference, _ = expected(in_turn)
    assert outcome(store)[:5] == outcome(reference)[:5]


def test_a_start_that_caught_up_saves_the_states_at_once() -> None:
    """A start killed after its catch-up must not run the same batches through again."""
    data = batches()
    store, journal = InMemoryStreamStore(), InMemoryIngestJournal()
    writer, _ = writer_on(store, journal, save_every=100)
    store_batches(writer, data, range(4))
    assert store.states_at
    writer, _ = writer_on(store, journal, save_every=100)  # the one before was killed
    assert not store.states_at and not writer.pipeline.states_behind
    assert journal.batches == {}, "nothing left to catch up with"


def test_a_batch_comes_out_of_its_payload_as_it_went_in_each_timestamp_text_once() -> None:
    ts = "2024-03-04T10:00:00Z"
    batch = [RawReading(f"M{i}", "".join(ts), 0.5, {"region": "north"} if i % 2 else None, i) for i in range(4)] + [
        RawReading("M9", 1709546400, "0.25"),
        RawReading(None, LongInteger("9" * 5000), None),
    ]
    assert len({id(row.timestamp) for row in batch[:4]}) == 4  # equal texts, distinct objects (as parsed)
    token, rows = decode_batch(encode_batch("t1", batch))
    assert token == "t1" and rows == batch and all(type(row) is RawReading for row in rows)
    assert len({id(row.timestamp) for row in rows[:4]}) == 1
    assert str(rows[5].timestamp) == "9" * 5000
