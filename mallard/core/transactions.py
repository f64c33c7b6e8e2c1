"""Hold change events until their whole Postgres transaction has arrived, across
topics and partitions, and release transactions in commit order. Pure.

Debezium's transaction topic (one partition) carries BEGIN/END in commit order;
END names the commit LSN and how many events the transaction wrote. A
transaction is complete when END has come and that many distinct events
(by ``total_order``) have come; complete transactions at the head of the
commit order are released. Kafka offsets are tracked per partition so that
only what has been applied is ever committed: per partition, the first offset of
each transaction held (a partition holds a transaction's messages in commit order).

The topics are untrusted input: no single message may halt or corrupt replication.
- An END claims a commit LSN; before it can become the replica's position it must
  be one the source has reached: when it is beyond the last LSN known of the source,
  the source is asked (``source_lsn``, a port: ``pg_current_wal_lsn()`` in the
  applier), at most every ``lsn_check_interval_s``; an END beyond that answer is
  refused. While the source cannot be asked, an END at most ``lsn_window`` beyond
  the last LSN known passes (nothing known yet: anything passes, there is no bound).
- An END claiming no events is refused (Debezium ends only transactions it began,
  on their first event).
- A transaction whose events are all dead-lettered never moves the position.
- A transaction at the head of commit order that gains nothing for
  ``stuck_after_s`` is reported (``stuck``); after ``give_up_after_s`` it is
  expired: its events are handed back (``expired``) to be dead-lettered and their
  streams re-snapshotted, and later transactions flow again. Events whose END never
  comes are expired after ``give_up_after_s`` alike.
Refused markers and expired events wait in ``refused`` / ``expired`` for the caller.

Memory: past ``memory_bound_bytes`` of events held (estimated, mallard/core/spill.py),
the biggest transaction held is spilled (``spill``, a port: files in the applier) and
the events it gains go there too; it is released alone, its events read back in chunks.
Time comes only from ``tick(now)`` and the injected ``clock`` (LSN checks, and the
time of what arrives before the first ``tick``), so tests drive it. ``tick`` takes the
clock's time: a restarted applier reads a backlog before it first ticks, and that
backlog waits from when the assembler was made, never from the clock's zero
(``time.monotonic()`` counts from boot: "since 0" would be hours, and a replay expired).
"""
from __future__ import annotations

import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mallard.core.changes import ChangeEvent, TransactionMarker
from mallard.core.spill import SeenOrders, SpilledEvents, SpillFactory, event_bytes

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
    spilled: SpilledEvents | None = None
    """Its events, when they were too many to hold in memory (``events`` is then empty):
    read back in chunks, applied in one DuckDB transaction all the same."""

    @property
    def live(self) -> int:
        """Events to apply (those dead-lettered are not)."""
        return self.spilled.count if self.spilled is not None else len(self.events)


class _Spilled:
    """A transaction's slot once spilled: what the in-memory dict of total_order -> event
    answers (how many, which seen), with the events themselves in ``store``."""

    __slots__ = ("store", "seen", "received", "dead")

    def __init__(self, store: SpilledEvents, held: dict[int, ChangeEvent | None]):
        self.store, self.seen, self.received, self.dead = store, SeenOrders(held), 0, 0
        for order in sorted(held):
            self._put(order, held[order])

    def __len__(self) -> int:
        return self.received

    def __contains__(self, order: int) -> bool:
        return order in self.seen

    def __setitem__(self, order: int, event: ChangeEvent | None) -> None:
        self.seen.add(order)
        self._put(order, event)

    def _put(self, order: int, event: ChangeEvent | None) -> None:
        self.received += 1
        if event is None:
            self.dead += 1
        else:
            self.store.add(order, event)


@dataclass(slots=True)
class Refusal:
    """A message that must not be applied, and why: dead-lettered by the caller."""

    topic: str
    partition: int
    offset: int
    reason: str
    event: ChangeEvent | None = None
    """An expired transaction's event (its stream is to be re-snapshotted); None: a marker."""
    stream: str | None = None


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def position(commit_lsn: int, total_order: int) -> int:
    """A write's place in commit order: broker-independent, stable across replays."""
    return (commit_lsn << 32) | total_order


class TransactionAssembler:
    def __init__(self, applied_lsn: int = 0, recent: dict[int, int] | None = None, recent_limit: int = 100_000, *,
                 source_lsn: Callable[[], int | None] | None = None, clock: Callable[[], float] = time.monotonic,
                 lsn_check_interval_s: float = 0.1, lsn_window: int = 64 << 30,
                 stuck_after_s: float = 60.0, give_up_after_s: float = 600.0, expired_limit: int = 10_000,
                 spill: SpillFactory | None = None, memory_bound_bytes: int = 0):
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
        self._holds = 0
        """The last token ``hold`` gave out."""
        self.buffered_events = 0
        """Events held in memory (a spilled transaction's are not)."""
        self.unknown_old_transactions = 0
        # -- memory: spill the biggest transaction past the bound (0: never)
        self._spill = spill
        self.memory_bound_bytes = memory_bound_bytes if spill is not None else 0
        self.event_bytes = 1000
        """Estimated bytes per held event (sampled, see ``_check_memory``)."""
        self._spill_at = self.memory_bound_bytes // self.event_bytes
        self._check_at = min(self._spill_at, 64) if self.memory_bound_bytes else sys.maxsize
        self._sampled = False
        """Events held at which memory is looked at next (one comparison per event until then)."""
        self.transactions_spilled = 0
        self.events_spilled = 0
        # -- bounds against hostile input (see the module's docstring)
        self._source_port = source_lsn
        self._clock = clock
        self.lsn_check_interval_s = lsn_check_interval_s
        self.lsn_window = lsn_window
        self.stuck_after_s = stuck_after_s
        self.give_up_after_s = give_up_after_s
        self.source_lsn = applied_lsn
        """The highest LSN the source is known to have reached (asked, or an END accepted)."""
        self.source_unreachable = False
        """The last time the source was asked, it did not answer (the window applies)."""
        self._asked_at = float("-inf")
        self._now = clock()
        """The time of the last ``tick``; before the first one, when this assembler was made."""
        self._first_seen: dict[int, float] = {}
        """tx_id -> when its first event was held (events whose END never comes are expired)."""
        self._end_seen: dict[int, float] = {}
        """tx_id -> when its END came (a forged one waits from then, not from reaching the head)."""
        self._head_state: tuple[int, int, float] | None = None
        """(tx_id, events received, since when) of the head while it gains nothing."""
        self._expired: OrderedDict[int, None] = OrderedDict()
        """Transactions expired: their late messages are refused too (bounded memory)."""
        self.expired_limit = expired_limit
        self.refused: list[Refusal] = []
        """Markers refused and events expired, for the caller to dead-letter (and drain)."""
        self.stuck: str | None = None
        """Why replication is held up past ``stuck_after_s``, or None."""
        self.stuck_seconds = 0.0
        self.markers_refused = 0
        self.transactions_expired = 0

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

    def _drop(self, marker: TransactionMarker) -> None:
        """Forget a transaction DuckDB will never get (it is older than the replica). Not taken
        for applied (the END may be forged, naming a transaction still to come): its events,
        held and late, are refused, so their streams are re-snapshotted, never silently lost."""
        tx_id = marker.tx_id
        reason = (f"transaction {tx_id} ends at LSN {lsn_text(marker.lsn)}, not after the replica's position "
                  f"{lsn_text(self.applied_lsn)}, yet the replica never applied it: dropped")
        self.refused.extend(self._refusals(tx_id, reason))
        self._pop_events(tx_id)
        self._release(tx_id, self._held_in.pop(tx_id, ()))
        self._first_seen.pop(tx_id, None)
        self._remember_expired(tx_id)

    def _remember_expired(self, tx_id: int) -> None:
        self._expired[tx_id] = None
        while len(self._expired) > self.expired_limit:
            self._expired.popitem(last=False)

    def add_event(self, event: ChangeEvent | None, tx_id: int, total_order: int, tp: TopicPartition, offset: int) -> None:
        """A data event (``event`` None: dead-lettered, but it still counts toward its transaction)."""
        if tx_id in self.recent or tx_id in self._released:  # a copy of an event DuckDB has (or is getting)
            self._seen(tp, offset)
            return
        self._last_tx[tp] = tx_id
        slot = self._events.get(tx_id)
        if slot is None:  # once per transaction, not per event
            if tx_id in self._expired:  # late: its transaction was given up on
                self._seen(tp, offset)
                if event is not None:
                    self.refused.append(Refusal(tp[0], tp[1], offset, f"an event of transaction {tx_id}, which was "
                                                f"expired incomplete before it came", event, event.stream))
                return
            slot = self._events[tx_id] = {}
            self._first_seen[tx_id] = self._now
        # self._hold(tx_id, tp, offset), inlined: this runs for every event.
        if offset >= self._next.get(tp, 0):
            self._next[tp] = offset + 1
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
        if total_order not in slot:  # a duplicate delivery counts once
            slot[total_order] = event
            if type(slot) is dict:
                self.buffered_events += 1
                if self.buffered_events >= self._check_at:
                    self._check_memory(event)
            else:
                self.events_spilled += 1

    # -- memory --------------------------------------------------------------------

    def _check_step(self) -> int:
        return max(1, min(4096, self._spill_at // 8))

    def _check_memory(self, event: ChangeEvent | None) -> None:
        """Every few thousand events held more: the size of an event (sampled), and past the
        bound, spill."""
        if event is not None:
            size = event_bytes(event)
            self.event_bytes = max(64, (self.event_bytes * 3 + size) // 4 if self._sampled else size)
            self._sampled = True
            self._spill_at = self.memory_bound_bytes // self.event_bytes
        if self.buffered_events > self._spill_at:
            self._spill_biggest()
        self._check_at = self.buffered_events + self._check_step()

    @property
    def held_bytes(self) -> int:
        """Estimated bytes of the events held in memory."""
        return self.buffered_events * self.event_bytes

    def _spill_biggest(self) -> None:
        """Past the bound: spill the biggest transactions held until half the bound is left.
        One that holds less than an eighth of the bound is never spilled: many small ones
        (a backlog) are what the held-events bound (``partitions_ahead``) is for."""
        while self.buffered_events > self._spill_at // 2:
            tx_id, biggest = -1, max(0, self._spill_at // 8 - 1)
            for t, slot in self._events.items():
                if type(slot) is dict and len(slot) > biggest:
                    tx_id, biggest = t, len(slot)
            if tx_id < 0:
                break
            held = self._events[tx_id]
            self._events[tx_id] = _Spilled(self._spill(tx_id), held)
            self.buffered_events -= len(held)
            self.events_spilled += len(held)
            self.transactions_spilled += 1

    def _pop_events(self, tx_id: int) -> dict[int, ChangeEvent | None] | _Spilled | None:
        """Forget a transaction's events (a spilled one's store is discarded)."""
        slot = self._events.pop(tx_id, None)
        if type(slot) is dict:
            self.buffered_events -= len(slot)
        elif slot is not None:
            slot.store.discard()
        return slot

    def _refusals(self, tx_id: int, reason: str) -> list[Refusal]:
        """Each event of ``tx_id`` refused. A spilled transaction: the first event of each
        stream only (it dead-letters with the count; every stream is re-snapshotted), not
        millions of dead letters."""
        slot = self._events.get(tx_id)
        if slot is None:
            return []
        if type(slot) is dict:
            return [Refusal(e.topic, e.partition, e.offset, reason, e, e.stream) for e in slot.values() if e is not None]
        first: dict[str, ChangeEvent] = {}
        for e in slot.store.events():
            first.setdefault(e.stream, e)
        why = f"{reason} (a spilled transaction of {slot.store.count} events: its first event per table is dead-lettered)"
        return [Refusal(e.topic, e.partition, e.offset, why, e, e.stream) for e in first.values()]

    def _refuse_marker(self, marker: TransactionMarker, reason: str) -> None:
        self.markers_refused += 1
        self.refused.append(Refusal(marker.topic, marker.partition, marker.offset, reason))

    def add_marker(self, marker: TransactionMarker) -> None:
        tp = (marker.topic, marker.partition)
        self._marker_partitions.add(tp)
        if marker.status != "END":  # a BEGIN (half the markers) only moves the offset on: ENDs carry the rest
            if marker.offset >= self._next.get(tp, 0):
                self._next[tp] = marker.offset + 1
            return
        if marker.tx_id in self._released:  # a copy (read again after a rebalance) of one DuckDB is getting
            self._seen(tp, marker.offset)
            return
        if marker.status == "END" and not self.is_applied(marker.tx_id) and marker.tx_id not in self._ended:
            if marker.event_count == 0:
                # Every change of it was filtered out by Debezium (the heartbeat table's update,
                # in the publication but not captured): nothing to apply, no position to move.
                self._drop(marker)
                self._seen(tp, marker.offset)
                return
            if marker.event_count < 0:
                self._seen(tp, marker.offset)
                self._refuse_marker(marker, f"END of transaction {marker.tx_id} claims {marker.event_count} events")
                return
            if marker.tx_id in self._expired:
                self._seen(tp, marker.offset)
                self._refuse_marker(marker, f"END of transaction {marker.tx_id}, which was expired (incomplete, "
                                    "or older than the replica) before it came")
                return
        if marker.status == "END" and marker.lsn <= self.applied_lsn and not self.is_applied(marker.tx_id) \
                and marker.tx_id not in self._ended:
            if len(self.recent) < self.recent_limit:
                # Older than what DuckDB holds, yet not a transaction it applied: the source's
                # LSNs went backwards (a new cluster behind an old replica?). Skipped, and said.
                self.unknown_old_transactions += 1
            self._drop(marker)
            self._seen(tp, marker.offset)
            return
        if marker.status != "END" or marker.lsn <= self.applied_lsn or self.is_applied(marker.tx_id) \
                or marker.tx_id in self._ended:
            self._seen(tp, marker.offset)
            return
        self._hold(marker.tx_id, tp, marker.offset)
        self._ends.append(marker)
        self._ended.add(marker.tx_id)
        self._end_seen[marker.tx_id] = self._now

    def hold(self, tp: TopicPartition, offset: int) -> int:
        """Keep ``offset`` uncommitted until ``release`` of the token returned: a message
        applied apart from any transaction (a DDL signal), whose effect must be in DuckDB
        before Kafka may forget it."""
        self._holds -= 1  # negative: never a transaction id
        self._hold(self._holds, tp, offset)
        return self._holds

    def release(self, token: int) -> None:
        """The message held by ``hold`` has had its effect: its offset may be committed."""
        self._release(token, self._held_in.pop(token, ()))

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
            if end.lsn > self.source_lsn and not self._plausible(end):
                if self._ends and self._ends[0] is not end:  # refused: the next one may go
                    continue
                break  # the source cannot tell yet: wait
            got = self._events.get(end.tx_id, {})
            spilled = type(got) is _Spilled
            if len(got) < end.event_count or (ready and (spilled or taken + end.event_count > max_events)):
                break
            self._ends.popleft()
            self._ended.discard(end.tx_id)
            self._end_seen.pop(end.tx_id, None)
            self._released.add(end.tx_id)
            events = self._events.pop(end.tx_id, {})
            if spilled:  # alone in its batch: it is read back in chunks
                ready.append(Transaction(end.tx_id, end.lsn, end.committed_at_ms, [], events.dead,
                                         self._held_in.pop(end.tx_id, []), events.store))
                break
            self.buffered_events -= len(events)
            ordered = [events[k] for k in sorted(events)]
            live = [e for e in ordered if e is not None]
            ready.append(Transaction(end.tx_id, end.lsn, end.committed_at_ms, live, len(ordered) - len(live),
                                     self._held_in.pop(end.tx_id, [])))
            taken += end.event_count
        if self.memory_bound_bytes:
            self._check_at = min(self._check_at, self.buffered_events + self._check_step())
        return ready

    def mark_applied(self, transactions: list[Transaction]) -> None:
        """After the DuckDB commit that holds them: their offsets may be committed."""
        for tx in transactions:
            self._release(tx.tx_id, tx.partitions)
            self.recent[tx.tx_id] = tx.commit_lsn
            self._released.discard(tx.tx_id)
            self._first_seen.pop(tx.tx_id, None)
            if tx.live:  # nothing but dead letters (a forged END's fodder?) is no evidence of a position
                self.applied_lsn = max(self.applied_lsn, tx.commit_lsn)
            if tx.spilled is not None:
                tx.spilled.discard()
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

    def events_without_end(self, older_than_s: float) -> int:
        """Events held in memory for transactions whose END has not come and whose first
        event came over ``older_than_s`` ago: a forged transaction id's (kept until
        ``give_up_after_s``), or a transaction still being read. Safe to call from another
        thread: it reads a copy of the transactions held."""
        first_seen, ended, now = self._first_seen, self._ended, self._now
        return sum(len(slot) for tx_id, slot in list(self._events.items())
                   if type(slot) is dict and tx_id not in ended
                   and now - first_seen.get(tx_id, now) > older_than_s)

    # -- bounds against hostile input -----------------------------------------------

    def _plausible(self, end: TransactionMarker) -> bool:
        """Whether the head END's commit LSN (beyond the last known of the source) is one the
        source has reached. False: refused (and popped), or the source cannot tell yet."""
        answer = None
        if self._source_port is not None:
            now = self._clock()
            if not self.source_unreachable and now - self._asked_at < self.lsn_check_interval_s:
                return False  # asked moments ago, before this END perhaps: ask again shortly
            # (While the source does not answer, the port itself waits before trying again.)
            self._asked_at = now
            answer = self._source_port()
        self.source_unreachable = self._source_port is not None and answer is None
        if answer is not None:
            self.source_lsn = max(self.source_lsn, answer)
            if end.lsn <= self.source_lsn:
                return True
            why = f"beyond the source's current WAL position {lsn_text(answer)}"
        elif self.source_lsn == 0 or end.lsn <= self.source_lsn + self.lsn_window:
            # The source cannot be asked: what Debezium reported is the bound (nothing yet: none).
            self.source_lsn = end.lsn
            return True
        else:
            why = (f"more than {self.lsn_window:,} bytes beyond the last LSN known of the source "
                   f"({lsn_text(self.source_lsn)}; the source could not be asked)")
        self._ends.popleft()
        self._ended.discard(end.tx_id)
        self._end_seen.pop(end.tx_id, None)
        self._forget_marker(end)
        self._refuse_marker(end, f"END of transaction {end.tx_id} claims commit LSN {lsn_text(end.lsn)}, {why}: "
                            "never adopted as the replica's position")
        return False

    def _forget_marker(self, end: TransactionMarker) -> None:
        """A refused END no longer holds its offset; the events of its transaction stay (a
        genuine END may still come for them, else they expire)."""
        tp = (end.topic, end.partition)
        held = self._held.get(tp)
        if held is not None:
            held.pop(end.tx_id, None)
        partitions = self._held_in.get(end.tx_id)
        if partitions is not None:
            partitions = [p for p in partitions if p != tp]
            if partitions:
                self._held_in[end.tx_id] = partitions
            else:
                del self._held_in[end.tx_id]
        if end.tx_id in self._events:
            self._first_seen.setdefault(end.tx_id, self._now)

    def tick(self, now: float) -> None:
        """Advance time: report a head that gains nothing, expire what waited past the bound."""
        self._now = now
        self.stuck, self.stuck_seconds = None, 0.0
        # The head of commit order: incomplete (or not yet verified) and gaining nothing.
        while self._ends:
            end = self._ends[0]
            got = len(self._events.get(end.tx_id, ()))
            unverified = end.lsn > self.source_lsn
            if got >= end.event_count and not unverified:
                self._head_state = None
                break
            state = self._head_state
            if state is None or state[0] != end.tx_id:  # a new head: it has waited since its END came
                self._head_state = state = (end.tx_id, got, self._end_seen.get(end.tx_id, now))
            elif state[1] != got:  # it gained events: it waits anew
                self._head_state = state = (end.tx_id, got, now)
            waited = now - state[2]
            if waited >= self.give_up_after_s and got < end.event_count:
                self._expire(end.tx_id, f"transaction {end.tx_id} (commit LSN {lsn_text(end.lsn)}) had {got} of the "
                             f"{end.event_count} events its END claims after {waited:.0f}s: expired incomplete",
                             end)
                continue  # the next one may be stuck as well
            if waited >= self.stuck_after_s:
                self.stuck_seconds = waited
                self.stuck = (f"transaction {end.tx_id} has {got} of its {end.event_count} events after {waited:.0f}s"
                              if got < end.event_count else
                              f"transaction {end.tx_id}'s commit LSN {lsn_text(end.lsn)} cannot be checked against the "
                              f"source for {waited:.0f}s (the source does not answer)")
                self.stuck += f"; {len(self._ends) - 1} later transaction(s) wait behind it"
                if got < end.event_count:
                    self.stuck += f" (expired after {self.give_up_after_s:.0f}s)"
            break
        else:
            self._head_state = None
        # Events whose END never came.
        if self._first_seen:
            for tx_id, seen in list(self._first_seen.items()):
                if tx_id not in self._events or tx_id in self._released:
                    del self._first_seen[tx_id]
                elif tx_id not in self._ended and now - seen >= self.give_up_after_s:
                    self._expire(tx_id, f"transaction {tx_id}: {len(self._events[tx_id])} event(s) and no END after "
                                 f"{now - seen:.0f}s: expired", None)

    def _expire(self, tx_id: int, reason: str, end: TransactionMarker | None) -> None:
        if end is not None:
            self._ends.popleft()
            self._ended.discard(tx_id)
            self._end_seen.pop(tx_id, None)
            self.refused.append(Refusal(end.topic, end.partition, end.offset, reason))
        self.refused.extend(self._refusals(tx_id, reason))  # (None: dead-lettered when it came)
        self._pop_events(tx_id)
        self._release(tx_id, self._held_in.pop(tx_id, ()))
        self._first_seen.pop(tx_id, None)
        self._head_state = None
        self._remember_expired(tx_id)
        self.transactions_expired += 1

    def partition_lost(self, tp: TopicPartition, restart_at: int, reason: str) -> None:
        """Kafka lost messages of ``tp`` (mallard/core/data_loss.py): read it again from
        ``restart_at`` (the start of what exists; what was applied is recognised and skipped),
        and never commit an offset of what it was before. Any transaction still incomplete may
        have lost events (or, for the transaction topic, its END) there: each is expired now,
        its streams re-snapshotted (refused), so none holds the commit order back until
        ``give_up_after_s``. One that was merely in flight is caught by the same re-snapshot."""
        self._held[tp] = {}
        self._next[tp] = restart_at
        self._last_tx.pop(tp, None)
        for end in list(self._ends):
            if len(self._events.get(end.tx_id, ())) < end.event_count:
                self._ends.remove(end)
                self._ended.discard(end.tx_id)
                self._end_seen.pop(end.tx_id, None)
                self.refused.append(Refusal(end.topic, end.partition, end.offset, f"{reason}: transaction {end.tx_id} "
                                            "could not be completed"))
                self._expire(end.tx_id, f"{reason}: transaction {end.tx_id} may have lost events", None)
        for tx_id in [t for t in self._events if t not in self._ended and t not in self._released]:
            self._expire(tx_id, f"{reason}: transaction {tx_id} may have lost its END", None)

    def drain_refused(self) -> list[Refusal]:
        refused, self.refused = self.refused, []
        return refused
