"""Kafka adapter (confluent-kafka: librdkafka's idempotent producer, fast consumer)."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from mallard.logs import librdkafka_logger

log = logging.getLogger("mallard.kafka")


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answered at the bootstrap servers in time."""


def _logging(config: dict[str, Any]) -> dict[str, Any]:
    """With JSON logs, librdkafka logs through Python logging (served when the client polls)."""
    logger = librdkafka_logger()
    return {**config, "logger": logger} if logger is not None else config


def admin_client(bootstrap_servers: str) -> AdminClient:
    return AdminClient(_logging({"bootstrap.servers": bootstrap_servers, "log_level": 3}))


def broker_metadata(bootstrap_servers: str, timeout: float = 5.0) -> ClusterMetadata:
    """Cluster metadata, or BrokerUnavailable naming the servers."""
    admin = admin_client(bootstrap_servers)
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as e:
        admin.poll(0)  # hand librdkafka's queued log lines to logging (JSON logs)
        raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap_servers}: {e}") from None


def wait_for_broker(bootstrap_servers: str, timeout: float, stop: Any = None) -> ClusterMetadata:
    """Retry with backoff until the broker answers (transient at start-up); log once."""
    deadline = time.monotonic() + timeout
    delay, logged = 0.2, False
    while True:
        try:
            return broker_metadata(bootstrap_servers, timeout=min(5.0, max(0.5, deadline - time.monotonic())))
        except BrokerUnavailable:
            if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            if not logged:
                log.warning("waiting for Kafka at %s", bootstrap_servers)
                logged = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def ensure_topics(bootstrap_servers: str, partitions_by_topic: dict[str, int], timeout: float = 15.0) -> list[str]:
    """Create missing topics (replication factor 1 locally); return the ones created."""
    admin = admin_client(bootstrap_servers)
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in partitions_by_topic.items() if t not in existing]
    created = []
    for topic, future in admin.create_topics(missing, operation_timeout=timeout).items() if missing else []:
        try:
            future.result(timeout)
            created.append(topic)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def producer(bootstrap_servers: str, **overrides: Any) -> Producer:
    """An idempotent, all-acks producer whose partitioner matches the Java client's
    (murmur2), so a key lands on the same partition whether Kafka Connect or our
    publisher wrote it."""
    config = {
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "log_level": 3,
    }
    config.update(overrides)
    return Producer(_logging(config))


def consumer(bootstrap_servers: str, group: str, **overrides: Any) -> Any:
    """A consumer that commits only when told (offsets are replication state) and
    fetches big (change events are a few kB each and arrive in bursts)."""
    from confluent_kafka import Consumer

    config = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
        "log_level": 3,
    }
    config.update(overrides)
    return Consumer(_logging(config))


def topic_names(metadata: ClusterMetadata) -> Iterable[str]:
    return (t for t in metadata.topics if not t.startswith("__"))


def topic_summaries(bootstrap_servers: str, timeout: float = 10.0) -> list[tuple[str, int, int]]:
    """(topic, partitions, messages) per topic; messages = sum of high - low watermarks."""
    from confluent_kafka import TopicPartition

    metadata = broker_metadata(bootstrap_servers, timeout)
    reader = consumer(bootstrap_servers, "mallard-cli-inspect")
    try:
        out = []
        for name in sorted(topic_names(metadata)):
            parts = metadata.topics[name].partitions
            total = 0
            for p in parts:
                low, high = reader.get_watermark_offsets(TopicPartition(name, p), timeout=timeout)
                total += max(0, high - low)
            out.append((name, len(parts), total))
        return out
    finally:
        reader.close()


def read_topic(
    bootstrap_servers: str, topic: str, from_beginning: bool = True, limit: int | None = None,
    idle_timeout: float = 5.0,
) -> Iterable[Any]:
    """Yield a topic's messages (all partitions) without joining a consumer group,
    until ``limit`` messages or ``idle_timeout`` seconds without one."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    deadline = time.monotonic() + idle_timeout
    while topic not in (metadata := broker_metadata(bootstrap_servers)).topics:  # it may be about to appear
        if time.monotonic() > deadline:
            raise ValueError(f"topic {topic!r} does not exist at {bootstrap_servers}")
        time.sleep(0.5)
    reader = consumer(bootstrap_servers, "mallard-cli-tail", **{"queued.max.messages.kbytes": 16 * 1024})
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    reader.assign([TopicPartition(topic, p, start) for p in metadata.topics[topic].partitions])
    seen = 0
    try:
        last = time.monotonic()
        while (limit is None or seen < limit) and time.monotonic() - last < idle_timeout:
            msg = reader.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(msg.error())
            last = time.monotonic()
            seen += 1
            yield msg
    finally:
        reader.close()


def read_to_end(bootstrap_servers: str, topic: str, idle: float = 1.0, timeout: float = 120.0) -> Iterable[Any]:
    """Yield every message of ``topic`` (all partitions, from the beginning, no consumer
    group) up to its end: each partition's high watermark as of the start, and then
    until ``idle`` seconds pass without a message (Tansu may under-report watermarks).
    A topic that does not exist yields nothing."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    metadata = broker_metadata(bootstrap_servers)
    if topic not in metadata.topics:
        return
    reader = consumer(bootstrap_servers, "mallard-read-to-end", **{"queued.max.messages.kbytes": 16 * 1024,
                                                                   "enable.partition.eof": True})
    try:
        parts = list(metadata.topics[topic].partitions)
        high = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        position = {p: -1 for p in parts}
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            msg = reader.poll(0.1)
            reached = all(position[p] + 1 >= high[p] for p in parts)
            if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
                if reached and time.monotonic() - last >= idle:
                    return
                continue
            if msg.error():
                raise KafkaException(msg.error())
            position[msg.partition()] = msg.offset()
            last = time.monotonic()
            yield msg
        raise BrokerUnavailable(f"reading {topic} to its end took more than {timeout:.0f}s")
    finally:
        reader.close()
