"""Reading sources from files: CSV with a header, or JSON lines, rows in arrival order.

Columns are recognised by name, case-insensitively (DESIGN §3, stream-core issue): the first
name of each list that the header holds is used; extra columns are ignored.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metrify.adapters import json_text
from metrify.application.replay import SourceError
from metrify.domain.readings import RawReading

METER_COLUMNS = ("meter_id", "meterid", "id", "lclid")
TIME_COLUMNS = ("timestamp", "time", "datetime", "tstp")
# the last: the London data as the Kaggle "Smart meters in London" set spells it (LCLid, tstp, energy(kWh/hh))
CONSUMPTION_COLUMNS = (
    "consumption_kwh",
    "consumption",
    "kwh",
    "energy_kwh",
    "kwh/hh (per half hour)",
    "energy(kwh/hh)",
)
EXTRA_COLUMNS = ("voltage", "current", "power_kw", "power_factor", "frequency", "region")
_CHUNK = 1 << 20

# A field may be as long as it came: a row with a huge one is a rejected reading like any other
# malformed row. csv's default limit (131,072 characters) raised instead and stopped the replay.
csv.field_size_limit(2**31 - 1)


def _pick(names: list[str], candidates: tuple[str, ...]) -> int | None:
    lowered = [name.strip().lower() for name in names]
    for candidate in candidates:
        if candidate in lowered:
            return lowered.index(candidate)
    return None


class FileReadingSource:
    """A CSV or JSON-lines file. Opening it checks that it exists, is UTF-8 and has the columns,
    and fingerprints its content, so a replay can tell the same file from another one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.format = self._detect_format()
        self.fingerprint = self._check_and_fingerprint()
        if self.format == "csv":
            self._columns = self._csv_columns()

    def _detect_format(self) -> str:
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            raise SourceError(f"{self.path}: no such file") from None
        except OSError as exc:  # a folder on the way that may not be searched, a name too long
            raise SourceError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
        if stat.S_ISDIR(mode):
            raise SourceError(f"{self.path}: is a folder, not a file")
        if not stat.S_ISREG(mode):  # read once, a pipe would give the replay nothing to read
            raise SourceError(f"{self.path}: is not a regular file (a replay reads its file more than once)")
        if self.path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            return "jsonl"
        try:
            with self.path.open("rb") as handle:
                head = handle.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
        return "jsonl" if head.startswith(b"{") else "csv"

    def _check_and_fingerprint(self) -> str:
        digest = hashlib.sha256()
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        try:
            with self.path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError as exc:
                        raise SourceError(
                            f"{self.path}: is not UTF-8 text (bad byte at offset {offset + exc.start})"
                        ) from None
                    offset += len(chunk)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise SourceError(f"{self.path}: is not UTF-8 text (it ends inside a character)") from None
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
        return digest.hexdigest()

    def _open_text(self) -> io.TextIOWrapper:
        return open(self.path, encoding="utf-8-sig", newline="")  # noqa: SIM115

    def _csv_columns(self) -> tuple[int, int, int, list[tuple[str, int]]]:
        with self._open_text() as handle:
            header = next(csv.reader(handle), None)
        if not header:
            raise SourceError(f"{self.path}: is empty (a CSV file needs a header row)")
        meter, time, kwh = (_pick(header, c) for c in (METER_COLUMNS, TIME_COLUMNS, CONSUMPTION_COLUMNS))
        missing = [
            role for role, index in (("meter id", meter), ("timestamp", time), ("consumption", kwh)) if index is None
        ]
        if missing:
            raise SourceError(
                f"{self.path}: no recognisable {', '.join(missing)} column in the header "
                f"{', '.join(h.strip() for h in header)!s} (expected e.g. meter_id, timestamp, consumption_kwh)"
            )
        extras = [(name, index) for name in EXTRA_COLUMNS if (index := _pick(header, (name,))) is not None]
        return meter, time, kwh, extras  # type: ignore[return-value]

    def __iter__(self) -> Iterator[RawReading]:
        return self._read_csv() if self.format == "csv" else self._read_jsonl()

    def _read_csv(self) -> Iterator[RawReading]:
        meter, time, kwh, extras = self._columns
        width = max(meter, time, kwh, *(index for _, index in extras)) + 1
        new = tuple.__new__  # a RawReading from a ready tuple, without the NamedTuple's Python __new__
        with self._open_text() as handle:
            rows = csv.reader(handle)
            next(rows, None)
            for row in rows:
                if not row:
                    continue
                if len(row) < width:
                    row = row + [None] * (width - len(row))  # type: ignore[list-item]
                if extras:
                    extra = {name: row[index] for name, index in extras if row[index] not in (None, "")} or None
                else:
                    extra = None
                yield new(RawReading, (row[meter], row[time], row[kwh], extra, 0))

    def _read_jsonl(self) -> Iterator[RawReading]:
        with self.path.open("rb") as handle:
            first = True
            for line in handle:
                if first:
                    line = line.removeprefix(codecs.BOM_UTF8)  # as a CSV file's header may start
                    first = False
                if not line.strip():
                    continue
                yield reading_from_mapping(_loads_object(line))


def _loads_object(line: bytes) -> dict[str, Any]:
    """A line's JSON object, exactly (json_text); {} for any other line: a reading of nothing."""
    try:
        value = json_text.loads(line)
    except json_text.NotJson:
        return {}
    return value if isinstance(value, dict) else {}


def reading_from_mapping(item: dict[str, Any]) -> RawReading:
    """A raw reading from a JSON object, its keys matched case-insensitively like CSV columns."""
    lowered = {str(key).strip().lower(): value for key, value in item.items()}

    def first(candidates: tuple[str, ...]) -> Any:
        for candidate in candidates:
            if candidate in lowered:
                return lowered[candidate]
        return None

    extra = {name: lowered[name] for name in EXTRA_COLUMNS if lowered.get(name) is not None} or None
    return RawReading(first(METER_COLUMNS), first(TIME_COLUMNS), first(CONSUMPTION_COLUMNS), extra)
