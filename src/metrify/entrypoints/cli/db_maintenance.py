"""`metrify db partitions`, `db retention` and `db maintain`: time partitions and retention (issue 5)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from metrify.entrypoints.cli.app import console, db_app, state
from metrify.entrypoints.cli.errors import UserError

if TYPE_CHECKING:
    from metrify.application.storage import MaintenanceReport, PartitionInfo, RetentionPolicy

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(us: int | None) -> str:
    if us is None:
        return "…"
    try:
        moment = _EPOCH + timedelta(microseconds=us)
    except OverflowError:
        return str(us)
    if moment.hour == moment.minute == moment.second == moment.microsecond == 0:
        return f"{moment:%Y-%m-%d}"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def _bounds(p: PartitionInfo) -> tuple[str, str]:
    if p.kind == "default":
        return "DEFAULT", "(other times)"
    if p.kind in ("table", "rows"):
        return "…", "…" if p.upper is None else _moment(p.upper)
    return _moment(p.lower), _moment(p.upper)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _rows(p: PartitionInfo) -> str:
    if p.rows is None:
        return "compressed" if p.compressed else "?"
    return f"{p.rows:,}" if p.kind in ("table", "rows") else f"~{p.rows:,}"


def _policy() -> RetentionPolicy:
    return state.get_container().retention_policy()


def _storage() -> Any:
    from metrify.adapters.sqlalchemy.engine import create_engine_for
    from metrify.adapters.sqlalchemy.partitions import SqlAlchemyStorageMaintenance

    assert state.settings is not None
    return SqlAlchemyStorageMaintenance(create_engine_for(state.settings.resolved_database_url))


def _guarded(action: Callable[[], Any]) -> Any:
    """Database trouble as one line (exit 1), a schema maintenance cannot use as a user error."""
    from metrify.adapters.probes import describe_database_error
    from metrify.adapters.sqlalchemy.partitions import StorageLayoutError
    from metrify.application.ports import TransientStoreError

    try:
        return action()
    except StorageLayoutError as exc:
        raise UserError(str(exc)) from None
    except TransientStoreError as exc:
        cause = exc.__cause__
        reason = describe_database_error(cause) if cause is not None else None
        raise UserError(f"database unreachable: {reason or exc}", 1) from None
    except Exception as exc:
        reason = describe_database_error(exc)
        if reason is None:
            raise
        raise UserError(f"database error: {reason}", 1) from None


def _table(title: str, partitions: Sequence[PartitionInfo]) -> Table:
    """One line per partition: its name (without the schema when all share one; with the table
    when the name does not say it, as TimescaleDB's chunks), its bounds, rows and size."""
    schemas = {p.name.split(".", 1)[0] for p in partitions if "." in p.name}
    strip = len(schemas) == 1 and all("." in p.name for p in partitions)
    with_table = any(not p.name.split(".")[-1].startswith(p.table) for p in partitions)
    if strip and schemas:
        title += f" (schema {schemas.pop()})"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    if with_table:
        table.add_column("table", no_wrap=True)
    table.add_column("partition", no_wrap=True)
    table.add_column("from (UTC)", no_wrap=True)
    table.add_column("to", no_wrap=True)
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    for p in partitions:
        name = p.name.split(".", 1)[1] if strip else p.name
        table.add_row(*([p.table] if with_table else []), name, *_bounds(p), _rows(p), _size(p.bytes))
    return table


def _print_dropped(report: MaintenanceReport) -> None:
    from metrify.settings import format_duration

    keep = _policy().keep_seconds()
    sqlite = report.layout == "sqlite"
    for name, seconds in keep.items():
        cutoff = report.cutoffs.get(name)
        what = "rows before" if sqlite else "partitions ending by"
        rule = "kept forever" if cutoff is None else f"keep {format_duration(seconds)}: {what} {_moment(cutoff)} go"
        console.print(f"{name}: {rule}")
    verb = (
        ("would delete" if report.dry_run else "deleted") if sqlite else ("would drop" if report.dry_run else "dropped")
    )
    if not report.dropped:
        console.print(f"nothing to {'delete' if sqlite else 'drop'}{' (dry run)' if report.dry_run else ''}")
        return
    console.print(_table(verb, report.dropped))
    rows = sum(p.rows or 0 for p in report.dropped)
    if sqlite:
        console.print(f"{verb}: {rows:,} rows")
        return
    size = sum(p.bytes or 0 for p in report.dropped)
    console.print(f"{verb}: {len(report.dropped)} partition(s), ~{rows:,} rows, {_size(size)}")


def _print_created(created: Sequence[PartitionInfo]) -> None:
    console.print(f"created {len(created)} partition(s)")
    for p in created:
        console.print(f"  {p.name}  {_moment(p.lower)} .. {_moment(p.upper)}")


def _print_reordered(reordered: Sequence[PartitionInfo]) -> None:
    console.print(f"reordered {len(reordered)} partition(s)")
    for p in reordered:
        console.print(f"  {p.name}  {_moment(p.lower)} .. {_moment(p.upper)}")


def _warn_default(storage: Any) -> None:
    waiting = [p for p in storage.partitions() if p.kind == "default" and p.rows]
    for p in waiting:
        console.print(
            f"note: {p.name} holds ~{p.rows:,} rows; `metrify db partitions --create-ahead N` moves them "
            "into monthly partitions, which retention can then drop"
        )


def _now_us() -> int:
    return time.time_ns() // 1000


@db_app.command("partitions")
def db_partitions(
    create_ahead: Annotated[
        int | None,
        typer.Option(
            "--create-ahead",
            min=0,
            max=120,
            help="First create the partitions of the current and the next N months, and of every "
            "month with rows in a DEFAULT partition (the rows move there).",
        ),
    ] = None,
    reorder: Annotated[
        bool,
        typer.Option(
            "--reorder",
            help="First rewrite the readings and aggregates of months that are over in meter order, once "
            "(online; a meter's history then reads from a few pages).",
        ),
    ] = False,
    table: Annotated[str | None, typer.Option(help="Only this table (readings, rejected_readings, ...).")] = None,
) -> None:
    """List the time partitions of readings, rejected and too-late readings and aggregates."""
    storage = _storage()
    try:
        if create_ahead is not None:
            created = _guarded(lambda: storage.create_ahead(create_ahead, _now_us()))
            _print_created(created)
        if reorder:
            _print_reordered(_guarded(lambda: storage.reorder(_now_us())))
        layout = _guarded(storage.layout)
        partitions = _guarded(storage.partitions)
    finally:
        storage.engine.dispose()
    if table is not None:
        partitions = [p for p in partitions if p.table == table]
    title = {
        "native": "native monthly partitions",
        "timescaledb": "TimescaleDB chunks",
        "sqlite": "SQLite tables (no partitions: retention deletes rows)",
        "plain": "tables not partitioned (run `metrify db upgrade`)",
    }.get(layout, layout)
    console.print(_table(title, partitions))


@db_app.command("retention")
def db_retention(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be dropped.")] = False,
) -> None:
    """Apply the retention policy (METRIFY_STORAGE__RETENTION_*): drop whole partitions older than it."""
    from metrify.application.storage import run_storage_maintenance

    storage = _storage()
    try:
        report = _guarded(lambda: run_storage_maintenance(storage, _policy(), _now_us(), dry_run=dry_run))
        _print_dropped(report)
        if report.layout == "native":
            _guarded(lambda: _warn_default(storage))
    finally:
        storage.engine.dispose()


@db_app.command("maintain")
def db_maintain(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Create nothing, drop nothing; show the drops.")] = False,
) -> None:
    """The scheduled job: partitions ahead (METRIFY_STORAGE__PARTITION_MONTHS_AHEAD), retention, then
    the months that are over rewritten in meter order (once each)."""
    from metrify.application.storage import run_storage_maintenance

    assert state.settings is not None
    ahead = state.settings.storage.partition_months_ahead
    storage = _storage()
    try:
        report = _guarded(
            lambda: run_storage_maintenance(
                storage, _policy(), _now_us(), months_ahead=ahead, dry_run=dry_run, reorder=True
            )
        )
        _print_created(report.created)
        _print_dropped(report)
        if not dry_run:
            _print_reordered(report.reordered)
    finally:
        storage.engine.dispose()
