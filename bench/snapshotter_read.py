"""Snapshotter read + encode + produce: rows/s and peak RSS of a full refresh.

Creates (once) an orders-like table of N rows in the stack's Postgres
(id bigint pk, customer_id, product_id, quantity int, total numeric(12,2),
status text, note text, order_date date, created_at timestamptz), then runs the
snapshotter's own snapshot function on it, in a child process, producing to a
topic of its own on the stack's broker, and prints the rate and the child's
peak RSS.

    .venv/bin/python bench/snapshotter_read.py [--rows 1000000] [--runs 1] [--home DIR] [--keep]

Without --home it starts a local stack (Postgres, Kafka, Kafka Connect with Debezium — the slot must
exist before a cut) in a temporary home on free ports and purges it afterwards;
with --home it uses the stack running there (``mallard stack up`` with that
MALLARD_HOME).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOPIC = "bench.snapshots"


def mallard(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mallard.cli.main", *args], env=env, capture_output=True, text=True,
                          check=True, cwd=REPO)


def start_stack() -> tuple[dict, Path]:
    from tests.conftest import PORT_VARIABLES, free_ports

    home = Path(tempfile.mkdtemp(prefix="mallard-bench-"))
    home.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLARD_")}
    env.update({k: str(p) for k, p in zip(PORT_VARIABLES, free_ports(len(PORT_VARIABLES)))})
    env["MALLARD_HOME"] = str(home)
    print(f"starting a local stack in {home} ...", flush=True)
    mallard(env, "stack", "up")
    return env, home


def ensure_table(dsn: str, rows: int) -> str:
    import psycopg2

    table = f"bench_orders_{rows}"
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = %s", (table,))
        if cur.fetchone()[0] == 0:
            started = time.monotonic()
            cur.execute("BEGIN")  # the table appears whole or not at all
            cur.execute(f"""CREATE TABLE {table} (id bigint PRIMARY KEY, customer_id int NOT NULL, product_id int NOT NULL,
                quantity int NOT NULL, total numeric(12,2) NOT NULL, status text NOT NULL, note text,
                order_date date NOT NULL, created_at timestamptz NOT NULL)""")
            cur.execute(f"""INSERT INTO {table}
                SELECT g, (1 + (g * 7919) % 50000)::int, (1 + (g * 104729) % 5000)::int, (1 + g % 9)::int,
                       ((g * 2654435761) % 10000000) / 100.0 - (CASE WHEN g % 97 = 0 THEN 50000 ELSE 0 END),
                       (ARRAY['placed','paid','shipped','delivered','cancelled'])[1 + g % 5],
                       CASE WHEN g % 2 = 0 THEN NULL ELSE 'note ' || md5(g::text) END,
                       DATE '2024-01-01' + (g % 700)::int,
                       TIMESTAMPTZ '2025-01-01 00:00:00+00' + g * INTERVAL '1.234567 second'
                FROM generate_series(1::bigint, {int(rows)}) g""")
            cur.execute("COMMIT")
            cur.execute(f"VACUUM ANALYZE {table}")
            print(f"created {table} ({rows:,} rows) in {time.monotonic() - started:.1f}s", flush=True)
    conn.close()
    return f"public.{table}"


def child(args: argparse.Namespace) -> None:
    """Runs in its own process so that its peak RSS is the snapshotter's alone."""
    from datetime import datetime, timezone

    from mallard.runtime.logs import configure
    from mallard.schemas.control import ResnapshotRequest
    from mallard.services.snapshotter.config import SnapshotterSettings
    from mallard.services.snapshotter.service import SnapshotterService

    configure("WARNING")
    settings = SnapshotterSettings(snapshot_topic=TOPIC, health_port=0)
    service = SnapshotterService(settings)
    if hasattr(service, "open"):
        service.open()
    else:  # the service before the speed work
        from mallard.adapters import kafka
        from mallard.config.connector import load_connector_config_file

        kafka.ensure_topics(settings.kafka_bootstrap_servers, {TOPIC: 1})
        service.slot_name = load_connector_config_file(settings.connector_config).slot_name
        service.producer = kafka.producer(settings.kafka_bootstrap_servers, **{"linger.ms": 50, "compression.type": "none"})
    request = ResnapshotRequest(request_id="bench", streams=[args.stream], reason="bench", requested_by="bench",
                                requested_at=datetime.now(timezone.utc))
    cpu0, started = time.process_time(), time.monotonic()
    end = service.snapshot(args.stream, request)
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu0
    print(json.dumps({"rows": end.row_count, "batches": end.batches, "seconds": elapsed, "cpu_seconds": cpu}))


def verify(bootstrap: str, stream: str, expected_rows: int) -> None:
    """The last snapshot on the bench topic is complete and valid (every message through the pydantic contract)."""
    from confluent_kafka import Consumer, TopicPartition

    from mallard.schemas.snapshot import (SnapshotBegin, SnapshotEnd, SnapshotRows, is_arrow_rows, read_arrow_rows,
                                  snapshot_message_adapter)

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-verify", "enable.auto.commit": False})
    consumer.assign([TopicPartition(TOPIC, 0, 0)])
    begin, rows, batches, last, idle = None, 0, [], None, time.monotonic()
    try:
        while time.monotonic() - idle < 5:  # the topic is read to its end: the last complete snapshot counts
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            idle = time.monotonic()
            if is_arrow_rows(msg.value()):
                header, table = read_arrow_rows(msg.value())
                if begin and header.snapshot_id == begin.snapshot_id:
                    rows += table.num_rows
                    batches.append(header.batch)
                continue
            m = snapshot_message_adapter.validate_json(msg.value())
            if isinstance(m, SnapshotBegin):
                begin, rows, batches = m, 0, []
            elif isinstance(m, SnapshotRows) and begin and m.snapshot_id == begin.snapshot_id:
                rows += len(m.rows)
                batches.append(m.batch)
            elif isinstance(m, SnapshotEnd) and begin and m.snapshot_id == begin.snapshot_id:
                last = (m, rows, batches)
        assert last is not None, "no complete snapshot on the bench topic"
        m, rows, batches = last
        assert m.row_count == rows == expected_rows, (m.row_count, rows, expected_rows)
        assert batches == list(range(1, len(batches) + 1)) and m.batches == len(batches)
        print(f"verified: {rows:,} rows in {len(batches)} batches, framing and contract valid")
    finally:
        consumer.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--home", help="MALLARD_HOME of a running local stack (default: start one)")
    p.add_argument("--keep", action="store_true", help="leave the stack started here running")
    p.add_argument("--verify", action="store_true", help="read the snapshot back and check it (slow)")
    p.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the snapshotter (e.g. MALLARD_PARALLEL_READERS=1)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stream", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0

    started_here = None
    if args.home:
        env = {k: v for k, v in os.environ.items()}
        env["MALLARD_HOME"] = args.home
    else:
        env, started_here = start_stack()
    try:
        status = json.loads(mallard(env, "stack", "status", "--json", "--show-secrets").stdout)
        dsn = status["postgres"]["dsn"]
        stream = ensure_table(dsn, args.rows)
        pg = status["postgres"]
        child_env = {k: v for k, v in env.items() if not k.startswith("MALLARD_")}
        child_env.update({"MALLARD_PG_HOST": pg["host"], "MALLARD_PG_PORT": str(pg["port"]), "MALLARD_PG_USER": pg["user"],
                          "MALLARD_PG_DATABASE": pg["database"],
                          "MALLARD_PG_PASSWORD": dsn.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1],
                          "MALLARD_KAFKA_BOOTSTRAP_SERVERS": status["kafka"]["bootstrap_servers"]})
        child_env.update(dict(kv.split("=", 1) for kv in args.env))
        for run in range(1, args.runs + 1):
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            out = subprocess.run([sys.executable, __file__, "--child", "--stream", stream], env=child_env,
                                 capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                print(out.stdout, out.stderr, file=sys.stderr)
                return 1
            peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            r = json.loads(out.stdout.strip().splitlines()[-1])
            note = "" if peak_kb > before else " (peak not above an earlier run's)"
            print(f"run {run}: {r['rows']:,} rows in {r['batches']} batches, {r['seconds']:.2f}s = "
                  f"{r['rows'] / r['seconds']:,.0f} rows/s; snapshotter CPU {r['cpu_seconds']:.1f}s; "
                  f"peak RSS {peak_kb / 1024:.0f} MB{note}", flush=True)
            if args.verify:
                verify(status["kafka"]["bootstrap_servers"], stream, args.rows)
        return 0
    finally:
        if started_here and not args.keep:
            subprocess.run([sys.executable, "-m", "mallard.cli.main", "stack", "down", "--purge"], env=env,
                           capture_output=True, cwd=REPO)
            shutil.rmtree(started_here, ignore_errors=True)
        elif started_here:
            print(f"stack left running: MALLARD_HOME={started_here}")


if __name__ == "__main__":
    sys.exit(main())
