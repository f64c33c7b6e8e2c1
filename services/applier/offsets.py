"""Offsets: Kafka's committed offsets are the applier's replication state, committed only
up to what DuckDB holds (the assembler and the snapshot tracker say what that is)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from mallard.core.snapshots import SnapshotTracker
from mallard.core.transactions import TransactionAssembler
from mallard.services.applier.config import ApplierSettings
from mallard.services.applier.ports import ChangeSource


class Offsets:
    def __init__(self, settings: ApplierSettings, assembler: Callable[[], TransactionAssembler],
                 snapshots: SnapshotTracker, stopping: threading.Event, log: Any):
        self.settings, self.assembler, self.snapshots, self.stopping, self.log = (
            settings, assembler, snapshots, stopping, log)
        self.committed: dict[tuple[str, int], int] = {}
        """What was last committed, per partition."""
        self.lag: dict[tuple[str, int], int] = {}
        """Per partition: messages not yet applied (a metric)."""

    def commit(self, consumer: ChangeSource, snapshot_consumer: ChangeSource, wait: bool = False) -> None:
        """Commit what DuckDB holds. Without waiting for the broker: the next batch is
        decoded meanwhile; a commit that fails (or lands after a later one) only means a
        replay of transactions DuckDB already has (recognised and skipped), or of merged
        snapshots (skipped too)."""
        for c, committable in ((consumer, self.assembler().committable()),
                               (snapshot_consumer, self.snapshots.committable())):
            offsets = [TopicPartition(t, p, o) for (t, p), o in committable.items()]
            if offsets:
                try:
                    c.commit(offsets=offsets, asynchronous=not wait)
                    self.committed.update(committable)
                except KafkaException as e:  # transient: the next commit carries the same offsets
                    self.log.warning("offset commit failed, will retry: %s", e)

    def snapshot_topic_start(self, consumer: ChangeSource, snapshot_consumer: ChangeSource) -> list[TopicPartition]:
        """Where to read the snapshot topic from. The applier is its only reader: its
        partitions are assigned, not subscribed to, so a restarted applier waits for no
        group rebalance; offsets are still committed under the snapshot group. A replica
        from before that group kept them in the CDC group: they are taken over."""
        topic = self.settings.snapshot_topic
        for attempt in range(1, 6):
            try:
                partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
                tps = [TopicPartition(topic, p) for p in partitions]
                committed = snapshot_consumer.committed(tps, timeout=10)
                if not any(tp.offset >= 0 for tp in committed):
                    adopt = [tp for tp in consumer.committed(tps, timeout=10) if tp.offset >= 0]
                    if adopt:
                        snapshot_consumer.commit(offsets=adopt, asynchronous=False)
                        self.log.info("snapshot topic offsets taken over from group %s: %s",
                                      self.settings.consumer_group,
                                      ", ".join(f"[{tp.partition}]@{tp.offset}" for tp in adopt))
                        committed = adopt
                offsets = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
                return [TopicPartition(topic, p, offsets.get(p, OFFSET_BEGINNING)) for p in partitions]
            except KafkaException as e:  # transient: the broker is up (waited for above)
                if attempt == 5:
                    raise
                self.log.warning("reading the snapshot topic's committed offsets failed, retrying: %s", e)
                self.stopping.wait(attempt)
        raise AssertionError("unreachable")

    def measure_lag(self, *consumers: ChangeSource) -> None:
        """Per assigned partition: high watermark (librdkafka's cached one, no broker round
        trip) minus the offset committed (or, before any commit, the position). Measured
        after every commit (a few calls into librdkafka), so it is never older than that."""
        try:
            lag = {}
            for consumer in consumers:
                assigned = consumer.assignment()
                positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(assigned)}
                for tp in assigned:
                    key = (tp.topic, tp.partition)
                    high = consumer.get_watermark_offsets(tp, cached=True)[1]
                    done = self.committed.get(key, positions.get(key, -1))
                    if high >= 0 and done >= 0:
                        lag[key] = max(0, high - done)
            self.lag = lag
        except KafkaException:
            pass  # a metric only: the next round measures again

    def on_commit(self, error: Any, partitions: list[TopicPartition]) -> None:
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            self.log.warning("offset commit failed, the next one carries the same offsets: %s", error)
