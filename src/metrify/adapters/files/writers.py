"""Writing files: exports as JSON lines or CSV, and the simulated fleet as CSV."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO, Any

import orjson

from metrify.application.exports import FIELDS, export_rows
from metrify.application.ports import ExportFilter, OutcomeQueries
from metrify.application.simulator import FleetProfile, fleet_rows


def _csv_value(value: Any) -> Any:
    return "" if value is None else value


def write_export(queries: OutcomeQueries, kind: str, where: ExportFilter, fmt: str, out: IO[str]) -> int:
    """Write one export kind; returns the number of rows."""
    count = 0
    rows = export_rows(queries, kind, where)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        fields = FIELDS[kind]
        writer.writerow(fields)
        for row in rows:
            writer.writerow([_csv_value(row[name]) for name in fields])
            count += 1
    else:
        buffer: list[str] = []
        for row in rows:
            buffer.append(orjson.dumps(row).decode())
            count += 1
            if len(buffer) >= 1000:
                out.write("\n".join(buffer) + "\n")
                buffer.clear()
        if buffer:
            out.write("\n".join(buffer) + "\n")
    out.flush()
    return count


def write_fleet_csv(path: Path, profile: FleetProfile) -> int:
    """Write the simulated fleet's rows (arrival order) to `path`, atomically; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    count = 0
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("meter_id", "timestamp", "consumption_kwh"))
        for row in fleet_rows(profile):
            writer.writerow(row)
            count += 1
    os.replace(temporary, path)
    return count
