"""The fleet the ingest benchmarks feed (imported from the scripts' folder; the package's `src`
must be on the path): meters reporting every half hour, batch k holding one reading of each of
`size` of them for one interval, the meters taking turns."""

from __future__ import annotations

from typing import Any

from metrify.domain.stream.grammar import format_timestamp

T0 = 1_709_510_400  # 2024-03-04T00:00:00Z
INTERVAL = 1800


def fleet_batch(k: int, size: int, meters: int) -> list[dict[str, Any]]:
    """Batch k's readings, as the JSON body of an ingest request holds them."""
    groups = max(1, meters // size)
    group, step = k % groups, k // groups
    ts = format_timestamp((T0 + step * INTERVAL) * 1_000_000)
    return [
        {
            "meter_id": f"MTR-{group * size + i:06d}",
            "timestamp": ts,
            "consumption_kwh": round(0.05 + (i * 37 + k) % 100 / 100, 3),
            "voltage": 229.0 + (i % 5),
            "region": f"REGION-{i % 4 + 1}",
        }
        for i in range(size)
    ]
