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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from metrify.application.ports import IngestJournal, SourceProgress, StreamWrittenElsewhere
from metrify.application.serial import Outcome, answer_text, attribute, outcome_codes
from metrify.application.stream import PreparedBatch, Retries, StreamPipeline
from metrify.domain.readings import RawReading

log = logging.getLogger("metrify.stream")

JOURNAL_SOURCE = "api-journal"
_DROP_EVERY = 64  # batches stored between two clean-ups of the journal


class WriterBroken(Exception):
    """The writer's state could not be loaded again after a failed batch: it must not go on."""


class JournaledWriter:
    """Takes batches (core and journal, then their outcomes) and stores them, one at a time."""

    def __init__(
        self,
        pipeline: StreamPipeline,
        journal: IngestJournal,
        decode: Callable[[bytes], tuple[str, Sequence[RawReading]]],
    ) -> None:
        self.pipeline = pipeline
        self.journal = journal
        self.decode = decode
        self.source_key = f"{JOURNAL_SOURCE}:{pipeline.stream}"
        self.seq = 0  # the last batch journaled
        self._pending: tuple[Sequence[RawReading], PreparedBatch, list[Outcome]] | None = None

    def recover(self) -> dict[str, list[Outcome]]:
        """Load the stream, then store the journaled batches the store lacks, in order: their
        outcomes by the token each batch came with (a batch whose sender saw the writer stop
        before the answer is answered from these, not sent again)."""
        pipeline = self.pipeline
        self._pending = None
        pipeline.reload()
        done = self._stored_through()
        replayed: dict[str, list[Outcome]] = {}
        for seq, record in self.journal.after(done):
            now, payload = int.from_bytes(record[:8], "big", signed=True), record[8:]
            token, rows = self.decode(payload)
            events = pipeline.process(rows, [self._progress(seq)], now)
            replayed[token] = outcome_codes(attribute(rows, events, pipeline.partition_count))
        self.seq = max(self.journal.last(), done)
        self.journal.drop_through(self.seq)
        if replayed:
            log.info("stored %d journaled batch(es) a stream writer before this one had answered", len(replayed))
        return replayed

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
        try:
            batch = pipeline.prepare(rows, [self._progress(seq)], now)
            outcomes = outcome_codes(attribute(rows, batch.events, pipeline.partition_count))
            self.journal.append(seq, now.to_bytes(8, "big", signed=True) + payload, token, answer_text(outcomes))
        except BaseException as exc:
            try:
                pipeline.reload()  # the cores may have moved on with a batch that will not be answered
            except BaseException as again:
                raise WriterBroken(f"the stream could not be loaded again after {exc!r}") from again
            raise
        self.seq = seq
        self._pending = (rows, batch, outcomes)
        return token, outcomes

    def store(self) -> None:
        """Store the batch taken last. On failure it stays in the journal: `recover` stores it."""
        if self._pending is None:
            return
        rows, batch, answered = self._pending
        self._pending = None
        pipeline = self.pipeline
        try:
            pipeline.commit(batch)
        except StreamWrittenElsewhere as exc:
            # Another writer (a replay into the same database) committed meanwhile: the batch goes
            # onto its state, as any writer's would. Its readings were answered on this writer's
            # state before: what is stored may differ from that answer, and the log says how much.
            pipeline.reload()
            events = pipeline.process(rows, batch.progress, batch.now)
            stored = outcome_codes(attribute(rows, events, pipeline.partition_count))
            changed = sum(1 for a, b in zip(answered, stored, strict=True) if a != b)
            log.warning(
                "%s: a batch answered was stored on the state loaded again; %d of its %d readings "
                "were stored with another outcome than answered",
                exc,
                changed,
                len(rows),
            )
        if self.seq % _DROP_EVERY == 0:
            self.journal.drop_through(self.seq)

    def write_held_windows(self, limit: int | None, retries: Retries | None = None) -> int:
        """Store closed windows held back (see StreamPipeline's window_writes), between batches."""
        if self._pending is not None:
            return 0
        return self.pipeline.write_held_windows(limit, retries)

    def close(self) -> None:
        """Store what is taken and every window held back; the journal keeps nothing stored."""
        self.store()
        self.pipeline.write_held_windows(None)
        self.journal.drop_through(self.seq)

    def _progress(self, seq: int) -> SourceProgress:
        return SourceProgress(self.source_key, seq, False)

    def _stored_through(self) -> int:
        """The last journaled batch the store holds (its progress row), 0 when none."""

        def read() -> int:
            with self.pipeline.uow_factory() as uow:
                progress = uow.progress.get(self.source_key)
            return 0 if progress is None else progress.rows_done

        return int(self.pipeline.backoff.run(read))
