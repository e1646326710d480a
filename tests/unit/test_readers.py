"""File sources: columns recognised by name, bad files refused in one line, rows kept raw."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.core_runner import run_core

from metrify.adapters.files.readers import FileReadingSource
from metrify.application.replay import SourceError
from metrify.domain.readings import RawReading
from metrify.domain.stream.config import US, StreamConfig


def test_london_smart_meter_columns_are_recognised(tmp_path: Path) -> None:
    path = tmp_path / "lcl.csv"
    path.write_text(
        "LCLid,stdorToU,DateTime,KWH/hh (per half hour) \n"
        "MAC000002,Std,2012-10-12 00:30:00.0000000, 0 \n"
        "MAC000002,Std,2012-10-12 01:00:00.0000000,Null\n"
    )
    rows = list(FileReadingSource(path))
    assert rows == [
        RawReading("MAC000002", "2012-10-12 00:30:00.0000000", " 0 "),
        RawReading("MAC000002", "2012-10-12 01:00:00.0000000", "Null"),
    ]


def test_kaggle_london_smart_meter_columns_are_recognised(tmp_path: Path) -> None:
    path = tmp_path / "halfhourly.csv"
    path.write_text("LCLid,tstp,energy(kWh/hh)\nMAC000002,2012-10-12 00:30:00.0000000,0.263 \n")
    assert list(FileReadingSource(path)) == [RawReading("MAC000002", "2012-10-12 00:30:00.0000000", "0.263 ")]


def test_columns_match_case_insensitively_and_extras_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("\ufeffMeterId,TIME,Energy_kWh,voltage,ignored\nM1,2024-01-01T00:00:00Z,1.5,230.1,x\nM2\n")
    rows = list(FileReadingSource(path))
    assert rows[0] == RawReading("M1", "2024-01-01T00:00:00Z", "1.5", {"voltage": "230.1"})
    assert rows[1] == RawReading("M2", None, None, None)


def test_json_lines_keep_numbers_and_strings_as_received(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    deep = '{"id": "M2", "time": ' + "[" * 900 + "]" * 900 + "}"  # too deep to read: a line of nothing
    path.write_text(
        '{"meter_id": "M1", "tstp": 1709510400, "kwh": 0.5}\n\nnot json\n[1]\n{"id": 7, "time": "x"}\n' + deep + "\n"
    )
    rows = list(FileReadingSource(path))
    assert rows == [
        RawReading("M1", 1709510400, 0.5),
        RawReading(None, None, None),
        RawReading(None, None, None),
        RawReading(7, "x", None),
        RawReading(None, None, None),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a,b\n1,2\n", "no recognisable meter id, timestamp, consumption column"),
        (b"meter_id,kwh\nM,1\n", "no recognisable timestamp column"),
        (b"", "is empty"),
        (b"meter_id,timestamp,kwh\nM\xff,x,1\n", "is not UTF-8"),
    ],
)
def test_a_file_that_cannot_be_replayed_is_refused_with_the_reason(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        FileReadingSource(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        FileReadingSource(tmp_path / "nope.csv")


def test_the_fingerprint_follows_the_content(tmp_path: Path) -> None:
    one, two = tmp_path / "a.csv", tmp_path / "b.csv"
    one.write_text("meter_id,timestamp,kwh\nM,2024-01-01T00:00:00Z,1\n")
    two.write_text("meter_id,timestamp,kwh\nM,2024-01-01T00:00:00Z,2\n")
    assert FileReadingSource(one).fingerprint != FileReadingSource(two).fingerprint
    two.write_text(one.read_text())
    assert FileReadingSource(one).fingerprint == FileReadingSource(two).fingerprint


def test_a_csv_field_of_any_length_is_read_as_it_came(tmp_path: Path) -> None:
    # csv's default limit (131,072 characters) raised, and the replay stopped on that row for good
    path = tmp_path / "long.csv"
    path.write_text("meter_id,timestamp,kwh\nA,2024-03-04T10:00:00Z,1\nA,2024-03-04T10:30:00Z," + "9" * 200_000 + "\n")
    rows = list(FileReadingSource(path))
    assert rows[1] == RawReading("A", "2024-03-04T10:30:00Z", "9" * 200_000)


def test_json_numbers_beyond_a_double_and_beyond_64_bits_are_kept_exactly(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"meter_id": "J1", "timestamp": "2024-03-04T11:00:00Z", "kwh": 1e400}\n'
        '{"meter_id": "J2", "timestamp": 100000000000000000000000, "kwh": NaN}\n'
        '{"meter_id": "\\ud800", "timestamp": 1, "kwh": 1}\n'  # not Unicode text: a line of nothing
    )
    first, second, third = FileReadingSource(path)
    assert first.meter_id == "J1" and first.consumption_kwh == float("inf")  # out_of_range, not a lost line
    assert second.timestamp == 10**23 and second.consumption_kwh != second.consumption_kwh
    assert third == RawReading(None, None, None)


def test_json_integers_of_more_digits_than_int_converts_are_numbers_however_large(tmp_path: Path) -> None:
    """Such a line was unreadable (a `missing_meter_id` of nothing): each is now a reading with
    the reason the contract gives a number that large, its raw values kept to the digit."""
    huge = "9" * 5000
    path = tmp_path / "x.jsonl"
    lines = [
        '{"meter_id": "L1", "timestamp": "2024-03-04T11:00:00Z", "kwh": HUGE}',
        '{"meter_id": "L2", "timestamp": "2024-03-04T11:00:00Z", "kwh": -HUGE}',
        '{"meter_id": "L3", "timestamp": HUGE, "kwh": 1}',
    ]
    path.write_text("\n".join(lines).replace("HUGE", huge) + "\n")
    exports = run_core(list(FileReadingSource(path)), StreamConfig(), now_us=2_000_000_000 * US)
    assert [(r["meter_id"], r["reason"]) for r in exports["rejected"]] == [
        ("L1", "out_of_range"),
        ("L2", "negative_consumption"),
        ("L3", "invalid_timestamp"),
    ]
    assert [str(r["consumption_kwh"]) for r in exports["rejected"][:2]] == [huge, "-" + huge]


def test_a_json_lines_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"meter_id": "A", "timestamp": "2024-03-04T10:00:00Z", "kwh": 1}\n')
    assert list(FileReadingSource(path)) == [RawReading("A", "2024-03-04T10:00:00Z", 1)]
