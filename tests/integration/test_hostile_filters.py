"""Hostile snapshot filters and resnapshot requests, against the real stack: through the
CLI and produced straight onto the control topic (untrusted). Nothing runs in Postgres,
no file is written, the replica is unchanged, each refusal is dead-lettered with its
reason and answered (so `resnapshot --wait` fails at once), the snapshotter stays up, and
replication goes on."""
from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
import pytest
from confluent_kafka import Producer

from mallard.adapters import kafka
from mallard.schemas.control import ResnapshotRequest
from mallard.schemas.deadletter import DeadLetter

pytestmark = pytest.mark.integration

REPLICA_STATE = ("SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM products), "
                 "(SELECT count(*) FROM orders), (SELECT sum(id) FROM orders)")


def _request(rid: str, streams: list[str], where: str | None = None) -> bytes:
    return ResnapshotRequest(request_id=rid, streams=streams, reason="hostile test", requested_by="attacker",
                             requested_at=datetime.now(timezone.utc), where=where).model_dump_json().encode()


def _pg_one(stack, sql: str):
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def _snapshotter(stack) -> dict:
    return json.loads(stack.mallard("stack", "status", "--json").stdout)["components"]["snapshotter"]


def test_hostile_filters_and_requests_are_refused_and_replication_goes_on(stack):
    tag = secrets.token_hex(4)
    marker = Path(f"/tmp/mallard-pwned-{tag}")
    pwned = f"pwned_{tag}"
    # The demo's first snapshots are merged: the replica is what it is before the attacks.
    source_orders = _pg_one(stack, "SELECT count(*) FROM orders")
    stack.wait_for("SELECT count(*) FROM orders", [[source_orders]], timeout=180)
    before = stack.query(REPLICA_STATE)

    attacks = [
        f"1=1); CREATE TABLE public.{pwned} AS SELECT current_user; --",
        f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
        f"1=1; COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
        f"true) OR (SELECT pg_sleep(0) FROM (VALUES (1)) v) IS NULL OR (true",
        f"pg_read_file('/etc/passwd') <> ''",
        f"id IN (WITH x AS (DELETE FROM orders RETURNING id) SELECT id FROM x)",
        f"length(set_config('default_transaction_read_only', 'off', false)) > 0",
    ]
    # 1. Through the CLI: refused before anything is published.
    for where in attacks[:3]:
        out = stack.mallard("resnapshot", "public.orders", "--where", where, check=False)
        assert out.returncode != 0 and "--where" in out.stderr and "requested" not in out.stdout, out

    # 2. Straight onto the control topic: untrusted, refused by the snapshotter.
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    sent = {}
    for i, where in enumerate(attacks):
        sent[f"attack-{tag}-{i}"] = where
        producer.produce("mallard.control", key=f"attack-{tag}-{i}".encode(),
                         value=_request(f"attack-{tag}-{i}", ["public.orders"], where))
    sent[f"attack-{tag}-stream"] = None
    producer.produce("mallard.control", key=f"attack-{tag}-stream".encode(),
                     value=_request(f"attack-{tag}-stream", [f"public.{pwned}"]))
    producer.produce("mallard.control", key=f"attack-{tag}-garbage".encode(), value=b"{not json " + tag.encode())
    assert producer.flush(30) == 0

    # 3. `--wait` on a refused request fails at once, with the reason; a '%' filter works.
    started = time.monotonic()
    out = stack.mallard("resnapshot", f"public.nope_{tag}", "--wait", "--timeout", "120", check=False)
    assert out.returncode == 1 and "not replicated" in out.stdout + out.stderr, out
    assert time.monotonic() - started < 45, "--wait did not stop at the refusal"
    started = time.monotonic()
    out = stack.mallard("resnapshot", "public.orders", "--where", f"no_such_column_{tag} = 1", "--wait",
                        "--timeout", "120", check=False)
    assert out.returncode == 1 and f"no_such_column_{tag}" in out.stdout + out.stderr, out
    assert time.monotonic() - started < 45
    out = stack.mallard("resnapshot", "public.orders", "--where", '"id" % 5 = 0', "--wait", "--timeout", "180")
    assert "public.orders: merged" in out.stdout, out
    out = stack.mallard("resnapshot", "public.products", "--where", "name LIKE 'a%' OR id % 2 = 0", "--wait",
                        "--timeout", "180")
    assert "public.products: merged" in out.stdout, out

    # 4. Each refused message is on the dead-letter topic with its reason.
    deadline = time.monotonic() + 60
    while True:
        letters = [DeadLetter.model_validate_json(m.value())
                   for m in kafka.read_to_end(stack.bootstrap_servers, "mallard.dead-letter", idle=1.0)]
        ours = {x.key: x for x in letters if x.service == "snapshotter" and x.key and tag in x.key}
        if len(ours) >= len(sent) + 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(ours) == {*sent, f"attack-{tag}-garbage"}, sorted(ours)
    for key, where in sent.items():
        letter = ours[key]
        assert letter.source_topic == "mallard.control" and key in (letter.value or "")
        assert (letter.error.startswith("bad filter") if where else
                f"stream(s) not replicated 'public.{pwned}'" in letter.error), letter.error
    assert "';'" in ours[f"attack-{tag}-0"].error
    assert "function pg_read_file() is not allowed" in ours[f"attack-{tag}-4"].error
    assert "subquery" in ours[f"attack-{tag}-5"].error
    assert "function set_config() is not allowed" in ours[f"attack-{tag}-6"].error
    assert ours[f"attack-{tag}-garbage"].error.startswith("malformed control message")

    # 5. Nothing ran in Postgres, no file was written, the replica is unchanged.
    assert _pg_one(stack, f"SELECT to_regclass('public.{pwned}') IS NULL") is True
    assert not marker.exists()
    assert _pg_one(stack, "SELECT count(*) FROM orders") == source_orders
    assert stack.query(REPLICA_STATE) == before
    refused = stack.query(f"SELECT count(*) FROM _mallard.snapshots WHERE request_id LIKE 'attack-{tag}-%' "
                          "AND status = 'abandoned' AND reason LIKE '%the snapshotter failed it%'")
    assert refused[0][0] == len(attacks) + 1  # answered: recorded with its reason, never left staging
    assert stack.query("SELECT count(*) FROM _mallard.snapshots WHERE status = 'staging'") == [[0]]

    # 6. The snapshotter stayed up, and a normal change lands within seconds.
    snapshotter = _snapshotter(stack)
    assert snapshotter["state"] == "running" and snapshotter["detail"]["failed"] >= len(sent) + 2, snapshotter
    email = f"after-{tag}@example.com"
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO customers (email, full_name, country, created_at) VALUES (%s, 'After Attack', 'NL', now()) "
                    "RETURNING id",
                    (email,))
        new_id = cur.fetchone()[0]
    started = time.monotonic()
    stack.wait_for(f"SELECT email FROM customers WHERE id = {new_id}", [[email]], timeout=30)
    assert time.monotonic() - started < 30
