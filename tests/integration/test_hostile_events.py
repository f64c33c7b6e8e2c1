"""Hostile messages produced by hand onto the CDC and transaction topics of a real
stack: none halts or corrupts replication. Each goes to the dead-letter topic with its
reason, no table outside the config appears, the replica's position is not moved, the
applier says it is held up while it is, and a normal change lands afterwards."""
from __future__ import annotations

import json
import time

import psycopg2
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.integration

# The held-up window (STUCK_S to GIVE_UP_S after the forged END is read) must outlast a slow
# applier loop and slow /healthz answers on a loaded machine, or it can pass unseen.
STUCK_S, GIVE_UP_S = 3, 30
FAR_LSN = (0xE8 << 32) | 0xD65E5A90
TX_TOPIC = "mallard.transaction"


def lsn_of(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def first_real(bootstrap: str, topic: str, predicate) -> object:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "hostile-read", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions])
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is not None and not msg.error() and msg.value() and predicate(json.loads(msg.value())):
                return msg
    finally:
        consumer.close()
    raise AssertionError(f"no message to copy on {topic}")


def dead_letters(bootstrap: str, wanted, timeout: float = 60) -> list[dict]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "hostile-dlq", "enable.auto.commit": False,
                         "fetch.max.bytes": 20 << 20})
    consumer.assign([TopicPartition("mallard.dead-letter", 0, 0)])
    letters: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while not wanted(letters) and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is not None and not msg.error():
                letters.append(json.loads(msg.value()))
    finally:
        consumer.close()
    return letters


def test_hostile_events_are_dead_lettered_and_replication_goes_on(make_stack):
    stack = make_stack(MALLARD_TX_STUCK_AFTER_S=str(STUCK_S), MALLARD_TX_GIVE_UP_AFTER_S=str(GIVE_UP_S),
                       MALLARD_TOPIC_REFRESH_MS="1000")
    stack.mallard("stack", "up")
    # `up` returns once the services answer, not once the applier's first snapshot of orders has
    # taken its cut: an UPDATE committed before that cut is in the snapshot, its CDC event is
    # covered by it and rightly skipped, and the row's source stays 'snapshot' for good.
    stack.wait_for("SELECT count(*) FROM _mallard.snapshots WHERE stream = 'public.orders' AND status = 'merged' "
                   "AND request_id LIKE 'applier-%'", [[1]], timeout=120)
    conn = psycopg2.connect(stack.dsn)
    conn.autocommit = True
    pg = conn.cursor()
    pg.execute("SELECT max(id) FROM orders")
    top = pg.fetchone()[0]
    pg.execute("UPDATE orders SET quantity = quantity + 1 WHERE id = %s", (top,))
    stack.wait_for(f"SELECT count(*) FROM orders WHERE _mallard_source = 'cdc' AND id = {top}", [[1]])
    bootstrap = stack.bootstrap_servers
    end = first_real(bootstrap, TX_TOPIC, lambda v: v["payload"]["status"] == "END")
    change = first_real(bootstrap, "mallard.public.orders", lambda v: v["payload"].get("op") in ("c", "u"))
    position = stack.applier_state()["progress"]["commit_lsn"]
    dead_before = stack.applier_state()["dead_letters"]

    # Topics a forger can create (Debezium's pattern picks them up): one that takes a 5 MB message.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic("mallard.public.huge", 1, 1, config={"max.message.bytes": str(8 << 20)}),
                                  NewTopic("mallard.public.ghost_table", 1, 1)]).values():
        f.result(30)
    time.sleep(2)  # the applier's topic refresh (1 s) sees them

    def forged_end(tx_id: int, lsn: int, count: int) -> bytes:
        doc = json.loads(end.value())
        doc["payload"].update(id=f"{tx_id}:{lsn}", event_count=count)
        return json.dumps(doc).encode()

    def ghost_event(tx_id: int) -> bytes:
        doc = json.loads(change.value())
        doc["payload"]["source"].update(table="ghost_table", txId=tx_id)
        doc["payload"]["transaction"].update(id=f"{tx_id}:1", total_order=1)
        return json.dumps(doc).encode()

    # A forged END at an LSN the source has, yet after the replica's position: one at or before
    # it is dropped as already behind the replica. Debezium's commit LSN is the end of the commit
    # record, which is where the WAL stands when nothing has been written since: write a commit
    # (of a transaction that only took an xid; it is written lazily, so ask the insert position).
    pg.execute("SELECT pg_current_xact_id()")
    pg.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
    plausible = int(pg.fetchone()[0])
    assert plausible > lsn_of(position), (plausible, position)
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 8 << 20})
    # 1. 5 MB on a CDC topic.
    producer.produce("mallard.public.huge", key=b"k", value=b'{"schema":' + b"x" * (5 << 20) + b"}")
    # 2. A forged END with a far-future commit LSN, with an event for a table outside the config.
    producer.produce("mallard.public.ghost_table", key=change.key(), value=ghost_event(3_900_000_001))
    producer.produce(TX_TOPIC, value=forged_end(3_900_000_001, FAR_LSN, 1))
    # 3. A forged END claiming 3 events that never come (an LSN the source has: only time tells).
    producer.produce(TX_TOPIC, value=forged_end(3_900_000_002, plausible, 3))
    # 4. An event for an unknown table, and no END at all.
    producer.produce("mallard.public.ghost_table", key=change.key(), value=ghost_event(3_900_000_003))
    assert producer.flush(30) == 0

    # While the forged 3-event END holds commit order up, the applier says so.
    pg.execute("UPDATE orders SET quantity = quantity + 1 WHERE id = %s", (top,))
    # (Not GIVE_UP_S: on a loaded machine the applier may read the forged END late, after the
    # new topics' rebalance; the held-up window then comes later, not shorter.)
    deadline = time.monotonic() + GIVE_UP_S + 90
    state = stack.applier_state()
    # The far-future END (3900000001) may hold the head first, until the source's position is asked.
    while (state.get("ready") or "3900000002" not in state.get("not_ready_reason", "")) \
            and time.monotonic() < deadline:
        time.sleep(0.3)
        state = stack.applier_state()
    assert state["ready"] is False and "3_900_000_002".replace("_", "") in state["not_ready_reason"], \
        f"never held up by 3900000002; last state {state}\n{stack.log_tails(60)}"
    assert "1 later transaction" in state["not_ready_reason"] or "later transaction" in state["not_ready_reason"]
    assert "HELD UP" in stack.mallard("status", check=False).stdout

    # After the bound it is expired: a normal change made now lands within seconds.
    pg.execute("INSERT INTO orders (customer_id, product_id, quantity, total, status, order_date, updated_at) "
               "SELECT customer_id, product_id, 4242, total, status, order_date, now() FROM orders LIMIT 1 RETURNING id")
    new_id = pg.fetchone()[0]
    stack.wait_for(f"SELECT quantity FROM orders WHERE id = {new_id}", [[4242]], timeout=GIVE_UP_S + 20)
    assert stack.applier_state()["ready"] is True

    letters = dead_letters(bootstrap, lambda ls: len(ls) >= dead_before + 5)
    errors = [(x["source_topic"], x["error"]) for x in letters]
    huge = [x for x in letters if x["source_topic"] == "mallard.public.huge"]
    assert huge and huge[0]["truncated"] and huge[0]["value_bytes"] == (5 << 20) + 11
    assert len(huge[0]["value"]) <= 64 * 1024 and huge[0]["source_offset"] == 0
    assert any(t == TX_TOPIC and "3900000001" in e and "beyond the source's current WAL position" in e
               for t, e in errors)
    assert sum(t == "mallard.public.ghost_table" and "not a stream of the replication config" in e
               for t, e in errors) == 2
    assert any(t == TX_TOPIC and "3900000002" in e and "expired incomplete" in e for t, e in errors)

    # Nothing outside the config was created; the position never took the forged LSN.
    assert stack.query("SELECT count(*) FROM information_schema.tables WHERE table_name = 'ghost_table'") == [[0]]
    now = lsn_of(stack.applier_state()["progress"]["commit_lsn"])
    pg.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    assert lsn_of(position) <= now <= int(pg.fetchone()[0]) < FAR_LSN
    conn.close()
