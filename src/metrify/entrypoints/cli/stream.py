"""`metrify replay`, `export` and `demo`: the embedded stream pipeline from the command line."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from metrify.application.exports import EXPORT_KINDS
from metrify.application.network import NetworkProfile
from metrify.application.replay import ReplayOptions, SourceError, run_replay
from metrify.application.stream import ReplayedElsewhere, StreamCannotLoad
from metrify.entrypoints.cli.app import app, console, state
from metrify.entrypoints.cli.errors import UserError
from metrify.entrypoints.cli.render import ReplayProgress, print_summary
from metrify.entrypoints.process import collect_young_rarely, freeze_startup_heap


class ExportKind(StrEnum):
    readings = "readings"
    rejected = "rejected"
    late = "late"
    gaps = "gaps"
    aggregates = "aggregates"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


def _probability(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter("must be between 0 and 1")
    return value


def _speed(value: float | None) -> float | None:
    if value is not None and not 0.001 <= value <= 1e9:  # nan included
        raise typer.BadParameter("must be between 0.001 and 1e9 (times real time)")
    return value


def _seconds(value: float) -> float:
    if not 0 <= value <= 31_536_000:  # nan included
        raise typer.BadParameter("must be between 0 and 31536000 (a year)")
    return value


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="CSV (with a header) or JSON-lines file; rows in arrival order.")],
    partitions: Annotated[
        int | None, typer.Option(min=1, max=10_000, help="Logical partitions (default METRIFY_STREAM__PARTITIONS).")
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(callback=_speed, help="Pace by event time at X times real time (default: as fast as it can)."),
    ] = None,
    delay_prob: Annotated[float, typer.Option(callback=_probability, help="Share of rows the network delays.")] = 0.0,
    max_delay: Annotated[
        float, typer.Option(callback=_seconds, help="Longest network delay, in seconds of event time.")
    ] = 300.0,
    drop_prob: Annotated[float, typer.Option(callback=_probability, help="Share of rows the network loses.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the simulated network (same seed, same arrivals).")] = 0,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, max=1_000_000, help="Rows per transaction (default METRIFY_STREAM__BATCH_SIZE)."),
    ] = None,
    to_kafka: Annotated[
        bool,
        typer.Option(
            "--to-kafka",
            help="Produce the rows to the Kafka raw topic instead (workers process them); "
            "a second run produces them all again.",
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=256, help="Processes sharing the partitions (at most --partitions; default 1, this process)."
        ),
    ] = 1,
) -> None:
    """Run FILE through the stream core and store every outcome; a second run resumes or continues
    (with --to-kafka: produces every row again)."""
    settings = state.settings
    assert settings is not None
    options = ReplayOptions(
        partitions=partitions or settings.stream.partitions,
        speed=speed,
        network=NetworkProfile(delay_prob=delay_prob, max_delay=max_delay, drop_prob=drop_prob, seed=seed),
        batch_size=batch_size or settings.stream.batch_size,
    )
    if workers > 1:
        if workers > options.partitions:
            raise UserError(f"--workers {workers} needs at least {workers} partitions (--partitions)")
        if to_kafka or speed is not None:
            raise UserError("--workers goes with neither --to-kafka nor --speed")
    if to_kafka:
        from metrify.entrypoints.cli.kafka import replay_to_kafka

        replay_to_kafka(file, options, partitions_given=partitions is not None)
        return
    _replay_file(file, options, workers)


def _replay_file(file: Path, options: ReplayOptions, workers: int = 1) -> None:
    from metrify.adapters.files.readers import FileReadingSource

    try:
        source = FileReadingSource(file)
    except SourceError as exc:
        raise UserError(str(exc)) from None
    _ensure_schema()
    progress = ReplayProgress(file.name)
    try:
        with progress:
            if workers > 1:
                from metrify.entrypoints.cli.workers import replay_in_workers

                assert state.settings is not None
                freeze_startup_heap()  # before the workers are forked: theirs too (gc.freeze's own advice)
                report = replay_in_workers(source, options, state.settings, workers, progress)
            else:
                pipeline = state.get_container().stream_pipeline(partitions=options.partitions)
                freeze_startup_heap()  # full collections would walk start-up's objects in every batch
                collect_young_rarely()
                report = run_replay(source, pipeline, options, on_batch=progress.update)
    except StreamCannotLoad as exc:
        raise UserError(str(exc)) from None
    except ReplayedElsewhere as exc:
        raise UserError(str(exc), 1) from None
    if report.already_done:
        done = f"{file} was already replayed into this database ({report.skipped_rows} rows); nothing to do."
        console.print(escape(done))
        return
    print_summary(console, file.name, report)


@app.command()
def export(
    kind: Annotated[ExportKind, typer.Argument(help="readings, rejected, late, gaps or aggregates.")],
    window: Annotated[str | None, typer.Option(help="Aggregates of one window size only: 15m, 1h, 1d.")] = None,
    meter: Annotated[str | None, typer.Option(help="Only this meter.")] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="From this time (inclusive), e.g. 2024-03-04T00:00:00Z.")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="Up to this time (exclusive).")] = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl or csv.")] = ExportFormat.jsonl,
    output: Annotated[str, typer.Option(help="File to write, or - for standard output.")] = "-",
) -> None:
    """Write stored outcomes, ordered by meter then time, with UTC timestamps."""
    from metrify.adapters.files.writers import write_export
    from metrify.application.ports import ExportFilter
    from metrify.domain.readings import normalise_meter_id
    from metrify.domain.stream.grammar import parse_timestamp_text
    from metrify.settings import format_duration, parse_duration

    def when(value: str | None, name: str) -> int | None:
        if value is None:
            return None
        text = value.strip()
        # a bare date is that day's midnight, UTC (`--from 2024-03-04 --to 2024-03-05`: one day)
        parsed = parse_timestamp_text(f"{text}T00:00:00Z" if len(text) == 10 else text)
        if parsed is None:
            raise UserError(f"{name} {value!r} is not a timestamp like 2024-03-04T10:00:00Z or a date like 2024-03-04")
        return parsed

    window_us = None
    if window is not None:
        if kind is not ExportKind.aggregates:
            raise UserError("--window applies to the aggregates export only")
        try:
            window_us = round(parse_duration(window) * 1_000_000)
        except ValueError:
            raise UserError(f"--window {window!r} is not a window size like 15m, 1h or 1d") from None
        assert state.settings is not None
        configured = [round(w * 1_000_000) for w in state.settings.stream.windows]
        if window_us not in configured:
            names = ", ".join(format_duration(w) for w in state.settings.stream.windows)
            raise UserError(f"--window {window} is not one of the configured windows ({names})")
    meter = None if meter is None else normalise_meter_id(meter)  # ids are trimmed, as everywhere
    where = ExportFilter(meter_id=meter, start=when(start, "--from"), end=when(end, "--to"), window=window_us)
    if where.start is not None and where.end is not None and where.start >= where.end:
        raise UserError(f"--from {start} is not before --to {end}: nothing lies between them")
    _ensure_schema(create=False)
    queries = state.get_container().outcome_queries()
    assert kind.value in EXPORT_KINDS
    if output == "-":
        write_export(queries, kind.value, where, fmt.value, sys.stdout)
        return
    try:
        with open(output, "w", encoding="utf-8", newline="") as handle:
            count = write_export(queries, kind.value, where, fmt.value, handle)
    except OSError as exc:
        raise UserError(f"{output}: cannot be written ({exc.strerror or exc})") from None
    print(f"wrote {count} {kind.value} rows to {output}", file=sys.stderr)


@app.command()
def demo(
    meters: Annotated[int, typer.Option(min=1, max=100_000, help="Meters in the simulated fleet.")] = 300,
    days: Annotated[int, typer.Option(min=1, max=366, help="Days of half-hourly readings.")] = 7,
    seed: Annotated[int, typer.Option(help="Seed of the simulated fleet.")] = 7,
) -> None:
    """Write a realistic seeded fleet into the data folder, replay it, and show what came out."""
    from metrify.adapters.files.writers import write_fleet_csv
    from metrify.application.simulator import FleetProfile

    assert state.settings is not None
    profile = FleetProfile(meters=meters, days=days, seed=seed)
    path = state.settings.data_dir / "demo" / f"fleet-{meters}m-{days}d-seed{seed}.csv"
    rows = write_fleet_csv(path, profile)
    console.print(escape(f"wrote {rows:,} readings from {meters} meters over {days} days to {path}"))
    _replay_file(path, ReplayOptions(partitions=state.settings.stream.partitions))
    console.print(
        "\nTry next:\n"
        "  metrify export gaps | head            # missing intervals, open and closed\n"
        "  metrify export aggregates --window 1h --meter MTR-00001 --format csv\n"
        "  metrify export rejected | head        # every reject with its reason\n"
        "  metrify info                          # profile, adapters and services"
    )


def _ensure_schema(create: bool = True) -> None:
    """Replays bring the schema up to date themselves; exports need one that exists."""
    from metrify.adapters.probes import describe_database_error
    from metrify.adapters.sqlalchemy import migrations

    assert state.settings is not None
    url = state.settings.resolved_database_url
    try:
        current = migrations.current(url)
        if current != migrations.HEAD:
            if not create:
                if current is None:
                    raise UserError("the database is empty: run `metrify replay FILE` or `metrify db upgrade` first")
                raise UserError("the database schema is behind: run `metrify db upgrade`")
            migrations.upgrade(url, "head")
    except UserError:
        raise
    except Exception as exc:
        reason = describe_database_error(exc)
        if reason is None:
            raise
        raise UserError(f"database unreachable: {reason}", 1) from None
