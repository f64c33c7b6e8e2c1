"""The applier's watch for data Kafka lost under it (the rule: mallard/core/data_loss.py).

Cheap and off the hot path: every ``interval_s`` (and at once when partitions are
assigned) one thread asks Kafka for the topics' ids, the partitions' watermarks and the
group's committed offsets (four requests, whatever the number of partitions), while the
main loop goes on. What the applier knew of each partition is captured *before* the
question is sent; the answer is judged on the main loop, which alone touches the
assembler and the consumer.

What a loss leaves behind, until the re-snapshot it requested is merged: ``report()`` on
/healthz (``data_loss``; the applier stays ready: it is repairing the replica, and an
orchestrator restarting it would only delay that), ``mallard status``, metrics.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from mallard.core.data_loss import KINDS, Known, Loss, Observed
from mallard.core.names import StreamNameError, cdc_topic
from mallard.core.status import stream_of_topic
from mallard.runtime.metrics import counter, gauge

RECENT = 20
"""Losses kept for /healthz (the counters keep counting)."""


class DataLossWatch:
    def __init__(self, bootstrap_servers: str = "", group: str = "", prefix: str = "", interval_s: float = 5.0,
                 log: logging.Logger | None = None):
        self.bootstrap_servers, self.group, self.prefix, self.interval_s = bootstrap_servers, group, prefix, interval_s
        self.log = log or logging.getLogger("mallard.applier")
        self.due = 0.0
        self.epoch = 0
        """Bumped by every loss acted on: an answer to a question asked before it is stale."""
        self.topic_ids: dict[str, str] = {}
        self._pending: tuple[Future, int, dict[tuple[str, int], Known]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._admin: Any = None
        self.detected = 0
        self.by_kind = {k: 0 for k in KINDS}
        self.recent: list[dict[str, Any]] = []
        self.streams: dict[str, dict[str, Any]] = {}
        """stream -> the last loss on its topic, and where its re-snapshot is."""
        self.topic_streams: dict[str, set[str]] = {}
        """topic -> its streams: those whose events came on it (the router's), and the
        expected ones (``expect_streams``): a topic's name is Debezium's sanitized one."""
        self.failures = 0

    def configure(self, bootstrap_servers: str, group: str, prefix: str, interval_s: float,
                  log: logging.Logger) -> None:
        self.bootstrap_servers, self.group, self.prefix, self.interval_s, self.log = (
            bootstrap_servers, group, prefix, interval_s, log)

    def expect_streams(self, streams: list[str]) -> None:
        """The streams' topics as Debezium names them, before any of their events came."""
        for stream in streams:
            try:
                self.topic_streams.setdefault(cdc_topic(self.prefix, stream), set()).add(stream)
            except StreamNameError:
                continue  # a regex of the connector's table list: no one topic

    # -- asking -----------------------------------------------------------------------

    def due_now(self, now: float) -> bool:
        return self._pending is None and now >= self.due

    def ask(self, now: float, topics: set[str], known: dict[tuple[str, int], int]) -> None:
        """When due and no question is out: ask about ``topics``; ``known`` (partition -> the
        offset the applier read or committed to) is what it knew before asking."""
        if self._pending is not None or now < self.due or not topics:
            return
        self.due = now + self.interval_s
        knowledge = {tp: Known(offset, self.topic_ids.get(tp[0])) for tp, offset in known.items()}
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="data-loss-watch")
        self._pending = (self._executor.submit(self._observe, sorted(topics)), self.epoch, knowledge)

    def _observe(self, topics: list[str]) -> dict[tuple[str, int], Observed]:
        from mallard.adapters import kafka

        if self._admin is None:
            self._admin = kafka.admin_client(self.bootstrap_servers)
        return kafka.partition_facts(self._admin, self.group, topics)

    def answer(self) -> tuple[dict[tuple[str, int], Known], dict[tuple[str, int], Observed]] | None:
        """(known, observed) once the answer is in and still current; else None."""
        if self._pending is None or not self._pending[0].done():
            return None
        future, epoch, known = self._pending
        self._pending = None
        try:
            observed = future.result()
        except Exception as e:  # noqa: BLE001 - the broker may be away: asked again next round
            self.failures += 1
            self.log.debug("could not look for data loss on Kafka (asking again in %.0fs): %s", self.interval_s, e)
            return None
        stale = epoch != self.epoch
        for tp in observed:  # a partition nothing was read from: its topic's id still counts (unread messages)
            if tp not in known and tp[0] in self.topic_ids:
                known[tp] = Known(None, self.topic_ids[tp[0]])
        for (topic, _), obs in observed.items():
            if obs.topic_id and not stale:
                self.topic_ids[topic] = obs.topic_id
        return None if stale else (known, observed)

    # -- what was lost ----------------------------------------------------------------

    def record(self, loss: Loss, resnapshot: str | None) -> dict[str, Any]:
        self.epoch += 1
        self.detected += 1
        self.by_kind[loss.kind] = self.by_kind.get(loss.kind, 0) + 1
        owners = sorted(self.topic_streams.get(loss.topic, ()))
        guess = stream_of_topic(loss.topic, self.prefix)
        streams = owners or ([guess] if guess else [])
        stream = streams[0] if streams else None
        entry = {"topic": loss.topic, "partition": loss.partition, "stream": stream, "streams": streams,
                 "kind": loss.kind,
                 "detail": loss.detail, "read_again_from": loss.restart_at,
                 "detected_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        self.recent = [*self.recent, entry][-RECENT:]
        for one in streams:
            self.streams[one] = {**entry, "stream": one, "resnapshot": resnapshot, "snapshot_id": None}
        return entry

    def snapshot_merged(self, frame: Any) -> None:
        """A snapshot of a stream that lost data, begun after the loss, is merged: repaired."""
        entry = self.streams.get(frame.stream)
        if entry is None or entry["resnapshot"] == "merged":
            return
        started = getattr(frame, "started_at", None)
        if isinstance(started, datetime) and started.tzinfo is not None \
                and started < datetime.fromisoformat(entry["detected_at"]):
            return  # its cut is from before the loss
        entry["resnapshot"], entry["snapshot_id"] = "merged", frame.snapshot_id
        self.log.warning("%s is repaired after the data Kafka lost on %s[%d]: snapshot %s merged", frame.stream,
                         entry["topic"], entry["partition"], frame.snapshot_id)

    def unrepaired(self) -> list[str]:
        return sorted(s for s, e in self.streams.items() if e["resnapshot"] != "merged")

    def report(self) -> dict[str, Any]:
        return {"detected": self.detected, "by_kind": dict(self.by_kind), "unrepaired_streams": self.unrepaired(),
                "streams": self.streams, "recent": self.recent}

    def metric_families(self) -> list[Any]:
        return [
            counter("mallard_kafka_data_loss", "Partitions on which Kafka lost messages the applier had not applied "
                    "(a recreated topic, an offset beyond the end, messages removed unread), by kind.",
                    {(k,): n for k, n in sorted(self.by_kind.items())}, ("kind",)),
            gauge("mallard_streams_unrepaired_after_data_loss", "Streams whose CDC topic lost data and whose "
                  "re-snapshot is not merged yet.", len(self.unrepaired())),
        ]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
