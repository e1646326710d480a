"""The CLI never shows a traceback: one readable line, exit 2 for the user's input, 1 otherwise."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from metrify.entrypoints.cli import main
from metrify.entrypoints.cli.app import app


@pytest.fixture(autouse=True)
def embedded_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("METRIFY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("METRIFY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("METRIFY_LOG_FORMAT", "json")


@pytest.fixture(autouse=True)
def collector_thresholds_kept() -> Iterator[None]:
    """A replay run here sets the process's collector thresholds as a replay process's own
    (collect_young_rarely): the tests after it get CPython's back."""
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def assert_one_line(err: str) -> None:
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.startswith("metrify ")


def test_an_unknown_command_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2
    assert_one_line(err)
    assert "frobnicate" in err


def test_a_bad_option_value_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["replay", "x.csv", "--partitions", "zero"], capsys)
    assert code == 2
    assert_one_line(err)


def test_a_bad_setting_stops_any_command_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRIFY_STREAM__INTERVAL", "abc")
    code, _, err = run(["info"], capsys)
    assert code == 2
    assert_one_line(err)
    assert "METRIFY_STREAM__INTERVAL" in err


def test_a_missing_file_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(["replay", str(tmp_path / "nope.csv")], capsys)
    assert code == 2
    assert_one_line(err)
    assert "no such file" in err


def test_a_file_that_is_not_utf8_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("meter_id,timestamp,kwh\nM\xe9,2024-01-01T00:00:00Z,1\n".encode("latin-1"))
    code, _, err = run(["replay", str(path)], capsys)
    assert code == 2
    assert_one_line(err)
    assert "not UTF-8" in err


def test_a_file_without_recognisable_columns_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("a,b,c\n1,2,3\n")
    code, _, err = run(["replay", str(path)], capsys)
    assert code == 2
    assert_one_line(err)
    assert "no recognisable" in err


def test_a_bad_export_time_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["export", "readings", "--from", "yesterday"], capsys)
    assert code == 2
    assert_one_line(err)
    assert "--from" in err


def test_an_export_range_that_ends_before_it_starts_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(["export", "gaps", "--from", "2024-03-06", "--to", "2024-03-05T12:00:00Z"], capsys)
    assert code == 2
    assert_one_line(err)
    assert "not before --to" in err


def test_an_unexpected_error_is_one_line_naming_the_log_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    @app.command("explode-for-test", hidden=True)
    def explode() -> None:
        password = "Hunter2-Very-Secret"  # a local of a frame the traceback passes through
        raise RuntimeError(f"boom ({len(password)})")

    try:
        code, _, err = run(["explode-for-test"], capsys)
    finally:
        app.registered_commands = [c for c in app.registered_commands if c.name != "explode-for-test"]
    assert code == 1
    assert_one_line(err)
    log_file = tmp_path / "logs" / "metrify.log"
    assert str(log_file) in err
    logged = log_file.read_text()
    assert "boom" in logged and "explode" in logged  # the traceback is there ...
    assert "Hunter2-Very-Secret" not in logged  # ... but not its frames' local variables


def test_an_unknown_migration_revision_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["db", "upgrade", "nope"], capsys)
    assert code == 2
    assert_one_line(err)
    assert "nope" in err


def test_migrating_a_server_that_does_not_answer_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRIFY_DATABASE_URL", "postgresql+psycopg://metrify:x@127.0.0.1:1/metrify")
    code, _, err = run(["db", "upgrade"], capsys)
    assert code == 1
    assert_one_line(err)
    assert "database unreachable" in err and "unexpected" not in err


def test_debug_is_taken_after_the_command_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["db", "upgrade", "nope", "--debug"], capsys)
    assert code == 2 and "No such option" not in err


def test_a_replay_with_another_partition_count_than_the_stream_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "few.csv"
    source.write_text(
        "meter_id,timestamp,consumption_kwh\n" + "".join(f"M{m},2024-03-04T10:00:00Z,0.5\n" for m in range(20))
    )
    assert run(["replay", str(source), "--partitions", "2"], capsys)[0] == 0
    more = tmp_path / "more.csv"
    more.write_text("meter_id,timestamp,consumption_kwh\nM1,2024-03-04T10:30:00Z,0.5\n")
    code, _, err = run(["replay", str(more), "--partitions", "3"], capsys)
    assert code == 2
    assert_one_line(err)
    assert "cut into 2 partitions, not 3; use --partitions 2" in err


def test_a_replay_that_meets_another_run_of_itself_stops_in_one_line_with_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metrify.application.stream import REPLAYED_ELSEWHERE, ReplayedElsewhere
    from metrify.entrypoints.cli import stream

    def overtaken(*args: object, **kwargs: object) -> None:
        raise ReplayedElsewhere(REPLAYED_ELSEWHERE)

    monkeypatch.setattr(stream, "run_replay", overtaken)
    source = tmp_path / "one.csv"
    source.write_text("meter_id,timestamp,consumption_kwh\nM1,2024-03-04T10:00:00Z,0.5\n")
    code, _, err = run(["replay", str(source)], capsys)
    assert code == 1
    assert_one_line(err)
    assert "another run of this replay committed" in err


@pytest.mark.parametrize(
    "options",
    [
        ["--speed", "nan"],  # nan <= 0 is false: it ran unpaced without a word
        ["--speed", "1e-7"],  # its wait overflowed the platform's time
        ["--max-delay", "inf"],
        ["--max-delay", "1e303"],
    ],
)
def test_a_speed_or_delay_out_of_range_is_one_line_and_exit_2(
    options: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("meter_id,timestamp,kwh\nM1,2024-03-04T10:00:00Z,0.5\n")
    code, _, err = run(["replay", str(rows), *options, "--delay-prob", "1"], capsys)
    assert code == 2
    assert_one_line(err)


@pytest.mark.parametrize("value", ["9" * 310 + "ms", "9" * 400 + "us", "9" * 400 + "s", "9" * 400, "1000000w"])
def test_a_duration_setting_beyond_any_meter_s_is_one_line_and_exit_2(
    value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRIFY_STREAM__INTERVAL", value)  # was a traceback (OverflowError)
    code, _, err = run(["info"], capsys)
    assert code == 2
    assert_one_line(err)
    assert "METRIFY_STREAM__INTERVAL" in err


def test_a_pipe_is_refused_as_a_replay_s_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A replay reads its file more than once (format, fingerprint, rows): a pipe gave it nothing,
    and it reported 0 rows, success, and the source finished."""
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    code, _, err = run(["replay", str(fifo)], capsys)
    assert code == 2
    assert_one_line(err)
    assert "not a regular file" in err


def test_a_file_name_is_shown_as_it_is_not_as_markup(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "["
    folder.mkdir()
    rows = folder / "x].csv"  # `[/x]` in the path was a closing tag to rich: MarkupError on the second run
    rows.write_text("meter_id,timestamp,kwh\nM1,2024-03-04T10:00:00Z,0.5\n")
    named = tmp_path / "readings [final].csv"
    named.write_text(rows.read_text())
    for path in (rows, named):
        assert run(["replay", str(path)], capsys)[0] == 0
        code, out, _ = run(["replay", str(path)], capsys)
        assert code == 0 and str(path) in " ".join(out.split())
