"""Debian's kcat, a real Kafka client with no knowledge of mallard, works on the local
stack as it is: it lists the broker's topics and reads a CDC topic."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time

import psycopg2
import pytest

pytestmark = pytest.mark.integration
TOPIC = "mallard.public.orders"


@pytest.fixture(scope="module")
def kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        # scripts/setup.sh installs it with apt when run as root (as CI does): then it must be there.
        assert os.geteuid() != 0, "kcat is missing although scripts/setup.sh installs it as root: apt-get install kcat"
        pytest.skip("Debian's kcat is not installed and cannot be installed without root (apt-get install kcat)")
    return path


def run(kcat: str, *args: str) -> str:
    out = subprocess.run([kcat, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kcat {' '.join(args)} exited {out.returncode}:\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def order_change(stack) -> tuple[str, int]:
    """An order inserted in Postgres (Debezium creates the CDC topic with its first event)."""
    marker = f"kcat-{secrets.token_hex(4)}"
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("""INSERT INTO orders (customer_id, product_id, quantity, total, status, order_date, updated_at)
                       VALUES (3, 1, 4, 12.50, %s, '2025-06-01', now()) RETURNING id""", (marker,))
        (order_id,) = cur.fetchone()
    conn.close()
    return marker, order_id


def kcat_lines_with(stack, kcat: str, marker: str) -> list[str]:
    """The CDC topic's messages (key TAB value) that mention ``marker``, read by kcat from
    the beginning, once there are some."""
    deadline = time.monotonic() + 60
    while True:  # -e: read to the end of every partition, then exit
        out = subprocess.run([kcat, "-C", "-b", stack.bootstrap_servers, "-t", TOPIC, "-o", "beginning", "-e", "-q",
                              "-f", "%k\t%s\n"], capture_output=True, text=True, timeout=60)
        mine = [line for line in out.stdout.splitlines() if marker in line]
        if mine:
            break  # (before Debezium's first event the topic does not exist and kcat exits 1)
        assert time.monotonic() < deadline, f"kcat never showed {marker!r} on {TOPIC}:\n{out.stderr}"
        time.sleep(0.5)
    return mine


def test_kcat_reads_a_change_made_in_postgres_from_a_cdc_topic(stack, kcat, order_change):
    marker, order_id = order_change
    mine = kcat_lines_with(stack, kcat, marker)
    assert len(mine) == 1
    key, value = mine[0].split("\t", 1)
    assert json.loads(key)["payload"] == {"id": order_id}
    payload = json.loads(value)["payload"]
    assert payload["op"] == "c" and payload["source"]["table"] == "orders"
    assert payload["after"]["id"] == order_id and payload["after"]["status"] == marker


def test_kcat_lists_the_stacks_topics(stack, kcat, order_change):
    kcat_lines_with(stack, kcat, order_change[0])  # Debezium has created the topic
    listing = json.loads(run(kcat, "-L", "-J", "-b", stack.bootstrap_servers))
    assert [b["name"] for b in listing["brokers"]] == [stack.bootstrap_servers]
    topics = {t["topic"]: len(t["partitions"]) for t in listing["topics"]}
    # Created by Debezium in Connect (topic.creation.*), and Connect's own topics.
    assert topics[TOPIC] == 3 and topics["mallard.transaction"] == 1
    assert {"mallard-connect-configs", "mallard-connect-offsets", "mallard-connect-status"} <= set(topics)
    plain = run(kcat, "-L", "-b", stack.bootstrap_servers)  # the human listing names them too
    assert f'topic "{TOPIC}" with 3 partitions' in plain
