"""Hypothesis strategies for arrival sequences that stress the stream contract (DESIGN §3).

`streams()` draws (rows, config, now_us, partitions). Rows are built step by step while a
small simulation tracks each partition's watermark, so that the sequence can aim at the exact
boundaries of the contract: t = W - L, a slot with s + G = W, a window whose end equals W,
timestamps half an interval off the grid, the future tolerance to the microsecond. Around them:
out-of-order and far-back arrivals, duplicates, silent meters, meter ids with surrounding
whitespace, and invalid rows of every reason (often invalid in several ways at once, to pin the
order of the checks). Small configs (a one-minute interval) let hypothesis explore densely.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from metrify.domain.readings import RawReading
from metrify.domain.stream.config import StreamConfig
from metrify.domain.stream.grammar import parse_timestamp
from metrify.domain.stream.partitioner import partition_for
from tests.support.reference import slot_of, trimmed_meter_id, validation_failure

US = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Late evening, so that streams with the default 30-minute interval cross a UTC day.
BASE_US = int((datetime(2024, 3, 4, 22, 0, tzinfo=UTC) - EPOCH).total_seconds()) * US


def _config(interval, grace, bound, lateness, max_kwh, future, ttl, windows) -> StreamConfig:
    return StreamConfig(
        interval=interval * US,
        gap_grace=grace * US,
        out_of_orderness=bound * US,
        allowed_lateness=lateness * US,
        max_kwh=max_kwh,
        future_tolerance=future * US,
        state_ttl=ttl * US,
        windows=tuple(w * US for w in windows),
    )


# The TTL always exceeds (largest window + L + 1.5 I): a meter silent that long has nothing a
# LATE reading could still touch, so pruning it must not change the outcome (§3.7).
CONFIGS = (
    _config(60, 30, 5, 120, 5.0, 60, 900, (60, 120, 600)),
    _config(60, 60, 0, 60, 5.0, 30, 600, (30, 180, 300)),  # windows shorter than I; G = I; B = 0
    _config(45, 45, 10, 300, 2.5, 120, 1600, (90, 900)),  # half an interval is 22.5 s
    _config(60, 0, 1, 0, 5.0, 60, 800, (60, 600)),  # G = 0; L = 0: nothing is LATE
    StreamConfig(),  # the defaults: 30 min, 15 min, 10 s, 1 h, 1000 kWh, 1 h, 7 d, 15m/1h/1d
)

METER_NAMES = ("M1", "M2", "M3", "M4", "MTR-1")  # with 3 partitions: M1, M4 -> 0; M2, M3 -> 1; MTR-1 -> 2
PADDING = ("", "", "", " ", "  ", "\t", " \n")

MISSING_IDS = (None, "", " ", "   ", "\t", " \n ")
BAD_TIMESTAMPS = (
    None,
    "",
    "abc",
    "2024-02-30T00:00:00",
    "2023-02-29T12:00:00Z",
    "2024-03-04T24:00:00",
    "2024-03-04T10:00:60Z",
    "2024-03-04T10:60:00",
    "0000-01-01T00:00:00",
    "2024-13-01T00:00:00",
    "2024-03-04T10:00:00+0100",
    "2024-03-04T10:00:00+01",
    "2024-03-04T10:00:00 Z",
    "2024-03-04T10:00:00.Z",
    "2024-03-04t10:00:00z",
    "2024-3-4T10:00:00",
    "2024-03-04T1:00:00",
    "2024-03-04",
    "1709546400",
    "1709546400000",
    "\u0662\u0660\u0662\u0664-03-04T10:00:00",  # non-ASCII digits
    True,
    float("nan"),
    float("inf"),
)
BAD_KWH = (
    None,
    "",
    " ",
    "abc",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1_0",
    "0x10",
    "0,5",
    ".",
    "e5",
    "1e",
    "1.2.3",
    "+-1",
    "\u0661",
    True,
    float("nan"),
)
NEGATIVE_KWH = ("-0.5", "-1e400", "-1e-9", " -2 ", -1, -0.25, "-.5", "-5.", -(10**400))


def _render_timestamp(draw, t: int) -> object:
    """A raw timestamp that the §3.1 grammar reads as t (give or take a float's rounding)."""
    dt = EPOCH + timedelta(microseconds=t)
    fraction = f"{t % US:06d}".rstrip("0")
    style = draw(st.sampled_from(("Z", "Z", "naive", "space", "offset", "long", "pad", "number")))
    if style == "number":
        if t % US == 0 and draw(st.booleans()):
            return t // US  # epoch seconds
        if t % 1000 == 0 and draw(st.booleans()):
            return t // 1000  # epoch milliseconds (above 10^11)
        return t / US  # float seconds
    if style == "offset":
        minutes = draw(st.sampled_from((60, -60, 330, -570, 0, 14 * 60, -12 * 60)))
        zone = timezone(timedelta(minutes=minutes))
        local = dt.astimezone(zone)
        sign = "+" if minutes >= 0 else "-"
        text = local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "")
        return text + f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    separator = " " if style == "space" else "T"
    text = dt.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
    if style == "long":
        text += f".{t % US:06d}" + draw(st.sampled_from(("0", "000", "4", "999")))
    elif fraction:
        text += f".{fraction}"
    if style in ("Z", "long", "pad"):
        text += "Z"
    if style == "pad":
        text = draw(st.sampled_from((" ", "\t", "  "))) + text + draw(st.sampled_from(("", " ", "\n")))
    return text


def _render_kwh(draw, config: StreamConfig) -> object:
    """A valid raw consumption in [0, max]."""
    style = draw(st.sampled_from(("text", "text", "number", "max", "special")))
    if style == "max":
        return draw(st.sampled_from((repr(config.max_kwh), config.max_kwh, f" {config.max_kwh} ")))
    if style == "special":
        return draw(st.sampled_from(("-0", "0", "+0.5", ".5", "1.", "2.5E-1", " 0.25 ", 0, -0.0, 1, "1e0")))
    cents = draw(st.integers(0, int(config.max_kwh * 100)))
    if style == "number":
        return cents / 100
    return f"{cents / 100}"


def _render_meter(draw, name: str) -> str:
    return draw(st.sampled_from(PADDING)) + name + draw(st.sampled_from(PADDING))


class _Simulation:
    """Tracks what the generator needs to aim at boundaries: W per partition, each meter's
    latest slot, the largest timestamp seen."""

    def __init__(self, config: StreamConfig, partitions: int, now_us: int) -> None:
        self.config, self.partitions, self.now_us = config, partitions, now_us
        self.watermark: dict[int, int] = {}
        self.valid_rows: list[RawReading] = []

    def observe(self, row: RawReading) -> None:
        if validation_failure(row, self.config, self.now_us) is not None:
            return
        t = parse_timestamp(row.timestamp)
        partition = partition_for(trimmed_meter_id(row.meter_id), self.partitions)
        w = t - self.config.out_of_orderness
        if partition not in self.watermark or w > self.watermark[partition]:
            self.watermark[partition] = w
        self.valid_rows.append(row)

    def w(self, meter: str) -> int | None:
        return self.watermark.get(partition_for(meter, self.partitions))


@st.composite
def streams(draw, partitions: int | None = None, max_rows: int = 40):
    """(rows, config, now_us, partitions): an arrival sequence aimed at the contract's edges."""
    config = draw(st.sampled_from(CONFIGS))
    parts = partitions if partitions is not None else draw(st.sampled_from((1, 1, 2, 3)))
    interval, bound = config.interval, config.out_of_orderness
    lateness, grace = config.allowed_lateness, config.gap_grace
    base = slot_of(BASE_US, interval)
    now_us = base + draw(st.integers(15, 90)) * interval + draw(st.sampled_from((0, 0, 1, US // 4)))
    meters = draw(st.lists(st.sampled_from(METER_NAMES), min_size=1, max_size=4, unique=True))
    cursor = {m: base + draw(st.integers(-2, 3)) * interval for m in meters}
    sim = _Simulation(config, parts, now_us)
    half = interval // 2
    jitters = st.one_of(
        st.sampled_from(
            (
                0,
                0,
                0,
                1,
                -1,
                US,
                -US,
                US // 4,
                -(US // 4),
                half,
                half - 1,
                -half,
                -half - 1,
                bound,
                grace + bound - interval,
                grace + bound,
            )
        ),
        st.integers(-half, half),
    )

    rows: list[RawReading] = []
    for _ in range(draw(st.integers(0, max_rows))):
        meter = draw(st.sampled_from(meters))
        w = sim.w(meter)
        kind = draw(
            st.sampled_from(
                ("next",) * 6
                + (
                    "late",
                    "late",
                    "w_minus_l",
                    "far_back",
                    "gap_edge",
                    "window_edge",
                    "repeat",
                    "same_slot",
                    "invalid",
                    "invalid",
                    "future",
                    "leap",
                    "ancient",
                )
            )
        )
        t: int | None = None
        if kind in ("late", "w_minus_l", "far_back") and w is None:
            kind = "next"
        if kind in ("repeat",) and not sim.valid_rows:
            kind = "next"

        if kind == "next":
            if w is not None and cursor[meter] < w - lateness and draw(st.booleans()):
                cursor[meter] = slot_of(w, interval)  # a silent meter speaks again
            cursor[meter] += draw(st.sampled_from((1, 1, 1, 1, 2, 3, 5, 0, -1))) * interval
            t = cursor[meter] + draw(jitters)
        elif kind == "late":
            t = w - draw(
                st.one_of(
                    st.integers(0, lateness + 2 * interval),
                    st.integers(0, (lateness + 2 * interval) // US).map(lambda s: s * US),
                )
            )
        elif kind == "w_minus_l":
            t = w - lateness + draw(st.sampled_from((0, 0, -1, 1, -US)))
        elif kind == "far_back":
            t = draw(st.sampled_from((w - lateness - interval, w - 10 * interval, 0, 86400 * US)))
        elif kind == "gap_edge":
            # Move W to exactly s + G for a slot s a few intervals after some meter's cursor.
            other = draw(st.sampled_from(meters))
            target = cursor[other] + draw(st.integers(1, 3)) * interval + grace
            t = target + bound + draw(st.sampled_from((0, 0, -1, 1)))
        elif kind == "window_edge":
            # Move W to exactly the end of a window (or a microsecond short of it).
            size = draw(st.sampled_from(config.windows))
            reference_point = max(cursor.values())
            end = (reference_point // size + draw(st.integers(0, 1))) * size
            t = end + bound + draw(st.sampled_from((0, 0, -1)))
        elif kind == "repeat":
            previous = draw(st.sampled_from(sim.valid_rows))
            row = (
                previous
                if draw(st.booleans())
                else previous._replace(meter_id=_render_meter(draw, trimmed_meter_id(previous.meter_id)))
            )
            rows.append(row)
            sim.observe(row)
            continue
        elif kind == "leap":
            # W jumps about a state TTL past some meter's last reading: pruning of silent
            # meters (§3.7) must not change the outcome.
            other = draw(st.sampled_from(meters))
            t = cursor[other] + config.state_ttl + bound + draw(st.sampled_from((0, -1, 1, interval, 3 * interval)))
            if t > now_us + config.future_tolerance:
                t = now_us + config.future_tolerance
            cursor[meter] = max(cursor[meter], slot_of(t, interval))
        elif kind == "ancient":
            # 1970: the first reading of a partition (ON_TIME, however old), else too late.
            t = draw(st.sampled_from((0, 86400 * US, 1_000_000_000 * US)))
        elif kind == "same_slot":
            t = cursor[meter] + draw(st.integers(-half, half - 1))
        elif kind == "future":
            t = now_us + config.future_tolerance + draw(st.sampled_from((1, 1, US, 3600 * US, 0, -US)))
        elif kind == "invalid":
            row = _invalid_row(draw, config, meter, now_us, cursor[meter])
            rows.append(row)
            sim.observe(row)
            continue

        row = RawReading(_render_meter(draw, meter), _render_timestamp(draw, t), _render_kwh(draw, config))
        rows.append(row)
        sim.observe(row)
    return rows, config, now_us, parts


def _invalid_row(draw, config: StreamConfig, meter: str, now_us: int, around: int) -> RawReading:
    """A row that fails §3.1; later fields are often invalid too, to pin the order of checks."""
    reason = draw(
        st.sampled_from(
            (
                "missing_meter_id",
                "invalid_timestamp",
                "future_timestamp",
                "invalid_consumption",
                "negative_consumption",
                "out_of_range",
            )
        )
    )
    good_ts = _render_timestamp(draw, around + draw(st.integers(-5, 5)) * US)
    future_ts = _render_timestamp(draw, now_us + config.future_tolerance + draw(st.sampled_from((1, US))))
    bad_ts = draw(st.sampled_from(BAD_TIMESTAMPS))
    bad_kwh = draw(st.sampled_from(BAD_KWH))
    negative = draw(st.sampled_from(NEGATIVE_KWH))
    too_big = draw(
        st.sampled_from(
            (
                "1e400",
                "1e9",
                float("inf"),
                10**400,
                config.max_kwh + 0.01,
                f"{config.max_kwh}1",
                config.max_kwh * 2,
            )
        )
    )
    any_kwh = st.sampled_from((bad_kwh, negative, too_big, _render_kwh(draw, config)))
    ident = _render_meter(draw, meter)
    if reason == "missing_meter_id":
        return RawReading(
            draw(st.sampled_from(MISSING_IDS)),
            draw(st.sampled_from((good_ts, bad_ts, future_ts))),
            draw(any_kwh),
        )
    if reason == "invalid_timestamp":
        return RawReading(ident, bad_ts, draw(any_kwh))
    if reason == "future_timestamp":
        return RawReading(ident, future_ts, draw(any_kwh))
    if reason == "invalid_consumption":
        return RawReading(ident, good_ts, bad_kwh)
    if reason == "negative_consumption":
        return RawReading(ident, good_ts, negative)
    return RawReading(ident, good_ts, too_big)
