"""A Postgres transaction far bigger than the applier's memory bound (issue 18): one
UPDATE of every row of a table, through real Postgres, Debezium, Kafka and DuckDB. The
applier spills it, applies it as one DuckDB transaction (a reader sees none of it or all
of it), and its peak RSS (and its DuckDB writer's) stays under the bound plus a fixed
overhead. The 5M-row run, and runs without the bound: bench/large_transaction.py."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg2
import pyarrow as pa
import pytest

from mallard.adapters import duckdb_writer
from mallard.core.replica_sql import Script
from tests.conftest import up_capturing_every_table

pytestmark = pytest.mark.integration
ROWS = int(os.environ.get("MALLARD_TEST_LARGE_TX_ROWS", 2_000_000))
BOUND_MB = 16
DUCKDB_MB = 128
FETCH_QUEUE_MB = 16
APPLIER_OVERHEAD_MB = 160
"""What the applier holds besides the events it waits on, measured from before the big
transaction, whatever the transaction's size: the Kafka client's prefetch (FETCH_QUEUE_MB),
a chunk of the transaction (max_batch_events, 50,000) as Python objects and Arrow, and the
interpreter's arenas. Measured +70 to +108 MB alone on the machine at 2M rows, +156 MB with
the 64 MB default prefetch in a run of the suite, where the applier was starved."""
WRITER_OVERHEAD_MB = 250
"""The DuckDB writer: DuckDB's memory limit is for its buffer pool; a chunk's Arrow tables
come on top, and so does the transaction's undo (below)."""
UNDO_BYTES_PER_ROW = 128
"""What DuckDB keeps in memory, until the commit, for each row one transaction updates
(measured: about 105 bytes; 221 MB peak at 300k rows, 400 MB at 2M). It is DuckDB's, in the
writer process, and grows with the transaction whatever the applier's bound."""


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def descendants(*roots: int) -> list[int]:
    """The processes below ``roots`` (the applier's: the fork server, and the DuckDB writer it
    forked), from one read of /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], list(roots)
    while frontier:
        p = frontier.pop()
        children = [c for c, pp in parents.items() if pp == p]
        found += children
        frontier += children
    return found


def yield_cpu(stack) -> None:
    """Nice every process of ``stack``, every thread of each (niceness is per thread on
    Linux; threads started later inherit it): the suite's other tests share the 2 cores with
    this one's minutes of Debezium and the applier, and their polls should not starve."""
    components = [c["pid"] for c in stack.status()["components"].values() if c.get("pid")]
    for pid in [*components, *descendants(*components)]:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(task.name), 10)
            except (ProcessLookupError, PermissionError):
                pass


def peaks_mb(applier: int) -> tuple[float, float]:
    """(the applier's peak RSS, its biggest descendant's: the DuckDB writer), in MB."""
    writer = max((vm_hwm_kb(p) for p in descendants(applier)), default=0)
    return vm_hwm_kb(applier) / 1024, writer / 1024


def test_an_update_of_every_row_in_one_transaction_is_spilled_and_applied_whole_in_bounded_memory(make_stack):
    # Both JIT tiers (the suite's stacks start with C1 only): Debezium sends the 2M events
    # about a third faster, more than paying for C2's compilations.
    stack = up_capturing_every_table(make_stack(
        MALLARD_TOPIC_REFRESH_MS="1000", MALLARD_MEMORY_BOUND_MB=str(BOUND_MB),
        MALLARD_DUCKDB_MEMORY_LIMIT=f"{DUCKDB_MB}MB", MALLARD_FETCH_QUEUE_KB=str(FETCH_QUEUE_MB * 1024),
        MALLARD_JVM_OPTS=""))
    yield_cpu(stack)
    conn = psycopg2.connect(stack.dsn)
    conn.autocommit = True
    cur = conn.cursor()
    # Loaded without a WAL row event (an unlogged table is never published; SET LOGGED
    # rewrites it, which logical decoding does not send), then copied by a snapshot: the
    # suite's time goes to the one big transaction, not to as many CDC events before it.
    cur.execute("CREATE UNLOGGED TABLE big (id int PRIMARY KEY, n int, note text)")
    cur.execute("INSERT INTO big SELECT i, 0, 'row ' || i FROM generate_series(1, %s) i", (ROWS,))
    cur.execute("ALTER TABLE big SET LOGGED")
    stack.mallard("resnapshot", "public.big", "--wait", timeout=300)
    stack.wait_for("SELECT count(*) FROM big", [[ROWS]], timeout=300)
    applier = stack.status()["components"]["applier"]["pid"]
    before = peaks_mb(applier)
    spilled_before = stack.applier_state()["transactions_spilled"]

    # Readers watch the table while the one big transaction is applied: none of it, or all.
    seen, stop = set(), threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.add(tuple(stack.query("SELECT count(*) FILTER (WHERE n = 1), count(*) FROM big")[0]))
            except (AssertionError, OSError):
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        cur.execute("UPDATE big SET n = 1, note = note || ' updated'")  # ROWS events, one transaction
        stack.wait_for("SELECT count(*) FROM big WHERE n = 1 AND note LIKE '% updated'", [[ROWS]], timeout=600)
    finally:
        stop.set()
        watcher.join()
    after = peaks_mb(applier)
    state = stack.applier_state()
    conn.close()

    assert stack.status()["components"]["applier"]["pid"] == applier  # the same process throughout
    assert state["transactions_spilled"] > spilled_before and state["events_spilled"] >= ROWS
    assert seen <= {(0, ROWS), (ROWS, ROWS)} and (0, ROWS) in seen  # never half of it
    # No spill file is left once it is applied.
    spill = Path(state["duckdb_path"] + ".spill")
    assert spill.is_dir() and not list(spill.glob("*.spill"))
    print(f"{ROWS:,} rows: applier peak RSS {before[0]:.0f} -> {after[0]:.0f} MB (bound {BOUND_MB} MB), "
          f"DuckDB writer {before[1]:.0f} -> {after[1]:.0f} MB (memory limit {DUCKDB_MB} MB)")
    assert after[0] - before[0] < BOUND_MB + APPLIER_OVERHEAD_MB, (before, after)
    assert after[1] < DUCKDB_MB + WRITER_OVERHEAD_MB + ROWS * UNDO_BYTES_PER_ROW / 2**20, (before, after)


def _chunk(first: int, n: int, fail: bool = False) -> Script:
    script = Script()
    table = pa.table({"id": pa.array(range(first, first + n), pa.int64())})
    script.add(f"INSERT INTO t SELECT id, 1 FROM {script.scan(table)} ON CONFLICT (id) DO UPDATE SET n = t.n + 1")
    if fail:
        script.add("SELECT error('refused')")
    return script


def test_a_transaction_sent_to_the_writer_in_chunks_commits_whole_or_not_at_all(tmp_path):
    """The DuckDB side of a spilled transaction: a message per chunk, one DuckDB transaction;
    a reader sees nothing of it until the commit, and a failing chunk leaves nothing."""
    con = duckdb_writer.connect(str(tmp_path / "r.duckdb"))
    con.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, n INT)")
    runner = duckdb_writer.ScriptRunner(con, "")
    reader = con.cursor()
    seen = []

    def chunks(fail_at: int | None):
        for i in range(5):
            yield _chunk(i * 1000, 1500, fail=i == fail_at)  # overlapping: keys touched twice
            seen.append(reader.execute("SELECT count(*) FROM t").fetchone()[0])

    with pytest.raises(duckdb_writer.duckdb.Error, match="refused"):
        runner.run_chunks(chunks(3))
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,) and set(seen) == {0}
    with pytest.raises(RuntimeError, match="preparing"):  # the applier failing between chunks
        runner.run_chunks(c if i < 2 else (_ for _ in ()).throw(RuntimeError("preparing"))
                          for i, c in enumerate(chunks(None)))
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
    seen.clear()
    runner.run_chunks(chunks(None))
    assert set(seen) == {0}  # never a part of it
    assert con.execute("SELECT count(*), sum(n) FROM t").fetchone() == (5500, 5500 + 4 * 500)
    runner.close()
    reader.close()
    con.close()
