"""The scheduler with real processes on a real broker: two schedulers publish each fire
once (also across a hand-over), a scheduler restarted after missed fires runs the latest
one once, and a scheduled fire ends as a merged snapshot in DuckDB."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mallard.adapters.kafka import read_to_end
from mallard.config.settings import REPO_ROOT
from mallard.schemas.control import ResnapshotRequest, control_message_adapter

pytestmark = pytest.mark.integration

DEMO_CONFIG = REPO_ROOT / "demo" / "replication.yaml"


def fires(bootstrap: str, topic: str) -> list[str]:
    out = []
    for msg in read_to_end(bootstrap, topic):
        m = control_message_adapter.validate_json(msg.value())
        if isinstance(m, ResnapshotRequest) and m.requested_by.startswith("scheduler:"):
            out.append(m.request_id)
    return out


def start_scheduler(stack, folder: Path, topic: str, config: Path, now: str, scale: float, name: str) -> subprocess.Popen:
    env = {**stack.env, "MALLARD_KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers, "MALLARD_HEALTH_PORT": "0",
           "MALLARD_CONTROL_TOPIC": topic, "MALLARD_CONSUMER_GROUP": f"sched-{topic}",
           "MALLARD_REPLICATION_CONFIG": str(config), "MALLARD_NOW": now, "MALLARD_TIME_SCALE": str(scale)}
    log = open(folder / f"{name}.log", "a")
    return subprocess.Popen([sys.executable, "-m", "mallard.services.scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=REPO_ROOT)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    p.wait(30)


def config_file(folder: Path, cron: str) -> Path:
    path = folder / f"replication-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(f'streams:\n  public.customers:\nschedules:\n  every:\n    cron: "{cron}"\n'
                    f'    streams: [public.customers]\n')
    return path


def test_two_schedulers_publish_each_fire_once_even_across_a_hand_over(stack, tmp_path):
    topic = f"test.control.{uuid.uuid4().hex[:8]}"
    config = config_file(tmp_path, "* * * * *")
    # a virtual clock ten times real time: a fire every 6 s; both start at the same virtual time
    a = start_scheduler(stack, tmp_path, topic, config, "2026-01-01T00:00:45+00:00", 10, "a")
    b = start_scheduler(stack, tmp_path, topic, config, "2026-01-01T00:00:45+00:00", 10, "b")
    try:
        wait_until(lambda: len(fires(stack.bootstrap_servers, topic)) >= 2, 60, "two fires")
        assert a.poll() is None and b.poll() is None, (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
        logs = {p: (tmp_path / f"{n}.log").read_text() for p, n in ((a, "a"), (b, "b"))}
        leaders = [p for p, log in logs.items() if log.rfind("publishes now") > log.rfind("standing by")]
        assert len(leaders) == 1, logs
        stop(leaders[0])  # the other one takes over
        wait_until(lambda: len(fires(stack.bootstrap_servers, topic)) >= 5, 90, "five fires, across the hand-over")
    finally:
        stop(a)
        stop(b)
    ids = fires(stack.bootstrap_servers, topic)
    assert len(ids) == len(set(ids)), ids
    minutes = sorted(int(i.split("T")[1][3:5]) for i in ids)
    assert minutes[:5] == [1, 2, 3, 4, 5], ids  # every fire, none twice, none lost in the hand-over
    assert minutes == list(range(1, len(minutes) + 1)), ids


def test_a_scheduler_restarted_after_missed_fires_runs_the_latest_once(stack, tmp_path):
    topic = f"test.control.{uuid.uuid4().hex[:8]}"
    config = config_file(tmp_path, "0 6 * * *")
    p = start_scheduler(stack, tmp_path, topic, config, "2026-01-01T05:59:54+00:00", 1, "s")
    try:
        deadline = time.monotonic() + 40
        while not fires(stack.bootstrap_servers, topic):
            assert time.monotonic() < deadline and p.poll() is None, (tmp_path / "s.log").read_text()
        assert fires(stack.bootstrap_servers, topic) == ["every@2026-01-01T06:00:00+00:00"]
    finally:
        stop(p)
    # down for three days: the fires of the 2nd, 3rd and 4th were missed
    for run in range(2):  # and a second restart owes nothing more
        caught_up = (tmp_path / "s.log").read_text().count("past fires:")
        p = start_scheduler(stack, tmp_path, topic, config, "2026-01-04T07:00:00+00:00", 1, "s")
        wait_until(lambda: (tmp_path / "s.log").read_text().count("past fires:") > caught_up, 60, "the past fires")
        if run == 0:
            wait_until(lambda: len(fires(stack.bootstrap_servers, topic)) == 2, 30, "the missed fire")
        else:
            time.sleep(2)  # a few of its loops: it must publish nothing
        stop(p)
    assert fires(stack.bootstrap_servers, topic) == ["every@2026-01-01T06:00:00+00:00",
                                                     "every@2026-01-04T06:00:00+00:00"]
    log = (tmp_path / "s.log").read_text()
    assert "missed while down: run once" in log
    assert stack.env["MALLARD_PG_PASSWORD"] not in log


def test_a_table_that_does_not_exist_fails_config_check_in_one_line_and_the_scheduler_waits_for_it(stack, tmp_path):
    config = tmp_path / "replication.yaml"
    config.write_text('streams:\n  public.customers:\n  public.invoices:\nschedules:\n  d:\n    cron: "0 6 * * *"\n')
    out = stack.mallard("config", "check", "--config", str(config), check=False)
    assert out.returncode == 1
    assert out.stderr.strip() == f"mallard: {config}:3: streams.public.invoices: table public.invoices does not " \
                                 f"exist in Postgres"
    ok = stack.mallard("config", "check", "--config", str(DEMO_CONFIG))
    assert "every table exists in Postgres" in ok.stdout
    # the scheduler starts (issue 18: a table may be created after the stack starts), naming it once
    p = start_scheduler(stack, tmp_path, f"test.control.{uuid.uuid4().hex[:8]}", config, "", 1, "bad")
    try:
        wait_until(lambda: "scheduler up: 1 schedule(s)" in (tmp_path / "bad.log").read_text(), 60, "the scheduler")
        assert p.poll() is None
    finally:
        stop(p)
    log = (tmp_path / "bad.log").read_text()
    assert "tables that do not exist yet (their snapshots wait for them): public.invoices" in log
    assert "ERROR" not in log


@pytest.mark.parametrize("cron", ["0 6 31 2 *", "0 0 30,31 feb *"])
def test_a_schedule_that_never_fires_is_refused_by_config_check_and_the_scheduler(stack, tmp_path, cron):
    config = config_file(tmp_path, cron)
    out = stack.mallard("config", "check", "--config", str(config), check=False)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"mallard: {config}:5: schedules.every.cron: bad cron: '{cron}' never fires: day of "
                                  f"month {cron.split()[2]} does not occur in month {cron.split()[3]}")
    p = start_scheduler(stack, tmp_path, f"test.control.{uuid.uuid4().hex[:8]}", config, "", 1, "never")
    assert p.wait(60) == 1
    log = (tmp_path / "never.log").read_text()
    errors = [line for line in log.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"{config}:5: schedules.every.cron: bad cron" in errors[0], errors
    assert "Traceback" not in log
