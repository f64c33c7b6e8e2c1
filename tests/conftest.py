"""Shared test helpers: a real local stack in a temporary home, on free ports."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mallard.runtime.health import client_request
from mallard.stack.processes import free_ports

import pytest

from tests import xdist_units


def pytest_configure(config):
    xdist_units.register(config)


def pytest_collection_modifyitems(config, items):
    """Under xdist (scripts/test.sh: ``-n 3 --dist loadfile``) a unit of work runs on one
    worker: a file, so its module fixtures (a stack of its own) start once, or all the tests
    on a session stack, whatever their file (tests/xdist_units.py). The longest units go
    first. (Not ``loadgroup``: with pytest 9.2 it ignores xdist_group marks, pytest-xdist
    issue 1386.)"""
    xdist_units.longest_first(items)
    xdist_units.write_units(config, items)


PORT_VARIABLES = (
    "MALLARD_PG_PORT", "MALLARD_KAFKA_PORT", "MALLARD_SNAPSHOTTER_HEALTH_PORT",
    "MALLARD_APPLIER_HEALTH_PORT", "MALLARD_SCHEDULER_HEALTH_PORT", "MALLARD_CONNECT_PORT",
    "MALLARD_KAFKA_CONTROLLER_PORT",
)


class Stack:
    """Drives `mallard stack ...` as a user would, against its own home and ports."""

    def __init__(self, home: Path, **extra_env: str):
        self.home = home
        self.folder = home  # removed at teardown, whatever home a test moves the stack to
        self.ports = dict(zip(PORT_VARIABLES, free_ports(len(PORT_VARIABLES))))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MALLARD_")}
        self.env.update({k: str(v) for k, v in self.ports.items()})
        # No replication config unless a test gives one: the connector config's own table list, no schedules.
        # C1 only: half the JVMs' start-up CPU (the suite starts ~25 stacks, several at once
        # under xdist); their peak speed does not matter for a test's few thousand rows.
        self.env.update({"MALLARD_HOME": str(home), "MALLARD_START_TIMEOUT_S": "120", "MALLARD_REPLICATION_CONFIG": "",
                         "MALLARD_JVM_OPTS": "-XX:TieredStopAtLevel=1", **extra_env})

    def mallard(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "mallard.cli.main", *args], env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"mallard {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def status(self) -> dict:
        """``stack status --json --show-secrets``: DSNs tests can connect with."""
        return json.loads(self.mallard("stack", "status", "--json", "--show-secrets", check=False).stdout)

    @property
    def dsn(self) -> str:
        """The owner role's DSN (no superuser): tests write as applications do."""
        return self.status()["postgres"]["dsn"]

    def role_dsn(self, role: str) -> str:
        """The DSN of one of the stack's roles: admin, owner, debezium, snapshotter."""
        return self.status()["postgres"]["roles"][role]["dsn"]

    def query(self, sql: str, timeout: float = 10) -> list[list]:
        """Read the replica through the applier (it alone may open the DuckDB file)."""
        port = self.ports["MALLARD_APPLIER_HEALTH_PORT"]
        url = f"http://127.0.0.1:{port}/query?" + urllib.parse.urlencode({"sql": sql})
        try:
            with urllib.request.urlopen(client_request(url, "tests"), timeout=timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"query failed: {e.read().decode()}") from None
        if body.get("truncated"):  # never compare part of a result: narrow the query
            raise RuntimeError(f"{sql!r} gave more rows than the applier's /query returns ({len(body['rows'])})")
        return body["rows"]

    def applier_state(self) -> dict:
        port = self.ports["MALLARD_APPLIER_HEALTH_PORT"]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

    def wait_for(self, sql: str, expected, timeout: float = 90.0) -> list[list]:
        """Poll the replica until ``sql`` returns ``expected`` (or a predicate holds)."""
        deadline = time.monotonic() + timeout
        rows = None
        while time.monotonic() < deadline:
            try:
                rows = self.query(sql)
            except (AssertionError, OSError):
                rows = None  # table not created yet, or applier restarting
            if rows is not None and (expected(rows) if callable(expected) else rows == expected):
                return rows
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {sql!r} to give {expected}; last: {rows}\n{self.log_tails()}")

    def log_tails(self, lines: int = 25) -> str:
        """The end of the applier's and the snapshotter's logs and Connect's warnings: what CI
        shows of a timeout."""
        out = []
        for name, keep in (("applier", lambda l: True), ("snapshotter", lambda l: True),
                           ("connect", lambda l: " WARN " in l or " ERROR " in l)):
            path = self.home / "logs" / f"{name}.log"
            if path.exists():
                tail = [l for l in path.read_text(errors="replace").splitlines() if keep(l)][-lines:]
                out.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(l[:400] for l in tail))
        return "\n".join(out)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.ports['MALLARD_KAFKA_PORT']}"

    def teardown(self) -> None:
        if not self.folder.exists():
            return  # torn down already (a session stack, once its tests are done)
        self.mallard("stack", "down", "--purge", check=False, timeout=120)
        shutil.rmtree(self.folder, ignore_errors=True)


def new_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="mallard-test-"))
    home.chmod(0o755)  # the 'postgres' user must reach its data folder when tests run as root
    return home


@pytest.fixture
def make_stack():
    """Stacks a test creates; each is torn down (purged) even when the test fails."""
    stacks: list[Stack] = []

    def make(**extra_env: str) -> Stack:
        stacks.append(Stack(new_home(), **extra_env))
        return stacks[-1]

    yield make
    for s in stacks:
        s.teardown()


SESSION_STACKS: dict[str, Stack] = {}
"""The running session stacks by fixture name: stopped as soon as their last test is done."""


@pytest.hookimpl(trylast=True)  # after the test's own fixtures are torn down
def pytest_runtest_teardown(item, nextitem):
    for name in xdist_units.session_units_done(item, nextitem):
        if name in SESSION_STACKS:
            SESSION_STACKS.pop(name).teardown()  # idle until the worker's end, its JVMs took CPU


@pytest.fixture(scope="session")
def stack():
    """One running local stack for the integration tests that only read or add data."""
    # A password of its own, so a test can prove it never reaches a log.
    s = Stack(new_home(), MALLARD_PG_PASSWORD=f"pw-{secrets.token_hex(8)}")
    SESSION_STACKS["stack"] = s
    try:
        s.mallard("stack", "up")
        yield s
    finally:
        s.teardown()


def all_tables_connector_config(folder: Path) -> Path:
    """The repo's connector config, capturing every table (tests create their own)."""
    from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG

    doc = json.loads(DEFAULT_CONNECTOR_CONFIG.read_text())
    doc["config"].pop("table.include.list")
    doc["config"]["publication.autocreate.mode"] = "all_tables"
    doc["config"]["table.exclude.list"] = "_mallard\\.heartbeat"  # in every publication, never replicated
    path = folder / "connector-all-tables.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def up_capturing_every_table(stack: Stack) -> Stack:
    """Start ``stack`` (no demo) with Debezium capturing every table (tests create their own)."""
    stack.env["MALLARD_CONNECTOR_CONFIG"] = str(all_tables_connector_config(stack.home))
    stack.mallard("stack", "up", "--no-demo")
    return stack


def running_stack_capturing_every_table():
    """A running stack whose Debezium captures every table, torn down after (a fixture's body)."""
    home = new_home()
    s = Stack(home, MALLARD_CONNECTOR_CONFIG=str(all_tables_connector_config(home)), MALLARD_TOPIC_REFRESH_MS="1000")
    try:
        s.mallard("stack", "up")
        yield s
    finally:
        s.teardown()


@pytest.fixture(scope="session")
def cdc_stack():
    """A running stack whose Debezium captures every table, for the applier tests."""
    for s in running_stack_capturing_every_table():
        SESSION_STACKS["cdc_stack"] = s
        yield s
