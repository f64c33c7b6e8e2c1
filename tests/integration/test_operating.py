"""Operating mallard on a real local stack (the demo config): `mallard status --json` shows
lag that grows while the applier is stopped and is back to zero after it restarts;
every service's /metrics parses as Prometheus text and its counters move; `mallard
tail` decodes every kind of message the stack carries; `mallard topics` shows lag."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import psycopg2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mallard.adapters import kafka
from mallard.config.settings import REPO_ROOT
from mallard.stack.processes import is_alive

pytestmark = pytest.mark.integration

DEMO_CONFIG = REPO_ROOT / "demo" / "replication.yaml"
SERVICES = {"applier": "MALLARD_APPLIER_HEALTH_PORT", "snapshotter": "MALLARD_SNAPSHOTTER_HEALTH_PORT",
            "scheduler": "MALLARD_SCHEDULER_HEALTH_PORT"}
KINDS = ("insert", "update", "delete", "truncate", "tombstone", "undecodable", "transaction", "heartbeat", "snapshot",
         "resnapshot", "schedule", "state", "dead")


def pg(stack, sql: str, *params) -> list[list]:
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return [list(r) for r in cur.fetchall()] if cur.description else []


def insert_orders(stack, n: int) -> None:
    """``n`` transactions of one insert each."""
    conn = psycopg2.connect(stack.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for _ in range(n):
            cur.execute("INSERT INTO orders (customer_id, product_id, quantity, total, status, order_date, updated_at) "
                        "VALUES (1, 1, 1, 9.99, 'placed', current_date, now())")
    conn.close()


def metrics(stack, service: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports[SERVICES[service]]}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def status(stack) -> dict:
    return json.loads(stack.mallard("status", "--json", check=False).stdout)


def wait_status(stack, predicate, timeout: float = 60, what: str = "") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report = status(stack)
        if predicate(report):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"status never showed {what}: {json.dumps(report, indent=1)[:4000]}")
        time.sleep(0.5)


def tail(stack, topic: str, *args: str) -> list[str]:
    """First lines of each message `mallard tail` prints."""
    out = stack.mallard("tail", topic, "--from-beginning", "--timeout", "1", *args).stdout
    return [line for line in out.splitlines() if not line.startswith("  ")]


def kind(line: str) -> str:
    return line.split()[1]


def test_status_metrics_topics_and_tail_on_a_running_stack(make_stack):
    # The scheduler's clock starts just before 06:00: the 'daily' schedule fires soon after start.
    stack = make_stack(MALLARD_REPLICATION_CONFIG=str(DEMO_CONFIG), MALLARD_NOW="2026-01-01T05:59:50+00:00",
                       MALLARD_TOPIC_REFRESH_MS="1000")
    stack.mallard("stack", "up")
    stack.wait_for("SELECT count(*) FROM _mallard.snapshots WHERE status = 'merged'", lambda r: r[0][0] >= 3)
    before = {s: metrics(stack, s) for s in SERVICES}
    for s, m in before.items():
        assert m[("mallard_ready", ())] == 1 and ("mallard_errors_total", ()) in m, s
        assert m[("mallard_service_info", (("service", s),))] == 1

    # Changes of every kind on orders: insert, update, delete (+ tombstone).
    insert_orders(stack, 3)
    pg(stack, "UPDATE orders SET status = 'shipped', updated_at = now() WHERE id = 10")
    pg(stack, "DELETE FROM orders WHERE id = 11")
    count = pg(stack, "SELECT count(*) FROM orders")[0][0]
    stack.wait_for("SELECT count(*) FROM orders", [[count]])

    # 1. status: caught up, every stream described
    # (The 'daily' schedule's snapshots may still be on their way: their rows are counted once merged.)
    report = wait_status(stack, lambda r: r["streams"]["public.orders"]["lag"]["total"] == 0
                         and r["kafka"]["topics"]["mallard.transaction"]["total"] == 0
                         and all((s["last_snapshot"] or {}).get("result") == "merged" for s in r["streams"].values()),
                         timeout=120, what="no lag, every stream's last snapshot merged")
    assert {n: s["state"] for n, s in report["services"].items()} == {
        n: "running" for n in ("postgres", "broker", "connect", "snapshotter", "applier", "scheduler")}
    assert list(report["streams"]) == ["public.customers", "public.products", "public.orders"]
    orders = report["streams"]["public.orders"]
    assert orders["rows"] == count and orders["mode"] == "incremental" and orders["status"] == "ok"
    assert set(orders["lag"]["partitions"]) == {"0", "1", "2"}
    change = orders["last_change"]
    assert change["lsn"] and change["tx_id"] and change["applied_at"]
    assert orders["last_snapshot"]["result"] == "merged" and orders["last_snapshot"]["rows"] >= 0
    assert orders["next_run"]["at"] and orders["dead_letters"] == 0
    customers = report["streams"]["public.customers"]
    assert customers["rows"] == 2000 and customers["last_snapshot"]["rows"] == 2000
    assert customers["last_snapshot"]["duration_s"] is not None
    assert report["replica"]["read_from"] == "applier" and report["replica"]["applied_up_to"]["delay_s"] is not None
    assert report["replica"]["behind"]["behind_s"] == 0
    assert report["dead_letters"]["total"] == 0

    # 2. metrics moved with the changes; the scheduler's fire is counted
    deadline = time.monotonic() + 60
    while metrics(stack, "scheduler").get(("mallard_schedule_fires_total", (("schedule", "daily"),)), 0) < 1:
        assert time.monotonic() < deadline, "the daily schedule never fired"
        time.sleep(0.5)
    after = {s: metrics(stack, s) for s in SERVICES}
    a0, a1 = before["applier"], after["applier"]
    assert a1[("mallard_events_applied_total", ())] >= a0[("mallard_events_applied_total", ())] + 5
    assert a1[("mallard_apply_batches_total", ())] > a0[("mallard_apply_batches_total", ())]
    assert a1[("mallard_apply_delay_seconds_count", ())] > a0[("mallard_apply_delay_seconds_count", ())]
    assert a1[("mallard_apply_batch_duration_seconds_count", ())] == a1[("mallard_apply_batches_total", ())]
    assert a1[("mallard_snapshot_rows_staged_total", ())] >= 2000 + 500
    assert a1[("mallard_consumer_lag_messages", (("partition", "0"), ("topic", "mallard.transaction")))] == 0
    assert a1[("mallard_last_applied_commit_timestamp_seconds", ())] > time.time() - 600
    connect = stack.status()["components"]["connect"]["detail"]
    assert connect["connector"]["running"] and connect["slot"]["active"]
    assert after["snapshotter"][("mallard_snapshots_total", (("result", "done"),))] >= 3
    assert after["snapshotter"][("mallard_snapshot_rows_total", ())] >= 2500
    assert after["scheduler"][("mallard_scheduler_leader", ())] == 1
    assert ("mallard_schedule_next_fire_timestamp_seconds", (("schedule", "orders"),)) in after["scheduler"]

    # 3. the applier stops: lag grows on Kafka, the replica is read from the DuckDB file
    pid = stack.status()["components"]["applier"]["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while is_alive(pid):
        assert time.monotonic() < deadline, "the applier did not stop"
        time.sleep(0.2)
    insert_orders(stack, 10)
    first = wait_status(stack, lambda r: (r["streams"]["public.orders"]["lag"] or {}).get("total", 0) >= 10,
                        what="a lag of 10")
    assert first["services"]["applier"]["state"] == "stopped"
    assert first["replica"]["read_from"] == "duckdb file" and first["streams"]["public.orders"]["rows"] == count
    assert first["kafka"]["topics"]["mallard.transaction"]["total"] >= 20  # BEGIN and END of each
    assert first["replica"]["behind"]["oldest_unapplied_committed_at"] is not None
    topics = {t["topic"]: t for t in json.loads(stack.mallard("topics", "--json").stdout)}
    assert sum(topics["mallard.public.orders"]["groups"]["mallard-applier"].values()) >= 10
    insert_orders(stack, 10)
    grown = wait_status(stack, lambda r: (r["streams"]["public.orders"]["lag"] or {}).get("total", 0) >= 20,
                        what="a lag of 20")
    assert grown["replica"]["behind"]["behind_s"] >= first["replica"]["behind"]["behind_s"]

    # 4. `stack up` restarts it: lag back to zero, every row applied
    stack.mallard("stack", "up", "--no-demo")
    count = pg(stack, "SELECT count(*) FROM orders")[0][0]
    caught_up = wait_status(stack, lambda r: r["streams"]["public.orders"]["lag"] == {
        "total": 0, "partitions": {"0": 0, "1": 0, "2": 0}} and r["kafka"]["topics"]["mallard.transaction"]["total"] == 0
        and r["streams"]["public.orders"]["rows"] == count, what="lag back to zero")
    assert caught_up["services"]["applier"]["state"] == "running" and caught_up["replica"]["read_from"] == "applier"
    assert caught_up["replica"]["behind"] == {"oldest_unapplied_committed_at": None, "behind_s": 0.0}
    # The text says so too; a transaction committed since (a heartbeat's) may show in one
    # reading, so it is read again until caught up, as the JSON was.
    deadline = time.monotonic() + 60
    while True:
        text = stack.mallard("status").stdout
        if ("caught up: every transaction on Kafka is applied" in text and "lag             0 message(s)" in text) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "caught up: every transaction on Kafka is applied" in text and "lag             0 message(s)" in text
    assert any(line.split()[0] == "mallard.public.orders" and "mallard-applier 0" in line
               for line in stack.mallard("topics").stdout.splitlines())

    # 5. the rest of the kinds: a poison message, a truncate, a request, a state reset
    producer = kafka.producer(stack.bootstrap_servers)
    producer.produce("mallard.public.orders", key=b'{"id": 424242}', value=b"this is not JSON")
    assert producer.flush(10) == 0
    stack.mallard("resnapshot", "public.customers", "--reason", "ops test")
    stack.mallard("state", "reset", "public.orders", "--to", "2026-01-01 00:00:00")
    pg(stack, "TRUNCATE orders")
    report = wait_status(stack, lambda r: r["streams"]["public.orders"]["dead_letters"] == 1, what="a dead letter")
    assert report["dead_letters"]["by_stream"] == {"public.orders": 1}
    deadline = time.monotonic() + 30
    while metrics(stack, "applier")[("mallard_dead_letters_total", ())] < 1:
        assert time.monotonic() < deadline, "the dead letter is not counted"
        time.sleep(0.5)

    # 6. tail decodes every kind, none falls through to raw JSON
    heartbeats = "__debezium-heartbeat.mallard"  # Debezium sends one every 10 s (heartbeat.interval.ms)
    deadline = time.monotonic() + 30
    while not (heartbeats in kafka.broker_metadata(stack.bootstrap_servers).topics and sum(
            high - low for low, high in kafka.end_offsets(stack.bootstrap_servers, [(heartbeats, p) for p in range(3)]).values())):
        assert time.monotonic() < deadline, "no Debezium heartbeat"
        time.sleep(1)
    lines = {
        "orders": tail(stack, "mallard.public.orders"),
        "tx": tail(stack, "mallard.transaction"),
        "snapshots": tail(stack, "mallard.snapshots"),
        "control": tail(stack, "mallard.control"),
        "dead": tail(stack, "mallard.dead-letter"),
        "heartbeat": tail(stack, heartbeats, "--limit", "1"),
    }
    for topic, got in lines.items():
        assert got and all(kind(line) in KINDS for line in got), (topic, got)
    seen = {kind(line) for got in lines.values() for line in got}
    assert set(KINDS) <= seen, set(KINDS) - seen
    assert {" ".join(line.split()[1:3]) for line in lines["snapshots"]} >= {"snapshot BEGIN", "snapshot ROWS", "snapshot END"}
    assert {" ".join(line.split()[1:3]) for line in lines["tx"]} == {"transaction BEGIN", "transaction END"}
    assert any("schedule fire id=daily@2026-01-01T06:00:00+00:00" in line for line in lines["control"])
    assert any("reason='ops test'" in line for line in lines["control"])
    assert any("state reset" in line and "resume after '2026-01-01 00:00:00'" in line for line in lines["control"])
    assert "dead letter from mallard.public.orders" in lines["dead"][0]

    # without --from-beginning: only what arrives from now on
    # (On a loaded machine Debezium may take longer than the idle timeout to send the insert's
    # transaction: then tail has stopped before it came, and it is tried again.)
    for _ in range(3):
        follow = subprocess.Popen([sys.executable, "-m", "mallard.cli.main", "tail", "mallard.transaction",
                                   "--timeout", "8"], env=stack.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        time.sleep(2)
        insert_orders(stack, 1)
        got = follow.communicate(timeout=120)[0].splitlines()
        # Debezium's heartbeat (every 10 s) updates a table it does not capture: transactions of 0 events,
        # perhaps cut by the timeout. Only they may come besides the insert's.
        # (BEGIN and END name the transaction "txId:LSN", each with an LSN of its own.)
        tx_ids = {line.split()[3].split(":")[0] for line in got if "(public.orders=1)" in line}
        if tx_ids:
            break
    new = [line for line in got if line.split()[3].split(":")[0] in tx_ids]
    assert all("events=0" in line.split() for line in got if " END " in line and line not in new), got
    assert [" ".join(line.split()[1:3]) for line in new] == ["transaction BEGIN", "transaction END"], new

    # --key: only that key's messages (the update of order 10 and the poison one's)
    only_10 = tail(stack, "mallard.public.orders", "--key", "10")
    assert only_10 and all(kind(line) == "update" for line in only_10)
    assert len(tail(stack, "mallard.public.orders", "--key", '{"id": 11}')) == 2  # delete + tombstone
    poison = stack.mallard("tail", "mallard.public.orders", "--from-beginning", "--timeout", "1", "--key", "424242").stdout
    assert "undecodable value='this is not JSON'" in poison
