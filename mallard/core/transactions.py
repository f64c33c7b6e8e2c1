"""Hold change events until their whole Postgres transaction has arrived, across
topics and partitions, and release transactions in commit order. Pure.

Debezium's transaction topic (one partition) carries BEGIN/END in commit order;
END names the commit LSN and how many events the transaction wrote. A
transaction is complete when END has come and that many distinct events
(by ``total_order``) have come; complete transactions at the head of the
commit order are released. Kafka offsets are tracked per partition so that
only what has been applied is ever committed: per partition, the first offset of
each transaction held (a partition holds a transaction's messages in commit order).
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from mallard.core.changes import ChangeEvent, TransactionMarker

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class Transaction:
    tx_id: int
    commit_lsn: int
    committed_at_ms: int
    events: list[ChangeEvent]
    dead: int = 0
    """Events of this transaction that were dead-lettered (counted, never applied)."""
    partitions: list[TopicPartition] = field(default_factory=list)
    """Where its messages are (its events' partitions, its END's): held there until it is applied."""


def position(commit_lsn: int, total_order: int) -> int:
    """A write's place in commit order: broker-independent, stable across replays."""
    return (commit_lsn << 32) | total_order


class TransactionAssembler:
    def __init__(self, applied_lsn: int = 0, recent: dict[int, int] | None = None, recent_limit: int = 100_000):
        self.applied_lsn = applied_lsn
        """Commit LSN of the last transaction applied (persisted with the data)."""
        self.recent: OrderedDict[int, int] = OrderedDict(recent or {})
        """tx_id -> commit LSN of recently applied transactions, to drop their replayed events."""
        self.recent_limit = recent_limit
        self._events: dict[int, dict[int, ChangeEvent | None]] = {}
        self._ends: deque[TransactionMarker] = deque()
        self._ended: set[int] = set()
        self._held: dict[TopicPartition, dict[int, int]] = {}
        """Per partition: tx_id -> the first offset of that transaction's messages held there."""
        self._held_in: dict[int, list[TopicPartition]] = {}
        """tx_id -> the partitions where it has messages held."""
        self._next: dict[TopicPartition, int] = {}
        self._released: set[int] = set()
        """Transactions taken for DuckDB and not yet marked applied."""
        self._last_tx: dict[TopicPartition, int] = {}
        """Per partition, the transaction of the last event held from it."""
        self._marker_partitions: set[TopicPartition] = set()
        self.buffered_events = 0
        self.unknown_old_transactions = 0

    # -- input -------------------------------------------------------------------

    def _seen(self, tp: TopicPartition, offset: int) -> None:
        if offset >= self._next.get(tp, 0):
            self._next[tp] = offset + 1

    def _hold(self, tx_id: int, tp: TopicPartition, offset: int) -> None:
        """Keep ``offset`` uncommitted until the transaction is applied (or dropped)."""
        # Runs for every message: no throwaway containers (setdefault's default is built each call).
        self._seen(tp, offset)
        held = self._held.get(tp)
        if held is None:
            held = self._held[tp] = {}
        first = held.get(tx_id)
        if first is None:
            held[tx_id] = offset
            partitions = self._held_in.get(tx_id)
            if partitions is None:
                self._held_in[tx_id] = [tp]
            else:
                partitions.append(tp)
        elif offset < first:
            held[tx_id] = offset

    def _release(self, tx_id: int, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._held[tp].pop(tx_id, None)

    def is_applied(self, tx_id: int) -> bool:
        return tx_id in self.recent

    def _drop(self, tx_id: int) -> None:
        """Forget a transaction DuckDB will never get (it is older than the replica): its
        events are done, and later copies of them are dropped as they come."""
        self.buffered_events -= len(self._events.pop(tx_id, ()))
        self._release(tx_id, self._held_in.pop(tx_id, ()))
        self.recent[tx_id] = 0

    def add_event(self, event: ChangeEvent | None, tx_id: int, total_order: int, tp: TopicPartition, offset: int) -> None:
        """A data event (``event`` None: dead-lettered, but it still counts toward its transaction)."""
        if tx_id in self.recent or tx_id in self._released:  # a copy of an event DuckDB has (or is getting)
            self._seen(tp, offset)
            return
        self._last_tx[tp] = tx_id
        slot = self._events.get(tx_id)
        if slot is None:
            slot = self._events[tx_id] = {}
        self._hold(tx_id, tp, offset)
        if total_order not in slot:  # a duplicate delivery counts once
            slot[total_order] = event
            self.buffered_events += 1

    def add_marker(self, marker: TransactionMarker) -> None:
        tp = (marker.topic, marker.partition)
        self._marker_partitions.add(tp)
        if marker.status == "END" and marker.lsn <= self.applied_lsn and not self.is_applied(marker.tx_id):
            if len(self.recent) < self.recent_limit:
                # Older than what DuckDB holds, yet not a transaction it applied: the source's
                # LSNs went backwards (a new cluster behind an old replica?). Skipped, and said.
                self.unknown_old_transactions += 1
            self._drop(marker.tx_id)
        if marker.status != "END" or marker.lsn <= self.applied_lsn or self.is_applied(marker.tx_id) \
                or marker.tx_id in self._ended:
            self._seen(tp, marker.offset)
            return
        self._hold(marker.tx_id, tp, marker.offset)
        self._ends.append(marker)
        self._ended.add(marker.tx_id)

    def add_done(self, tp: TopicPartition, offset: int) -> None:
        """A message that needs nothing more (tombstone, BEGIN, dead-lettered garbage)."""
        self._seen(tp, offset)

    # -- output ------------------------------------------------------------------

    def take_ready(self, max_events: int) -> list[Transaction]:
        """Complete transactions at the head of commit order, up to ~max_events (at least one)."""
        ready: list[Transaction] = []
        taken = 0
        while self._ends:
            end = self._ends[0]
            got = self._events.get(end.tx_id, {})
            if len(got) < end.event_count or (ready and taken + end.event_count > max_events):
                break
            self._ends.popleft()
            self._ended.discard(end.tx_id)
            self._released.add(end.tx_id)
            events = self._events.pop(end.tx_id, {})
            self.buffered_events -= len(events)
            ordered = [events[k] for k in sorted(events)]
            live = [e for e in ordered if e is not None]
            ready.append(Transaction(end.tx_id, end.lsn, end.committed_at_ms, live, len(ordered) - len(live),
                                     self._held_in.pop(end.tx_id, [])))
            taken += end.event_count
        return ready

    def mark_applied(self, transactions: list[Transaction]) -> None:
        """After the DuckDB commit that holds them: their offsets may be committed."""
        for tx in transactions:
            self._release(tx.tx_id, tx.partitions)
            self.recent[tx.tx_id] = tx.commit_lsn
            self._released.discard(tx.tx_id)
            self.applied_lsn = max(self.applied_lsn, tx.commit_lsn)
        while len(self.recent) > self.recent_limit:
            self.recent.popitem(last=False)

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit: the first not yet applied, else the next one."""
        return {tp: min(held.values()) if (held := self._held.get(tp)) else nxt for tp, nxt in self._next.items()}

    def partitions_ahead(self, max_held: int) -> set[TopicPartition]:
        """Partitions to stop reading for now, so that memory stays bounded when some
        partitions are far ahead of others (a backlog is never read evenly): with
        ``max_held`` events held, each partition that has given an event of a transaction
        after the next one in commit order (it has nothing more for that one: a partition
        holds events in commit order), and with ``max_held`` transactions ended but
        incomplete, the transaction topic. What the next transaction still needs is read on."""
        ahead: set[TopicPartition] = set()
        if self.buffered_events >= max_held:
            head = self._ends[0].tx_id if self._ends else None
            events = self._events
            ahead.update(tp for tp, tx_id in self._last_tx.items() if tx_id != head and tx_id in events)
        if len(self._ends) >= max_held:
            ahead.update(self._marker_partitions)
        return ahead

    def head(self) -> tuple[int, int, int] | None:
        """(tx_id, events received, events expected) of the next transaction in commit order."""
        if not self._ends:
            return None
        end = self._ends[0]
        return end.tx_id, len(self._events.get(end.tx_id, ())), end.event_count

    def head_complete(self) -> bool:
        """Whether the next transaction in commit order could be released now."""
        if not self._ends:
            return False
        end = self._ends[0]
        return len(self._events.get(end.tx_id, ())) >= end.event_count

    @property
    def waiting_transactions(self) -> int:
        return len(self._ends)
