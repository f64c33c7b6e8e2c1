"""The applier merges snapshots into DuckDB with the cut rule: first copies, repairs,
subsets, tables without a primary key."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import duckdb
import psycopg2
import pytest

pytestmark = pytest.mark.integration

ORDERS = "SELECT id, customer_id, product_id, quantity, total::text, status, order_date::text FROM orders ORDER BY id"
ORDERS_DUCK = ("SELECT id, customer_id, product_id, quantity, total::VARCHAR, status, order_date::VARCHAR "
               "FROM orders ORDER BY id")


def pg_rows(stack, sql: str) -> list[list]:
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return [list(r) for r in cur.fetchall()]


def merged_snapshots(stack, stream: str) -> int:
    return stack.query(f"SELECT count(*) FROM _mallard.snapshots WHERE stream = '{stream}' AND status = 'merged'")[0][0]


def resnapshot_and_wait(stack, stream: str, *args: str, timeout: float = 90) -> None:
    before = merged_snapshots(stack, stream)
    stack.mallard("resnapshot", stream, "--reason", "test", *args)
    stack.wait_for(f"SELECT count(*) FROM _mallard.snapshots WHERE stream = '{stream}' AND status = 'merged'",
                   lambda rows: rows[0][0] > before, timeout=timeout)


def stop_applier(stack) -> dict:
    status = stack.status()
    pid = status["components"]["applier"]["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while True:  # gone, and its lock on the DuckDB file with it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return status
        assert time.monotonic() < deadline, "the applier did not stop"
        time.sleep(0.2)


def edit_replica_behind_the_applier(stack, *statements: str) -> None:
    """Stop the applier, change its DuckDB file directly, start it again."""
    status = stop_applier(stack)
    con = duckdb.connect(status["duckdb"]["path"])
    try:
        for sql in statements:
            con.execute(sql)
    finally:
        con.close()
    stack.mallard("stack", "up")


def test_the_first_snapshot_of_every_configured_stream_fills_an_empty_replica(stack):
    first = "SELECT stream FROM _mallard.snapshots WHERE request_id LIKE 'applier-%' AND status = 'merged' ORDER BY 1"
    stack.wait_for(first, [["public.customers"], ["public.orders"], ["public.products"]], timeout=120)
    stack.wait_for(ORDERS_DUCK, pg_rows(stack, ORDERS), timeout=120)
    for table in ("customers", "products"):
        count = pg_rows(stack, f"SELECT count(*) FROM {table}")[0][0]
        stack.wait_for(f"SELECT count(*) FROM {table}", [[count]])
    sources = stack.query("SELECT DISTINCT _mallard_source FROM customers WHERE _mallard_snapshot_id IS NOT NULL")
    assert sources == [["snapshot"]]


def test_a_snapshot_repairs_the_replica_and_a_subset_deletes_only_inside_itself(stack):
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:  # the demo orders, or what tests left
        cur.execute("INSERT INTO orders (customer_id, product_id, quantity, total, status, order_date, updated_at) "
                    "SELECT 1, 1, 1, 9.99, 'placed', current_date, now() FROM generate_series(1, 3)")
    stack.wait_for(ORDERS_DUCK, pg_rows(stack, ORDERS), timeout=120)
    first, second, third = (r[0] for r in stack.query("SELECT id FROM orders ORDER BY id LIMIT 3"))
    copy = f"INSERT INTO orders SELECT * REPLACE ({{id}} AS id) FROM orders WHERE id = {first}"
    edit_replica_behind_the_applier(
        stack,
        copy.format(id=-1),  # a row Postgres never had, inside the subset below
        copy.format(id=-2),  # and one outside it
        f"UPDATE orders SET status = 'tampered' WHERE id IN ({second}, {third})",
    )
    assert stack.query("SELECT count(*) FROM orders WHERE id < 0 OR status = 'tampered'") == [[4]]

    resnapshot_and_wait(stack, "public.orders", "--where", f"id >= -1 AND id <= {second}")
    assert stack.query("SELECT id FROM orders WHERE id < 0 OR status = 'tampered' ORDER BY id") == [[-2], [third]]

    resnapshot_and_wait(stack, "public.orders")
    stack.wait_for(ORDERS_DUCK, pg_rows(stack, ORDERS))
    assert stack.query("SELECT count(*) FROM orders WHERE _mallard_source = 'snapshot'")[0][0] > 0


def test_changes_after_a_snapshot_keep_flowing(stack):
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO customers (email, full_name, country, created_at) "
                    "VALUES ('gone@example.com', 'Gone', 'NL', now()) "
                    "RETURNING id")
        (gone,) = cur.fetchone()
    resnapshot_and_wait(stack, "public.customers")
    assert stack.query(f"SELECT _mallard_source FROM customers WHERE id = {gone}") == [["snapshot"]]
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE customers SET full_name = 'After Snapshot' WHERE id = 7")
        cur.execute("DELETE FROM customers WHERE id = %s", (gone,))
    both = f"SELECT full_name, _mallard_source FROM customers WHERE id IN (7, {gone}) ORDER BY id"
    stack.wait_for(both, [["After Snapshot", "cdc"]])
    resnapshot_and_wait(stack, "public.customers")  # the delete stays deleted, the update stays
    assert stack.query(both) == [["After Snapshot", "snapshot"]]


def test_a_table_without_primary_key_is_replaced_whole_by_each_snapshot(cdc_stack):
    stack = cdc_stack  # capturing every table: audit_log may be asked for
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS audit_log (at timestamptz, what text)")
        cur.execute("ALTER TABLE audit_log REPLICA IDENTITY FULL")  # published (all tables): deletes need it
        cur.execute("INSERT INTO audit_log SELECT now(), 'event ' || g FROM generate_series(1, 300) g")
    resnapshot_and_wait(stack, "public.audit_log")
    assert stack.query("SELECT count(*), count(DISTINCT what) FROM audit_log") == [[300, 300]]
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM audit_log WHERE what < 'event 2'")
        cur.execute("SELECT count(*) FROM audit_log")
        (left,) = cur.fetchone()
    resnapshot_and_wait(stack, "public.audit_log")
    assert stack.query("SELECT count(*) FROM audit_log") == [[left]]
    tables = {t["stream"]: t for t in stack.applier_state()["tables"]}
    assert tables["public.audit_log"]["status"] == "ok"  # kept current by CDC too since issue 18


def test_a_snapshot_with_a_bad_batch_is_dead_lettered_and_never_merged(stack):
    from datetime import datetime, timezone

    from confluent_kafka import Producer

    from mallard.adapters.kafka import read_topic
    from mallard.schemas.snapshot import SnapshotBegin, SnapshotColumn, SnapshotCut, SnapshotEnd

    count = stack.query("SELECT count(*) FROM products")[0][0]
    columns = [SnapshotColumn(name="id", pg_type="int4", primary_key_position=1, connect_schema={"type": "int32"}),
               SnapshotColumn(name="name", pg_type="text", connect_schema={"type": "string"})]
    begin = SnapshotBegin(snapshot_id="poisoned", stream="public.products", cut=SnapshotCut(xmin=1, xmax=1),
                          columns=columns, started_at=datetime.now(timezone.utc))
    end = SnapshotEnd(snapshot_id="poisoned", stream="public.products", batches=1, row_count=1,
                      finished_at=datetime.now(timezone.utc))
    rows = b'{"schema_version":1,"snapshot_id":"poisoned","stream":"public.products","kind":"rows","batch":1,' \
           b'"rows":[[1,{"not":"text"}]]}'
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for value in (begin.model_dump_json().encode(), rows, end.model_dump_json().encode()):
        producer.produce("mallard.snapshots", key=b"public.products", value=value)
    assert producer.flush(30) == 0
    stack.wait_for("SELECT status, reason FROM _mallard.snapshots WHERE snapshot_id = 'poisoned'",
                   lambda r: r and r[0][0] == "abandoned" and "batch 1" in r[0][1])
    assert stack.query("SELECT count(*) FROM products") == [[count]]
    letters = [m for m in read_topic(stack.bootstrap_servers, "mallard.dead-letter", idle_timeout=10)
               if b"poisoned" in (m.value() or b"")]
    assert letters and b"mallard.snapshots" in letters[0].value()


def test_snapshot_offsets_kept_in_the_cdc_group_are_taken_over(stack):
    """Before the snapshot topic had a consumer group of its own, its offsets were in the
    CDC group's: an upgraded applier starts from there, not from the topic's beginning."""
    from confluent_kafka import Consumer, TopicPartition

    stack.wait_for("SELECT count(*) > 0 FROM _mallard.snapshots WHERE status = 'merged'", [[True]])
    topic, log = "mallard.snapshots", Path(stack.status()["components"]["applier"]["log"])

    def group(name: str) -> Consumer:
        return Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": name, "enable.auto.commit": False})

    stop_applier(stack)
    probe = group("mallard-applier-snapshots")
    committed = probe.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    probe.close()
    assert committed > 0
    legacy = group("mallard-applier")
    legacy.commit(offsets=[TopicPartition(topic, 0, committed)], asynchronous=False)
    legacy.close()
    stack.env["MALLARD_SNAPSHOT_CONSUMER_GROUP"] = "upgraded-applier"
    try:
        stack.mallard("stack", "up")
        deadline = time.monotonic() + 60
        line = f"snapshot topic offsets taken over from group mallard-applier: [0]@{committed}"
        while line not in log.read_text():
            assert time.monotonic() < deadline, f"no {line!r} in the applier's log"
            time.sleep(0.3)
    finally:
        del stack.env["MALLARD_SNAPSHOT_CONSUMER_GROUP"]
        stop_applier(stack)
        stack.mallard("stack", "up")
