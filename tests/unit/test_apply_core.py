"""The pure apply core: whole transactions, per-key reduction, replays, crashes.

A simulated Postgres produces transactions; their events are delivered the way
Kafka delivers them (per-partition order, partitions interleaved at random,
at-least-once duplicates), in random batches, with crashes that restart from the
committed offsets. After every run the replica model equals the source, which
also means any batch split gives the same state as applying one by one."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mallard.core.changes import ChangeEvent, TableSchema, TransactionMarker
from mallard.core.merge import reduce
from mallard.core.pgtypes import column_type
from mallard.core.transactions import TransactionAssembler, position

SCHEMA = TableSchema("public.t", ("id", "v", "doc"),
                     (column_type({"type": "int32"}), column_type({"type": "int32"}), column_type({"type": "string"})),
                     ("id",))
TX_TOPIC = ("mallard.transaction", 0)
KEYS = range(1, 6)


def simulate_postgres(script: list[list[tuple[str, int, int, bool]]]):
    """Run ops on a dict 'table'; return (final table, transactions as (tx_id, lsn, events))."""
    table: dict[int, tuple[int, str]] = {}
    txs = []
    lsn = 1000
    for n, ops in enumerate(script):
        tx_id = 500 + n
        events = []
        for kind, key, v, touch_doc in ops:
            if kind == "truncate":
                table.clear()
                events.append(("t", None, None, frozenset()))
            elif kind == "delete":
                if key in table:
                    del table[key]
                    events.append(("d", key, None, frozenset()))
            elif key in table:  # update; doc unchanged -> Debezium omits it (TOAST)
                doc = f"doc{v}" if touch_doc else table[key][1]
                table[key] = (v, doc)
                events.append(("u", key, (key, v, None if not touch_doc else doc),
                               frozenset() if touch_doc else frozenset({2})))
            else:
                table[key] = (v, f"doc{v}")
                events.append(("c", key, (key, v, f"doc{v}"), frozenset()))
        if events:
            lsn += 10
            txs.append((tx_id, lsn, events))
    return table, txs


def kafka_logs(txs, dup_rng: random.Random, dup_rate: float):
    """Per-partition message logs (2 table partitions by key + the tx topic), with duplicates."""
    logs: dict[tuple[str, int], list] = {("mallard.public.t", 0): [], ("mallard.public.t", 1): [], TX_TOPIC: []}

    def append(tp, item):
        logs[tp].append(item)
        if dup_rng.random() < dup_rate:  # the publisher re-sent it after a failed flush
            logs[tp].append(item)

    for tx_id, lsn, events in txs:
        for order, (op, key, row, unavailable) in enumerate(events, start=1):
            tp = ("mallard.public.t", 0 if key is None else key % 2)
            append(tp, ("event", tx_id, order, op, key, row, unavailable))
        append(TX_TOPIC, ("end", tx_id, lsn, len(events)))
    return logs


class ReplicaModel:
    """What the DuckDB adapter does, on dicts: positions guard every write."""

    def __init__(self):
        self.rows: dict[tuple, tuple[tuple, int]] = {}
        self.applied_lsn = 0
        self.recent: dict[int, int] = {}

    def apply(self, transactions):
        for step in reduce(transactions):
            changes = step.get("public.t")
            if changes is None:
                continue
            if changes.truncated:
                self.rows.clear()
            for key, state in changes.states.items():
                stored = self.rows.get(key)
                if state.row is None:
                    if stored and stored[1] < state.position:
                        del self.rows[key]
                    continue
                if stored and stored[1] >= state.position:
                    continue
                row = tuple(stored[0][i] if (i in state.unavailable and stored) else (None if i in state.unavailable else v)
                            for i, v in enumerate(state.row))
                self.rows[key] = (row, state.position)
        for tx in transactions:
            self.recent[tx.tx_id] = tx.commit_lsn
            self.applied_lsn = max(self.applied_lsn, tx.commit_lsn)

    def table(self):
        return {k[0]: (row[1], row[2]) for k, (row, _) in self.rows.items()}


def run_pipeline(logs, rng: random.Random, crash_rate: float, max_batch: int, max_held: int | None = None,
                 apply_rate: float = 1.0) -> ReplicaModel:
    """With ``max_held``, partitions the assembler says are ahead are not read (paused),
    and DuckDB takes a batch only with probability ``apply_rate`` per read."""
    replica = ReplicaModel()
    committed = {tp: 0 for tp in logs}
    while True:
        assembler = TransactionAssembler(replica.applied_lsn, dict(replica.recent))
        read = dict(committed)
        crashed = False
        while any(read[tp] < len(log) for tp, log in logs.items()):
            paused = assembler.partitions_ahead(max_held) if max_held is not None else set()
            readable = [tp for tp, log in logs.items() if read[tp] < len(log) and tp not in paused]
            full = max_held is not None and assembler.buffered_events >= max_held and assembler.head_complete()
            if not readable or full:  # as the applier: held enough, or all paused: DuckDB first
                assert assembler.head_complete(), "paused partitions hold what the next transaction needs"
                readable = [None]
            tp = rng.choice(readable)
            if tp is None:
                ready = assembler.take_ready(rng.randint(1, max_batch))
                replica.apply(ready)
                assembler.mark_applied(ready)
                continue
            for _ in range(rng.randint(1, 4)):
                if read[tp] >= len(logs[tp]):
                    break
                item, offset = logs[tp][read[tp]], read[tp]
                read[tp] += 1
                if item[0] == "end":
                    _, tx_id, lsn, count = item
                    assembler.add_marker(TransactionMarker(tp[0], tp[1], offset, "END", tx_id, lsn, count, lsn))
                else:
                    _, tx_id, order, op, key, row, unavailable = item
                    event = ChangeEvent(tp[0], tp[1], offset, "public.t", op, tx_id, order, 0,
                                        None if key is None else (key,), row, unavailable, SCHEMA)
                    assembler.add_event(event, tx_id, order, tp, offset)
            if max_held is not None:  # bounded: by the limit, a read per partition, the transaction read on
                head = assembler.head()
                assert assembler.buffered_events <= max_held + 4 * len(logs) + (head[2] if head else 0)
            ready = assembler.take_ready(rng.randint(1, max_batch)) if rng.random() < apply_rate else []
            if ready:
                replica.apply(ready)  # one DuckDB transaction
                assembler.mark_applied(ready)
            if rng.random() < 0.5:
                committed.update(assembler.committable())
            if rng.random() < crash_rate:
                crashed = True  # lose everything not committed; DuckDB keeps what it applied
                break
        if not crashed:
            while ready := assembler.take_ready(max_batch):
                replica.apply(ready)
                assembler.mark_applied(ready)
            assert assembler.buffered_events == 0, "every event belongs to a transaction that completed"
            return replica


op = st.tuples(st.sampled_from(["upsert", "upsert", "upsert", "delete", "truncate"]),
               st.sampled_from(list(KEYS)), st.integers(0, 50), st.booleans())
ops = st.lists(op, min_size=1, max_size=4).map(lambda xs: [x for x in xs if x[0] != "truncate"] or xs[:1])
scripts = st.lists(st.lists(op, min_size=1, max_size=4), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(script=scripts, seed=st.integers(0, 2**32), dup_rate=st.sampled_from([0.0, 0.1, 0.4]),
       crash_rate=st.sampled_from([0.0, 0.05, 0.2]), max_batch=st.integers(1, 12))
def test_replica_equals_source_whatever_the_delivery(script, seed, dup_rate, crash_rate, max_batch):
    source, txs = simulate_postgres(script)
    rng = random.Random(seed)
    replica = run_pipeline(kafka_logs(txs, rng, dup_rate), rng, crash_rate, max_batch)
    assert replica.table() == source


@settings(max_examples=300, deadline=None)
@given(script=scripts, seed=st.integers(0, 2**32), dup_rate=st.sampled_from([0.0, 0.1, 0.4]),
       crash_rate=st.sampled_from([0.0, 0.05]), max_held=st.integers(1, 6), apply_rate=st.sampled_from([0.1, 0.5, 1.0]))
def test_pausing_partitions_that_are_ahead_bounds_memory_and_never_stalls(script, seed, dup_rate, crash_rate, max_held,
                                                                           apply_rate):
    source, txs = simulate_postgres(script)
    rng = random.Random(seed)
    replica = run_pipeline(kafka_logs(txs, rng, dup_rate), rng, crash_rate, 4, max_held, apply_rate)
    assert replica.table() == source


@settings(max_examples=100, deadline=None)
@given(script=scripts, seed=st.integers(0, 2**32))
def test_any_batch_split_equals_one_transaction_at_a_time(script, seed):
    _, txs = simulate_postgres(script)
    logs = kafka_logs(txs, random.Random(seed), 0.0)
    one_by_one = run_pipeline(logs, random.Random(seed), 0.0, max_batch=1)
    batched = run_pipeline(logs, random.Random(seed + 1), 0.0, max_batch=1000)
    assert one_by_one.rows == batched.rows


def test_a_transaction_waits_for_all_its_events_across_partitions():
    assembler = TransactionAssembler()
    ev = lambda order, part, off: ChangeEvent("mallard.public.t", part, off, "public.t", "c", 7, order, 0,  # noqa: E731
                                              (order,), (order, 1, "x"), frozenset(), SCHEMA)
    assembler.add_marker(TransactionMarker(*TX_TOPIC, 0, "END", 7, 100, 2, 0))
    assembler.add_event(ev(1, 0, 0), 7, 1, ("mallard.public.t", 0), 0)
    assert assembler.take_ready(10) == []
    assert assembler.committable() == {TX_TOPIC: 0, ("mallard.public.t", 0): 0}
    assembler.add_event(ev(1, 0, 0), 7, 1, ("mallard.public.t", 0), 1)  # a duplicate does not complete it
    assert assembler.take_ready(10) == []
    assembler.add_event(ev(2, 1, 0), 7, 2, ("mallard.public.t", 1), 0)
    [tx] = assembler.take_ready(10)
    assert [e.total_order for e in tx.events] == [1, 2] and tx.commit_lsn == 100
    assembler.mark_applied([tx])
    assert assembler.committable() == {TX_TOPIC: 1, ("mallard.public.t", 0): 2, ("mallard.public.t", 1): 1}


def test_the_first_offset_held_of_a_transaction_is_its_lowest_however_it_was_read():
    """A partition re-read from an earlier offset (after a rebalance) gives a held
    transaction's message at a lower offset than the first one seen: that one is kept."""
    assembler = TransactionAssembler()
    tp = ("mallard.public.t", 0)
    assembler.add_event(None, 7, 2, tp, 5)
    assembler.add_event(None, 7, 1, tp, 3)
    assert assembler.committable()[tp] == 3
    assembler.add_marker(TransactionMarker(*TX_TOPIC, 0, "END", 7, 100, 2, 0))
    assembler.mark_applied(assembler.take_ready(10))
    assert assembler.committable() == {TX_TOPIC: 1, tp: 6}


def test_replayed_events_of_applied_transactions_are_dropped_at_once():
    assembler = TransactionAssembler(applied_lsn=100, recent={7: 100})
    assembler.add_marker(TransactionMarker(*TX_TOPIC, 5, "END", 7, 100, 1, 0))
    assembler.add_event(None, 7, 1, ("mallard.public.t", 0), 3)
    assert assembler.buffered_events == 0 and assembler.waiting_transactions == 0
    assert assembler.committable() == {TX_TOPIC: 6, ("mallard.public.t", 0): 4}


def test_dead_lettered_events_still_complete_their_transaction():
    assembler = TransactionAssembler()
    assembler.add_marker(TransactionMarker(*TX_TOPIC, 0, "END", 9, 50, 1, 0))
    assembler.add_event(None, 9, 1, ("mallard.public.t", 0), 0)
    [tx] = assembler.take_ready(10)
    assert tx.events == [] and tx.dead == 1


def test_position_orders_by_commit_then_event():
    assert position(100, 2) > position(100, 1)
    assert position(101, 1) > position(100, 10_000)


def test_transactions_behind_the_replica_that_it_never_applied_are_counted():
    assembler = TransactionAssembler(applied_lsn=1000, recent={7: 1000})
    assembler.add_marker(TransactionMarker(*TX_TOPIC, 0, "END", 7, 1000, 1, 0))  # a replay: fine
    assert assembler.unknown_old_transactions == 0
    assembler.add_event(None, 3, 1, ("mallard.public.t", 0), 0)  # its event came first
    assembler.add_marker(TransactionMarker(*TX_TOPIC, 1, "END", 3, 500, 1, 0))  # LSNs went backwards
    assert assembler.unknown_old_transactions == 1 and assembler.waiting_transactions == 0
    # Its events are forgotten, not held forever, and offsets move past them.
    assembler.add_event(None, 3, 1, ("mallard.public.t", 0), 1)  # a copy
    assert assembler.buffered_events == 0
    assert assembler.committable() == {TX_TOPIC: 2, ("mallard.public.t", 0): 2}
