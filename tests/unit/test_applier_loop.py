"""The applier's loop, driven with in-memory fakes of its ports (services/applier/fakes.py):
the hard cases that otherwise need SIGKILLs on a full stack, in seconds.

Each test writes Debezium messages (as Debezium does: change events, and BEGIN/END
markers on the transaction topic) to a fake Kafka, runs the real ApplierService (the
real decoder, transaction assembler, merge and pipeline) until a condition holds, and
looks at what the fake replica, the fake topics and the fake consumer saw.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import pytest

from mallard.core.names import cdc_topic, stream_name
from mallard.core.replica_sql import NEEDS_RESNAPSHOT
from mallard.services.applier.bootstrap import bootstrap
from mallard.services.applier.config import ApplierSettings
from mallard.services.applier.fakes import (Crash, FakeClock, FakeKafka, FakeReplica, FakeTopic, ReplicaStore,
                                            fake_ports)

PREFIX = "mallard"
TX_TOPIC = f"{PREFIX}.transaction"
ROW = {"type": "struct", "optional": True, "fields": [
    {"type": "int64", "optional": False, "field": "id"}, {"type": "string", "optional": True, "field": "v"}]}
KEY_SCHEMA = {"type": "struct", "optional": False, "fields": [{"type": "int64", "optional": False, "field": "id"}]}


def value_schema(table: str) -> dict:
    return {"type": "struct", "optional": False, "name": f"{PREFIX}.public.{table}.Envelope", "fields": [
        {**ROW, "field": "before", "name": f"{PREFIX}.public.{table}.Value"},
        {**ROW, "field": "after", "name": f"{PREFIX}.public.{table}.Value"},
        {"type": "struct", "optional": False, "field": "source", "fields": [
            {"type": "string", "optional": False, "field": "schema"},
            {"type": "string", "optional": False, "field": "table"},
            {"type": "int64", "optional": True, "field": "txId"},
            {"type": "int64", "optional": True, "field": "lsn"},
            {"type": "int64", "optional": False, "field": "ts_ms"}]},
        {"type": "string", "optional": False, "field": "op"},
        {"type": "struct", "optional": True, "field": "transaction", "fields": [
            {"type": "string", "optional": False, "field": "id"},
            {"type": "int64", "optional": False, "field": "total_order"},
            {"type": "int64", "optional": False, "field": "data_collection_order"}]}]}


class Source:
    """Postgres as Debezium publishes it: transactions of changes, in commit order, to the
    CDC topics (``partitions`` each) and the transaction topic; ``expected`` is Postgres."""

    def __init__(self, kafka: FakeKafka, tables: tuple[str, ...] = ("a", "b"), partitions: int = 1):
        self.kafka, self.partitions = kafka, partitions
        self.tx_id, self.lsn = 1000, 10_000_000
        self.expected: dict[str, dict[int, str]] = {stream_name("public", t): {} for t in tables}
        for t in tables:
            if self.topic(t) not in kafka.topics:
                kafka.create(self.topic(t), partitions)
        kafka.create(TX_TOPIC)

    @staticmethod
    def topic(table: str) -> str:
        """Debezium's topic of public.<table> (its name sanitized)."""
        return cdc_topic(PREFIX, stream_name("public", table))

    def transaction(self, *changes: tuple[str, str, int, str | None]) -> int:
        """(table, op, id, v) ...: one Postgres transaction."""
        self.tx_id += 1
        ts = 1_780_000_000_000 + self.tx_id
        for order, (table, op, key, v) in enumerate(changes, 1):
            self.lsn += 100
            row = None if op == "d" else {"id": key, "v": v}
            payload = {"before": {"id": key, "v": None} if op == "d" else None, "after": row,
                       "source": {"schema": "public", "table": table, "txId": self.tx_id, "lsn": self.lsn, "ts_ms": ts},
                       "op": op, "transaction": {"id": f"{self.tx_id}:{self.lsn}", "total_order": order,
                                                 "data_collection_order": order}}
            key_bytes = json.dumps({"schema": KEY_SCHEMA, "payload": {"id": key}}).encode()
            value = json.dumps({"schema": value_schema(table), "payload": payload}).encode()
            self.kafka.produce(self.topic(table), key_bytes, value, partition=key % self.partitions)
            if op == "d":
                self.expected[stream_name("public", table)].pop(key, None)
            else:
                self.expected[stream_name("public", table)][key] = v
        self.lsn += 100
        end = {"status": "END", "id": f"{self.tx_id}:{self.lsn}", "event_count": len(changes),
               "data_collections": None, "ts_ms": ts}
        self.kafka.produce(TX_TOPIC, None, json.dumps({"schema": {"type": "struct"}, "payload": end}).encode())
        return self.tx_id


def rows(store: ReplicaStore, stream: str) -> dict[int, str]:
    return {k[0]: r[1] for k, r in store.rows.get(stream, {}).items()}


def settings(tmp_path, **overrides) -> ApplierSettings:
    return ApplierSettings(connector_config=str(tmp_path / "no-connector.json"), health_port=0,
                           **{"poll_messages": 50, "max_batch_events": 20, **overrides})


class Running:
    """An applier running in a thread until ``until()`` holds (then stopped), or until it dies."""

    def __init__(self, service):
        self.service, self.error = service, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as e:  # noqa: BLE001 - looked at by the test
            self.error = e

    def until(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if not self.thread.is_alive():
                raise AssertionError(f"the applier stopped: {self.error!r}")
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.005)

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(20)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def everything_applied(store: ReplicaStore, source: Source) -> Callable[[], bool]:
    return lambda: all(rows(store, s) == want for s, want in source.expected.items())


# -- names ------------------------------------------------------------------------------

def test_two_tables_on_one_sanitized_topic_are_applied_each_to_its_own_stream(tmp_path):
    """Debezium writes both public."Order Items" and public.order_items' cousin
    public."Order_Items" to mallard.public.Order_Items: each event's stream is its source
    block's table, never the topic's name."""
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka, tables=("Order Items", "Order_Items", "a"), partitions=2)
    assert Source.topic("Order Items") == Source.topic("Order_Items") == "mallard.public.Order_Items"
    for i in range(10):
        source.transaction(("Order Items", "c", i, f"space{i}"), ("Order_Items", "c", i, f"underscore{i}"))
        if i % 2:
            source.transaction(("Order Items", "d", i, None), ("Order_Items", "u", i, f"u{i}"), ("a", "c", i, "x"))
    replica = FakeReplica(store)
    service = bootstrap(settings(tmp_path), **fake_ports(kafka, replica))
    run = Running(service)
    run.until(everything_applied(store, source))
    run.stop()
    assert set(store.rows) == {'public."Order Items"', 'public."Order_Items"', "public.a"}
    assert rows(store, 'public."Order Items"') == {i: f"space{i}" for i in range(0, 10, 2)}
    assert service.router.topic_streams["mallard.public.Order_Items"] == {'public."Order Items"',
                                                                         'public."Order_Items"'}


# -- the commit/offset crash window -----------------------------------------------------

def test_a_crash_between_the_duckdb_commit_and_the_offset_commit_applies_nothing_twice_and_loses_nothing(tmp_path):
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka, partitions=2)
    for i in range(60):
        source.transaction(("a", "c", i, f"a{i}"), ("b", "c", i, f"b{i}"))
        if i % 3 == 0:
            source.transaction(("a", "u", i, f"a{i}'"), ("b", "d", i, None))

    # The first applier dies at its first offset commit after DuckDB committed something:
    # DuckDB holds transactions whose offsets Kafka never got.
    def crash(offsets):
        if store.applied:
            raise Crash("SIGKILL")

    first = kafka.consumer("mallard-applier", on_commit=crash)
    run = Running(bootstrap(settings(tmp_path), **fake_ports(kafka, FakeReplica(store), consumer=first)))
    run.thread.join(20)
    assert isinstance(run.error, Crash) and store.applied
    assert not kafka.committed.get("mallard-applier")  # nothing committed: all of it is read again
    applied_before = list(store.applied)

    # The restarted applier reads everything again: what DuckDB has is recognised and skipped.
    replica = FakeReplica(store)
    run = Running(bootstrap(settings(tmp_path), **fake_ports(kafka, replica)))
    run.until(everything_applied(store, source))
    run.until(lambda: kafka.committed.get("mallard-applier", {}).get((TX_TOPIC, 0)) == len(kafka.topics[TX_TOPIC][0]))
    run.stop()
    assert len(store.applied) == len(set(store.applied)) == source.tx_id - 1000  # each transaction once
    assert store.applied[:len(applied_before)] == applied_before


# -- a rebalance --------------------------------------------------------------------------

def test_a_rebalance_mid_stream_reads_from_the_committed_offsets_and_applies_each_transaction_once(tmp_path):
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka, partitions=3)
    for i in range(40):
        source.transaction(("a", "c", i, f"a{i}"), ("b", "c", i + 1, f"b{i}"))
    consumer = kafka.consumer("mallard-applier")
    service = bootstrap(settings(tmp_path), **fake_ports(kafka, FakeReplica(store), consumer=consumer))
    run = Running(service)
    run.until(lambda: len(store.applied) >= 10)
    consumer.rebalance()  # revoked and assigned again: each partition from its committed offset
    for i in range(40, 80):  # the stream goes on meanwhile, and a new table's topic appears
        source.transaction(("a", "u", i - 40, f"a{i}"), ("b", "c", i + 1, f"b{i}"))
    source.expected["public.c"] = {}
    kafka.create(f"{PREFIX}.public.c", 1)
    source.transaction(("c", "c", 1, "c1"))
    consumer.rebalance()
    run.until(everything_applied(store, source))
    run.stop()
    assert len(store.applied) == len(set(store.applied)) == source.tx_id - 1000
    assert not service.dead_letters.counts["dead_letters"]


# -- pausing at the held-events bound -----------------------------------------------------

def test_at_the_held_events_bound_partitions_ahead_are_paused_and_the_one_behind_is_read_on(tmp_path):
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka, partitions=1)
    for i in range(100):
        source.transaction(("a", "c", i, f"a{i}"), ("a", "u", i, f"a{i}'"), ("b", "c", i, f"b{i}"))
    consumer = kafka.consumer("mallard-applier")
    # A backlog read unevenly: table a's partition first, whenever it can be, then the
    # transaction topic; table b's lags behind both.
    consumer.chunk, consumer.prefer = 40, [f"{PREFIX}.public.a", TX_TOPIC]
    replica = FakeReplica(store)
    service = bootstrap(settings(tmp_path, max_buffered_events=30, poll_messages=40),
                        **fake_ports(kafka, replica, consumer=consumer))
    held = []
    run = Running(service)
    run.until(lambda: held.append(service.assembler.buffered_events if service.assembler else 0) or
              everything_applied(store, source)())
    run.stop()
    assert service.counts["partition_pauses"] > 0
    assert any((f"{PREFIX}.public.a", 0) in p for p in consumer.pauses)  # the one ahead
    assert not any((f"{PREFIX}.public.b", 0) in p for p in consumer.pauses)  # never the one behind
    # The bound, plus a poll of what the next transaction still needs and one of a partition
    # ahead read just before the bound was reached (unpaused, the same backlog held 200 and more).
    assert max(held) <= 30 + 2 * 40 + 3
    assert len(store.applied) == 100


# -- a terminal error, bisected to one event ----------------------------------------------

def test_a_terminal_error_is_bisected_to_its_event_which_is_dead_lettered_and_its_stream_re_snapshotted(tmp_path):
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka, partitions=1)
    for i in range(30):
        source.transaction(("a", "c", i, f"a{i}"), ("b", "c", i, f"b{i}"))
    bad = source.transaction(("a", "c", 100, "a100"), ("b", "c", 100, "BOOM"), ("a", "c", 101, "a101"))
    for i in range(30, 60):
        source.transaction(("a", "c", i, f"a{i}"), ("b", "c", i, f"b{i}"))
    dead, requests = FakeTopic(), FakeTopic()
    replica = FakeReplica(store, refuse=lambda row: row[1] == "BOOM")  # DuckDB refuses one value
    service = bootstrap(settings(tmp_path), **fake_ports(kafka, replica, dead_letters=dead,
                                                         snapshot_requests=requests))
    run = Running(service)
    run.until(lambda: rows(store, "public.a") == source.expected["public.a"] and requests.sent)
    run.stop()
    # The event DuckDB refuses is dead-lettered with the reason ...
    assert len(dead.sent) == 1
    letter = dead.sent[0]
    assert letter["source_topic"] == f"{PREFIX}.public.b" and "DuckDB refused it" in letter["error"]
    assert json.loads(letter["value"])["tx_id"] == bad and json.loads(letter["value"])["key"] == [100]
    # ... its stream is marked for a re-snapshot, which is requested ...
    assert store.status["public.b"] == NEEDS_RESNAPSHOT
    assert [r["streams"] for r in requests.sent] == [["public.b"]]
    # ... the other stream goes on, whole (the rest of the bad event's transaction included) ...
    assert rows(store, "public.a") == source.expected["public.a"]
    # ... and b kept what came before the bad transaction (later changes wait for the snapshot).
    assert all(rows(store, "public.b")[i] == f"b{i}" for i in range(30))
    assert len(store.applied) == len(set(store.applied)) == 61
    assert not replica.transient_failures and replica.probes < 20  # by halves, not one by one


# -- transient errors ---------------------------------------------------------------------

def test_transient_errors_are_retried_with_backoff_and_logged_once(tmp_path, caplog):
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka)
    for i in range(20):
        source.transaction(("a", "c", i, f"a{i}"))
    clock = FakeClock()
    replica = FakeReplica(store, transient_failures=6)
    service = bootstrap(settings(tmp_path), **fake_ports(kafka, replica, clock=clock))
    with caplog.at_level(logging.INFO, logger="mallard.applier"):
        run = Running(service)
        run.until(everything_applied(store, source))
        run.stop()
    said = [r for r in caplog.records if "retrying with backoff" in r.getMessage()]
    assert len(said) == 1 and "IO Error" in said[0].getMessage()
    assert any("works again" in r.getMessage() for r in caplog.records)
    backoff = clock.slept_over(0.05)
    assert backoff[:6] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
    assert len(store.applied) == len(set(store.applied)) == 20


# -- a terminal error in snapshot work ----------------------------------------------------

SNAPSHOT_TOPIC = "mallard.snapshots"


def publish_snapshot(kafka: FakeKafka, snapshot_id: str, table: str, rows_: list[list]) -> None:
    """A full snapshot of public.<table> as the snapshotter frames it: begin, one rows batch per 3 rows, end."""
    if SNAPSHOT_TOPIC not in kafka.topics:
        kafka.create(SNAPSHOT_TOPIC)
    stream = stream_name("public", table)
    head = {"schema_version": 1, "snapshot_id": snapshot_id, "stream": stream}
    begin = {**head, "kind": "begin", "cut": {"xmin": 1, "xmax": 1, "xip": []}, "started_at": "2026-12-01T00:00:00Z",
             "columns": [{"name": "id", "pg_type": "bigint", "nullable": False, "primary_key_position": 1,
                          "connect_schema": {"type": "int64", "optional": False}},
                         {"name": "v", "pg_type": "text", "connect_schema": {"type": "string", "optional": True}}]}
    batches = [rows_[i:i + 3] for i in range(0, len(rows_), 3)]
    messages = [begin, *({**head, "kind": "rows", "batch": n, "rows": b} for n, b in enumerate(batches, 1)),
                {**head, "kind": "end", "batches": len(batches), "row_count": len(rows_),
                 "finished_at": "2026-12-01T00:00:01Z"}]
    for m in messages:
        kafka.produce(SNAPSHOT_TOPIC, stream.encode(), json.dumps(m).encode())


def test_a_snapshot_duckdb_refuses_is_abandoned_with_the_reason_and_the_other_streams_go_on(tmp_path, caplog):
    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka)
    for i in range(20):
        source.transaction(("a", "c", i, f"a{i}"))
    # A snapshot of b holding a value DuckDB refuses (in its second batch), then one it takes.
    publish_snapshot(kafka, "s-bad", "b", [[i, "BOOM" if i == 4 else f"s{i}"] for i in range(9)])
    publish_snapshot(kafka, "s-good", "b", [[i, f"t{i}"] for i in range(5)])
    for i in range(20, 40):
        source.transaction(("a", "c", i, f"a{i}"))
    replica = FakeReplica(store, refuse=lambda row: row[1] == "BOOM")
    service = bootstrap(settings(tmp_path, snapshot_stage_rows=3), **fake_ports(kafka, replica))
    with caplog.at_level(logging.INFO, logger="mallard.applier"):
        run = Running(service)
        run.until(lambda: rows(store, "public.a") == source.expected["public.a"] and "s-good" in store.snapshots)
        run.stop()
    # The snapshot is abandoned with DuckDB's reason, said once; nothing of it is merged ...
    assert set(store.abandoned) == {"s-bad"} and "BOOM" in store.abandoned["s-bad"]
    assert "DuckDB refused it while staging" in store.abandoned["s-bad"]
    said = [r for r in caplog.records if "s-bad" in r.getMessage() and "abandoned" in r.getMessage()]
    assert len(said) == 1
    assert "s-bad" not in store.snapshots
    # ... the applier goes on: the other stream whole, and the stream's next snapshot merges.
    assert rows(store, "public.a") == source.expected["public.a"]
    assert rows(store, "public.b") == {i: f"t{i}" for i in range(5)}
    assert service.counts["snapshots_abandoned"] == 1 and service.counts["snapshots_merged"] == 1


# -- the DDL signal -----------------------------------------------------------------------

def test_a_ddl_signal_marks_its_stream_converging_and_its_offset_waits_for_duckdb(tmp_path):
    """mallard's trigger says, on <prefix>.message, that a DDL rewrote rows without row events:
    the stream is marked converging in DuckDB and a full snapshot asked for; the message's
    offset is committed only after DuckDB has the mark. Other messages there: an application's
    own (skipped), garbage (dead-lettered), a signal for a stream not replicated (skipped)."""
    from tests.unit.test_schema_signal import message, signal

    kafka, store = FakeKafka(), ReplicaStore()
    source = Source(kafka)
    source.transaction(("a", "c", 1, "x"))
    topic = f"{PREFIX}.message"
    kafka.produce(topic, None, message(b"audit", prefix="app-audit"))
    kafka.produce(topic, None, b"garbage")
    kafka.produce(topic, None, message(signal(table="a", changes="column a renamed to b")))
    kafka.produce(topic, None, message(signal(table="not_replicated")))
    asked, marked = threading.Event(), threading.Event()

    class SlowReplica(FakeReplica):
        def converge(self, stream: str, tx_id: int, reason: str) -> bool:
            asked.set()
            marked.wait(10)  # DuckDB is slow to take the mark
            return super().converge(stream, tx_id, reason)

    requests, dead = FakeTopic(), FakeTopic()
    config = tmp_path / "replication.yaml"
    config.write_text("streams:\n  public.a:\n    mode: full-refresh\n")
    service = bootstrap(settings(tmp_path, replication_config=str(config)),
                        **fake_ports(kafka, SlowReplica(store), snapshot_requests=requests, dead_letters=dead))
    run = Running(service)
    run.until(lambda: asked.is_set() and dead.sent)
    time.sleep(1.5)  # offsets are committed every 0.5 s: the signal's is held, not the message before it
    assert kafka.committed.get("mallard-applier", {}).get((topic, 0)) == 2
    assert not [r for r in requests.sent if "rewritten" in r["reason"]]
    marked.set()
    run.until(lambda: kafka.committed.get("mallard-applier", {}).get((topic, 0)) == 4)
    run.until(lambda: rows(store, "public.a") == {1: "x"})
    run.stop()
    assert store.converging == {"public.a": (751, "column a renamed to b")}
    asked = [r for r in requests.sent if "rows without row events" in r["reason"]]
    assert [(r["streams"], r["full"]) for r in asked] == [(["public.a"], True)]
    assert "column a renamed to b" in asked[0]["reason"]
    assert [(d["source_offset"], d["error"].split(":")[0]) for d in dead.sent] == [(1, "logical decoding message")]
