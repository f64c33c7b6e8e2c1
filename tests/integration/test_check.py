"""`mallard check` against real servers, and JSON logs from a running stack."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from mallard.stack.local import StackSettings, _as_postgres_user, postgres_bin
from mallard.stack.processes import free_ports
from tests.conftest import new_home

pytestmark = pytest.mark.integration
CHECKS = ["config", "postgres", "wal_level", "slots", "privileges", "tables", "publication", "slot", "slot WAL",
          "kafka", "topics", "duckdb", "debezium"]


def lines_of(out: str) -> dict[str, str]:
    """check name -> its line (a fix line is appended to the line it belongs to)."""
    found: dict[str, str] = {}
    last = None
    for line in out.splitlines():
        if line.startswith(" ") and last:
            found[last] += "\n" + line.strip()
            continue
        rest = line.split(" ", 1)[1]
        last = next(n for n in sorted(CHECKS, key=len, reverse=True) if rest.startswith(n + " "))
        found[last] = line
    return found


def test_check_passes_on_a_running_stack(stack):
    started = time.monotonic()
    out = stack.mallard("check")
    assert time.monotonic() - started < 30
    found = lines_of(out.stdout)
    assert list(found) == CHECKS
    assert all(line.startswith("✓ ") for line in found.values()), out.stdout
    assert "held by the applier (pid " in found["duckdb"]
    assert "connector mallard-postgres at http://127.0.0.1:" in found["debezium"] and ": RUNNING (1 task(s))" in found["debezium"]
    assert "fix:" not in out.stdout
    assert stack.env["MALLARD_PG_PASSWORD"] not in out.stdout + out.stderr
    results = json.loads(stack.mallard("check", "--json").stdout)
    assert [r["check"] for r in results] == CHECKS and {r["status"] for r in results} == {"ok"}


def test_check_warns_when_the_slot_retains_more_wal_than_allowed(stack):
    out = stack.mallard("check", "--max-retained-wal", "0")
    assert out.returncode == 0  # a warning does not fail the run
    wal = lines_of(out.stdout)["slot WAL"]
    assert wal.startswith("! slot WAL") and "pg_drop_replication_slot('mallard_debezium')" in wal


def test_check_fails_fast_naming_kafka_when_the_broker_is_down(make_stack):
    stack = make_stack()
    stack.mallard("stack", "up")
    broker = stack.status()["components"]["broker"]["pid"]
    os.kill(broker, signal.SIGKILL)  # the broker this test's stack started
    started = time.monotonic()
    out = stack.mallard("check", check=False, timeout=60)
    elapsed = time.monotonic() - started
    assert out.returncode == 1
    found = lines_of(out.stdout)
    assert found["kafka"].startswith(f"✗ kafka        no broker answers at {stack.bootstrap_servers}")
    assert "fix: start the broker" in found["kafka"] and "MALLARD_KAFKA_BOOTSTRAP_SERVERS" in found["kafka"]
    assert found["topics"].startswith("- topics")
    assert found["postgres"].startswith("✓ ") and found["wal_level"].startswith("✓ ")
    assert elapsed < 15, f"check took {elapsed:.1f}s with the broker down"
    assert "%3|" not in out.stderr  # no librdkafka noise


@pytest.fixture
def replica_wal_postgres():
    """A second Postgres cluster, started as a fresh install is: wal_level=replica."""
    folder = new_home()
    data, socket = folder / "data", folder / "socket"
    socket.mkdir()
    as_postgres = _as_postgres_user()
    if as_postgres:
        shutil.chown(folder, "postgres", "postgres")
        shutil.chown(socket, "postgres", "postgres")
    pwfile = folder / "pwfile"
    pwfile.write_text("check-pw\n")
    if as_postgres:
        shutil.chown(pwfile, "postgres", "postgres")
    bin_dir = postgres_bin(StackSettings())
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "mallard", "--pwfile", str(pwfile),
                    "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                   check=True, capture_output=True, **as_postgres)
    port, = free_ports(1)
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {socket} -c wal_level=replica -c fsync=off"
    subprocess.run([str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-l", str(folder / "postgres.log"),
                    "-o", options, "-w", "-t", "60"], check=True, capture_output=True, **as_postgres)
    try:
        yield port
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w"],
                       check=False, capture_output=True, **as_postgres)
        shutil.rmtree(folder, ignore_errors=True)


def test_check_fails_usefully_when_wal_level_is_not_logical(make_stack, replica_wal_postgres):
    # Nothing else runs: only this Postgres, which authenticates the user and is not ready for CDC.
    stack = make_stack(MALLARD_PG_PORT=str(replica_wal_postgres), MALLARD_PG_PASSWORD="check-pw",
                       MALLARD_PG_DATABASE="postgres")
    out = stack.mallard("check", check=False, timeout=60)
    assert out.returncode == 1
    found = lines_of(out.stdout)
    assert found["postgres"].startswith(f"✓ postgres     mallard@127.0.0.1:{replica_wal_postgres}/postgres")
    assert found["wal_level"] == ("✗ wal_level    wal_level is 'replica': CDC needs 'logical'\n"
                                  "fix: set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = "
                                  "logical) and restart Postgres")
    # The initdb user is a superuser: a warning, with the roles Debezium and the snapshotter should use instead.
    assert found["privileges"].startswith("! privileges   mallard is a superuser: ")
    assert 'CREATE ROLE "mallard_debezium" LOGIN REPLICATION' in found["privileges"]
    assert 'CREATE ROLE "mallard_snapshotter" LOGIN PASSWORD' in found["privileges"]
    assert found["slot"].startswith("✗ slot         replication slot mallard_debezium does not exist")
    assert "fix: fix wal_level first (above), then start Debezium" in found["slot"]
    assert "check-pw" not in out.stdout + out.stderr


def test_services_write_json_log_lines_with_their_batch_fields(make_stack):
    stack = make_stack(MALLARD_LOG_FORMAT="json", MALLARD_PG_PASSWORD="json-logs-pw")
    stack.mallard("stack", "up")  # the demo: first snapshots of customers, products and orders
    stack.wait_for("SELECT count(*) > 0 FROM orders", [[True]])
    stack.mallard("demo", "changes", "--count", "10")
    logs = stack.home / "logs"

    def records(service: str) -> list[dict]:
        return [json.loads(line) for line in (logs / f"{service}.log").read_text().splitlines() if line.strip()]

    deadline = time.monotonic() + 60
    while not any(r.get("kind") == "cdc_batch" for r in records("applier")):
        assert time.monotonic() < deadline, "no applied batch logged"
        time.sleep(0.5)
    for service in ("applier", "snapshotter", "scheduler"):
        for r in records(service):  # every line is one JSON object
            assert {"time", "level", "logger", "message"} <= set(r), r
    applier = records("applier")
    batch = next(r for r in applier if r.get("kind") == "cdc_batch")
    assert set(batch["streams"]) <= {"public.customers", "public.orders"} and batch["events"] >= 1
    assert sum(batch["streams"].values()) == batch["events"] and batch["rate"] >= 0
    staged = {r["stream"]: r for r in applier if r.get("kind") == "snapshot_staged"}
    assert set(staged) == {"public.customers", "public.products", "public.orders"}
    assert all(r["rows"] > 0 and r["rate"] >= 0 and r["snapshot_id"] for r in staged.values())
    merged = {r["stream"] for r in applier if r.get("kind") == "snapshot_merged"}
    assert merged == set(staged)
    done = {r["stream"]: r for r in records("snapshotter") if r.get("kind") == "snapshot_done"}
    assert {s: r["rows"] for s, r in done.items()} == {s: r["rows_total"] for s, r in staged.items()}
    leaks = [p.name for p in logs.iterdir() if "json-logs-pw" in p.read_text(errors="replace")]
    assert not leaks
