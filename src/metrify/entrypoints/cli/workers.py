"""`metrify replay --workers N`: the partitions of one replay shared among N processes.

Each worker reads the whole file and processes the rows of its partitions (partition p goes to
worker p mod N) on its own connection to the one database, committing its own position per
partition (see `run_replay`). The outcome is that of one process: a partition's outcome depends
only on the order of its own rows. A worker dies with this process (Linux: PR_SET_PDEATHSIG), so
a replay killed with SIGKILL leaves no worker writing behind it, and a new run resumes each
partition after its last commit, whatever the number of workers either run had.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queues
import signal
import sys
import time
from typing import Any

from metrify.application.replay import ReadingSource, ReplayOptions, ReplayReport, Tally, run_replay
from metrify.application.stream import ReplayedElsewhere, StreamCannotLoad
from metrify.entrypoints.cli.errors import UserError
from metrify.entrypoints.cli.render import ReplayProgress
from metrify.entrypoints.process import collect_young_rarely, freeze_startup_heap
from metrify.settings import Settings

PROGRESS_EVERY = 0.5  # seconds between a worker's progress reports


def owned_partitions(worker: int, workers: int, partitions: int) -> list[int]:
    return list(range(worker, partitions, workers))


def replay_in_workers(
    source: ReadingSource, options: ReplayOptions, settings: Settings, workers: int, progress: ReplayProgress
) -> ReplayReport:
    """Run the workers, show their combined progress, and return their combined report."""
    started = time.monotonic()
    # fork where it is safe and quick (Linux; nothing is connected yet), spawn elsewhere
    context: Any = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    if context.get_start_method() == "fork":
        import metrify.container  # noqa: F401 - loaded once here rather than once in every worker
    inbox: Any = context.Queue()
    processes = [
        context.Process(
            target=_work,
            args=(worker, workers, source, options, settings, inbox, os.getpid()),
            name=f"metrify-replay-{worker}",
            daemon=True,
        )
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    tallies: dict[int, Tally] = {}
    reports: dict[int, ReplayReport] = {}

    def take(message: tuple[str, int, Any]) -> None:
        kind, worker, payload = message
        if kind == "progress":
            tallies[worker] = payload
            progress.update(_merged(tallies.values()))
        elif kind == "done":
            reports[worker] = payload
            tallies[worker] = payload.tally
        elif kind == "refused":
            raise UserError(payload)
        elif kind == "stopped":
            raise UserError(payload, 1)
        else:
            raise UserError(f"replay worker {worker} failed: {payload}", 1)

    try:
        while len(reports) < workers:
            try:
                take(inbox.get(timeout=0.5))
            except queues.Empty:
                pass
            # checked on every pass: the others' progress keeps the queue busy
            gone = [w for w, process in enumerate(processes) if w not in reports and not process.is_alive()]
            if gone:
                settle = time.monotonic() + 1.0  # its last words may still be on their way
                while time.monotonic() < settle and any(w not in reports for w in gone):
                    try:
                        take(inbox.get(timeout=0.1))
                    except queues.Empty:
                        break
                for worker in gone:
                    if worker not in reports:
                        how = _how(processes[worker].exitcode)
                        raise UserError(f"replay worker {worker} stopped ({how})", 1)
    finally:
        for process in processes:
            if process.is_alive() and len(reports) < workers:
                process.terminate()  # its open transaction is rolled back with it
        for process in processes:
            process.join(timeout=30)
        inbox.close()
    return ReplayReport(
        _merged(report.tally for report in reports.values()),
        min(report.skipped_rows for report in reports.values()),
        all(report.already_done for report in reports.values()),
        time.monotonic() - started,
    )


def _merged(tallies: Any) -> Tally:
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return total


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit {exitcode}"


def _die_with(parent: int) -> None:
    """End this worker when the replay that started it ends, however it ends."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def _work(
    worker: int,
    workers: int,
    source: ReadingSource,
    options: ReplayOptions,
    settings: Settings,
    outbox: Any,
    parent: int,
) -> None:
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the replay's to handle: it stops the workers
    from metrify.container import build_container

    container = None
    try:
        container = build_container(settings)
        pipeline = container.stream_pipeline(partitions=options.partitions)
        freeze_startup_heap()  # what this worker built since the fork, as the replay froze the rest
        collect_young_rarely()
        last = 0.0

        def report_progress(tally: Tally) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                outbox.put(("progress", worker, tally.compacted(gaps=False)))

        owned = owned_partitions(worker, workers, options.partitions)
        report = run_replay(source, pipeline, options, report_progress, partitions=owned)
        report.tally = report.tally.compacted()
        outbox.put(("done", worker, report))
    except StreamCannotLoad as exc:
        outbox.put(("refused", worker, str(exc)))
    except ReplayedElsewhere as exc:
        outbox.put(("stopped", worker, str(exc)))
    except Exception as exc:  # said in one line by the replay; the log has the rest
        import logging

        logging.getLogger("metrify.replay").error(
            "replay worker %d failed", worker, exc_info=True, extra={"file_only": True}
        )
        outbox.put(("failed", worker, f"{type(exc).__name__}: {exc}"))
    finally:
        if container is not None:
            container.shutdown_resources()
