"""Faults under a running workload: the broker, the Connect worker and the applier are each
SIGKILLed in turn and restarted by `stack up`, while a writer keeps inserting, updating and
deleting rows of a keyed table. Afterwards the replica equals Postgres row for row, no
transaction is missing from Kafka, and Debezium's confirmed position in the slot was never
ahead of what Kafka held.

(test_cdc_to_kafka.py SIGKILLs Connect and the broker with the source idle between two
writes, and checks the envelopes; this is the same under load, with the applier too, down
to the replica.)"""
from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass

import psycopg2
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from mallard.adapters import kafka
from mallard.stack.processes import is_alive
from tests.conftest import Stack, new_home, up_capturing_every_table

pytestmark = pytest.mark.integration
TOPIC = "mallard.public.faults"
KEYS = 300


@dataclass
class Tx:
    xid: int  # 32 bits, as Debezium's source.txId
    wal_after: int  # pg_current_wal_lsn() once committed: at or past the end of its commit record


class Writer(threading.Thread):
    """Short transactions of inserts, updates and deletes on ``faults``, until stopped."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.txs: list[Tx] = []  # in commit order
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.rng = random.Random(16)

    def statement(self, present: set[int]) -> tuple[str, tuple]:
        r = self.rng.random()
        if r < 0.4 and len(present) < KEYS:
            key = self.rng.choice(sorted(set(range(1, KEYS + 1)) - present))
            present.add(key)
            return "INSERT INTO faults VALUES (%s, %s, 'new')", (key, self.rng.randrange(1000))
        if not present:
            return "SELECT 1", ()
        key = self.rng.choice(sorted(present))
        if r < 0.75:
            return "UPDATE faults SET v = v + 1, note = 'updated' WHERE id = %s", (key,)
        if r < 0.95:
            present.discard(key)
            return "DELETE FROM faults WHERE id = %s", (key,)
        # many keys, many partitions; bounded, for a slow machine's longer run never overflows a bigint
        return "UPDATE faults SET v = v * 2 %% 1000003 WHERE id %% 10 = %s", (key % 10,)

    def run(self):
        present: set[int] = set()
        try:
            conn = psycopg2.connect(self.dsn)
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    changed = 0
                    for _ in range(self.rng.randint(1, 3)):
                        cur.execute(*self.statement(present))
                        changed += max(cur.rowcount, 0) if cur.description is None else 0
                    cur.execute("SELECT pg_current_xact_id()::text::bigint")
                    xid = cur.fetchone()[0] % 2**32
                    conn.commit()
                    cur.execute("SELECT pg_current_wal_lsn() - '0/0'")
                    wal_after = int(cur.fetchone()[0])
                    conn.commit()
                    if changed:  # (a transaction that changed no row sends no event)
                        self.txs.append(Tx(xid, wal_after))
                    time.sleep(0.01)  # a steady workload, not a flood: the machine has 2 cores
            conn.close()
        except BaseException as e:  # surfaced by the test
            self.error = e


@dataclass
class Sample:
    at: float
    confirmed: int  # the slot's confirmed_flush_lsn
    ends: dict[int, int] | None = None  # the topic's end offsets, read after it (None: broker unreachable)


class SlotWatcher(threading.Thread):
    """Reads the slot's confirmed position, then the topic's end offsets, over and over:
    what Kafka held when each end was read includes what it held when the position was."""

    def __init__(self, stack: Stack):
        super().__init__(daemon=True)
        self.admin_dsn = stack.role_dsn("admin")
        self.bootstrap_servers = stack.bootstrap_servers
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        consumer = Consumer({"bootstrap.servers": self.bootstrap_servers, "group.id": "test-faults-watch",
                             "enable.auto.commit": False, "log_level": 0})
        try:
            conn = psycopg2.connect(self.admin_dsn)
            conn.autocommit = True
            with conn.cursor() as cur:
                while not self.stop.wait(0.25):
                    cur.execute("SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots "
                                "WHERE slot_name = 'mallard_debezium'")
                    sample = Sample(time.monotonic(), int(cur.fetchone()[0]))
                    try:
                        sample.ends = {p: consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=1)[1]
                                       for p in range(3)}
                    except KafkaException:
                        pass  # the broker is down (or the topic not there yet)
                    self.samples.append(sample)
            conn.close()
        except BaseException as e:
            self.error = e
        finally:
            consumer.close()


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
        time.sleep(0.05)


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def source_rows(dsn: str, sql: str) -> list[list]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        rows = [list(r) for r in cur.fetchall()]
    conn.close()
    return rows


@pytest.fixture(scope="module")
def fault_stack():
    stack = Stack(new_home(), MALLARD_TOPIC_REFRESH_MS="1000")
    try:
        up_capturing_every_table(stack)
        yield stack
    finally:
        stack.teardown()


def test_sigkill_of_broker_connect_and_applier_under_load_loses_nothing(fault_stack):
    stack = fault_stack
    dsn = stack.dsn
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE faults (id int PRIMARY KEY, v bigint NOT NULL, note text)")
        cur.execute("CREATE TABLE fault_marks (phase text PRIMARY KEY)")
    conn.close()

    recovery: dict[str, float] = {}

    def mark(phase: str) -> None:
        """A row written after ``phase``: once in the replica, the whole path works again.
        (What is checked is that nothing is lost, not how fast: on a loaded 2-core machine
        with other stacks up, Connect's rejoin and the task's restart after a broker kill
        have taken over two minutes, so the bound is generous and the time is printed.)"""
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO fault_marks VALUES (%s)", (phase,))
        conn.close()
        started = time.monotonic()
        stack.wait_for(f"SELECT count(*) FROM fault_marks WHERE phase = '{phase}'", [[1]], timeout=300)
        recovery[phase] = time.monotonic() - started

    writer, watcher = Writer(dsn), SlotWatcher(stack)
    writer.start()
    watcher.start()
    downtime: dict[str, tuple[float, float]] = {}
    try:
        wait_until(lambda: len(writer.txs) >= 50 or writer.error, "the writer's first transactions")
        mark("start")
        for victim in ("broker", "connect", "applier"):
            txs_before = len(writer.txs)
            wait_until(lambda: len(writer.txs) >= txs_before + 100 or writer.error, f"writes before the {victim} kill")
            pid = stack.status()["components"][victim]["pid"]
            kill(pid)
            killed_at, samples_at_kill = time.monotonic(), len(watcher.samples)
            txs_at_kill = len(writer.txs)
            # Writes go on while it is dead, and the slot is watched meanwhile.
            wait_until(lambda: (len(writer.txs) >= txs_at_kill + 50 and len(watcher.samples) >= samples_at_kill + 4)
                       or writer.error, f"writes while the {victim} is dead")
            out = stack.mallard("stack", "up", "--no-demo").stdout
            downtime[victim] = (killed_at, time.monotonic())
            assert f"{victim:<14} started" in out and out.count("already running") == 5, out
            mark(f"after {victim}")
            assert writer.error is None, writer.error
    finally:
        writer.stop.set()
        writer.join(30)
        watcher.stop.set()
        watcher.join(30)
    assert writer.error is None, writer.error
    assert watcher.error is None, watcher.error
    mark("end")

    # The replica equals Postgres, row for row.
    sql = "SELECT id, v, note FROM faults ORDER BY id"
    expected = source_rows(dsn, sql)
    stack.wait_for(sql, expected, timeout=120)

    # Every transaction the writer committed is on Kafka: nothing lost to the kills.
    copies: dict[int, dict[tuple, list[tuple[int, int]]]] = {}  # txId -> event -> (partition, offset) of each copy
    for msg in kafka.read_to_end(stack.bootstrap_servers, TOPIC):
        if msg.value() is not None:  # (a restarted Connect may publish an event again: copies)
            payload = json.loads(msg.value())["payload"]
            event = (payload["source"]["lsn"], payload["op"], msg.key())
            copies.setdefault(payload["source"]["txId"], {}).setdefault(event, []).append((msg.partition(), msg.offset()))
    missing = [tx.xid for tx in writer.txs if tx.xid not in copies]
    assert not missing, f"{len(missing)} of {len(writer.txs)} transactions never reached Kafka: {missing[:20]}"

    # Debezium's position never ahead of Kafka: once the slot had confirmed a position, every
    # transaction committed before it had each of its events in Kafka, below the end offsets
    # read just after the position (while the broker was down, the first ends read once it
    # was back: they can only hold more).
    samples = watcher.samples
    resolved: list[dict[int, int] | None] = []
    ends = None
    for sample in reversed(samples):
        ends = sample.ends or ends
        resolved.append(ends)
    resolved.reverse()
    ahead, covered = [], 0  # writer.txs are in commit order, and so are their WAL positions
    for sample, ends in zip(samples, resolved):
        while covered < len(writer.txs) and writer.txs[covered].wal_after <= sample.confirmed:
            tx = writer.txs[covered]  # first covered by this sample: the strictest check it gets
            covered += 1
            assert ends is not None, "the broker never answered after the slot confirmed a position"
            if not all(any(offset < ends[p] for p, offset in where) for where in copies[tx.xid].values()):
                ahead.append((round(sample.at - samples[0].at, 2), tx.xid))
    assert not ahead, f"the slot confirmed {len(ahead)} transaction(s) Kafka did not hold yet: {ahead[:10]}"
    assert covered > len(writer.txs) // 2, f"only {covered} of {len(writer.txs)} transactions confirmed while watched"
    broker_down = [s for s in samples if downtime["broker"][0] <= s.at <= downtime["broker"][1]]
    assert sum(s.ends is None for s in broker_down) >= 3, "the slot was not watched while the broker was down"
    print(f"{len(writer.txs)} transactions, {len(expected)} rows; {len(samples)} samples of the slot, "
          f"{covered} transactions checked against Kafka's ends; downtime: "
          + ", ".join(f"{v} {b - a:.1f}s" for v, (a, b) in downtime.items())
          + "; a mark in the replica after: " + ", ".join(f"{p} {t:.1f}s" for p, t in recovery.items()))
