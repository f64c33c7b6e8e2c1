"""Kafka adapter (confluent-kafka: librdkafka's idempotent producer, fast consumer)."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from mallard.runtime.logs import librdkafka_logger

log = logging.getLogger("mallard.kafka")


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answered at the bootstrap servers in time."""


_security: dict[str, str] = {}
"""librdkafka security properties (security.protocol, sasl.*, ssl.*) every client of this
process gets: set once at start from the settings or the CLI's deployment."""


def use_client_config(props: dict[str, str]) -> None:
    """Give every Kafka client made from now on these security properties."""
    _security.clear()
    _security.update(props)


def _logging(config: dict[str, Any]) -> dict[str, Any]:
    """Every client's config: the process's security properties, and with JSON logs,
    librdkafka logging through Python logging (served when the client polls)."""
    logger = librdkafka_logger()
    config = {**_security, **config}
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


def quiet_metadata(bootstrap_servers: str, timeout: float) -> ClusterMetadata:
    """The cluster's metadata, or KafkaException. Quiet: librdkafka logs nothing (a probe
    of a broker that may be down must not print a line per refused connection)."""
    return AdminClient({**_security, "bootstrap.servers": bootstrap_servers, "log_level": 0}).list_topics(timeout=timeout)


def broker_answers(bootstrap_servers: str, timeout: float = 5.0) -> str | None:
    """None when a broker answers; else why not."""
    try:
        quiet_metadata(bootstrap_servers, timeout)
        return None
    except KafkaException as e:
        return f"no Kafka broker answered at {bootstrap_servers} within {timeout:.0f}s ({e.args[0].str()})"


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
    (murmur2), so a key lands on the same partition as when Kafka Connect writes it."""
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
        # When the prefetch queue is full, fetching resumes this soon after it drains below
        # its bound (librdkafka's default waits a whole second: the reader starves).
        "fetch.queue.backoff.ms": 10,
        "log_level": 3,
    }
    config.update(overrides)
    return Consumer(_logging(config))


INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")
INSPECTION_GROUPS = ("mallard-cli-inspect", "mallard-cli-tail", "mallard-read-to-end")
"""Groups mallard's own readers use without consuming as a group (never listed as consumers)."""
MALLARD_GROUPS = ("mallard-applier", "mallard-applier-snapshots", "mallard-snapshotter", "mallard-scheduler")


def topic_names(metadata: ClusterMetadata) -> Iterable[str]:
    """Every topic but Kafka's own (Debezium's ``__debezium-heartbeat.<prefix>`` is kept)."""
    return (t for t in metadata.topics if t not in INTERNAL_TOPICS and not (t.startswith("__") and "heartbeat" not in t))


def end_offsets(bootstrap_servers: str, partitions: list[tuple[str, int]], timeout: float = 10.0
                ) -> dict[tuple[str, int], tuple[int, int]]:
    """(low, high) watermark per partition (ListOffsets), high being the offset the next
    message gets."""
    from confluent_kafka import TopicPartition

    reader = consumer(bootstrap_servers, "mallard-cli-inspect")
    try:
        return {tp: reader.get_watermark_offsets(TopicPartition(*tp), timeout=timeout) for tp in partitions}
    finally:
        reader.close()


def committed_offsets(bootstrap_servers: str, group: str, partitions: list[tuple[str, int]], timeout: float = 10.0
                      ) -> dict[tuple[str, int], int | None]:
    """The group's committed offset per partition (None: it committed none there). Reads
    them without joining the group, so it disturbs no member."""
    from confluent_kafka import TopicPartition

    if not partitions:
        return {}
    reader = consumer(bootstrap_servers, group)
    try:
        out = {}
        for tp in reader.committed([TopicPartition(t, p) for t, p in partitions], timeout=timeout):
            out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        return out
    finally:
        reader.close()


def read_at(bootstrap_servers: str, topic: str, partition: int, offset: int, timeout: float = 5.0) -> Any | None:
    """The message at ``offset`` (or the first one after it), None if there is none yet."""
    from confluent_kafka import TopicPartition

    reader = consumer(bootstrap_servers, "mallard-cli-inspect", **{"enable.partition.eof": True,
                                                                   "queued.max.messages.kbytes": 1024})
    try:
        reader.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = reader.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return None
                raise KafkaException(msg.error())
            return msg
        return None
    finally:
        reader.close()


def consumer_groups(bootstrap_servers: str, timeout: float = 10.0) -> list[str]:
    """Consumer groups the cluster knows, but mallard's own inspection readers."""
    admin = admin_client(bootstrap_servers)  # kept until the answer is in: a collected client cancels it
    groups = admin.list_consumer_groups(request_timeout=timeout).result()
    if groups.errors and not groups.valid:
        raise KafkaException(groups.errors[0])
    return sorted(g.group_id for g in groups.valid if g.group_id not in INSPECTION_GROUPS)


def topic_summaries(bootstrap_servers: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Per topic: partitions, messages (high - low watermark, summed) and, per consumer
    group that committed offsets on it, the lag per partition (high watermark minus the
    committed offset; a partition where the group committed nothing counts whole)."""
    from mallard.core.status import partition_lag

    metadata = broker_metadata(bootstrap_servers, timeout)
    names = sorted(topic_names(metadata))
    partitions = [(t, p) for t in names for p in sorted(metadata.topics[t].partitions)]
    ends = end_offsets(bootstrap_servers, partitions, timeout)
    try:
        groups = consumer_groups(bootstrap_servers, timeout)
    except KafkaException:  # a broker that cannot list groups: mallard's own, by their default names
        groups = list(MALLARD_GROUPS)
    committed = {g: committed_offsets(bootstrap_servers, g, partitions, timeout) for g in groups}
    out = []
    for name in names:
        parts = [p for t, p in partitions if t == name]
        groups = {}
        for group, offsets in committed.items():
            mine = {p: offsets.get((name, p)) for p in parts}
            if any(o is not None for o in mine.values()):
                groups[group] = partition_lag({p: ends[(name, p)] for p in parts}, mine)
        out.append({"topic": name, "partitions": len(parts),
                    "messages": sum(max(0, ends[(name, p)][1] - ends[(name, p)][0]) for p in parts),
                    "groups": groups})
    return out


STARTUP_GRACE_S = 10.0
"""How long a reader waits for the broker's first answer before its idle time starts."""


def read_topic(
    bootstrap_servers: str, topic: str, from_beginning: bool = True, limit: int | None = None,
    idle_timeout: float | None = 5.0, partition: int | None = None, offset: int | None = None,
    from_time_ms: int | None = None,
) -> Iterable[Any]:
    """Yield a topic's messages without joining a consumer group, until ``limit`` messages
    or ``idle_timeout`` seconds without one (None: follow for ever). Where to start: one
    ``partition`` only (at ``offset``, else as the rest says), the first message at or
    after ``from_time_ms``, the beginning, or the end (only what comes next)."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    deadline = time.monotonic() + (idle_timeout or 30.0)
    while topic not in (metadata := broker_metadata(bootstrap_servers)).topics:  # it may be about to appear
        if time.monotonic() > deadline:
            raise ValueError(f"topic {topic!r} does not exist at {bootstrap_servers}")
        time.sleep(0.5)
    reader = consumer(bootstrap_servers, "mallard-cli-tail", **{"queued.max.messages.kbytes": 16 * 1024,
                                                                "enable.partition.eof": True})
    partitions = sorted(metadata.topics[topic].partitions)
    if partition is not None:
        if partition not in partitions:
            reader.close()
            raise ValueError(f"topic {topic!r} has no partition {partition} (it has {len(partitions)})")
        partitions = [partition]
    if offset is not None:
        start = [TopicPartition(topic, p, offset) for p in partitions]
    elif from_time_ms is not None:
        # offsets_for_times: each partition's first offset at or after the time (its end if none).
        found = reader.offsets_for_times([TopicPartition(topic, p, from_time_ms) for p in partitions], timeout=10)
        start = [TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END) for tp in found]
    else:
        start = [TopicPartition(topic, p, OFFSET_BEGINNING if from_beginning else OFFSET_END) for p in partitions]
    reader.assign(start)
    seen = 0
    try:
        # The idle time counts from the broker's first answer (a message, or the end of a
        # partition), not from the assignment: reaching the partitions takes a moment.
        last, answered, startup = time.monotonic(), False, STARTUP_GRACE_S
        while (limit is None or seen < limit) and (
                idle_timeout is None or time.monotonic() - last < idle_timeout + (0 if answered else startup)):
            msg = reader.poll(0.2)
            if msg is None:
                continue
            if not answered:
                answered, last = True, time.monotonic()
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
    until every partition has said it is at its end, or ``idle`` seconds pass without a message.
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
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            msg = reader.poll(0.1)
            reached = all(position[p] + 1 >= high[p] for p in parts)
            end = msg is not None and msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF
            if end:
                at_end.add(msg.partition())
            if msg is None or end:
                if reached and (at_end >= set(parts) or time.monotonic() - last >= idle):
                    return
                continue
            at_end.discard(msg.partition())
            if msg.error():
                raise KafkaException(msg.error())
            position[msg.partition()] = msg.offset()
            last = time.monotonic()
            yield msg
        raise BrokerUnavailable(f"reading {topic} to its end took more than {timeout:.0f}s")
    finally:
        reader.close()


def partition_facts(admin: AdminClient, group: str, topics: Iterable[str], timeout: float = 5.0) -> dict[tuple[str, int], Any]:
    """What Kafka says now of every partition of ``topics`` (mallard/core/data_loss.py's
    ``Observed``): low and high watermarks, ``group``'s committed offset, the topic's id. A
    topic that does not exist (or does not answer) is left out: no evidence either way."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicCollection, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    from mallard.core.data_loss import Observed

    topics = sorted(set(topics))
    if not topics:
        return {}
    ids, parts = {}, []
    for topic, future in admin.describe_topics(TopicCollection(topics), request_timeout=timeout).items():
        try:
            described = future.result(timeout)
        except KafkaException:
            continue
        ids[topic] = str(described.topic_id)
        parts += [(topic, p.id) for p in described.partitions]
    if not parts:
        return {}
    ends = {}
    for name, spec in (("low", OffsetSpec.earliest()), ("high", OffsetSpec.latest())):
        futures = admin.list_offsets({TopicPartition(t, p): spec for t, p in parts}, request_timeout=timeout)
        for tp, future in futures.items():
            try:
                ends.setdefault((tp.topic, tp.partition), {})[name] = future.result(timeout).offset
            except KafkaException:
                pass
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in parts])]
    committed = {}
    for future in admin.list_consumer_group_offsets(request, request_timeout=timeout).values():
        for tp in future.result(timeout).topic_partitions or []:
            if tp.error is None and tp.offset >= 0:
                committed[(tp.topic, tp.partition)] = tp.offset
    return {tp: Observed(e["low"], e["high"], committed.get(tp), ids[tp[0]])
            for tp, e in ends.items() if "low" in e and "high" in e}


# -- errors, as transient or terminal (mallard/core/errors.py) --------------------------

def translate(e: BaseException) -> BaseException:
    """A KafkaException as TransientError (the broker unreachable, a timeout, anything
    librdkafka says is retriable) or TerminalError (fatal, or refused for what was sent:
    too large, not authorized, an unknown topic); anything else as it is."""
    from mallard.core.errors import TerminalError, TransientError

    if not isinstance(e, KafkaException) or not e.args or not isinstance(e.args[0], KafkaError):
        return e
    error: KafkaError = e.args[0]
    transient = not error.fatal() and (error.retriable() or error.code() in _TRANSIENT_CODES)
    translated = (TransientError if transient else TerminalError)(error.str())
    translated.__cause__ = e
    return translated


_TRANSIENT_CODES = {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
                    KafkaError._MSG_TIMED_OUT, KafkaError._QUEUE_FULL, KafkaError.REQUEST_TIMED_OUT,
                    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.REBALANCE_IN_PROGRESS,
                    KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION}


class TopicWriter:
    """Writes messages to one topic and waits until Kafka has them: the applier's dead
    letters and snapshot requests. The producer is made at the first message (nothing
    connects before it is needed) and shared between the writers given the same one."""

    def __init__(self, bootstrap_servers: str, topic: str, shared: dict[str, Any] | None = None,
                 flush_timeout_s: float = 30.0):
        self.bootstrap_servers, self.topic, self.flush_timeout_s = bootstrap_servers, topic, flush_timeout_s
        self._shared = shared if shared is not None else {}

    def send(self, key: bytes | None, value: bytes) -> None:
        """Raises TransientError when Kafka did not take it within the flush timeout."""
        from mallard.core.errors import TransientError

        p = self._shared.get("producer")
        if p is None:
            p = self._shared["producer"] = producer(self.bootstrap_servers)
        try:
            p.produce(self.topic, key=key, value=value)
        except KafkaException as e:  # e.g. too large: terminal; the broker unreachable: transient
            raise translate(e) from e
        except BufferError as e:  # the producer's queue is full: it drains
            raise TransientError(f"the producer's queue is full: {e}") from e
        if p.flush(self.flush_timeout_s) != 0:
            raise TransientError(f"the topic {self.topic} did not take it in {self.flush_timeout_s:.0f}s")
