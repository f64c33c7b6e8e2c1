"""The local stack keeps its state across `stack down` + `stack up`: Kafka's topics and
the applier's committed offsets (on the broker's disk), Debezium's offsets (Connect's
offset topic) and the slot; changes made while it was down arrive afterwards."""
from __future__ import annotations

import time

import psycopg2
import pytest

from mallard.adapters import kafka
from mallard.stack.jvm import connector_offsets
from mallard.stack.processes import is_alive
from tests.conftest import up_capturing_every_table

pytestmark = pytest.mark.integration
TOPIC = "mallard.public.durable"
GROUP = "mallard-applier"


def write(dsn: str, *statements: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)
    conn.close()


def source_rows(dsn: str) -> list[list]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, v FROM durable ORDER BY id")
        rows = [list(r) for r in cur.fetchall()]
    conn.close()
    return rows


def partitions(stack) -> list[tuple[str, int]]:
    topics = kafka.broker_metadata(stack.bootstrap_servers).topics
    return [(t, p) for t in (TOPIC, "mallard.transaction") for p in topics[t].partitions]


def wait_committed_at_end(stack, timeout: float = 60.0) -> dict:
    """The applier's committed offsets once they reach each partition's end as it was when
    asked. (Not its end at each poll: Debezium ends a heartbeat's transaction every 10 s,
    so on a loaded machine the committed offset of mallard.transaction can trail each new
    end by one empty transaction for a minute.)"""
    parts = partitions(stack)
    ends = kafka.end_offsets(stack.bootstrap_servers, parts)
    deadline = time.monotonic() + timeout
    while True:
        committed = kafka.committed_offsets(stack.bootstrap_servers, GROUP, parts)
        if all((committed[tp] or 0) >= ends[tp][1] for tp in parts):
            return committed
        assert time.monotonic() < deadline, f"committed {committed} never reached the ends {ends}"
        time.sleep(0.5)


def test_down_and_up_keep_topics_and_offsets_and_replicate_what_was_written_meanwhile(make_stack):
    stack = up_capturing_every_table(make_stack(MALLARD_TOPIC_REFRESH_MS="1000"))
    dsn = stack.dsn
    write(dsn, "CREATE TABLE durable (id int PRIMARY KEY, v int)",
          "INSERT INTO durable SELECT g, g FROM generate_series(1, 50) g")
    stack.wait_for("SELECT count(*) FROM durable", [[50]])
    committed_before = wait_committed_at_end(stack)
    topics_before = set(kafka.broker_metadata(stack.bootstrap_servers).topics)
    url = stack.status()["components"]["connect"]["url"]
    # Connect writes a source task's offsets every offset.flush.interval.ms (5 s), not as it
    # sends: right after the rows land, its offset topic may not hold them yet.
    deadline = time.monotonic() + 30
    while not (offsets := connector_offsets(url, "mallard-postgres")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert offsets, "Connect keeps Debezium's offsets in its offset topic"

    pids = {n: c["pid"] for n, c in stack.status()["components"].items()}
    out = stack.mallard("stack", "down").stdout
    # Services first, then Connect (Debezium commits its offsets), the broker, Postgres last.
    order = [line.split()[0] for line in out.splitlines() if " stopped (pid " in line]
    assert order == ["scheduler", "applier", "snapshotter", "connect", "broker", "postgres"]
    assert not any(is_alive(p) for p in pids.values())

    # Changes while nothing runs: Postgres is started alone, written to, stopped again.
    stack.mallard("stack", "up", "--only", "postgres")
    write(dsn, "INSERT INTO durable SELECT g, g FROM generate_series(51, 80) g",
          "UPDATE durable SET v = v + 1000 WHERE id <= 10", "DELETE FROM durable WHERE id BETWEEN 11 AND 15")
    stack.mallard("stack", "down")

    stack.mallard("stack", "up", "--no-demo")
    assert topics_before <= set(kafka.broker_metadata(stack.bootstrap_servers).topics)
    expected = source_rows(dsn)
    stack.wait_for("SELECT count(*), sum(v) FROM durable", [[len(expected), sum(v for _, v in expected)]], timeout=120)
    assert stack.query("SELECT id, v FROM durable ORDER BY id") == expected
    # Nothing re-applied from the beginning: the applier resumed at its committed offsets
    # (on topics that were not recreated), and applied only what came after them.
    ends = kafka.end_offsets(stack.bootstrap_servers, partitions(stack))
    assert all(ends[tp][0] == 0 for tp in ends)
    committed_after = wait_committed_at_end(stack)
    assert all(committed_after[tp] >= committed_before[tp] for tp in committed_before)
    applied = stack.applier_state()["events_applied"]
    assert applied <= 30 + 10 + 5 + 5, f"{applied} events applied since the restart: some were applied again"
