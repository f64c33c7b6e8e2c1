"""A stack running the demo replication config: a scheduled fire (virtual clock) ends
as merged snapshots in DuckDB; public.orders is incremental: a run reads only rows
whose updated_at moved past the state, never deletes, and the state commands work."""
from __future__ import annotations

import re

import psycopg2
import pytest

from mallard.config.settings import REPO_ROOT

pytestmark = pytest.mark.integration

DEMO_CONFIG = REPO_ROOT / "demo" / "replication.yaml"
DAILY = "daily@2026-01-01T06:00:00+00:00"
ORDERS = "SELECT id, status, updated_at FROM orders ORDER BY id"


def pg(stack, sql: str, *params) -> list[list]:
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return [list(r) for r in cur.fetchall()] if cur.description else []


def run(stack, *args: str) -> tuple[int, int, int]:
    """`mallard resnapshot public.orders ARGS --wait`: (rows read, applied, deleted) of that run."""
    out = stack.mallard("resnapshot", "public.orders", "--wait", "--timeout", "120", *args).stdout
    request_id = re.search(r"requested (\S+):", out).group(1)
    rows = stack.query(f"SELECT rows_staged, rows_applied, rows_deleted, status FROM _mallard.snapshots "
                       f"WHERE request_id = '{request_id}'")
    assert rows and rows[0][3] == "merged", (out, rows)
    return tuple(rows[0][:3])


def test_a_schedule_fires_and_incremental_runs_read_only_what_changed(make_stack):
    # The scheduler's clock starts 25 s before 06:00: the 'daily' schedule fires once the stack is up.
    stack = make_stack(MALLARD_REPLICATION_CONFIG=str(DEMO_CONFIG), MALLARD_NOW="2026-01-01T05:59:35+00:00")
    stack.mallard("stack", "up")
    connector = stack.status()["debezium"]["connector_config"]
    assert "public.customers,public.products,public.orders" in open(connector).read()  # derived from the config

    # 1. the scheduled fire: a snapshot of every stream, merged in DuckDB, under the fire's id
    merged = stack.wait_for(f"SELECT stream, status, rows_staged, rows_deleted FROM _mallard.snapshots "
                            f"WHERE request_id = '{DAILY}' ORDER BY stream",
                            lambda rows: len(rows) == 3 and all(r[1] == "merged" for r in rows), timeout=150)
    by_stream = {r[0]: r for r in merged}
    assert by_stream["public.customers"][2] == 2000  # full refresh: every row
    assert by_stream["public.orders"][2] == 0  # incremental after the first snapshot: nothing changed since

    # 2. two runs with changes in between: each reads only the rows whose updated_at moved
    state_before = stack.mallard("state", "show", "public.orders").stdout
    assert "incremental on updated_at >" in state_before, state_before
    run(stack)  # whatever happened before, the state is now current
    pg(stack, "INSERT INTO orders (customer_id, product_id, quantity, total, status, order_date, updated_at) "
              "SELECT 1, 1, 1, 9.99, 'placed', current_date, now() FROM generate_series(1, 3)")
    pg(stack, "UPDATE orders SET status = 'shipped', updated_at = now() WHERE id IN (10, 20)")
    pg(stack, "UPDATE orders SET status = 'lost' WHERE id = 30")  # update_key not bumped: not seen by incremental
    staged, applied, deleted = run(stack)
    assert (staged, deleted) == (5, 0)
    stack.wait_for("SELECT id, status FROM orders WHERE id IN (10, 20) ORDER BY id", [[10, "shipped"], [20, "shipped"]])
    assert stack.query("SELECT count(*) FROM orders")[0][0] == pg(stack, "SELECT count(*) FROM orders")[0][0]
    assert run(stack)[0] == 0  # nothing changed since

    # 3. state reset (no value): the next run re-reads every row, and deletes nothing
    total = pg(stack, "SELECT count(*) FROM orders")[0][0]
    stack.mallard("state", "reset", "public.orders")
    assert "no state" in stack.mallard("state", "show", "public.orders").stdout
    assert run(stack)[0] == total
    # 4. the state advanced too far: rewind to a value, the rows after it are read again
    value = pg(stack, "SELECT updated_at::text FROM orders ORDER BY updated_at DESC OFFSET 7 LIMIT 1")[0][0]
    stack.mallard("state", "reset", "public.orders", "--to", value)
    assert value in stack.mallard("state", "show", "public.orders").stdout
    assert run(stack)[0] == pg(stack, "SELECT count(*) FROM orders WHERE updated_at > %s", value)[0][0]
    # 5. --full: one full refresh, then incremental again from the table's largest updated_at
    assert run(stack, "--full")[0] == total
    assert run(stack)[0] == 0
