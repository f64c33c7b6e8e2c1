#!/usr/bin/env bash
# Sets everything up, starts the local stack with the demo shop database, makes a
# few changes so Debezium has something to say, and prints how to look at it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mallard stack up
.venv/bin/mallard demo changes --count 20
echo
echo "A sample of the change events Debezium published (decoded):"
.venv/bin/mallard tail mallard.public.orders --from-beginning --limit 2 --timeout 15
echo
echo "The DuckDB replica, written by the applier (CDC changes so far; full snapshots arrive with the snapshotter):"
for _ in $(seq 60); do
    .venv/bin/mallard query "SELECT id, status, total, _mallard_committed_at FROM orders ORDER BY _mallard_position DESC LIMIT 5" 2>/dev/null && break
    sleep 1
done
echo
.venv/bin/mallard stack status
.venv/bin/mallard stack guide
