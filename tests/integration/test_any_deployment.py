"""Every operating command reaches a deployment named only by global options, then only by
a profile: a running stack on non-default ports in a non-default home, with no MALLARD_*
variable naming it. Listeners on the default ports record every connection: none may come.
And the connector's lifecycle through Connect's REST API."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from mallard.config.settings import DEFAULT_KAFKA_PORT, DEFAULT_PG_PORT

pytestmark = pytest.mark.integration

DEFAULT_PORTS = (DEFAULT_PG_PORT, DEFAULT_KAFKA_PORT, 18081, 18082, 18083, 18084)


class Listeners:
    """Accepts on the default ports and records who came (a port in use elsewhere is skipped)."""

    def __init__(self, ports):
        self.socks, self.hits = [], []
        for port in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.listen(16)
            s.settimeout(0.2)
            self.socks.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            for s in self.socks:
                try:
                    conn, _ = s.accept()
                except (socket.timeout, OSError):
                    continue
                self.hits.append(s.getsockname()[1])
                conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


def cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mallard.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd="/")


@pytest.fixture
def bare_env(tmp_path):
    """The shell of a user who never set MALLARD_*: the local stack's defaults would be
    the default ports and ./.mallard (here an empty folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLARD_", "PG"))}
    env["HOME"] = str(tmp_path)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return env


def operate(env: dict[str, str], deployment: list[str], stack) -> dict[str, str]:
    """Run every operating command against ``deployment``; each must succeed (exit 0)."""
    outputs = {}
    commands = {
        "profile": ["profile", "show", "--json"],
        "status": ["status", "--json"],
        "topics": ["topics", "--json"],
        "tail": ["tail", "mallard.snapshots", "--from-beginning", "--limit", "2", "--timeout", "20", "--json"],
        "tables": ["tables", "--json"],
        "query": ["query", "SELECT count(*) FROM orders"],
        "config": ["config", "check"],
        "state": ["state", "show"],
        "resnapshot": ["resnapshot", "public.customers", "--wait", "--timeout", "180"],
        "verify": ["verify", "public.customers", "--json"],
        "connector": ["connector", "status", "--json"],
        "check": ["check", "--json"],
    }
    for name, args in commands.items():
        out = cli(env, *deployment, *args) if name != "tail" else cli(env, *args, *deployment)
        outputs[name] = out.stdout
        ok = out.returncode == 0 or (name == "check" and out.returncode in (0, 1, 2))
        assert ok, f"mallard {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return outputs


def test_every_command_reaches_a_deployment_named_by_options_or_a_profile(stack, bare_env, tmp_path):
    status = stack.status()
    ports = stack.ports
    dsn = status["postgres"]["dsn"]  # the owner's, with its password (a CLI option may carry one)
    config = status.get("replication_config") or stack.env.get("MALLARD_REPLICATION_CONFIG") or ""
    from mallard.stack.local import DEMO_REPLICATION_CONFIG

    config = config or str(DEMO_REPLICATION_CONFIG)
    options = {"--bootstrap-server": f"127.0.0.1:{ports['MALLARD_KAFKA_PORT']}",
               "--applier-url": f"http://127.0.0.1:{ports['MALLARD_APPLIER_HEALTH_PORT']}",
               "--connect-url": f"http://127.0.0.1:{ports['MALLARD_CONNECT_PORT']}",
               "--pg-dsn": dsn, "--config": config}
    bare_env["MALLARD_PG_PASSWORD"] = ""  # the DSN's own password is what connects
    listeners = Listeners(DEFAULT_PORTS)
    try:
        flags = [x for k, v in options.items() for x in (k, v)]
        out = operate(bare_env, flags, stack)
        shown = json.loads(out["profile"])
        assert shown["bootstrap_server"] == options["--bootstrap-server"] and shown["from"]["pg_dsn"] == "option"
        assert "***" in shown["pg_dsn"] and dsn.split(":")[2].split("@")[0] not in out["profile"]
        assert int(out["query"].splitlines()[1]) > 0
        assert json.loads(out["verify"])["equal"] is True
        assert json.loads(out["connector"])["connector"]["state"] == "RUNNING"

        # The same through a profile: the file names the deployment (the password from PGPASSWORD).
        user_host = dsn.split("://", 1)[1]
        user, rest = user_host.split(":", 1)
        password, hostdb = rest.split("@", 1)
        (tmp_path / "config" / "mallard").mkdir(parents=True)
        (tmp_path / "config" / "mallard" / "profiles.yaml").write_text(
            "profiles:\n  other:\n"
            f"    bootstrap_server: {options['--bootstrap-server']}\n"
            f"    applier_url: {options['--applier-url']}\n"
            f"    connect_url: {options['--connect-url']}\n"
            f"    pg_dsn: postgresql://{user}@{hostdb}\n"
            f"    config: {config}\n")
        profile_env = {**bare_env, "PGPASSWORD": password}
        out = operate(profile_env, ["--profile", "other"], stack)
        assert json.loads(out["profile"])["from"]["bootstrap_server"] == "profile other"
        assert json.loads(out["verify"])["equal"] is True
        time.sleep(1)
    finally:
        listeners.close()
    assert listeners.socks, "no default port could be watched"
    assert listeners.hits == [], f"connections reached the default ports: {sorted(set(listeners.hits))}"


def test_connector_pause_resume_restart_change_the_task_state(stack):
    def state() -> tuple[str, list[str]]:
        doc = json.loads(stack.mallard("connector", "status", "--json").stdout)
        return doc["connector"]["state"], [t["state"] for t in doc["tasks"]]

    def wait(expected: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (current := state()) != (expected, [expected]):
            assert time.monotonic() < deadline, f"connector never {expected}: {current}"
            time.sleep(0.5)

    wait("RUNNING")
    stack.mallard("connector", "pause")
    wait("PAUSED")
    stack.mallard("connector", "resume")
    wait("RUNNING")
    stack.mallard("connector", "restart")
    wait("RUNNING", timeout=120)
    config = json.loads(stack.mallard("connector", "config").stdout)
    assert config["database.password"].startswith("${") and "slot.name" in config
    refused = stack.mallard("connector", "delete", check=False)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    text = stack.mallard("connector", "status").stdout
    assert text.startswith("connector mallard-postgres: RUNNING") and "task 0: RUNNING" in text
