"""Latency: how long after a Postgres commit the change is visible in DuckDB, under
pgbench at fixed rates, on the local stack (everything on this machine).

    .venv/bin/python bench/latency_benchmark.py [--rates 250 500 1000 1500] [--seconds 60] [--scale 10]

Needs nothing running: it starts its own local stack in a temporary home on free
ports (as bench/soak.py does) and tears it down at the end.

1. `stack up --only postgres`, `pgbench -i -s <scale>`, and a one-row probe table;
2. `stack up --no-demo` with a replication config of the four pgbench tables and the
   probe; wait for the first snapshots; a warm-up of 100 pgbench transactions, until
   their pgbench_history rows are in DuckDB (its CDC topic is new: found and assigned),
   then ``--warmup-seconds`` of pgbench at 300 tps (the JVMs compile their hot paths);
3. per rate: `pgbench -R <rate> -T <seconds>` (TPC-B-like, 4 clients), while a probe
   commits `UPDATE probe SET seq = seq + 1` every 100 ms (its own connection, so it
   queues behind pgbench's transactions in commit order like any other) and notes when
   COMMIT returned. Two observers note when each seq becomes visible:
   - **DuckDB**: the applier's `/query` (`SELECT seq FROM probe`), every 50 ms: what a
     reader of the replica sees. Commit order means seq s visible makes every seq <= s
     visible.
   - **Kafka** (the peer, Debezium plus a sink's floor): a consumer of the probe's CDC
     topic: the time Debezium in Kafka Connect made the change readable in Kafka.
   Delay = first seen - commit returned, so it includes up to one poll interval.
4. print, per rate, pgbench's tps, the delays' p50/p99/max on each path, and each
   component's CPU (cores used: /proc utime+stime of the process and its descendants over
   the rate's wall time), and the applier's DuckDB batches (count, events per batch, mean
   time from taking a batch to its commit, from /metrics); then the
   highest rate at which the DuckDB p99 stays under 2 s.

Exit status 0 when every rate caught up.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path
from typing import Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg2  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from soak import PG_BIN, Stack, metric_values, on_signal, pg_env, wait_until  # noqa: E402

PROBE = "mallard_latency_probe"
PGBENCH = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
PROBE_EVERY_S, POLL_EVERY_S = 0.1, 0.05
COMPONENTS = ("postgres", "broker", "connect", "applier", "snapshotter")
TICK = os.sysconf("SC_CLK_TCK")


def replication_config(home: Path) -> Path:
    streams = "\n".join(f"  public.{t}:" for t in [*PGBENCH, PROBE])
    path = home / "latency.yaml"
    path.write_text(f"""source:
  type: postgres
  host: 127.0.0.1
  port: ${{MALLARD_PG_PORT}}
  user: ${{MALLARD_PG_USER:-mallard}}
  password: ${{MALLARD_PG_PASSWORD}}
  database: ${{MALLARD_PG_DATABASE:-shop}}
target:
  type: duckdb
  path: {home}/duckdb/mallard.duckdb
defaults:
  mode: full-refresh
streams:
{streams}
""")
    return path


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == pids[0]:  # children it reaped (pgbench's backends, once it disconnects)
            total += int(fields[13]) + int(fields[14])
    return total / TICK


def with_children(parent: int) -> list[int]:
    """A process and its descendants: the postmaster's backends, walsender and WAL writer; the
    applier's fork server and the DuckDB writer process forked by it (a grandchild)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, todo = [parent], [parent]
    while todo:
        for child in children.get(todo.pop(), []):
            pids.append(child)
            todo.append(child)
    return pids


def apply_counters(stack: Stack) -> tuple[float, float, float]:
    """The applier's batches so far: (count, seconds summed, events applied), from /metrics."""
    try:
        text = stack.metrics()
    except OSError:
        return 0.0, 0.0, 0.0
    def total(name: str) -> float:
        return sum(metric_values(text, name))
    return (total("mallard_apply_batch_duration_seconds_count"), total("mallard_apply_batch_duration_seconds_sum"),
            total("mallard_events_applied_total") or total("mallard_events_applied"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Probe:
    """Commits seq = 1, 2, ... every PROBE_EVERY_S; observers record when each is first seen."""

    def __init__(self, dsn: str, stack: Stack, topic: str):
        self.dsn, self.stack, self.topic = dsn, stack, topic
        self.committed: dict[int, float] = {}
        self.seen: dict[str, dict[int, float]] = {"duckdb": {}, "kafka": {}}
        self.stop_commits, self.stop = threading.Event(), threading.Event()
        self.errors: list[str] = []

    def _commit_loop(self, start_seq: int) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        cur = conn.cursor()
        seq = start_seq
        next_at = time.monotonic()
        while not self.stop_commits.is_set():
            seq += 1
            cur.execute(f"UPDATE {PROBE} SET seq = %s WHERE id = 1", (seq,))
            self.committed[seq] = time.monotonic()
            next_at += PROBE_EVERY_S
            time.sleep(max(0.0, next_at - time.monotonic()))
        conn.close()

    def _mark(self, path: str, seq: int, now: float) -> None:
        seen = self.seen[path]
        for s in range(max(seen, default=seq - 1) + 1, seq + 1):  # commit order: every earlier one too
            if s in self.committed:
                seen[s] = now

    def _duckdb_loop(self) -> None:
        while not self.stop.is_set():
            try:
                rows = self.stack.query(f"SELECT seq FROM {PROBE} WHERE id = 1", timeout=10)
                if rows:
                    self._mark("duckdb", int(rows[0][0]), time.monotonic())
            except Exception as e:  # noqa: BLE001 - the applier may be busy: note, go on
                self.errors.append(str(e))
            time.sleep(POLL_EVERY_S)

    def _kafka_loop(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.stack.bootstrap_servers, "group.id": "latency-probe",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        parts = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        consumer.assign([TopicPartition(self.topic, p, -1) for p in parts])  # -1: the end
        while not self.stop.is_set():
            msg = consumer.poll(0.05)
            if msg is None or msg.error() or not msg.value():
                continue
            after = (json.loads(msg.value()).get("payload") or {}).get("after") or {}
            if "seq" in after:
                self._mark("kafka", int(after["seq"]), time.monotonic())
        consumer.close()

    def run(self, start_seq: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=t, daemon=True) for t in (self._kafka_loop, self._duckdb_loop)]
        for t in threads:
            t.start()
        time.sleep(1)  # the Kafka consumer is at the end before the first commit
        self.committer = threading.Thread(target=self._commit_loop, args=(start_seq,), daemon=True)
        self.committer.start()
        return threads

    def delays(self, path: str) -> list[float]:
        return [self.seen[path][s] - t for s, t in self.committed.items() if s in self.seen[path]]


def run(args: argparse.Namespace, stack: Stack) -> int:
    print(f"machine: {os.cpu_count()} cores; load average at start {Path('/proc/loadavg').read_text().split()[:3]}")
    stack.env["MALLARD_REPLICATION_CONFIG"] = str(replication_config(stack.home))
    stack.mallard("stack", "up", "--only", "postgres", "--no-demo")
    status = stack.status()
    owner_dsn = status["postgres"]["dsn"]
    conn_args, env, db = pg_env(owner_dsn)
    subprocess.run([str(PG_BIN / "pgbench"), "-i", "-s", str(args.scale), *conn_args, db], env=env, check=True,
                   capture_output=True, timeout=1800)
    conn = psycopg2.connect(owner_dsn)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE TABLE IF NOT EXISTS {PROBE} (id int PRIMARY KEY, seq bigint NOT NULL);"
                          f"INSERT INTO {PROBE} VALUES (1, 0) ON CONFLICT DO NOTHING")
    conn.close()
    print(stack.mallard("stack", "up", "--no-demo").rstrip())
    # Connect creates the probe's CDC topic with its first change: make one, so the Kafka observer finds it.
    conn = psycopg2.connect(owner_dsn)
    conn.autocommit = True
    conn.cursor().execute(f"UPDATE {PROBE} SET seq = 0 WHERE id = 1")
    conn.close()
    wait_until("the probe's CDC topic", lambda: f"mallard.public.{PROBE}" in Consumer(
        {"bootstrap.servers": stack.bootstrap_servers, "group.id": "latency-probe"}).list_topics(timeout=10).topics,
        120, every=1)
    comps = stack.status()["components"]
    pids = {name: [comps[name]["pid"]] for name in COMPONENTS if name != "postgres" and comps.get(name, {}).get("pid")}
    postmaster = comps["postgres"]["pid"]
    def rows(sql: str) -> list[list] | None:
        try:
            return stack.query(sql)
        except urllib.error.HTTPError:  # 400 until the first snapshot has created the table
            return None

    wait_until("the probe's first snapshot", lambda: rows(f"SELECT count(*) FROM {PROBE}") == [[1]], 600, every=2)
    wait_until("pgbench_accounts' first snapshot",
               lambda: rows("SELECT count(*) FROM pgbench_accounts") == [[args.scale * 100_000]], 900, every=2)

    def pgbench_applied(what: str, *options: str) -> None:
        """Run pgbench with ``options``, then wait until its pgbench_history rows are in DuckDB."""
        subprocess.run([str(PG_BIN / "pgbench"), "-n", *options, "-c", "4", "-j", "2", *conn_args, db], env=env,
                       check=True, capture_output=True, timeout=args.warmup_seconds + 600)
        conn = psycopg2.connect(owner_dsn)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pgbench_history")
            history = cur.fetchone()[0]
        conn.close()
        wait_until(f"the {what}'s pgbench_history rows in DuckDB",
                   lambda: rows("SELECT count(*) FROM pgbench_history") == [[history]], 600, every=1)

    # Warm-up: pgbench_history's CDC topic is created by its first insert, and the applier's
    # subscription finds it at its next metadata refresh (then the group rebalances): a few
    # seconds in which no transaction touching it can be applied. Once per new table, so
    # before the first rate, not inside it.
    pgbench_applied("warm-up", "-t", "25")
    if args.warmup_seconds:
        # The JVMs (Connect's Debezium task, the broker) compile their hot paths in the first
        # tens of seconds of load: measured, that is a stall of the first rate's Kafka path
        # (commit -> Kafka p99 4 s at 500 tps), not a property of any rate. A production
        # stack has run for long; this one is loaded at a low rate first.
        pgbench_applied("JVM warm-up", "-R", "300", "-T", str(args.warmup_seconds))
    print("first snapshots merged, warmed up; every rate below runs", args.seconds, "s with 4 clients")

    rows, ok, seq = [], True, 0
    for rate in args.rates:
        probe = Probe(owner_dsn, stack, f"mallard.public.{PROBE}")
        pids["postgres"] = [postmaster]
        cpu0 = {name: cpu_seconds(with_children(p[0])) for name, p in pids.items()}
        self_cpu0 = os.times()
        batches0 = apply_counters(stack)
        t0 = time.monotonic()
        threads = probe.run(seq)
        bench = subprocess.run([str(PG_BIN / "pgbench"), "-n", "-R", str(rate), "-T", str(args.seconds), "-c", "4",
                                "-j", "2", *conn_args, db], env=env, capture_output=True, text=True, timeout=args.seconds + 600)
        wall = time.monotonic() - t0
        cpu = {name: (cpu_seconds(with_children(p[0])) - cpu0[name]) / wall for name, p in pids.items()}
        done = os.times()
        cpu["pgbench"] = (done.children_user + done.children_system - self_cpu0.children_user
                          - self_cpu0.children_system) / wall
        probe.stop_commits.set()
        probe.committer.join(30)
        seq = last = max(probe.committed, default=0)
        caught = True
        try:
            wait_until("the last probe in DuckDB", lambda: last in probe.seen["duckdb"], args.catch_up_timeout, every=1)
        except RuntimeError as e:
            print(e)
            caught = ok = False
        probe.stop.set()
        for t in threads:
            t.join(15)
        tps = re.search(r"tps = ([\d.]+)", bench.stdout)
        batches1 = apply_counters(stack)
        n_batches, batch_s, events = (b - a for a, b in zip(batches0, batches1))
        duck, kafka = probe.delays("duckdb"), probe.delays("kafka")
        row = {"rate": rate, "tps": float(tps.group(1)) if tps else None, "probes": len(probe.committed),
               "duckdb": [percentile(duck, .5), percentile(duck, .99), max(duck)] if duck else None,
               "kafka": [percentile(kafka, .5), percentile(kafka, .99), max(kafka)] if kafka else None,
               "cpu": cpu, "caught_up": caught,
               "batches": n_batches, "events_per_batch": events / n_batches if n_batches else None,
               "batch_ms": 1000 * batch_s / n_batches if n_batches else None, "poll_errors": len(probe.errors),
               "load": float(Path("/proc/loadavg").read_text().split()[0])}
        rows.append(row)
        print(json.dumps(row))
    print_table(rows)
    return 0 if ok else 1


def print_table(rows: list[dict]) -> None:
    def trio(x):
        return " / ".join(f"{v:.2f}" for v in x) if x else "-"

    print("\n| pgbench -R | tps | probes | commit → DuckDB p50 / p99 / max (s) | commit → Kafka p50 / p99 / max (s) | "
          + " | ".join(f"CPU {c}" for c in (*COMPONENTS, "pgbench")) + " | DuckDB batches | events/batch | ms/batch "
          "| load (1 min) |")
    print("|---" * (5 + len(COMPONENTS) + 5) + "|")
    for r in rows:
        print(f"| {r['rate']} | {r['tps'] or 0:.0f} | {r['probes']} | {trio(r['duckdb'])} | {trio(r['kafka'])} | "
              + " | ".join(f"{r['cpu'].get(c, 0):.2f}" for c in (*COMPONENTS, "pgbench"))
              + f" | {r['batches']:.0f} | {r['events_per_batch'] or 0:.0f} | {r['batch_ms'] or 0:.0f} | {r['load']:.1f} |")
    under = [r["rate"] for r in rows if r["duckdb"] and r["duckdb"][1] < 2.0 and r["caught_up"]]
    print(f"\nhighest rate with commit → DuckDB p99 under 2 s: {max(under) if under else 'none'}")


def on_pgbench_stack(prefix: str, start_timeout: int, body: Callable[[Stack], int],
                     keep_logs: str | None = None, settings: Iterable[str] = ()) -> int:
    """``body`` on a local stack in a temporary home, its connector capturing pgbench's
    tables and the probe; torn down (logs copied to ``keep_logs`` first) also on SIGTERM."""
    signal.signal(signal.SIGTERM, on_signal)
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    stack = Stack(home, start_timeout)
    for setting in settings:  # NAME=VALUE: a mallard setting of this stack (MALLARD_JVM_OPTS=...)
        name, _, value = setting.partition("=")
        stack.env[name] = value
    connector = json.loads(Path(stack.env["MALLARD_CONNECTOR_CONFIG"]).read_text())
    connector["config"]["table.include.list"] = ",".join(f"public.{t}" for t in [*PGBENCH, PROBE])
    Path(stack.env["MALLARD_CONNECTOR_CONFIG"]).write_text(json.dumps(connector, indent=2))
    try:
        return body(stack)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if keep_logs:
            shutil.copytree(home / "logs", keep_logs, dirs_exist_ok=True)
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[250, 500, 1000, 1500])
    parser.add_argument("--seconds", type=int, default=60, help="pgbench -T per rate (default 60)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10)")
    parser.add_argument("--warmup-seconds", type=int, default=60,
                        help="pgbench -R 300 for this long before the first rate, so that the JVMs have compiled "
                             "their hot paths (default 60; 0: none)")
    parser.add_argument("--catch-up-timeout", type=float, default=600)
    parser.add_argument("--start-timeout", type=int, default=240)
    parser.add_argument("--keep-logs", help="copy the stack's logs to this folder before tearing it down")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the stack, e.g. MALLARD_JVM_OPTS='-XX:-UseG1GC -XX:+UseSerialGC' (repeatable)")
    args = parser.parse_args()
    return on_pgbench_stack("mallard-latency-", args.start_timeout, lambda stack: run(args, stack), args.keep_logs,
                            args.set)

if __name__ == "__main__":
    sys.exit(main())
