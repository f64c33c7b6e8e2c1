"""In-memory fakes of the applier's ports (services/applier/ports.py), for unit tests that
drive the applier's loop without a server: ``bootstrap(settings, **fake_ports(...))``.

What they keep lives in "stores" (``FakeKafka``, ``ReplicaStore``) that outlive one
service, so a test can stop (or crash) an applier and start another on the same Kafka
and the same replica, as a restart would.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson
from confluent_kafka import TopicPartition

from mallard.core.errors import TerminalError, TransientError
from mallard.core.merge import TableChanges
from mallard.core.replica_sql import NEEDS_RESNAPSHOT, OK, ApplyStats, PreparedBatch, SnapshotResult
from mallard.core.transactions import Transaction

OFFSET_INVALID = -1001


# -- Kafka --------------------------------------------------------------------------------

class FakeMessage:
    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None):
        self._topic, self._partition, self._offset, self._key, self._value = topic, partition, offset, key, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class FakeKafka:
    """Topics (partition -> messages) and each group's committed offsets."""

    def __init__(self) -> None:
        self.topics: dict[str, dict[int, list[tuple[bytes | None, bytes | None]]]] = {}
        self.committed: dict[str, dict[tuple[str, int], int]] = {}
        self.lock = threading.Lock()

    def create(self, topic: str, partitions: int = 1) -> None:
        with self.lock:
            parts = self.topics.setdefault(topic, {})
            for p in range(partitions):
                parts.setdefault(p, [])

    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int = 0) -> int:
        with self.lock:
            log = self.topics.setdefault(topic, {}).setdefault(partition, [])
            log.append((key, value))
            return len(log) - 1

    def consumer(self, group: str, **kwargs: Any) -> FakeConsumer:
        return FakeConsumer(self, group, **kwargs)


class Crash(BaseException):
    """What a fake raises to stop an applier as a SIGKILL would: nothing after it runs
    (not an Exception: no handler of the applier's catches it)."""


class FakeConsumer:
    """confluent_kafka.Consumer's calls the applier makes. A subscription (names, or
    patterns starting with ^) is assigned at the first ``consume``; each assigned partition
    is read from its committed offset (else from its start); ``rebalance`` revokes and
    assigns again as the group would."""

    def __init__(self, kafka: FakeKafka, group: str, chunk: int = 7,
                 on_commit: Callable[[list[TopicPartition]], None] | None = None):
        self.kafka, self.group, self.chunk = kafka, group, chunk
        self.subscription: list[str] | None = None
        self.on_assign: Callable | None = None
        self.assigned: list[tuple[str, int]] = []
        self.positions: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()
        self.pauses: list[set[tuple[str, int]]] = []
        """Every pause() call's partitions (what a test looks at)."""
        self.before_commit = on_commit
        """Called with the offsets before each commit (a test's hook: raise Crash to kill the applier there)."""
        self._pending_assign = False
        self._next_assignment: list[tuple[str, int]] | None = None
        self._turn = 0
        self.prefer: list[str] = []
        """Topics read first, in this order, whenever they have messages (else: in turn)."""
        self.closed = False

    # subscription and assignment
    def subscribe(self, topics: list[str], on_assign: Callable | None = None, **callbacks: Callable) -> None:
        self.subscription, self.on_assign, self._pending_assign = list(topics), on_assign, True

    def poll(self, timeout: float = -1) -> FakeMessage | None:
        messages = self.consume(1, timeout)
        return messages[0] if messages else None

    def _matching(self) -> list[tuple[str, int]]:
        with self.kafka.lock:
            out = []
            for topic, parts in sorted(self.kafka.topics.items()):
                if any(re.fullmatch(s[1:] if s.startswith("^") else re.escape(s), topic) for s in self.subscription):
                    out += [(topic, p) for p in sorted(parts)]
            return out

    def rebalance(self, partitions: list[tuple[str, int]] | None = None) -> None:
        """Revoke everything, then assign ``partitions`` (default: all the subscription
        matches now), each read again from its committed offset."""
        self.assigned, self.positions, self.paused = [], {}, set()
        self._pending_assign = True
        self._next_assignment = partitions

    def _assign_now(self) -> None:
        self._pending_assign = False
        parts = self._next_assignment or self._matching()
        self._next_assignment = None
        committed = self.kafka.committed.get(self.group, {})
        self.assigned = list(parts)
        self.positions = {tp: committed.get(tp, 0) for tp in parts}
        if self.on_assign is not None:
            self.on_assign(self, [TopicPartition(t, p) for t, p in parts])

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = [(tp.topic, tp.partition) for tp in partitions]
        self.positions = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in partitions}

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.assigned]

    # reading
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if self._pending_assign and self.subscription is not None:
            self._assign_now()
        out: list[FakeMessage] = []
        readable = [tp for tp in self.assigned if tp not in self.paused]
        if self.prefer:  # the partitions a test wants read ahead first
            readable.sort(key=lambda tp: (tp[0] not in self.prefer, self.prefer.index(tp[0]) if tp[0] in self.prefer
                                          else 0))
        # A few messages per partition in turn: partitions are read unevenly, as from a broker.
        for i in range(len(readable)):
            if len(out) >= num_messages:
                break
            tp = readable[(0 if self.prefer else self._turn + i) % len(readable)] if not self.prefer else readable[i]
            log = self.kafka.topics.get(tp[0], {}).get(tp[1], [])
            pos = self.positions.get(tp, 0)
            for offset in range(pos, min(len(log), pos + self.chunk, pos + num_messages - len(out))):
                out.append(FakeMessage(tp[0], tp[1], offset, *log[offset]))
                self.positions[tp] = offset + 1
        self._turn += 1
        if not out and timeout and timeout > 0:
            time.sleep(min(timeout, 0.002))
        return out

    def pause(self, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        self.paused |= tps
        self.pauses.append(tps)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, partition: TopicPartition) -> None:
        self.positions[(partition.topic, partition.partition)] = partition.offset

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), OFFSET_INVALID))
                for tp in partitions]

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = -1,
                              cached: bool = False) -> tuple[int, int]:
        return 0, len(self.kafka.topics.get(partition.topic, {}).get(partition.partition, []))

    # offsets
    def commit(self, offsets: list[TopicPartition] | None = None, asynchronous: bool = True) -> None:
        if offsets is None:  # as librdkafka: the positions of what was consumed
            offsets = [TopicPartition(t, p, pos) for (t, p), pos in self.positions.items()]
        if self.before_commit is not None:
            self.before_commit(offsets)
        with self.kafka.lock:
            group = self.kafka.committed.setdefault(self.group, {})
            for tp in offsets:
                group[(tp.topic, tp.partition)] = tp.offset

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        group = self.kafka.committed.get(self.group, {})
        return [TopicPartition(tp.topic, tp.partition, group.get((tp.topic, tp.partition), OFFSET_INVALID))
                for tp in partitions]

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        if topic is not None and topic not in self.kafka.topics:
            self.kafka.create(topic)  # as a broker that creates topics on first use
        return SimpleNamespace(topics={t: SimpleNamespace(partitions={p: None for p in parts})
                                       for t, parts in self.kafka.topics.items()})

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """A producer onto a FakeKafka (produce, poll, flush), as the snapshotter uses one."""

    def __init__(self, kafka: FakeKafka):
        self.kafka = kafka

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None, headers: Any = None,
                **_: Any) -> None:
        self.kafka.produce(topic, key, value)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        return 0


class KafkaTopicWriter:
    """A topic port (``send``) that writes to a FakeKafka topic, for readers to find again."""

    def __init__(self, kafka: FakeKafka, topic: str):
        self.kafka, self.topic = kafka, topic

    def send(self, key: bytes | None, value: bytes) -> None:
        self.kafka.produce(self.topic, key, value)


class FakeTopic:
    """The dead-letter topic, or the control topic: what was sent, parsed."""

    def __init__(self, fail: bool = False):
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    def send(self, key: bytes | None, value: bytes) -> None:
        if self.fail:
            raise TransientError("the fake topic does not take messages")
        self.sent.append(orjson.loads(value))


# -- DuckDB -------------------------------------------------------------------------------

@dataclass
class ReplicaStore:
    """What a replica holds across restarts."""

    applied_lsn: int = 0
    recent: dict[int, int] = field(default_factory=dict)
    rows: dict[str, dict[tuple, tuple]] = field(default_factory=dict)
    positions: dict[str, dict[tuple, int]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    applied: list[int] = field(default_factory=list)
    """Every transaction committed, in commit order, replays included (none should be)."""
    snapshots: set[str] = field(default_factory=set)
    """Snapshots merged."""
    abandoned: dict[str, str] = field(default_factory=dict)
    """snapshot_id -> why it was abandoned."""
    converging: dict[str, tuple[int, str]] = field(default_factory=dict)
    """stream -> (the DDL's transaction, what changed) of the DDL signals taken."""


@dataclass
class _Script:
    """What a fake batch holds: the final state per key, and the transactions."""

    writes: list[tuple[str, tuple, tuple | None, int]]
    transactions: list[Transaction]


class FakeReplica:
    """The replica's port, in memory. ``refuse(row)``: whether DuckDB would refuse a row (a
    terminal error); ``transient_failures``: how many commits fail transiently first."""

    def __init__(self, store: ReplicaStore | None = None, refuse: Callable[[tuple], bool] | None = None,
                 transient_failures: int = 0, commits_apart: bool = True):
        self.store = store if store is not None else ReplicaStore()
        self.refuse = refuse or (lambda row: False)
        self.transient_failures = transient_failures
        self.commits_apart = commits_apart
        self.confined = False
        self.commits = 0
        self.probes = 0
        self.chunks = 0
        self.crash_in_chunks: int | None = None
        self.closed = False
        self._staged: dict[str, dict[tuple, tuple]] = {}

    def applied_position(self) -> tuple[int, dict[int, int]]:
        return self.store.applied_lsn, dict(sorted(self.store.recent.items(), key=lambda kv: kv[1]))

    def progress(self) -> dict[str, Any] | None:
        lsn = self.store.applied_lsn
        return {"commit_lsn": f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"} if lsn else None

    def table_report(self) -> list[dict[str, Any]]:
        return [{"stream": s, "status": st} for s, st in sorted(self.store.status.items())]

    def confine(self, read_copy_path: str | None = None) -> None:
        self.confined = True

    def query(self, sql: str, limit: int = 10_000, timeout_s: float = 60.0) -> dict[str, Any]:
        raise NotImplementedError("the fake replica answers no SQL")

    def snapshot_cuts(self) -> dict[str, Any]:
        return {}

    def changes_schema(self, steps: list[dict[str, TableChanges]]) -> bool:
        return False

    def prepare(self, steps: list[dict[str, TableChanges]], transactions: list[Transaction],
                progress_events: int | None = None) -> PreparedBatch:
        stats = ApplyStats(transactions=len(transactions), dead=sum(t.dead for t in transactions))
        writes = []
        for step in steps:
            for stream, changes in step.items():
                stats.events += changes.events
                stats.events_by_stream[stream] = stats.events_by_stream.get(stream, 0) + changes.events
                if self.store.status.setdefault(stream, OK) != OK:
                    stats.skipped += changes.events
                    continue
                for key, state in changes.states.items():
                    writes.append((stream, key, state.row, state.position))
                    if state.row is None:
                        stats.deletes += 1
                    else:
                        stats.upserts += 1
        return PreparedBatch(_Script(writes, list(transactions)), stats)  # type: ignore[arg-type]

    def _check(self, batch: PreparedBatch) -> None:
        for stream, key, row, _ in batch.script.writes:
            if row is not None and self.refuse(row):
                raise TerminalError(f"Conversion Error: {stream} refuses {row!r}")

    def commit(self, batch: PreparedBatch) -> ApplyStats:
        if self.transient_failures > 0:
            self.transient_failures -= 1
            raise TransientError("IO Error: the fake disk is busy")
        self._check(batch)
        s = self.store
        for stream, key, row, position in batch.script.writes:
            positions = s.positions.setdefault(stream, {})
            if positions.get(key, -1) >= position:
                continue  # never overwrites a newer write
            positions[key] = position
            if row is None:
                s.rows.setdefault(stream, {}).pop(key, None)
            else:
                s.rows.setdefault(stream, {})[key] = row
        for tx in batch.script.transactions:
            s.applied.append(tx.tx_id)
            s.recent[tx.tx_id] = tx.commit_lsn
            if tx.live:
                s.applied_lsn = max(s.applied_lsn, tx.commit_lsn)
        self.commits += 1
        return batch.stats

    def commit_chunks(self, batches: Any) -> None:
        """One transaction of many batches: all of them or nothing (``crash_in_chunks``: the
        process dies after that many chunks, before the commit)."""
        writes: list = []
        transactions: list = []
        for n, batch in enumerate(batches, 1):
            self._check(batch)
            writes += batch.script.writes
            transactions += batch.script.transactions
            self.chunks += 1
            if self.crash_in_chunks is not None and n >= self.crash_in_chunks:
                self.crash_in_chunks = None
                raise Crash("the applier died in the middle of a chunked transaction")
        self.commit(PreparedBatch(_Script(writes, transactions), ApplyStats()))  # type: ignore[arg-type]

    def probe(self, batch: PreparedBatch) -> Exception | None:
        self.probes += 1
        try:
            self._check(batch)
        except TerminalError as e:
            return e
        return None

    def mark_for_resnapshot(self, stream: str, reason: str, tx_id: int | None) -> None:
        self.store.status[stream] = NEEDS_RESNAPSHOT

    def converge(self, stream: str, tx_id: int, reason: str) -> bool:
        asked = stream in self.store.converging
        self.store.converging[stream] = (tx_id, reason)
        return not asked

    def prune_recent(self) -> None:
        pass

    def has_snapshot(self, stream: str) -> bool:
        return True  # no first snapshots asked for: the tests say what they need

    def begin_snapshot(self, frame: Any) -> None:
        self._staged[frame.snapshot_id] = {}

    def stage_rows(self, frame: Any, rows: Any) -> None:
        """Rows DuckDB would refuse (``refuse``) fail the whole insert, as DuckDB's do."""
        staged = dict(self._staged[frame.snapshot_id])
        keys = [frame.schema.columns.index(c) for c in frame.schema.key_columns]
        for values in rows.to_pylist():
            row = tuple(values.values())
            if self.refuse(row):
                raise TerminalError(f"Conversion Error: {frame.stream} refuses {row!r}")
            staged[tuple(row[k] for k in keys)] = row
        self._staged[frame.snapshot_id] = staged

    def finish_snapshot(self, frame: Any) -> SnapshotResult:
        """A full refresh, the cut aside (the fake keeps no positions for snapshot rows)."""
        self.store.snapshots.add(frame.snapshot_id)
        staged = self._staged.pop(frame.snapshot_id, {})
        self.store.rows[frame.stream] = staged
        self.store.status[frame.stream] = OK
        return SnapshotResult(staged=len(staged), applied=len(staged))

    def abandon_snapshot(self, frame: Any, reason: str) -> None:
        self._staged.pop(frame.snapshot_id, None)
        self.store.abandoned[frame.snapshot_id] = reason

    def publish_copy(self, path: str) -> dict[str, Any]:
        raise NotImplementedError("the fake replica publishes no copy")

    def close(self) -> None:
        self.closed = True


# -- time, and the rest -------------------------------------------------------------------

class FakeClock:
    """Time that moves by ``step`` at every look (and by what is slept): a loop that waits
    for an interval gets there in a few rounds, and backoff costs no real time."""

    def __init__(self, step: float = 0.01, start: float = 1000.0):
        self.now, self.step = start, step
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            self.now += self.step
            return self.now

    def time(self) -> float:
        return 1_780_000_000.0 + self.monotonic()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds
        time.sleep(0)  # let the other threads run

    def slept_over(self, seconds: float) -> list[float]:
        """The sleeps longer than ``seconds`` (backoff, not the loop's short naps)."""
        return [s for s in self.slept if s > seconds]


class NoDataLoss:
    """The data-loss watch, with nothing ever lost."""

    detected = 0
    due = 0.0

    def __init__(self) -> None:
        self.topic_streams: dict[str, set[str]] = {}

    def configure(self, *args: Any) -> None:
        pass

    def expect_streams(self, streams: list[str]) -> None:
        pass

    def answer(self) -> None:
        return None

    def due_now(self, now: float) -> bool:
        return False

    def ask(self, *args: Any) -> None:
        pass

    def record(self, loss: Any, resnapshot: str | None) -> dict[str, Any]:
        return {}

    def snapshot_merged(self, frame: Any) -> None:
        pass

    def report(self) -> dict[str, Any]:
        return {}

    def metric_families(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass


def fake_ports(kafka: FakeKafka, replica: FakeReplica, *, group: str = "mallard-applier",
               snapshot_group: str = "mallard-applier-snapshots", clock: FakeClock | None = None,
               dead_letters: FakeTopic | None = None, snapshot_requests: FakeTopic | None = None,
               consumer: FakeConsumer | None = None, spill: Any = None) -> dict[str, Any]:
    """Every port of ``bootstrap``, faked: pass as ``bootstrap(settings, **fake_ports(...))``."""
    return {
        "prepare_topics": lambda stopping: None,
        "replica": replica,
        "change_source": consumer or kafka.consumer(group),
        "snapshot_source": kafka.consumer(snapshot_group),
        "dead_letters": dead_letters or FakeTopic(),
        "snapshot_requests": snapshot_requests or FakeTopic(),
        "clock": clock or FakeClock(),
        "source_position": lambda: None,
        "data_loss": NoDataLoss(),
        "tune_process": False,
        "spill": spill,
    }
