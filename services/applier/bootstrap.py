"""Wiring: ``bootstrap(settings, **overrides)`` returns the applier with its ports, the real
adapters unless a test hands it its own (the fakes of services/applier/fakes.py).

Nothing connects here: the real adapters are made when ``run()`` needs them (after it
has waited for the broker), so a wired service costs nothing until it runs."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mallard.services.applier.config import ApplierSettings
from mallard.services.applier.ports import ChangeSource, Clock, DeadLetters, Replica, SnapshotRequests, SystemClock


@dataclass
class ApplierPorts:
    prepare_topics: Callable[[threading.Event], None]
    """Wait for the broker, create the topics the applier writes."""
    open_replica: Callable[[dict[str, str]], Replica]
    """The replica, given the replication config's stream -> table names."""
    change_source: Callable[[Callable], ChangeSource]
    """The CDC and transaction topics' consumer, given the offset-commit callback."""
    snapshot_source: Callable[[Callable], ChangeSource]
    """The snapshot topic's consumer, given the offset-commit callback."""
    dead_letters: DeadLetters
    snapshot_requests: SnapshotRequests
    clock: Clock
    source_position: Callable[[Any], Any]
    """The source's WAL position (callable, with close()), given the logger."""
    data_loss: Any
    """The watch for data Kafka lost (services/applier/data_loss.DataLossWatch)."""
    spill: Callable[[], Any] | None = None
    """Where transactions too big for memory go (a ``SpillFactory``, mallard/core/spill.py),
    made when the service starts (emptied of what a crash left); None: they stay in memory."""
    tune_process: bool = True
    """Tune the process for throughput (the cycle collector, the GIL's switch interval): not in a test's process."""


def real_ports(s: ApplierSettings) -> ApplierPorts:
    from mallard.adapters import kafka
    from mallard.adapters.duckdb_replica import DuckDBReplica
    from mallard.adapters.spill_files import SpillFolder
    from mallard.services.applier.data_loss import DataLossWatch
    from mallard.services.applier.source_position import SourcePosition

    def prepare_topics(stopping: threading.Event) -> None:
        kafka.wait_for_broker(s.kafka_bootstrap_servers, timeout=120, stop=stopping)
        kafka.ensure_topics(s.kafka_bootstrap_servers, {s.dead_letter_topic: 1, s.snapshot_topic: 1})

    def open_replica(targets: dict[str, str]) -> Replica:
        Path(s.duckdb_path).parent.mkdir(parents=True, exist_ok=True)
        return DuckDBReplica(s.duckdb_path, s.duckdb_memory_limit, targets=targets, threads=s.duckdb_threads,
                             checkpoint_threshold=s.duckdb_checkpoint_threshold, snapshot_merge=s.snapshot_merge)

    def change_source(on_commit: Callable) -> ChangeSource:
        return kafka.consumer(s.kafka_bootstrap_servers, s.consumer_group, **{
            "session.timeout.ms": s.session_timeout_ms,
            "topic.metadata.refresh.interval.ms": s.topic_refresh_ms,
            "queued.max.messages.kbytes": s.fetch_queue_kb,
            "on_commit": on_commit,
        })

    def snapshot_source(on_commit: Callable) -> ChangeSource:
        return kafka.consumer(s.kafka_bootstrap_servers, s.snapshot_group, **{
            "queued.max.messages.kbytes": s.snapshot_fetch_queue_kb,
            "fetch.wait.max.ms": 100,  # a snapshot's first batches are taken at once
            "fetch.max.bytes": s.snapshot_fetch_queue_kb * 1024 // 4,
            "max.partition.fetch.bytes": s.snapshot_fetch_queue_kb * 1024 // 4,
            "on_commit": on_commit,
        })

    shared: dict[str, Any] = {}  # one producer: dead letters and snapshot requests
    return ApplierPorts(
        prepare_topics=prepare_topics, open_replica=open_replica, change_source=change_source,
        snapshot_source=snapshot_source,
        dead_letters=kafka.TopicWriter(s.kafka_bootstrap_servers, s.dead_letter_topic, shared),
        snapshot_requests=kafka.TopicWriter(s.kafka_bootstrap_servers, s.control_topic, shared),
        clock=SystemClock(), source_position=lambda log: SourcePosition(s, log), data_loss=DataLossWatch(),
        spill=lambda: SpillFolder(f"{s.duckdb_path}.spill"))


def bootstrap(settings: ApplierSettings, **overrides: Any) -> Any:
    """The applier, wired. ``overrides`` replace ports by name: ``replica``, ``change_source``,
    ``snapshot_source`` (instances: the service uses them as they are), ``dead_letters``,
    ``snapshot_requests``, ``clock``, ``data_loss``, ``source_position`` (a callable giving
    the source's WAL position, or None), ``prepare_topics`` (called with the stop event),
    ``spill`` (a SpillFactory, e.g. mallard.core.spill.MemorySpill; None: no spilling), ``tune_process``."""
    from mallard.services.applier.service import ApplierService

    ports = real_ports(settings)
    given = dict(overrides)
    if "replica" in given:
        replica = given.pop("replica")
        given["open_replica"] = lambda targets: replica
    for name in ("change_source", "snapshot_source"):
        if name in given:
            given[name] = (lambda source: lambda on_commit: source)(given[name])
    if "spill" in given:
        given["spill"] = (lambda factory: None if factory is None else lambda: factory)(given["spill"])
    if "source_position" in given:
        given["source_position"] = (lambda position: lambda log: _Closable(position))(given["source_position"])
    unknown = set(given) - set(ApplierPorts.__dataclass_fields__)
    if unknown:
        raise TypeError(f"no such port: {', '.join(sorted(unknown))}")
    return ApplierService(settings, replace(ports, **given))


class _Closable:
    def __init__(self, fn: Callable[[], int | None]):
        self.fn = fn

    def __call__(self) -> int | None:
        return self.fn()

    def close(self) -> None:
        pass
