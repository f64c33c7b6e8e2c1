#!/usr/bin/env bash
# Proof of issue 16's topology on this machine, outside the test suite: resolve the JVM
# artifacts (timed: first and repeat), then run scripts/jvm-proof.py (Postgres, Kafka
# KRaft, Kafka Connect + Debezium in /tmp; a change event; SIGTERM and restart).
# Extra arguments go to the python script (--heap 512m, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
TIMEFORMAT='jvm-setup took %1Rs'
time bash scripts/jvm-setup.sh
time bash scripts/jvm-setup.sh
exec .venv/bin/python scripts/jvm-proof.py "$@"
