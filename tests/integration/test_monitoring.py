"""A real Prometheus (Debian's) scrapes a running local stack with monitoring/prometheus.yml
and evaluates the shipped monitoring/alerts.yml: every target up, mallard's series there,
the rules loaded, and alerts firing for real: a service down, and the replication delay
raised past its threshold (Postgres changes while the applier is frozen, then thawed).

The temp copy of the config points at the stack's health ports and scrapes every 2 s. In
the copy of the rules, the `for:` durations are shortened to 0s, and the delay alert's
threshold from 60 s to 20 s, so the applier is frozen for 35 s, not 90. The expressions
are the shipped ones otherwise, and `promtool test rules` (tests/unit/test_monitoring_files.py)
shows every shipped threshold and duration as it is.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from mallard.config.settings import REPO_ROOT
from mallard.stack.processes import free_ports

pytestmark = pytest.mark.integration

MONITORING = REPO_ROOT / "monitoring"
JOB_PORTS = {"mallard-snapshotter": "MALLARD_SNAPSHOTTER_HEALTH_PORT", "mallard-applier": "MALLARD_APPLIER_HEALTH_PORT",
             "mallard-scheduler": "MALLARD_SCHEDULER_HEALTH_PORT"}
DELAY_THRESHOLD_S = 20
"""The delay alert's threshold in the test's copy of the rules (60 s as shipped)."""


class Prometheus:
    def __init__(self, folder: Path, ports: dict[str, int]):
        self.folder, self.port = folder, free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="2s", evaluation_interval="2s", scrape_timeout="2s")
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert set(jobs) == set(JOB_PORTS)
        for name, variable in JOB_PORTS.items():
            jobs[name]["static_configs"] = [{"targets": [f"127.0.0.1:{ports[variable]}"]}]
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        rules = (MONITORING / "alerts.yml").read_text()
        rules = re.sub(r"(?m)^(\s+for:) \S+$", r"\1 0s", rules)
        rules, n = re.subn(r"(mallard_apply_delay_seconds_bucket\[2m\]\)\)\)) > 60$",
                           rf"\1 > {DELAY_THRESHOLD_S}", rules, flags=re.M)
        assert n == 1, "the delay alert's expression changed: update this test's copy"
        (folder / "alerts.yml").write_text(rules)
        self.log = open(folder / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> dict[tuple, float]:
        return {tuple(sorted(r["metric"].items())): float(r["value"][1])
                for r in self.api("query", query=promql)["result"]}

    def wait(self, what: str, check, timeout: float = 120.0):
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except OSError as e:
                last = e
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}; last: {last}\n{self.tail()}")

    def firing(self, alertname: str) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == alertname
                and a["state"] == "firing"]

    def tail(self) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not installed: apt-get install prometheus (scripts/setup.sh does)")
    started: list[Prometheus] = []

    def start(ports: dict[str, int]) -> Prometheus:
        started.append(Prometheus(tmp_path, ports))
        return started[-1]

    yield start
    for p in started:
        p.stop()


def test_prometheus_scrapes_the_stack_and_the_shipped_alerts_fire(make_stack, prometheus_for):
    stack = make_stack()
    stack.mallard("stack", "up")
    prom = prometheus_for(stack.ports)

    def all_up():
        targets = prom.api("targets")["activeTargets"]
        return len(targets) == 3 and all(t["health"] == "up" for t in targets) and targets
    targets = prom.wait("every target scraped and up", all_up)
    assert {t["labels"]["job"] for t in targets} == set(JOB_PORTS)

    # mallard's series, as the services export them: one per service, the slot, the
    # connector's task, the first snapshots per stream.
    assert len(prom.query("mallard_service_info")) == 3
    assert prom.wait("the snapshotter's view of the slot and the connector", lambda: prom.query(
        'mallard_replication_slot_active{slot="mallard_debezium"} == 1') and prom.query(
        'mallard_connector_task_state{connector="mallard-postgres", state="RUNNING"} == 1'))
    assert prom.query("mallard_replication_slot_retained_wal_bytes")
    progress = prom.wait("snapshot progress per stream", lambda: {
        dict(k)["stream"]: v for k, v in prom.query("mallard_snapshot_progress_rows").items()} or None)
    assert {"public.customers", "public.orders", "public.products"} <= set(progress) and progress["public.orders"] > 0
    assert prom.query('process_resident_memory_bytes{job="mallard-applier"}')

    rules = {r["name"]: r for g in prom.api("rules")["groups"] for r in g["rules"]}
    shipped = [r["alert"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    assert set(rules) == set(shipped) and all(r["health"] == "ok" for r in rules.values()), rules
    for quiet in ("MallardReplicationDelayHigh", "MallardServiceDown", "MallardKafkaDataLoss",
                  "MallardConnectorTaskFailed", "MallardSlotInactive", "MallardStreamNeedsResnapshot"):
        assert not prom.firing(quiet), quiet  # a healthy stack

    # Raise the replication delay past the alert's threshold: the applier frozen (SIGSTOP, as a
    # stalled VM or disk would) while Postgres commits; thawed, it applies commits older than
    # the threshold and measures that. While frozen it does not answer /metrics: service down.
    pid = stack.status()["components"]["applier"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        # Commits at the start of the freeze only: a batch's delay is its newest transaction's,
        # so the catch-up batch must hold none younger than the threshold.
        stack.mallard("demo", "changes")
        stack.mallard("demo", "changes")
        last_commit = time.monotonic()
        down = prom.wait("MallardServiceDown firing", lambda: prom.firing("MallardServiceDown"), 60)
        assert [a["labels"]["job"] for a in down] == ["mallard-applier"], down
        assert not prom.firing("MallardReplicationDelayHigh")  # nothing applied late yet
        time.sleep(max(0.0, DELAY_THRESHOLD_S + 15 - (time.monotonic() - last_commit)))
    finally:
        os.kill(pid, signal.SIGCONT)
    alerts = prom.wait("MallardReplicationDelayHigh firing", lambda: prom.firing("MallardReplicationDelayHigh"), 120)
    assert alerts[0]["labels"]["job"] == "mallard-applier" and float(alerts[0]["value"]) > DELAY_THRESHOLD_S, alerts
    print("delay alert:", alerts[0]["annotations"]["summary"])
    assert prom.wait("the applier scraped again", lambda: prom.query('up{job="mallard-applier"} == 1'))
