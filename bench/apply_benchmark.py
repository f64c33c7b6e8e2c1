"""Applier throughput and memory: preload Kafka with N Debezium change events for a
10-column table, run the real applier service against it, and measure its
sustained apply rate and peak RSS; beside it, a naive per-event upsert of the same
events into DuckDB, measured in the same run.

    .venv/bin/python bench/apply_benchmark.py [--events 100000 200000 400000] [--naive-events 20000]

Needs nothing running: it starts its own Apache Kafka broker (KRaft, from .jvm/) on free ports.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import duckdb
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mallard.runtime.health import client_request  # noqa: E402
from mallard.stack import jvm  # noqa: E402

PREFIX = "bench"
TOPIC = f"{PREFIX}.public.orders"
TX_TOPIC = f"{PREFIX}.transaction"

FIELDS = [
    {"type": "int64", "optional": False, "field": "id"},
    {"type": "int32", "optional": False, "field": "customer_id"},
    {"type": "int32", "optional": False, "field": "product_id"},
    {"type": "int32", "optional": False, "field": "quantity"},
    # numeric(12,2) as Debezium sends it (decimal.handling.mode=string, its type propagated)
    {"type": "string", "optional": False, "parameters": {
        "__debezium.source.column.type": "NUMERIC", "__debezium.source.column.length": "12",
        "__debezium.source.column.scale": "2", "__debezium.source.column.name": "total"}, "field": "total"},
    {"type": "string", "optional": False, "field": "status"},
    {"type": "string", "optional": True, "field": "note"},
    {"type": "int32", "optional": False, "name": "io.debezium.time.Date", "version": 1, "field": "order_date"},
    {"type": "string", "optional": False, "name": "io.debezium.time.ZonedTimestamp", "version": 1, "field": "created_at"},
    {"type": "int64", "optional": True, "name": "io.debezium.time.MicroTimestamp", "version": 1, "field": "updated_at"},
]
SOURCE_SCHEMA = {"type": "struct", "fields": [
    {"type": "string", "optional": False, "field": f} for f in ("version", "connector", "name")] + [
    {"type": "int64", "optional": False, "field": "ts_ms"},
    {"type": "string", "optional": True, "name": "io.debezium.data.Enum", "version": 1,
     "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
     "default": "false", "field": "snapshot"},
    {"type": "string", "optional": False, "field": "db"},
    {"type": "string", "optional": True, "field": "sequence"},
    {"type": "int64", "optional": True, "field": "ts_us"},
    {"type": "int64", "optional": True, "field": "ts_ns"},
    {"type": "string", "optional": False, "field": "schema"},
    {"type": "string", "optional": False, "field": "table"},
    {"type": "int64", "optional": True, "field": "txId"},
    {"type": "int64", "optional": True, "field": "lsn"},
    {"type": "int64", "optional": True, "field": "xmin"},
], "optional": False, "name": "io.debezium.connector.postgresql.Source", "field": "source"}
ROW_SCHEMA = {"type": "struct", "fields": FIELDS, "optional": True, "name": f"{PREFIX}.public.orders.Value"}
VALUE_SCHEMA = {"type": "struct", "fields": [
    {**ROW_SCHEMA, "field": "before"}, {**ROW_SCHEMA, "field": "after"}, SOURCE_SCHEMA,
    {"type": "string", "optional": False, "field": "op"},
    {"type": "int64", "optional": True, "field": "ts_ms"},
    {"type": "struct", "fields": [{"type": "string", "optional": False, "field": "id"},
                                  {"type": "int64", "optional": False, "field": "total_order"},
                                  {"type": "int64", "optional": False, "field": "data_collection_order"}],
     "optional": True, "name": "event.block", "version": 1, "field": "transaction"},
], "optional": False, "name": f"{PREFIX}.public.orders.Envelope", "version": 2}
KEY_SCHEMA = {"type": "struct", "fields": [{"type": "int64", "optional": False, "field": "id"}],
              "optional": False, "name": f"{PREFIX}.public.orders.Key"}
TX_SCHEMA = {"type": "struct", "fields": [
    {"type": "string", "optional": False, "field": "status"}, {"type": "string", "optional": False, "field": "id"},
    {"type": "int64", "optional": True, "field": "event_count"},
    {"type": "array", "items": {"type": "struct", "fields": [
        {"type": "string", "optional": False, "field": "data_collection"},
        {"type": "int64", "optional": False, "field": "event_count"}], "optional": False},
     "optional": True, "field": "data_collections"},
    {"type": "int64", "optional": False, "field": "ts_ms"}], "optional": False,
    "name": "io.debezium.connector.common.TransactionMetadataValue", "version": 1}
STATUSES = ["placed", "paid", "shipped", "delivered", "cancelled"]


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decimal_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def generate(n: int, seed: int = 7):
    """Yield (topic, key, value) as Debezium would publish them, in commit order:
    ~40% inserts, ~50% updates of recent keys (realistic reuse), ~10% deletes."""
    rng = random.Random(seed)
    live: list[int] = []
    next_id, lsn, tx_id, produced = 1, 10_000_000, 1000, 0
    key_schema = dumps(KEY_SCHEMA).decode()
    value_schema = dumps(VALUE_SCHEMA).decode()
    tx_schema = dumps(TX_SCHEMA).decode()
    while produced < n:
        tx_id += 1
        size = min(rng.randint(1, 5), n - produced)
        begin_lsn = lsn
        ts = 1_780_000_000_000 + produced
        yield TX_TOPIC, None, f'{{"schema":{tx_schema},"payload":{{"status":"BEGIN","id":"{tx_id}:{begin_lsn}","event_count":null,"data_collections":null,"ts_ms":{ts}}}}}'.encode()
        for order in range(1, size + 1):
            lsn += 100
            r = rng.random()
            if r < 0.4 or len(live) < 100:
                op, key = "c", next_id
                live.append(key)
                next_id += 1
            elif r < 0.9:
                op, key = "u", live[-1 - min(int(rng.expovariate(1 / 200)), len(live) - 1)]
            else:
                op, key = "d", live.pop(rng.randrange(len(live)))
            row = None if op == "d" else {
                "id": key, "customer_id": rng.randint(1, 50_000), "product_id": rng.randint(1, 5_000),
                "quantity": rng.randint(1, 9), "total": decimal_text(rng.randint(100, 10**7)),
                "status": rng.choice(STATUSES), "note": None if rng.random() < 0.5 else f"note {rng.random():.6f}",
                "order_date": 19_000 + rng.randint(0, 700), "created_at": "2026-01-02T03:04:05.678901Z",
                "updated_at": 1_780_000_000_000_000 + produced,
            }
            before = {"id": key, "customer_id": 0, "product_id": 0, "quantity": 0, "total": "0.00", "status": "",
                      "note": None, "order_date": 0, "created_at": "1970-01-01T00:00:00Z", "updated_at": None} \
                if op == "d" else None
            payload = {"before": before, "after": row, "source": {
                "version": "3.6.3.Final", "connector": "postgresql", "name": PREFIX, "ts_ms": ts, "snapshot": "false",
                "db": "shop", "sequence": f'["{begin_lsn}","{lsn}"]', "ts_us": ts * 1000, "ts_ns": ts * 10**6,
                "schema": "public", "table": "orders", "txId": tx_id, "lsn": lsn, "xmin": None},
                "op": op, "ts_ms": ts, "transaction": {"id": f"{tx_id}:{begin_lsn}", "total_order": order,
                                                       "data_collection_order": order}}
            key_bytes = f'{{"schema":{key_schema},"payload":{{"id":{key}}}}}'.encode()
            yield TOPIC, key_bytes, f'{{"schema":{value_schema},"payload":{dumps(payload).decode()}}}'.encode()
            if op == "d":
                yield TOPIC, key_bytes, None  # tombstone
        lsn += 100
        produced += size
        yield TX_TOPIC, None, (f'{{"schema":{tx_schema},"payload":{{"status":"END","id":"{tx_id}:{lsn}",'
                               f'"event_count":{size},"data_collections":[{{"data_collection":"public.orders",'
                               f'"event_count":{size}}}],"ts_ms":{ts}}}}}').encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A fresh one-node broker in a folder of its own (the same config as the local stack's)."""
    home = Path(tempfile.mkdtemp(prefix="broker-", dir=workdir))
    config = jvm.BrokerConfig(home, free_port(), free_port())
    artifacts = jvm.Artifacts()
    config.write_config()
    subprocess.run(config.format_command(artifacts), check=True, capture_output=True)
    proc = subprocess.Popen(config.command(artifacts), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bootstrap = config.bootstrap_servers
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", config.port)) == 0:
                try:
                    AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=1)
                    return proc, bootstrap
                except Exception:  # noqa: BLE001
                    pass
        time.sleep(0.2)
    raise RuntimeError("broker did not start")


def preload(bootstrap: str, n: int) -> list[tuple]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(TOPIC, 3, 1), NewTopic(TX_TOPIC, 1, 1)]).values():
        f.result()
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 20,
                         "batch.size": 1_000_000, "queue.buffering.max.messages": 200_000})
    kept = []
    for topic, key, value in generate(n):
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if topic == TOPIC and value is not None:
            kept.append((key, value))
    producer.flush(120)
    return kept


def family(pid: int) -> list[int]:
    """The applier and its descendants (its DuckDB writer process, forked by a fork server)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(p for c in children for p in family(int(c)))]


def _status_kb(pid: int, field: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in status if line.startswith(field)))


def rss_mb(pid: int) -> float:
    return sum(_status_kb(p, "VmRSS") for p in family(pid)) / 1024


def peak_rss_mb(pid: int) -> float:
    """The sum of each process's own peak (an upper bound of the family's)."""
    return sum(_status_kb(p, "VmHWM") for p in family(pid)) / 1024


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def duckdb_mb(port: int) -> float:
    """What DuckDB's own allocator holds in the applier (its buffer pool: data, indexes)."""
    try:
        q = urllib.parse.quote("SELECT sum(memory_usage_bytes) FROM duckdb_memory()")
        with urllib.request.urlopen(client_request(f"http://127.0.0.1:{port}/query?sql={q}", "bench"), timeout=10) as r:
            return json.loads(r.read())["rows"][0][0] / 2**20
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return float("nan")


def run_applier(bootstrap: str, n: int, workdir: Path, broker_pid: int) -> dict:
    port = free_port()
    env = {**os.environ, "MALLARD_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "MALLARD_TOPIC_PREFIX": PREFIX,
           "MALLARD_DUCKDB_PATH": str(workdir / f"bench-{n}.duckdb"), "MALLARD_HEALTH_PORT": str(port),
           "MALLARD_CONSUMER_GROUP": f"bench-{n}", "MALLARD_DEAD_LETTER_TOPIC": "bench.dead-letter",
           "MALLARD_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"), "MALLARD_TOPIC_REFRESH_MS": "1000"}
    proc = subprocess.Popen([sys.executable, "-m", "mallard.services.applier"], env=env, cwd=REPO)
    if os.environ.get("BENCH_PROFILE"):  # py-spy flame data of the applier, for tuning
        subprocess.Popen(["py-spy", "record", "--gil", "-r", "400", "-o", os.environ["BENCH_PROFILE"], "-f", "raw", "-p", str(proc.pid)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = last = None
    applied = 0
    rss_at: dict[float, float] = {}
    duckdb_at: dict[float, float] = {}
    try:
        deadline = time.monotonic() + 1800
        while applied < n and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    applied = json.loads(r.read()).get("events_applied", 0)
            except OSError:
                applied = applied
            now = time.monotonic()
            if applied and first is None:
                first = (now, applied)
                cpu_first = (cpu_seconds(proc.pid), cpu_seconds(broker_pid))
            if proc.poll() is not None:
                raise RuntimeError("the applier exited")
            for q in (0.25, 0.5, 0.75):
                if q not in rss_at and applied >= q * n:
                    rss_at[q] = rss_mb(proc.pid)
                    duckdb_at[q] = duckdb_mb(port)
            time.sleep(0.25)
        last = (time.monotonic(), applied)
        cpu_last = (cpu_seconds(proc.pid), cpu_seconds(broker_pid))
        peak_rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    rate = (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else float("nan")
    con = duckdb.connect(str(workdir / f"bench-{n}.duckdb"), read_only=True)
    rows = con.execute("SELECT count(*) FROM orders").fetchone()[0]
    con.close()
    wall = last[0] - first[0]
    return {"events": n, "events_per_s": rate, "peak_rss_mb": peak_rss, "rows": rows,
            "rss_mb_at_25_50_75_pct": [round(rss_at.get(q, float("nan"))) for q in (0.25, 0.5, 0.75)],
            "duckdb_mb_at_25_50_75_pct": [round(duckdb_at.get(q, float("nan"))) for q in (0.25, 0.5, 0.75)],
            "applier_cpu": (cpu_last[0] - cpu_first[0]) / wall, "broker_cpu": (cpu_last[1] - cpu_first[1]) / wall}


def naive(events: list[tuple], workdir: Path) -> dict:
    """The straightforward sink: parse each message, one upsert or delete per event."""
    con = duckdb.connect(str(workdir / "naive.duckdb"))
    con.execute("""CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id INTEGER, product_id INTEGER,
        quantity INTEGER, total DECIMAL(12,2), status VARCHAR, note VARCHAR, order_date DATE,
        created_at TIMESTAMPTZ, updated_at TIMESTAMP)""")
    started = time.monotonic()
    for _, value in events:
        p = json.loads(value)["payload"]
        if p["op"] == "d":
            con.execute("DELETE FROM orders WHERE id = ?", [p["before"]["id"]])
            continue
        a = p["after"]
        total = a["total"]
        con.execute(
            """INSERT INTO orders VALUES (?, ?, ?, ?, ?::DECIMAL(12,2), ?, ?, DATE '1970-01-01' + ?::INTEGER,
               ?::TIMESTAMPTZ, make_timestamp(?::BIGINT)) ON CONFLICT (id) DO UPDATE SET
               customer_id = excluded.customer_id, product_id = excluded.product_id, quantity = excluded.quantity,
               total = excluded.total, status = excluded.status, note = excluded.note,
               order_date = excluded.order_date, created_at = excluded.created_at, updated_at = excluded.updated_at""",
            [a["id"], a["customer_id"], a["product_id"], a["quantity"], total, a["status"], a["note"],
             a["order_date"], a["created_at"], a["updated_at"]])
    elapsed = time.monotonic() - started
    con.close()
    return {"events": len(events), "events_per_s": len(events) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 200_000, 400_000])
    parser.add_argument("--naive-events", type=int, default=20_000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; duckdb {duckdb.__version__}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for n in args.events:
            broker, bootstrap = start_broker(workdir)
            try:
                t0 = time.monotonic()
                events = preload(bootstrap, n)
                print(f"preloaded {n:,} change events (+ transaction metadata, tombstones) in {time.monotonic() - t0:.1f}s")
                r = run_applier(bootstrap, n, workdir, broker.pid)
                results.append(r)
                print(f"mallard applier  N={n:>9,}  {r['events_per_s']:>9,.0f} events/s   peak RSS {r['peak_rss_mb']:.0f} MB"
                      f" (RSS at 25/50/75% {r['rss_mb_at_25_50_75_pct']} MB, of which DuckDB {r['duckdb_mb_at_25_50_75_pct']} MB)   rows in DuckDB {r['rows']:,}"
                      f"   CPU: applier {r['applier_cpu']:.2f}, broker {r['broker_cpu']:.2f} cores")
                if n == args.events[0]:
                    nv = naive(events[: args.naive_events], workdir)
                    print(f"naive upsert     N={nv['events']:>9,}  {nv['events_per_s']:>9,.0f} events/s   "
                          f"(one INSERT ... ON CONFLICT / DELETE per event, same events)")
            finally:
                broker.terminate()
                broker.wait(60)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
