"""Text holding NUL as PostgreSQL's writer is given it (adapters/sqlalchemy/pg_text.py): outcomes
with U+FFFD for each NUL, meter states keyed so that their ids come back exactly. No database:
the integration tests (test_nul_in_text.py) store the same rows in a real one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metrify.adapters.sqlalchemy.pg_text import meter_of_state_key, state_key
from metrify.adapters.sqlalchemy.sink import AGGREGATES, METER_STATES, READINGS, batch_rows
from metrify.application.outcomes import fold_events
from metrify.domain.stream.events import ReadingAccepted, WindowUpdated

T0 = 1_709_589_600_000_000
HOUR = 3_600_000_000


@given(st.text())
def test_a_state_key_gives_back_its_meter_id_exactly_and_holds_no_nul(meter_id: str) -> None:
    key = state_key(meter_id)
    assert meter_of_state_key(key) == meter_id and "\x00" not in key


@given(st.lists(st.text(), max_size=20, unique=True))
def test_distinct_meter_ids_get_distinct_state_keys(meter_ids: list[str]) -> None:
    assert len({state_key(m) for m in meter_ids}) == len(meter_ids)


@given(st.text().map(str.strip).filter(lambda m: m and "\x00" not in m))
def test_a_trimmed_id_without_nul_is_its_own_state_key(meter_id: str) -> None:
    """What every key stored before the rule is: such keys load as they always did."""
    assert state_key(meter_id) == meter_id


def test_rows_for_postgresql_hold_no_nul_and_sqlites_rows_keep_it() -> None:
    events = [
        ReadingAccepted("M\x00", T0, T0, 0.5, "ON_TIME", 0, None),
        ReadingAccepted("N", T0, T0, 0.5, "ON_TIME", 0, {"region": "n\x00rth"}),
        ReadingAccepted("M\ufffd", T0, T0, 0.75, "ON_TIME", 0, None),  # one key with the first, there
        WindowUpdated("M\x00", HOUR, T0, 1, 0.5, 0.5, 0.5),
        WindowUpdated("M\ufffd", HOUR, T0, 1, 0.75, 0.75, 0.75),
    ]
    saves = [("main", 0, T0, 3, {"M\x00": [1], "M\ufffd": [2]}, None, None)]
    exact = batch_rows(fold_events(events), saves, [], T0)
    held = batch_rows(fold_events(events), saves, [], T0, holds_nul=False)
    assert [r[0] for r in exact[READINGS]] == ["M\x00", "M\ufffd", "N"]
    assert [(r[0], r[3]) for r in held[READINGS]] == [("M\ufffd", 0.5), ("N", 0.5)]  # the first one wins
    assert held[READINGS][1][11] == "n\ufffdrth"
    assert held[AGGREGATES] == [WindowUpdated("M\ufffd", HOUR, T0, 1, 0.75, 0.75, 0.75)]  # the last one wins
    assert [meter_of_state_key(r[2]) for r in held[METER_STATES]] == ["M\x00", "M\ufffd"]
