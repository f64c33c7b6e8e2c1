"""Large transactions (issue 18): the assembler spills the biggest transaction it holds
past its memory bound, and gives it back, alone, to be read in chunks in commit order.
The pure core with an in-memory store, then the files (mallard/adapters/spill_files.py)."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mallard.adapters.spill_files import SpillFolder
from mallard.core.changes import ChangeEvent, TableSchema, TransactionMarker
from mallard.core.merge import reduce
from mallard.core.pgtypes import column_type
from mallard.core.spill import MemorySpill, SeenOrders, chunks, merge_runs
from mallard.core.transactions import Transaction, TransactionAssembler

INT = column_type({"type": "int32"})
SCHEMA = TableSchema("public.t", ("id", "v"), (INT, INT), ("id",))
OTHER = TableSchema("public.u", ("id", "v"), (INT, INT), ("id",))
TX = ("mallard.transaction", 0)
PARTS = [("mallard.public.t", 0), ("mallard.public.t", 1)]


def event(tx_id: int, order: int, key: int, v: int, op: str = "u", tp=PARTS[0], offset: int = 0,
          schema: TableSchema = SCHEMA) -> ChangeEvent:
    return ChangeEvent(tp[0], tp[1], offset, schema.stream, op, tx_id, order, 0, (key,),
                       None if op == "d" else (key, v), frozenset(), schema)


def end(tx_id: int, lsn: int, count: int, offset: int = 0) -> TransactionMarker:
    return TransactionMarker(TX[0], TX[1], offset, "END", tx_id, lsn, count, 0)


class Spills:
    """A SpillFactory that keeps what it made."""

    def __init__(self) -> None:
        self.made: list[MemorySpill] = []

    def __call__(self, tx_id: int) -> MemorySpill:
        self.made.append(MemorySpill(tx_id))
        return self.made[-1]


def test_seen_orders_is_a_set_of_ints_in_pages():
    seen = SeenOrders([3, 70_000])
    assert 3 in seen and 70_000 in seen and 4 not in seen and 1 << 40 not in seen
    assert seen.add(5) and not seen.add(5)
    assert seen.add(1 << 40) and (1 << 40) in seen  # a forged order costs one small page
    assert len(seen._pages) == 3


def test_a_chunk_never_ends_on_a_delete_so_a_primary_key_update_stays_together():
    events = [event(1, i, i, i, op="d" if i % 3 == 0 else "u") for i in range(1, 30)]
    got = list(chunks(events, 3))
    assert [e for c in got for e in c] == events
    assert all(c[-1].op != "d" for c in got[:-1])
    assert all(len(c) <= 4 for c in got)


def test_runs_are_merged_in_commit_order():
    runs = [iter([(1, "a"), (4, "d")]), iter([(2, "b"), (3, "c"), (9, "e")])]
    assert list(merge_runs(runs)) == ["a", "b", "c", "d", "e"]


def test_past_the_bound_the_biggest_transaction_is_spilled_and_released_alone_in_commit_order():
    spills = Spills()
    a = TransactionAssembler(spill=spills, memory_bound_bytes=50 * 1000)  # ~50 events at 1000 B
    # A small transaction, a big one (on two partitions, interleaved), and another small one.
    a.add_event(event(10, 1, 1, 1), 10, 1, PARTS[0], 0)
    a.add_marker(end(10, 100, 1, 0))
    for i in range(1, 401):
        tp = PARTS[i % 2]
        a.add_event(event(11, i, i, i, tp=tp, offset=i), 11, i, tp, i)
        if i == 7:
            a.add_event(event(11, i, i, i, tp=tp, offset=i), 11, i, tp, i)  # a duplicate delivery counts once
    a.add_event(event(12, 1, 2, 2), 12, 1, PARTS[0], 500)
    assert len(spills.made) == 1 and spills.made[0].tx_id == 11
    assert a.buffered_events == 2 and a.transactions_spilled == 1  # only the small ones in memory
    assert a.head() == (10, 1, 1)
    a.add_marker(end(11, 200, 400, 1))
    a.add_marker(end(12, 300, 1, 2))
    first = a.take_ready(1000)
    assert [t.tx_id for t in first] == [10]  # the spilled one is never batched with others
    a.mark_applied(first)
    second = a.take_ready(1000)
    assert [t.tx_id for t in second] == [11] and second[0].events == [] and second[0].live == 400
    assert [e.total_order for e in second[0].spilled.events()] == list(range(1, 401))
    assert a.committable()[PARTS[0]] <= 2  # its offsets are held until it is applied
    a.mark_applied(second)
    assert spills.made[0].discarded and a.applied_lsn == 200
    assert [t.tx_id for t in a.take_ready(1000)] == [12]


def test_the_size_of_an_event_is_learnt_early_so_wide_rows_spill_near_the_bound():
    spills = Spills()
    a = TransactionAssembler(spill=spills, memory_bound_bytes=600_000)
    wide = "x" * 5_000
    held = []
    for i in range(1, 2001):
        e = ChangeEvent(*PARTS[0], i, "public.t", "u", 11, i, 0, (i,), (i, wide), frozenset(), SCHEMA)
        a.add_event(e, 11, i, PARTS[0], i)
        held.append(a.buffered_events)
    assert spills.made and 5_000 < a.event_bytes < 7_000
    assert max(held) * 5_000 < 2 * 600_000  # what was held in memory stayed near the bound


def test_a_spilled_transaction_given_up_on_refuses_one_event_per_stream_and_discards_its_file():
    spills = Spills()
    a = TransactionAssembler(spill=spills, memory_bound_bytes=20 * 1000, give_up_after_s=10, clock=lambda: 0.0)
    for i in range(1, 101):
        schema = SCHEMA if i % 2 else OTHER
        a.add_event(event(11, i, i, i, schema=schema, offset=i), 11, i, PARTS[0], i)
    a.add_marker(end(11, 200, 150))  # 50 never come
    a.tick(0.0)
    a.tick(11.0)
    refused = a.drain_refused()
    assert sorted(r.stream for r in refused if r.event is not None) == ["public.t", "public.u"]
    assert all("spilled transaction of 100 events" in r.reason for r in refused if r.event is not None)
    assert spills.made[0].discarded and a.buffered_events == 0


# -- whatever the delivery, spilling changes nothing of what is applied ----------------------

def take(a: TransactionAssembler, max_events: int, spilled_events: dict) -> list[Transaction]:
    """Released transactions, applied (a spilled one's events read before its store goes)."""
    ready = a.take_ready(max_events)
    for tx in ready:
        if tx.spilled is not None:
            spilled_events[tx.tx_id] = list(tx.spilled.events())
    a.mark_applied(ready)
    assert all(tx.spilled.discarded for tx in ready if tx.spilled is not None)
    return ready


def final_state(transactions: list[Transaction], chunk: int, spilled_events: dict) -> dict:
    """What DuckDB ends with: each batch (a spilled transaction: each chunk) reduced per key
    and applied in order, a write only over an older one (the upsert's position guard)."""
    table: dict = {}
    for tx in transactions:
        events = spilled_events[tx.tx_id] if tx.spilled is not None else tx.events
        for part in (chunks(events, chunk) if tx.spilled is not None else [events]):
            if not part:
                continue
            for step in reduce([Transaction(tx.tx_id, tx.commit_lsn, 0, part)]):
                for changes in step.values():
                    for key, state in changes.states.items():
                        if key not in table or table[key][1] < state.position:
                            table[key] = (state.row, state.position)
    return {k: v[0] for k, v in table.items() if v[0] is not None}


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=8), bound=st.sampled_from([0, 3, 10, 40]),
       chunk=st.integers(1, 7), seed=st.integers(0, 2**32))
def test_spilled_or_not_the_replica_ends_the_same(sizes, bound, chunk, seed):
    rng = random.Random(seed)
    # Postgres: transactions of updates, deletes and re-inserts of a few keys, in commit order.
    logs: dict = {tp: [] for tp in PARTS}
    markers = []
    for n, size in enumerate(sizes):
        tx_id = 100 + n
        for order in range(1, size + 1):
            key = rng.randint(0, 9)
            op = rng.choice("cud")
            tp = PARTS[key % 2]
            logs[tp].append(event(tx_id, order, key, rng.randint(0, 99), op=op, tp=tp))
        markers.append(end(tx_id, 1000 + n, size, n))
    # Kafka delivers the partitions interleaved at random, with duplicates.
    spills = Spills()
    a = TransactionAssembler(spill=spills if bound else None, memory_bound_bytes=bound * 1000)
    queues = {tp: list(log) for tp, log in logs.items()}
    pending_markers = list(markers)
    applied: list[Transaction] = []
    spilled_events: dict[int, list] = {}
    while any(queues.values()) or pending_markers:
        choice = rng.choice([tp for tp, q in queues.items() if q] + (["tx"] if pending_markers else []))
        if choice == "tx":
            a.add_marker(pending_markers.pop(0))
        else:
            e = queues[choice].pop(0)
            a.add_event(e, e.tx_id, e.total_order, choice, 0)
            if rng.random() < 0.1:
                a.add_event(e, e.tx_id, e.total_order, choice, 0)
        applied += take(a, rng.randint(1, 100), spilled_events)
    while more := take(a, 100, spilled_events):
        applied += more
    assert [t.tx_id for t in applied] == [100 + n for n in range(len(sizes))]
    assert all(len(t.events) == 0 for t in applied if t.spilled is not None)
    # The same transactions, never spilled, applied whole:
    whole = [Transaction(t.tx_id, t.commit_lsn, 0,
                         sorted((e for tp in PARTS for e in logs[tp] if e.tx_id == t.tx_id), key=lambda e: e.total_order))
             for t in applied]
    assert final_state(applied, chunk, spilled_events) == final_state(whole, chunk, {})
    if bound == 3 and max(sizes) > 10:
        assert spills.made


# -- the files -----------------------------------------------------------------------------

def test_spill_files_give_events_back_in_commit_order_across_partitions_and_go_when_applied(tmp_path):
    folder = SpillFolder(tmp_path / "replica.duckdb.spill")
    spilled = folder(7)
    orders = list(range(1, 5001))
    for order in orders:
        tp = PARTS[order % 3 == 0]
        spilled.add(order, event(7, order, order, order * 2, tp=tp, schema=SCHEMA if order % 2 else OTHER))
    spilled.add(2, event(7, 2, 2, 4, tp=PARTS[0]))  # out of order on its partition: a run of its own
    assert spilled.count == 5001 and spilled.schemas == [SCHEMA, OTHER]
    got = list(spilled.events())
    assert [e.total_order for e in got] == sorted([*orders, 2])
    assert got[0].schema is SCHEMA and got[1].schema is OTHER  # one object per layout, as the decoder's
    assert got[4] == event(7, 4, 4, 8, tp=PARTS[0], schema=OTHER)
    assert [e.total_order for e in spilled.events()] == sorted([*orders, 2])  # read again (a retry)
    assert len(folder.files()) == 1 and spilled.bytes > 0
    spilled.discard()
    assert folder.files() == []


def test_spill_files_left_by_a_crash_are_removed_at_start_and_nothing_else(tmp_path):
    path = tmp_path / "replica.duckdb.spill"
    path.mkdir()
    (path / "tx-3.spill").write_bytes(b"left by a crash")
    (path / "notes.txt").write_text("the user's")
    folder = SpillFolder(path)
    assert folder.removed == 1 and sorted(p.name for p in path.iterdir()) == ["notes.txt"]
