"""The parameters of the stream contract (DESIGN §3), in integer microseconds.

The core counts time in integer microseconds since the Unix epoch rather than float seconds, so
that every boundary of the contract (t = W - L is LATE, s + G = W is missing, end = W is closed)
is compared exactly, with no rounding error, whatever fraction of a second a timestamp carries.
"""

from __future__ import annotations

from dataclasses import dataclass

US = 1_000_000  # microseconds in a second


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Defaults: I = 30 min, G = 15 min, B = 10 s, L = 1 h, 1000 kWh, future 1 h, TTL 7 d, 15m/1h/1d."""

    interval: int = 1800 * US
    gap_grace: int = 900 * US
    out_of_orderness: int = 10 * US
    allowed_lateness: int = 3600 * US
    max_kwh: float = 1000.0
    future_tolerance: int = 3600 * US
    state_ttl: int = 7 * 86400 * US
    windows: tuple[int, ...] = (900 * US, 3600 * US, 86400 * US)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("the interval must be longer than zero")
        if not self.windows or min(self.windows) <= 0:
            raise ValueError("windows must be positive")
        for value in (self.gap_grace, self.out_of_orderness, self.allowed_lateness, self.future_tolerance):
            if value < 0:
                raise ValueError("durations cannot be negative")

    @classmethod
    def from_seconds(
        cls,
        *,
        interval: float,
        gap_grace: float,
        out_of_orderness: float,
        allowed_lateness: float,
        max_kwh: float,
        future_tolerance: float,
        state_ttl: float,
        windows: tuple[float, ...],
    ) -> StreamConfig:
        def us(seconds: float) -> int:
            return round(seconds * US)

        return cls(
            interval=us(interval),
            gap_grace=us(gap_grace),
            out_of_orderness=us(out_of_orderness),
            allowed_lateness=us(allowed_lateness),
            max_kwh=float(max_kwh),
            future_tolerance=us(future_tolerance),
            state_ttl=us(state_ttl),
            windows=tuple(us(w) for w in windows),
        )


def window_label(size_us: int) -> str:
    """The name of a window size as exports and the API spell it: `15m`, `1h`, `1d`."""
    seconds = size_us // US if size_us % US == 0 else None
    if seconds is None:
        return f"{size_us}us"
    for unit, length in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % length == 0:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"
