"""The database sink's log on Kafka: the output topics, committed transactions only.

Offsets live in the database (sink_offsets); on assignment the sink seeks to them. After each
database commit the same offsets are also committed to the sink's consumer group, asynchronously,
only so that `metrify topics lag` and other Kafka tools can show the sink's lag.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from metrify.adapters.kafka import codec
from metrify.adapters.kafka.clients import KafkaHealth, TopicNames, consumer_config, take_batch
from metrify.application.kafka_stream import FeedBatch, FeedMessage, Source, SourceListener

log = logging.getLogger("metrify.sink")


class KafkaOutcomeFeed:
    def __init__(
        self,
        bootstrap: str,
        names: TopicNames,
        group_id: str,
        *,
        health: KafkaHealth | None = None,
        session_timeout: float = 10.0,
    ) -> None:
        self.names = names
        self.kinds = {topic: kind for kind, topic in names.outputs.items()}
        self.health = health or KafkaHealth("sink")
        self.consumer = Consumer(
            consumer_config(
                bootstrap,
                group_id,
                self.health,
                session_timeout=session_timeout,
                eof=True,
                **{"max.poll.interval.ms": 600_000},
            )
        )
        self.listener: SourceListener | None = None
        self.positions: dict[Source, int] = {}
        self.undecodable = 0

    def start(self, listener: SourceListener) -> None:
        self.listener = listener
        self.consumer.subscribe(
            list(self.names.outputs.values()),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self.listener is not None
        sources = [(tp.topic, tp.partition) for tp in partitions]
        offsets = self.listener.sources_assigned(sources) if sources else {}
        assigned = []
        for topic, partition in sources:
            offset = offsets.get((topic, partition))
            self.positions[(topic, partition)] = offset or 0
            assigned.append(TopicPartition(topic, partition, OFFSET_BEGINNING if offset is None else offset))
        consumer.incremental_assign(assigned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("output partitions lost (the group moved on without this sink): %s", len(partitions))
        self._release(consumer, partitions)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        sources = [(tp.topic, tp.partition) for tp in partitions]
        for source in sources:
            self.positions.pop(source, None)
        if self.listener is not None:
            self.listener.sources_revoked(sources)
        consumer.incremental_unassign(partitions)

    def poll(self, max_messages: int, timeout: float) -> FeedBatch:
        messages: list[FeedMessage] = []
        ends: dict[Source, int] = {}
        batch = take_batch(self.consumer, max_messages, timeout)
        kinds = self.kinds
        for message in batch:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    ends[(message.topic(), message.partition())] = message.offset()
                else:
                    self.health.error(error)
                continue
            topic = message.topic()
            try:
                events = codec.decode_records(kinds[topic], message.value())
            except (ValueError, TypeError, KeyError) as exc:
                # Written by a Metrify worker, so this is a bug or a foreign producer: keep going.
                self.undecodable += 1
                log.error(
                    "undecodable output message skipped: %s[%s] offset %s: %s",
                    topic,
                    message.partition(),
                    message.offset(),
                    exc,
                )
                events = []
            messages.append(FeedMessage((topic, message.partition()), message.offset(), events))
        if batch:
            self.health.ok()
        return FeedBatch(messages, ends)

    def rewind(self, source: Source, offset: int | None) -> None:
        topic, partition = source
        tp = TopicPartition(topic, partition, OFFSET_BEGINNING if offset is None else offset)
        try:
            self.consumer.seek(tp)
        except KafkaException:
            self.consumer.incremental_unassign([TopicPartition(topic, partition)])
            self.consumer.incremental_assign([tp])
        self.positions[source] = offset or 0

    def acknowledge(self, offsets: Mapping[Source, int]) -> None:
        for source, offset in offsets.items():
            if source in self.positions:
                self.positions[source] = offset
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=True)
        except KafkaException as exc:  # only for monitoring: the database holds the real offsets
            log.debug("group offset commit skipped: %s", exc)

    def lag(self) -> dict[Source, int]:
        lags = {}
        for source, position in list(self.positions.items()):
            try:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(*source), cached=True)
            except KafkaException:
                continue
            if high is not None and high >= 0:
                lags[source] = max(high - position, 0)
        return lags

    def close(self) -> None:
        self.consumer.close()
