"""monitoring/: the scrape config and rules pass promtool (its rule tests included), and
every mallard metric the rules and the dashboard name is one the services export."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from mallard.config.settings import REPO_ROOT

MONITORING = REPO_ROOT / "monitoring"
DASHBOARD = json.loads((MONITORING / "grafana" / "dashboard.json").read_text())


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None and not os.environ.get("CI"):
        pytest.skip("promtool not installed (apt-get install prometheus; scripts/setup.sh does)")
    return subprocess.run(["promtool", *args], cwd=MONITORING, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"),
                                  ("test", "rules", "alerts_test.yml")])
def test_promtool_passes(args):
    out = promtool(*args)
    assert out.returncode == 0, out.stdout + out.stderr


def exported_metrics() -> set[str]:
    """Names given to counter()/gauge()/histogram() anywhere in the services and runtime."""
    sources = [*(REPO_ROOT / "services").rglob("*.py"), *(REPO_ROOT / "mallard").rglob("*.py")]
    text = "\n".join(p.read_text() for p in sources)
    return set(re.findall(r"""(?:counter|gauge|histogram)\(\s*["'](mallard_\w+)["']""", text))


def base_name(series: str, exported: set[str]) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum", ""):
        if series.endswith(suffix) and series[:len(series) - len(suffix)] in exported:
            return series[:len(series) - len(suffix)]
    return series


def used_metrics() -> set[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"\bmallard_\w+", e)}


def test_every_metric_the_rules_and_dashboard_name_is_exported():
    exported = exported_metrics()
    assert {"mallard_apply_delay_seconds", "mallard_snapshot_progress_rows"} <= exported
    unknown = {m for m in used_metrics() if base_name(m, exported) not in exported}
    assert not unknown, f"no service exports {unknown}"


def test_the_dashboard_shows_what_the_issue_asks_for_from_the_provisioned_datasource():
    datasource = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
                                .read_text())["datasources"][0]
    exprs = " ".join(t["expr"] for p in DASHBOARD["panels"] for t in p["targets"])
    for needed in ("mallard_apply_delay_seconds_bucket", "mallard_events_applied_total", "mallard_snapshot_progress_rows",
                   "mallard_snapshot_estimated_rows", "mallard_replication_slot_retained_wal_bytes",
                   "mallard_dead_letters_total", "process_resident_memory_bytes"):
        assert needed in exprs, needed
    for p in DASHBOARD["panels"]:
        assert p["datasource"]["uid"] == datasource["uid"]
        assert all(t["datasource"]["uid"] == datasource["uid"] for t in p["targets"])
