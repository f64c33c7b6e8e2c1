"""Runs the real docker-compose stack. Only where a Docker engine answers; skipped here."""
import json
import shutil
import subprocess
import time
from decimal import Decimal

import psycopg2
import pytest
from confluent_kafka import Consumer, TopicPartition

from mallard.config.settings import REPO_ROOT


def docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_engine(), reason="no Docker engine on this machine"),
]


@pytest.fixture(scope="module")
def compose_stack():
    project = ["docker", "compose", "-f", str(REPO_ROOT / "docker-compose.yml"), "-p", "mallard-e2e"]
    try:
        subprocess.run([*project, "up", "-d", "--build", "--wait"], check=True, timeout=1200)
        yield
    finally:
        subprocess.run([*project, "logs", "--tail", "50"], timeout=120)
        subprocess.run([*project, "down", "-v"], timeout=300)


def test_a_change_in_postgres_reaches_kafka_through_kafka_connect(compose_stack):
    conn = psycopg2.connect("postgresql://mallard:mallard@localhost:15432/shop")
    deadline = time.monotonic() + 300
    # connector-init registers the connector; wait until its slot streams.
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'mallard_debezium'")
            row = cur.fetchone()
            if row and row[0]:
                break
            assert time.monotonic() < deadline, "Debezium's slot never became active"
            time.sleep(2)
        cur.execute("""INSERT INTO orders (customer_id, product_id, quantity, total, status, order_date, updated_at)
                       VALUES (1, 1, 1, %s, 'placed', current_date, now()) RETURNING id""", (Decimal("9.99"),))
        order_id = cur.fetchone()[0]
    conn.commit()
    consumer = Consumer({"bootstrap.servers": "localhost:19092", "group.id": "e2e", "enable.auto.commit": False})
    topic = "mallard.public.orders"
    while topic not in consumer.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline
        time.sleep(1)
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() or msg.value() is None:
                continue
            payload = json.loads(msg.value())["payload"]
            if payload["op"] == "c" and payload["after"]["id"] == order_id:
                assert json.loads(msg.key())["payload"] == {"id": order_id}
                return
        pytest.fail("the insert never reached Kafka")
    finally:
        consumer.close()
        conn.close()


def test_the_host_queries_the_replica_through_the_compose_profile(compose_stack):
    """The applier's port is not published: `--profile compose query` reads its read copy
    in ./.mallard/compose/ (the profile's replica_file, relative to the checkout)."""
    import sys

    deadline = time.monotonic() + 300
    while True:
        out = subprocess.run([sys.executable, "-m", "mallard.cli.main", "--profile", "compose", "query", "--json",
                              "SELECT count(*) FROM orders"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and json.loads(out.stdout)["rows"][0][0] > 0:
            break
        assert time.monotonic() < deadline, out.stdout + out.stderr
        time.sleep(1)  # a poll, bounded by the deadline above
    assert "read copy" in out.stderr
