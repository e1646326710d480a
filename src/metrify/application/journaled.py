"""The embedded stream's one writer in a process of its own, behind a journal (DESIGN §4).

With METRIFY_API__STREAM_WRITER=process the API hands each batch to a stream writer process. The
writer runs the batch through the stream core, keeps it in the journal (a file of its own), and
sends each reading's outcome back: the API answers from that. Only then does the writer store
the batch (outcomes, meter states, and the batch's journal number as the progress of the source
"api-journal:<stream>", in one transaction, as every way in does), while the API reads and parses
the next request in its own process. The two halves of a batch's work run on two cores at once.

A crash loses nothing and repeats nothing: a batch answered is in the journal, and a writer that
starts stores every journaled batch the store's progress does not cover, in order, before any new
one (the same outcomes: the core is deterministic and starts from the state stored with that
progress). A batch whose journaling failed was not answered, and its core work is undone by
loading the stream again.

The meter states may be saved every N batches instead of with each (`state_save_batches`,
METRIFY_API__STATE_SAVE_BATCHES; a checkpoint, as a stream processor takes them): each batch's
outcomes and progress are still committed with it, and its partitions' headers say where the saved
states stand. The journal keeps every batch since the last save ("api-journal:<stream>:states",
committed with it); a writer that starts runs those the store holds through the core again,
storing nothing (`StreamPipeline.catch_up`), before it stores the rest. The writer saves the
states when it stops, and when the stream is quiet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from metrify.application.ports import IngestJournal, SourceProgress, StreamWrittenElsewhere
from metrify.application.serial import Outcome, answer_text, attribute, outcome_codes
from metrify.application.stream import PreparedBatch, Retries, StreamCannotLoad, StreamPipeline
from metrify.domain.readings import RawReading

log = logging.getLogger("metrify.stream")

JOURNAL_SOURCE = "api-journal"
_DROP_EVERY = 64  # batches stored between two clean-ups of the journal


def _record(now: int, payload: bytes) -> bytes:
    """A batch as the journal keeps it: the time it was judged against (8 bytes), then its payload."""
    return now.to_bytes(8, "big", signed=True) + payload


def _unrecord(record: bytes) -> tuple[int, bytes]:
    """`_record`'s time and payload."""
    return int.from_bytes(record[:8], "big", signed=True), record[8:]


class WriterBroken(Exception):
    """The writer's state could not be loaded again after a failed batch: it must not go on."""


class JournalOfAnotherStore(StreamCannotLoad):
    """The journal holds batches beyond the one batch a writer may have answered and not stored:
    it was kept for another database (this one deleted and made again, say) or this database is
    an older copy of its own. Storing them would put another store's readings into this one, or
    leave a hole in its progress: the operator's to mend."""


class JournaledWriter:
    """Takes batches (core and journal, then their outcomes) and stores them, one at a time."""

    def __init__(
        self,
        pipeline: StreamPipeline,
        journal: IngestJournal,
        decode: Callable[[bytes], tuple[str, Sequence[RawReading]]],
        state_save_batches: int = 1,
    ) -> None:
        self.pipeline = pipeline
        self.journal = journal
        self.decode = decode
        self.source_key = f"{JOURNAL_SOURCE}:{pipeline.stream}"
        self.seq = 0  # the last batch journaled
        self.state_save_batches = max(1, state_save_batches)
        self.states_key = f"{self.source_key}:states"
        self.states_seq = 0  # the last batch journaled whose meter states are saved
        # the batch taken and not stored yet: its rows, the batch, its outcomes, whether it saves the states
        self._pending: tuple[Sequence[RawReading], PreparedBatch, list[Outcome], bool] | None = None

    def recover(self) -> dict[str, list[Outcome]]:
        """Load the stream, then store the journaled batches the store lacks, in order: their
        outcomes by the token each batch came with (a batch whose sender saw the writer stop
        before the answer is answered from these, not sent again)."""
        pipeline = self.pipeline
        self._pending = None
        pipeline.reload(states_behind=True)
        done, states_done = self._stored_through()
        behind = pipeline.states_behind
        # no row: no batch of this journal saved them (journaled from the first on: the check
        # of the batches caught up with tells whether that is so)
        start = (states_done or 0) if behind else done
        if start > done:
            raise WriterBroken(f"the meter states were saved at journaled batch {start}, the outcomes at {done}")
        replayed: dict[str, list[Outcome]] = {}
        entries = self.journal.after(start)
        # A writer takes a batch only once the one before is stored: at most one journaled batch is
        # beyond the store's progress, and it is the next one (done + 1) once the store holds any
        # of the journal's (a store that holds none may take its first batch under any number: the
        # journal numbers on from its own high mark). Batches already stored are passed over.
        beyond = [seq for seq, _ in entries if seq > done]
        if len(beyond) > 1 or (done and beyond and beyond[0] != done + 1):
            raise JournalOfAnotherStore(
                f"the ingest journal holds batches {beyond[0]}-{beyond[-1]} that this database never stored "
                f"(it holds the journal's batches through {done}): the journal was kept for another database, "
                "or this one is an older copy; move the journal aside to start afresh, or point "
                "METRIFY_DATABASE_URL at the database it was kept for"
            )
        if behind:
            self._catch_up([entry for entry in entries if entry[0] <= done], start, done)
        for seq, record in entries:
            if seq <= done:
                continue
            now, payload = _unrecord(record)
            token, rows = self.decode(payload)
            events = pipeline.process(rows, [self._progress(seq), self._states_progress(seq)], now)
            replayed[token] = outcome_codes(attribute(rows, events, pipeline.partition_count))
        self.seq = max(self.journal.last(), done)
        self.states_seq = start if pipeline.states_behind else self.seq
        if behind:  # saved now: a start killed later does not run the same batches through again
            self.save_states()
        self.journal.drop_through(self.states_seq)
        if replayed:
            log.info("stored %d journaled batch(es) a stream writer before this one had answered", len(replayed))
        return replayed

    def _catch_up(self, entries: list[tuple[int, bytes]], start: int, done: int) -> None:
        """Run the journaled batches after `start` (where the saved states stand) through `done`
        (what the store holds) through the core, storing nothing."""
        if [seq for seq, _ in entries] != list(range(start + 1, done + 1)):
            raise WriterBroken(
                f"the journal lacks batches {start + 1}-{done}, which the saved meter states do not cover "
                "(was the ingest journal deleted?): the stream cannot go on from its store"
            )
        pipeline = self.pipeline
        for seq, record in entries:
            now, payload = _unrecord(record)
            _, rows = self.decode(payload)
            try:
                pipeline.catch_up(rows, now)
            except RuntimeError as exc:
                raise WriterBroken(f"journaled batch {seq}: {exc}") from exc
        if pipeline.next_offsets != pipeline.committed_offsets:
            raise WriterBroken(
                f"the journaled batches {start + 1}-{done} end at input offsets {pipeline.next_offsets}, "
                f"the store at {pipeline.committed_offsets}: not the batches it holds"
            )
        if entries:
            log.info(
                "ran %d journaled batch(es) through the core again: their meter states were not saved", len(entries)
            )

    def take(self, payload: bytes) -> tuple[str, list[Outcome]]:
        """Run a batch (encoded as `payload`: its token and rows) through the core and keep it in
        the journal: its token and each row's outcome. `store` stores it; until then no other
        batch is taken."""
        if self._pending is not None:
            raise RuntimeError("the batch taken before is not stored yet")
        pipeline = self.pipeline
        token, rows = self.decode(payload)
        seq = self.seq + 1
        now = pipeline.clock.now_us()  # journaled with the batch: stored again, it is judged as answered
        save = seq - self.states_seq >= self.state_save_batches
        # Each batch says where the saved states stand (a row left by a writer before, or by an
        # older Metrify, is never taken for this one's).
        progress = [self._progress(seq), self._states_progress(seq if save else self.states_seq)]
        try:
            batch = pipeline.prepare(rows, progress, now, save_states=save)
            outcomes = outcome_codes(attribute(rows, batch.events, pipeline.partition_count))
            self.journal.append(seq, _record(now, payload), token, answer_text(outcomes))
        except BaseException as exc:
            try:
                self.recover()  # the cores may have moved on with a batch that will not be answered
            except BaseException as again:
                raise WriterBroken(f"the stream could not be loaded again after {exc!r}") from again
            raise
        self.seq = seq
        self._pending = (rows, batch, outcomes, save)
        return token, outcomes

    def store(self) -> None:
        """Store the batch taken last. On failure it stays in the journal: `recover` stores it."""
        if self._pending is None:
            return
        rows, batch, answered, save = self._pending
        self._pending = None
        pipeline = self.pipeline
        try:
            pipeline.commit(batch)
        except StreamWrittenElsewhere as exc:
            # Another writer (a replay into the same database) committed meanwhile: the batch goes
            # onto its state, as any writer's would: loaded (and caught up) as a start does, which
            # stores it from the journal. Its readings were answered on this writer's state before:
            # what is stored may differ from that answer, and the log says how much.
            replayed = self.recover()
            stored = list(replayed.values())[-1] if replayed else answered
            save = False  # recover settled where the states stand
            changed = sum(1 for a, b in zip(answered, stored, strict=True) if a != b)
            log.warning(
                "%s: a batch answered was stored on the state loaded again; %d of its %d readings "
                "were stored with another outcome than answered",
                exc,
                changed,
                len(rows),
            )
        if save:
            self.states_seq = batch.progress[0].rows_done
        if self.seq % _DROP_EVERY == 0:
            self.journal.drop_through(self.states_seq)

    def save_states(self, retries: Retries | None = None) -> bool:
        """Save the meter states the batches stored since the last save changed (none taken and
        not stored): when the stream is quiet, and when the writer stops. Whether it did."""
        pipeline = self.pipeline
        if self._pending is not None or not pipeline.states_behind:
            return False
        pipeline.commit(pipeline.prepare([], [self._states_progress(self.seq)]), retries)
        self.states_seq = self.seq
        self.journal.drop_through(self.seq)
        return True

    def write_held_windows(self, limit: int | None, retries: Retries | None = None) -> int:
        """Store closed windows held back (see StreamPipeline's window_writes), between batches."""
        if self._pending is not None:
            return 0
        return self.pipeline.write_held_windows(limit, retries)

    def close(self) -> None:
        """Store what is taken, the meter states and every window held back; the journal keeps
        nothing stored."""
        self.store()
        self.save_states()
        self.pipeline.write_held_windows(None)
        self.journal.drop_through(self.seq)

    def _progress(self, seq: int) -> SourceProgress:
        return SourceProgress(self.source_key, seq, False)

    def _states_progress(self, seq: int) -> SourceProgress:
        return SourceProgress(self.states_key, seq, False)

    def _stored_through(self) -> tuple[int, int | None]:
        """The last journaled batch the store holds (its progress row), 0 when none; and the last
        whose meter states are saved (None: no row)."""

        def read() -> tuple[int, int | None]:
            with self.pipeline.uow_factory() as uow:
                progress = uow.progress.get(self.source_key)
                states = uow.progress.get(self.states_key)
            return (0 if progress is None else progress.rows_done, None if states is None else states.rows_done)

        result: tuple[int, int | None] = self.pipeline.backoff.run(read)
        return result
