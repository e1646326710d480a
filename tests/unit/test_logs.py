"""Process logging (entrypoints/logs.py): what a log shipper reads on stderr and in metrify.log."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from metrify.entrypoints.logs import configure_logging


def test_json_lines_carry_extra_fields_and_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    log_file = configure_logging("INFO", "json", tmp_path)
    log = logging.getLogger("metrify.test")
    log.warning("batch refused", extra={"meter_id": "M1", "readings": 3})
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("unexpected")
    for handler in logging.getLogger().handlers:
        handler.flush()
    for lines in (stderr.getvalue().splitlines(), log_file.read_text().splitlines()):
        refused, failed = (json.loads(line) for line in lines[-2:])
        assert refused["event"] == "batch refused" and (refused["meter_id"], refused["readings"]) == ("M1", 3)
        assert failed["event"] == "unexpected" and "ZeroDivisionError" in json.dumps(failed["exception"])
