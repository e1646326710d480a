"""How far the workers and the sink stand behind the topics they read (`metrify topics lag`, the
API's stream summary): the workers' group on the raw topic; the sink's offsets as the database
holds them (it commits them with its writes), or its group's where the database holds none."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from metrify.adapters.kafka.admin import KafkaUnavailable, admin_client, end_offsets, group_lag, topic_partitions
from metrify.adapters.kafka.clients import TopicNames
from metrify.application.queries import ConsumerLag, ProcessingLag, total_behind

log = logging.getLogger("metrify.kafka")

# The sink's stored offsets of these topics ((topic, partition) -> next offset); None: no table.
StoredOffsets = Callable[[list[str]], dict[tuple[str, int], int] | None]


class RawTopicMissing(Exception):
    """The raw topic does not exist yet (`metrify topics create` makes it)."""


def measure_lag(
    bootstrap: str,
    names: TopicNames,
    worker_group: str,
    sink_group: str,
    stored: StoredOffsets,
    timeout: float = 10.0,
) -> tuple[list[ConsumerLag], list[ConsumerLag]]:
    """The workers' partitions and the sink's, in order, asked of the broker within about `timeout`
    seconds in all. Raises KafkaUnavailable or RawTopicMissing."""
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    admin = admin_client(bootstrap)  # one client for every question of this measure
    present = topic_partitions(admin, left())
    if names.raw not in present:
        raise RawTopicMissing(f"{names.raw} does not exist: run `metrify topics create`")
    # group_lag asks twice (end offsets, then the group's): half of what is left each
    worker = group_lag(bootstrap, worker_group, {names.raw: present[names.raw][0]}, left() / 2, admin)
    outputs = {topic: present[topic][0] for topic in names.outputs.values() if topic in present}
    ends = end_offsets(admin, outputs, left())
    held = stored(list(outputs))
    if held is None:
        by_group = group_lag(bootstrap, sink_group, outputs, left() / 2, admin)
        held = {key: committed for key, (committed, _) in by_group.items() if committed is not None}

    def rows(group: str, found: dict[tuple[str, int], tuple[int | None, int]]) -> list[ConsumerLag]:
        return [ConsumerLag(group, t, p, committed, end) for (t, p), (committed, end) in sorted(found.items())]

    return rows(worker_group, worker), rows(sink_group, {key: (held.get(key), end) for key, end in ends.items()})


class KafkaLagProbe:
    """The production profile's LagProbe. A broker that does not answer within `timeout` (about:
    all calls to it) makes the lag unknown (None, with the reason), never an error of the summary
    around it; a measure is shared for `fresh_for` seconds by the summaries that ask meanwhile (a
    dashboard polling several of them costs the broker one)."""

    def __init__(
        self,
        bootstrap: str,
        names: TopicNames,
        worker_group: str,
        sink_group: str,
        stored: StoredOffsets,
        timeout: float = 2.0,
        fresh_for: float = 2.0,
        measure: Callable[..., tuple[list[ConsumerLag], list[ConsumerLag]]] = measure_lag,
    ) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self.worker_group = worker_group
        self.sink_group = sink_group
        self.stored = stored
        self.timeout = timeout
        self.fresh_for = fresh_for
        self._measure = measure
        self._lock = threading.Lock()
        self._last: tuple[float, ProcessingLag] | None = None

    def lag(self) -> ProcessingLag:
        with self._lock:  # one measure at a time; those waiting take it
            last = self._last
            if last is not None and time.monotonic() - last[0] < self.fresh_for:
                return last[1]
            lag = self._measured()
            self._last = (time.monotonic(), lag)
            return lag

    def _measured(self) -> ProcessingLag:
        try:
            worker, sink = self._measure(
                self.bootstrap, self.names, self.worker_group, self.sink_group, self.stored, self.timeout
            )
        except KafkaUnavailable as exc:
            return ProcessingLag("kafka", None, None, error=f"kafka unreachable: {exc}")
        except RawTopicMissing as exc:
            return ProcessingLag("kafka", None, None, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - the summary answers; the log has the details
            log.warning("the lag was not measured", exc_info=exc)
            return ProcessingLag("kafka", None, None, error=f"the lag was not measured: {type(exc).__name__}")
        return ProcessingLag("kafka", total_behind(worker), total_behind(sink), (*worker, *sink))
