"""The yardstick for bench_kafka_worker.py: Metrify's stream pipeline written with Quix Streams 3,
the Python stream framework a user would pick instead, run on the same raw topic.

Same steps as the worker: validate (Metrify's own grammar functions, so parsing costs the same),
reject duplicates per (meter, slot), classify lateness against the event-time watermark
(ON_TIME / LATE / TOO_LATE), 15m / 1h / 1d tumbling windows (count, sum, min, max) by event time
with the allowed lateness as grace, outputs to topics, exactly-once (Quix's Kafka transactions,
RocksDB state with changelog topics). It runs in its own virtualenv (quixstreams 3 pins
confluent-kafka < 2.13); bench_kafka_worker.py creates that venv and calls this script.

    <quix venv>/bin/python benchmarks/bench_kafka_quix.py --bootstrap HOST:PORT --topic RAW \
        --prefix OUT_PREFIX --expect N [--state-dir DIR]

Prints one JSON line: {"records": n, "seconds": first message to the end of the final commit,
"cpu_seconds": the process's CPU time (all threads) over the same span}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from metrify.domain.stream.grammar import parse_consumption, parse_timestamp  # noqa: E402  (pure stdlib)

US = 1_000_000
INTERVAL = 1800 * US
BOUND = 10 * US
LATENESS = 3600 * US
FUTURE = 3600 * US
MAX_KWH = 1000.0
KEEP_SLOTS = (LATENESS + BOUND) // INTERVAL + 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--timeout", type=float, default=60.0, help="stop after this long without input")
    args = parser.parse_args()

    from quixstreams import Application
    from quixstreams.dataframe.windows import Count, Max, Min, Sum
    from quixstreams.state import State

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"{args.prefix}quix",
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    started: list[float] = []
    processed = [0]
    now_us = time.time_ns() // 1000

    def event_time(value: object, _headers: object, timestamp: int, _kind: object) -> int:
        t = parse_timestamp(value.get("timestamp")) if isinstance(value, dict) else None
        # Rows the validation rejects keep the broker's timestamp (a 2099 one would be refused).
        return t // 1000 if t is not None and 0 <= t <= now_us + FUTURE else timestamp

    raw = app.topic(args.topic, value_deserializer="json", key_deserializer="str", timestamp_extractor=event_time)
    out = {name: app.topic(args.prefix + name, value_serializer="json") for name in ("readings", "rejected", "late")}
    aggregates = app.topic(args.prefix + "aggregates", value_serializer="json")

    def validate(value: dict) -> dict:
        if not started:
            started.append(time.monotonic())
            started.append(time.process_time())
        processed[0] += 1
        if processed[0] == args.expect:
            app.stop()  # after this message; the final checkpoint (transaction) is committed
        meter = (value.get("meter_id") or "").strip() if isinstance(value.get("meter_id"), str) else ""
        t = parse_timestamp(value.get("timestamp"))
        kwh = parse_consumption(value.get("consumption_kwh"))
        reason = None
        if not meter:
            reason = "missing_meter_id"
        elif t is None:
            reason = "invalid_timestamp"
        elif t > now_us + FUTURE:
            reason = "future_timestamp"
        elif kwh is None:
            reason = "invalid_consumption"
        elif kwh < 0:
            reason = "negative_consumption"
        elif kwh > MAX_KWH:
            reason = "out_of_range"
        return {"meter_id": meter, "t": t, "kwh": kwh, "reason": reason}

    def classify(value: dict, state: State) -> dict:
        """Lateness against the watermark (largest valid time - B), then duplicates per slot."""
        t = value["t"]
        top = state.get("max", None)
        watermark = -(1 << 62) if top is None else top - BOUND
        if t >= watermark:
            status = "ON_TIME"
        elif t >= watermark - LATENESS:
            status = "LATE"
        else:
            value["status"] = "TOO_LATE"
            return value
        slot = (2 * t + INTERVAL) // (2 * INTERVAL) * INTERVAL
        slots = state.get("slots", [])
        if slot in slots:
            status = "DUPLICATE"
        else:
            slots.append(slot)
            state.set("slots", slots[-KEEP_SLOTS:])
        if top is None or t > top:
            state.set("max", t)
        value["status"] = status
        return value

    sdf = app.dataframe(raw)
    sdf = sdf.apply(validate)
    sdf.filter(lambda v: v["reason"] is not None).to_topic(out["rejected"])
    valid = sdf.filter(lambda v: v["reason"] is None).apply(classify, stateful=True)
    valid.filter(lambda v: v["status"] == "TOO_LATE").to_topic(out["late"])
    valid.filter(lambda v: v["status"] == "DUPLICATE").to_topic(out["rejected"])
    accepted = valid.filter(lambda v: v["status"] in ("ON_TIME", "LATE"))
    accepted.to_topic(out["readings"])
    for seconds in (900, 3600, 86400):
        (
            accepted.tumbling_window(timedelta(seconds=seconds), grace_ms=timedelta(hours=1), name=f"w{seconds}")
            .agg(count=Count(), sum=Sum("kwh"), min=Min("kwh"), max=Max("kwh"))
            .final()
            .to_topic(aggregates)
        )
    app.run(timeout=args.timeout)  # stopped by validate() at the last input (timeout: input went missing)
    ended, ended_cpu = time.monotonic(), time.process_time()
    seconds = ended - started[0] if started else 0.0
    cpu = ended_cpu - started[1] if started else 0.0
    print(json.dumps({"records": processed[0], "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3)}))


if __name__ == "__main__":
    main()
