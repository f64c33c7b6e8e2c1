"""CDC delay during a re-snapshot under load: how long a Postgres commit takes to become
visible in DuckDB while a 1M-row table (pgbench_accounts, scale 10) is re-snapshotted and
pgbench writes go on, for each way of merging a snapshot (MALLARD_SNAPSHOT_MERGE: the
one-step ``rewrite`` beside the ``swap``), in one run on one stack.

    .venv/bin/python bench/resnapshot_latency.py [--rate 500] [--scale 10] [--modes rewrite swap]

Needs nothing running: it starts its own local stack in a temporary home (as
bench/latency_benchmark.py does, whose probe it uses) and tears it down at the end.
Per mode: the applier is restarted with that setting; pgbench runs at ``--rate`` (4
clients) with the probe committing every 100 ms; after a warm-up a re-snapshot of
pgbench_accounts is requested; once it is merged (and a few seconds more) pgbench stops.
Printed per mode: the commit → DuckDB delay p50/p99/max of the probes committed between
the request and the merge, the same in the 10 s before the request (the peer; the request
waits until CDC keeps up after the restart), the snapshot's merge step as the applier
logged it, and the time from request to merged.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg2  # noqa: E402
from confluent_kafka import Consumer  # noqa: E402
from latency_benchmark import PROBE, Probe, on_pgbench_stack, percentile, replication_config  # noqa: E402
from soak import PG_BIN, Stack, pg_env, wait_until  # noqa: E402

TABLE = "public.pgbench_accounts"


def trio(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in (percentile(values, .5), percentile(values, .99), max(values))) \
        if values else "-"


def restart_applier(stack: Stack, mode: str) -> None:
    pid = stack.status()["components"]["applier"]["pid"]
    os.kill(pid, signal.SIGTERM)  # the applier this benchmark's stack started
    wait_until("the applier to stop", lambda: not Path(f"/proc/{pid}").exists(), 120, every=0.5)
    stack.env["MALLARD_SNAPSHOT_MERGE"] = mode
    stack.mallard("stack", "up", "--no-demo")
    wait_until("the applier to answer", lambda: _answers(stack), 300, every=1)


def _answers(stack: Stack) -> bool:
    try:
        return stack.query(f"SELECT count(*) FROM {PROBE}") == [[1]]
    except (urllib.error.URLError, OSError):
        return False


def merged_after(stack: Stack, requested_wall: float) -> list | None:
    rows = stack.query("SELECT snapshot_id, epoch(finished_at) FROM _mallard.snapshots WHERE stream = "
                       f"'{TABLE}' AND status = 'merged' AND epoch(finished_at) > {requested_wall} ")
    return rows[0] if rows else None


def merge_ms(stack: Stack, snapshot_id: str) -> float | None:
    for line in (stack.home / "logs" / "applier.log").read_text(errors="replace").splitlines():
        if snapshot_id in line and "merged" in line:
            m = re.search(r'"elapsed_ms": (\d+)', line) or re.search(r"in (\d+) ms", line)
            if m:
                return float(m.group(1))
    return None


def caught_up(probe: Probe) -> bool:
    """The probes of the last few seconds became visible within 2 s."""
    now = time.monotonic()
    recent = [s for s, t in list(probe.committed.items()) if now - 4 < t < now - 2]
    return bool(recent) and all(probe.seen["duckdb"].get(s, now) - probe.committed[s] < 2 for s in recent)


def history_rows(dsn: str) -> int:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pgbench_history")
            return cur.fetchone()[0]
    finally:
        conn.close()


def one_mode(args: argparse.Namespace, stack: Stack, mode: str, owner_dsn: str, seq: int) -> tuple[dict, int]:
    restart_applier(stack, mode)
    conn_args, env, db = pg_env(owner_dsn)
    probe = Probe(owner_dsn, stack, f"mallard.public.{PROBE}")
    threads = probe.run(seq)
    bench = subprocess.Popen([str(PG_BIN / "pgbench"), "-n", "-R", str(args.rate), "-T", "3600", "-c", "4", "-j", "2",
                              *conn_args, db], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    history0, started = history_rows(owner_dsn), time.monotonic()
    try:
        time.sleep(args.warm_up)
        # Requested once CDC keeps up again (the applier was just restarted): the two modes
        # then start from the same place.
        wait_until("CDC to keep up", lambda: caught_up(probe), 300, every=0.5)
        requested, requested_wall = time.monotonic(), time.time()
        stack.mallard("resnapshot", TABLE)
        snapshot_id, _ = wait_until("the re-snapshot merged", lambda: merged_after(stack, requested_wall),
                                    args.timeout, every=0.5)
        merged = time.monotonic()
        time.sleep(args.after)
    finally:
        bench.send_signal(signal.SIGINT)
        bench.communicate(timeout=120)
    tps = (history_rows(owner_dsn) - history0) / (time.monotonic() - started)  # one history row per transaction
    probe.stop_commits.set()
    probe.committer.join(30)
    last = max(probe.committed, default=0)
    wait_until("the last probe in DuckDB", lambda: last in probe.seen["duckdb"], 600, every=1)
    probe.stop.set()
    for t in threads:
        t.join(15)
    seen = probe.seen["duckdb"]
    during = [seen[s] - t for s, t in probe.committed.items() if s in seen and requested <= t <= merged]
    before = [seen[s] - t for s, t in probe.committed.items() if s in seen and requested - 10 <= t < requested]
    row = {"mode": mode, "rate": args.rate, "tps": round(tps),
           "request_to_merged_s": round(merged - requested, 1), "merge_ms": merge_ms(stack, snapshot_id),
           "during": during, "before": before}
    print(json.dumps({k: v for k, v in row.items() if k not in ("during", "before")}
                     | {"during": trio(during), "before": trio(before)}), flush=True)
    return row, last


def run(args: argparse.Namespace, stack: Stack) -> int:
    print(f"machine: {os.cpu_count()} cores; load average at start {Path('/proc/loadavg').read_text().split()[:3]}")
    stack.env["MALLARD_REPLICATION_CONFIG"] = str(replication_config(stack.home))
    stack.mallard("stack", "up", "--only", "postgres", "--no-demo")
    owner_dsn = stack.status()["postgres"]["dsn"]
    conn_args, env, db = pg_env(owner_dsn)
    subprocess.run([str(PG_BIN / "pgbench"), "-i", "-s", str(args.scale), *conn_args, db], env=env, check=True,
                   capture_output=True, timeout=1800)
    conn = psycopg2.connect(owner_dsn)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE TABLE IF NOT EXISTS {PROBE} (id int PRIMARY KEY, seq bigint NOT NULL);"
                          f"INSERT INTO {PROBE} VALUES (1, 0) ON CONFLICT DO NOTHING")
    stack.mallard("stack", "up", "--no-demo")
    conn.cursor().execute(f"UPDATE {PROBE} SET seq = 0 WHERE id = 1")
    conn.close()
    wait_until("the probe's CDC topic", lambda: f"mallard.public.{PROBE}" in Consumer(
        {"bootstrap.servers": stack.bootstrap_servers, "group.id": "latency-probe"}).list_topics(timeout=10).topics,
        120, every=1)

    def count(table: str) -> list | None:
        try:
            return stack.query(f"SELECT count(*) FROM {table}")
        except urllib.error.HTTPError:
            return None

    wait_until("the first snapshots", lambda: count(PROBE) == [[1]]
               and count("pgbench_accounts") == [[args.scale * 100_000]], 900, every=2)
    print(f"first snapshots merged; per mode: pgbench -R {args.rate} -c 4, a re-snapshot of {TABLE} "
          f"({args.scale * 100_000:,} rows) after {args.warm_up:.0f} s", flush=True)
    rows, seq = [], 0
    for mode in args.modes:
        row, seq = one_mode(args, stack, mode, owner_dsn, seq)
        rows.append(row)
    print(f"\n| MALLARD_SNAPSHOT_MERGE | pgbench tps | request → merged (s) | merge step (ms) | "
          f"CDC delay during the re-snapshot p50 / p99 / max (s) | 10 s before it p50 / p99 / max (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['tps'] or 0:.0f} | {r['request_to_merged_s']} | {r['merge_ms'] or '-'} | "
              f"{trio(r['during'])} | {trio(r['before'])} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=500, help="pgbench -R (default 500)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s (default 10: 1M accounts)")
    parser.add_argument("--modes", nargs="+", default=["rewrite", "swap"], choices=["rewrite", "swap"])
    parser.add_argument("--warm-up", type=float, default=10.0, help="seconds of load before the request")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of load after the merge")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a re-snapshot may take")
    parser.add_argument("--start-timeout", type=int, default=240)
    args = parser.parse_args()
    return on_pgbench_stack("mallard-resnapshot-latency-", args.start_timeout, lambda stack: run(args, stack))

if __name__ == "__main__":
    sys.exit(main())
