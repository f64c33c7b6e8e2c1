"""Postgres WAL -> real Debezium in Kafka Connect -> Kafka: envelopes, and at-least-once across a SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import time
from decimal import Decimal

import psycopg2
import pytest
from confluent_kafka import Consumer, TopicPartition

from mallard.stack.processes import is_alive
from mallard.schemas.debezium import ChangeEventKey, ChangeEventValue

pytestmark = pytest.mark.integration
TOPIC = "mallard.public.orders"


class TopicReader:
    """Reads every partition of a topic from the beginning, keeping what it saw."""

    def __init__(self, bootstrap_servers: str, topic: str):
        self.consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "test-reader",
                                  "enable.auto.commit": False})
        self.topic = topic
        self.assigned = False
        self.messages: list = []

    def _assign(self) -> bool:
        md = self.consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
        if md is None or md.error is not None or not md.partitions:
            return False
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in md.partitions])
        self.assigned = True
        return True

    def read_until(self, done, timeout: float = 90.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.assigned and not self._assign():
                time.sleep(0.5)
                continue
            msg = self.consumer.poll(0.5)
            if msg is not None and not msg.error():
                self.messages.append(msg)
            elif msg is None and done(self.messages):
                return self.messages
        raise AssertionError(f"timed out after {timeout}s; saw {len(self.messages)} message(s) on {self.topic}")

    def close(self) -> None:
        self.consumer.close()


def write(conn, statement: str, params=()) -> tuple[int, list]:
    """Run one statement in its own transaction; return (32-bit xid, rows returned)."""
    with conn.cursor() as cur:
        cur.execute(statement, params)
        rows = cur.fetchall() if cur.description else []
        cur.execute("SELECT pg_current_xact_id()::text::bigint")
        xid8 = cur.fetchone()[0]
    conn.commit()
    return xid8 % 2**32, rows  # Debezium's txId is the 32-bit xid


def events(messages) -> list[tuple[int | None, str, int | None, dict | None]]:
    """(txId, op, key id, value) of each message; tombstones as op 'tombstone'."""
    out = []
    for m in messages:
        key = json.loads(m.key())["payload"] if m.key() else None
        if m.value() is None:
            out.append((None, "tombstone", key and key["id"], None))
            continue
        value = json.loads(m.value())
        p = value["payload"]
        out.append((p["source"]["txId"], p["op"], key and key["id"], value))
    return out


INSERT = """INSERT INTO orders (customer_id, product_id, quantity, total, status, order_date, updated_at)
            VALUES (%s, 1, 2, %s, 'placed', '2025-06-01', '2025-06-01 10:00:00+02') RETURNING id"""


def test_changes_arrive_as_debezium_envelopes_and_survive_a_publisher_sigkill(stack):
    conn = psycopg2.connect(stack.dsn)
    reader = TopicReader(stack.bootstrap_servers, TOPIC)
    try:
        # -- insert, update, delete, truncate: exact envelopes --------------------
        tx_insert, [(order_id,)] = write(conn, INSERT, (7, Decimal("1234.50")))
        tx_update, _ = write(conn, "UPDATE orders SET status = 'paid' WHERE id = %s", (order_id,))
        tx_delete, _ = write(conn, "DELETE FROM orders WHERE id = %s", (order_id,))
        tx_truncate, _ = write(conn, "TRUNCATE orders")
        wanted = {(tx_insert, "c"), (tx_update, "u"), (tx_delete, "d"), (tx_truncate, "t")}
        seen = reader.read_until(lambda ms: wanted <= {(t, op) for t, op, _, _ in events(ms)})
        by_op = {op: (t, k, v) for t, op, k, v in events(seen) if (t, op) in wanted or op == "tombstone"}

        t, key, insert = by_op["c"]
        assert (t, key) == (tx_insert, order_id)
        p = insert["payload"]
        assert p["before"] is None and p["source"]["table"] == "orders" and p["source"]["schema"] == "public"
        assert p["after"]["id"] == order_id and p["after"]["customer_id"] == 7 and p["after"]["status"] == "placed"
        assert p["after"]["updated_at"] == "2025-06-01T08:00:00.000000Z"  # timestamptz as ISO UTC
        after_fields = next(f for f in insert["schema"]["fields"] if f["field"] == "after")["fields"]
        total = next(f for f in after_fields if f["field"] == "total")
        # decimal.handling.mode=string: the exact text (never a float), precision and scale beside it
        assert total["type"] == "string" and total["parameters"]["__debezium.source.column.type"] == "NUMERIC"
        assert (total["parameters"]["__debezium.source.column.length"], total["parameters"]["__debezium.source.column.scale"]) == ("12", "2")
        assert p["after"]["total"] == "1234.50"
        assert p["transaction"]["total_order"] == 1
        ChangeEventValue.model_validate(insert)  # the consumer-side contract holds

        t, key, update = by_op["u"]
        assert (t, key) == (tx_update, order_id) and update["payload"]["after"]["status"] == "paid"

        t, key, delete = by_op["d"]
        assert (t, key) == (tx_delete, order_id)
        assert delete["payload"]["after"] is None and delete["payload"]["before"]["id"] == order_id
        assert by_op["tombstone"][1] == order_id  # the tombstone follows the delete, same key

        t, key, truncate = by_op["t"]
        assert t == tx_truncate and key is None and truncate["payload"]["source"]["table"] == "orders"

        key_of_insert = next(m.key() for m in seen if m.value() and json.loads(m.value())["payload"]["op"] == "c")
        assert ChangeEventKey.model_validate_json(key_of_insert).schema_.fields[0].field == "id"

        # -- SIGKILL the Connect worker, change things while it is dead, restart --------
        from mallard.stack.jvm import connector_offsets

        connect = stack.status()["components"]["connect"]
        deadline = time.monotonic() + 30  # Connect commits source offsets every few seconds
        while not connector_offsets(connect["url"], "mallard-postgres"):
            assert time.monotonic() < deadline, "Connect never committed Debezium's offsets"
            time.sleep(0.5)
        os.kill(connect["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while is_alive(connect["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stack.status()["components"]["connect"]["state"] == "stopped"

        expected = set(wanted)
        for i in range(15):  # written while nothing reads the slot
            tx, [(oid,)] = write(conn, INSERT, (100 + i, Decimal(i)))
            expected.add((tx, "c"))
            if i % 3 == 0:
                tx, _ = write(conn, "UPDATE orders SET quantity = quantity + 1 WHERE id = %s", (oid,))
                expected.add((tx, "u"))
        out = stack.mallard("stack", "up").stdout
        assert "connect        started" in out and out.count("already running") == 5
        for i in range(15):  # written after the restart
            tx, [(oid,)] = write(conn, INSERT, (200 + i, Decimal(i)))
            expected.add((tx, "c"))
            if i % 5 == 0:
                tx, _ = write(conn, "DELETE FROM orders WHERE id = %s", (oid,))
                expected.add((tx, "d"))

        seen = reader.read_until(lambda ms: expected <= {(t, op) for t, op, _, _ in events(ms)})
        got = [(t, op) for t, op, _, _ in events(seen) if op != "tombstone"]
        assert expected <= set(got), f"missing on Kafka: {sorted(expected - set(got))}"
    finally:
        reader.close()
        conn.close()


def test_a_batch_kafka_did_not_take_is_published_again_after_a_restart(make_stack):
    """Never an offset ahead of Kafka: with the broker SIGKILLed, a change made meanwhile
    reaches Kafka once the broker is back, and what Kafka had is still there."""
    stack = make_stack()
    stack.mallard("stack", "up")
    conn = psycopg2.connect(stack.dsn)
    try:
        tx_before, [(first_id,)] = write(conn, INSERT, (1, Decimal("1.00")))
        reader = TopicReader(stack.bootstrap_servers, TOPIC)
        seen = reader.read_until(lambda ms: (tx_before, "c") in {(t, op) for t, op, _, _ in events(ms)})
        reader.close()
        lsn = next(v["payload"]["source"]["lsn"] for t, op, _, v in events(seen) if t == tx_before)
        # Debezium confirms an LSN to the slot when it commits the offsets of what Kafka has.
        deadline = time.monotonic() + 30
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots",
                            (f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}",))
                if cur.fetchone()[0]:
                    break
                assert time.monotonic() < deadline, "Debezium never committed the offset of an acknowledged event"
                time.sleep(0.2)
        conn.commit()

        components = stack.status()["components"]
        os.kill(components["broker"]["pid"], signal.SIGKILL)
        tx_lost, [(lost_id,)] = write(conn, INSERT, (2, Decimal("2.00")))
        # Connect keeps retrying the broker; Debezium's offset of this change is not
        # committed before Kafka has it. The broker comes back with its log on disk.
        out = stack.mallard("stack", "up").stdout
        assert "broker         started" in out
        reader = TopicReader(stack.bootstrap_servers, TOPIC)
        seen = reader.read_until(lambda ms: (tx_lost, "c") in {(t, op) for t, op, _, _ in events(ms)})
        reader.close()
        ids = {k for t, op, k, _ in events(seen) if op == "c"}
        assert lost_id in ids
        assert first_id in ids, "the broker kept its topics across the SIGKILL"
    finally:
        conn.close()
