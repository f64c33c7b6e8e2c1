"""The transaction assembler against hostile markers: forged, duplicated, oversized
or missing ENDs (and events for tables outside the config, dead-lettered on the way
in) mixed with real transactions. Time is an injected clock."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mallard.core.changes import ChangeEvent, TableSchema, TransactionMarker
from mallard.core.pgtypes import column_type
from mallard.core.transactions import TransactionAssembler

SCHEMA = TableSchema("public.t", ("id", "v"), (column_type({"type": "int32"}), column_type({"type": "int32"})), ("id",))
TX = ("mallard.transaction", 0)
PARTS = [("mallard.public.t", 0), ("mallard.public.t", 1)]
STUCK, GIVE_UP = 5.0, 20.0
FAR = 0xE8_D65E5A90


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def event(tx_id: int, order: int, tp, offset: int) -> ChangeEvent:
    return ChangeEvent(tp[0], tp[1], offset, "public.t", "c", tx_id, order, 0, (order,), (order, tx_id), frozenset(),
                       SCHEMA)


def assembler(clock: Clock, source: list[int], **kw) -> TransactionAssembler:
    return TransactionAssembler(source_lsn=lambda: source[0], clock=clock, lsn_check_interval_s=0.0,
                                stuck_after_s=STUCK, give_up_after_s=GIVE_UP, **kw)


# A hostile message: (kind, tx id among the forged ones, claimed LSN, claimed events).
hostile = st.tuples(
    st.sampled_from(["far_end", "plausible_end_missing_events", "zero_end", "ghost_event_with_end",
                     "ghost_event_no_end", "duplicate_real_end", "huge_count_end"]),
    st.integers(0, 5), st.integers(1, 3))


@settings(max_examples=300, deadline=None)
@given(real=st.lists(st.integers(1, 3), min_size=1, max_size=12), attacks=st.lists(hostile, max_size=6),
       seed=st.integers(0, 2**32))
def test_hostile_markers_never_move_the_position_release_forged_data_or_stop_real_transactions(real, attacks, seed):
    rng = random.Random(seed)
    clock, source = Clock(), [0]
    a = assembler(clock, source)
    # The source commits real transactions in order; Debezium writes their events, then END.
    real_txs = []
    lsn = 10_000
    for n, count in enumerate(real):
        lsn += rng.randint(10, 1000)
        real_txs.append((1000 + n, lsn, count))
    real_lsns = {tx_id: lsn for tx_id, lsn, _ in real_txs}
    stream: list[tuple] = []  # what arrives, in order: ("event", tx, order, tp) / ("end", marker fields)
    for tx_id, lsn, count in real_txs:
        for order in range(1, count + 1):
            stream.append(("event", tx_id, order, rng.choice(PARTS)))
        stream.append(("end", tx_id, lsn, count, True))
    for kind, k, claimed in attacks:
        forged = 90_000 + k  # never a real transaction's id
        at = rng.randint(0, len(stream))
        if kind == "far_end":
            items = [("ghost", forged, 1), ("end", forged, FAR + k, 1, False)]
        elif kind == "plausible_end_missing_events":
            items = [("end", forged, 10_001, claimed, False)]
        elif kind == "zero_end":
            items = [("end", forged, 10_001, 0, False)]
        elif kind == "huge_count_end":
            items = [("end", forged, FAR, 2**40, False)]
        elif kind == "ghost_event_with_end":
            items = [("ghost", forged, 1), ("end", forged, 10_001, 1, False)]
        elif kind == "ghost_event_no_end":
            items = [("ghost", forged, o) for o in range(1, claimed + 1)]
        else:  # a real END again, later (a redelivery)
            tx_id, lsn, count = real_txs[k % len(real_txs)]
            items = [("end", tx_id, lsn, count, True)]
        stream[at:at] = items

    offsets = {tp: 0 for tp in [TX, *PARTS]}
    applied: list = []
    released_events = []
    committed_real = 0  # what the source has committed: its WAL position is at least the last one's LSN
    last_real_applied_at = 0.0
    for item in stream:
        clock.now += rng.choice([0.0, 0.1, 1.0])
        if item[0] == "end":
            _, tx_id, lsn, count, is_real = item
            if is_real:
                source[0] = max(source[0], lsn)  # the source has it before Debezium sends it
            a.add_marker(TransactionMarker(*TX, offsets[TX], "END", tx_id, lsn, count, 0))
            offsets[TX] += 1
        elif item[0] == "event":
            _, tx_id, order, tp = item
            source[0] = max(source[0], real_lsns[tx_id] - 1)  # mid-transaction: not yet committed
            a.add_event(event(tx_id, order, tp, offsets[tp]), tx_id, order, tp, offsets[tp])
            offsets[tp] += 1
        else:  # an event for a table outside the config: dead-lettered on the way in, counted
            _, tx_id, order = item
            tp = rng.choice(PARTS)
            a.add_event(None, tx_id, order, tp, offsets[tp])
            offsets[tp] += 1
        a.tick(clock.now)
        for tx in a.take_ready(rng.randint(1, 10)):
            applied.append(tx)
            released_events += tx.events
            a.mark_applied([tx])
        assert a.applied_lsn <= max([0] + [real_lsns[t.tx_id] for t in applied if t.tx_id in real_lsns])
    # Afterwards: time passes; every real transaction is released within the bound.
    for _ in range(int(GIVE_UP / 2) + 3):
        clock.now += 2.0
        a.tick(clock.now)
        for tx in a.take_ready(100):
            applied.append(tx)
            released_events += tx.events
            a.mark_applied([tx])
    assert {tx.tx_id for tx in applied} >= set(real_lsns), "every real transaction got through"
    assert all(e.tx_id in real_lsns for e in released_events), "no forged event was released as data"
    assert sorted(e.tx_id for e in released_events) == sorted(t for t, _, c in real_txs for _ in range(c))
    assert a.applied_lsn == max(real_lsns.values())
    assert a.waiting_transactions == 0 and a.buffered_events == 0 and a.stuck is None
    refused = a.drain_refused()
    assert all(r.event is None or r.event.tx_id not in real_lsns for r in refused)
    # Nothing is held: every offset can be committed.
    assert a.committable() == {tp: n for tp, n in offsets.items() if n}


def test_a_commit_lsn_beyond_the_source_is_refused_and_never_adopted():
    clock, source = Clock(), [5000]
    a = assembler(clock, source)
    a.add_event(None, 66, 1, PARTS[0], 0)  # the ghost table's event: dead-lettered on the way in
    a.add_marker(TransactionMarker(*TX, 0, "END", 66, FAR, 1, 0))
    assert a.take_ready(10) == []
    [refusal] = a.drain_refused()
    assert refusal.offset == 0 and "beyond the source's current WAL position 0/1388" in refusal.reason
    assert a.applied_lsn == 0 and a.waiting_transactions == 0
    a.add_event(event(7, 1, PARTS[1], 0), 7, 1, PARTS[1], 0)
    a.add_marker(TransactionMarker(*TX, 1, "END", 7, 4000, 1, 0))
    [tx] = a.take_ready(10)
    a.mark_applied([tx])
    assert a.applied_lsn == 4000
    clock.now = a.tick(GIVE_UP + 1) or GIVE_UP + 1  # the ghost event, with no END now, expires
    assert a.buffered_events == 0 and a.committable() == {TX: 2, PARTS[0]: 1, PARTS[1]: 1}


def test_an_end_claiming_events_that_never_come_is_reported_then_expired():
    clock, source = Clock(), [5000]
    a = assembler(clock, source)
    a.add_marker(TransactionMarker(*TX, 0, "END", 66, 4000, 3, 0))
    a.add_event(event(66, 1, PARTS[0], 0), 66, 1, PARTS[0], 0)
    a.add_event(event(7, 1, PARTS[1], 0), 7, 1, PARTS[1], 0)
    a.add_marker(TransactionMarker(*TX, 1, "END", 7, 4100, 1, 0))
    a.tick(0.0)
    assert a.take_ready(10) == [] and a.stuck is None
    a.tick(STUCK + 1)
    assert a.stuck and "transaction 66 has 1 of its 3 events" in a.stuck and a.take_ready(10) == []
    a.tick(STUCK + GIVE_UP)
    refused = a.drain_refused()
    assert [(r.offset, r.stream) for r in refused] == [(0, None), (0, "public.t")]  # the END, its one event
    assert a.stuck is None and a.transactions_expired == 1
    [tx] = a.take_ready(10)
    assert tx.tx_id == 7
    a.mark_applied([tx])
    # A late event of the expired transaction is refused too (its stream is re-snapshotted).
    a.add_event(event(66, 2, PARTS[0], 1), 66, 2, PARTS[0], 1)
    [late] = a.drain_refused()
    assert late.stream == "public.t" and "expired" in late.reason
    assert a.committable() == {TX: 2, PARTS[0]: 2, PARTS[1]: 1}


def test_when_the_source_cannot_be_asked_a_window_of_what_was_known_bounds_the_lsn():
    clock, source = Clock(), [None]
    a = assembler(clock, source, applied_lsn=1 << 32, lsn_window=1 << 30)
    a.add_event(event(7, 1, PARTS[0], 0), 7, 1, PARTS[0], 0)
    a.add_marker(TransactionMarker(*TX, 0, "END", 7, (1 << 32) + 100, 1, 0))
    a.add_marker(TransactionMarker(*TX, 1, "END", 8, FAR, 1, 0))
    [tx] = a.take_ready(10)
    assert tx.tx_id == 7 and a.source_unreachable
    assert a.take_ready(10) == []
    [refusal] = a.drain_refused()
    assert refusal.offset == 1 and "could not be asked" in refusal.reason


def test_an_end_with_no_events_is_an_empty_transaction_and_an_event_claiming_it_later_is_refused():
    # Debezium ends a transaction whose changes it all filtered (the heartbeat table's update).
    a = assembler(Clock(), [5000])
    a.add_marker(TransactionMarker(*TX, 0, "END", 66, 10, 0, 0))
    assert a.waiting_transactions == 0 and a.markers_refused == 0 and not a.refused
    assert a.committable() == {TX: 1}
    # Forged for a real transaction: its events, when they come, are refused (re-snapshotted), never lost.
    a.add_event(event(66, 1, PARTS[0], 0), 66, 1, PARTS[0], 0)
    assert [r.stream for r in a.refused] and not a.take_ready(10)


def test_an_end_claiming_a_negative_count_is_refused():
    a = assembler(Clock(), [5000])
    a.add_marker(TransactionMarker(*TX, 0, "END", 66, 10, -1, 0))
    assert a.waiting_transactions == 0 and a.markers_refused == 1


def test_while_the_source_does_not_answer_transactions_do_not_wait_for_the_check_interval():
    clock, calls = Clock(), []
    a = TransactionAssembler(source_lsn=lambda: calls.append(1), clock=clock, lsn_check_interval_s=10.0)
    for n in range(3):
        a.add_event(event(7 + n, 1, PARTS[0], n), 7 + n, 1, PARTS[0], n)
        a.add_marker(TransactionMarker(*TX, n, "END", 7 + n, 1000 + n, 1, 0))
        assert [tx.tx_id for tx in a.take_ready(10)] == [7 + n]  # the clock never moved
    assert len(calls) == 3


def test_a_source_that_answers_is_asked_at_most_once_per_interval():
    clock, source, calls = Clock(), [1000], []
    a = TransactionAssembler(source_lsn=lambda: calls.append(1) or source[0], clock=clock, lsn_check_interval_s=1.0)
    a.add_event(event(7, 1, PARTS[0], 0), 7, 1, PARTS[0], 0)
    a.add_marker(TransactionMarker(*TX, 0, "END", 7, 900, 1, 0))
    assert [tx.tx_id for tx in a.take_ready(10)] == [7]
    source[0] = 2000
    a.add_event(event(8, 1, PARTS[0], 1), 8, 1, PARTS[0], 1)
    a.add_marker(TransactionMarker(*TX, 1, "END", 8, 1500, 1, 0))
    assert a.take_ready(10) == [] and len(calls) == 1  # asked moments ago: waits
    clock.now = 1.0
    assert [tx.tx_id for tx in a.take_ready(10)] == [8] and len(calls) == 2


def test_what_came_before_the_first_tick_waits_from_that_tick_not_from_clock_zero():
    # A restarted applier reads a backlog before it first ticks, and time.monotonic() counts
    # from boot: a replay must never look hours old (expired, dead-lettered, re-snapshotted).
    boot = 32_096.0
    clock, source = Clock(), [5000]
    clock.now = boot
    a = assembler(clock, source)
    a.add_event(event(7, 1, PARTS[0], 0), 7, 1, PARTS[0], 0)  # its END is still to come
    a.add_event(event(8, 1, PARTS[1], 0), 8, 1, PARTS[1], 0)
    a.add_marker(TransactionMarker(*TX, 0, "END", 8, 4000, 2, 0))  # at the head, one event still to come
    a.tick(boot)
    assert not a.refused and a.transactions_expired == 0 and a.stuck is None
    a.add_event(event(8, 2, PARTS[1], 1), 8, 2, PARTS[1], 1)
    a.add_marker(TransactionMarker(*TX, 1, "END", 7, 4100, 1, 0))
    assert [tx.tx_id for tx in a.take_ready(10)] == [8, 7]
    # The bound still holds from the first tick on.
    a.add_event(event(9, 1, PARTS[0], 1), 9, 1, PARTS[0], 1)
    a.tick(boot + GIVE_UP + 1)
    assert [r.event.tx_id for r in a.drain_refused()] == [9]


def test_events_whose_end_has_not_come_for_a_while_are_counted_apart():
    """What verify need not wait for: a forged transaction id's event, held until it expires."""
    clock, source = Clock(), [10_000]
    a = assembler(clock, source)
    a.add_event(None, 4_000_000_000, 1, PARTS[0], 0)  # dead-lettered, forged: no END will come
    clock.now = 1.0
    a.tick(clock.now)
    a.add_event(event(7, 1, PARTS[1], 0), 7, 1, PARTS[1], 0)  # a real one, its END to come
    a.add_event(event(8, 1, PARTS[1], 1), 8, 1, PARTS[1], 1)
    a.add_marker(TransactionMarker(*TX, 0, "END", 8, 9000, 2, 0))  # ended, an event still to come
    assert a.buffered_events == 3 and a.events_without_end(STUCK) == 0  # nothing held long yet
    clock.now = STUCK + 0.5
    a.tick(clock.now)
    assert a.events_without_end(STUCK) == 1  # the forged one only: transaction 7 is younger
    clock.now = STUCK + 1.5
    a.tick(clock.now)
    assert a.events_without_end(STUCK) == 2  # 7 too; 8 has its END, so it is waited for
    a.add_marker(TransactionMarker(*TX, 1, "END", 7, 8000, 1, 0))
    assert a.events_without_end(STUCK) == 1
