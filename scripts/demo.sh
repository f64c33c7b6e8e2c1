#!/usr/bin/env bash
# Sets everything up, starts the local stack with the demo shop database, makes a
# few changes so Debezium has something to say, and prints how to look at it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The demo's replication config, named (the stack replicates only what it is told to).
export MALLARD_REPLICATION_CONFIG="${MALLARD_REPLICATION_CONFIG:-demo/replication.yaml}"
.venv/bin/mallard stack up
.venv/bin/mallard demo changes --count 20
echo
echo "A sample of the change events Debezium published (decoded):"
.venv/bin/mallard tail mallard.public.orders --from-beginning --limit 2 --timeout 15
echo
echo "The DuckDB replica, written by the applier: each table's first snapshot, then the CDC changes since:"
for _ in $(seq 90); do
    .venv/bin/mallard query "SELECT 'merged' AS ready FROM _mallard.snapshots WHERE stream = 'public.orders' AND status = 'merged'" \
        2>/dev/null | grep -qx merged && break
    sleep 1
done
.venv/bin/mallard query "SELECT _mallard_source, count(*) AS rows, max(_mallard_committed_at) AS last_write FROM orders GROUP BY 1 ORDER BY 1"
.venv/bin/mallard query "SELECT id, status, total, _mallard_source, _mallard_committed_at FROM orders ORDER BY _mallard_position DESC LIMIT 5"
echo
echo "The replication config (demo/replication.yaml): streams, modes, schedules, checked against Postgres:"
.venv/bin/mallard config check
echo
echo "public.orders is incremental: a run reads only the rows whose updated_at moved past its state (kept in Kafka):"
.venv/bin/mallard state show
.venv/bin/mallard demo changes --count 5 >/dev/null
.venv/bin/mallard resnapshot public.orders --reason "demo: incremental run" --wait --timeout 120
.venv/bin/mallard state show
echo
echo "Every connection and prerequisite, checked (mallard check), and where each stream stands (mallard status):"
.venv/bin/mallard check
echo
.venv/bin/mallard status
echo
.venv/bin/mallard stack guide
