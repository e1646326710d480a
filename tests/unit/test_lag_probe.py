"""The stream summary's lag on Kafka (adapters/kafka/lag.py), over a fake measure: sums, errors told
rather than raised, one measure shared by the summaries asking within a moment."""

from __future__ import annotations

import threading
import time

from metrify.adapters.kafka.admin import KafkaUnavailable
from metrify.adapters.kafka.clients import TopicNames
from metrify.adapters.kafka.lag import KafkaLagProbe, RawTopicMissing
from metrify.application.queries import ConsumerLag

WORKER = [ConsumerLag("w", "m.raw", 0, 10, 15), ConsumerLag("w", "m.raw", 1, None, 7)]
SINK = [ConsumerLag("s", "m.accepted", 0, 3, 3)]


class Measures:
    def __init__(self, *results: object) -> None:
        self.results = list(results)
        self.calls = 0

    def __call__(self, *args: object) -> tuple[list[ConsumerLag], list[ConsumerLag]]:
        self.calls += 1
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]


def probe(measure: Measures, fresh_for: float = 0.0) -> KafkaLagProbe:
    return KafkaLagProbe(
        "b:9092", TopicNames("m."), "w", "s", lambda topics: None, fresh_for=fresh_for, measure=measure
    )


def test_the_lag_sums_each_group_s_partitions() -> None:
    lag = probe(Measures((WORKER, SINK))).lag()
    assert (lag.ingest, lag.unprocessed, lag.unstored, lag.error) == ("kafka", 5 + 7, 0, None)
    assert lag.consumers == (*WORKER, *SINK)


def test_a_failed_measure_is_told_in_the_lag_never_raised() -> None:
    measures = Measures(KafkaUnavailable("timed out"), RawTopicMissing("m.raw does not exist"), RuntimeError("boom"))
    lags = [probe(measures).lag() for _ in range(3)]
    assert [(lag.unprocessed, lag.unstored, lag.consumers) for lag in lags] == [(None, None, ())] * 3
    assert [lag.error for lag in lags] == [
        "kafka unreachable: timed out",
        "m.raw does not exist",
        "the lag was not measured: RuntimeError",
    ]


def test_one_measure_serves_the_summaries_asking_within_a_moment() -> None:
    measures = Measures((WORKER, SINK), (WORKER[:1], SINK))
    shared = probe(measures, fresh_for=0.2)
    assert shared.lag() == shared.lag() and measures.calls == 1
    time.sleep(0.25)
    assert shared.lag().unprocessed == 5 and measures.calls == 2


def test_summaries_asking_at_once_wait_for_one_measure() -> None:
    measures = Measures(*[(WORKER, SINK)] * 8)
    slow = measures.__call__

    def measure(*args: object) -> tuple[list[ConsumerLag], list[ConsumerLag]]:
        time.sleep(0.1)
        return slow(*args)

    shared = KafkaLagProbe("b:9092", TopicNames("m."), "w", "s", lambda topics: None, fresh_for=5.0, measure=measure)
    threads = [threading.Thread(target=shared.lag) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert measures.calls == 1
