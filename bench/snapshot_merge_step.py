"""The merge step of a full re-snapshot, alone: how long the DuckDB thread (and so CDC)
waits at a snapshot's end, for each way of merging (MALLARD_SNAPSHOT_MERGE), on the real
DuckDB adapter without a stack.

    .venv/bin/python bench/snapshot_merge_step.py [--rows 1000000] [--changed 20000]

A table of ``--rows`` rows (a first snapshot), CDC changing ``--changed`` keys after the
next snapshot's cut (updates, and a tenth of them deletes), then that snapshot staged in
batches of 100k rows and merged. Printed per mode: the time to stage its rows (between
CDC batches: CDC waits for one batch at a time) and the merge step (CDC waits for all of it).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from mallard.adapters.duckdb_replica import DuckDBReplica
from mallard.core.changes import ChangeEvent, TableSchema
from mallard.core.cut import Cut
from mallard.core.merge import reduce
from mallard.core.pgtypes import column_type
from mallard.core.snapshots import SnapshotFrame
from mallard.core.transactions import Transaction

STREAM = "public.accounts"
TYPES = (column_type({"type": "int32"}), column_type({"type": "int32"}), column_type({"type": "string"}))
SCHEMA = TableSchema(STREAM, ("aid", "abalance", "filler"), TYPES, ("aid",))
BATCH = 100_000


def snapshot(replica: DuckDBReplica, snapshot_id: str, cut: Cut, rows: int, balance: int) -> tuple[float, float]:
    frame = SnapshotFrame(snapshot_id, STREAM, cut, SCHEMA, None, datetime.now(timezone.utc))
    replica.begin_snapshot(frame)
    t0 = time.perf_counter()
    for start in range(0, rows, BATCH):
        ids = pa.array(range(start, min(rows, start + BATCH)), pa.int32())
        replica.stage_rows(frame, pa.table({"c0": ids, "c1": pa.array([balance] * len(ids), pa.int32()),
                                            "c2": pa.array(["x" * 84] * len(ids))}))
    staged = time.perf_counter() - t0
    t0 = time.perf_counter()
    replica.finish_snapshot(frame)
    return staged, time.perf_counter() - t0


def cdc(replica: DuckDBReplica, xid: int, keys: range) -> None:
    events = [ChangeEvent("t", 0, n, STREAM, "d" if k % 10 == 0 else "u", xid, n + 1, 0, (k,),
                          None if k % 10 == 0 else (k, 7, "y"), frozenset(), SCHEMA) for n, k in enumerate(keys)]
    tx = Transaction(xid, 10_000 + xid, 0, events)
    replica.apply(reduce([tx], replica.snapshot_cuts()), [tx])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=int, default=20_000, help="keys CDC writes after the cut")
    args = parser.parse_args()
    print("| MALLARD_SNAPSHOT_MERGE | rows | keys changed after the cut | staging (s, in 100k-row steps) | "
          "merge step (s) |\n|---|---|---|---|---|")
    for mode in ("rewrite", "swap"):
        with tempfile.TemporaryDirectory() as d:
            replica = DuckDBReplica(str(Path(d) / "r.duckdb"), "300MB", threads=1, snapshot_merge=mode)
            try:
                snapshot(replica, "first", Cut(100, 100), args.rows, 0)
                cdc(replica, 200, range(0, args.changed * 2, 2))  # after the next cut (xid 200 >= xmax 150)
                staged, merged = snapshot(replica, "again", Cut(150, 150), args.rows, 1)
                # The cut rule held: CDC's updates won, its deletes stand, the rest is the snapshot's.
                deleted = len(range(0, args.changed * 2, 10))
                counts = replica.con.execute("SELECT count(*), count(*) FILTER (WHERE abalance = 7), "
                                             "count(*) FILTER (WHERE abalance = 1) FROM accounts").fetchone()
                assert counts == (args.rows - deleted, args.changed - deleted, args.rows - args.changed), counts
            finally:
                replica.close()
        print(f"| {mode} | {args.rows:,} | {args.changed:,} | {staged:.2f} | {merged:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
