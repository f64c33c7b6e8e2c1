"""Kafka loses data under the running applier: a CDC topic deleted and recreated while
changes flow. The loss is reported (log, /healthz, `mallard status`, a metric), the stream
is re-snapshotted by itself, and the replica ends equal to Postgres."""
from __future__ import annotations

import threading
import time
import urllib.request

import psycopg2
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.integration

TOPIC = "mallard.public.lossy"


def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def recreate(admin: AdminClient, topic: str) -> None:
    partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    admin.delete_topics([topic], operation_timeout=30)[topic].result(30)
    until(lambda: topic not in admin.list_topics(timeout=10).topics, 60, f"{topic} to be deleted")
    for _ in range(60):
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30)[topic].result(30)
            return
        except KafkaException as e:
            if "already exists" in str(e).lower():  # the broker auto-created it for Connect's producer
                return
            time.sleep(0.5)  # still being deleted
    raise AssertionError(f"could not recreate {topic}")


def test_a_cdc_topic_recreated_under_the_running_applier_is_reported_and_re_snapshotted(cdc_stack):
    conn = psycopg2.connect(cdc_stack.dsn)
    conn.autocommit = True
    pg = conn.cursor()
    pg.execute("CREATE TABLE lossy (id int PRIMARY KEY, v text, n int)")
    pg.execute("INSERT INTO lossy SELECT g, 'v' || g, 0 FROM generate_series(1, 200) g")
    cdc_stack.wait_for("SELECT count(*), sum(n) FROM lossy", [[200, 0]])
    admin = AdminClient({"bootstrap.servers": cdc_stack.bootstrap_servers})

    # Changes keep flowing while the topic is deleted and recreated: whatever the applier had
    # not read of the old topic is lost with it.
    stop = threading.Event()

    def write() -> None:
        c = psycopg2.connect(cdc_stack.dsn)
        c.autocommit = True
        cur = c.cursor()
        i = 0
        while not stop.is_set():
            i += 1
            cur.execute("UPDATE lossy SET n = n + 1, v = %s WHERE id %% 20 = %s", (f"w{i}", i % 20))
            if i % 7 == 0:
                cur.execute("DELETE FROM lossy WHERE id = %s", (i % 200 + 1,))
            time.sleep(0.02)
        c.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(1)
        recreate(admin, TOPIC)
        time.sleep(2)
    finally:
        stop.set()
        writer.join()
    pg.execute("INSERT INTO lossy SELECT g, 'after', 1 FROM generate_series(201, 210) g")
    pg.execute("UPDATE lossy SET v = 'last' WHERE id = 2")

    # Reported on /healthz (the applier stays ready: it repairs), and the stream re-snapshotted.
    state = until(lambda: (s := cdc_stack.applier_state()).get("data_loss") and s, 60, "the loss on /healthz")
    loss = state["data_loss"]
    assert loss["detected"] >= 1 and "public.lossy" in loss["streams"]
    assert loss["streams"]["public.lossy"]["kind"] in ("recreated", "beyond_end")
    until(lambda: ((cdc_stack.applier_state().get("data_loss") or {}).get("streams", {}).get("public.lossy") or {})
          .get("resnapshot") == "merged", 180, "the re-snapshot of public.lossy to be merged")
    state = cdc_stack.applier_state()
    assert state["ready"] and state["data_loss"]["unrepaired_streams"] == []
    merged = cdc_stack.query("SELECT count(*) FROM _mallard.snapshots WHERE stream = 'public.lossy' "
                             "AND status = 'merged' AND request_id LIKE 'applier-%'")
    assert merged[0][0] >= 1

    # The replica ends equal to Postgres.
    pg.execute("SELECT id, v, n FROM lossy ORDER BY id")
    expected = [list(r) for r in pg.fetchall()]
    cdc_stack.wait_for("SELECT id, v, n FROM lossy ORDER BY id", expected, timeout=120)

    # The metric, and `mallard status`.
    port = cdc_stack.ports["MALLARD_APPLIER_HEALTH_PORT"]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    lines = [line for line in metrics.splitlines() if line.startswith("mallard_kafka_data_loss_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in lines) >= 1, lines
    assert "mallard_streams_unrepaired_after_data_loss 0.0" in metrics
    log = (cdc_stack.home / "logs" / "applier.log").read_text()
    assert "DATA LOSS on Kafka" in log and "re-snapshotting public.lossy" in log
    print(loss["streams"]["public.lossy"]["detail"])
    out = cdc_stack.mallard("status").stdout
    assert "DATA LOSS on Kafka" in out and "! DATA LOSS" in out and "repaired: snapshot" in out
    conn.close()
