"""A transaction bigger than the applier's memory bound (issue 18), through the real
applier loop with fakes of its ports: spilled, read back in chunks, applied whole in one
DuckDB transaction, or not at all when the applier dies in the middle."""
from __future__ import annotations

from mallard.core.spill import MemorySpill
from mallard.services.applier.bootstrap import bootstrap
from mallard.services.applier.fakes import Crash, FakeKafka, FakeReplica, ReplicaStore, fake_ports
from tests.unit.test_applier_loop import Running, Source, everything_applied, rows, settings

BIG = 600
"""Events of the big transaction; the bound (0.05 MB at ~1 KB an event) holds about 50."""


class Spills:
    def __init__(self) -> None:
        self.made: list[MemorySpill] = []

    def __call__(self, tx_id: int) -> MemorySpill:
        self.made.append(MemorySpill(tx_id))
        return self.made[-1]


def big_update(source: Source) -> int:
    """Small transactions, one updating every row of both tables at once, small ones again."""
    for i in range(BIG // 2):
        source.transaction(("a", "c", i, f"a{i}"), ("b", "c", i, f"b{i}"))
    big = source.transaction(*[(t, "u", i, f"{t}{i}'") for i in range(BIG // 2) for t in ("a", "b")])
    for i in range(20):
        source.transaction(("a", "u", i, f"a{i}''"), ("b", "d", i, None))
    return big


def test_a_transaction_over_the_memory_bound_is_spilled_and_applied_whole_in_chunks(tmp_path):
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka, partitions=2)
    big = big_update(source)
    spills, replica = Spills(), FakeReplica(store)
    # The held-events bound (30) is far below the transaction: it must still be read whole.
    service = bootstrap(settings(tmp_path, memory_bound_mb=0.05, max_buffered_events=30, max_batch_events=40),
                        **fake_ports(kafka, replica, spill=spills))
    held = []
    run = Running(service)
    run.until(lambda: held.append(service.assembler.buffered_events if service.assembler else 0) or
              everything_applied(store, source)())
    run.stop()
    assert [s.tx_id for s in spills.made] == [big] and spills.made[0].count == BIG
    assert spills.made[0].discarded  # its file goes once it is applied
    assert max(held) < BIG // 4  # never held whole in memory
    assert replica.chunks >= BIG // 40  # read back and sent in chunks ...
    assert len(store.applied) == len(set(store.applied)) == source.tx_id - 1000  # ... each transaction once
    assert service.counts["events_applied"] == BIG + 2 * (BIG // 2) + 40


def test_an_applier_dying_in_the_middle_of_a_spilled_transaction_applies_none_of_it_then_all_of_it(tmp_path):
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka, partitions=2)
    big = big_update(source)
    replica = FakeReplica(store)
    replica.crash_in_chunks = 5  # the process dies with 4 chunks sent, before the commit
    run = Running(bootstrap(settings(tmp_path, memory_bound_mb=0.05, max_batch_events=40),
                            **fake_ports(kafka, replica, spill=Spills())))
    run.thread.join(20)
    assert isinstance(run.error.__cause__ or run.error, Crash)
    assert big not in store.applied
    assert all(v == f"a{i}" for i, v in rows(store, "public.a").items())  # nothing of it, not half
    # Restarted: Kafka gives the transaction again (its offsets were never committed).
    spills = Spills()
    replica = FakeReplica(store)
    run = Running(bootstrap(settings(tmp_path, memory_bound_mb=0.05, max_batch_events=40),
                            **fake_ports(kafka, replica, spill=spills)))
    run.until(everything_applied(store, source))
    run.stop()
    assert store.applied.count(big) == 1 and [s.tx_id for s in spills.made] == [big]
    assert len(store.applied) == len(set(store.applied)) == source.tx_id - 1000


def test_without_a_spill_or_under_the_bound_nothing_is_spilled(tmp_path):
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka, partitions=2)
    big_update(source)
    spills, replica = Spills(), FakeReplica(store)
    run = Running(bootstrap(settings(tmp_path, memory_bound_mb=64), **fake_ports(kafka, replica, spill=spills)))
    run.until(everything_applied(store, source))
    run.stop()
    assert spills.made == [] and replica.chunks == 0


def test_an_event_duckdb_refuses_in_a_spilled_transaction_re_snapshots_its_streams_and_the_rest_goes_on(tmp_path):
    from mallard.core.replica_sql import NEEDS_RESNAPSHOT
    from mallard.services.applier.fakes import FakeTopic

    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka, tables=("a", "b", "c"), partitions=2)
    for i in range(10):
        source.transaction(("c", "c", i, f"c{i}"))
    big = source.transaction(*[(t, "u", i, "BOOM" if (t, i) == ("b", 7) else f"{t}{i}'")
                               for i in range(BIG // 2) for t in ("a", "b")])
    source.transaction(("c", "u", 1, "c1'"))
    requests = FakeTopic()
    replica = FakeReplica(store, refuse=lambda row: row[1] == "BOOM")
    service = bootstrap(settings(tmp_path, memory_bound_mb=0.05, max_batch_events=40),
                        **fake_ports(kafka, replica, spill=Spills(), snapshot_requests=requests))
    run = Running(service)
    run.until(lambda: rows(store, "public.c") == source.expected["public.c"] and requests.sent)
    run.stop()
    assert store.status["public.a"] == store.status["public.b"] == NEEDS_RESNAPSHOT  # the streams it touches
    assert sorted(s for r in requests.sent for s in r["streams"]) == ["public.a", "public.b"]
    assert not rows(store, "public.a") and big in store.applied  # held back for the snapshot, position moved
    assert len(store.applied) == len(set(store.applied)) == source.tx_id - 1000
