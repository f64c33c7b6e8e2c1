"""Wiring: ``bootstrap(settings, **overrides)`` returns the scheduler with its ports, the
real adapters unless a test hands it its own (e.g. services/applier/fakes.py's Kafka).
Nothing connects here."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mallard.services.scheduler.config import SchedulerSettings


@dataclass
class SchedulerPorts:
    prepare_topics: Callable[[threading.Event], None]
    """Wait for the broker, create the control topic."""
    control_source: Callable[[], Any]
    """The control topic's consumer (a ChangeSource with poll(), as services/applier/ports.py)."""
    control_topic: Any
    """Where fires are published: ``send(key, value)``, raises TransientError if Kafka does not take it."""
    clock: Any = None
    """The scheduler's clock (services/scheduler/service.Clock); None: from the settings."""


def real_ports(s: SchedulerSettings) -> SchedulerPorts:
    from mallard.adapters import kafka

    def prepare_topics(stopping: threading.Event) -> None:
        kafka.wait_for_broker(s.kafka_bootstrap_servers, timeout=120, stop=stopping)
        kafka.ensure_topics(s.kafka_bootstrap_servers, {s.control_topic: 1})

    def control_source() -> Any:
        return kafka.consumer(s.kafka_bootstrap_servers, s.consumer_group, **{
            "session.timeout.ms": s.session_timeout_ms, "heartbeat.interval.ms": max(500, s.session_timeout_ms // 6),
            "enable.partition.eof": True, "partition.assignment.strategy": "range"})

    return SchedulerPorts(prepare_topics, control_source, kafka.TopicWriter(s.kafka_bootstrap_servers, s.control_topic))


def bootstrap(settings: SchedulerSettings, **overrides: Any) -> Any:
    """The scheduler, wired. ``overrides`` replace ports by name: ``prepare_topics``,
    ``control_source`` (an instance), ``control_topic``, ``clock``."""
    from mallard.services.scheduler.service import SchedulerService

    given = dict(overrides)
    if "control_source" in given:
        given["control_source"] = (lambda source: lambda: source)(given["control_source"])
    unknown = set(given) - set(SchedulerPorts.__dataclass_fields__)
    if unknown:
        raise TypeError(f"no such port: {', '.join(sorted(unknown))}")
    return SchedulerService(settings, ports=replace(real_ports(settings), **given))
