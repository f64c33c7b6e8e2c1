#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system packages (apt, when root),
# the JVM half of the local stack (.jvm/), a virtual environment in .venv, and the project with its local-stack and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || missing+=(postgresql)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# Debian's prometheus: promtool checks monitoring/, and the monitoring test runs a real Prometheus.
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing system packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        # Debian's postgresql package starts a system cluster on 5432; mallard runs its own
        # (and its prometheus package a system service on 9090 where systemd runs: unused).
    else
        echo "setup: missing system packages: ${missing[*]}" >&2
        echo "setup: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi

# Debian's kcat: a real Kafka client to look at the local stack's topics (optional).
if ! command -v kcat >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Package lists may be stale or absent on a fresh machine: update once if the first try fails.
    { apt-get install -y -qq --no-install-recommends kcat >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends kcat >/dev/null 2>&1; }; } \
        || echo "setup: kcat not installed (optional: apt-get install kcat)" >&2
fi

# Apache Kafka, Kafka Connect and Debezium's connector, pinned in jvm/pom.xml, into .jvm/
# (resolved from Maven Central again only when the pom changed).
bash scripts/jvm-setup.sh

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: mallard needs Python >= 3.11, found {sys.version.split()[0]}")
PY

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.mallard-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing mallard and its dependencies into .venv (first time: a few minutes)"
    if ! .venv/bin/pip install -q --disable-pip-version-check -e '.[local,test]' > .venv/pip-install.log 2>&1; then
        cat .venv/pip-install.log >&2
        echo "setup: pip install failed (log: .venv/pip-install.log)" >&2
        exit 1
    fi
    touch "$stamp"
fi
