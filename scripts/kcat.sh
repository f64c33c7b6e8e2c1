#!/usr/bin/env bash
# kcat on the librdkafka that confluent-kafka ships (in .venv): Debian 12's kcat links
# librdkafka 2.0.2, whose ApiVersions request the local stack's Tansu broker answers in a
# form it cannot read ("ApiVersionRequest failed: Local: Read underflow"). Real Kafka (the
# docker-compose stack) works with any kcat. Usage: bash scripts/kcat.sh <kcat arguments>
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v kcat >/dev/null || { echo "kcat is not installed (apt-get install kcat)" >&2; exit 1; }
python="${MALLARD_PYTHON:-$root/.venv/bin/python}"
lib="$("$python" -c 'import confluent_kafka, pathlib; print(next(pathlib.Path(confluent_kafka.__file__).parent.parent.glob("confluent_kafka.libs/librdkafka*.so*")))')"
dir="${MALLARD_HOME:-$root/.mallard}/kcat-lib"
mkdir -p "$dir"
ln -sf "$lib" "$dir/librdkafka.so.1"
LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec kcat "$@"
