"""Rendering for the terminal: a live progress bar (or periodic log lines) and the summary table."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from metrify.application.replay import ReplayReport, Tally

log = logging.getLogger("metrify.replay")


class ReplayProgress:
    """A rich progress line on a terminal; a log line every few seconds otherwise."""

    def __init__(self, name: str, every: float = 5.0) -> None:
        self.name = name
        self.every = every
        self.interactive = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last_log = self.started
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ReplayProgress:
        self.started = self.last_log = time.monotonic()
        if self.interactive:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                TextColumn("{task.fields[line]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(f"replaying {self.name}", total=None, line="")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, tally: Tally) -> None:
        now = time.monotonic()
        rate = tally.rows / max(now - self.started, 1e-9)
        accepted = sum(tally.accepted.values())
        rejected = sum(tally.rejected.values())
        if self._progress is not None and self._task is not None:
            line = (
                f"{tally.rows:,} rows  {rate:,.0f} rows/s  accepted {accepted:,}  rejected {rejected:,}  "
                f"too late {tally.too_late:,}  gaps {tally.gaps_seen:,}"
            )
            self._progress.update(self._task, line=line)
        elif now - self.last_log >= self.every:
            self.last_log = now
            log.info(
                "replay progress: %s rows, %.0f rows/s, %s accepted, %s rejected, %s too late",
                tally.rows,
                rate,
                accepted,
                rejected,
                tally.too_late,
            )


def print_summary(console: Console, name: str, report: ReplayReport) -> None:
    tally = report.tally
    rate = tally.rows / report.seconds if report.seconds > 0 else 0.0
    table = Table(title=f"replay of {escape(name)}: {tally.rows:,} rows in {report.seconds:.1f} s ({rate:,.0f} rows/s)")
    table.add_column("outcome")
    table.add_column("detail")
    table.add_column("count", justify="right")
    if report.skipped_rows:
        table.add_row(
            "resumed",
            "from this row of the file on (an earlier run committed the rows before)",
            f"{report.skipped_rows:,}",
        )
    for status in ("ON_TIME", "LATE"):
        table.add_row("accepted", status, f"{tally.accepted.get(status, 0):,}")
    for reason, count in sorted(tally.rejected.items()):
        table.add_row("rejected", reason, f"{count:,}")
    table.add_row("too late", "older than W - allowed lateness", f"{tally.too_late:,}")
    table.add_row("gaps", "open", f"{tally.gaps_open:,}")
    table.add_row("gaps", "closed", f"{tally.gaps_closed:,}")
    table.add_row("windows", "closed and emitted", f"{tally.windows_emitted:,}")
    console.print(table)
