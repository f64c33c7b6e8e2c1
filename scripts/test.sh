#!/usr/bin/env bash
# Sets everything up and runs the whole test suite (unit, integration against the
# real local stack; docker-only tests skip where no Docker engine runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest --durations=25 "$@"
