"""The applier against the real stack: operations, TOAST, schema changes, refusal,
poison messages, and whole-transaction visibility."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import psycopg2
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

pytestmark = pytest.mark.integration


@pytest.fixture
def pg(cdc_stack):
    conn = psycopg2.connect(cdc_stack.dsn)
    conn.autocommit = True
    yield conn.cursor()
    conn.close()


def rows(stack, table: str, columns: str = "*") -> list[list]:
    return stack.query(f"SELECT {columns} FROM {table} ORDER BY 1")


def test_insert_update_delete_truncate_and_primary_key_update(cdc_stack, pg):
    pg.execute("CREATE TABLE ops (id int PRIMARY KEY, name text, qty int)")
    pg.execute("INSERT INTO ops VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)")
    pg.execute("UPDATE ops SET qty = qty * 10 WHERE id = 2")
    pg.execute("DELETE FROM ops WHERE id = 3")
    pg.execute("UPDATE ops SET id = 4 WHERE id = 1")  # a key update: delete of 1, create of 4
    cdc_stack.wait_for("SELECT id, name, qty FROM ops ORDER BY id", [[2, "b", 20], [4, "a", 1]])
    # Updates of one key in one transaction, then a delete and re-insert of the same key.
    pg.execute("BEGIN; UPDATE ops SET qty = 21 WHERE id = 2; UPDATE ops SET qty = 22 WHERE id = 2; "
               "DELETE FROM ops WHERE id = 4; INSERT INTO ops VALUES (4, 'again', 5); COMMIT")
    cdc_stack.wait_for("SELECT id, name, qty FROM ops ORDER BY id", [[2, "b", 22], [4, "again", 5]])
    pg.execute("TRUNCATE ops")
    pg.execute("INSERT INTO ops VALUES (9, 'after truncate', 0)")
    cdc_stack.wait_for("SELECT id, name FROM ops ORDER BY id", [[9, "after truncate"]])
    meta = cdc_stack.query("SELECT _mallard_source, _mallard_tx_id > 0, _mallard_applied_at >= _mallard_committed_at,"
                           " _mallard_position > 0 FROM ops")
    assert meta == [["cdc", True, True, True]]


def test_an_unchanged_toasted_column_keeps_its_value(cdc_stack, pg):
    big = os.urandom(300_000).hex()  # 600 kB of incompressible text: stored out of line
    pg.execute("CREATE TABLE docs (id int PRIMARY KEY, body text, rev int)")
    pg.execute("INSERT INTO docs VALUES (1, %s, 1)", (big,))
    cdc_stack.wait_for("SELECT rev, length(body) FROM docs", [[1, len(big)]])
    pg.execute("UPDATE docs SET rev = 2 WHERE id = 1")  # Debezium sends body as unavailable
    pg.execute("BEGIN; UPDATE docs SET rev = 3 WHERE id = 1; UPDATE docs SET rev = 4 WHERE id = 1; COMMIT")
    cdc_stack.wait_for("SELECT rev, md5(body) FROM docs", [[4, hashlib.md5(big.encode()).hexdigest()]])
    placeholder = cdc_stack.query("SELECT count(*) FROM docs WHERE body LIKE '%unavailable_value%'")
    assert placeholder == [[0]]


def test_a_logical_decoding_message_in_a_transaction_does_not_hold_it_back(cdc_stack, pg):
    # Debezium counts an application's pg_logical_emit_message(true, ...) in the END of its
    # transaction, yet sends it to <prefix>.message: waited for, it held every table back for ever.
    pg.execute("CREATE TABLE noted (id int PRIMARY KEY, note text)")
    pg.execute("BEGIN; SELECT pg_logical_emit_message(true, 'app-audit', 'who did it'); "
               "INSERT INTO noted VALUES (1, 'with a message'); "
               "SELECT pg_logical_emit_message(true, 'app-audit', 'twice'); COMMIT")
    pg.execute("SELECT pg_logical_emit_message(false, 'app-audit', 'outside any transaction')")
    pg.execute("INSERT INTO noted VALUES (2, 'after')")
    cdc_stack.wait_for("SELECT id, note FROM noted ORDER BY id", [[1, "with a message"], [2, "after"]])


def test_a_table_without_primary_key_is_kept_current_as_a_multiset(cdc_stack, pg):
    # Issue 18 replaced the refusal (its CDC dropped) by a multiset: inserts append, and with
    # REPLICA IDENTITY FULL an update or delete takes one equal row.
    pg.execute("CREATE TABLE nokey (a int, b text)")
    pg.execute("ALTER TABLE nokey REPLICA IDENTITY FULL")  # published (all tables): its updates need it
    pg.execute("CREATE TABLE withkey (id int PRIMARY KEY)")
    pg.execute("BEGIN; INSERT INTO nokey VALUES (1, 'x'), (1, 'x'); INSERT INTO withkey VALUES (1); COMMIT")
    cdc_stack.wait_for("SELECT id FROM withkey", [[1]])
    cdc_stack.wait_for("SELECT a, b FROM nokey", [[1, "x"], [1, "x"]])
    pg.execute("UPDATE nokey SET b = 'y' WHERE ctid = (SELECT min(ctid) FROM nokey)")
    cdc_stack.wait_for("SELECT a, b FROM nokey ORDER BY b", [[1, "x"], [1, "y"]])
    tables = {t["stream"]: t for t in cdc_stack.applier_state()["tables"]}
    assert tables["public.nokey"]["status"] == "ok"
    out = cdc_stack.mallard("tables").stdout
    assert next(line for line in out.splitlines() if "public.nokey" in line).split()[3] == "ok", out


def test_schema_changes_follow_or_ask_for_a_resnapshot(cdc_stack, pg):
    pg.execute("CREATE TABLE evolving (id int PRIMARY KEY, small int, amount numeric(10,2), label text, gone text)")
    pg.execute("INSERT INTO evolving VALUES (1, 1, 1.50, 'one', 'bye')")
    cdc_stack.wait_for("SELECT id FROM evolving", [[1]])
    pg.execute("ALTER TABLE evolving ADD COLUMN added date")
    pg.execute("ALTER TABLE evolving ALTER COLUMN small TYPE bigint")
    pg.execute("ALTER TABLE evolving ALTER COLUMN amount TYPE numeric(14,4)")
    pg.execute("ALTER TABLE evolving DROP COLUMN gone")
    pg.execute("INSERT INTO evolving VALUES (2, 9000000000, 12345.6789, 'two', '2025-01-02')")
    cdc_stack.wait_for("SELECT id, small, amount::VARCHAR, added::VARCHAR, gone FROM evolving ORDER BY id",
                       [[1, 1, "1.5000", None, "bye"], [2, 9000000000, "12345.6789", "2025-01-02", None]])
    types = dict(cdc_stack.query("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'evolving'"))
    assert types["small"] == "BIGINT" and types["amount"] == "DECIMAL(14,4)" and types["gone"] == "VARCHAR"
    state = {t["stream"]: t for t in cdc_stack.applier_state()["tables"]}["public.evolving"]
    assert state["status"] == "ok" and state["dropped_columns"] == ["gone"]

    # A change that cannot be applied in place: held back, reported, others flow; the applier
    # asks for a snapshot, which rebuilds the table, and its changes flow again.
    pg.execute("CREATE TABLE bystander (id int PRIMARY KEY)")
    pg.execute("ALTER TABLE evolving ALTER COLUMN label TYPE integer USING length(label)")
    pg.execute("BEGIN; INSERT INTO evolving VALUES (3, 3, 3, 3, NULL); INSERT INTO bystander VALUES (1); COMMIT")
    cdc_stack.wait_for("SELECT id FROM bystander", [[1]])
    log = cdc_stack.home / "logs" / "applier.log"
    deadline = time.monotonic() + 30
    while not ("needs a re-snapshot: column 'label' changed type VARCHAR -> INTEGER" in (text := log.read_text())
               and "requested a snapshot of public.evolving: a schema change" in text):
        assert time.monotonic() < deadline, "the incompatible change was not reported, or no snapshot requested"
        time.sleep(0.3)
    # Row 3 comes from the snapshot, or from CDC after it when its commit came after the cut
    # (the snapshot the earlier type changes asked for can be the one that rebuilds the table).
    cdc_stack.wait_for("SELECT id, label, _mallard_source FROM evolving ORDER BY id", lambda rows: rows[:2] == [
        [1, 3, "snapshot"], [2, 3, "snapshot"]] and rows[2:] in ([[3, 3, "snapshot"]], [[3, 3, "cdc"]]), timeout=60)
    pg.execute("INSERT INTO evolving VALUES (4, 4, 4, 4, NULL)")
    cdc_stack.wait_for("SELECT label, _mallard_source FROM evolving WHERE id = 4", [[4, "cdc"]])
    state = {t["stream"]: t for t in cdc_stack.applier_state()["tables"]}["public.evolving"]
    assert state["status"] == "ok" and "ok" in cdc_stack.mallard("tables").stdout


def test_poison_messages_go_to_the_dead_letter_topic_and_the_pipeline_goes_on(cdc_stack, pg):
    pg.execute("CREATE TABLE poisoned (id int PRIMARY KEY, n int)")
    pg.execute("INSERT INTO poisoned VALUES (1, 1)")
    cdc_stack.wait_for("SELECT n FROM poisoned", [[1]])
    before = cdc_stack.applier_state()["dead_letters"]
    topic = "mallard.public.poisoned"
    consumer = Consumer({"bootstrap.servers": cdc_stack.bootstrap_servers, "group.id": "t", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in consumer.list_topics(topic).topics[topic].partitions])
    real = None
    while real is None:
        msg = consumer.poll(5)
        real = msg if msg is not None and msg.value() else None
    consumer.close()
    misfit = json.loads(real.value())
    misfit["payload"]["after"]["n"] = "not a number"
    misfit["payload"]["source"]["txId"] = 4_000_000_000  # a transaction that never ends: nothing waits on it
    producer = Producer({"bootstrap.servers": cdc_stack.bootstrap_servers})
    producer.produce(topic, key=real.key(), value=b"\x00not json at all", partition=0)
    producer.produce(topic, key=real.key(), value=json.dumps(misfit).encode(), partition=0)
    producer.produce(topic, key=real.key(), value=b'{"schema": {"type": "string"}, "payload": "hello"}', partition=0)
    producer.flush(10)
    pg.execute("INSERT INTO poisoned VALUES (2, 2)")
    cdc_stack.wait_for("SELECT id, n FROM poisoned ORDER BY id", [[1, 1], [2, 2]])
    deadline = time.monotonic() + 30
    while cdc_stack.applier_state()["dead_letters"] < before + 3:
        assert time.monotonic() < deadline, "poison messages were not counted"
        time.sleep(0.3)
    letters = []
    consumer = Consumer({"bootstrap.servers": cdc_stack.bootstrap_servers, "group.id": "t2", "enable.auto.commit": False})
    consumer.assign([TopicPartition("mallard.dead-letter", 0, 0)])
    deadline = time.monotonic() + 30
    while len([x for x in letters if x["source_topic"] == topic]) < 3 and time.monotonic() < deadline:
        msg = consumer.poll(1)
        if msg is not None and not msg.error():
            letters.append(json.loads(msg.value()))
    consumer.close()
    ours = [x for x in letters if x["source_topic"] == topic]
    errors = sorted(x["error"] for x in ours)
    assert any(e.startswith("not JSON") for e in errors)
    assert any("column 'n' (INTEGER): expected an integer" in e for e in errors)
    assert any(e.startswith("unknown envelope") for e in errors)
    assert all(x["source_partition"] == 0 and x["source_offset"] >= 0 and x["service"] == "applier" for x in ours)


def test_a_reader_never_sees_part_of_a_transaction(cdc_stack, pg):
    for t in ("tx_a", "tx_b", "tx_c"):
        pg.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, round int)")
    n = 3000
    pg.execute("BEGIN; " + " ".join(f"INSERT INTO {t} SELECT g, 0 FROM generate_series(1, {n}) g;"
                                   for t in ("tx_a", "tx_b", "tx_c")) + " COMMIT")
    counts = "SELECT (SELECT sum(round) FROM tx_a), (SELECT sum(round) FROM tx_b), (SELECT sum(round) FROM tx_c)"
    cdc_stack.wait_for(counts, [[0, 0, 0]])
    seen: list = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append(tuple(cdc_stack.query(counts)[0]))
            except (AssertionError, OSError):
                pass

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for r in range(1, 4):  # each round: one Postgres transaction over three tables, 9,000 rows
            pg.execute("BEGIN; " + " ".join(f"UPDATE {t} SET round = {r};" for t in ("tx_a", "tx_b", "tx_c")) + " COMMIT")
        cdc_stack.wait_for(counts, [[3 * n, 3 * n, 3 * n]])
    finally:
        stop.set()
        thread.join()
    partial = [s for s in seen if len(set(s)) != 1]
    assert not partial, f"a reader saw part of a transaction: {partial[:5]}"
    assert len({s[0] for s in seen}) >= 2, "the reader polled while the rounds were applied"
