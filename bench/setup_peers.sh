#!/usr/bin/env bash
# The peers bench/snapshot_benchmark.py measures mallard against, in a virtual
# environment of their own (.bench-venv, git-ignored), never in the project's
# dependencies. Idempotent; pinned to the versions the published figures used.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.bench-venv
pins=(
    "duckdb==1.5.5"                              # same as the project, so the scanner extension matches
    "duckdb-extension-postgres-scanner==1.5.5"   # DuckDB's postgres scanner, loadable offline
    "sling-linux-amd64==1.4.11"                  # Sling's Go binary
    "duckdb-cli==1.5.5"                          # the DuckDB CLI Sling's DuckDB target drives
    "dlt[duckdb,sql-database]==1.31.0"             # (this pip wants the extra spelled with a hyphen)
    "connectorx==0.4.6"                          # dlt's fastest sql_database backend
    "psycopg2-binary==2.9.13"                    # dlt's postgresql+psycopg2 URL, and the COPY floor
    "pyarrow==26.0.1"                            # dlt's pyarrow backend
    "sqlalchemy==2.1.9"                          # dlt's sql_database source
)

if [ ! -x "$venv/bin/python" ]; then
    echo "setup_peers: creating $venv"
    python3 -m venv "$venv"
fi
stamp="$venv/.peers-installed"
want=$(printf '%s\n' "${pins[@]}" | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup_peers: installing the peers into $venv (first time: a few minutes)"
    if ! "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}" > "$venv/pip-install.log" 2>&1; then
        cat "$venv/pip-install.log" >&2
        echo "setup_peers: pip install failed (log: $venv/pip-install.log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
