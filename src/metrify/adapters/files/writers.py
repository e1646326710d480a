"""Writing files: exports as JSON lines or CSV, and the simulated fleet as CSV."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import IO, Any

import orjson

from metrify.adapters import json_text
from metrify.application.exports import FIELDS, export_rows
from metrify.application.ports import ExportFilter, OutcomeQueries
from metrify.application.simulator import FleetProfile, fleet_rows
from metrify.domain.readings import LongInteger


def _csv_value(value: Any) -> Any:
    """A cell: numbers and text as they are, nothing as an empty cell, and a raw value that came as
    another JSON value (a rejected reading's `true`, `[1]`) as its JSON text, not Python's."""
    if value is None:
        return ""
    if type(value) is bool or isinstance(value, dict | list):
        return _json(value)
    return value


def _json(value: Any) -> str:
    """JSON text of a row or value. orjson, unless it holds what orjson cannot write: an integer
    beyond 64 bits or a lone surrogate (raw values of rejected readings, kept as received), which
    the standard library writes exactly (ASCII escapes). NaN and infinities are null either way."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json_text.dumps_exact(_finite(value))


def _finite(value: Any) -> Any:
    return json_text.map_leaves(value, _finite_number)


def _finite_number(value: Any) -> Any:
    if isinstance(value, float) and type(value) is not LongInteger:  # a LongInteger's digits are written
        return value if math.isfinite(value) else None
    return value


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
            buffer.append(_json(row))
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
