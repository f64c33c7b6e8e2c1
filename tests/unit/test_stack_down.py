"""``stack down``: how long each component is given to stop, without processes of its own
(the pid files name this test's process; the stop functions only record)."""
import os

import pytest

from mallard.stack.local import PURGE_GRACE_S, LocalStack, StackSettings


@pytest.fixture
def stack(monkeypatch, tmp_path):
    for name in [k for k in os.environ if k.startswith("MALLARD_")]:
        monkeypatch.delenv(name)
    s = LocalStack(StackSettings(home=tmp_path / "home", replication_config=""))
    stops = []
    # Everything but Postgres (whose purge drops the slot through a real connection first).
    s.components = [c for c in s.components if c.name != "postgres"]
    for c in s.components:
        c.pid_file.write(os.getpid())
        object.__setattr__(c, "stop_fn", lambda pid, grace, name=c.name: stops.append((name, grace)) or True)
    s.stops = stops
    return s


def test_down_waits_for_a_clean_shutdown_of_connect_and_the_broker(stack):
    stack.down(report=lambda line: None)
    assert stack.stops == [("scheduler", 20.0), ("applier", 20.0), ("snapshotter", 20.0), ("connect", 60.0),
                           ("broker", 60.0)]
    assert all(c.running_pid() is None for c in stack.components)


def test_a_purge_kills_what_does_not_stop_within_a_short_grace(stack):
    lines = []
    stack.down(purge=True, report=lines.append)
    assert [name for name, _ in stack.stops] == ["scheduler", "applier", "snapshotter", "connect", "broker"]
    assert {grace for _, grace in stack.stops} == {PURGE_GRACE_S} and PURGE_GRACE_S <= 5
    assert any(line.startswith("  connect        stopped (pid ") and line.endswith("s") for line in lines)
    assert not (stack.home / "run").exists()
