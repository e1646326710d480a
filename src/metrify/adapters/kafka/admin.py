"""Topic administration: create what is missing, describe what is there, measure consumer lag."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, OffsetSpec

from metrify.adapters.kafka.clients import TopicNames, TopicSpec, common_config, error_of

log = logging.getLogger("metrify.kafka")


class KafkaUnavailable(Exception):
    """The broker did not answer in time."""


class TopicsMissing(Exception):
    """Topics Metrify needs do not exist: `metrify topics create` makes them."""


class TopicsMismatch(Exception):
    """Topics exist with partition counts that do not fit together."""


@dataclass(slots=True)
class TopicState:
    spec: TopicSpec
    exists: bool = False
    partitions: int = 0
    replication: int = 0
    messages: int | None = None
    differences: list[str] = field(default_factory=list)


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient(common_config(bootstrap))


def _reason(exc: BaseException) -> str:
    error = error_of(exc)
    return error.str() if error is not None else str(exc)


def topic_partitions(admin: AdminClient, timeout: float = 10.0) -> dict[str, tuple[int, int]]:
    """Every topic of the cluster: name -> (partitions, replication factor). Asks for all topics,
    never for one by name, so that no broker auto-creates a topic on the way."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(_reason(exc)) from None
    out = {}
    for name, topic in metadata.topics.items():
        if topic.error is not None:
            continue
        replicas = max((len(p.replicas) for p in topic.partitions.values()), default=0)
        out[name] = (len(topic.partitions), replicas)
    return out


def wait_for_broker(
    bootstrap: str,
    timeout: float | None = None,
    on_wait: Callable[[str, float], None] | None = None,
    stopped: Callable[[], bool] | None = None,
) -> AdminClient:
    """An admin client once the broker answers; retries with backoff (forever without timeout,
    or until `stopped()` says so)."""
    admin = admin_client(bootstrap)
    started = time.monotonic()
    delay = 0.5
    # shorter tries where a stop is watched: one in flight is not interrupted
    probe = 1.0 if stopped is not None else 5.0
    while True:
        try:
            topic_partitions(admin, timeout=probe)
            return admin
        except KafkaUnavailable as exc:
            if timeout is not None and time.monotonic() - started >= timeout:
                raise
            if stopped is not None and stopped():
                raise
            if on_wait is not None:
                on_wait(str(exc), delay)
            # a tenth of a second at a time while `stopped` is watched: a process asked to stop
            # does not sleep out a wait of up to 10 s first
            until = time.monotonic() + delay
            while (left := until - time.monotonic()) > 0:
                if stopped is not None and stopped():
                    raise
                time.sleep(min(left, 0.1) if stopped is not None else left)
            delay = min(delay * 2, 10.0)


def _offsets(admin: AdminClient, partitions: list[TopicPartition], spec: OffsetSpec, timeout: float) -> dict:
    if not partitions:
        return {}
    futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=timeout)
    out = {}
    for tp, future in futures.items():
        try:
            out[(tp.topic, tp.partition)] = future.result().offset
        except KafkaException as exc:
            raise KafkaUnavailable(_reason(exc)) from None
    return out


def end_offsets(admin: AdminClient, topics: dict[str, int], timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """The next offset of every partition of these topics (name -> partition count)."""
    partitions = [TopicPartition(name, p) for name, count in topics.items() for p in range(count)]
    return _offsets(admin, partitions, OffsetSpec.latest(), timeout)


def describe_topics(bootstrap: str, names: TopicNames, count: bool = True, timeout: float = 10.0) -> list[TopicState]:
    admin = admin_client(bootstrap)
    present = topic_partitions(admin, timeout)
    states = []
    for spec in names.specs():
        state = TopicState(spec)
        if spec.name in present:
            state.exists = True
            state.partitions, state.replication = present[spec.name]
        states.append(state)
    existing = [s for s in states if s.exists]
    if count and existing:
        partitions = [TopicPartition(s.spec.name, p) for s in existing for p in range(s.partitions)]
        low = _offsets(admin, partitions, OffsetSpec.earliest(), timeout)
        high = _offsets(admin, partitions, OffsetSpec.latest(), timeout)
        for s in existing:
            s.messages = sum(high[(s.spec.name, p)] - low[(s.spec.name, p)] for p in range(s.partitions))
    _compare_configs(admin, [s for s in existing if s.spec.config], timeout)
    return states


def _compare_configs(admin: AdminClient, states: list[TopicState], timeout: float) -> None:
    if not states:
        return
    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.spec.name) for s in states]
    futures = admin.describe_configs(resources, request_timeout=timeout)
    by_name = {s.spec.name: s for s in states}
    for resource, future in futures.items():
        try:
            entries = future.result()
        except KafkaException as exc:
            raise KafkaUnavailable(_reason(exc)) from None
        state = by_name[resource.name]
        wanted = state.spec.config.get("cleanup.policy")
        entry = entries.get("cleanup.policy")
        if wanted and entry is not None and entry.value != wanted:
            state.differences.append(f"cleanup.policy={entry.value} (wanted {wanted})")


def create_topics(
    bootstrap: str, names: TopicNames, partitions: int, replication: int, timeout: float = 30.0
) -> list[tuple[TopicState, str]]:
    """Create the missing topics; report each as created, exists, or differs (with how)."""
    admin = admin_client(bootstrap)
    states = describe_topics(bootstrap, names, count=False, timeout=timeout)
    missing = [s for s in states if not s.exists]
    results: dict[str, str] = {}
    if missing:
        new = [NewTopic(s.spec.name, partitions, replication, config=dict(s.spec.config)) for s in missing]
        for name, future in admin.create_topics(new, request_timeout=timeout, operation_timeout=timeout).items():
            try:
                future.result()
                results[name] = "created"
            except KafkaException as exc:
                error = error_of(exc)
                if error is not None and error.name() == "TOPIC_ALREADY_EXISTS":
                    results[name] = "exists"
                else:
                    raise KafkaUnavailable(f"cannot create {name}: {_reason(exc)}") from None
        _wait_until_visible(admin, [s.spec.name for s in missing], timeout)
    fresh = {s.spec.name: s for s in describe_topics(bootstrap, names, count=False, timeout=timeout)}
    out = []
    for state in states:
        now = fresh[state.spec.name]
        if now.partitions != partitions:
            now.differences.append(f"{now.partitions} partitions (wanted {partitions})")
        if now.replication != replication:
            now.differences.append(f"replication factor {now.replication} (wanted {replication})")
        action = results.get(state.spec.name, "exists")
        out.append((now, "differs" if now.differences and action != "created" else action))
    return out


def _wait_until_visible(admin: AdminClient, topics: Iterable[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    wanted = set(topics)
    while time.monotonic() < deadline:
        present = topic_partitions(admin, timeout=5.0)
        if wanted <= set(present):
            return
        time.sleep(0.2)


def require_topics(admin: AdminClient, names: TopicNames, timeout: float = 10.0) -> int:
    """Check that every topic exists and that the changelog and outputs are partitioned like the
    input; returns the input's partition count."""
    present = topic_partitions(admin, timeout)
    specs = names.specs()
    missing = [s.name for s in specs if s.name not in present]
    if missing:
        raise TopicsMissing(f"missing Kafka topics: {', '.join(missing)} (run `metrify topics create --partitions N`)")
    count = present[names.raw][0]
    wrong = [f"{s.name} has {present[s.name][0]}" for s in specs if present[s.name][0] != count]
    if wrong:
        grown = present[names.changelog][0] < count
        raise TopicsMismatch(
            f"{names.raw} has {count} partitions but {'; '.join(wrong)}: every Metrify topic needs the "
            "input's partition count (the changelog and outputs are partitioned like the input)"
            + (
                "; partitions added to the input cannot be used by its stream (state does not move between "
                "partitions): create new topics under a new METRIFY_KAFKA__TOPIC_PREFIX"
                if grown
                else ""
            )
        )
    # A changelog made by hand with the default policy (delete) would drop the state of meters
    # quiet for longer than its retention: a worker restoring from it would start them afresh.
    states = [TopicState(spec, exists=True) for spec in specs if spec.config.get("cleanup.policy")]
    _compare_configs(admin, states, timeout)
    differing = [f"{state.spec.name} has {', '.join(state.differences)}" for state in states if state.differences]
    if differing:
        raise TopicsMismatch(f"{'; '.join(differing)}: the stream state changelog must be compacted")
    return count


def group_lag(
    bootstrap: str, group: str, topics: dict[str, int], timeout: float = 10.0, admin: AdminClient | None = None
) -> dict[tuple[str, int], tuple[int | None, int]]:
    """(committed offset or None, end offset) of a group on every partition of these topics
    (asked through `admin` when given, else a client of its own)."""
    admin = admin or admin_client(bootstrap)
    ends = end_offsets(admin, topics, timeout)
    from confluent_kafka import ConsumerGroupTopicPartitions

    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in ends])]
    committed: dict[tuple[str, int], int | None] = {}
    for future in admin.list_consumer_group_offsets(request, request_timeout=timeout, require_stable=True).values():
        try:
            result = future.result()
        except KafkaException as exc:
            raise KafkaUnavailable(_reason(exc)) from None
        for tp in result.topic_partitions:
            committed[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
    return {key: (committed.get(key), end) for key, end in ends.items()}


def delete_topics(bootstrap: str, names: TopicNames, timeout: float = 30.0) -> list[str]:
    admin = admin_client(bootstrap)
    present = topic_partitions(admin, timeout)
    doomed = [s.name for s in names.specs() if s.name in present]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=timeout).values():
            try:
                future.result()
            except KafkaException as exc:
                log.warning("cannot delete a topic: %s", _reason(exc))
    return doomed
