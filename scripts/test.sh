#!/usr/bin/env bash
# Sets everything up and runs the whole test suite (unit, integration against the
# real local stack; docker-only tests skip where no Docker engine runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Three workers: the integration tests mostly wait on their stacks (start-ups, polling),
# so 3 fit 2 cores; a file stays on one worker. MALLARD_TEST_WORKERS=0: serial.
exec .venv/bin/python -m pytest -n "${MALLARD_TEST_WORKERS:-3}" --dist loadfile --durations=25 "$@"
