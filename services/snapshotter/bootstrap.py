"""Wiring: ``bootstrap(settings, **overrides)`` returns the snapshotter with its ports, the
real adapters unless a test hands it its own (services/applier/fakes.py's Kafka).
Nothing connects here: the real adapters are made when ``run()`` needs them."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mallard.services.snapshotter.config import SnapshotterSettings


@dataclass
class SnapshotterPorts:
    prepare_topics: Callable[[threading.Event], None]
    """Wait for the broker, create the control, snapshot and dead-letter topics."""
    control_source: Callable[[], Any]
    """The control topic's consumer (subscribe, poll, consume, commit, close)."""
    snapshot_writer: Callable[[Callable], Any]
    """The producer of snapshot frames and dead letters (produce, poll, flush), given the
    delivery callback."""
    source: Callable[[], Any]
    """A new connection to the source Postgres (a snapshot's coordinator, each reader)."""


def real_ports(s: SnapshotterSettings) -> SnapshotterPorts:
    from mallard.adapters import kafka, postgres

    def prepare_topics(stopping: threading.Event) -> None:
        kafka.wait_for_broker(s.kafka_bootstrap_servers, timeout=120, stop=stopping)
        kafka.ensure_topics(s.kafka_bootstrap_servers, {s.control_topic: 1, s.snapshot_topic: 1,
                                                        s.dead_letter_topic: 1})

    def control_source() -> Any:
        return kafka.consumer(s.kafka_bootstrap_servers, s.consumer_group, **{
            "session.timeout.ms": 6000, "queued.max.messages.kbytes": 1024,
            "fetch.wait.max.ms": 100,  # a request is taken at once, not at the end of a long poll
            "max.poll.interval.ms": 86_400_000})  # a snapshot may take long; the offset waits for it

    def snapshot_writer(on_delivery: Callable) -> Any:
        return kafka.producer(s.kafka_bootstrap_servers, **{
            "linger.ms": 20, "compression.type": "none", "queue.buffering.max.kbytes": s.producer_queue_kb,
            "delivery.report.only.error": True, "on_delivery": on_delivery})

    return SnapshotterPorts(prepare_topics, control_source, snapshot_writer,
                            lambda: postgres.connect(**s.pg_params()))


def bootstrap(settings: SnapshotterSettings, **overrides: Any) -> Any:
    """The snapshotter, wired. ``overrides`` replace ports by name: ``prepare_topics``,
    ``control_source`` (an instance), ``snapshot_writer`` (an instance), ``source``."""
    from mallard.services.snapshotter.service import SnapshotterService

    given = dict(overrides)
    for name in ("control_source", "snapshot_writer"):
        if name in given:
            given[name] = (lambda instance: lambda *_: instance)(given[name])
    unknown = set(given) - set(SnapshotterPorts.__dataclass_fields__)
    if unknown:
        raise TypeError(f"no such port: {', '.join(sorted(unknown))}")
    return SnapshotterService(settings, ports=replace(real_ports(settings), **given))
