"""One writer for the embedded stream state, shared by every request of a process (DESIGN §4).

Requests that arrive while a batch is being written wait, and the next writer processes all of
them together, in arrival order, in one unit of work (group commit). That changes nothing in the
outcome, which depends only on the arrival order within each partition, never on batch sizes
(DESIGN §3), and it spares a transaction and a state snapshot per request under load. Each
request gets back the one outcome event (accepted, rejected or too late) of each of its readings:
the core emits exactly one per reading, in order, per partition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from metrify.application.errors import Unavailable
from metrify.application.ports import TransientStoreError
from metrify.application.stream import StreamCannotLoad, StreamPipeline
from metrify.domain.readings import RawReading, normalise_meter_id
from metrify.domain.stream.events import ReadingAccepted, ReadingRejected, ReadingTooLate
from metrify.domain.stream.partitioner import partition_for

log = logging.getLogger("metrify.api")

_OUTCOME_KINDS = frozenset((ReadingAccepted, ReadingRejected, ReadingTooLate))

# A reading's outcome as the API reports it: accepted ON_TIME, accepted LATE, too late, or the
# reason code (text) of its rejection. Small, so that a stream writer process can send it back.
ON_TIME, LATE, TOO_LATE = 0, 1, 2
Outcome = int | str


def answer_text(outcomes: Sequence[Outcome]) -> str:
    """Outcomes as one line of text (reason codes are words: no comma in them)."""
    return ",".join(map(str, outcomes))


def answer_outcomes(text: str) -> list[Outcome]:
    """The outcomes `answer_text` wrote."""
    if not text:
        return []
    return [int(code) if code.isdigit() else code for code in text.split(",")]


def outcome_codes(outcomes: Sequence[Any]) -> list[Outcome]:
    """Each outcome event as its Outcome."""
    codes: list[Outcome] = []
    code = codes.append
    for event in outcomes:
        kind = type(event)
        if kind is ReadingAccepted:
            code(LATE if event.status == "LATE" else ON_TIME)
        elif kind is ReadingRejected:
            code(event.reason)
        else:
            code(TOO_LATE)
    return codes


class BoundedBackoff:
    """Retries an unreachable store for at most `budget` seconds, then gives up with Unavailable:
    an HTTP client is better served by a 503 than by a request that hangs."""

    def __init__(
        self,
        budget: float = 5.0,
        first: float = 0.1,
        cap: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.first = first
        self.cap = cap
        self.sleep = sleep
        self.clock = clock

    def run(self, action: Callable[[], Any]) -> Any:
        """The budget is of time since the first try, the tries included: a try that waited for
        a lock (SQLite's busy timeout: 30 s) spends it too, so a few slow tries end in a 503
        instead of minutes of them, with every other ingest request queued behind."""
        started, attempt = self.clock(), 0
        while True:
            try:
                return action()
            except TransientStoreError as exc:
                left = self.budget - (self.clock() - started)
                if left <= 0:
                    raise Unavailable(f"the database does not answer: {exc}") from exc
                delay = min(self.cap, self.first * (2**attempt), left)
                attempt += 1
                self.sleep(delay)


class _Job:
    __slots__ = ("rows", "outcomes", "error", "done")

    def __init__(self, rows: Sequence[RawReading]) -> None:
        self.rows = rows
        self.outcomes: list[Any] = []
        self.error: BaseException | None = None
        self.done = False


class GroupCommit:
    """Requests take turns at one writer: those that arrive while a batch is being written wait,
    and the next turn takes all of them (up to `max_rows`), in arrival order, as one batch (group
    commit). Each gets back the outcomes of its own rows, or the error of its group: a group that
    fails for anything but the store being away is tried again request by request, so that only
    the culprit fails. Subclasses say how a group is written (`_run`)."""

    def __init__(self, max_rows: int = 50_000) -> None:
        self.max_rows = max_rows
        self._writer = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self.last_batch = time.monotonic()  # when the last batch came in

    def submit(self, rows: Sequence[RawReading]) -> list[Any]:
        """Write the rows (with whatever else is waiting) and return each row's outcome."""
        self.last_batch = time.monotonic()
        job = _Job(rows)
        with self._queue_lock:
            self._queue.append(job)
        with self._writer:
            while not job.done:  # the writer before may have left it for a later round
                self._run_waiting()
        if job.error is not None:
            raise job.error
        return job.outcomes

    def _run_waiting(self) -> None:
        jobs: list[_Job] = []
        total = 0
        with self._queue_lock:
            while self._queue and (not jobs or total + len(self._queue[0].rows) <= self.max_rows):
                job = self._queue.popleft()
                jobs.append(job)
                total += len(job.rows)
        try:
            self._run(jobs)
        except BaseException as exc:  # each job holds it: its own thread raises it
            if len(jobs) == 1 or not isinstance(exc, Exception) or isinstance(exc, Unavailable | TransientStoreError):
                return
            # Something in one request's rows, or a fault of ours they set off, failed the group's
            # one transaction (nothing of it was written). Each request goes again on its own: the
            # others are answered as if they had come alone, and only the culprit fails.
            for job in jobs:
                job.error = None
                try:
                    self._run([job])
                except Exception:  # noqa: BLE001 - already the job's own error
                    pass
        finally:
            for job in jobs:
                job.done = True

    def _run(self, jobs: list[_Job]) -> None:
        """Write the jobs' rows as one batch and set each job's outcomes; on failure, set each
        job's error and raise it."""
        try:
            rows = [row for job in jobs for row in job.rows]
            outcomes = self._write(rows)
            start = 0
            for job in jobs:
                job.outcomes = outcomes[start : start + len(job.rows)]
                start += len(job.rows)
        except BaseException as exc:
            for job in jobs:
                job.error = exc
            raise

    def _write(self, rows: list[RawReading]) -> list[Any]:
        """One batch written: each row's outcome, in order."""
        raise NotImplementedError


class SerialPipeline(GroupCommit):
    """The process-wide pipeline behind a lock, loaded on first use and reloaded from the store
    after a failed write (its in-memory state may then be ahead of what was committed). `submit`
    returns each row's outcome event."""

    def __init__(self, factory: Callable[[], StreamPipeline], max_rows: int = 50_000) -> None:
        super().__init__(max_rows)
        self.factory = factory
        self._pipeline: StreamPipeline | None = None

    def load(self) -> None:
        with self._writer:
            self._loaded()

    @property
    def loaded(self) -> bool:
        """Whether the stream state is in memory (else the next batch loads it, or says why not)."""
        return self._pipeline is not None

    @property
    def held_windows(self) -> int:
        """Closed windows not stored yet (see StreamPipeline's window_writes)."""
        pipeline = self._pipeline
        return 0 if pipeline is None else pipeline.held_windows

    def write_held_windows(self, limit: int | None = None, wait: bool = False) -> int:
        """Store up to `limit` (None: all) of the closed windows waiting, between batches: at
        once if no batch is being written, else not at all (unless `wait`). The number stored."""
        if not self._writer.acquire(blocking=wait):
            return 0
        try:
            pipeline = self._pipeline
            if pipeline is None:
                return 0
            try:
                return pipeline.write_held_windows(limit)
            except BaseException:
                self._pipeline = None  # loaded again, held windows included, before the next write
                raise
        finally:
            self._writer.release()

    def outcomes(self, rows: Sequence[RawReading]) -> list[Outcome]:
        """`submit`, each row's outcome as its code (what Ingest reports)."""
        return outcome_codes(self.submit(rows))

    def _loaded(self) -> StreamPipeline:
        if self._pipeline is None:
            pipeline = self.factory()
            try:
                pipeline.load()
            except StreamCannotLoad as exc:
                raise _cannot_run(exc) from exc
            self._pipeline = pipeline
        return self._pipeline

    def _write(self, rows: list[RawReading]) -> list[Any]:
        """Process the rows in one unit of work; on failure the pipeline is loaded again from the
        store before the next write (its in-memory state may be ahead of what was committed)."""
        try:
            pipeline = self._loaded()
            try:
                events = pipeline.process(rows)
            except StreamCannotLoad as exc:  # met on a reload after another writer's commit
                raise _cannot_run(exc) from exc
            return attribute(rows, events, pipeline.partition_count)
        except BaseException:
            self._pipeline = None
            raise


class QuietWindowWriter:
    """A thread that stores the closed windows a SerialPipeline holds back once no batch has come
    for `quiet` seconds, `limit` at a time: a fleet that stops sending does not leave its last
    windows waiting. `stop` stores all that are left."""

    def __init__(self, pipeline: SerialPipeline, limit: int | None, quiet: float = 0.1) -> None:
        self.pipeline = pipeline
        self.limit = limit
        self.quiet = quiet
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrify-held-windows", daemon=True)

    def start(self) -> QuietWindowWriter:
        self._thread.start()
        return self

    def _run(self) -> None:
        pipeline = self.pipeline
        while not self._stopping.wait(self.quiet):
            try:
                if pipeline.held_windows and time.monotonic() - pipeline.last_batch >= self.quiet:
                    pipeline.write_held_windows(self.limit)
            except Exception:  # the next batch loads the stream again and stores them
                log.warning("closed windows not stored between batches", exc_info=True)

    def stop(self) -> int:
        """Stop the thread, then store every window still waiting; the number stored."""
        self._stopping.set()
        self._thread.join()
        return self.pipeline.write_held_windows(None, wait=True)


def _cannot_run(exc: StreamCannotLoad) -> Unavailable:
    """The operator's to mend: say what, not a bare 500."""
    return Unavailable(f"ingest cannot run: {exc}", retry_after=60)


def attribute(rows: Sequence[RawReading], events: Sequence[Any], partitions: int) -> list[Any]:
    """Each row's outcome event: per partition, the outcome events come in the order of its rows."""
    if partitions == 1:  # the outcome events in order: one per row
        outcomes = [event for event in events if type(event) in _OUTCOME_KINDS]
        if len(outcomes) != len(rows):
            raise RuntimeError("the stream core returned another number of outcomes than readings")
        return outcomes
    waiting: list[deque[int]] = [deque() for _ in range(partitions)]
    for index, row in enumerate(rows):
        waiting[partition_for(normalise_meter_id(row.meter_id), partitions)].append(index)
    attributed: list[Any] = [None] * len(rows)
    for event in events:
        if type(event) in _OUTCOME_KINDS:
            attributed[waiting[event.partition].popleft()] = event
    if any(queue for queue in waiting):
        raise RuntimeError("the stream core returned fewer outcomes than readings")
    return attributed
