"""One Postgres transaction of N row changes through the whole local stack (Postgres,
Debezium in Kafka Connect, Kafka, the applier, DuckDB): the applier's peak RSS and its
DuckDB writer's, and how long the transaction takes from commit to visible, with the
applier's memory bound (MALLARD_MEMORY_BOUND_MB: past it, a transaction is spilled to
disk) and without it (0: held in memory whole, as before).

    flock /tmp/heavy.lock .venv/bin/python bench/large_transaction.py --rows 2000000 --bound-mb 64
    flock /tmp/heavy.lock .venv/bin/python bench/large_transaction.py --rows 2000000 --bound-mb 0

Each run: a stack of its own (torn down after); a table of N rows loaded without CDC and
copied by a snapshot, then ONE ``UPDATE`` of every row; the peaks (VmHWM) are read before
and after it.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import Stack, new_home, up_capturing_every_table  # noqa: E402
from tests.integration.test_large_transaction import peaks_mb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--bound-mb", type=float, default=64, help="MALLARD_MEMORY_BOUND_MB (0: never spill)")
    parser.add_argument("--duckdb-memory-limit", default="300MB")
    args = parser.parse_args()
    stack = Stack(new_home(), MALLARD_TOPIC_REFRESH_MS="1000", MALLARD_MEMORY_BOUND_MB=str(args.bound_mb),
                  MALLARD_DUCKDB_MEMORY_LIMIT=args.duckdb_memory_limit)
    try:
        up_capturing_every_table(stack)
        conn = psycopg2.connect(stack.dsn)
        conn.autocommit = True
        cur = conn.cursor()
        # Loaded without CDC (an unlogged table is not decoded; SET LOGGED rewrites it, which is
        # not decoded either), then copied by a snapshot: only the UPDATE goes through CDC.
        cur.execute("CREATE UNLOGGED TABLE big (id int PRIMARY KEY, n int, note text)")
        cur.execute("INSERT INTO big SELECT i, 0, 'row ' || i FROM generate_series(1, %s) i", (args.rows,))
        cur.execute("ALTER TABLE big SET LOGGED")
        stack.mallard("resnapshot", "public.big", "--wait", "--timeout", "1800", timeout=1900)
        stack.wait_for("SELECT count(*) FROM big", [[args.rows]], timeout=600)
        applier = stack.status()["components"]["applier"]["pid"]
        base = peaks_mb(applier)
        print(f"loaded {args.rows:,} rows by a snapshot; peak RSS so far: applier {base[0]:.0f} MB, "
              f"DuckDB writer {base[1]:.0f} MB", flush=True)
        results = []
        for what, sql, check in (
                ("UPDATE", "UPDATE big SET n = 1, note = note || ' updated' WHERE %s > 0",
                 "SELECT count(*) FROM big WHERE n = 1"),):
            started = time.monotonic()
            cur.execute(sql, (args.rows,))
            committed = time.monotonic()
            stack.wait_for(check, [[args.rows]], timeout=3600)
            visible = time.monotonic()
            peak = peaks_mb(applier)
            state = stack.applier_state()
            results.append((what, committed - started, visible - committed, peak, state["transactions_spilled"]))
            print(f"{what} of {args.rows:,} rows in one transaction: Postgres {committed - started:.1f}s, commit -> "
                  f"visible in DuckDB {visible - committed:.1f}s ({args.rows / (visible - committed):,.0f} rows/s); "
                  f"peak RSS applier {peak[0]:.0f} MB, DuckDB writer {peak[1]:.0f} MB; "
                  f"transactions spilled {state['transactions_spilled']}", flush=True)
        assert stack.status()["components"]["applier"]["pid"] == applier, "the applier restarted"
        conn.close()
        print(f"\n{date.today()}: {args.rows:,} rows, MALLARD_MEMORY_BOUND_MB={args.bound_mb:g}, "
              f"DuckDB memory limit {args.duckdb_memory_limit}; peak RSS after the load: applier {base[0]:.0f} MB, "
              f"writer {base[1]:.0f} MB")
        print("| transaction | commit -> visible | applier peak RSS | writer peak RSS | spilled |")
        print("|---|---|---|---|---|")
        for what, _, seconds, peak, spilled in results:
            print(f"| {what} {args.rows:,} rows | {seconds:.0f} s | {peak[0]:.0f} MB | {peak[1]:.0f} MB | {spilled} |")
    finally:
        stack.teardown()


if __name__ == "__main__":
    main()
