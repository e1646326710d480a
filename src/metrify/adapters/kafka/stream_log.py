"""The stream worker's log on Kafka: a consumer-group member on the raw topic, a transactional
producer for outputs, changelog and input offsets, and the changelog restore (DESIGN §4).

One transaction per batch: `begin` -> `write` per partition (output envelopes, changed meter
states, then the partition header with the next input offset) -> `commit` (the consumer's offsets
through `send_offsets_to_transaction` with the group metadata, then `commit_transaction`). The
group metadata fences a zombie: once its partitions were given to another member, its offset
commit fails and its transaction is aborted, so none of its writes become visible.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from functools import partial
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from metrify.adapters.kafka import codec
from metrify.adapters.kafka.clients import (
    KafkaHealth,
    TopicNames,
    common_config,
    consumer_config,
    error_of,
    take_batch,
    transactional_producer_config,
)
from metrify.application.kafka_stream import PartitionListener, PolledPartition, TransactionAborted
from metrify.application.ports import PartitionState
from metrify.application.stream import Backoff
from metrify.domain.readings import RawReading

log = logging.getLogger("metrify.worker")
T = TypeVar("T")

ENVELOPE_RECORDS = 500  # records per output message (a few tens of kB)
# ... and bytes: rejects keep their raw values, as long as they came. Well under the broker's
# default message.max.bytes (1 MB), which a message of 500 long rejects exceeded: the transaction
# was aborted and, the same batch polled again, aborted for ever.
ENVELOPE_BYTES = 256 * 1024
# A single record over this (a reject of a raw message of hundreds of kB) has its raw values cut
# (codec.cut_rejected): under the broker's default message.max.bytes (1,048,588) with room to spare.
MESSAGE_BYTES = 900 * 1024
# init_transactions is called with this timeout and, timed out, called again, which resumes it
# (librdkafka: "retry call to resume"): between tries the process can see that it is to stop.
INIT_TRY_SECONDS = 1.0
RETIRED_KEPT = 3  # producers given up on that are kept (see _retire)


def envelopes(kind: str, records: list[Any]) -> Iterator[bytes]:
    """Output messages for `records`, in order: ENVELOPE_RECORDS at most each, halved until each
    fits in ENVELOPE_BYTES (a single record goes as it is, a reject cut to fit in MESSAGE_BYTES)."""
    for start in range(0, len(records), ENVELOPE_RECORDS):
        yield from _fitted(kind, records[start : start + ENVELOPE_RECORDS])


def _fitted(kind: str, records: list[Any]) -> Iterator[bytes]:
    encoded = codec.encode_records(kind, records)
    if len(encoded) <= ENVELOPE_BYTES:
        yield encoded
        return
    if len(records) == 1:
        if len(encoded) > MESSAGE_BYTES and kind == codec.REJECTED:
            encoded = codec.encode_records(kind, [codec.cut_rejected(records[0])])
        yield encoded
        return
    half = len(records) // 2
    yield from _fitted(kind, records[:half])
    yield from _fitted(kind, records[half:])


class ProducerFenced(Exception):
    """Another worker runs with this worker's transactional id (the same --instance-id)."""


class ProducerHung(Exception):
    """A transactional call did not return in time (seen with librdkafka after a broker restart:
    the call waits on the producer's main thread forever, whatever timeout it was given)."""


class _Caller:
    """One long-lived helper thread that runs blocking client calls for the main thread, so that
    the main thread can give up on a call that never returns (the helper is then abandoned: a
    daemon, blocked inside a producer nobody uses any more, and a new helper takes over)."""

    def __init__(self) -> None:
        self.requests: queue.SimpleQueue[tuple[Callable[[], Any], dict[str, Any], threading.Event]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._serve, name="kafka-calls", daemon=True).start()

    def _serve(self) -> None:
        while True:
            action, box, done = self.requests.get()
            try:
                box["result"] = action()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc
            finally:
                done.set()

    def call(self, action: Callable[[], T], seconds: float) -> T | _Pending:
        box: dict[str, Any] = {}
        done = threading.Event()
        self.requests.put((action, box, done))
        if not done.wait(seconds):
            return _PENDING
        if "error" in box:
            raise box["error"]
        return box["result"]


class _Pending:
    pass


_PENDING = _Pending()
_caller: _Caller | None = None


def bounded(what: str, action: Callable[[], T], seconds: float) -> T:
    """Run a blocking client call on the helper thread; ProducerHung if it has not returned in
    `seconds`."""
    global _caller
    if _caller is None:
        _caller = _Caller()
    result = _caller.call(action, seconds)
    if result is _PENDING:
        _caller = None  # that helper is stuck for good: the next call gets a new one
        raise ProducerHung(f"{what} did not return within {seconds:.0f}s")
    return result  # type: ignore[return-value]


class KafkaStreamLog:
    def __init__(
        self,
        bootstrap: str,
        names: TopicNames,
        group_id: str,
        transactional_id: str,
        *,
        health: KafkaHealth | None = None,
        session_timeout: float = 10.0,
        transaction_timeout: float = 15.0,
        instance: str = "",
        backoff: Backoff | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self.outputs = names.outputs
        self.instance = instance or transactional_id
        self.health = health or KafkaHealth("worker")
        self.transactional_id = transactional_id
        self.transaction_timeout = transaction_timeout
        self.call_timeout = 15.0  # a transactional call that has not returned by then is given up
        # Waits for an absent broker (init_transactions, restores); with `stopped`, they end in
        # StopRequested once the process is asked to stop.
        self.backoff = backoff or Backoff(first=0.2, cap=5.0)
        self.fences: list[float] = []
        self.retired: list[Producer] = []  # producers given up on (see _retire)
        self.consumer = Consumer(consumer_config(bootstrap, group_id, self.health, session_timeout=session_timeout))
        self.restorer = Consumer(
            consumer_config(
                bootstrap,
                f"{group_id}.restore",
                None,
                eof=True,
                **{"fetch.max.bytes": 52428800, "fetch.wait.max.ms": 10},
            )
        )
        self.admin = AdminClient(common_config(bootstrap))
        self.producer = self._new_producer()
        self.producer_given_up = False
        self.listener: PartitionListener | None = None
        self.committed: dict[int, int] = {}
        self.in_transaction = False
        self.revoked_during_transaction = False

    # -- producer life cycle ---------------------------------------------------------------------

    def _new_producer(self) -> Producer:
        """A transactional producer whose init_transactions has aborted whatever an earlier
        process with this transactional id left open, and fenced it. One that hangs there is
        retired and another one started, until the process is asked to stop (StopRequested)."""
        while True:
            producer = Producer(
                transactional_producer_config(
                    self.bootstrap, self.transactional_id, self.health, timeout=self.transaction_timeout
                )
            )
            start = partial(producer.init_transactions, INIT_TRY_SECONDS)
            try:
                self._retrying("init_transactions", partial(bounded, "init_transactions", start, 15.0))
                return producer
            except ProducerHung as exc:
                log.warning("%s: starting another producer", exc)
                self._retire(producer)
                self.backoff.check("starting a transactional producer", exc)

    def _retire(self, producer: Producer) -> None:
        """Keep a producer given up on from being destroyed here and now: that can block while
        the broker is away. The last few are kept; a hung one stays alive anyway, held by the
        helper thread stuck in it."""
        self.retired.append(producer)
        del self.retired[:-RETIRED_KEPT]

    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        """Run a call that may meet an absent broker: retriable errors are retried with backoff,
        until the process is asked to stop (StopRequested)."""
        attempt = 0
        while True:
            try:
                result = action()
                self.health.ok()
                return result
            except KafkaException as exc:
                error = error_of(exc)
                if error is None or not error.retriable():
                    raise
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning("%s: %s; retrying in %.1fs", what, error.str(), delay)
                self.backoff.wait(delay, f"{what} waited for kafka ({error.str()})", exc)

    def _transactional(self, what: str, action: Callable[[], T], direct: bool = False) -> T:
        """A transactional call. Any failure ends the transaction: abortable errors by aborting it,
        anything else (timeouts while the broker is away, fatal errors, a failed abort) by
        replacing the producer, whose init_transactions aborts the open transaction on the broker.
        Either way TransactionAborted: the caller restores the partitions from the changelog, which
        is right whatever the broker made of the transaction (committed or not)."""
        try:
            result = action() if direct else bounded(what, action, self.call_timeout)
        except ProducerHung as exc:
            log.warning("%s: replacing the producer", exc)
            self.in_transaction = False
            self._replace_producer(hung=True)
            raise TransactionAborted(str(exc)) from None
        except KafkaException as exc:
            error = error_of(exc)
            if error is None:
                raise
            log.warning("%s failed: %s", what, error.str())
            self._end_transaction(what, error)
            raise TransactionAborted(f"{what}: {error.str()}") from None
        self.health.ok()
        return result

    def _end_transaction(self, what: str, error: KafkaError) -> None:
        self.in_transaction = False
        if error.txn_requires_abort() and not error.fatal():
            try:
                bounded("abort_transaction", lambda: self.producer.abort_transaction(10.0), self.call_timeout)
                return
            except (KafkaException, ProducerHung) as exc:
                failed = error_of(exc)
                log.warning("abort_transaction failed (%s): replacing the producer", failed.str() if failed else exc)
        if error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            # Fenced: by the broker after a long outage, or by another process with our
            # transactional id. If that keeps happening, two workers share one --instance-id.
            now = time.monotonic()
            self.fences = [t for t in self.fences if now - t < 60.0] + [now]
            if len(self.fences) >= 3:
                raise ProducerFenced(
                    f"{what}: {error.str()}: fenced 3 times in a minute; another worker probably uses the "
                    f"transactional id {self.transactional_id!r} (give each worker its own --instance-id)"
                )
        self._replace_producer()

    def _replace_producer(self, hung: bool = False) -> None:
        log.warning("starting a new transactional producer (%s)", self.transactional_id)
        old = self.producer
        if not hung:
            try:
                old.purge()
            except KafkaException:
                pass
        self._retire(old)
        self.producer_given_up = True  # until its successor is in place (a stop may come first)
        self.producer = self._new_producer()
        self.producer_given_up = False

    def _abort(self) -> None:
        """Abort the open transaction, if any (used when partitions go during one)."""
        if not self.in_transaction:
            return
        self.in_transaction = False
        try:
            bounded("abort_transaction", lambda: self.producer.abort_transaction(10.0), self.call_timeout)
        except (KafkaException, ProducerHung) as exc:
            error = error_of(exc)
            log.warning("abort_transaction failed (%s): replacing the producer", error.str() if error else exc)
            self._replace_producer(hung=isinstance(exc, ProducerHung))

    # -- group membership --------------------------------------------------------------------------

    def start(self, listener: PartitionListener) -> None:
        self.listener = listener
        self.consumer.subscribe(
            [self.names.raw], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self.listener is not None
        numbers = [tp.partition for tp in partitions]
        if numbers:
            log.info("partitions assigned: %s", sorted(numbers))
        offsets = self.listener.partitions_assigned(numbers) if numbers else {}
        for number, offset in offsets.items():
            self.committed[number] = offset
        consumer.incremental_assign([TopicPartition(self.names.raw, p, offsets[p]) for p in numbers])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions, lost=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions, lost=True)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition], lost: bool) -> None:
        if self.in_transaction:
            # Never the case in StreamWorker's loop (a batch commits before the next poll), but a
            # transaction must not outlive the ownership of its partitions: abort it.
            log.warning("partitions revoked during an open transaction: aborting it")
            self.revoked_during_transaction = True
            self._abort()
        numbers = [tp.partition for tp in partitions]
        if lost and numbers:
            log.warning("partitions lost (the group moved on without this worker): %s", sorted(numbers))
        for number in numbers:
            self.committed.pop(number, None)
        if self.listener is not None:
            self.listener.partitions_revoked(numbers)
        consumer.incremental_unassign(partitions)

    # -- reading ---------------------------------------------------------------------------------------

    def poll(self, max_records: int, timeout: float) -> dict[int, PolledPartition]:
        messages = take_batch(self.consumer, max_records, timeout)
        if not messages:
            return {}
        readings: dict[int, list[Any]] = {}
        malformed: dict[int, list[Any]] = {}
        last: dict[int, int] = {}
        decode = codec.decode_raw
        common = codec.decode_raw_common
        reading_type = RawReading
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self.health.error(error)
                continue
            number = message.partition()
            offset = message.offset()
            value = message.value()
            record: RawReading | codec.Malformed | None = common(value, offset)
            if record is None:
                record = decode(message.key(), value, offset)
            if type(record) is reading_type:
                bucket = readings.get(number)
                if bucket is None:
                    readings[number] = [record]
                else:
                    bucket.append(record)
            else:
                malformed.setdefault(number, []).append(record)
            last[number] = offset
        self.health.ok()
        return {
            number: PolledPartition(readings.get(number, []), malformed.get(number, []), offset + 1)
            for number, offset in last.items()
        }

    def lag(self) -> dict[int, int]:
        lags = {}
        for number, committed in list(self.committed.items()):
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(self.names.raw, number), cached=True)
            except KafkaException:
                continue
            if high is not None and high >= 0:
                lags[number] = max(high - committed, 0)
        return lags

    def partition_count(self) -> int | None:
        """The raw topic's partition count as the broker tells it now (a metadata request, through
        the consumer, which never creates a topic); None while the broker does not answer."""
        try:
            metadata = self.consumer.list_topics(self.names.raw, timeout=1.0)
        except KafkaException:
            return None
        topic = metadata.topics.get(self.names.raw)
        if topic is None or topic.error is not None:
            return None
        return len(topic.partitions)

    # -- the changelog ---------------------------------------------------------------------------------

    def _list_offsets(self, partition: int, spec: OffsetSpec, level: IsolationLevel) -> int:
        tp = TopicPartition(self.names.changelog, partition)
        future = self.admin.list_offsets({tp: spec}, isolation_level=level, request_timeout=10.0)[tp]
        # With the broker away the request runs to its timeout: the stop flag is watched meanwhile.
        while not futures.wait([future], Backoff.STEP).done:
            self.backoff.check(f"restoring partition {partition}")
        return future.result().offset

    def restore(self, partition: int) -> PartitionState:
        """The partition's state as of its last committed transaction. Waits while a transaction
        on its changelog is unfinished (a crashed worker's: the broker aborts it after the
        transaction timeout; at once if the crashed worker restarts with the same instance id).
        StopRequested when the process is asked to stop meanwhile."""
        attempt = 0
        pause = 0.02
        waited_since = time.monotonic()
        while True:
            try:
                stable = self._list_offsets(partition, OffsetSpec.latest(), IsolationLevel.READ_COMMITTED)
                high = self._list_offsets(partition, OffsetSpec.latest(), IsolationLevel.READ_UNCOMMITTED)
                low = self._list_offsets(partition, OffsetSpec.earliest(), IsolationLevel.READ_UNCOMMITTED)
            except KafkaException as exc:
                error = error_of(exc)
                reason = error.str() if error else str(exc)
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "restoring partition %s: kafka unreachable (%s); retrying in %.1fs", partition, reason, delay
                )
                # A fresh client: after a broker restart the old one may keep stale leader epochs.
                self.admin = AdminClient(common_config(self.bootstrap))
                self.backoff.wait(delay, f"restoring partition {partition}: kafka unreachable ({reason})", exc)
                continue
            if stable >= high:
                break
            if time.monotonic() - waited_since > 2.0:
                log.info(
                    "restoring partition %s: waiting for an unfinished transaction on the changelog "
                    "(offsets %s..%s) to end",
                    partition,
                    stable,
                    high,
                )
                waited_since = time.monotonic()
            # Commit and abort markers are written just after the coordinator answers: poll briskly.
            self.backoff.wait(pause, f"restoring partition {partition}: waiting for an unfinished transaction")
            pause = min(pause * 1.5, 1.0)
        if high <= low:
            return PartitionState(partition, None, 0, {})
        latest = self._read_changelog(partition, high)
        header = latest.pop(codec.HEADER_KEY, None)
        next_offset, max_event_time = codec.decode_header(header) if header is not None else (0, None)
        meters = {key.decode("utf-8"): codec.decode_state(value) for key, value in latest.items() if value is not None}
        return PartitionState(partition, max_event_time, next_offset, meters)

    def _read_changelog(self, partition: int, end: int) -> dict[bytes, bytes | None]:
        latest: dict[bytes, bytes | None] = {}
        tp = TopicPartition(self.names.changelog, partition, OFFSET_BEGINNING)
        self.restorer.assign([tp])
        try:
            position = -1
            while position < end:
                self.backoff.check(f"restoring partition {partition}: reading the changelog")
                for message in self.restorer.consume(10_000, 0.05):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            eof = message.offset()  # always set on an end-of-partition event
                            if eof is not None:
                                position = max(position, eof)
                            if position < end:  # committed data is there: the end moved on
                                end = position
                        else:
                            log.warning("reading the changelog of partition %s: %s", partition, error.str())
                        continue
                    key, offset = message.key(), message.offset()
                    if key is None or offset is None:  # every changelog record has both
                        continue
                    position = offset + 1
                    if offset >= end:
                        # past the end measured as stable: a later transaction (only a zombie of
                        # the partition's last owner can write one now), perhaps not all of it
                        continue
                    latest[key] = message.value()
        finally:
            self.restorer.unassign()
        return latest

    # -- writing ---------------------------------------------------------------------------------------

    def begin(self) -> None:
        self.revoked_during_transaction = False
        # A local state change (no request to the broker): called directly, not via the helper.
        self._transactional("begin_transaction", self.producer.begin_transaction, direct=True)
        self.in_transaction = True

    def _produce(self, topic: str, value: bytes, key: bytes | None, partition: int) -> None:
        producer = self.producer
        while True:
            try:
                producer.produce(topic, value, key, partition)
                return
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:
                error = error_of(exc)
                if error is None:
                    raise
                log.warning("produce failed: %s", error.str())
                self._end_transaction("produce", error)
                raise TransactionAborted(f"produce: {error.str()}") from None

    def write(self, partition: int, events: list[Any], state: PartitionState, inputs: int) -> None:
        produce = self._produce
        counts = {}
        for kind, records in codec.split_events(events).items():
            topic = self.outputs[kind]
            key = kind.encode()
            counts[kind] = len(records)
            for envelope in envelopes(kind, records):
                produce(topic, envelope, key, partition)
        changelog = self.names.changelog
        encode_state = codec.encode_state
        for meter_id, data in state.meters.items():
            produce(changelog, encode_state(data), meter_id.encode("utf-8"), partition)
        produce(changelog, codec.encode_header(state.next_offset, state.max_event_time), codec.HEADER_KEY, partition)
        record = {
            "partition": partition,
            "inputs": inputs,
            "accepted": counts.get(codec.READINGS, 0),
            "rejected": counts.get(codec.REJECTED, 0),
            "too_late": counts.get(codec.TOO_LATE, 0),
            "gap_events": counts.get(codec.GAPS, 0),
            "window_updates": counts.get(codec.AGGREGATES, 0),
            "meters_changed": len(state.meters),
            "max_event_time": state.max_event_time,
            "next_offset": state.next_offset,
            "at": time.time_ns() // 1000,
            "worker": self.instance,
        }
        produce(self.names.metrics, codec.encode_metrics(record), None, partition)
        self.producer.poll(0)

    def commit(self, offsets: Mapping[int, int]) -> None:
        if self.revoked_during_transaction:
            raise TransactionAborted("partitions were revoked during the transaction")
        positions = [TopicPartition(self.names.raw, p, o) for p, o in offsets.items()]
        metadata = self.consumer.consumer_group_metadata()
        producer = self.producer

        def finish() -> None:  # both calls in one trip to the helper thread
            producer.send_offsets_to_transaction(positions, metadata, 10.0)
            producer.commit_transaction(10.0)

        self._transactional("send_offsets_to_transaction + commit_transaction", finish)
        self.in_transaction = False
        self.committed.update(offsets)

    def rewind(self, partition: int, offset: int) -> None:
        tp = TopicPartition(self.names.raw, partition, offset)
        try:
            self.consumer.seek(tp)
        except KafkaException:
            self.consumer.incremental_unassign([TopicPartition(self.names.raw, partition)])
            self.consumer.incremental_assign([tp])
        self.committed[partition] = offset

    def close(self) -> None:
        try:
            self.consumer.close()  # revokes the partitions (no transaction is open) and leaves the group
        finally:
            self.restorer.close()
            if self.in_transaction:
                self._abort()
            if not self.producer_given_up:  # left by a stop while it was being replaced
                self.producer.flush(10.0)
