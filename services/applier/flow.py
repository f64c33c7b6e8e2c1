"""Flow: with the held events at their bound, the partitions ahead of the next transaction
in commit order are paused and the ones it still needs read on (memory stays flat)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from mallard.core.transactions import TransactionAssembler
from mallard.services.applier.ports import ChangeSource


class PartitionFlow:
    def __init__(self, max_buffered_events: int, assembler: Callable[[], TransactionAssembler],
                 counts: dict[str, int], loss: Any, log: Any):
        self.max_buffered_events, self.assembler, self.counts, self.loss, self.log = (
            max_buffered_events, assembler, counts, loss, log)
        self.paused: set[tuple[str, int]] = set()
        """CDC/transaction partitions paused while other partitions catch up."""
        self.unsure: set[tuple[str, int]] = set()
        """Partitions whose pause is not known (just assigned, or a pause/resume failed)."""

    def on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Whether librdkafka keeps a partition's pause across a rebalance is its business:
        # the next round pauses and resumes each of them as if nothing were known.
        self.unsure = {(tp.topic, tp.partition) for tp in partitions}
        self.loss.due = 0.0  # partitions (re)assigned: look for data loss at once

    def pause_partitions_ahead(self, consumer: ChangeSource) -> None:
        """Read only what the next transaction still needs while the held events are at
        their bound (TransactionAssembler.partitions_ahead): memory stays flat however
        unevenly a backlog is fetched."""
        ahead = self.assembler().partitions_ahead(self.max_buffered_events)
        if ahead == self.paused and not self.unsure:
            return
        resume = (self.paused | self.unsure) - ahead
        pause = ahead - (self.paused - self.unsure)
        try:
            if resume:
                consumer.resume([TopicPartition(t, p) for t, p in resume])
            if pause:
                consumer.pause([TopicPartition(t, p) for t, p in pause])
                self.counts["partition_pauses"] += len(pause)
            self.paused, self.unsure = ahead, set()
        except KafkaException as e:  # e.g. a partition revoked meanwhile: the next round tries again
            self.log.warning("pausing/resuming partitions failed, will retry: %s", e)
            self.unsure |= self.paused | ahead  # any of them may be paused or not: the next round says which
