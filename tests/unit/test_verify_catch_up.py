"""verify's wait for the replica to catch up (mallard/ops/verify.py ``catch_up``), driven
by a fake applier and a fake Postgres: what counts as busy, and what is not waited for."""
from __future__ import annotations

from mallard.ops import verify


class FakePostgres:
    """Answers verify's one query: how far Debezium has received the WAL."""

    def __init__(self, received: str = "0/2000") -> None:
        self.received = received

    def cursor(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, params=None):
        pass

    def fetchone(self):
        return (self.received,)


class FakeApplier:
    def __init__(self, states: list[dict]) -> None:
        self.states = states

    def state(self) -> dict:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def run(self, sql: str):
        return [[0]]  # no snapshot staging


def idle(**kw) -> dict:
    return {"ready": True, "progress": {"commit_lsn": "0/1000"}, "buffered_events": 0, "waiting_transactions": 0,
            "events_without_end": 0, **kw}


def wait(applier: FakeApplier, timeout: float = 0.3) -> verify.CatchUp:
    return verify.catch_up(FakePostgres(), applier, "slot", 0x1800, timeout, quiet_s=0.0, sleep=lambda _: None)


def test_an_idle_applier_past_the_target_is_caught_up():
    assert wait(FakeApplier([idle()])).caught_up


def test_events_held_for_an_end_are_waited_for():
    done = wait(FakeApplier([idle(buffered_events=1)]))
    assert not done.caught_up and "the applier is still busy" in done.how


def test_an_event_whose_end_has_not_come_for_a_minute_is_not_waited_for_and_is_said():
    done = wait(FakeApplier([idle(buffered_events=1, events_without_end=1)]))
    assert done.caught_up and "1 event(s) held for a transaction whose END has not come" in done.how


class GrowingTransaction(FakeApplier):
    """A big transaction still being read: its events grow, though it began a minute ago."""

    def __init__(self) -> None:
        super().__init__([])
        self.held = 0

    def state(self) -> dict:
        self.held += 1
        return idle(buffered_events=self.held, events_without_end=self.held)


def test_while_the_events_held_change_the_applier_is_moving():
    done = wait(GrowingTransaction(), timeout=0.05)
    assert not done.caught_up and "the applier is still busy" in done.how
