"""The API's stream writer process (METRIFY_API__STREAM_WRITER=process, embedded profile).

The API process reads, parses and admits each batch, then hands it to this process over a pipe;
the writer runs it through the stream core, journals it and sends the outcomes back, then stores
it while the API serves the next request (application/journaled.py says why nothing is lost).

The conversation, one batch at a time: the API sends a batch only once the writer has said it
is idle ("stored"), so a batch it sends is taken at once, and a writer stuck on an unreachable
database makes the API answer 503 without having handed anything over. When the writer stops in
the middle of a batch (killed, crashed), the API looks the batch up in the journal by the token it
sent with it: a batch journaled is answered with the outcomes kept beside it (the next writer
stores it before anything else), one that never got there goes to the next writer.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import pickle
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from metrify.application.errors import Unavailable
from metrify.application.journaled import JournaledWriter, WriterBroken
from metrify.application.ports import IngestJournal
from metrify.application.serial import BoundedBackoff, GroupCommit, Outcome, answer_outcomes
from metrify.application.stream import StreamCannotLoad, gc_paused
from metrify.domain.readings import RawReading
from metrify.settings import Settings

log = logging.getLogger("metrify.api")

_CLOSE = b"close"
_QUIET = 0.1  # seconds without a batch after which closed windows held back are stored
_STORE_WAIT = 5.0  # seconds the API waits for the writer to be idle before answering 503
_TAKE_WAIT = 120.0  # seconds a batch's core work and journaling may take before the writer is deemed stuck
_START_WAIT = 120.0  # seconds a starting writer may take to load the stream and store its journal


def encode_batch(token: str, rows: Sequence[RawReading]) -> bytes:
    """A batch as the journal keeps it. Pickle, because raw values are kept exactly as received
    (integers of any size, text with lone surrogates); the bytes only ever travel between this
    deployment's own processes and its own data folder. Rows as plain tuples: a NamedTuple
    pickles five times slower. A fleet's batch mostly shares its timestamps' texts (each meter
    reporting the same interval) yet parsing made one string per reading: each text goes in once,
    as one object that pickle refers back to (unpickling a batch of 1,000: 1.0 -> 0.55 ms, in the
    writer, which sets the pace; pickling it no slower)."""
    texts_seen: dict[str, str] = {}
    same = texts_seen.setdefault
    texts = [(m, same(ts, ts) if type(ts) is str else ts, kwh, extra, at) for m, ts, kwh, extra, at in rows]
    return pickle.dumps((token, texts), protocol=pickle.HIGHEST_PROTOCOL)


def decode_batch(payload: bytes) -> tuple[str, list[RawReading]]:
    token, rows = pickle.loads(payload)  # noqa: S301 - our own bytes (see encode_batch)
    new = tuple.__new__
    return token, [new(RawReading, row) for row in rows]


class AnotherWriter(Exception):
    """Another stream writer holds the journal (one that outlived its API, or another API's)."""


@contextmanager
def _sole_writer(path: Path, wait: float = 10.0) -> Iterator[None]:
    """Hold the journal's lock file while writing: a writer that outlived its API (still storing
    its last batch) finishes before the next one starts; one that does not within `wait` seconds
    is another API's, or stuck."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as lock:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise AnotherWriter(
                        f"another stream writer process holds {path}: another `metrify api` on this database, "
                        "or a writer still storing; stop it first"
                    ) from None
                time.sleep(0.05)
        yield


def serve(settings: Settings, conn: Connection) -> None:
    """The writer process: recover, say "ready", then take and store batches until told to close
    (or until the API's end of the pipe is gone)."""
    from metrify.container import build_container
    from metrify.entrypoints.logs import configure_logging
    from metrify.entrypoints.process import collect_young_rarely, freeze_startup_heap

    configure_logging(settings.log_level, settings.resolved_log_format, settings.data_dir)
    # Ctrl-C or a SIGTERM to the whole process group is the API's to handle: it tells this process
    # to close (or goes away, which closes the pipe), and this one stores what it took first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    container = build_container(settings)
    limit = settings.api.window_writes_per_batch or None
    try:
        with _sole_writer(settings.ingest_journal_path.with_name(settings.ingest_journal_path.name + ".lock")):
            # A start that cannot reach the database gives up within seconds (the API answers 503
            # and tries again with a later batch); a batch answered is stored however long it takes.
            pipeline = container.stream_pipeline(backoff=BoundedBackoff(), window_writes=limit)
            writer = JournaledWriter(
                pipeline, container.ingest_journal(), decode_batch, settings.api.state_save_batches
            )
            try:
                replayed = writer.recover()
                pipeline.backoff = container.backoff()
            except Exception as exc:  # noqa: BLE001 - told to the API, which answers 503 with it
                if isinstance(exc, Unavailable):  # the database is away: soon again
                    failed = ("failed", str(exc), exc.retry_after)
                elif isinstance(exc, StreamCannotLoad):  # the operator's to mend
                    failed = ("failed", f"ingest cannot run: {exc}", 60)
                else:  # the details are for the log, not for a client
                    log.error("the stream writer could not load the stream", exc_info=exc)
                    failed = (
                        "failed",
                        "ingest cannot run: the stream writer could not load the stream (see the log)",
                        60,
                    )
                log.warning(
                    "the stream writer could not load the stream: %s (ingest journal: %s)",
                    failed[1],
                    settings.ingest_journal_path,
                )
                conn.send(failed)
                return
            freeze_startup_heap()
            collect_young_rarely()
            conn.send(("ready", len(replayed)))
            _serve_batches(writer, conn, limit)
    except AnotherWriter as exc:
        log.warning("%s", exc)
        conn.send(("failed", f"ingest cannot run: {exc}", 5))
    except (BrokenPipeError, EOFError, ConnectionResetError):
        log.warning("the API went away in the middle of a batch: its journal is stored by the next writer")
        raise SystemExit(1) from None
    except Exception:  # the API starts another writer; the journal holds what this one answered
        log.exception("the stream writer stopped on an error")
        raise SystemExit(1) from None
    finally:
        container.shutdown_resources()


def _serve_batches(writer: JournaledWriter, conn: Connection, limit: int | None) -> None:
    held = writer.pipeline.window_writes is not None
    while True:
        if not conn.poll(_QUIET):
            _use_quiet_moment(writer, held, limit)
            continue
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):  # the API is gone: store what is taken, then stop
            break
        if payload == _CLOSE:
            break
        with gc_paused():
            try:
                token, outcomes = writer.take(payload)
            except WriterBroken:
                raise  # the API starts another, which loads the stream afresh
            except Exception as exc:  # noqa: BLE001 - that batch fails alone, as it would in the API
                log.exception("a batch failed in the stream core")
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
                continue
            conn.send_bytes(pickle.dumps(("taken", token, outcomes), protocol=pickle.HIGHEST_PROTOCOL))
            _store(writer)
        conn.send(("stored",))
    writer.close()


def _use_quiet_moment(writer: JournaledWriter, held: bool, limit: int | None) -> None:
    """The stream being quiet: store some closed windows held back (when holding), then save the
    meter states the batches since the last save changed. Each within a second or not at all: the
    API may send the next batch at any moment. On failure the stream is loaded again: the windows
    wait in the meters' states (queued again by the load), the batches behind the saved states in
    the journal (a load catches up with them and saves the states)."""
    try:
        if held:
            writer.write_held_windows(limit, BoundedBackoff(budget=1.0))
        writer.save_states(BoundedBackoff(budget=1.0))
    except Exception as exc:  # noqa: BLE001 - nothing is lost: see above
        log.warning("closed windows held back or meter states not stored while the stream was quiet: %s", exc)
        writer.recover()


def _store(writer: JournaledWriter) -> None:
    """Store the batch just answered; a failure leaves it in the journal, and loading the stream
    again stores it from there (a writer that cannot do even that stops: the API starts another)."""
    try:
        writer.store()
    except Exception:
        log.exception("a batch answered was not stored: storing it again from the journal")
        writer.recover()


class WriterConfused(Exception):
    """The writer said something else than the conversation expects: it is ended as if it had
    stopped (what it journaled is answered from the journal)."""


class StreamWriterProcess(GroupCommit):
    """The API's side: starts the writer, hands it batches one at a time, and starts it again
    when it stops. Requests that arrive meanwhile go over together as one batch (GroupCommit);
    `submit` and `outcomes` return each row's outcome code."""

    def __init__(self, settings: Settings, journal: Callable[[], IngestJournal]) -> None:
        super().__init__()
        self.settings = settings
        self.journal = journal  # read when a writer stopped in the middle of a batch
        self._process: Any = None
        self._conn: Connection | None = None
        self._idle = False  # the writer said "stored" (or "ready") since the last batch sent
        # the last start's failure: until when it stands, what it says, the wait it suggests
        self._failure: tuple[float, str, int] | None = None

    @property
    def loaded(self) -> bool:
        """Whether a writer is running and has loaded the stream."""
        process = self._process
        return self._conn is not None and process is not None and process.is_alive()

    @property
    def pid(self) -> int | None:
        """The writer's process id, while one runs."""
        process = self._process
        return None if process is None else process.pid

    def load(self) -> None:
        """Start the writer (if none runs) and wait until it has loaded the stream."""
        with self._writer:
            self._started()

    def outcomes(self, rows: Sequence[RawReading]) -> list[Outcome]:
        return self.submit(rows)

    def _write(self, rows: list[RawReading]) -> list[Outcome]:
        token = uuid.uuid4().hex
        payload = encode_batch(token, rows)
        for _ in range(2):
            conn = self._started()
            try:
                return self._hand_over(conn, token, payload)
            except (EOFError, OSError, TimeoutError, WriterConfused) as exc:
                log.warning("the stream writer stopped (%s): starting another", exc or type(exc).__name__)
                self._stop_writer()
            # Journaled before it stopped: answered from the journal (the next writer stores it
            # from there). Else it never got there, and goes to the next writer.
            answered = self.journal().answer_to(token)
            if answered is not None:
                return answer_outcomes(answered)
        raise Unavailable("the stream writer stopped twice in a row: see the log")

    def _hand_over(self, conn: Connection, token: str, payload: bytes) -> list[Outcome]:
        self._wait_idle(conn)
        conn.send_bytes(payload)
        self._idle = False
        return self._taken(conn, token)

    def stop(self) -> None:
        """Let the writer store what it took and the windows it holds back, then end it."""
        with self._writer:
            conn, process = self._conn, self._process
            if conn is None or process is None:
                return
            try:
                conn.send_bytes(_CLOSE)
            except OSError:
                pass  # already gone: its journal is stored by the next start
            process.join(_START_WAIT)
            self._stop_writer()

    def _started(self) -> Connection:
        if self.loaded:
            assert self._conn is not None
            return self._conn
        if self._failure is not None and time.monotonic() < self._failure[0]:
            raise Unavailable(self._failure[1], retry_after=self._failure[2])
        self._failure = None
        self._stop_writer()
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(target=serve, args=(self.settings, theirs), name="metrify-stream-writer", daemon=True)
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        try:
            if not ours.poll(_START_WAIT):
                raise TimeoutError("the stream writer did not start")
            message = ours.recv()
        except (EOFError, OSError, TimeoutError) as exc:
            self._stop_writer()
            raise Unavailable(f"the stream writer did not start: {exc}") from exc
        if message[0] == "failed":
            self._stop_writer()
            # told to every batch until then: not a process started and failed per request
            self._failure = (time.monotonic() + message[2], message[1], message[2])
            raise Unavailable(message[1], retry_after=message[2])
        self._idle = True
        return ours

    def _wait_idle(self, conn: Connection) -> None:
        """Until the writer has stored the batch before: 503 if it takes longer than _STORE_WAIT
        (the database does not answer), with nothing handed over."""
        if self._idle:
            return
        if not conn.poll(_STORE_WAIT):
            raise Unavailable("the database does not answer: the stream writer is still storing the batch before")
        message = conn.recv()
        if message[0] != "stored":
            raise WriterConfused(f"the stream writer said {message[0]!r}, not 'stored'")
        self._idle = True

    def _taken(self, conn: Connection, token: str) -> list[Outcome]:
        if not conn.poll(_TAKE_WAIT):
            raise TimeoutError("the stream writer did not answer")
        message = pickle.loads(conn.recv_bytes())  # noqa: S301 - our own writer's answer
        if message[0] == "error":
            self._idle = True  # nothing taken: the writer waits for the next batch
            raise RuntimeError(f"the stream writer failed the batch: {message[1]}")
        if message[0] != "taken" or message[1] != token:
            raise WriterConfused(f"the stream writer answered {message[0]!r} for another batch")
        return list(message[2])

    def _stop_writer(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        self._idle = False
        if conn is not None:
            conn.close()
        if process is not None:
            if process.is_alive():
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join()
